"""The linearized score function (LSF) estimator."""

from __future__ import annotations

from typing import Any

import torch
from torch.func import jvp

from metarl_bench._src.estimators import bandit_forms
from metarl_bench._src.estimators.common import (OuterSampler, grad_of, inner_step, outer_at,
                                                pathwise)
from metarl_bench._src.core.trajectories import Trajectories


def lsf_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                     inner_lr: float, outer: OuterSampler | None = None) -> torch.Tensor:
    """Linearized score function (LSF) estimate.

    estimate = (I + eta H_N)^T grad V(theta'),
    H_N = (1/N) sum_i [grad_theta g(tau_i) + g(tau_i) s(tau_i)^T], from the same tau_i that
    define theta'. The score part is computed as (eta/N) sum_i s(tau_i) (g(tau_i) . u) with
    u = grad V(theta'), and g(tau_i) . u by one forward-mode pass.

    Reference: Y. Tang. Biased Gradient Estimate with Drastic Variance Reduction for Meta
    Reinforcement Learning. ICML 2022, arXiv:2112.07328.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: bias O(1/sqrt(N)) in theory (about 1/N seen on bandits); variance
    O(1/N) (+ O(1/M) with sampled outer).
    """
    if bandit_forms.applies(task, inner, outer):
        return bandit_forms.bandit_step(task, theta, inner, inner_lr, outer).lsf()
    step = inner_step(task, theta, inner, inner_lr)
    out = outer_at(task, step.adapted, inner.task_index, outer)
    _, log_prob_along_u = jvp(lambda p: task.log_prob(p, inner), (step.params.detach(),),
                              (out.grad,))
    g_dot_u = (log_prob_along_u * step.returns).sum(-1)                      # (R, N)
    score_term = (inner_lr / inner.n_traj) * (g_dot_u.detach() * step.log_prob.sum(-1)).sum()
    return grad_of(pathwise(step, out) + score_term, step.params)
