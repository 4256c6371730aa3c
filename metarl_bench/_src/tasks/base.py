"""The task interface, and the helpers tasks share: seeded draws and inverse-CDF sampling
(re-exported from ``draws``), and checked conversion of user arrays."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.draws import inverse_cdf, normal, uniform  # noqa: F401 (re-exported)
from metarl_bench._src.core.errors import ParameterError, ShapeError, UnsupportedError
from metarl_bench._src.tasks.policies import Policy
from metarl_bench._src.core.trajectories import Trajectories


class Task:
    """Interface every task satisfies (subclass it for a new task).

    A task is an environment family (dynamics, rewards, a distribution of ``n_tasks``
    tasks) plus a ``policy`` (see ``policies``): the task samples trajectories and knows
    its model, the policy turns parameters into log-probabilities and actions.

    Attributes: ``name``, ``policy``, ``param_shape`` (shape of theta, the policy's),
    ``n_tasks`` (size of the task distribution; the meta-objective averages over it),
    ``horizon`` T (None: episodes end at a random time and batches are padded, see
    ``Trajectories.mask``), ``gamma`` (the discount estimators apply to sampled rewards),
    ``has_model`` (exact V available). ``make_task`` records what the task was made with:
    ``spec`` (its registration: id, factory, run defaults), ``spec_kwargs`` (every argument
    of the factory, defaults applied, canonical) and ``params`` (derived from it: what a
    stored result's key and the reports name, see ``registry.task_identity``).
    """

    name: str = "task"
    policy: Policy | None = None
    param_shape: tuple[int, ...] = ()
    n_tasks: int = 1
    horizon: int | None = 1
    gamma: float = 1.0
    has_model: bool = False
    spec: Any = None
    spec_kwargs: dict[str, Any] = {}
    params: dict[str, Any] = {}
    unkeyed: tuple[str, ...] = ()

    def initial_params(self, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> torch.Tensor:
        """The policy's initial parameters, shape ``param_shape``."""
        if self.policy is None:
            raise NotImplementedError
        device = validation.check_device(device)
        return self.policy.initial_params(dtype=dtype, device=device).reshape(self.param_shape)

    def versions(self) -> dict[str, str]:
        """Libraries beyond torch whose versions its results depend on (a simulator's), by
        name; recorded with each result."""
        return {}

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        """``n_traj`` trajectories for each row of ``params`` (R, *param_shape)."""
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, traj: Trajectories) -> torch.Tensor:
        """log pi_theta(a_t|x_t) for each row's own parameters: (R, *P) -> (R, N, T).

        0 on the padded steps of ``traj.mask`` (after an episode ended), with no gradient, so
        they add exactly nothing to any sum an estimator forms.
        """
        if self.policy is None:
            raise NotImplementedError
        if params.shape[0] != traj.n_rows:
            raise ShapeError(f"params has {params.shape[0]} rows, trajectories have {traj.n_rows}")
        out = self.policy.log_prob(params, traj.states, traj.actions)
        return out if traj.mask is None else out.masked_fill(~traj.mask, 0.0)

    def value(self, params: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        """Exact, differentiable V(theta) of each row in its task: (R, *P) -> (R,)."""
        raise NotImplementedError

    def state_values(self, params: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        """Exact value of each state at each time, discounted from time 0: (R, *P) -> (R, T, S).

        The exact critic of the DiCE family; tasks without one raise UnsupportedError.
        """
        raise UnsupportedError(f"task {self.name!r} has no exact per-state values (an exact "
                               f"critic needs a tabular model)")

    def enumeration_size(self, n_inner: int) -> int | None:
        """How many outcomes ``enumerate_inner`` lists for N inner samples (None: it can't)."""
        return None

    def enumerate_inner(self, theta: torch.Tensor, n_inner: int
                        ) -> Iterator[tuple[torch.Tensor, Trajectories]]:
        """Exact enumeration of the inner samples (tasks with an ``enumeration_size``).

        Yields (log-probability of each row (C,), one row of ``n_inner`` trajectories per
        outcome) per task and per chunk; every outcome appears once with its probability.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({shown})"


def as_tensor(name: str, value: Any, shapes: Sequence[tuple[int, ...]]) -> torch.Tensor:
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an array of numbers, got {value!r}") from None

    def fits(shape: tuple[int, ...]) -> bool:
        return out.dim() == len(shape) and all(d in (-1, n) for d, n in zip(shape, out.shape))

    if not any(fits(shape) for shape in shapes):
        def show(shape: tuple[int, ...]) -> str:
            dims = ["K" if d == -1 else str(d) for d in shape]
            return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"

        allowed = " or ".join(show(s) for s in shapes)
        raise ShapeError(f"{name} must have shape {allowed}, got {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise ParameterError(f"{name} contains NaN or infinite entries")
    return out


def distribution(name: str, value: torch.Tensor) -> torch.Tensor:
    if (value < 0).any() or not torch.allclose(value.sum(-1), torch.ones(()).double(), atol=1e-9):
        raise ParameterError(f"{name} must be non-negative and sum to 1 along its last axis")
    return value
