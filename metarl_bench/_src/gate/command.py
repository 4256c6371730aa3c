"""``metarl-bench check``: the working tree against a baseline, in one job.

The suite measures every registered estimator on a fixed, seeded grid, each tree in its own
worker process (this file run as a script with that tree's package first on the path; it
uses only the public API, so it also measures old revisions):

* statistics: bias, variance, MSE with their 95% intervals (exact moments on the bandit,
  seeded Monte Carlo on a small MDP). Deterministic: equal seeds make unchanged code
  reproduce its numbers bit for bit, so the gate is tight: a value fails when it exceeds
  the baseline by more than ``z`` joint standard errors (from the two intervals) plus a
  relative 1e-9 for floating-point noise.
* peak bytes of one call under memray. Deterministic too (the same code makes the same
  allocations whatever the machine is doing), so the two trees are compared directly;
  it fails at ``factor`` times the baseline.
* time: wall and CPU seconds of one call, with torch's intra-op threads pinned. Load on a
  shared machine changes from second to second, so the two trees are never timed minutes
  apart: both workers stay alive and the parent alternates between them call by call
  (baseline, now, now, baseline, ...), and the gate is the median over rounds of the
  per-round ratio now / baseline. A load change between rounds moves both sides of a
  ratio alike. It fails at ``factor`` times the baseline.

A baseline saved to JSON (``--save``) keeps statistics and memory comparable, but its times
were measured at another moment under another load, so against a file the time rows are
shown and never gated.

The worker part (``_Suite``, ``_serve``) imports nothing from metarl_bench's internals: as
a script it must run against an old tree whose internals may differ.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Iterable

SUITE_VERSION = 2
STAT_METRICS = ("bias", "variance", "mse")
#: name -> (task id, parameters, inner step size, truth, trials[, evaluate options]).
#: Append only. A task the measured tree does not have is left out of its suite.
CHECK_TASKS = {
    "bandit": ("bandit-v0", {"rewards": [1.0, 0.0, 0.5], "init_logits": [0.0, 0.5, -0.5]},
               2.0, "finite", 200),
    "tabular": ("tabular-v0", {"n_states": 4, "n_actions": 3, "horizon": 4, "gamma": 0.9,
                               "seed": 1}, 1.0, "limit", 2000),
    "lq": ("lq-navigation-v0", {"n_tasks": 1, "horizon": 3, "init_std": 0.3}, 0.02, "limit",
           100),
    # no model: sampled outer step, truth estimated from 50 unbiased estimates
    "navigation": ("navigation2d-v0", {"n_tasks": 1, "horizon": 5, "hidden": [4]}, 0.001,
                   "finite", 50, {"n_outer": 2, "truth_samples": 50}),
}
CHECK_N = (4, 32)
TIMING = ("tabular", 32, 2000)  # (task, N, trials) of the timed and memory-measured call
#: A small timed MuJoCo call, to catch a slower simulator path: task key -> (task id,
#: parameters, inner step size, N, M, trials). Left out where the task or MuJoCo is absent.
#: Append only.
MUJOCO_TIMING = {"halfcheetah-vel": ("halfcheetah-vel-v0", {"n_tasks": 2, "horizon": 20,
                                                            "seed": 0}, 1e-3, 4, 4, 2)}
#: One timed sample repeats the call until it lasts about this long, so that a sample is
#: long against the scheduler's time slices and the timer's resolution.
MIN_SAMPLE_SECONDS = 0.1
MAX_CALLS_PER_SAMPLE = 50
TIME_METRICS = ("seconds", "cpu_seconds")
FAILING = ("worse", "slower", "larger")


# -- measured inside a worker: public API only ---------------------------------------------


class _Suite:
    """The seeded grid on the importable metarl_bench."""

    def __init__(self, estimators: Iterable[str] | None = None):
        import torch

        import metarl_bench as mb

        self.torch, self.mb = torch, mb
        self.unsupported = getattr(mb, "UnsupportedError", NotImplementedError)
        registered = mb.list_estimators()
        # a name the measured tree lacks is reported as new/gone by the comparison; an entry
        # with options (NAME:KEY=VALUE,...) counts by its name
        self.names = ([n for n in estimators if n.partition(":")[0] in registered]
                      if estimators else registered)
        unknown = getattr(mb, "UnknownNameError", ValueError)
        self.tasks = {}
        for key, (task_id, params, lr, truth, trials, *extra) in CHECK_TASKS.items():
            try:
                self.tasks[key] = (mb.make_task(task_id, **params), lr, truth, trials,
                                   extra[0] if extra else {})
            except unknown:  # a task this tree does not have
                continue
        # timed cells: key -> (task, inner step size, N, M, trials)
        task_key, n_inner, trials = TIMING
        self.cells = {task_key: (self.tasks[task_key][0], self.tasks[task_key][1], n_inner,
                                 None, trials)}
        for key, (task_id, params, lr, n_inner, n_outer, trials) in MUJOCO_TIMING.items():
            try:
                self.cells[key] = (mb.make_task(task_id, **params), lr, n_inner, n_outer, trials)
            except (unknown, ImportError, self.unsupported):  # no such task, or no MuJoCo
                continue
        self.timed: list[str] = []

    def statistics(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.names:
            for key, (task, inner_lr, truth, trials, extra) in self.tasks.items():
                options = {name: {"truth": truth}} if name == "exact" else None
                try:
                    result = self.mb.evaluate(task, [name], n_inner=list(CHECK_N),
                                              n_trials=trials, inner_lr=inner_lr, truth=truth,
                                              seed=0, options=options, **extra)
                except self.unsupported:
                    continue
                for record in result.records:
                    rows.append({"estimator": name, "task": key, "n_inner": record["n_inner"],
                                 **{m: record[m] for m in STAT_METRICS},
                                 **{f"{m}_ci": record[f"{m}_ci"] for m in STAT_METRICS}})
        return rows

    def _call(self, item: str) -> Any:
        """The timed call of ``item``, ``"estimator|cell"`` (a key of ``self.cells``)."""
        name, _, cell = item.partition("|")
        task, inner_lr, n_inner, n_outer, trials = self.cells[cell]
        theta = task.initial_params()
        if ":" in name:  # an entry with options needs a tree that reads them
            from metarl_bench._src.estimators.entries import resolve
            entry = resolve(name)
            fn, options = entry.spec.fn, dict(entry.options)
        else:
            fn, options = self.mb.get_estimator(name), {}
        if n_outer is not None:
            options["n_outer"] = n_outer
        return lambda: fn(task, theta, n_inner=n_inner, inner_lr=inner_lr, n_trials=trials,
                          generator=self.torch.Generator().manual_seed(0), **options)

    def prepare(self) -> list[str]:
        """Warm every estimator up on each timed cell; the ``"estimator|cell"`` items that run."""
        self.timed = []
        for name in self.names:
            for cell in self.cells:
                item = f"{name}|{cell}"
                try:
                    self._call(item)()  # lazy imports and caches are not the call's own cost
                except self.unsupported:
                    continue
                self.timed.append(item)
        return self.timed

    def time(self, name: str, calls: int) -> tuple[float, float]:
        """Wall and CPU seconds per call, over ``calls`` back-to-back calls."""
        call = self._call(name)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            call()
        return ((time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls)

    def memory(self) -> list[dict[str, Any]]:
        task_key, n_inner, _ = TIMING
        return [{"estimator": item.partition("|")[0], "task": task_key, "n_inner": n_inner,
                 "peak_bytes": _peak_bytes(self._call(item))} for item in self.timed
                if item.partition("|")[2] == task_key]


def measure_statistics(estimators: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The statistics of the suite on the metarl_bench imported here, in this process."""
    return _Suite(estimators).statistics()


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


def _serve(reply_fd: int, threads: int, estimators: list[str] | None) -> int:
    """Answer the parent's requests, one JSON line each way, until stdin closes.

    Replies go through their own pipe: whatever the measured package prints cannot
    corrupt them.
    """
    import torch

    torch.set_num_threads(threads)
    replies = os.fdopen(reply_fd, "w")

    def reply(**message: Any) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    import metarl_bench

    suite = _Suite(estimators)
    reply(ok={"package": metarl_bench.__file__, "names": suite.names,
              "threads": torch.get_num_threads()})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "time":
                reply(ok=suite.time(request["name"], request["calls"]))
            else:
                reply(ok=getattr(suite, request["op"])())
        except Exception as exc:  # reported by the parent as the tree's failure
            reply(error=f"{type(exc).__name__}: {exc}")
    return 0


# -- the parent --------------------------------------------------------------------------


class _Worker:
    """One tree's measuring process."""

    def __init__(self, tree: str, estimators: list[str] | None, threads: int, scratch: str):
        from metarl_bench._src.core.errors import MetaRLBenchError

        self.tree, self.error = tree, MetaRLBenchError
        self.names: list[str] = []
        self.threads = threads
        # a copy of this file, alone in its folder (the script's folder comes first on
        # sys.path, and must hold nothing that could shadow a module of the measured tree)
        folder = tempfile.mkdtemp(dir=scratch)
        script = shutil.copy(os.path.abspath(__file__), os.path.join(folder, "check_suite.py"))
        self.stderr_path = os.path.join(folder, "worker.stderr")
        read_end, write_end = os.pipe()
        command = [sys.executable, script, "--reply-fd", str(write_end),
                   "--threads", str(threads)]
        if estimators:  # JSON: an entry's options hold commas
            command += ["--estimators-json", json.dumps(list(estimators))]
        thread_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env = dict(os.environ, **thread_env, PYTHONPATH=os.pathsep.join(
            [tree] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                                            pass_fds=(write_end,))
        os.close(write_end)
        self.replies = os.fdopen(read_end)

    def handshake(self) -> None:
        """Wait until the worker has imported its tree, and check that it is that tree."""
        hello = self.receive()
        expected = os.path.realpath(os.path.join(self.tree, "metarl_bench"))
        if not os.path.realpath(hello["package"]).startswith(expected):
            raise self.error(f"measured {hello['package']}, not the tree {self.tree}")
        self.names, self.threads = hello["names"], hello["threads"]

    def send(self, op: str, **arguments: Any) -> None:
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()

    def receive(self) -> Any:
        line = self.replies.readline()
        if not line:
            raise self.error(f"the check suite failed on {self.tree}: {self.death()}")
        message = json.loads(line)
        if "error" in message:
            raise self.error(f"the check suite failed on {self.tree}: {message['error']}")
        return message["ok"]

    def death(self) -> str:
        """How the worker ended, with the last line of its stderr (a crash in native code,
        e.g. a segmentation fault, prints none)."""
        code = self.process.wait()
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        with open(self.stderr_path, errors="replace") as stderr:
            lines = stderr.read().strip().splitlines()
        return f"its worker {how}" + (f": {lines[-1].strip()}" if lines else
                                      ", with nothing on stderr")

    def request(self, op: str, **arguments: Any) -> Any:
        self.send(op, **arguments)
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.replies.close()


def _both(workers: list[_Worker], op: str) -> list[Any]:
    """The same request to every worker at once: for deterministic measures only."""
    for worker in workers:
        worker.send(op)
    return [worker.receive() for worker in workers]


def measure(trees: list[str], estimators: list[str] | None = None, *, rounds: int = 5,
            threads: int = 1, memory: bool = True, statistics: bool = True,
            progress: Any = None) -> list[dict[str, Any]]:
    """Measure one tree, or a baseline tree and a working tree with interleaved timing.

    Returns one suite per tree (plain data, JSON-ready). With two trees their ``times``
    hold paired samples: sample ``i`` of both was taken in round ``i``, back to back.
    ``memory=False`` or ``statistics=False`` leaves those (deterministic) parts out.
    ``progress``: a :class:`~metarl_bench._src.core.progress.Progress` bar that follows the
    steps (statistics and memory, then each timed round).
    """
    steps = 2 + rounds

    def step(done: int) -> None:
        if progress is not None:
            progress.set(done, steps)

    run_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as scratch:
        workers: list[_Worker] = []
        try:
            for tree in trees:
                workers.append(_Worker(tree, estimators, threads, scratch))
            for worker in workers:  # started together, so their imports overlap
                worker.handshake()
            suites = [{"suite_version": SUITE_VERSION, "package": worker.tree, "run_id": run_id,
                       "threads": worker.threads, "rounds": rounds,
                       "measured_at": datetime.datetime.now(datetime.timezone.utc)
                       .isoformat(timespec="seconds")} for worker in workers]
            step(0)
            for suite, rows in zip(suites, _both(workers, "statistics") if statistics
                                   else [[] for _ in workers]):
                suite["statistics"] = rows
            step(1)
            warm = _both(workers, "prepare")
            for suite, rows in zip(suites, _both(workers, "memory") if memory
                                   else [[] for _ in workers]):
                suite["memory"] = rows
            timed = [name for name in warm[0] if all(name in w for w in warm)]
            times = {name: [{"seconds": [], "cpu_seconds": []} for _ in workers]
                     for name in timed}
            calls = {name: _calls_per_sample(workers, name) for name in timed}
            load_before = os.getloadavg()
            step(2)
            for round_index in range(rounds):
                # alternate which tree goes first, so neither always runs in the other's wake
                order = list(range(len(workers)))[::1 if round_index % 2 == 0 else -1]
                for name in timed:
                    for index in order:
                        wall, cpu = workers[index].request("time", name=name, calls=calls[name])
                        times[name][index]["seconds"].append(wall)
                        times[name][index]["cpu_seconds"].append(cpu)
                step(3 + round_index)
            load_after = os.getloadavg()
        finally:
            for worker in workers:
                worker.close()
    for index, suite in enumerate(suites):
        suite["load_average"] = {"before": load_before[0], "after": load_after[0],
                                 "cpus": os.cpu_count()}
        suite["times"] = [{**_timed_cell(item), "calls_per_sample": calls[item],
                           **times[item][index]} for item in timed]
        # cells one tree times and the other cannot: listed, so that the comparison says
        # new or gone, with no samples (there is nothing to pair them with)
        suite["times"] += [{**_timed_cell(item), "calls_per_sample": 0, "seconds": [],
                            "cpu_seconds": []} for item in warm[index] if item not in timed]
    return suites


def _timed_cell(item: str) -> dict[str, Any]:
    """Estimator, task, N and trials of a timed ``"estimator|cell"`` item."""
    name, _, cell = item.partition("|")
    if cell in MUJOCO_TIMING:
        n_inner, trials = MUJOCO_TIMING[cell][3], MUJOCO_TIMING[cell][5]
    else:
        _, n_inner, trials = TIMING
    return {"estimator": name, "task": cell, "n_inner": n_inner, "trials": trials}


def _calls_per_sample(workers: list[_Worker], name: str) -> int:
    """Calls per timed sample, the same on every side so that the work compared is equal."""
    fastest = min(worker.request("time", name=name, calls=1)[0] for worker in workers)
    return max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(MIN_SAMPLE_SECONDS / max(fastest, 1e-6))))


# -- comparison --------------------------------------------------------------------------


def _stderr(ci: list[float | None] | None) -> float:
    if not ci or ci[0] is None or ci[1] is None:
        return 0.0
    return (ci[1] - ci[0]) / (2 * 1.96)


def interleaved(baseline: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether the two suites' times were measured together, round by round."""
    return baseline.get("run_id") is not None and baseline.get("run_id") == now.get("run_id")


def compare(baseline: dict[str, Any], now: dict[str, Any], *, z: float = 3.0,
            factor: float = 2.0) -> list[dict[str, Any]]:
    """One row per (estimator, task, N, metric): baseline, now, ratio and verdict.

    Verdicts: ``worse`` and ``slower``/``larger`` fail; ``better``, ``faster``, ``smaller``,
    ``same``, ``new`` (not in the baseline), ``gone`` (no longer measured) and ``-`` (not
    gated: times against a saved file) do not. Time rows carry the median of the per-round
    ratios, not the ratio of the two medians.
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
    base_memory = {key(r): r["peak_bytes"] for r in baseline.get("memory", [])}
    now_memory = {key(r): r["peak_bytes"] for r in now.get("memory", [])}
    for k in sorted(set(base_memory) | set(now_memory)):
        bv, nv = base_memory.get(k), now_memory.get(k)
        ratio = nv / bv if bv and nv is not None else None
        rows.append(_row(k, "peak_bytes", bv, nv, _cost_verdict(
            k in base_memory, k in now_memory, ratio, factor, "larger", "smaller"), ratio))
    paired = interleaved(baseline, now)
    base_times = {key(r): r for r in baseline.get("times", [])}
    now_times = {key(r): r for r in now.get("times", [])}
    for k in sorted(set(base_times) | set(now_times)):
        for metric in TIME_METRICS:
            b = (base_times.get(k) or {}).get(metric) or []
            n = (now_times.get(k) or {}).get(metric) or []
            bv = statistics.median(b) if b else None
            nv = statistics.median(n) if n else None
            if paired and b and len(b) == len(n):
                ratio = statistics.median(new / old if old > 0 else math.inf
                                          for old, new in zip(b, n))
            else:
                ratio = nv / bv if bv and nv is not None else None
            verdict = _cost_verdict(k in base_times, k in now_times, ratio, factor,
                                    "slower", "faster")
            if not paired and verdict not in ("new", "gone"):
                verdict = "-"
            rows.append(_row(k, metric, bv, nv, verdict, ratio))
    return rows


def _cost_verdict(in_baseline: bool, in_now: bool, ratio: float | None, factor: float,
                  up: str, down: str) -> str:
    if not in_baseline or not in_now:
        return "new" if not in_baseline else "gone"
    if ratio is None:
        return "-"
    return up if ratio >= factor else down if ratio <= 1 / factor else "same"


def _row(k: tuple[str, str, int], metric: str, base: Any, now: Any, verdict: str,
         ratio: float | None = None) -> dict[str, Any]:
    if ratio is None and isinstance(base, (int, float)) and isinstance(now, (int, float)) \
            and base != 0:
        ratio = now / base
    return dict(estimator=k[0], task=k[1], n_inner=k[2], metric=metric, baseline=base, now=now,
                ratio=ratio, verdict=verdict)


COST_METRICS = ("peak_bytes", *TIME_METRICS)


def format_rows(rows: list[dict[str, Any]], *, show_all: bool = False) -> str:
    """The reviewer's table: failures first, then other changes; unchanged rows counted."""
    from metarl_bench._src.reporting.tables import _num, _table

    order = {"worse": 0, "slower": 0, "larger": 0, "better": 1, "faster": 1, "smaller": 1,
             "new": 2, "gone": 2, "-": 3, "same": 4}
    is_cost = lambda r: r["metric"] in COST_METRICS  # noqa: E731
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


def describe(baseline: dict[str, Any] | None, now: dict[str, Any], *, z: float,
             factor: float) -> str:
    """What was measured, how it is gated, and under what load."""
    task_key, n_inner, trials = TIMING
    load = now.get("load_average") or {}
    calls = sorted({t["calls_per_sample"] for t in now.get("times", []) if t["seconds"]})
    lines = [
        f"statistics: bias, variance, MSE on {', '.join(CHECK_TASKS)} at N = "
        f"{', '.join(map(str, CHECK_N))} (seeded, deterministic); fail beyond {z:g} joint "
        f"standard errors",
        f"memory: peak bytes of one {task_key} N={n_inner} call of {trials} trials (memray; "
        f"deterministic, compared directly); fail at {factor:g}x",
        f"time: wall and CPU seconds of that call, torch intra-op threads = "
        f"{now.get('threads')}, {now.get('rounds')} rounds of "
        f"{'/'.join(map(str, calls)) or '-'} call(s) per sample",
    ]
    if baseline is None:
        pass
    elif interleaved(baseline, now):
        lines.append("      baseline and now interleaved round by round, each tree in its own "
                     f"process; ratio = median over rounds of now/baseline; fail at {factor:g}x")
    else:
        base_load = (baseline.get("load_average") or {}).get("before")
        lines.append(
            "      NOT GATED: the baseline file's times were measured at "
            f"{baseline.get('measured_at', 'an unknown time')}"
            + (f" (load average {base_load:.2f})" if base_load is not None else "")
            + ", not interleaved with this run; ratios shown for information only. "
              "Use --baseline REV for the time gate.")
    if load:
        lines.append(f"load average (1 min): {load['before']:.2f} before timing, "
                     f"{load['after']:.2f} after, on {load['cpus']} CPUs")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------


def _commit(spec: str) -> tuple[str, str]:
    """The checkout's top folder and the commit a ``--baseline`` names. An existing path
    that is not a regular file (a directory, /dev/null) is named as what it is, not as a
    missing revision."""
    from metarl_bench._src.core.errors import ParameterError

    kind = _path_kind(spec)
    try:
        top = _toplevel()
        resolved = subprocess.run(["git", "rev-parse", "--verify", "--quiet",
                                   f"{spec}^{{commit}}"], cwd=top, capture_output=True,
                                  text=True)
        if resolved.returncode != 0:
            raise ParameterError(f"--baseline {spec!r} is neither a suite JSON file nor a "
                                 f"commit of {top}")
    except ParameterError:
        if kind is None:
            raise
        raise ParameterError(f"--baseline {spec!r} is {kind}, not a suite JSON file (nor a "
                             f"git revision)") from None
    return top, resolved.stdout.strip()


def _toplevel() -> str:
    from metarl_bench._src.core.errors import ParameterError

    try:
        return subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise ParameterError("--baseline REV needs a git checkout: run metarl-bench check "
                             "inside the repository, or pass --baseline FILE.json") from None


def _load_suite(path: str) -> tuple[dict[str, Any] | None, str]:
    """(the suite in ``path``, "") or (None, what is wrong with it, to follow its name)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror}"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "is not a suite JSON file (binary, not UTF-8, or not JSON)"
    if not isinstance(data, dict) or "suite_version" not in data:
        kind = {"dict": "object", "list": "array"}.get(type(data).__name__,
                                                       type(data).__name__)
        return None, f"is not a suite JSON file (a JSON {kind} with no suite_version)"
    if data["suite_version"] not in (1, SUITE_VERSION):
        return None, (f"has suite_version {data['suite_version']!r}, expected {SUITE_VERSION} "
                      f"(or 1)")
    return data, ""


def read_suite(path: str) -> dict[str, Any]:
    """A suite saved by ``check --save`` (version 1 files: statistics and memory only)."""
    from metarl_bench._src.core.errors import ParameterError

    data, problem = _load_suite(path)
    if data is None:
        raise ParameterError(f"--baseline {path!r} {problem}")
    if data["suite_version"] == 1:
        # version 1 kept one median time and the peak bytes per call in "costs"
        costs = data.pop("costs", [])
        data["memory"] = [{k: c[k] for k in ("estimator", "task", "n_inner", "peak_bytes")}
                          for c in costs if c.get("peak_bytes") is not None]
        data["times"] = [{**{k: c[k] for k in ("estimator", "task", "n_inner")},
                          "seconds": [c["seconds"]], "cpu_seconds": []} for c in costs]
    return data


def check_save(path: str) -> str:
    """A ``--save`` path, checked before anything is measured: a new file, a device, an empty
    file or a suite saved before may be written; anything else (a results store, any other
    file) would be lost, and is refused."""
    from metarl_bench._src.core.errors import ParameterError
    from metarl_bench._src.evaluation.store import check_path

    path = check_path(path, "--save", "a suite JSON file")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        suite, problem = _load_suite(path)
        if suite is None:
            raise ParameterError(f"--save {path!r} already exists and {problem}: it is left as "
                                 f"it is; name a new file, or a suite saved before (replaced)")
    return path


def save_suite(suite: dict[str, Any], path: str) -> None:
    """Write ``suite`` to ``path`` whole or not at all: into a temporary file beside it, then
    renamed over it, so a full disk or a crash leaves the file that was there. A device
    (e.g. /dev/null) is written in place: renaming over it would replace the device."""
    from metarl_bench._src.core.errors import ResultsFileError

    text = json.dumps(suite, indent=1) + "\n"
    target = os.path.realpath(path)  # a symbolic link keeps pointing at the saved suite
    try:
        if os.path.exists(target) and not os.path.isfile(target):
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        descriptor, temporary = tempfile.mkstemp(
            dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 is for its secrecy, not ours
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise ResultsFileError(f"cannot write the suite to {path}: {exc.strerror}; this run's "
                               f"measurements are not saved, and nothing else is lost (a file "
                               f"already there is unchanged)") from None


def _path_kind(path: str) -> str | None:
    """What an existing path that is not a regular file is; None for a file or no path."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    kinds = ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def revision_tree(spec: str, folder: str) -> str:
    """Extract the package of git revision ``spec`` into ``folder``; return its label."""
    top, commit = _commit(spec)
    archive = subprocess.run(["git", "archive", commit, "metarl_bench"], cwd=top,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return f"{spec} ({commit[:10]})"


def current_tree() -> str:
    """The folder holding the metarl_bench being run (the working tree when installed -e)."""
    import metarl_bench

    return os.path.dirname(os.path.dirname(os.path.abspath(metarl_bench.__file__)))


def run_check(baseline: str | None, *, estimators: list[str] | None = None, rounds: int = 5,
              threads: int = 1, z: float = 3.0, factor: float = 2.0, save: str | None = None,
              show_all: bool = False, out: Any = None, progress: bool = False) -> int:
    """The ``check`` command: 0 when nothing regressed, 1 otherwise. ``progress``: a bar on
    stderr."""
    from metarl_bench._src.core.progress import Progress

    from metarl_bench._src.core.errors import ParameterError

    out = out or sys.stdout
    if not 1 <= threads <= (os.cpu_count() or 1):
        raise ParameterError(f"threads must be from 1 to {os.cpu_count() or 1} (the CPUs of "
                             f"this machine), got {threads}")
    if save:
        save = check_save(save)
    here = current_tree()
    with tempfile.TemporaryDirectory() as folder, \
            Progress(None, "check", enabled=progress, unit="step") as bar:
        options = dict(rounds=rounds, threads=threads, progress=bar)
        if baseline is None:
            (now,), base, label = measure([here], estimators, **options), None, None
        elif os.path.isfile(baseline) or (baseline.endswith(".json")
                                          and not os.path.exists(baseline)):
            base, label = read_suite(baseline), baseline
            (now,) = measure([here], estimators, **options)
        else:
            label = revision_tree(baseline, folder)
            base, now = measure([folder, here], estimators, **options)
    regressed = False
    if base is not None:
        rows = compare(base, now, z=z, factor=factor)
        print(f"baseline: {label}\nnow:      {here}\n", file=out)
        print(describe(base, now, z=z, factor=factor) + "\n", file=out)
        print(format_rows(rows, show_all=show_all), file=out)
        regressed = any(r["verdict"] in FAILING for r in rows)
    if save:  # after the comparison: a failed write then loses nothing but the file
        save_suite(now, save)
        print(f"suite saved to {save}", file=out)
    return 1 if regressed else 0


def _worker_main() -> int:
    parser = argparse.ArgumentParser(description="a check suite worker (internal)")
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--estimators-json", default=None)
    args = parser.parse_args()
    names = json.loads(args.estimators_json) if args.estimators_json else None
    return _serve(args.reply_fd, args.threads, names)


if __name__ == "__main__":
    sys.exit(_worker_main())
