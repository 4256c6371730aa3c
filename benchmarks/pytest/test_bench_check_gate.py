"""The regression gate (``metarl-bench check``) on real timings under load.

Two processes spin on the CPUs while the gate times this tree against a copy of itself,
interleaved round by round, on its default grid. Unchanged code must pass ten runs out of
ten; a copy made twice as slow in one hot path (the bandit's draws, the tabular tasks' draws,
the LQ sampler, lsf's from-samples form) must fail on that path's rows, and only on rows that
contain that path. These verdicts come from the clock, so they are measured here with the
benchmarks, not in the test suite; each test's own run time is recorded as its benchmark.
Run with::

    python -m pytest benchmarks/pytest/test_bench_check_gate.py --benchmark-only -s
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metarl_bench._src.gate.command import compare, current_tree, measure
from metarl_bench._src.gate.suite import SAMPLER, TIMED_TASKS

# the gate's tests share their helpers (a modified copy of the tree)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_check import copied_tree  # noqa: E402

#: A busy process stops by itself when pytest is gone or after this many seconds, should the
#: fixture's own clean-up never run (a killed pytest).
BUSY_SECONDS = 3600
BUSY = """
import os, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while os.getppid() == parent and time.monotonic() < end:
    pass
"""
#: Injected slowdowns, appended to a copy's __init__.py: each runs one hot path twice from
#: the same generator state (the same numbers, twice the work).
TWICE = """
def _twice(method):
    def slow(self, params, n_traj, task_index, generator):
        state = generator.get_state()
        method(self, params, n_traj, task_index, generator)
        generator.set_state(state)
        return method(self, params, n_traj, task_index, generator)
    return slow
"""
SLOWER = {
    "bandit draws": TWICE + """
from metarl_bench._src.tasks.bandit import BanditTask as _Task
_Task.sample = _twice(_Task.sample)
""",
    "tabular draws": TWICE + """
from metarl_bench._src.tasks.tabular import TabularTask as _Task
_Task.sample = _twice(_Task.sample)
""",
    "LQ sampler": TWICE + """
from metarl_bench._src.tasks.lq import LQNavigationTask as _Task
_Task.sample = _twice(_Task.sample)
""",
    "lsf's from-samples form": """
import functools as _functools


def _twice(form):
    @_functools.wraps(form)
    def slow(task, theta, inner, **kwargs):
        form(task, theta, inner, **kwargs)
        return form(task, theta, inner, **kwargs)
    return slow


_spec = estimator_spec("lsf")
_slow = _twice(_spec.from_samples)
register_estimator("lsf", batched_estimator(_slow), from_samples=_slow,
                   reference=_spec.reference, needs_model=_spec.needs_model,
                   count_determined=_spec.count_determined, bias=_spec.bias, overwrite=True)
""",
}
#: What each slowdown must fail (path, estimator, tasks), and the rows that may fail with it:
#: those whose measured work contains the slowed path (a call samples; the samplers of both
#: tabular tasks are one; decomposed's default Hessian is lsf's, from its form).
MUST = {
    "bandit draws": ("sampler", SAMPLER, {"bandit-30"}),
    "tabular draws": ("sampler", SAMPLER, {"tabular", "tabular-discounted"}),
    "LQ sampler": ("sampler", SAMPLER, {"lq"}),
    "lsf's from-samples form": ("from-samples", "lsf", set(TIMED_TASKS)),
}
BUILT_ON = {"lsf": {"lsf", "decomposed"}}


def may_fail(slowdown, row):
    path, estimator, tasks = MUST[slowdown]
    if path == "sampler":
        return row.task in tasks and row.path in ("sampler", "call")
    return row.estimator in BUILT_ON[estimator]


@pytest.fixture(scope="module")
def busy_machine():
    """Two processes spinning on the CPU for the tests that use it; always stopped."""
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY, str(os.getpid()),
                                  str(BUSY_SECONDS)]) for _ in range(2)]
    try:
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def time_rows(rows):
    return [r for r in rows if r.metric in ("seconds", "cpu_seconds")]


def test_unchanged_code_passes_ten_runs_out_of_ten_on_a_busy_machine(benchmark, busy_machine,
                                                                      tmp_path):
    """The gate ten times (default grid, rounds and threads) with two CPU-bound processes
    competing for the machine's cores. Statistics and memory are deterministic, so load
    cannot move them: the first run includes them, the other nine time only."""
    baseline = copied_tree(tmp_path)

    def ten_runs():
        runs = []
        for run in range(10):
            assert all(spinner.poll() is None for spinner in busy_machine)
            runs.append(compare(*measure([baseline, current_tree()], memory=run == 0,
                                         statistics=run == 0)))
        return runs

    runs = benchmark.pedantic(ten_runs, rounds=1, iterations=1)
    spread = []
    for run, rows in enumerate(runs):
        timed = time_rows(rows)
        assert len(timed) > 100
        assert not [r for r in rows if r.failed], (run, [r for r in rows if r.failed])
        ratios = sorted(r.ratio for r in timed)
        spread.append((round(ratios[0], 2), round(ratios[-1], 2)))
    benchmark.extra_info["time_ratio_range_per_run"] = spread
    benchmark.extra_info["load_average_1min"] = os.getloadavg()[0]
    print("unchanged code, busy machine, lowest and highest time ratio per run:", spread)


@pytest.mark.parametrize("slowdown", list(SLOWER))
def test_a_twice_slower_hot_path_fails_on_its_rows_only(benchmark, busy_machine, tmp_path,
                                                        slowdown):
    slow = copied_tree(tmp_path, SLOWER[slowdown])
    rows = benchmark.pedantic(
        lambda: compare(*measure([current_tree(), slow], memory=False, statistics=False)),
        rounds=1, iterations=1)
    path, estimator, tasks = MUST[slowdown]
    must = {(path, estimator, task, n_inner, metric) for task in tasks
            for n_inner in TIMED_TASKS[task].n_inner for metric in ("seconds", "cpu_seconds")}
    failed = {(r.path, r.estimator, r.task, r.n_inner, r.metric) for r in rows if r.failed}
    assert must <= failed, sorted(must - failed)
    stray = [r for r in rows if r.failed and not may_fail(slowdown, r)]
    assert not stray, stray
    ratios = {f"{r.path} {r.estimator} {r.task} N={r.n_inner} {r.metric}": round(r.ratio, 2)
              for r in time_rows(rows) if r.failed or (r.path, r.estimator) == (path, estimator)}
    benchmark.extra_info.update(ratios=ratios, load_average_1min=os.getloadavg()[0])
    print(f"{slowdown} twice slower: {ratios}")
