"""Score-function estimators, exactly unbiased for grad F_N: ``unbiased`` and the
leave-one-out ``loo``."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.tasks.advantages import require_plain
from metarl_bench._src.core.errors import ParameterError, UnsupportedError
from metarl_bench._src.estimators import bandit_forms
from metarl_bench._src.estimators.common import (OuterSampler, grad_of, inner_step,
                                                is_exact_outer, outer_at, pathwise, row_params)
from metarl_bench._src.core.trajectories import Trajectories, discounted_return


def unbiased_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                          inner_lr: float, outer: OuterSampler | None = None,
                          baseline: float | str = 0.0) -> torch.Tensor:
    """Score-function (exactly unbiased) estimate of grad F_N.

    estimate = (I + eta J_N)^T grad V(theta') + sum_i (V(theta') - b_i) s(tau_i),
    s(tau) = sum_t grad log pi(a_t|x_t). ``baseline``: a constant b_i = b, or ``"loo-mean"``:
    b_i = the mean discounted return of the row's other N - 1 trajectories (0 when N = 1).
    Either keeps it exactly unbiased: b_i does not depend on tau_i, and the N trajectories of
    a row are independent, so E[b_i s(tau_i)] = E[b_i] E[s(tau_i)] = 0.

    Reference: A. Fallah, K. Georgiev, A. Mokhtari, A. Ozdaglar. On the Convergence Theory
    of Debiased Model-Agnostic Meta-Reinforcement Learning. NeurIPS 2021, arXiv:2002.05135.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: unbiased for grad F_N at every N; variance Theta(N) (a sum of N zero-mean
    scores times an O(1) scalar); a baseline near V(theta') shrinks that scalar to
    V(theta') - V(theta) + O(1/sqrt(N)) (``"loo-mean"``), still Theta(N) but with a smaller
    constant.
    """
    if isinstance(baseline, str) and baseline != "loo-mean":
        raise ParameterError(f"baseline must be a number or 'loo-mean', got {baseline!r}")
    if not isinstance(baseline, str):
        baseline = validation.finite_float("baseline", baseline)
    if bandit_forms.applies(task, inner, outer):
        closed = bandit_forms.bandit_step(task, theta, inner, inner_lr, outer)
        return closed.with_scores(_score_weights(task, inner, closed.value, baseline))
    step = inner_step(task, theta, inner, inner_lr)
    out = outer_at(task, step.adapted, inner.task_index, outer)
    weight = _score_weights(task, inner, out.value, baseline)
    score_term = (weight * step.log_prob.sum(-1)).sum()
    return grad_of(pathwise(step, out) + score_term, step.params)


def _score_weights(task: Any, inner: Trajectories, value: torch.Tensor,
                   baseline: float | str) -> torch.Tensor:
    """V(theta') - b_i per row, (R, 1) for a constant b or (R, N) for ``"loo-mean"``."""
    if baseline == "loo-mean":
        returns = discounted_return(inner.rewards, task.gamma)                    # (R, N)
        others = (returns.sum(-1, keepdim=True) - returns) / max(inner.n_traj - 1, 1)
        return value.unsqueeze(-1) - others
    return (value - baseline).unsqueeze(-1)


def loo_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                     inner_lr: float, outer: OuterSampler | None = None) -> torch.Tensor:
    """Leave-one-out score function estimate: exactly unbiased with O(1/N) variance.

    estimate = (I + eta J_N)^T grad V(theta') + sum_i (V(theta') - V(theta'_{-i})) s(tau_i),
    theta'_{-i} = theta' - (eta/N) g(tau_i), which does not depend on tau_i, so each
    control variate has mean zero. Needs the exact V (tasks with a model, exact outer).

    K inner steps: step k's scores s(tau_i^k) are weighted by V(theta_K) - b_ki with
    b_ki = V(Phi^(K-k-1)(theta_{k+1} - (eta/N) g(tau_i^k))), Phi(x) = x + eta grad V(x) the
    exact inner step. b_ki depends on the samples before tau_i^k only (not on it, nor on the
    later samples, which depend on it), so the estimate stays exactly unbiased for grad F_N;
    the last step's baseline is the one-step one. Steps k < K-1 leave a variance O(1) in N
    (V(theta_K) still carries the later steps' sampling noise, common to every i), against
    Theta(N) for ``unbiased``.

    Reference: Y. Tang. Biased Gradient Estimate with Drastic Variance Reduction for Meta
    Reinforcement Learning. ICML 2022, arXiv:2112.07328 (the construction LSF linearizes).
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: unbiased for grad F_N; variance O(1/N) for one inner step, O(1) for
    several. Used for the finite-N ground truth of tasks without an enumeration.
    """
    if not is_exact_outer(outer):
        raise UnsupportedError("estimator 'loo' needs the exact outer value: use n_outer=None")
    require_plain(task, "loo", "leaving one trajectory out must not change the others' terms")
    step = inner_step(task, theta, inner, inner_lr)
    out = outer_at(task, step.adapted, inner.task_index, outer)
    # per-trajectory inner gradients g(tau_i): one parameter copy per trajectory
    single = inner.one_per_row()
    per_traj_params = row_params(theta, single)
    per_traj_objective = (task.log_prob(per_traj_params, single)
                          * step.returns.reshape(single.n_rows, 1, -1)).sum()
    (per_traj_grad,) = torch.autograd.grad(per_traj_objective, per_traj_params)
    n_rows, n_traj = inner.n_rows, inner.n_traj
    per_traj_grad = per_traj_grad.reshape(n_rows, n_traj, *theta.shape)
    left_out = step.adapted.detach().unsqueeze(1) - (inner_lr / n_traj) * per_traj_grad
    left_out = exact_steps(task, left_out.reshape(n_rows * n_traj, *theta.shape),
                           single.task_index, inner_lr, out.steps_after)
    with torch.no_grad():
        value_left_out = task.value(left_out, single.task_index).reshape(n_rows, n_traj)
    control = out.value.unsqueeze(-1) - value_left_out                         # (R, N)
    score_term = (control * step.log_prob.sum(-1)).sum()
    return grad_of(pathwise(step, out) + score_term, step.params)


def exact_steps(task: Any, points: torch.Tensor, task_index: torch.Tensor, inner_lr: float,
                n_steps: int) -> torch.Tensor:
    """``n_steps`` exact inner steps x <- x + eta grad V(x) of each row (R, *P), detached."""
    for _ in range(n_steps):
        point = points.detach().requires_grad_()
        (grad,) = torch.autograd.grad(task.value(point, task_index).sum(), point)
        points = points.detach() + inner_lr * grad
    return points.detach()
