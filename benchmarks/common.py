"""Shared set-up of the asv suite: the grid is generated from the registries.

Only the public API of metarl_bench is used, so the suite runs against old commits. Inputs
are seeded; the grid is only ever appended to (a changed entry would break history).
"""

import os
import tempfile
from typing import Callable

import torch

import metarl_bench as mb

#: Benchmarked tasks: name -> (task id, parameters, inner step size). Append only.
TASKS = {
    "bandit": ("bandit-v0", {"rewards": [1.0, 0.0, 0.5], "init_logits": [0.0, 0.5, -0.5]}, 2.0),
    "tabular": ("tabular-v0", {"n_states": 20, "n_actions": 5, "horizon": 20, "gamma": 0.8,
                               "seed": 0}, 1.0),
}
N_GRID = [4, 64]
N_TRIALS = 200
SEED = 0

#: Registered estimators deliberately left out of the suite, with the reason. Empty today.
EXCLUDED: dict[str, str] = {}


def estimator_names() -> list[str]:
    """Every registered estimator (in-tree or plug-in) that is not explicitly excluded.

    Fails loudly at import time when the exclusions name an estimator that is no longer
    registered, or when a registered estimator would end up with no benchmark.
    """
    registered = mb.list_estimators()
    stale = sorted(set(EXCLUDED) - set(registered))
    if stale:
        raise RuntimeError(f"benchmarks/common.py excludes unregistered estimators: {stale}")
    names = [name for name in registered if name not in EXCLUDED]
    missing = sorted(set(registered) - set(names) - set(EXCLUDED))
    if missing:
        raise RuntimeError(f"registered estimators with no benchmark: {missing}")
    return names


ESTIMATORS = estimator_names()


class Case:
    """One (estimator, task, N) cell: the task, theta and a call of the estimator."""

    def __init__(self, estimator: str, task_key: str, n_inner: int):
        task_id, params, self.inner_lr = TASKS[task_key]
        self.task = mb.make_task(task_id, **params)
        self.theta = self.task.initial_params()
        self.estimator = mb.get_estimator(estimator)
        self.name, self.n_inner = estimator, n_inner
        try:
            self.run(n_trials=2)  # unsupported combinations are skipped, not failed
        except mb.UnsupportedError as exc:
            raise NotImplementedError(str(exc)) from None

    def run(self, n_trials: int = N_TRIALS, n_steps: int = 1) -> torch.Tensor:
        steps = {} if n_steps == 1 else {"n_steps": n_steps}  # old commits have no n_steps
        return self.estimator(self.task, self.theta, n_inner=self.n_inner,
                              inner_lr=self.inner_lr, n_trials=n_trials,
                              generator=torch.Generator().manual_seed(SEED), **steps)


def allocated_peak_bytes(call: Callable[[], object]) -> int | None:
    """Peak heap bytes memray sees while ``call`` runs alone (None without memray).

    memray tracks every allocation made through the C allocator, torch's CPU tensors
    included, from the start of tracking: the interpreter and torch import are not counted.
    """
    try:
        import memray
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "call.bin")
        with memray.Tracker(path):
            call()
        return int(memray.FileReader(path).metadata.peak_memory)
