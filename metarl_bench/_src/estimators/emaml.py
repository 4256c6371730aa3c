"""E-MAML: the pathwise meta-gradient plus a rescaled score term of the inner samples."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core.errors import ParameterError
from metarl_bench._src.estimators import bandit_forms
from metarl_bench._src.estimators.common import (OuterSampler, grad_of, inner_step, outer_at,
                                                pathwise)
from metarl_bench._src.core.trajectories import Trajectories

SCORE_SCALES = ("mean", "sum")


def emaml_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                       inner_lr: float, outer: OuterSampler | None = None,
                       score_scale: str = "mean") -> torch.Tensor:
    """E-MAML: naive-Hessian MAML plus the outer value times the inner samples' score.

    estimate = (I + eta J_N)^T grad V(theta') + V(theta') c sum_i sum_t grad log pi(a_it|x_it),
    c = 1/(N T) for ``score_scale="mean"`` (the average over the N*T pre-update
    log-probabilities, or over the steps that happened when episodes differ in length, as ProMP's implementation of the E-MAML term) or c = 1 for ``"sum"``
    (then it is exactly ``unbiased`` with no baseline). V(theta') is exact or the mean
    discounted return of the M outer trajectories.

    Reference: B. Stadie, G. Yang, R. Houthooft, X. Chen, Y. Duan, Y. Wu, P. Abbeel,
    I. Sutskever. Some Considerations on Learning to Explore via Meta-Reinforcement Learning.
    2018, arXiv:1803.01118; the averaged term as in J. Rothfuss et al., ProMP, ICLR 2019,
    arXiv:1810.06784.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: ``"sum"``: unbiased for grad F_N, variance Theta(N). ``"mean"``: the score
    term is shrunk by 1/(N T), so its bias does not vanish with N (as N grows it tends to
    MAML's biased limit); variance O(1/N) from the shrunk term and the pathwise part.
    """
    if score_scale not in SCORE_SCALES:
        raise ParameterError(f"score_scale must be 'mean' or 'sum', got {score_scale!r}")
    if bandit_forms.applies(task, inner, outer):
        step = bandit_forms.bandit_step(task, theta, inner, inner_lr, outer)
        scale = 1.0 / inner.n_traj if score_scale == "mean" else 1.0   # T = 1
        return step.with_scores(scale * step.value.unsqueeze(-1))
    step = inner_step(task, theta, inner, inner_lr)
    out = outer_at(task, step.adapted, inner.task_index, outer)
    score = out.value * step.log_prob.sum((-2, -1))                              # (R,)
    if score_scale == "mean":  # over the steps that happened (padding is no step)
        score = score / (inner.n_traj * inner.horizon if inner.mask is None
                         else inner.mask.sum((-2, -1)).clamp(min=1))
    score_term = score.sum()
    return grad_of(pathwise(step, out) + score_term, step.params)
