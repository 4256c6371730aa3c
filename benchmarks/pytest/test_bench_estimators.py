"""Timing, allocated memory and statistical efficiency of every registered estimator, and the
speed-up of the batched ``lsf`` over the per-trial implementation.

The grid (estimators x tasks x N) comes from benchmarks/common.py, itself generated from the
registries, so a newly registered estimator is benchmarked here with no edit. Every timed
round gets a fresh seeded generator from its setup, so all rounds time the same draws.
Wall-clock numbers are recorded (``extra_info``, ``--benchmark-json``) and never asserted.
"""

import os

import pytest
import torch

import metarl_bench as mb
from benchmarks.common import (ESTIMATORS, N_GRID, SEED, TASKS, Case,
                               allocated_peak_bytes)
from metarl_bench._src.estimators.reference import per_trial

#: Trials behind the statistics (as the asv suite's Statistics, so the numbers agree).
STATS_TRIALS = 500
ROUNDS = 5

CELLS = [pytest.param(name, key, n, id=f"{name}-{key}-{n}",
                      marks=pytest.mark.benchmark(group=f"estimators {key} N={n}"))
         for name in ESTIMATORS for key in TASKS for n in N_GRID]


def median_seconds(benchmark):
    """Median of the timed rounds; None when timing is off (``--benchmark-disable``)."""
    return benchmark.stats.stats.median if benchmark.stats else None


def timings(benchmark):
    """Median and fastest round; the fastest is the one least disturbed by other load."""
    if not benchmark.stats:
        return {"median": None, "min": None}
    return {"median": benchmark.stats.stats.median, "min": benchmark.stats.stats.min}


def seeded():
    """Setup of one round: the estimator's keyword arguments with a fresh seeded generator."""
    return (), {"generator": torch.Generator().manual_seed(SEED)}


@pytest.mark.parametrize("estimator, task, n_inner", CELLS)
def test_estimator(benchmark, results, estimator, task, n_inner):
    try:  # the asv suite's cell: it probes the pair, so an unsupported one is a skip
        case = Case(estimator, task, n_inner)
    except NotImplementedError as exc:
        pytest.skip(f"{estimator} on {task}: {exc}")
    instance, inner_lr = case.task, case.inner_lr

    def run(generator):
        return case.call(generator)

    benchmark.pedantic(run, setup=seeded, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if not case.statistics:  # see benchmarks/common.py: time and memory only
        benchmark.extra_info.update(estimator=estimator, task=instance.name, n_inner=n_inner,
                                    timed_trials=case.n_trials, n_outer=case.n_outer)
        return

    truth = case.truth  # see Case.truth: which truth each task gets and why
    record = case.evaluate(n_trials=STATS_TRIALS)
    info = dict(
        estimator=estimator, task=instance.name, n_inner=n_inner, inner_lr=inner_lr,
        timed_trials=case.n_trials, n_trials=record["n_trials"], truth=truth,
        truth_kind=record["truth_kind"], moments=record["moments"], bias=record["bias"],
        variance=record["variance"], mse=record["mse"], cosine=record["cosine"],
        trajectories_per_estimate=record["trajectories"],
        mse_x_trajectories=record["mse_x_trajectories"],
        peak_allocated_bytes=allocated_peak_bytes(
            lambda: run(torch.Generator().manual_seed(SEED))))
    benchmark.extra_info.update(info)
    results["cells"][f"{estimator}-{task}-{n_inner}"] = {
        **info, "median_s": median_seconds(benchmark)}


# --------------------------------------------------------------------------------------
# Speed-up of the batched lsf (the targets: >= 10x the throughput of the per-trial
# implementation, whole estimate <= 2x the time of sampling its trajectories). The four
# tests run in this order; the last one turns the medians of the run into ratios.

SPEEDUP_TASK = dict(n_states=20, n_actions=5, horizon=20, gamma=0.8, seed=0)
SPEEDUP_N, SPEEDUP_TRIALS, SPEEDUP_LR = 64, 1000, 1.0
SPEEDUP = pytest.mark.benchmark(group="speedup lsf tabular N=64 x1000")
SAMPLING = "(a) sampling the trajectories"
BATCHED = "(b) batched lsf on pre-sampled trajectories"
FULL = "(c) registered lsf call (sampling included)"
LOOPED = "(d) per-trial lsf on the same samples"


@pytest.fixture(scope="session")
def speedup_case():
    """The task, theta (float64), the rows to sample and one fixed seeded sample of them."""
    task = mb.make_task("tabular-v0", **SPEEDUP_TASK)
    theta = task.initial_params(dtype=torch.float64)
    n_rows = SPEEDUP_TRIALS * task.n_tasks
    rows = theta.expand(n_rows, *theta.shape)
    task_index = torch.arange(n_rows) % task.n_tasks
    inner = task.sample(rows, SPEEDUP_N, task_index, torch.Generator().manual_seed(SEED))
    return dict(task=task, theta=theta, rows=rows, task_index=task_index, inner=inner,
                spec=mb.estimator_spec("lsf"))


@SPEEDUP
def test_speedup_sampling(benchmark, results, speedup_case):
    c = speedup_case

    def sample(generator):
        return c["task"].sample(c["rows"], SPEEDUP_N, c["task_index"], generator)

    benchmark.pedantic(sample, setup=seeded, rounds=10, warmup_rounds=1, iterations=1)
    results["speedup"][SAMPLING] = timings(benchmark)


@SPEEDUP
def test_speedup_lsf_batched(benchmark, results, speedup_case):
    c = speedup_case
    benchmark.pedantic(c["spec"].from_samples, args=(c["task"], c["theta"], c["inner"]),
                       kwargs={"inner_lr": SPEEDUP_LR}, rounds=10, warmup_rounds=1,
                       iterations=1)
    results["speedup"][BATCHED] = timings(benchmark)


@SPEEDUP
def test_speedup_lsf_full_call(benchmark, results, speedup_case):
    c = speedup_case

    def call(generator):
        return c["spec"].fn(c["task"], c["theta"], n_inner=SPEEDUP_N, inner_lr=SPEEDUP_LR,
                            n_trials=SPEEDUP_TRIALS, generator=generator)

    benchmark.pedantic(call, setup=seeded, rounds=10, warmup_rounds=1, iterations=1)
    results["speedup"][FULL] = timings(benchmark)


@SPEEDUP
def test_speedup_lsf_per_trial(benchmark, results, speedup_case):
    c = speedup_case
    looped = per_trial(c["spec"].from_samples)
    # seconds a round: few rounds keep the suite short and still give a median
    estimates = benchmark.pedantic(looped, args=(c["task"], c["theta"], c["inner"]),
                                   kwargs={"inner_lr": SPEEDUP_LR}, rounds=3, iterations=1)
    # a baseline that computed something else would make the ratio meaningless
    batched = c["spec"].from_samples(c["task"], c["theta"], c["inner"], inner_lr=SPEEDUP_LR)
    max_difference = float((estimates - batched).abs().max())
    assert max_difference < 1e-10

    measured = results["speedup"]
    measured[LOOPED] = timings(benchmark)

    def ratio(numerator, denominator, stat):
        top = measured.get(numerator, {}).get(stat)
        bottom = measured.get(denominator, {}).get(stat)
        return top / bottom if top is not None and bottom is not None else None

    ratios = {f"{label}, {stat}": (ratio(top, bottom, stat), target)
              for label, top, bottom, target in (
                  ("throughput speed-up (d) / (b)", LOOPED, BATCHED, ">= 10"),
                  ("whole estimate / sampling (c) / (a)", FULL, SAMPLING, "<= 2"),
                  ("estimate alone / sampling (b) / (a)", BATCHED, SAMPLING, "-"))
              for stat in ("median", "min")}
    results["ratios"].update(ratios)
    # the one-minute load average says how much else shared the CPUs while this ran
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results["load_average"] = load
    benchmark.extra_info.update(
        task="tabular-v0", task_params=SPEEDUP_TASK, n_inner=SPEEDUP_N,
        n_trials=SPEEDUP_TRIALS, dtype="float64", outer="exact", inner_lr=SPEEDUP_LR,
        threads=torch.get_num_threads(), cpus=os.cpu_count(), load_average_1min=load,
        max_abs_difference_vs_batched=max_difference, seconds=measured,
        ratios={label: value for label, (value, _) in ratios.items()},
        targets={"throughput speed-up (d) / (b)": ">= 10",
                 "whole estimate / sampling (c) / (a)": "<= 2"})
