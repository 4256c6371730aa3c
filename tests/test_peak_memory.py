"""Measured peak memory: ``resources.PeakMemory`` and the ``peak_memory_bytes`` of each cell.

The CPU measure is the process's resident high-water mark (Linux ``/proc``), reset at the
start of the block, so other processes cannot move it; the allowances below are for pages
the interpreter itself may touch meanwhile (a few MiB). Off Linux the measure is
unavailable and these tests are skipped."""

import os

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.core import resources

MiB = 2 ** 20
linux = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                           reason="the resident high-water mark needs Linux /proc")


@linux
def test_a_block_is_charged_for_what_it_holds_at_its_peak():
    with resources.PeakMemory(torch.device("cpu")) as peak:
        held = torch.ones(16 * MiB // 8, dtype=torch.float64)   # 16 MiB, touched
        twice = held * 2                                        # 16 MiB more at the peak
        del held, twice
    assert peak.method == "resident-high-water-mark"
    assert 31 * MiB <= peak.bytes <= 40 * MiB
    with resources.PeakMemory(torch.device("cpu")) as idle:
        pass
    assert idle.bytes <= 4 * MiB


@linux
def test_cells_record_the_peak_memory_of_their_estimates():
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    records = mb.evaluate(task, ["lsf"], n_inner=[2, 256], n_trials=2000, truth="limit"
                          ).records
    small, large = (r["peak_memory_bytes"] for r in records)
    assert all(r["memory_method"] == "resident-high-water-mark" for r in records)
    # 128 times the trajectories per estimate: the large cell holds far more at once
    # (measured: 3.5 and 142 MiB)
    assert small > 0 and large > 20 * small
    # the memory guard's estimate for the large cell (140 MiB) is within a small factor
    estimate, _ = resources.cell_memory(task, n_inner=256, n_outer=None, n_trials=2000,
                                        truth_samples=None, n_boot=200, dtype=torch.float64)
    assert estimate / 3 < large < 3 * estimate


def test_unavailable_where_nothing_can_measure(monkeypatch):
    monkeypatch.setattr(resources, "_reset_high_water_mark", lambda: False)
    with resources.PeakMemory(torch.device("cpu")) as peak:
        pass
    assert peak.bytes is None and peak.method == "unavailable"


@linux
def test_adaptive_cells_are_measured_on_their_first_batch():
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    run = lambda **kw: mb.evaluate(task, ["lsf"], n_inner=[256], truth="limit",  # noqa: E731
                                   **kw).records[0]
    adaptive = run(n_trials=200, target_rel_ci=1e-6, max_trials=2000)
    assert adaptive["n_trials_used"] == 2000
    # 2000 estimates at once hold about 10 times the memory of the first 200
    assert adaptive["peak_memory_bytes"] < run(n_trials=2000)["peak_memory_bytes"] / 4


@linux
@pytest.mark.parametrize("task_id, params, n", [
    ("tabular-v0", {}, 2000),                          # measured 57 MiB, estimated 67
    ("navigation2d-v0", {"horizon": 20}, 24),          # measured 96 MiB, estimated 184
], ids=["tabular", "navigation-mlp"])
def test_the_training_guard_estimate_is_within_a_small_factor_of_an_iterations_peak(
        task_id, params, n):
    from metarl_bench._src.core.registry import estimator_spec
    from metarl_bench._src.training.train import _iteration

    task, spec = mb.make_task(task_id, **params), estimator_spec("lsf")
    theta, generator = task.initial_params(), torch.Generator().manual_seed(0)
    _iteration(task, spec, theta, 2, 2, 2, 0.01, {}, generator)  # libraries' own first use
    with resources.PeakMemory(torch.device("cpu")) as peak:
        _iteration(task, spec, theta, 20, n, n, 0.01, {}, generator)
    estimate, driver = resources.training_memory(task, meta_batch=20, n_inner=n, n_outer=n,
                                                 trajectories=2 * n, dtype=theta.dtype)
    assert driver == "n_inner (--n-inner)"  # the largest count
    # generous, never far below what one iteration holds (a few MiB of interpreter noise)
    assert 0.8 * peak.bytes < estimate < 4 * peak.bytes, (peak.bytes, estimate)


#: Cells whose measured peak is well above the interpreter's noise, one per family; the
#: estimate-to-peak ratios measured when this was written are in the comments.
CELLS = [
    ("tabular-v0", {}, 64, None, 2000, 2000, 1.0),                        # 1.87
    ("lq-navigation-v0", {"dim": 20}, 16, None, 500, 2000, 0.01),          # 1.42
    ("navigation2d-v0", {"horizon": 20, "n_tasks": 4}, 8, 8, 50, 200, 0.1),  # 1.80
    ("halfcheetah-vel-v0", {"horizon": 20, "n_tasks": 2}, 4, 4, 16, 32, 1e-3),  # 1.43
]


@linux
@pytest.mark.parametrize("task_id, params, n, n_outer, n_trials, truth_samples, lr", CELLS,
                         ids=[c[0] for c in CELLS])
def test_the_cell_memory_estimate_is_within_a_factor_2_of_a_cells_peak(
        task_id, params, n, n_outer, n_trials, truth_samples, lr):
    """A cell runs its truth, then its estimates and statistics: its peak is the larger of
    the two blocks' peaks, each measured here."""
    from metarl_bench._src.evaluation.evaluate import (compute_cell, compute_truth,
                                                       estimated_truth, plan)

    if task_id.startswith("halfcheetah"):
        pytest.importorskip("mujoco")
    task = mb.make_task(task_id, **params)

    def run(n, n_trials, truth_samples):
        checked = plan(task, ["lsf"], n_inner=[n], n_trials=n_trials, inner_lr=lr,
                       n_outer=n_outer, seed=0, truth="finite", theta=None, exact=True,
                       truth_samples=truth_samples, n_boot=200, dtype=torch.float64,
                       device="cpu", options=None)
        (config,) = checked.configs
        with resources.PeakMemory(torch.device("cpu")) as truth_peak:
            truth = compute_truth(task, checked.theta, config)
        with resources.PeakMemory(torch.device("cpu")) as cell_peak:
            compute_cell(task, checked.theta, config, truth)
        return config, max(truth_peak.bytes, cell_peak.bytes)

    run(1, 2, 2)                                   # libraries' and simulators' first use
    config, peak = run(n, n_trials, truth_samples)
    estimate, _ = resources.cell_memory(
        task, n_inner=n, n_outer=n_outer, n_trials=n_trials,
        truth_samples=truth_samples if estimated_truth(task, config) else None, n_boot=200,
        dtype=torch.float64)
    assert peak > 50 * MiB                         # far above the interpreter's noise
    assert 0.5 * peak <= estimate <= 2 * peak, (estimate / MiB, peak / MiB)
