"""Shared set-up of the asv suite: the grid is generated from the registries.

Only the public API of metarl_bench is used, so the suite runs against old commits. Inputs
are seeded; the grid is only ever appended to (a changed entry would break history).
"""

import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch

import metarl_bench as mb

#: Benchmarked tasks: name -> (task id, parameters, inner step size[, call options]).
#: Call options: ``n_outer`` (tasks without a model sample the outer step),
#: ``truth_samples`` (their estimated truth), ``n_trials`` (trials of a timed call, when
#: simulation makes N_TRIALS too costly), ``statistics`` (False: time and memory only,
#: when even a small estimated truth costs far more than the cell) and ``n_grid`` (the N of
#: N_GRID it is measured at, when the others cost far more than the grid's other cells).
#: Append only.
TASKS = {
    "bandit": ("bandit-v0", {"rewards": [1.0, 0.0, 0.5], "init_logits": [0.0, 0.5, -0.5]}, 2.0),
    "tabular": ("tabular-v0", {"n_states": 20, "n_actions": 5, "horizon": 20, "gamma": 0.8,
                               "seed": 0}, 1.0),
    "lq": ("lq-navigation-v0", {"n_tasks": 2, "horizon": 5, "init_std": 0.3}, 0.02),
    "navigation": ("navigation2d-v0", {"n_tasks": 2, "horizon": 10, "hidden": [8],
                                       "policy_seed": 0, "seed": 0}, 0.001,
                   {"n_outer": 4, "truth_samples": 100}),
    # MuJoCo, small: bench_mujoco.py measures the sizes of the literature
    # N = 4 only: at N = 64 one benchmark of one estimator took 15-25 s, as long as the rest
    # of its class's cells together
    "halfcheetah-vel": ("halfcheetah-vel-v0", {"n_tasks": 2, "horizon": 50, "seed": 0}, 1e-3,
                        {"n_outer": 20, "n_trials": 2, "statistics": False, "n_grid": [4]}),
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
#: The regression gate's suite, a standalone file: run from this checkout whatever commit is
#: installed.
GATE_SUITE_MODULE = "metarl_bench_gate_suite"
GATE_SUITE = Path(__file__).resolve().parents[1] / "metarl_bench" / "_src" / "gate" / "suite.py"


class Case:
    """One (estimator, task, N) cell: the task, theta and a call of the estimator."""

    def __init__(self, estimator: str, task_key: str, n_inner: int):
        task_id, params, self.inner_lr, *call_options = TASKS[task_key]
        call_options = call_options[0] if call_options else {}
        self.n_outer = call_options.get("n_outer")
        self.truth_samples = call_options.get("truth_samples", 20_000)
        self.n_trials = call_options.get("n_trials", N_TRIALS)
        self.statistics = call_options.get("statistics", True)
        if "n_grid" in call_options and n_inner not in call_options["n_grid"]:
            raise NotImplementedError(f"{task_key} is measured at N = "
                                      f"{call_options['n_grid']} only (its other cells cost "
                                      f"far more than the grid; see bench_mujoco.py)")
        self.task_key = task_key
        try:
            self.task = mb.make_task(task_id, **params)
        except (mb.UnknownNameError, mb.UnsupportedError) as exc:
            # a task this commit does not have yet, or whose optional extra is absent
            raise NotImplementedError(str(exc)) from None
        self.theta = self.task.initial_params()
        self.estimator = mb.get_estimator(estimator)
        self.name, self.n_inner = estimator, n_inner
        try:
            self.run(n_trials=2)  # unsupported combinations are skipped, not failed
        except mb.UnsupportedError as exc:
            raise NotImplementedError(str(exc)) from None

    def run(self, n_trials: int | None = None, n_steps: int = 1) -> torch.Tensor:
        return self.call(torch.Generator().manual_seed(SEED), n_trials, n_steps)

    def call(self, generator: torch.Generator, n_trials: int | None = None,
             n_steps: int = 1) -> torch.Tensor:
        kwargs = {} if self.n_outer is None else {"n_outer": self.n_outer}
        if n_steps != 1:  # old commits have no n_steps
            kwargs["n_steps"] = n_steps
        return self.estimator(self.task, self.theta, n_inner=self.n_inner,
                              inner_lr=self.inner_lr,
                              n_trials=self.n_trials if n_trials is None else n_trials,
                              generator=generator, **kwargs)

    @property
    def truth(self) -> str:
        """The bandit's finite-N truth is exact; on the MDP and LQ tasks it would have to be
        estimated at more cost than the cell, so their exact N -> infinity limit is used;
        tasks without a model have only the estimated finite-N truth."""
        if self.task_key == "bandit" or not self.task.has_model:
            return "finite"
        return "limit"

    def evaluate(self, n_trials: int) -> dict:
        """The cell's statistics record (``mb.evaluate`` with the case's truth; ``exact``
        is given that truth by ``evaluate`` itself)."""
        kwargs = {} if self.n_outer is None else {"n_outer": self.n_outer,
                                                  "truth_samples": self.truth_samples}
        return mb.evaluate(self.task, [self.name], n_inner=[self.n_inner], n_trials=n_trials,
                           inner_lr=self.inner_lr, seed=SEED, truth=self.truth,
                           **kwargs).records[0]


def allocated_peak_bytes(call: Callable[[], object]) -> int | None:
    """Peak heap bytes memray sees while ``call`` runs alone (None without memray).

    memray tracks every allocation made through the C allocator, torch's CPU tensors
    included, from the start of tracking: the interpreter and torch import are not counted.
    The regression gate's own measure, read from this checkout's file (a standalone module,
    as the gate runs it against any commit), so that the two never differ.
    """
    suite = sys.modules.get(GATE_SUITE_MODULE)
    if suite is None:
        spec = importlib.util.spec_from_file_location(GATE_SUITE_MODULE, GATE_SUITE)
        suite = importlib.util.module_from_spec(spec)
        sys.modules[GATE_SUITE_MODULE] = suite  # its dataclasses look their module up there
        spec.loader.exec_module(suite)
    return suite.peak_bytes(call)
