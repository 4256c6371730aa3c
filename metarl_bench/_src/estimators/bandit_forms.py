"""The one-step estimators on bandits, in closed form: no autograd, a few vector operations.

A bandit trajectory is one pull a with reward r, under pi = softmax(theta). Then

* the score is s = e_a - pi, and g = r s;
* grad_theta g = r grad^2 log pi(a) = -r F, with F = diag(pi) - pi pi^T the same for every arm;
* a weighted sum of scores is sum_i w_i s_i = c_w - (sum_i w_i) pi, c_w[k] = the sum of the
  w_i of the pulls of arm k (one ``scatter_add``).

So with g_N = (1/N) sum_i r_i s_i, theta' = theta + eta g_N, v = grad V(theta') (exact:
F' m for the task's mean rewards m; sampled: (1/M) sum_j r'_j s'_j at theta') and
V(theta') (exact: pi' . m; sampled: the mean outer reward), every form in this package that
is built from scores and that Hessian reads, per row:

==================================  ==========================================================
``fomaml``                          v
``maml``                            v + eta J_N^T v = v - eta rbar F v,  rbar = (1/N) sum_i r_i
``lsf``, and on one step ``dice``,  maml + (eta/N) sum_i r_i (s_i . v) s_i
``lvc``, ``taypo``, ``loaded-dice``
(no critic)
``unbiased`` (baseline b or b_i)    maml + sum_i (V(theta') - b_i) s_i
``emaml``                           maml + c V(theta') sum_i s_i,  c = 1/N (``mean``) or 1
==================================  ==========================================================

with F v = pi * v - pi (pi . v). These are the same formulas as the generic forms (their
docstrings), evaluated on the same trajectories and drawing the outer ones from the same
generator in the same order, so they agree with them sample for sample up to rounding
(``tests/test_bandit_forms.py``). A call pays tens of tensor operations and no backward
pass: measured against the generic path of the same tree (docs/benchmarks.md), a 30-arm
``maml`` call with one trial takes 0.41 ms instead of 1.06 ms, one with 1000 trials 1.5
times less.

A form uses its closed form when ``applies`` (a bandit task with the plain reward-to-go
inner step, one inner step from theta, an outer step that is exact or sampled by the task)
and closed forms are on (``generic_forms()`` turns them off, e.g. to time or test the
autograd path, which stays the slow twin of each closed form).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.estimators.common import OuterStep
from metarl_bench._src.tasks.advantages import PLAIN
from metarl_bench._src.tasks.bandit import BanditTask

_enabled = True


@contextlib.contextmanager
def generic_forms() -> Iterator[None]:
    """Within this block every estimator takes its generic (autograd) path on bandits too."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def applies(task: Any, inner: Trajectories, outer: Any) -> bool:
    """Whether a one-step form on ``inner`` may use its closed form: a bandit whose inner
    step is the plain reward-to-go, rows starting at theta (not step k of several), and an
    outer step that is exact (None) or a sampler of the task (not a caller's ``OuterStep``)."""
    return (_enabled and isinstance(task, BanditTask) and inner.starts is None
            and inner.mask is None and not isinstance(outer, OuterStep)
            and getattr(task, "advantages", PLAIN).plain)


def scores_sum(arms: torch.Tensor, weights: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """sum_i w_i s_i = sum_i w_i (e_{a_i} - pi) per row: arms, weights (R, N), pi (R, K)."""
    counted = torch.zeros_like(pi).scatter_add_(1, arms, weights)
    return counted - weights.sum(-1, keepdim=True) * pi


def fisher_times(pi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """F v = (diag(pi) - pi pi^T) v per row, minus the Hessian of log pi(a) applied to v."""
    weighted = pi * v
    return weighted - pi * weighted.sum(-1, keepdim=True)


@dataclass(frozen=True)
class BanditStep:
    """What every closed form reads, per row: the inner pulls ``arms`` and rewards (R, N),
    pi at theta and ``adapted`` theta' (R, K), the outer gradient v and value V(theta')."""

    arms: torch.Tensor
    rewards: torch.Tensor
    pi: torch.Tensor
    adapted: torch.Tensor
    grad: torch.Tensor
    value: torch.Tensor
    inner_lr: float

    def maml(self) -> torch.Tensor:
        """(I + eta J_N)^T v, J_N = -rbar F."""
        rbar = self.rewards.mean(-1, keepdim=True)
        return self.grad - self.inner_lr * rbar * fisher_times(self.pi, self.grad)

    def lsf(self) -> torch.Tensor:
        """maml + (eta/N) sum_i r_i (s_i . v) s_i: the score products of H_N."""
        along = self.grad.gather(1, self.arms) - (self.pi * self.grad).sum(-1, keepdim=True)
        weights = self.rewards * along / self.rewards.shape[-1]
        return self.maml() + self.inner_lr * scores_sum(self.arms, weights, self.pi)

    def with_scores(self, weights: torch.Tensor) -> torch.Tensor:
        """maml + sum_i w_i s_i (the score-function forms), weights (R, N) or (R, 1)."""
        weights = weights.expand_as(self.rewards)
        return self.maml() + scores_sum(self.arms, weights, self.pi)


def bandit_step(task: BanditTask, theta: torch.Tensor, inner: Trajectories, inner_lr: float,
                outer: Any) -> BanditStep:
    """The inner step and the outer gradient and value of every row, in closed form; the
    outer trajectories (``outer`` not None) are drawn at theta' as the generic forms draw
    them."""
    n_rows = inner.n_rows
    rows = theta.detach().reshape(1, -1).expand(n_rows, -1)
    arms = inner.actions.reshape(n_rows, -1)
    rewards = inner.rewards.reshape(n_rows, -1).to(rows.dtype)
    pi = torch.softmax(rows, -1)
    adapted = rows + inner_lr * (scores_sum(arms, rewards, pi) / arms.shape[-1])
    pi_adapted = torch.softmax(adapted, -1)
    if outer is None:
        means = task.arm_rewards.to(dtype=rows.dtype, device=rows.device)[inner.task_index]
        grad = fisher_times(pi_adapted, means)
        value = (pi_adapted * means).sum(-1)
    else:
        traj = outer(adapted, inner.task_index)
        outer_arms = traj.actions.reshape(n_rows, -1)
        outer_rewards = traj.rewards.reshape(n_rows, -1).to(rows.dtype)
        grad = scores_sum(outer_arms, outer_rewards, pi_adapted) / outer_arms.shape[-1]
        value = outer_rewards.mean(-1)
    return BanditStep(arms, rewards, pi, adapted, grad, value, inner_lr)
