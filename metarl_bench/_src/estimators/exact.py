"""The exact meta-gradient as an estimator (zero variance): the reference rows of a comparison."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core.errors import ParameterError
from metarl_bench._src.estimators.common import validate_call
from metarl_bench._src.estimators.truth import meta_gradient


def exact(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float, n_trials: int,
          n_outer: int | None = None, generator: torch.Generator | None = None,
          truth: str = "finite", n_steps: int = 1, wrt: str = "theta") -> torch.Tensor:
    """The exact meta-gradient, repeated n_trials times (reference rows of a comparison).

    estimate = grad F_N(theta) (``truth="finite"``, tasks with an enumeration) or
    grad F_inf(theta) = E_task (I + eta grad^2 V) grad V(theta + eta grad V) (``"limit"``);
    of K = ``n_steps`` inner steps when K > 1; with respect to ``wrt`` (``"theta"``,
    ``"inner_lr"`` or ``"all"``, see ``meta_gradient``).

    Reference: docs/objective.md, "Ground truth".
    Shapes: -> (n_trials, *P), every row the same.
    Bias/variance: zero bias against the truth of the same kind, zero variance.
    """
    n_inner, inner_lr, n_trials, _ = validate_call(task, theta, n_inner, inner_lr, n_trials,
                                                   n_outer, generator, needs_model=True)
    if truth not in ("finite", "limit"):
        raise ParameterError(f"truth must be 'finite' or 'limit', got {truth!r}")
    value = meta_gradient(task, theta, inner_lr=inner_lr,
                          n_inner=n_inner if truth == "finite" else None, n_steps=n_steps,
                          wrt=wrt)
    return value.unsqueeze(0).repeat(n_trials, *([1] * value.dim()))
