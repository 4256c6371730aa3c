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

K inner steps (``n_steps``): theta_{k+1} = theta_k + eta g_hat(theta_k), fresh trajectories
sampled at each theta_k. The meta-gradient is a product of per-step Jacobians pulled back from
the outer gradient, lambda_K = grad V(theta_K), lambda_k = A_k^T lambda_{k+1} + c_k, estimate =
lambda_0, where A_k = d theta_{k+1} / d theta_k is the step's Jacobian *as the estimator
estimates it* (naive J for maml, J + g s^T for lsf, the DiCE Hessian for dice, I for fomaml)
and c_k its own score terms (unbiased, loo). A one-step from-samples form already computes
exactly A^T u + c from "the outer gradient u at its adapted parameters". So ``multi_step``
runs the same form once per step, starting step k at each row's own theta_k, and hands step k,
in place of an outer gradient, what steps k+1..K-1 return (lambda_{k+1}) together with the
final outer value V(theta_K) (``Continuation``). Nothing in the estimators changes, and K = 1
never enters this path. Step k's trajectories carry the rows' theta_k explicitly
(``Trajectories.starts``); a form takes part if it builds its parameter leaf with
``row_params(theta, inner)`` and reaches the outer step through ``outer_at`` (checked;
otherwise UnsupportedError).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from metarl_bench._src.core import resources

from metarl_bench._src.core import validation
from metarl_bench._src.tasks.advantages import inner_returns
from metarl_bench._src.core.errors import (ParameterError, ShapeError, UnsupportedError,
                                           did_you_mean)
from metarl_bench._src.core.registry import keyword_options
from metarl_bench._src.tasks import Task
from metarl_bench._src.core.trajectories import (RowStarts, Trajectories, discounted_return,
                                                 reward_to_go)

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


def row_params(theta: torch.Tensor, rows: int | Trajectories) -> torch.Tensor:
    """A leaf holding each row's starting parameters, (R, *P): theta repeated, or the
    points the rows of ``rows`` were drawn at when they carry their own
    (``Trajectories.starts``: inner step k >= 1 of ``multi_step``).

    ``rows``: the trajectories the parameters are for, or a row count (every row at theta).
    """
    if isinstance(rows, Trajectories) and rows.starts is not None:
        points = rows.starts.take()
        if points.shape[0] != rows.n_rows:
            raise ShapeError(f"{rows.n_rows} rows of trajectories carry {points.shape[0]} "
                             f"starting points")
        return points.detach().clone().requires_grad_()
    n_rows = rows.n_rows if isinstance(rows, Trajectories) else rows
    return theta.detach().unsqueeze(0).repeat(n_rows, *([1] * theta.dim())).requires_grad_()


def builds_graph(inner: Trajectories) -> bool:
    """Whether a form's inner gradient needs its graph (``create_graph``): not for rows whose
    step nothing differentiates (``RowStarts.differentiated``, a step before a truncation
    window). The values are the same either way."""
    return inner.starts is None or inner.starts.differentiated


def inner_step(task: Any, theta: torch.Tensor, inner: Trajectories, inner_lr: float, *,
               differentiable: bool = True) -> InnerStep:
    """theta' = theta + eta (1/N) sum_i sum_t grad log pi(a_t|x_t) A_t, per row.

    A_t is the task's inner advantage (``advantages.inner_returns``): the reward-to-go G_t
    unless the task sets a baseline, GAE or normalisation.
    """
    params = row_params(theta, inner)
    log_prob = task.log_prob(params, inner)
    returns = inner_returns(task, inner)
    objective = (log_prob * returns).sum(-1).mean(-1)
    (grad,) = torch.autograd.grad(objective.sum(), params,
                                  create_graph=differentiable and builds_graph(inner))
    return InnerStep(params, log_prob, returns, params + inner_lr * grad)


@dataclass(frozen=True)
class Outer:
    """Outer value V(theta') (R,) and gradient grad V(theta') (R, *P), exact or sampled.

    Within K inner steps (``Continuation``): ``value`` is the final V(theta_K), ``grad`` is
    lambda_{k+1} (what the later steps pull back), ``steps_after`` = K - k - 1 is the number
    of inner steps still to come after theta', and ``exact`` says whether V is exact.
    """

    value: torch.Tensor
    grad: torch.Tensor
    steps_after: int = 0
    exact: bool = True


class OuterStep:
    """An outer step computed by the caller instead of the task: ``after(adapted, task_index)``
    returns the Outer that an estimator's form uses at its adapted parameters."""

    def after(self, adapted: torch.Tensor, task_index: torch.Tensor) -> Outer:
        raise NotImplementedError


def outer_at(task: Any, adapted: torch.Tensor, task_index: torch.Tensor,
             outer: OuterSampler | OuterStep | None) -> Outer:
    """Exact V and grad V at theta' (``outer`` None), or their M-sample estimates; or what
    the caller supplies (``OuterStep``: the later inner steps, a given outer gradient)."""
    if isinstance(outer, OuterStep):
        return outer.after(adapted, task_index)
    point = adapted.detach().requires_grad_()
    if outer is None:
        value = task.value(point, task_index)
    else:
        traj = outer(point.detach(), task_index)
        return sampled_outer(task, point, traj, reward_to_go(traj.rewards, task.gamma))
    (grad,) = torch.autograd.grad(value.sum(), point)
    return Outer(value.detach(), grad)


def sampled_outer(task: Any, point: torch.Tensor, traj: Trajectories,
                  weights: torch.Tensor) -> Outer:
    """The M-sample outer step at ``point`` (R, *P), a leaf requiring grad: V the mean
    discounted return of ``traj``, grad V by the score function with ``weights`` (R, M, T)
    on each step's log-probability (the reward-to-go in ``outer_at``)."""
    value = discounted_return(traj.rewards, task.gamma).mean(-1)
    surrogate = (task.log_prob(point, traj) * weights).sum(-1).mean(-1)
    (grad,) = torch.autograd.grad(surrogate.sum(), point)
    return Outer(value.detach(), grad, exact=False)


#: Draws the trajectories of inner step k at each row's theta_k: (k, points, task_index).
StepSampler = Callable[[int, torch.Tensor, torch.Tensor], Trajectories]


@dataclass(frozen=True)
class MultiStep:
    """The estimate (R, *P) of K inner steps and the points visited, theta_0..theta_K (each
    (R, *P), detached; theta_0 is theta repeated); ``inner_lr_grad`` (R,): the estimate of
    dF/d eta, sum over the differentiated steps k of g_k . lambda_{k+1}."""

    estimate: torch.Tensor
    points: list[torch.Tensor]
    inner_lr_grad: torch.Tensor | None = None


@dataclass
class _Chain:
    from_samples: Callable[..., torch.Tensor]
    task: Any
    theta: torch.Tensor
    steps: Sequence[Trajectories]
    sampler: StepSampler | None
    n_steps: int
    inner_lr: float
    outer: OuterSampler | None
    options: dict[str, Any]
    points: list[torch.Tensor] = field(default_factory=list)
    final_value: torch.Tensor | None = None
    inner_lr_grad: torch.Tensor | None = None

    def add_inner_lr_term(self, step: int, adapted: torch.Tensor, pulled_back: torch.Tensor):
        """dF/d eta += g_k . lambda_{k+1}, with the step g_k = (theta_{k+1} - theta_k) / eta
        the estimator's own (d theta_{k+1} / d eta holding theta_k fixed)."""
        step_taken = (adapted - self.points[step]) / self.inner_lr
        term = (step_taken * pulled_back).reshape(adapted.shape[0], -1).sum(-1)
        self.inner_lr_grad = term if self.inner_lr_grad is None else self.inner_lr_grad + term

    def samples(self, step: int, points: torch.Tensor, task_index: torch.Tensor) -> Trajectories:
        if step >= len(self.steps):
            return self.sampler(step, points, task_index)
        traj = self.steps[step]
        if traj.n_rows != points.shape[0]:
            raise ShapeError(f"inner step {step} was given {traj.n_rows} rows of trajectories, "
                             f"step 0 has {points.shape[0]}")
        return traj

    def run(self, step: int, points: torch.Tensor, inner: Trajectories) -> torch.Tensor:
        """Steps ``step``..K-1 from ``points``; returns lambda_step."""
        inner, starts = self._at(step, points, inner)
        continuation = Continuation(self, step)
        estimate = self.from_samples(self.task, self.theta, inner, inner_lr=self.inner_lr,
                                     outer=continuation, **self.options)
        if not continuation.called or (starts is not None and not starts.used):
            raise self._unsupported()
        return estimate

    def advance(self, step: int, points: torch.Tensor, inner: Trajectories) -> torch.Tensor:
        """Step ``step`` outside the differentiated window: the estimator's own theta_{k+1}
        (its form run up to its outer step, then stopped), no Jacobian; its rows' starts say
        so (``RowStarts.differentiated``), so the form builds no second-order graph."""
        inner, starts = self._at(step, points, inner, differentiated=False)
        try:
            self.from_samples(self.task, self.theta, inner, inner_lr=self.inner_lr,
                              outer=_Advance(self.outer is None), **self.options)
        except _Stopped as stopped:
            if starts is not None and not starts.used:
                raise self._unsupported() from None
            return stopped.adapted
        raise self._unsupported()

    def _at(self, step: int, points: torch.Tensor, inner: Trajectories,
            differentiated: bool = True) -> tuple[Trajectories, RowStarts | None]:
        self.points.append(points)
        starts = (RowStarts(points, differentiated=differentiated)
                  if step > 0 or not differentiated else None)
        return (inner if starts is None else dataclasses.replace(inner, starts=starts)), starts

    def _unsupported(self) -> UnsupportedError:
        name = self.from_samples.__name__.replace("_from_samples", "")
        return UnsupportedError(
            f"estimator {name!r} cannot take more than one inner step: its from-samples "
            f"form must build its parameters with row_params(theta, inner) and reach the "
            f"outer step through outer_at (metarl_bench._src.estimators.common)")


class _Stopped(Exception):
    """Carries the adapted parameters of a step outside the window out of its form."""

    def __init__(self, adapted: torch.Tensor):
        super().__init__("inner step outside the truncation window")
        self.adapted = adapted


class _Advance(OuterStep):
    """The outer step of a step outside the window: stops the form at its adapted
    parameters (the Jacobian of that step is never formed)."""

    def __init__(self, exact: bool):
        self.exact = exact

    def after(self, adapted: torch.Tensor, task_index: torch.Tensor) -> Outer:
        raise _Stopped(adapted.detach())


class Continuation(OuterStep):
    """Stands in for the outer step of inner step k of a ``multi_step`` chain.

    Asked for "the outer value and gradient at theta_{k+1}", it samples step k+1's
    trajectories at theta_{k+1}, runs the remaining steps, and answers with V(theta_K) and
    lambda_{k+1}; after the last step it computes the real outer step (exact or sampled).
    """

    def __init__(self, chain: _Chain, step: int):
        self.chain, self.step, self.called = chain, step, False

    @property
    def exact(self) -> bool:
        return self.chain.outer is None

    def after(self, adapted: torch.Tensor, task_index: torch.Tensor) -> Outer:
        chain = self.chain
        if self.called:
            raise UnsupportedError("an inner step asked twice for its outer step; multi-step "
                                   "adaptation needs exactly one outer_at call per step")
        self.called = True
        points = adapted.detach()
        if self.step + 1 == chain.n_steps:
            chain.points.append(points)
            out = outer_at(chain.task, points, task_index, chain.outer)
            chain.final_value = out.value
            chain.add_inner_lr_term(self.step, points, out.grad)
            return out
        inner = chain.samples(self.step + 1, points, task_index)
        pulled_back = chain.run(self.step + 1, points, inner).detach()
        chain.add_inner_lr_term(self.step, points, pulled_back)
        return Outer(chain.final_value, pulled_back,
                     steps_after=chain.n_steps - self.step - 1, exact=self.exact)


def is_exact_outer(outer: OuterSampler | OuterStep | None) -> bool:
    """Whether the outer value at the end of the inner steps is the exact V."""
    return outer is None or isinstance(outer, OuterStep) and getattr(outer, "exact", False)


def check_truncate(truncate: Any, n_steps: int) -> int:
    """The truncation window w, checked: an integer from 0 to K = ``n_steps``; None is K."""
    if truncate is None:
        return n_steps
    if (isinstance(truncate, bool) or not isinstance(truncate, (int, float))
            or isinstance(truncate, float) and not truncate.is_integer()
            or not 0 <= truncate <= n_steps):
        raise ParameterError(f"truncate must be an integer from 0 to n_steps={n_steps} (the "
                             f"inner steps differentiated, counted from the last; 0 is "
                             f"first-order), got {truncate!r}")
    return int(truncate)


def multi_step(from_samples: Callable[..., torch.Tensor], task: Any, theta: torch.Tensor,
               steps: Sequence[Trajectories], *, inner_lr: float,
               outer: OuterSampler | None = None, sampler: StepSampler | None = None,
               n_steps: int | None = None, truncate: int | None = None,
               **options: Any) -> MultiStep:
    """K inner steps of the estimator whose one-step form is ``from_samples``.

    ``steps``: the trajectories (R, N, T) of the first steps, the rows of step k drawn at
    each row's theta_k (or any samples, for a sample-for-sample comparison); steps beyond
    them are drawn by ``sampler(k, points, task_index)`` at the rows' theta_k. ``n_steps``
    defaults to ``len(steps)``. Step k runs ``from_samples`` from the rows' own theta_k; its
    "outer gradient" is lambda_{k+1}, pulled back by the later steps, and its "outer value"
    is V(theta_K) (``Continuation``), so the estimate is
    lambda_0 = A_0^T (A_1^T (... A_{K-1}^T grad V(theta_K) + c_{K-1}) ...) + c_0.

    ``truncate=w`` (truncated backpropagation) keeps the last w factors only: steps
    0..K-w-1 take the estimator's own inner step with no Jacobian and no correction (A_k = I,
    c_k = 0), and the estimate is lambda_{K-w}. w = K (or None) is the full chain, w = 0 is
    grad V(theta_K): first-order MAML's construction on the estimator's own theta_k.
    """
    n_steps = validation.positive_int("n_steps", len(steps) if n_steps is None else n_steps)
    window = check_truncate(truncate, n_steps)
    if not steps or len(steps) > n_steps or (len(steps) < n_steps and sampler is None):
        raise ParameterError(f"{n_steps} inner step(s) need the trajectories of step 0 and "
                             f"then of every step or a sampler; got {len(steps)} and "
                             f"{'a' if sampler else 'no'} sampler")
    chain = _Chain(from_samples, task, theta, list(steps), sampler, n_steps, inner_lr, outer,
                   dict(options))
    points = theta.detach().expand(steps[0].n_rows, *theta.shape)
    inner, task_index = steps[0], steps[0].task_index
    for step in range(n_steps - window):  # iterative: the window alone recurses
        points = chain.advance(step, points, inner)
        if step + 1 < n_steps:
            inner = chain.samples(step + 1, points, task_index)
    if window == 0:
        chain.points.append(points)
        return MultiStep(outer_at(task, points, task_index, outer).grad, chain.points,
                         points.new_zeros(points.shape[0]))
    estimate = chain.run(n_steps - window, points, inner)
    return MultiStep(estimate, chain.points, chain.inner_lr_grad)


#: What a meta-gradient differentiates: theta, the inner step size eta, or both.
WRT = ("theta", "inner_lr", "all")


def check_wrt(wrt: Any, inner_lr: float) -> str:
    """``wrt``, checked: one of WRT; eta-gradients need eta != 0 (the step g_k is read off
    theta_{k+1} - theta_k)."""
    if wrt not in WRT:
        raise ParameterError(f"wrt must be one of {', '.join(map(repr, WRT))}, got "
                             f"{wrt!r}.{did_you_mean(str(wrt), WRT)}")
    if wrt != "theta" and inner_lr == 0:
        raise ParameterError(f"wrt={wrt!r} needs inner_lr != 0: the inner step g_k is read "
                             f"off theta_(k+1) - theta_k = eta g_k")
    return wrt


def with_respect_to(wrt: str, estimate: torch.Tensor, inner_lr_grad: torch.Tensor | None
                    ) -> torch.Tensor:
    """The meta-gradient asked for, per row: (R, *P) for theta, (R, 1) for eta, (R, D + 1)
    for both (theta flattened, then eta)."""
    if wrt == "theta":
        return estimate
    eta = inner_lr_grad.unsqueeze(-1)
    return eta if wrt == "inner_lr" else torch.cat([estimate.reshape(eta.shape[0], -1), eta], -1)


def wrt_shape(wrt: str, theta: torch.Tensor) -> tuple[int, ...]:
    """The shape of one meta-gradient with respect to ``wrt``."""
    return tuple(theta.shape) if wrt == "theta" else (
        (1,) if wrt == "inner_lr" else (theta.numel() + 1,))


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
#: 1000 and 4000 trials per call before the alias sampler; see docs/benchmarks.md).
CHUNK_STEPS = 2 ** 21


def trials_per_chunk(task: Any, trajectories: int, exact_outer: bool = False,
                     dtype: torch.dtype = torch.float64) -> int:
    """Trials per chunk of a call whose one trial samples ``trajectories`` per task:
    ``CHUNK_STEPS`` trajectory steps, and no more than ``resources.CHUNK_BYTES`` (1 GiB,
    which binds on tasks with heavy trajectories, such as an MLP policy's). Set by the task's
    shape and the call alone, never by the machine, so a seeded call gives the same numbers
    everywhere."""
    steps = task.n_tasks * trajectories * resources.horizon_of(task)
    itemsize = torch.empty((), dtype=dtype).element_size()
    heaviest = resources.rows_per_chunk(
        resources.trial_bytes(task, trajectories, None if exact_outer else 0, itemsize),
        resources.CHUNK_TRAJECTORIES // max(task.n_tasks * trajectories, 1))
    # an all-exact estimate samples nothing
    return max(1, min(CHUNK_STEPS // max(steps, 1), heaviest))


#: How the inner trajectories of a batch of rows are drawn, when not at theta:
#: ``draw(task, theta, task_index, *, n_inner, generator, **options)`` returns them and the
#: from-samples form's extra keywords.
Draw = Callable[..., tuple[Trajectories, dict[str, Any]]]


def chunk_counts(n_trials: int, most: int) -> list[int]:
    """``n_trials`` split into the fewest chunks of at most ``most``, as equal as possible
    (no small last chunk, which would run at a small batch's lower throughput)."""
    n_chunks = -(-n_trials // most)
    base, extra = divmod(n_trials, n_chunks)
    return [base + 1] * extra + [base] * (n_chunks - extra)


def batched(from_samples: Callable[..., torch.Tensor], *, needs_model: bool = False,
            multi_step_ok: bool = True, draw: Draw | None = None,
            trajectories: Callable[[int, int | None, dict[str, Any]], int] | None = None,
            name: str | None = None):
    """The registered estimator built from a from-samples form (docstring carried over):
    argument checks, seeded sampling, chunks of trials, the average over the tasks.

    ``n_steps=K`` adapts in K inner steps with fresh trajectories at each theta_k
    (``multi_step``); ``truncate=w`` differentiates the last w of them only (None: all K);
    ``multi_step_ok=False`` makes K > 1 (and truncation) an UnsupportedError. ``draw``
    samples the inner trajectories where the estimator needs them (``Draw``; default: N at
    theta per row); its keyword options are then the estimator's options.
    ``trajectories(n_inner, n_outer, options)``: what one trial samples per task, when not
    K N + M (it sets the chunk size). ``name``: the registered name, for messages.
    """
    allowed = keyword_options(draw if draw is not None else from_samples)
    name = name or from_samples.__name__.replace("_from_samples", "")
    # estimators random beyond their samples (a noisy critic) draw from the call's generator
    takes_generator = "generator" in inspect.signature(from_samples).parameters

    # the form's annotations would describe the wrong call: keep the estimator's own
    @functools.wraps(from_samples, assigned=("__module__", "__qualname__", "__doc__"))
    def estimator(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float,
                  n_trials: int, n_outer: int | None = None,
                  generator: torch.Generator | None = None, n_steps: int = 1,
                  truncate: int | None = None, wrt: str = "theta",
                  **options: Any) -> torch.Tensor:
        n_inner, inner_lr, n_trials, n_outer = validate_call(
            task, theta, n_inner, inner_lr, n_trials, n_outer, generator,
            needs_model=needs_model)
        n_steps = validation.positive_int("n_steps", n_steps)
        window = check_truncate(truncate, n_steps)
        wrt = check_wrt(wrt, inner_lr)
        if (n_steps > 1 or window < n_steps or wrt != "theta") and not multi_step_ok:
            raise UnsupportedError(f"estimator {name!r} is defined for one inner step only; "
                                   f"use n_steps=1")
        for key in options:
            if key not in allowed:
                raise ParameterError(
                    f"estimator {name!r} has no "
                    f"option {key!r}; options: {', '.join(allowed) or '(none)'}")
        outer = None if n_outer is None else (
            lambda adapted, index: task.sample(adapted, n_outer, index, generator))
        form_options = dict(options) if draw is None else {}
        if takes_generator:
            form_options["generator"] = generator

        def trials(count: int) -> torch.Tensor:
            n_rows = count * task.n_tasks
            task_index = (torch.zeros(n_rows, dtype=torch.long, device=theta.device)
                          if task.n_tasks == 1 else
                          torch.arange(n_rows, device=theta.device) % task.n_tasks)
            if draw is None:
                rows = theta.detach().expand(n_rows, *theta.shape)
                inner = task.sample(rows, n_inner, task_index, generator)
                extra = form_options
            else:
                inner, drawn = draw(task, theta, task_index, n_inner=n_inner,
                                    generator=generator, **options)
                extra = {**form_options, **drawn}
            if n_steps == 1 and window == 1 and wrt == "theta":
                estimates = from_samples(task, theta, inner, inner_lr=inner_lr, outer=outer,
                                         **extra)
            else:
                run = multi_step(
                    from_samples, task, theta, [inner], inner_lr=inner_lr, outer=outer,
                    sampler=lambda k, points, index: task.sample(points, n_inner, index,
                                                                 generator),
                    n_steps=n_steps, truncate=window, **extra)
                estimates = with_respect_to(wrt, run.estimate, run.inner_lr_grad)
            shape = wrt_shape(wrt, theta)
            if task.n_tasks == 1:  # the mean over one task is the estimate itself
                return estimates.detach().reshape(count, *shape)
            return estimates.reshape(count, task.n_tasks, *shape).mean(1).detach()

        # K inner steps sample K times N inner trajectories per trial
        per_task = (trajectories(n_inner, n_outer, options) if trajectories is not None
                    else n_inner * n_steps + (n_outer or 0))
        counts = chunk_counts(n_trials, trials_per_chunk(task, per_task, n_outer is None,
                                                         theta.dtype))
        return trials(n_trials) if len(counts) == 1 else torch.cat([trials(c) for c in counts])

    estimator.__name__ = from_samples.__name__.replace("_from_samples", "")
    # options every K-step estimator takes beyond its form's (entries, records, store keys)
    estimator.chain_options = ("truncate", "wrt") if multi_step_ok else ()
    # help() and inspect.signature show the call a user makes (functools.wraps would point
    # them at the from-samples form): the common keywords, then this estimator's options
    own = inspect.signature(estimator, follow_wrapped=False)
    form = inspect.signature(draw if draw is not None else from_samples).parameters
    estimator.__signature__ = own.replace(parameters=[
        *(p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
          and (multi_step_ok or p.name not in ("truncate", "wrt"))),
        *(form[key].replace(kind=inspect.Parameter.KEYWORD_ONLY) for key in allowed)])
    drawn = ("n_inner trajectories" if draw is None
             else f"n_inner trajectories drawn by {draw.__name__} ({inspect.getdoc(draw)})")
    estimator.__doc__ = (f"{from_samples.__doc__ or ''}\n\n    Called as registered: samples "
                         f"n_trials x n_tasks rows of {drawn} (n_outer outer ones per row, or "
                         f"the exact outer step) and returns (n_trials, *theta.shape); the "
                         f"formula above is that of {from_samples.__name__}(task, theta, inner, "
                         f"*, inner_lr, outer).\n")
    return estimator
