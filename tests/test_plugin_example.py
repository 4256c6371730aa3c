"""The example plug-in (examples/metarl_bench_plugin_example) shows up everywhere with no edit
in this repository: the registry, `metarl-bench list`, `evaluate`, both benchmark suites and
the `metarl-bench check` suite. It passes the conformance kit in
test_testing.py::test_every_registered_estimator_passes_the_kit, which runs over every
registered estimator. Skipped when the plug-in is not installed (.ci/run installs it).
"""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import metarl_bench as mb

NAME = "unbiased-anchored"
ROOT = Path(__file__).resolve().parents[1]

try:
    metadata.distribution("metarl-bench-plugin-example")
except metadata.PackageNotFoundError:
    pytestmark = pytest.mark.skip(
        reason="the example plug-in is not installed: "
               "pip install -e examples/metarl_bench_plugin_example (.ci/run does)")


def test_the_plugin_is_registered_through_its_entry_point():
    assert NAME in mb.list_estimators()
    spec = mb.estimator_spec(NAME)
    assert spec.fn.__module__ == "metarl_bench_plugin_example" or \
        spec.from_samples.__module__ == "metarl_bench_plugin_example"
    assert (spec.bias, spec.needs_model, spec.count_determined) == ("zero", True, True)
    listed = subprocess.run([sys.executable, "-m", "metarl_bench._src.cli", "list"],
                            capture_output=True, text=True, check=True).stdout
    assert re.search(rf"\n  {NAME} +Score-function estimate of grad F_N with the anchored "
                     r"baseline", listed), listed


def test_evaluate_gives_it_exact_moments_unbiased_with_bounded_variance():
    # the published check bandit, exact moments (no Monte Carlo error): bias zero to rounding; the
    # anchored baseline keeps the variance O(1) where plain `unbiased` grows like N
    task = mb.make_task("bandit-v0", rewards=[1.0, 0.0, 0.5], init_logits=[0.0, 0.5, -0.5])
    result = mb.evaluate(task, [NAME, "unbiased"], n_inner=[4, 64], n_trials=50,
                         inner_lr=2.0, seed=0)
    cells = {(r["estimator"], r["n_inner"]): r for r in result.records}
    assert {r["moments"] for r in result.records} == {"exact"}
    for n in (4, 64):
        assert cells[NAME, n]["bias"] < 1e-12
    # measured: 0.0317 and 0.0446 (unbiased: 0.743 and 12.1)
    assert cells[NAME, 4]["variance"] == pytest.approx(0.03174, rel=1e-3)
    assert cells[NAME, 64]["variance"] == pytest.approx(0.04462, rel=1e-3)
    assert cells["unbiased", 64]["variance"] / cells[NAME, 64]["variance"] > 250


def test_both_benchmark_suites_and_the_check_suite_include_it():
    from benchmarks import common
    from metarl_bench._src.gate.command import measure

    assert NAME in common.ESTIMATORS
    assert common.Case(NAME, "bandit", 4).run(n_trials=3).shape == (3, 3)
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/pytest", "--collect-only", "-q",
         "-p", "no:cacheprovider", "-k", NAME], cwd=ROOT, capture_output=True, text=True)
    ids = [line for line in collected.stdout.splitlines() if f"[{NAME}-" in line]
    # every benchmark task at both N (cells the estimator cannot run skip when run)
    assert len(ids) == 2 * len(common.TASKS), collected.stdout + collected.stderr
    (suite,) = measure([str(ROOT)], [NAME], rounds=1, memory=False, tasks=["tabular"])
    # it needs the exact V: the check tasks with a model, at both N
    assert {(s["task"], s["n_inner"]) for s in suite["statistics"]} == {
        (task, n) for task in ("bandit", "tabular", "lq") for n in (4, 32)}
    # its from-samples form and its registered call, timed beside the task's sampler
    assert {(t["path"], t["estimator"]) for t in suite["times"]} == {
        ("sampler", "-"), ("from-samples", NAME), ("call", NAME)}


def test_its_fast_form_equals_its_twin_with_a_sampled_outer_step():
    # the kit compares the twins with the exact outer step; here M = 3 outer samples, the
    # same ones for both (drawn once, replayed row by row)
    spec = mb.estimator_spec(NAME)
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3, n_tasks=2, seed=4)
    theta = task.initial_params() + 0.1
    index = torch.arange(4) % 2
    inner = task.sample(theta.expand(4, *theta.shape), 5, index,
                        torch.Generator().manual_seed(0))
    recorded = {}

    def outer(adapted, task_index):
        if "all" not in recorded:
            recorded["all"] = task.sample(adapted, 3, task_index,
                                          torch.Generator().manual_seed(1))
            recorded["row"] = 0
            return recorded["all"]
        row = recorded["row"]
        recorded["row"] += 1
        return recorded["all"].rows(slice(row, row + 1))

    fast = spec.from_samples(task, theta, inner, inner_lr=0.7, outer=outer)
    slow = spec.reference(task, theta, inner, inner_lr=0.7, outer=outer)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
