"""Machinery shared by every estimator: one parameter copy per row, the inner step, the outer
value and gradient at the adapted parameters, and the wrapper that turns a from-samples form
into a registered, batched, seeded estimator.

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
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from metarl_bench._src import resources, validation
from metarl_bench._src.advantages import inner_returns
from metarl_bench._src.errors import ParameterError, UnsupportedError
from metarl_bench._src.registry import keyword_options
from metarl_bench._src.tasks import Task
from metarl_bench._src.trajectories import Trajectories, discounted_return, reward_to_go

OuterSampler = Callable[[torch.Tensor, torch.Tensor], Trajectories]

@dataclass(frozen=True)
class InnerStep:
    """The inner adaptation of every row.

    ``params``: leaf (R, *P), one copy of theta per row; ``log_prob``: (R, N, T);
    ``returns``: the inner advantages A_t (R, N, T), reward-to-go G_t by default;
    ``adapted``: theta' = theta + eta g_N (R, *P), differentiable with respect to ``params``
    (trajectories held fixed) when requested.
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
    """theta' = theta + eta (1/N) sum_i sum_t grad log pi(a_t|x_t) A_t, per row.

    A_t is the task's inner advantage (``advantages.inner_returns``): the reward-to-go G_t
    unless the task sets a baseline, GAE or normalisation.
    """
    params = row_params(theta, inner.n_rows)
    log_prob = task.log_prob(params, inner)
    returns = inner_returns(task, inner)
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


def grad_of(surrogate: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(surrogate, params)
    return grad


def validate_call(task: Any, theta: torch.Tensor, n_inner: Any, inner_lr: Any, n_trials: Any,
                  n_outer: Any, generator: Any, *, needs_model: bool
                  ) -> tuple[int, float, int, int | None]:
    """Check the common arguments of every estimator; returns them normalised."""
    if not isinstance(task, Task):
        raise ParameterError(f"task must be a metarl_bench task (see make_task), got "
                             f"{type(task).__name__}")
    validation.params_tensor(theta, task.param_shape, task.name)
    n_inner = validation.positive_int("n_inner", n_inner)
    inner_lr = validation.finite_float("inner_lr", inner_lr)
    n_trials = validation.positive_int("n_trials", n_trials)
    n_outer = validation.optional_positive_int("n_outer", n_outer)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ParameterError(f"generator must be a torch.Generator or None, got "
                             f"{type(generator).__name__}")
    if (n_outer is None or needs_model) and not task.has_model:
        raise UnsupportedError(
            f"task {task.name!r} has no model, so the exact outer value (n_outer=None) and "
            f"model-based estimators are unavailable; pass n_outer=M to sample the outer step")
    return n_inner, inner_lr, n_trials, n_outer


#: Trajectory steps (rows x trajectories x horizon) one batched call handles at once. Larger
#: calls run in chunks: past a few million steps the working set leaves the CPU caches and
#: throughput falls (a 30-arm bandit at N=64 dropped from 56k to 27k estimates/s between
#: 1000 and 4000 trials per call before the alias sampler; see the README's benchmarks).
CHUNK_STEPS = 2 ** 21


def trials_per_chunk(task: Any, n_inner: int, n_outer: int | None) -> int:
    """Trials per chunk: set by the task's shape and N alone, never by the machine, so a
    seeded call gives the same numbers everywhere."""
    steps = task.n_tasks * (n_inner + (n_outer or 0)) * resources.horizon_of(task)
    return max(1, CHUNK_STEPS // steps)


def chunk_counts(n_trials: int, most: int) -> list[int]:
    """``n_trials`` split into the fewest chunks of at most ``most``, as equal as possible
    (no small last chunk, which would run at a small batch's lower throughput)."""
    n_chunks = -(-n_trials // most)
    base, extra = divmod(n_trials, n_chunks)
    return [base + 1] * extra + [base] * (n_chunks - extra)


def batched(from_samples: Callable[..., torch.Tensor], *, needs_model: bool = False):
    """The registered estimator built from a from-samples form (docstring carried over)."""
    allowed = keyword_options(from_samples)
    # estimators random beyond their samples (a noisy critic) draw from the call's generator
    takes_generator = "generator" in inspect.signature(from_samples).parameters

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
        outer = None if n_outer is None else (
            lambda adapted, index: task.sample(adapted, n_outer, index, generator))
        if takes_generator:
            options["generator"] = generator

        def trials(count: int) -> torch.Tensor:
            n_rows = count * task.n_tasks
            task_index = torch.arange(n_rows, device=theta.device) % task.n_tasks
            rows = theta.detach().expand(n_rows, *theta.shape)
            inner = task.sample(rows, n_inner, task_index, generator)
            estimates = from_samples(task, theta, inner, inner_lr=inner_lr, outer=outer,
                                     **options)
            return estimates.reshape(count, task.n_tasks, *theta.shape).mean(1).detach()

        counts = chunk_counts(n_trials, trials_per_chunk(task, n_inner, n_outer))
        return trials(n_trials) if len(counts) == 1 else torch.cat([trials(c) for c in counts])

    estimator.__name__ = from_samples.__name__.replace("_from_samples", "")
    return estimator
