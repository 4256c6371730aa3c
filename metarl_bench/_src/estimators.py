"""Meta-gradient estimators for one inner policy-gradient step (SCIENCE.md section 2).

Every estimator has two forms:

* ``<name>_from_samples(task, theta, inner, *, inner_lr, outer=None, ...)``: the estimate of
  each row of given inner trajectories ``inner`` (R rows of N trajectories), shape (R, *P).
  ``outer`` is None for the exact outer value and gradient at theta' (tasks with a model),
  or a function ``outer(adapted, task_index) -> Trajectories`` sampling M outer
  trajectories per row at theta'.
* the registered estimator ``(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None,
  generator=None)``: samples n_trials x n_tasks rows and returns (n_trials, *P), the
  average over the tasks of the distribution for each trial.

Batching: every row has its own copy of theta (a leaf of shape (R, *P)); rows never
interact, so the gradient of a sum of per-row surrogates with respect to that leaf is the
stack of the per-row gradients, all from one backward pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.func import jvp

from metarl_bench._src import checks
from metarl_bench._src.errors import ParameterError, UnsupportedError
from metarl_bench._src.registry import keyword_options, register_estimator
from metarl_bench._src.tasks import Task
from metarl_bench._src.trajectories import (Trajectories, discounted_return, discounts,
                                            reward_to_go)
from metarl_bench._src.truth import meta_gradient

OuterSampler = Callable[[torch.Tensor, torch.Tensor], Trajectories]


# --------------------------------------------------------------------------------------
# Shared pieces


@dataclass(frozen=True)
class InnerStep:
    """The inner adaptation of every row.

    ``params``: leaf (R, *P), one copy of theta per row; ``log_prob``: (R, N, T);
    ``returns``: reward-to-go G_t (R, N, T); ``adapted``: theta' = theta + eta g_N (R, *P),
    differentiable with respect to ``params`` (trajectories held fixed) when requested.
    """

    params: torch.Tensor
    log_prob: torch.Tensor
    returns: torch.Tensor
    adapted: torch.Tensor


def row_params(theta: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A leaf holding one copy of theta per row: (*P) -> (R, *P)."""
    return theta.detach().unsqueeze(0).repeat(n_rows, *([1] * theta.dim())).requires_grad_()


def inner_step(task: Any, theta: torch.Tensor, inner: Trajectories, inner_lr: float, *,
               differentiable: bool = True) -> InnerStep:
    """theta' = theta + eta (1/N) sum_i sum_t grad log pi(a_t|x_t) G_t, per row."""
    params = row_params(theta, inner.n_rows)
    log_prob = task.log_prob(params, inner)
    returns = reward_to_go(inner.rewards, task.gamma)
    objective = (log_prob * returns).sum(-1).mean(-1)
    (grad,) = torch.autograd.grad(objective.sum(), params, create_graph=differentiable)
    return InnerStep(params, log_prob, returns, params + inner_lr * grad)


@dataclass(frozen=True)
class Outer:
    """Outer value V(theta') (R,) and gradient grad V(theta') (R, *P), exact or sampled."""

    value: torch.Tensor
    grad: torch.Tensor


def outer_at(task: Any, adapted: torch.Tensor, task_index: torch.Tensor,
             outer: OuterSampler | None) -> Outer:
    """Exact V and grad V at theta' (``outer`` None), or their M-sample estimates."""
    point = adapted.detach().requires_grad_()
    if outer is None:
        value = task.value(point, task_index)
    else:
        traj = outer(point.detach(), task_index)
        log_prob = task.log_prob(point, traj)
        returns = reward_to_go(traj.rewards, task.gamma)
        value = discounted_return(traj.rewards, task.gamma).mean(-1)
        surrogate = (log_prob * returns).sum(-1).mean(-1)
        (grad,) = torch.autograd.grad(surrogate.sum(), point)
        return Outer(value.detach(), grad)
    (grad,) = torch.autograd.grad(value.sum(), point)
    return Outer(value.detach(), grad)


def pathwise(step: InnerStep, outer: Outer) -> torch.Tensor:
    """Surrogate whose gradient is (I + eta J_N)^T grad V(theta') per row."""
    return (step.adapted * outer.grad).sum()


def _grad(surrogate: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(surrogate, params)
    return grad


# --------------------------------------------------------------------------------------
# The estimators, in their from-samples form


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
    step = inner_step(task, theta, inner, inner_lr, differentiable=False)
    return outer_at(task, step.adapted, inner.task_index, outer).grad


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
    step = inner_step(task, theta, inner, inner_lr)
    return _grad(pathwise(step, outer_at(task, step.adapted, inner.task_index, outer)),
                 step.params)


def unbiased_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                          inner_lr: float, outer: OuterSampler | None = None,
                          baseline: float = 0.0) -> torch.Tensor:
    """Score-function (exactly unbiased) estimate of grad F_N.

    estimate = (I + eta J_N)^T grad V(theta') + (V(theta') - b) sum_i s(tau_i),
    s(tau) = sum_t grad log pi(a_t|x_t); b a constant ``baseline`` (keeps it unbiased).

    Reference: A. Fallah, K. Georgiev, A. Mokhtari, A. Ozdaglar. On the Convergence Theory
    of Debiased Model-Agnostic Meta-Reinforcement Learning. NeurIPS 2021, arXiv:2002.05135.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: unbiased for grad F_N at every N; variance Theta(N) (a sum of N zero-mean
    scores times an O(1) scalar), O(1) with a good constant baseline.
    """
    baseline = checks.finite_float("baseline", baseline)
    step = inner_step(task, theta, inner, inner_lr)
    out = outer_at(task, step.adapted, inner.task_index, outer)
    score_term = ((out.value - baseline).unsqueeze(-1) * step.log_prob.sum(-1)).sum()
    return _grad(pathwise(step, out) + score_term, step.params)


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
    step = inner_step(task, theta, inner, inner_lr)
    out = outer_at(task, step.adapted, inner.task_index, outer)
    _, log_prob_along_u = jvp(lambda p: task.log_prob(p, inner), (step.params.detach(),),
                              (out.grad,))
    g_dot_u = (log_prob_along_u * step.returns).sum(-1)                      # (R, N)
    score_term = (inner_lr / inner.n_traj) * (g_dot_u.detach() * step.log_prob.sum(-1)).sum()
    return _grad(pathwise(step, out) + score_term, step.params)


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
    params = row_params(theta, inner.n_rows)
    log_prob = task.log_prob(params, inner)
    discounted_rewards = inner.rewards * discounts(task.gamma, inner.horizon, inner.rewards)
    objective = (discounted_rewards * _magic_box(log_prob.cumsum(-1))).sum(-1).mean(-1)
    (grad,) = torch.autograd.grad(objective.sum(), params, create_graph=True)
    adapted = params + inner_lr * grad
    out = outer_at(task, adapted, inner.task_index, outer)
    return _grad((adapted * out.grad).sum(), params)


def loo_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                     inner_lr: float, outer: OuterSampler | None = None) -> torch.Tensor:
    """Leave-one-out score function estimate: exactly unbiased with O(1/N) variance.

    estimate = (I + eta J_N)^T grad V(theta') + sum_i (V(theta') - V(theta'_{-i})) s(tau_i),
    theta'_{-i} = theta' - (eta/N) g(tau_i), which does not depend on tau_i, so each
    control variate has mean zero. Needs the exact V (tasks with a model, exact outer).

    Reference: Y. Tang. Biased Gradient Estimate with Drastic Variance Reduction for Meta
    Reinforcement Learning. ICML 2022, arXiv:2112.07328 (the construction LSF linearizes).
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: unbiased for grad F_N; variance O(1/N). Used for the finite-N ground
    truth of tasks without an enumeration.
    """
    if outer is not None:
        raise UnsupportedError("estimator 'loo' needs the exact outer value: use n_outer=None")
    step = inner_step(task, theta, inner, inner_lr)
    out = outer_at(task, step.adapted, inner.task_index, None)
    # per-trajectory inner gradients g(tau_i): one parameter copy per trajectory
    single = inner.one_per_row()
    per_traj_params = row_params(theta, single.n_rows)
    per_traj_objective = (task.log_prob(per_traj_params, single)
                          * step.returns.reshape(single.n_rows, 1, -1)).sum()
    (per_traj_grad,) = torch.autograd.grad(per_traj_objective, per_traj_params)
    n_rows, n_traj = inner.n_rows, inner.n_traj
    per_traj_grad = per_traj_grad.reshape(n_rows, n_traj, *theta.shape)
    left_out = step.adapted.detach().unsqueeze(1) - (inner_lr / n_traj) * per_traj_grad
    with torch.no_grad():
        value_left_out = task.value(left_out.reshape(n_rows * n_traj, *theta.shape),
                                    single.task_index).reshape(n_rows, n_traj)
    control = out.value.unsqueeze(-1) - value_left_out                         # (R, N)
    score_term = (control * step.log_prob.sum(-1)).sum()
    return _grad(pathwise(step, out) + score_term, step.params)


# --------------------------------------------------------------------------------------
# From the from-samples form to a registered, batched, seeded estimator


def validate_call(task: Any, theta: torch.Tensor, n_inner: Any, inner_lr: Any, n_trials: Any,
                  n_outer: Any, generator: Any, *, needs_model: bool) -> tuple[int, float, int, int | None]:
    """Check the common arguments of every estimator; returns them normalised."""
    if not isinstance(task, Task):
        raise ParameterError(f"task must be a metarl_bench task (see make_task), got "
                             f"{type(task).__name__}")
    checks.params_tensor(theta, task.param_shape, task.name)
    n_inner = checks.positive_int("n_inner", n_inner)
    inner_lr = checks.finite_float("inner_lr", inner_lr)
    n_trials = checks.positive_int("n_trials", n_trials)
    n_outer = checks.optional_positive_int("n_outer", n_outer)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ParameterError(f"generator must be a torch.Generator or None, got "
                             f"{type(generator).__name__}")
    if (n_outer is None or needs_model) and not task.has_model:
        raise UnsupportedError(
            f"task {task.name!r} has no model, so the exact outer value (n_outer=None) and "
            f"model-based estimators are unavailable; pass n_outer=M to sample the outer step")
    return n_inner, inner_lr, n_trials, n_outer


def batched(from_samples: Callable[..., torch.Tensor], *, needs_model: bool = False):
    """The registered estimator built from a from-samples form (docstring carried over)."""
    allowed = keyword_options(from_samples)

    @functools.wraps(from_samples)
    def estimator(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float,
                  n_trials: int, n_outer: int | None = None,
                  generator: torch.Generator | None = None, **options: Any) -> torch.Tensor:
        n_inner, inner_lr, n_trials, n_outer = validate_call(
            task, theta, n_inner, inner_lr, n_trials, n_outer, generator,
            needs_model=needs_model)
        for key in options:
            if key not in allowed:
                raise ParameterError(
                    f"estimator {from_samples.__name__.replace('_from_samples', '')!r} has no "
                    f"option {key!r}; options: {', '.join(allowed) or '(none)'}")
        n_rows = n_trials * task.n_tasks
        task_index = torch.arange(n_rows, device=theta.device) % task.n_tasks
        rows = theta.detach().expand(n_rows, *theta.shape)
        inner = task.sample(rows, n_inner, task_index, generator)
        outer = None if n_outer is None else (
            lambda adapted, index: task.sample(adapted, n_outer, index, generator))
        estimates = from_samples(task, theta, inner, inner_lr=inner_lr, outer=outer, **options)
        return estimates.reshape(n_trials, task.n_tasks, *theta.shape).mean(1).detach()

    estimator.__name__ = from_samples.__name__.replace("_from_samples", "")
    return estimator


def exact(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float, n_trials: int,
          n_outer: int | None = None, generator: torch.Generator | None = None,
          truth: str = "finite") -> torch.Tensor:
    """The exact meta-gradient, repeated n_trials times (reference rows of a comparison).

    estimate = grad F_N(theta) (``truth="finite"``, tasks with an enumeration) or
    grad F_inf(theta) = E_task (I + eta grad^2 V) grad V(theta + eta grad V) (``"limit"``).

    Reference: SCIENCE.md section 3.
    Shapes: -> (n_trials, *P), every row the same.
    Bias/variance: zero bias against the truth of the same kind, zero variance.
    """
    n_inner, inner_lr, n_trials, _ = validate_call(task, theta, n_inner, inner_lr, n_trials,
                                                   n_outer, generator, needs_model=True)
    if truth not in ("finite", "limit"):
        raise ParameterError(f"truth must be 'finite' or 'limit', got {truth!r}")
    value = meta_gradient(task, theta, inner_lr=inner_lr,
                          n_inner=n_inner if truth == "finite" else None)
    return value.unsqueeze(0).repeat(n_trials, *([1] * theta.dim()))


def _register_builtin() -> None:
    from metarl_bench._src import reference

    for name, from_samples, twin, needs_model in (
            ("unbiased", unbiased_from_samples, reference.unbiased, False),
            ("lsf", lsf_from_samples, reference.lsf, False),
            ("dice", dice_from_samples, reference.dice, False),
            ("maml", maml_from_samples, reference.maml, False),
            ("fomaml", fomaml_from_samples, reference.fomaml, False),
            ("loo", loo_from_samples, reference.loo, True)):
        register_estimator(name, batched(from_samples, needs_model=needs_model),
                           from_samples=from_samples, reference=twin, needs_model=needs_model,
                           count_determined=True, overwrite=True)
    register_estimator("exact", exact, needs_model=True, overwrite=True)
