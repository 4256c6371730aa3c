"""MAML's estimators: naive-Hessian MAML and first-order MAML (both biased at every N)."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.estimators import bandit_forms
from metarl_bench._src.estimators.common import (OuterSampler, grad_of, inner_step, outer_at,
                                                pathwise)
from metarl_bench._src.core.trajectories import Trajectories


def maml_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                      inner_lr: float, outer: OuterSampler | None = None) -> torch.Tensor:
    """Naive-Hessian MAML: differentiate the inner surrogate with the returns held constant.

    estimate = (I + eta J_N)^T grad V(theta'),  J_N = (1/N) sum_i grad_theta g(tau_i)
    (only the grad^2 log pi terms; the score products E[g s^T] of the Hessian are missing).

    Reference: C. Finn, P. Abbeel, S. Levine. Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks. ICML 2017, arXiv:1703.03400 (the MAML-RL code).
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: biased for every N: the bias tends to eta E[g s^T]^T grad V(theta');
    variance O(1/N).
    """
    if bandit_forms.applies(task, inner, outer):
        return bandit_forms.bandit_step(task, theta, inner, inner_lr, outer).maml()
    step = inner_step(task, theta, inner, inner_lr)
    return grad_of(pathwise(step, outer_at(task, step.adapted, inner.task_index, outer)),
                 step.params)


def fomaml_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                        inner_lr: float, outer: OuterSampler | None = None) -> torch.Tensor:
    """First-order MAML: the outer gradient at theta', ignoring how theta' depends on theta.

    estimate = grad V(theta'),  theta' = theta + eta g_N.

    Reference: C. Finn, P. Abbeel, S. Levine. Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks. ICML 2017, arXiv:1703.03400.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: biased for every N, the bias tends to -eta E_task grad^2 V grad V(theta')
    (it drops the whole Hessian); variance O(1/N) (+ O(1/M) with sampled outer).
    """
    if bandit_forms.applies(task, inner, outer):
        return bandit_forms.bandit_step(task, theta, inner, inner_lr, outer).grad
    step = inner_step(task, theta, inner, inner_lr, differentiable=False)
    return outer_at(task, step.adapted, inner.task_index, outer).grad
