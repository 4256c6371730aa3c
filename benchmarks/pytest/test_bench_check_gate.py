"""The regression gate (``metarl-bench check``) on real timings under load.

Two processes spin on the CPUs while the gate times this tree against a copy of itself,
interleaved round by round. Unchanged code must pass ten runs out of ten, and an ``lsf``
that does its work three times must fail on time and nothing else. These verdicts come from
the clock, so they are measured here with the benchmarks, not in the test suite; each test's
own run time is recorded as its benchmark. Run with::

    python -m pytest benchmarks/pytest/test_bench_check_gate.py --benchmark-only -s
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metarl_bench._src.gate.command import compare, current_tree, measure

# the gate's tests share their helpers (a modified copy of the tree, verdict filters)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_check import by_metric, copied_tree, failing  # noqa: E402

#: Timed in the load tests: the two estimators the old gate misread under load (lsf
#: "SLOWER" x4.84, unbiased "faster"), to keep the ten runs short.
TIMED = ["lsf", "unbiased"]
#: A busy process stops by itself when pytest is gone or after this many seconds, should the
#: fixture's own clean-up never run (a killed pytest).
BUSY_SECONDS = 1200
BUSY = """
import os, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while os.getppid() == parent and time.monotonic() < end:
    pass
"""


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


def test_unchanged_code_passes_ten_runs_out_of_ten_on_a_busy_machine(benchmark, busy_machine,
                                                                      tmp_path):
    """The gate ten times (default rounds and threads) with two CPU-bound processes
    competing for the machine's cores. Statistics and memory are deterministic, so load
    cannot move them: the first run includes them, the other nine time only."""
    baseline = copied_tree(tmp_path)

    def ten_runs():
        runs = []
        for run in range(10):
            assert all(spinner.poll() is None for spinner in busy_machine)
            runs.append(compare(*measure([baseline, current_tree()], TIMED, memory=run == 0,
                                         statistics=run == 0)))
        return runs

    runs = benchmark.pedantic(ten_runs, rounds=1, iterations=1)
    ratios = []
    for run, rows in enumerate(runs):
        assert {r["metric"] for r in rows} >= {"seconds", "cpu_seconds"}
        assert not failing(rows), (run, failing(rows))
        ratios.append({r["estimator"]: round(r["ratio"], 2) for r in rows
                       if r["metric"] == "seconds"})
    benchmark.extra_info["median_time_ratios"] = ratios
    print("per-run median time ratios, unchanged code, busy machine:", ratios)


def test_a_three_times_slower_estimator_fails_the_time_gate(benchmark, busy_machine, tmp_path):
    # lsf computes its estimate three times, from the same generator state each time:
    # the same numbers, three times the work, so only the time rows may fail
    slow = copied_tree(tmp_path, """
        def _three_times(fn):
            def slow(task, theta, *, generator=None, **kwargs):
                state = None if generator is None else generator.get_state()
                for _ in range(3):
                    if state is not None:
                        generator.set_state(state)
                    estimate = fn(task, theta, generator=generator, **kwargs)
                return estimate
            return slow


        _spec = estimator_spec("lsf")
        register_estimator("lsf", _three_times(_spec.fn), from_samples=_spec.from_samples,
                           reference=_spec.reference, needs_model=_spec.needs_model,
                           count_determined=_spec.count_determined, overwrite=True)
    """)
    rows = benchmark.pedantic(
        lambda: compare(*measure([current_tree(), slow], TIMED, memory=False)),
        rounds=1, iterations=1)
    # every cell lsf is timed on fails: the tabular one, and the MuJoCo one where installed
    timed_lsf = {(r["estimator"], r["task"], r["n_inner"], r["metric"]) for r in rows
                 if r["estimator"] == "lsf" and r["metric"] in ("seconds", "cpu_seconds")}
    assert {("lsf", "tabular", 32, "seconds"), ("lsf", "tabular", 32, "cpu_seconds")} <= timed_lsf
    assert failing(rows) == timed_lsf
    wall = by_metric(rows, "lsf", "seconds", "tabular")["ratio"]
    cpu = by_metric(rows, "lsf", "cpu_seconds", "tabular")["ratio"]
    benchmark.extra_info.update(wall_ratio=wall, cpu_ratio=cpu)
    print(f"3x slower lsf: median time ratio {wall:.2f} (wall), {cpu:.2f} (CPU)")
