"""Hessian-free MAML: the Hessian-vector product replaced by a finite difference of gradients."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.estimators.common import OuterSampler, inner_step, outer_at


def importance_weighted_gradient(task: Any, point: torch.Tensor, inner: Trajectories,
                                 base_log_prob: torch.Tensor, returns: torch.Tensor
                                 ) -> torch.Tensor:
    """g_N(x) = (1/N) sum_i w_i(x) sum_t grad log pi_x(a_t|x_t) A_t of each row (R, *P), on
    the samples ``inner`` drawn at theta: w_i(x) = p_x(tau_i) / p_theta(tau_i) (the policy's
    part; ``base_log_prob`` (R, N) is log p_theta's), A_t = ``returns`` held fixed."""
    point = point.detach().requires_grad_()
    log_prob = task.log_prob(point, inner)                                       # (R, N, T)
    ratio = torch.exp(log_prob.sum(-1).detach() - base_log_prob)                 # (R, N)
    objective = (ratio.unsqueeze(-1) * log_prob * returns).sum(-1).mean(-1)
    (grad,) = torch.autograd.grad(objective.sum(), point)
    return grad


def hf_maml_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                         inner_lr: float, outer: OuterSampler | None = None,
                         delta: float = 0.01) -> torch.Tensor:
    """Hessian-free MAML: (I + eta H) u with H u a central difference of two inner gradients.

    u = grad V(theta'), theta' = theta + eta g_N(theta);
    estimate = u + eta [g_N(theta + delta u) - g_N(theta - delta u)] / (2 delta),
    both gradients on the same inner samples, importance-weighted
    (``importance_weighted_gradient``). As delta -> 0 the difference tends to H_N u with
    H_N = (1/N) sum_i [grad_theta g(tau_i) + g(tau_i) s(tau_i)^T], LSF's Hessian estimate
    applied to u (LSF applies its transpose; the two coincide where every g(tau_i) s(tau_i)^T
    is symmetric, as on a one-step bandit, where g = r s).

    Reference: A. Fallah, A. Mokhtari, A. Ozdaglar. On the Convergence Theory of
    Gradient-Based Model-Agnostic Meta-Learning Algorithms. AISTATS 2020, arXiv:1908.10400.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: against the delta -> 0 limit (an LSF variant: bias vanishing with N,
    variance O(1/N)) a bias O(delta^2) from the third derivative of the importance-weighted
    objective; on the same samples the variance does not grow as delta shrinks (until
    rounding, about machine epsilon / delta).
    """
    delta = validation.finite_float("delta", delta, positive=True)
    step = inner_step(task, theta, inner, inner_lr, differentiable=False)
    u = outer_at(task, step.adapted, inner.task_index, outer).grad
    base_log_prob = step.log_prob.detach().sum(-1)
    plus, minus = (importance_weighted_gradient(task, step.params + sign * delta * u, inner,
                                                base_log_prob, step.returns)
                   for sign in (1.0, -1.0))
    return u + inner_lr * (plus - minus) / (2 * delta)
