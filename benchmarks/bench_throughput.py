"""Estimates per second against the batch size, and the tabular sampler alone.

A call's rate should not fall as it grows (until memory runs out): a 30-arm bandit at N=64
once fell from 56k to 27k estimates/s between 1000 and 4000 trials per call.
"""

import torch

import metarl_bench as mb

from .common import SEED


class BatchSize:
    """One registered lsf call on a 30-arm bandit, N=64, for several trials per call."""

    version = 1
    params = [[1000, 4000, 16000]]
    param_names = ["n_trials"]
    timeout = 300

    def setup(self, n_trials):
        self.task = mb.make_task("bandit-v0", rewards="random", n_arms=30, seed=0)
        self.theta = self.task.initial_params()
        self.lsf = mb.get_estimator("lsf")

    def time_lsf_bandit_30_arms(self, n_trials):
        self.lsf(self.task, self.theta, n_inner=64, inner_lr=1.0, n_trials=n_trials,
                 generator=torch.Generator().manual_seed(SEED))


class Sampling:
    """The 64,000 trajectories of the lsf speed-up case (tabular-v0, 20 states, 5 actions,
    T=20, 1000 rows of N=64), alone."""

    version = 1
    params = [["tabular-v0", "tabular-discounted-v0"]]
    param_names = ["task"]
    timeout = 300

    def setup(self, task):
        kwargs = dict(n_states=20, n_actions=5, gamma=0.8, seed=0)
        if task == "tabular-v0":
            kwargs["horizon"] = 20
        self.task = mb.make_task(task, **kwargs)
        theta = self.task.initial_params()
        self.rows = theta.expand(1000, *theta.shape)
        self.task_index = torch.zeros(1000, dtype=torch.long)

    def time_sample(self, task):
        self.task.sample(self.rows, 64, self.task_index, torch.Generator().manual_seed(SEED))
