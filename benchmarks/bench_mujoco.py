"""MuJoCo sampling throughput and the cost of estimating on top of it (HalfCheetahVel).

``Sampler``: the same 256 trajectories of 100 steps by the task's batched sampler, by its
Gymnasium ``SyncVectorEnv`` sampler, and by a raw Python loop of ``mj_step`` (see
mujoco_cases.py). ``EstimateShare``: one ``lsf`` / ``dice`` estimate on 8 tasks x N = 20
trajectories (M = 20 outer), its time and the fraction of it spent outside sampling.
Skipped when MuJoCo is not installed.
"""

import statistics

from .mujoco_cases import EstimateShare as _EstimateShare
from .mujoco_cases import Throughput, mujoco_available


def _require_mujoco():
    if not mujoco_available():
        raise NotImplementedError("MuJoCo is not installed (pip install -e '.[mujoco]')")


class Sampler:
    version = 1
    params = [["batch", "gymnasium", "raw"]]
    param_names = ["path"]
    timeout = 600

    def setup(self, path):
        _require_mujoco()
        self.case = Throughput()
        self.case.run(path)  # warm up

    def time_sample(self, path):
        self.case.run(path)

    def track_env_steps_per_second(self, path):
        return self.case.env_steps / min(self.case.run(path) for _ in range(3))

    track_env_steps_per_second.unit = "env-steps/s"


class EstimateShare:
    version = 1
    params = [["lsf", "dice"]]
    param_names = ["estimator"]
    timeout = 600

    def setup(self, estimator):
        _require_mujoco()
        self.case = _EstimateShare(estimator)
        self.case.run()  # warm up

    def time_estimate(self, estimator):
        self.case.run()

    def track_share_outside_sampling(self, estimator):
        runs = [self.case.run() for _ in range(3)]
        return statistics.median(own / total for total, own in runs)

    track_share_outside_sampling.unit = "fraction"
