"""``metarl-bench check``: the working tree against a baseline, in one job.

The suite (``run_suite``) measures every registered estimator on a fixed, seeded grid:
statistics (bias, variance, MSE with their intervals; exact moments on the bandit, seeded
Monte Carlo on a small MDP), the median wall time of several rounds, and the peak bytes of
one call (memray, when installed). It uses only the public API, so the same file measures a
baseline commit: it is run as a script with the baseline's package first on the path.

Gates (``compare``):
* statistics fail when the new value exceeds the baseline by more than ``z`` joint standard
  errors (from the two intervals) plus a relative 1e-9 for floating-point noise; equal seeds
  make unchanged code reproduce its numbers bit for bit, so the gate can be this tight;
* time and memory fail only at ``factor`` (default 2) times the baseline or more.

This module imports nothing from metarl_bench at the top: as a script it must run against
an old tree whose internals may differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterable

SUITE_VERSION = 1
STAT_METRICS = ("bias", "variance", "mse")
#: name -> (task id, parameters, inner step size, truth, trials). Append only.
CHECK_TASKS = {
    "bandit": ("bandit-v0", {"rewards": [1.0, 0.0, 0.5], "init_logits": [0.0, 0.5, -0.5]},
               2.0, "finite", 200),
    "tabular": ("tabular-v0", {"n_states": 4, "n_actions": 3, "horizon": 4, "gamma": 0.9,
                               "seed": 1}, 1.0, "limit", 2000),
}
CHECK_N = (4, 32)
TIMING = ("tabular", 32, 2000)  # (task, N, trials) of the timed and memory-measured call


def run_suite(estimators: Iterable[str] | None = None, rounds: int = 5,
              memory: bool = True,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Measure the suite on the importable metarl_bench; plain data, JSON-ready.

    ``progress(done, total)`` is called after each estimator."""
    import torch

    import metarl_bench as mb

    unsupported = getattr(mb, "UnsupportedError", NotImplementedError)
    names = list(estimators) if estimators is not None else mb.list_estimators()
    out: dict[str, Any] = {"suite_version": SUITE_VERSION, "package": mb.__file__,
                           "statistics": [], "costs": []}
    tasks = {key: (mb.make_task(task_id, **params), lr, truth, trials)
             for key, (task_id, params, lr, truth, trials) in CHECK_TASKS.items()}
    for done, name in enumerate(names):
        if progress is not None:
            progress(done, len(names))
        for key, (task, inner_lr, truth, trials) in tasks.items():
            options = {name: {"truth": truth}} if name == "exact" else None
            try:
                # an entry with options (NAME:KEY=VALUE,...) needs a tree that reads them
                result = mb.evaluate(task, [name], n_inner=list(CHECK_N), n_trials=trials,
                                     inner_lr=inner_lr, truth=truth, seed=0, options=options)
            except unsupported:
                continue
            for record in result.records:
                out["statistics"].append({
                    "estimator": name, "task": key, "n_inner": record["n_inner"],
                    **{m: record[m] for m in STAT_METRICS},
                    **{f"{m}_ci": record[f"{m}_ci"] for m in STAT_METRICS}})
        task_key, n_inner, trials = TIMING
        task, inner_lr, _, _ = tasks[task_key]
        theta = task.initial_params()
        if ":" in name:
            from metarl_bench._src.estimator_entries import resolve
            entry = resolve(name)
            fn, call_options = entry.spec.fn, entry.options
        else:
            fn, call_options = mb.get_estimator(name), {}
        call = lambda: fn(task, theta, n_inner=n_inner, inner_lr=inner_lr,  # noqa: E731
                          n_trials=trials, generator=torch.Generator().manual_seed(0),
                          **call_options)
        try:
            call()  # warm-up, and skips what the timing task does not support
        except unsupported:
            continue
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        out["costs"].append({"estimator": name, "task": task_key, "n_inner": n_inner,
                             "seconds": statistics.median(seconds),
                             "peak_bytes": _peak_bytes(call) if memory else None})
    if progress is not None:
        progress(len(names), len(names))
    return out


def _peak_bytes(call: Any) -> int | None:
    """Peak heap bytes of ``call`` under memray (None without memray).

    The same measure as benchmarks/common.py's allocated_peak_bytes, kept here because this
    file must run alone, as a script, against any tree.
    """
    try:
        import memray
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "call.bin")
        with memray.Tracker(path):
            call()
        return int(memray.FileReader(path).metadata.peak_memory)


def _stderr(ci: list[float | None] | None) -> float:
    if not ci or ci[0] is None or ci[1] is None:
        return 0.0
    return (ci[1] - ci[0]) / (2 * 1.96)


def compare(baseline: dict[str, Any], now: dict[str, Any], *, z: float = 3.0,
            factor: float = 2.0) -> list[dict[str, Any]]:
    """One row per (estimator, task, N, metric): baseline, now, ratio and verdict.

    Verdicts: ``worse`` and ``slower``/``larger`` fail; ``better``, ``faster``, ``smaller``,
    ``same``, ``new`` (not in the baseline) and ``gone`` (no longer measured) do not.
    """
    rows: list[dict[str, Any]] = []
    key = lambda r: (r["estimator"], r["task"], r["n_inner"])  # noqa: E731
    base_stats = {key(r): r for r in baseline.get("statistics", [])}
    now_stats = {key(r): r for r in now.get("statistics", [])}
    for k in sorted(set(base_stats) | set(now_stats)):
        for metric in STAT_METRICS:
            b, n = base_stats.get(k), now_stats.get(k)
            bv, nv = (b or {}).get(metric), (n or {}).get(metric)
            if b is None or n is None or bv is None or nv is None:
                verdict = "new" if b is None else "gone"
            else:
                tolerance = (z * math.hypot(_stderr(b.get(f"{metric}_ci")),
                                            _stderr(n.get(f"{metric}_ci")))
                             + 1e-9 * abs(bv) + 1e-15)
                verdict = ("worse" if nv - bv > tolerance else
                           "better" if bv - nv > tolerance else "same")
            rows.append(_row(k, metric, bv, nv, verdict))
    base_costs = {key(r): r for r in baseline.get("costs", [])}
    now_costs = {key(r): r for r in now.get("costs", [])}
    for k in sorted(set(base_costs) | set(now_costs)):
        for metric, up, down in (("seconds", "slower", "faster"),
                                 ("peak_bytes", "larger", "smaller")):
            bv = (base_costs.get(k) or {}).get(metric)
            nv = (now_costs.get(k) or {}).get(metric)
            if bv is None or nv is None:
                verdict = "new" if k not in base_costs else "gone" if k not in now_costs else "-"
            else:
                ratio = nv / bv if bv > 0 else math.inf
                verdict = up if ratio >= factor else down if ratio <= 1 / factor else "same"
            rows.append(_row(k, metric, bv, nv, verdict))
    return rows


def _row(k: tuple[str, str, int], metric: str, base: Any, now: Any, verdict: str
         ) -> dict[str, Any]:
    ratio = now / base if isinstance(base, (int, float)) and isinstance(now, (int, float)) \
        and base != 0 else None
    return dict(estimator=k[0], task=k[1], n_inner=k[2], metric=metric, baseline=base, now=now,
                ratio=ratio, verdict=verdict)


FAILING = ("worse", "slower", "larger")


def format_rows(rows: list[dict[str, Any]], *, show_all: bool = False) -> str:
    """The reviewer's table: failures first, then other changes; unchanged rows counted."""
    from metarl_bench._src.report import _num, _table

    order = {"worse": 0, "slower": 0, "larger": 0, "better": 1, "faster": 1, "smaller": 1,
             "new": 2, "gone": 2, "-": 3, "same": 4}
    is_cost = lambda r: r["metric"] in ("seconds", "peak_bytes")  # noqa: E731
    shown = [r for r in rows if show_all or r["verdict"] != "same" or is_cost(r)]
    shown.sort(key=lambda r: (order.get(r["verdict"], 5), r["estimator"], r["task"],
                              r["n_inner"], r["metric"]))
    table = _table(["estimator", "task", "N", "metric", "baseline", "now", "ratio", "verdict"],
                   [[r["estimator"], r["task"], r["n_inner"], r["metric"], _num(r["baseline"]),
                     _num(r["now"]), "-" if r["ratio"] is None else f"{r['ratio']:.3g}",
                     r["verdict"].upper() if r["verdict"] in FAILING else r["verdict"]]
                    for r in shown])
    same = sum(r["verdict"] == "same" for r in rows if not is_cost(r))
    failed = sum(r["verdict"] in FAILING for r in rows)
    summary = (f"{failed} regression(s)" if failed else "no regression") + \
        f"; {same} statistics unchanged (not shown)" * (not show_all and same > 0)
    return f"{table}\n\n{summary}"


def _toplevel() -> str:
    from metarl_bench._src.errors import ParameterError

    try:
        return subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise ParameterError("--baseline REV needs a git checkout: run metarl-bench check "
                             "inside the repository, or pass --baseline FILE.json") from None


def measure_tree(tree: str, estimators: list[str] | None, rounds: int,
                 progress: Any = None) -> dict[str, Any]:
    """Run the suite in a fresh interpreter with ``tree``'s metarl_bench first on the path.

    ``progress``: a :class:`~metarl_bench._src.progress.Progress` bar that follows the
    estimators measured (the suite reports them on its stderr)."""
    from metarl_bench._src.errors import MetaRLBenchError

    with tempfile.TemporaryDirectory() as scratch:
        # a copy of this file, so that the script's own folder (first on sys.path) holds
        # nothing that could shadow a module of the measured tree
        script = shutil.copy(os.path.abspath(__file__), os.path.join(scratch, "check_suite.py"))
        out = os.path.join(scratch, "suite.json")
        command = [sys.executable, script, "--out", out, "--rounds", str(rounds), "--progress"]
        if estimators:  # JSON: an entry's options hold commas
            command += ["--estimators-json", json.dumps(list(estimators))]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [tree] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        other = []
        with subprocess.Popen(command, cwd=scratch, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) as child:
            for text in child.stderr:
                if text.startswith(_PROGRESS):
                    if progress is not None:
                        progress.set(*map(int, text[len(_PROGRESS):].split()))
                else:
                    other.append(text)
        if child.returncode != 0:
            last = ("".join(other).strip().splitlines() or ["(no output)"])[-1]
            raise MetaRLBenchError(f"the check suite failed on {tree}: {last}")
        with open(out) as handle:
            measured = json.load(handle)
    expected = os.path.realpath(os.path.join(tree, "metarl_bench"))
    if not os.path.realpath(measured["package"]).startswith(expected):
        raise MetaRLBenchError(f"measured {measured['package']}, not the tree {tree}")
    return measured


def load_baseline(spec: str, estimators: list[str] | None, rounds: int, progress: Any = None
                  ) -> tuple[dict[str, Any], str]:
    """A baseline from a JSON file written by ``check --save``, or from a git revision."""
    from metarl_bench._src.errors import ParameterError

    if spec.endswith(".json") or os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError as exc:
            raise ParameterError(f"--baseline {spec!r}: cannot be read: {exc.strerror}"
                                 ) from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ParameterError(f"--baseline {spec!r}: not a suite JSON file (binary, not "
                                 f"UTF-8, or not JSON)") from None
        if not isinstance(data, dict) or data.get("suite_version") != SUITE_VERSION:
            data = data if isinstance(data, dict) else {}
            raise ParameterError(f"--baseline {spec!r}: suite_version "
                                 f"{data.get('suite_version')!r}, expected {SUITE_VERSION}")
        return data, spec
    top = _toplevel()
    resolved = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}"],
                              cwd=top, capture_output=True, text=True)
    if resolved.returncode != 0:
        raise ParameterError(f"--baseline {spec!r} is neither a suite JSON file nor a commit "
                             f"of {top}")
    commit = resolved.stdout.strip()
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "archive", commit, "metarl_bench"], cwd=top,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        return measure_tree(tree, estimators, rounds, progress), f"{spec} ({commit[:10]})"


#: How the suite's child process reports progress on its stderr: "<prefix><done> <total>".
_PROGRESS = "metarl-bench-check-progress "


def _suite_script() -> int:
    parser = argparse.ArgumentParser(description="measure the check suite (internal)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--estimators-json", default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    names = json.loads(args.estimators_json) if args.estimators_json else None

    def report(done: int, total: int) -> None:
        print(f"{_PROGRESS}{done} {total}", file=sys.stderr, flush=True)

    measured = run_suite(names, rounds=args.rounds, progress=report if args.progress else None)
    with open(args.out, "w") as handle:
        json.dump(measured, handle)
    return 0


def current_tree() -> str:
    """The folder holding the metarl_bench being run (the working tree when installed -e)."""
    import metarl_bench

    return os.path.dirname(os.path.dirname(os.path.abspath(metarl_bench.__file__)))


def run_check(baseline: str | None, *, estimators: list[str] | None = None, rounds: int = 5,
              z: float = 3.0, factor: float = 2.0, save: str | None = None,
              show_all: bool = False, out: Any = None, progress: bool = False) -> int:
    """The ``check`` command: 0 when nothing regressed, 1 otherwise. ``progress``: a bar on
    stderr per measured tree."""
    from metarl_bench._src.progress import Progress

    out = out or sys.stdout
    if baseline is not None:
        with Progress(None, f"check {baseline}", enabled=progress, unit="estimator") as bar:
            base, label = load_baseline(baseline, estimators, rounds, bar)
    with Progress(None, "check this tree", enabled=progress, unit="estimator") as bar:
        now = measure_tree(current_tree(), estimators, rounds, bar)
    if save:
        with open(save, "w") as handle:
            json.dump(now, handle, indent=1)
        print(f"suite saved to {save}", file=out)
    if baseline is None:
        return 0
    rows = compare(base, now, z=z, factor=factor)
    print(f"baseline: {label}\nnow:      {current_tree()}\n", file=out)
    print(format_rows(rows, show_all=show_all), file=out)
    return 1 if any(r["verdict"] in FAILING for r in rows) else 0


if __name__ == "__main__":
    sys.exit(_suite_script())
