"""Meta-World sampling throughput and the cost of estimating on top of it (ML1).

``Sampler``: per skill (reach, push, pick-place), the batched sampler's env-steps per
CPU-second against Meta-World's own environments and against a raw ``mj_step`` loop on the
same model, measured interleaved (see metaworld_cases.py). ``EstimateShare``: the share of an
``lsf`` estimate on ML1 reach that is not sampling. Sizes are small here (2 goals x 16
trajectories of 100 steps; an estimate on 2 goals, N = M = 4, 100 steps), so that a quick run
stays short: each setup builds an ML1 benchmark (about 3 s) and one sampling call.
benchmarks/pytest/test_bench_metaworld.py measures the field's sizes (10 goals x N = 10 x 500
steps). Skipped when MuJoCo or Meta-World is not installed.
"""

import statistics

from .metaworld_cases import EstimateShare as _EstimateShare
from .metaworld_cases import SKILLS, Throughput, metaworld_available

SMALL = dict(n_tasks=2, n_traj=16, horizon=100)


def _require_metaworld():
    if not metaworld_available():
        raise NotImplementedError("Meta-World is not installed (docs/metaworld.md: "
                                  "pip install -e '.[metaworld]' && pip install --no-deps "
                                  "metaworld==3.1.1)")


class Sampler:
    version = 1
    params = [list(SKILLS)]
    param_names = ["skill"]
    timeout = 300

    def setup(self, skill):
        _require_metaworld()
        self.case = Throughput(skill, **SMALL)

    def track_batch_over_metaworld(self, skill):
        rates = self.case.rates(rounds=1)
        return rates["batch"] / rates["metaworld"]

    track_batch_over_metaworld.unit = "x (env-steps per CPU-second)"

    def track_batch_over_raw_mj_step(self, skill):
        rates = self.case.rates(rounds=1)
        return rates["batch"] / rates["raw"]

    track_batch_over_raw_mj_step.unit = "fraction (env-steps per CPU-second)"


class EstimateShare:
    version = 1
    timeout = 300

    def setup(self):
        _require_metaworld()
        self.case = _EstimateShare(n_tasks=2, n_inner=4, n_outer=4, horizon=100)

    def track_share_outside_sampling(self):
        runs = [self.case.run() for _ in range(3)]
        return statistics.median(own / total for total, own in runs)

    track_share_outside_sampling.unit = "fraction (CPU seconds)"
