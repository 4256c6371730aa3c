"""TMAML: the DiCE Hessian estimate with zero-mean control variates (baselines)."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError
from metarl_bench._src.core.trajectories import Trajectories, discounts, reward_to_go
from metarl_bench._src.estimators.common import (OuterSampler, builds_graph, grad_of, outer_at,
                                                row_params)
from metarl_bench._src.estimators.dice import _magic_box
from metarl_bench._src.tasks.advantages import require_plain


def tmaml_baselines(task: Any, inner: Trajectories, baseline: float | str) -> torch.Tensor:
    """The control variate's weight b_it of each step (R, N, T), in time-0 units.

    ``"loo-mean"``: the mean reward-to-go G_jt of the row's other N - 1 trajectories at the
    same step (0 when N = 1); a number b: b_it = gamma^t b. Neither depends on tau_i.
    """
    if baseline == "loo-mean":
        returns = reward_to_go(inner.rewards, task.gamma)                         # (R, N, T)
        return (returns.sum(1, keepdim=True) - returns) / max(inner.n_traj - 1, 1)
    if isinstance(baseline, str):
        raise ParameterError(f"baseline must be a number or 'loo-mean', got {baseline!r}")
    constant = validation.finite_float("baseline", baseline)
    return constant * discounts(task.gamma, inner.horizon, inner.rewards).expand_as(
        inner.rewards)


def tmaml_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                       inner_lr: float, outer: OuterSampler | None = None,
                       baseline: float | str = "loo-mean") -> torch.Tensor:
    """TMAML: DiCE's Hessian estimate minus zero-mean control variates, on DiCE's inner step.

    With s_t = grad log pi(a_t|x_t), S_<t = sum_{k<t} s_k and b_it the control variates'
    weights (``tmaml_baselines``: by default the other trajectories' mean reward-to-go at step
    t), the baseline term of the DiCE surrogate, c(theta) = (1/N) sum_i sum_t b_it
    [box(sum_{k<t} log pi_k) - box(sum_{k<=t} log pi_k)], has value 0 and Hessian
    -(1/N) sum_i sum_t b_it [grad s_t + s_t s_t^T + s_t S_<t^T + S_<t s_t^T], whose mean is
    zero because E[grad s_t + s_t s_t^T | x_t] = 0, E[s_t | x_t] = 0, and b_it does not
    depend on tau_i. So

        H_N = H_dice + grad^2 c,  theta' = theta + eta g_N (the plain REINFORCE step),
        estimate = (I + eta H_N)^T grad V(theta').

    The control variate enters the Jacobian only: its gradient, -(1/N) sum_i sum_t b_it s_t,
    is left out of theta', so theta' is the task's plain inner step and the estimate targets
    the same F_N as every other estimator. ``baseline=0`` is ``dice`` sample for sample.

    Reference: H. Liu, R. Socher, C. Xiong. Taming MAML: Efficient Unbiased
    Meta-Reinforcement Learning. ICML 2019 (the baseline term after J. Mao et al., A Baseline
    for Any Order Gradient Estimation in Stochastic Computation Graphs, ICML 2019).
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: the Hessian estimate is unbiased for grad^2 V at every N (as ``dice``'s),
    so the meta-gradient is an LSF variant: bias against grad F_N vanishing as N grows (not
    zero: u = grad V(theta') depends on the same samples); variance O(1/N), below ``dice``'s
    when b_it is close to the reward-to-go.
    """
    require_plain(task, "tmaml", "its surrogate weights raw rewards")
    weights = tmaml_baselines(task, inner, baseline)
    params = row_params(theta, inner)
    log_prob = task.log_prob(params, inner)                                      # (R, N, T)
    cumulative = log_prob.cumsum(-1)
    discounted_rewards = inner.rewards * discounts(task.gamma, inner.horizon, inner.rewards)
    dice = (discounted_rewards * _magic_box(cumulative)).sum(-1).mean(-1)
    control = (weights * (_magic_box(cumulative - log_prob) - _magic_box(cumulative))
               ).sum(-1).mean(-1)
    graph = builds_graph(inner)
    (dice_grad,) = torch.autograd.grad(dice.sum(), params, create_graph=graph,
                                       retain_graph=True)
    (control_grad,) = torch.autograd.grad(control.sum(), params, create_graph=graph)
    # a baseline in the step itself would change theta', hence the objective: keep its Jacobian
    adapted = params + inner_lr * (dice_grad + (control_grad - control_grad.detach()))
    out = outer_at(task, adapted, inner.task_index, outer)
    return grad_of((adapted * out.grad).sum(), params)
