"""Wall-clock cost, memory and statistical efficiency of every registered estimator.

Generated from the registries (see common.py): an estimator registered in-tree or by a
plug-in package is benchmarked here with no edit to this file.
"""

import json
import os
import statistics
import time

import torch

import metarl_bench as mb

from .common import ESTIMATORS, N_GRID, SEED, TASKS, Case, allocated_peak_bytes

PARAMS = [ESTIMATORS, list(TASKS), N_GRID]
PARAM_NAMES = ["estimator", "task", "n_inner"]


class Estimate:
    """One batch of N_TRIALS (or the task's n_trials) meta-gradient estimates, sampling
    included."""

    version = 1
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup(self, estimator, task, n_inner):
        self.case = Case(estimator, task, n_inner)

    def time_estimate(self, estimator, task, n_inner):
        self.case.run()

    def peakmem_estimate(self, estimator, task, n_inner):
        self.case.run()


class Allocation:
    """Bytes allocated by the estimator call alone: the peak heap memory memray sees while
    tracking that one call (the interpreter, torch and the task built before it excluded)."""

    version = 1
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup(self, estimator, task, n_inner):
        try:
            import memray  # noqa: F401
        except ImportError:
            raise NotImplementedError("memray is not installed")
        self.case = Case(estimator, task, n_inner)
        self.case.run()  # warm up: lazy imports and caches are not the call's own memory

    def track_allocated_bytes(self, estimator, task, n_inner):
        return allocated_peak_bytes(self.case.run)

    track_allocated_bytes.unit = "bytes"


class Statistics:
    """Bias, variance and MSE against the truth, deterministic for a fixed seed.

    Bandit: exact enumerated moments against the exact grad F_N. Tabular and LQ: 500 seeded
    trials against the exact grad F_inf (an estimated finite truth would cost more than the
    cell). Navigation (no model): against grad F_N estimated from 100 unbiased estimates.
    Version 2: ``bias`` is the noise-corrected bias, ``mse`` = bias^2 + variance.

    One evaluation serves the three tracks of a cell: asv runs a class with a
    ``setup_cache`` in one folder (the one ``setup_cache`` returns), where ``setup`` keeps
    each cell's record as JSON.
    """

    version = 2
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup_cache(self):
        return os.getcwd()

    def setup(self, folder, estimator, task, n_inner):
        path = os.path.join(folder, f"statistics-{estimator}-{task}-{n_inner}.json")
        if os.path.exists(path):
            with open(path) as handle:
                self.record = json.load(handle)
        else:
            self.record = self._evaluate(estimator, task, n_inner)
            with open(path, "w") as handle:
                json.dump(self.record, handle)
        if self.record is None:
            raise NotImplementedError(f"{estimator} on {task}: no statistics (see the class)")

    @staticmethod
    def _evaluate(estimator, task, n_inner):
        """The cell's record, or None when it has none (unsupported, time-only task)."""
        try:
            case = Case(estimator, task, n_inner)
            if not case.statistics:
                return None
            record = case.evaluate(n_trials=500)
        except (NotImplementedError, mb.UnsupportedError):
            return None
        return {metric: record[metric] for metric in ("bias", "variance", "mse")}

    def track_bias(self, _, estimator, task, n_inner):
        return self.record["bias"]

    def track_variance(self, _, estimator, task, n_inner):
        return self.record["variance"]

    def track_mse(self, _, estimator, task, n_inner):
        return self.record["mse"]

    track_bias.unit = "norm"
    track_variance.unit = "squared norm"
    track_mse.unit = "squared norm"


class MultiStep:
    """K inner steps (``n_steps``, fresh trajectories at each theta_k) on the tabular task at
    N = 16: the cost of K steps against one, for every estimator that takes several (the
    others are skipped). An old commit without ``n_steps`` skips every cell."""

    version = 1
    params = [ESTIMATORS, [1, 2, 3]]
    param_names = ["estimator", "n_steps"]
    timeout = 300

    def setup(self, estimator, n_steps):
        self.case = Case(estimator, "tabular", 16)
        try:
            self.case.run(n_trials=2, n_steps=n_steps)
        except (mb.UnsupportedError, TypeError) as exc:
            raise NotImplementedError(str(exc)) from None

    def time_estimate(self, estimator, n_steps):
        self.case.run(n_steps=n_steps)


class Truncation:
    """A truncated meta-gradient: ``lsf`` through K = 100 inner steps (fresh trajectories at
    each theta_k) with only the last ``window`` steps differentiated, on the tabular task at
    N = 16 with the exact outer step. ``track_cost_over_sampling``: the time of one batch of
    estimates over the time that same call spends sampling its K x N trajectories per trial
    (the task's ``sample``, timed where the estimate calls it), median of 5 calls. Both
    times come from one call, so the machine's load cancels. The backward pass through the
    window should cost no more than half the sampling (ratio <= 1.5 at window 10). A commit
    without ``truncate`` skips.

    Version 2: the denominator is the estimate's own sampling. Version 1 sampled K x N
    trajectories per trial at theta alone, where every row shares one policy table: steps
    1..K of the estimate draw at each row's own theta_k, with a table per row, about 20%
    dearer, so version 1 overstated the ratio."""

    version = 2
    params = [[0, 10, 100]]
    param_names = ["window"]
    timeout = 600
    n_steps, n_inner, n_trials, rounds = 100, 16, 20, 5

    def setup(self, window):
        task_id, params, self.inner_lr, *_ = TASKS["tabular"]
        self.task = mb.make_task(task_id, **params)
        self.theta = self.task.initial_params()
        self.estimator = mb.get_estimator("lsf")
        self.sampling = 0.0
        sample = self.task.sample

        def timed_sample(*args, **kwargs):
            start = time.perf_counter()
            try:
                return sample(*args, **kwargs)
            finally:
                self.sampling += time.perf_counter() - start

        self.task.sample = timed_sample
        try:
            self.estimate(torch.Generator().manual_seed(SEED), 1, window)
        except (TypeError, mb.MetaRLBenchError) as exc:
            raise NotImplementedError(str(exc)) from None

    def estimate(self, generator, n_trials, window):
        return self.estimator(self.task, self.theta, n_inner=self.n_inner,
                              inner_lr=self.inner_lr, n_trials=n_trials,
                              n_steps=self.n_steps, truncate=window, generator=generator)

    def track_cost_over_sampling(self, window):
        ratios = []
        for round_ in range(self.rounds):
            self.sampling = 0.0
            start = time.perf_counter()
            self.estimate(torch.Generator().manual_seed(SEED + round_), self.n_trials, window)
            ratios.append((time.perf_counter() - start) / self.sampling)
        return statistics.median(ratios)

    track_cost_over_sampling.unit = "estimate time / its sampling time"
