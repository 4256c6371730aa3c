"""An example metarl_bench plug-in: ``unbiased-anchored``, registered through the entry point
``metarl_bench.estimators`` of this package's pyproject.toml; nothing in metarl_bench names it.

It uses only metarl_bench's public API: the task interface (``value``, ``log_prob``), the
in-tree ``unbiased`` estimator's from-samples form and slow twin, ``batched_estimator`` and
``EstimatorSpec``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.autograd.functional import jacobian

import metarl_bench as mb


def anchor_values(task: Any, theta: torch.Tensor, inner_lr: float) -> torch.Tensor:
    """b_k = V_k(theta + eta grad V_k(theta)) for each task k of the distribution: (n_tasks,)."""
    index = torch.arange(task.n_tasks, device=theta.device)
    rows = theta.detach().expand(task.n_tasks, *theta.shape).clone().requires_grad_()
    (grad,) = torch.autograd.grad(task.value(rows, index).sum(), rows)
    with torch.no_grad():
        return task.value(rows + inner_lr * grad, index)


def unbiased_anchored_from_samples(task: Any, theta: torch.Tensor, inner: mb.Trajectories, *,
                                   inner_lr: float, outer: Callable | None = None
                                   ) -> torch.Tensor:
    """Score-function estimate of grad F_N with the anchored baseline b = V(theta + eta grad V).

    estimate = (I + eta J_N)^T grad V(theta') + (V(theta') - b) sum_i s(tau_i), with
    b = V(theta + eta grad V(theta)) the exact value at the adapted parameters the inner step
    reaches on average, held constant: it does not depend on the inner samples, so E[b s] = 0.

    Reference: A. Fallah, K. Georgiev, A. Mokhtari, A. Ozdaglar. On the Convergence Theory
    of Debiased Model-Agnostic Meta-Reinforcement Learning. NeurIPS 2021, arXiv:2002.05135
    (the unbiased estimator); the baseline is a control variate of the score term.
    Shapes: inner (R, N, T) -> (R, *P). Needs the exact V (tasks with a model).
    Bias/variance: unbiased for grad F_N at every N; variance O(1) in N: V(theta') - b is
    O(1/sqrt(N)) and sum_i s(tau_i) is O(sqrt(N)), against Theta(N) with b = 0.
    """
    plain = mb.estimator_spec("unbiased").from_samples(task, theta, inner, inner_lr=inner_lr,
                                                       outer=outer)
    rows = theta.detach().expand(inner.n_rows, *theta.shape).clone().requires_grad_()
    (score_sum,) = torch.autograd.grad(task.log_prob(rows, inner).sum(), rows)  # (R, *P)
    baseline = anchor_values(task, theta, inner_lr)[inner.task_index]
    return plain - baseline.reshape(-1, *[1] * theta.dim()) * score_sum


def unbiased_anchored_reference(task: Any, theta: torch.Tensor, inner: mb.Trajectories, *,
                                inner_lr: float, outer: Callable | None = None) -> torch.Tensor:
    """Slow twin: the in-tree slow ``unbiased`` twin, one row at a time, given b as its
    constant baseline; b from an explicit Jacobian of V."""
    twin = mb.estimator_spec("unbiased").reference
    rows = []
    for r in range(inner.n_rows):
        index = inner.task_index[r:r + 1]
        value = lambda th: task.value(th.reshape(1, *theta.shape), index)[0]  # noqa: E731
        flat = theta.detach().reshape(-1)
        baseline = float(value(flat + inner_lr * jacobian(value, flat)))
        rows.append(twin(task, theta, inner.rows(slice(r, r + 1)), inner_lr=inner_lr,
                         outer=outer, baseline=baseline))
    return torch.cat(rows)


SPEC = mb.EstimatorSpec(
    name="unbiased-anchored",
    fn=mb.batched_estimator(unbiased_anchored_from_samples, needs_model=True),
    from_samples=unbiased_anchored_from_samples, reference=unbiased_anchored_reference,
    needs_model=True, count_determined=True, bias="zero")
