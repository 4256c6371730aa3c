#!/usr/bin/env python3
"""The asv workflows of metarl_bench, offline, in the existing environment.

    python benchmarks/tools/asv_history.py current [asv run args...]
    python benchmarks/tools/asv_history.py history [--last K | RANGE...] [--bench REGEX] [--quick]
    python benchmarks/tools/asv_history.py compare BASE HEAD [--factor 1.1]
    python benchmarks/tools/asv_history.py continuous BASE HEAD [--bench REGEX] [--quick]
    python benchmarks/tools/asv_history.py publish [--check]

Every result is stored under the machine name ``metarl-bench`` and the environment of one
interpreter path (see ``pinned_python``): asv keys results by machine *and* by the path of an
``existing`` interpreter, so a second name or a second interpreter would split the history
into series that ``asv publish`` draws apart and ``asv compare`` cannot match.

Old commits are benchmarked without touching the environment: each is ``pip install
--no-deps``-ed into a temporary directory that is put first on PYTHONPATH for asv's
benchmark processes (asv passes the caller's environment through to an ``existing``
interpreter), while the benchmark suite itself always comes from the current checkout.

Standard library only; asv, pip and git are run as subprocesses. Run from anywhere inside
the repository; everything is written under ``.asv/`` or in temporary directories.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MACHINE = "metarl-bench"
PACKAGE = "metarl_bench"
DEFAULT_LAST = 20


class ToolError(Exception):
    pass


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def repo_root() -> Path:
    here = Path(__file__).resolve().parent
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise ToolError(f"not inside a git repository: {out.stderr.strip()}")
    return Path(out.stdout.strip())


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise ToolError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def pinned_python() -> str:
    """The interpreter every run is recorded under.

    Not ``os.path.realpath``: that would leave the venv. ``python`` and ``python3`` of one
    venv are the same interpreter but two asv environments, so prefer ``python3`` (what the
    ``asv`` console script's shebang uses, i.e. what ``asv run --python=same`` records).
    """
    override = os.environ.get("METARL_ASV_PYTHON")
    if override:
        return override
    exe = Path(sys.executable)
    candidate = exe.with_name("python3")
    return str(candidate if candidate.exists() else exe)


def asv_cmd(python: str) -> list[str]:
    return [python, "-m", "asv"]


def env_name(python: str) -> str:
    # Mirrors asv 0.6's ExistingEnvironment.name, so we can find our own result files.
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", "existing-py" + python.replace(os.sep, "_"))


def run(cmd: list[str], cwd: Path, env: dict | None = None, capture: bool = False,
        check: bool = True) -> subprocess.CompletedProcess:
    print("+ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True,
                          capture_output=capture)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()[-2000:] if capture else ""
        raise ToolError(f"{cmd[0]} exited with {proc.returncode}" + (f":\n{detail}" if detail else ""))
    return proc


def ensure_machine(root: Path, python: str) -> None:
    path = Path.home() / ".asv-machine.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if MACHINE not in known:
        run(asv_cmd(python) + ["machine", "--machine", MACHINE, "--yes"], root)


def imported_from(python: str, env: dict) -> str:
    """Where ``import metarl_bench`` resolves for a benchmark process with this environment.

    Run from an empty directory, like asv's benchmark processes (which start in a temporary
    directory), so the current directory cannot shadow anything.
    """
    with tempfile.TemporaryDirectory(prefix="asv-import-") as cwd:
        proc = subprocess.run(
            [python, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
            cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                        else f"exit status {proc.returncode}")
    return proc.stdout.strip()


def benchmark_suite_imports(python: str, env: dict, root: Path) -> str | None:
    """Import the current checkout's suite the way asv does; return the error, if any.

    asv loads ``benchmarks`` by name from the checkout without putting the checkout on
    sys.path; doing the same here keeps ``metarl_bench`` resolving to the commit's copy.
    """
    suite = root / "benchmarks"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('benchmarks', {str(suite / '__init__.py')!r},"
        f" submodule_search_locations=[{str(suite)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['benchmarks'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "import pkgutil, importlib\n"
        "for info in pkgutil.iter_modules(mod.__path__):\n"
        "    if info.name.startswith('bench'):\n"
        "        importlib.import_module('benchmarks.' + info.name)\n"
    )
    with tempfile.TemporaryDirectory(prefix="asv-import-") as cwd:
        proc = subprocess.run([python, "-c", code], cwd=cwd, env=env,
                              capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def overlay_env(path: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("ASV_PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return env


def working_tree_env(root: Path, python: str) -> dict:
    """Environment in which ``metarl_bench`` is the working tree's package.

    Usually the editable install already points here; from another clone (or with a
    non-editable install) the checkout is put first on PYTHONPATH instead.
    """
    env = overlay_env(None)
    want = (root / PACKAGE).resolve()
    where = Path(imported_from(python, env)).resolve().parent
    if where != want:
        env = overlay_env(root)
        where = Path(imported_from(python, env)).resolve().parent
        if where != want:
            raise ToolError(f"{PACKAGE} imports from {where}, not from {want}")
        print(f"note: the environment's {PACKAGE} is not this checkout; using {root} via PYTHONPATH")
    return env


def results_dir(root: Path) -> Path:
    return root / ".asv" / "results" / MACHINE


def has_results(root: Path, commit: str) -> bool:
    return bool(glob.glob(str(results_dir(root) / f"{commit[:8]}-*.json")))


def asv_run_args(python: str, commit: str) -> list[str]:
    return ["run", f"--python={python}", "--machine", MACHINE, "--set-commit-hash", commit]


def rediscover(root: Path, python: str, env: dict) -> None:
    """Rewrite .asv/results/benchmarks.json from the working tree's package.

    Every ``asv run`` rewrites it from whatever package it imported, and the parameter
    grid comes from the registries, so after old commits it would describe an old grid.
    """
    run(asv_cmd(python) + asv_run_args(python, git(root, "rev-parse", "HEAD"))
        + ["--bench", "just-discover"], root, env=env)


# --------------------------------------------------------------------------
# current
# --------------------------------------------------------------------------


def cmd_current(root: Path, python: str, extra: list[str]) -> int:
    ensure_machine(root, python)
    head = git(root, "rev-parse", "HEAD")
    if git(root, "status", "--porcelain", "--", PACKAGE):
        print(f"warning: {PACKAGE}/ has uncommitted changes; they are measured and stored "
              f"under {head[:8]}")
    env = working_tree_env(root, python)
    t0 = time.monotonic()
    proc = run(asv_cmd(python) + asv_run_args(python, head) + extra, root, env=env, check=False)
    print(f"current: {head[:8]} benchmarked in {time.monotonic() - t0:.0f} s "
          f"(asv exit status {proc.returncode})")
    # asv exits 2 when some benchmark failed but results were stored; that is a result.
    return 0 if proc.returncode in (0, 2) and has_results(root, head) else 1


# --------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------


def select_commits(root: Path, last: int | None, specs: list[str]) -> list[str]:
    if not specs:
        return git(root, "rev-list", "--reverse", "--first-parent", "-n",
                   str(last or DEFAULT_LAST), "HEAD").split()
    commits: list[str] = []
    for spec in specs:
        if ".." in spec:
            commits += git(root, "rev-list", "--reverse", "--first-parent", spec).split()
        else:
            commits.append(git(root, "rev-parse", "--verify", spec + "^{commit}"))
    return list(dict.fromkeys(commits))


class _Terminated(KeyboardInterrupt):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def benchmark_commit(root: Path, python: str, commit: str, tmp: Path,
                     asv_extra: list[str]) -> str | None:
    """Benchmark one old commit; return why it was skipped, or None when it ran."""
    src = tmp / "src"
    site = tmp / "site"
    git(root, "worktree", "add", "--detach", "--force", str(src), commit)
    try:
        # --no-build-isolation and --no-index: build with the environment's setuptools,
        # so no network is needed and nothing but the commit's own package is installed.
        pip = subprocess.run(
            [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)],
            cwd=tmp, capture_output=True, text=True)
        if pip.returncode != 0:
            last = (pip.stderr.strip().splitlines() or ["?"])[-1]
            return f"pip install failed: {last}"
        env = overlay_env(site)
        try:
            where = Path(imported_from(python, env)).resolve()
        except ToolError as exc:
            return f"{PACKAGE} does not import: {exc}"
        if site.resolve() not in where.parents:
            return f"{PACKAGE} imports from {where}, not from the commit's install in {site}"
        print(f"  {PACKAGE} -> {where}")
        error = benchmark_suite_imports(python, env, root)
        if error:
            return f"the benchmark suite does not import against this commit: {error}"
        proc = run(asv_cmd(python) + asv_run_args(python, commit) + asv_extra, root, env=env,
                   check=False)
        if proc.returncode not in (0, 2) or not has_results(root, commit):
            return f"asv run exited with {proc.returncode} and stored no results"
        return None
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=root,
                       capture_output=True)


def cmd_history(root: Path, python: str, args: argparse.Namespace) -> int:
    ensure_machine(root, python)
    commits = select_commits(root, args.last, args.revs)
    if not commits:
        raise ToolError("no commits selected")
    head = git(root, "rev-parse", "HEAD")
    asv_extra = []
    if args.bench:
        asv_extra += ["--bench", args.bench]
    if args.quick:
        asv_extra.append("--quick")
    asv_extra += args.asv_args

    done, skipped, failed = [], [], []
    old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    t_all = time.monotonic()
    try:
        for i, commit in enumerate(commits, 1):
            subject = git(root, "log", "-1", "--format=%s", commit)[:60]
            label = f"[{i}/{len(commits)}] {commit[:8]} {subject}"
            if has_results(root, commit):
                print(f"{label}: has results, skipped")
                skipped.append(commit)
                continue
            print(f"{label}: benchmarking", flush=True)
            t0 = time.monotonic()
            tmp = Path(tempfile.mkdtemp(prefix="asv-history-"))
            try:
                why = benchmark_commit(root, python, commit, tmp, asv_extra)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if why:
                print(f"{label}: NOT benchmarked: {why}")
                failed.append((commit, why))
            else:
                print(f"{label}: done in {time.monotonic() - t0:.0f} s")
                done.append(commit)
    except KeyboardInterrupt:
        print("interrupted; worktrees and temporary installs removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)
        if done:
            try:
                rediscover(root, python, working_tree_env(root, python))
            except ToolError as exc:
                print(f"warning: could not rewrite benchmarks.json from the working tree: {exc}",
                      file=sys.stderr)

    print(f"history: {len(done)} benchmarked, {len(skipped)} already had results, "
          f"{len(failed)} not benchmarked, in {time.monotonic() - t_all:.0f} s "
          f"(HEAD is {head[:8]})")
    for commit, why in failed:
        print(f"  not benchmarked: {commit[:8]}: {why}")
    return 0


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------


def load_results(root: Path, commit: str, python: str) -> dict:
    files = sorted(glob.glob(str(results_dir(root) / f"{commit[:8]}-*.json")))
    if not files:
        raise ToolError(f"no results for {commit[:8]} in {results_dir(root)}; "
                        f"run 'history {commit[:8]}' first")
    preferred = [f for f in files if Path(f).stem == f"{commit[:8]}-{env_name(python)}"]
    path = (preferred or files)[0]
    with open(path) as f:
        data = json.load(f)
    return data


def expand(data: dict) -> dict[tuple[str, tuple[str, ...]], dict]:
    """(benchmark, parameter values) -> {"value", "ci"} from one asv result file."""
    columns = data["result_columns"]
    out = {}
    for name, row in data["results"].items():
        cells = dict(zip(columns, row))
        values = cells.get("result")
        if values is None:
            continue
        params = cells.get("params") or []
        combos = [()]
        for choices in params:
            combos = [c + (v,) for c in combos for v in choices]
        if not isinstance(values, list):
            values = [values]
        lo = cells.get("stats_ci_99_a") or [None] * len(values)
        hi = cells.get("stats_ci_99_b") or [None] * len(values)
        for combo, value, a, b in zip(combos, values, lo, hi):
            out[(name, combo)] = {"value": value, "ci": (a, b)}
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def worse(kind: str, old: dict, new: dict, factor: float, atol: float) -> str | None:
    a, b = old["value"], new["value"]
    if _finite(a) and not _finite(b):
        return "now fails"
    if not (_finite(a) and _finite(b)):
        return None
    if kind != "time" and b - a <= atol:
        return None  # deterministic statistics: differences at rounding level are no change
    if b <= a * factor or b <= 0:
        return None
    # Timings with confidence intervals on both sides must also not overlap (asv's
    # criterion when it has statistics); quick runs have none, so the ratio decides.
    a_hi, b_lo = old["ci"][1], new["ci"][0]
    if kind == "time" and all(_finite(x) for x in (a_hi, b_lo)) and b_lo <= a_hi:
        return None
    return f"{b / a:.2f}x" if a > 0 else f"{a:.3g} -> {b:.3g}"


def kind_of(name: str) -> str | None:
    method = name.rsplit(".", 1)[-1]
    if method.startswith("time_"):
        return "time"
    if method.startswith("peakmem_") or method == "track_allocated_bytes":
        return "memory"
    if method in ("track_bias", "track_variance", "track_mse"):
        return method[len("track_"):]
    return None


def cmd_compare(root: Path, python: str, args: argparse.Namespace) -> int:
    base = git(root, "rev-parse", "--verify", args.base + "^{commit}")
    head = git(root, "rev-parse", "--verify", args.head + "^{commit}")
    old, new = expand(load_results(root, base, python)), expand(load_results(root, head, python))

    cmd = asv_cmd(python) + ["compare", base, head, "--machine", MACHINE, f"--python={python}",
                             "--factor", str(args.factor)]
    if args.split:
        cmd.append("--split")
    proc = run(cmd, root, capture=True, check=False)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        print(proc.stderr, end="", file=sys.stderr)
        raise ToolError(f"asv compare exited with {proc.returncode}")

    findings: dict[str, list[str]] = {}
    for (name, combo), cell in sorted(old.items()):
        kind = kind_of(name)
        if kind is None or (name, combo) not in new:
            continue
        why = worse(kind, cell, new[(name, combo)], args.factor, args.atol)
        if why:
            estimator = combo[0].strip("'") if combo else "?"
            where = ", ".join(v.strip("'") for v in combo[1:])
            findings.setdefault(estimator, []).append(
                f"{name.split('.', 1)[-1]}({where}) {kind} worse: {why}")

    print()
    print(f"summary ({base[:8]} -> {head[:8]}, factor {args.factor}):")
    if not findings:
        print("  nothing got worse")
        return 0
    for estimator in sorted(findings):
        print(f"  {estimator}:")
        for line in findings[estimator]:
            print(f"    {line}")
    print("  worse: " + ", ".join(sorted(findings)))
    return 1


# --------------------------------------------------------------------------
# publish
# --------------------------------------------------------------------------


def benchmark_with_data(html: Path) -> str:
    """First benchmark of index.json that has a graph: after runs of a subset, the first
    benchmark overall may have none, and its page would only show "No data"."""
    names = json.loads((html / "index.json").read_text()).get("benchmarks", {})
    drawn = {p.stem for p in (html / "graphs").rglob("*.json") if p.parent.name != "summary"}
    for name in names:
        if name in drawn:
            return name
    raise ToolError(f"no benchmark in {html} has any data; run 'current' first")


def cmd_publish(root: Path, python: str, args: argparse.Namespace) -> int:
    html = root / ".asv" / "html"
    t0 = time.monotonic()
    run(asv_cmd(python) + ["publish"], root)
    # asv publish wipes the html dir, so the CDN assets are vendored again every time.
    run([sys.executable, str(root / "benchmarks" / "dashboard" / "vendor_assets.py"), str(html)], root)
    print(f"publish: {html} in {time.monotonic() - t0:.0f} s")
    if args.check:
        cmd = [sys.executable, str(root / "benchmarks" / "dashboard" / "check_offline.py"), str(html),
               "--bench", args.bench or benchmark_with_data(html)]
        if args.screenshot:
            cmd += ["--screenshot", args.screenshot]
        return run(cmd, root, check=False).returncode
    return 0


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    # Its arguments go to 'asv run' untouched (parse_known_args below), e.g. --bench, --quick.
    sub.add_parser("current", help="benchmark the checkout, stored under HEAD's hash; "
                   "further arguments go to 'asv run'")

    p = sub.add_parser("history", help="benchmark commits that have no results yet")
    p.add_argument("--last", type=int, metavar="K",
                   help=f"the last K commits of the current branch (default {DEFAULT_LAST})")
    p.add_argument("revs", nargs="*", metavar="RANGE",
                   help="git ranges A..B and/or single commits (default: --last %d)" % DEFAULT_LAST)
    p.add_argument("--bench", metavar="REGEX", help="only benchmarks matching REGEX")
    p.add_argument("--quick", action="store_true", help="each benchmark run once")
    p.add_argument("--asv-arg", dest="asv_args", action="append", default=[],
                   help="another 'asv run' argument (repeatable)")

    p = sub.add_parser("compare", help="asv compare, then a summary of what got worse")
    p.add_argument("base")
    p.add_argument("head")
    p.add_argument("--factor", type=float, default=1.1)
    p.add_argument("--atol", type=float, default=1e-12,
                   help="bias/variance/MSE increases up to this are no change (default %(default)s)")
    p.add_argument("--split", action="store_true", help="asv compare --split")

    p = sub.add_parser("continuous", help="history of BASE and HEAD, then compare them "
                       "(what 'asv continuous' does, which refuses existing environments)")
    p.add_argument("base")
    p.add_argument("head")
    p.add_argument("--bench", metavar="REGEX")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--factor", type=float, default=1.1)
    p.add_argument("--atol", type=float, default=1e-12)
    p.add_argument("--split", action="store_true")

    p = sub.add_parser("publish", help="asv publish + vendored assets (+ offline check)")
    p.add_argument("--check", action="store_true", help="then check_offline.py in headless Chromium")
    p.add_argument("--bench", help="benchmark page for --check")
    p.add_argument("--screenshot", help="PNG path for --check")

    args, unknown = ap.parse_known_args(argv)
    if unknown and args.command != "current":
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        root = repo_root()
        python = pinned_python()
        if args.command == "current":
            return cmd_current(root, python, [a for a in unknown if a != "--"])
        if args.command == "history":
            if args.last is not None and args.revs:
                ap.error("history: give --last K or commits/ranges, not both")
            return cmd_history(root, python, args)
        if args.command == "compare":
            return cmd_compare(root, python, args)
        if args.command == "continuous":
            args.last, args.revs, args.asv_args = None, [args.base, args.head], []
            status = cmd_history(root, python, args)
            return status if status else cmd_compare(root, python, args)
        return cmd_publish(root, python, args)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
