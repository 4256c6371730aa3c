"""Throughput of registered calls: the lsf call against the per-trial tabular anchor
(``../shared/anchors/ref_tabular.py``, outside the repository, skipped when absent), the
maml call against the bandit's anchor (benchmarks/anchor_bandit.py), and estimates per second
against the batch size.

The anchor is measured interleaved with the call it is compared to: each timed round of the
registered call is preceded (in its setup) by a timed batch of the anchor's trials, so both
see the same load, and the ratio comes from one run. Numbers are recorded, never asserted.
"""

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

import metarl_bench as mb
from benchmarks import anchor_bandit
from benchmarks.common import SEED

ANCHOR = Path(os.environ.get(
    "METARL_BENCH_ANCHOR",
    Path(__file__).resolve().parents[2].parent / "shared" / "anchors" / "ref_tabular.py"))
ANCHOR_TASK = dict(n_states=20, n_actions=5, horizon=20, gamma=0.8, seed=0)
ANCHOR_N, ANCHOR_TRIALS, ANCHOR_REF_TRIALS, ANCHOR_ROUNDS = 64, 1000, 60, 7


def load_anchor():
    """The anchor module, imported without keeping the default dtype it sets on import."""
    if not ANCHOR.is_file():
        pytest.skip(f"anchor {ANCHOR} not found (it lives outside the repository)")
    spec = importlib.util.spec_from_file_location("ref_tabular", ANCHOR)
    module = importlib.util.module_from_spec(spec)
    default = torch.get_default_dtype()
    try:
        spec.loader.exec_module(module)
    finally:
        torch.set_default_dtype(default)
    return module


def seeded():
    return (), {"generator": torch.Generator().manual_seed(SEED)}


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


@pytest.mark.benchmark(group="lsf against the per-trial anchor (tabular N=64 x1000)")
def test_lsf_against_the_per_trial_anchor(benchmark, results):
    anchor = load_anchor()
    task = mb.make_task("tabular-v0", **ANCHOR_TASK)
    theta = task.initial_params()
    lsf = mb.get_estimator("lsf")
    anchor_rates = []

    def anchor_round():
        default = torch.get_default_dtype()
        try:  # the anchor computes in the default dtype, float64 as it sets on import
            torch.set_default_dtype(torch.float64)
            anchor_rates.append(anchor.throughput(trials=ANCHOR_REF_TRIALS, N=ANCHOR_N))
        finally:
            torch.set_default_dtype(default)
        return (), {"generator": torch.Generator().manual_seed(SEED)}

    def call(generator):
        return lsf(task, theta, n_inner=ANCHOR_N, inner_lr=1.0, n_trials=ANCHOR_TRIALS,
                   generator=generator)

    benchmark.pedantic(call, setup=anchor_round, rounds=ANCHOR_ROUNDS, warmup_rounds=1,
                       iterations=1)
    if not benchmark.stats:
        return
    stats = benchmark.stats.stats
    ours_median = ANCHOR_TRIALS / stats.median
    ours_best = ANCHOR_TRIALS / stats.min
    rounds = anchor_rates[-ANCHOR_ROUNDS:]  # the warm-up round's setup ran one more
    ratios = {"lsf call / anchor, est/s, medians": (ours_median / median(rounds),
                                                                   ">= 20"),
              "lsf call / anchor, est/s, best rounds": (ours_best / max(rounds),
                                                                      ">= 20")}
    results["ratios"].update(ratios)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results["load_average"] = load
    results["throughput"]["registered lsf, tabular N=64 x1000"] = ours_median
    results["throughput"]["anchor ref_tabular.py, per trial"] = median(rounds)
    benchmark.extra_info.update(
        anchor=str(ANCHOR), task_params=ANCHOR_TASK, n_inner=ANCHOR_N, n_trials=ANCHOR_TRIALS,
        estimates_per_second=ours_median, anchor_estimates_per_second=rounds,
        ratio_of_medians=ratios["lsf call / anchor, est/s, medians"][0],
        threads=torch.get_num_threads(), load_average_1min=load)


BANDIT_TRIALS, BANDIT_ANCHOR_TRIALS, BANDIT_ROUNDS = 1000, 100, 7


@pytest.mark.benchmark(group="maml against the bandit anchor (30 arms, N=M, x1000, float32)")
@pytest.mark.parametrize("n_inner", [10, 64])
def test_maml_against_the_bandit_anchor(benchmark, results, n_inner):
    task = mb.make_task("bandit-v0", rewards="random", n_arms=anchor_bandit.N_ARMS, seed=0)
    theta = task.initial_params(dtype=torch.float32)
    maml = mb.get_estimator("maml")
    anchor_rates = []

    def anchor_round():
        start = time.perf_counter()
        anchor_bandit.estimates(BANDIT_ANCHOR_TRIALS, n_inner, n_inner)
        anchor_rates.append(BANDIT_ANCHOR_TRIALS / (time.perf_counter() - start))
        return seeded()

    def call(generator):
        return maml(task, theta, n_inner=n_inner, inner_lr=anchor_bandit.INNER_LR,
                    n_trials=BANDIT_TRIALS, n_outer=n_inner, generator=generator)

    benchmark.pedantic(call, setup=anchor_round, rounds=BANDIT_ROUNDS, warmup_rounds=1,
                       iterations=1)
    if not benchmark.stats:
        return
    ours = BANDIT_TRIALS / benchmark.stats.stats.median
    rounds = anchor_rates[-BANDIT_ROUNDS:]  # the warm-up round's setup ran one more
    ratio = ours / median(rounds)
    results["ratios"][f"maml call / bandit anchor, N=M={n_inner}, medians"] = (ratio, "tracked")
    results["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results["throughput"][f"registered maml, 30-arm bandit N=M={n_inner} x1000"] = ours
    results["throughput"][f"anchor_bandit.py, per trial, N=M={n_inner}"] = median(rounds)
    benchmark.extra_info.update(
        n_inner=n_inner, n_outer=n_inner, n_trials=BANDIT_TRIALS, estimates_per_second=ours,
        anchor_estimates_per_second=rounds, ratio_of_medians=ratio,
        threads=torch.get_num_threads(), load_average_1min=results["load_average"])


BATCH_SIZES = [1000, 4000, 16000]


@pytest.mark.benchmark(group="estimates/s against the batch size (30-arm bandit, lsf, N=64)")
@pytest.mark.parametrize("n_trials", BATCH_SIZES)
def test_bandit_throughput_by_batch_size(benchmark, results, n_trials):
    task = mb.make_task("bandit-v0", rewards="random", n_arms=30, seed=0)
    theta = task.initial_params()
    lsf = mb.get_estimator("lsf")

    def call(generator):
        return lsf(task, theta, n_inner=64, inner_lr=1.0, n_trials=n_trials,
                   generator=generator)

    benchmark.pedantic(call, setup=seeded, rounds=5, warmup_rounds=1, iterations=1)
    if benchmark.stats:
        rate = n_trials / benchmark.stats.stats.median
        benchmark.extra_info["estimates_per_second"] = rate
        results["throughput"][f"bandit 30 arms, lsf N=64, {n_trials} trials/call"] = rate
