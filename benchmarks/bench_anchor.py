"""The library against the bandit's anchor (benchmarks/anchor_bandit.py, a NumPy per-trial
loop written from the formulas): maml on the 30-arm bandit, N = M, 1000 estimates a call in
float32 with one torch thread, interleaved round by round with the anchor's trials in one
process, so that the ratio is tracked across commits under whatever load the run had."""

import statistics
import time

import torch

import metarl_bench as mb

from . import anchor_bandit
from .common import SEED

TRIALS, ANCHOR_TRIALS, ROUNDS = 1000, 100, 5


class BanditAnchor:
    version = 1
    params = [[10, 64]]
    param_names = ["n_inner"]
    timeout = 300

    def setup(self, n_inner):
        torch.set_num_threads(1)
        self.task = mb.make_task("bandit-v0", rewards="random", n_arms=anchor_bandit.N_ARMS,
                                 seed=0)
        self.theta = self.task.initial_params(dtype=torch.float32)
        self.maml = mb.get_estimator("maml")
        self.call(n_inner)  # warm up
        anchor_bandit.estimates(2, n_inner, n_inner)

    def call(self, n_inner):
        return self.maml(self.task, self.theta, n_inner=n_inner, inner_lr=anchor_bandit.INNER_LR,
                         n_trials=TRIALS, n_outer=n_inner,
                         generator=torch.Generator().manual_seed(SEED))

    def time_maml_call(self, n_inner):
        self.call(n_inner)

    def track_speedup_over_anchor(self, n_inner):
        """Median estimates/s of the call over the anchor's, rounds alternated."""
        ours, anchor = [], []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            anchor_bandit.estimates(ANCHOR_TRIALS, n_inner, n_inner)
            anchor.append(ANCHOR_TRIALS / (time.perf_counter() - start))
            start = time.perf_counter()
            self.call(n_inner)
            ours.append(TRIALS / (time.perf_counter() - start))
        return statistics.median(ours) / statistics.median(anchor)

    track_speedup_over_anchor.unit = "x"
