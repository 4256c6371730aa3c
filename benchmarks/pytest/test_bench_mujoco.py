"""MuJoCo throughput on HalfCheetahVel (the issue's targets: the batched sampler at least
1.5x Gymnasium's SyncVectorEnv and at least 75% of a raw ``mj_step`` loop on the same 256
trajectories; the estimator's own computation at most 25% of an lsf / dice estimate on 8
tasks x N = 20 trajectories of 100 steps). Each test measures its paths interleaved, round
by round, so that the ratios come from one run under one load; they are recorded in
``extra_info`` and the summary, never asserted."""

import os

import pytest

from benchmarks.mujoco_cases import EstimateShare, Throughput, interleaved, mujoco_available

pytestmark = pytest.mark.skipif(not mujoco_available(),
                                reason="MuJoCo is not installed (pip install -e '.[mujoco]')")
ROUNDS = 3


@pytest.mark.benchmark(group="mujoco sampler HalfCheetahVel N=256 T=100")
def test_sampler_throughput(benchmark, results):
    case = Throughput()
    paths = {path: (lambda path=path: case.run(path)) for path in ("batch", "gymnasium", "raw")}
    for run in paths.values():
        run()  # warm up
    seconds = {}

    def one_round():
        for name, times in interleaved(paths, 1).items():
            seconds.setdefault(name, []).extend(times)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    rate = {name: case.env_steps / min(times) for name, times in seconds.items()}
    info = {f"env_steps_per_s_{name}": value for name, value in rate.items()}
    info.update(vs_gymnasium=rate["batch"] / rate["gymnasium"], vs_raw=rate["batch"] / rate["raw"],
                load_average=os.getloadavg()[0], env_steps=case.env_steps)
    benchmark.extra_info.update(info)
    results.setdefault("mujoco", {})["throughput"] = info


@pytest.mark.benchmark(group="mujoco estimate HalfCheetahVel 8 tasks N=M=20 T=100")
def test_estimate_share_outside_sampling(benchmark, results):
    cases = {name: EstimateShare(name) for name in ("lsf", "dice")}
    for case in cases.values():
        case.run()  # warm up
    runs = {}

    def one_round():
        for name, case in cases.items():
            runs.setdefault(name, []).append(case.run())

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    info = {}
    for name, measured in runs.items():
        shares = sorted(own / total for total, own in measured)
        info[f"{name}_seconds"] = min(total for total, _ in measured)
        info[f"{name}_share_outside_sampling"] = shares[len(shares) // 2]
    info["load_average"] = os.getloadavg()[0]
    benchmark.extra_info.update(info)
    results.setdefault("mujoco", {})["share"] = info
