"""The DiCE family: estimators whose Hessian comes from autodiff through a DiCE-style inner
surrogate."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.advantages import require_plain
from metarl_bench._src.estimators.common import OuterSampler, grad_of, outer_at, row_params
from metarl_bench._src.trajectories import Trajectories, discounts


def _magic_box(log_prob_sum: torch.Tensor) -> torch.Tensor:
    """DiCE's operator: equals 1, its gradient is the gradient of its argument times it."""
    return torch.exp(log_prob_sum - log_prob_sum.detach())


def dice_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                      inner_lr: float, outer: OuterSampler | None = None) -> torch.Tensor:
    """DiCE: autodiff twice through the DiCE inner surrogate.

    L(theta) = (1/N) sum_i sum_t gamma^t r_t box(sum_{k<=t} log pi_k), box(x) = exp(x - stop(x));
    theta' = theta + eta grad L; estimate = grad_theta [stop(grad V(theta')) . theta'].
    Its Hessian is the causal one: (1/N) sum_i sum_t gamma^t r_t [sum_{k<=t} grad s_k +
    (sum_{k<=t} s_k)(sum_{k<=t} s_k)^T]; on a one-step task it equals LSF exactly.

    Reference: J. Foerster, G. Farquhar, M. Al-Shedivat, T. Rocktaeschel, E. Xing,
    S. Whiteson. DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML 2018,
    arXiv:1802.05098.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: an LSF variant: bias vanishes as N grows, variance O(1/N).
    """
    require_plain(task, "dice", "its surrogate weights raw rewards")
    params = row_params(theta, inner.n_rows)
    log_prob = task.log_prob(params, inner)
    discounted_rewards = inner.rewards * discounts(task.gamma, inner.horizon, inner.rewards)
    objective = (discounted_rewards * _magic_box(log_prob.cumsum(-1))).sum(-1).mean(-1)
    (grad,) = torch.autograd.grad(objective.sum(), params, create_graph=True)
    adapted = params + inner_lr * grad
    out = outer_at(task, adapted, inner.task_index, outer)
    return grad_of((adapted * out.grad).sum(), params)
