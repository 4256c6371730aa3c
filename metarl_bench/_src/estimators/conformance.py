"""The conformance kit behind ``metarl_bench.testing``: small named checks of an estimator.

Each check takes the estimator's spec and the options passed to every call, returns a line
saying what it measured, and raises :class:`CheckFailure` (an ``AssertionError``) naming the
rule that was broken, what was found, and how to fix it. Checks that cannot apply to an
estimator (the twin checks without a from-samples form, the MDP statistics of an estimator
that declares the MDP unsupported) are skipped with the reason.

Statistical checks use fixed seeds, so a given estimator passes or fails the same way on
every run. Their thresholds are 5 standard errors (a correct estimator fails a z-test at
5 sigma with probability about 6e-7 per coordinate under the normal approximation), plus the
relative tolerances stated in each check. A third-party estimator whose estimates are very
heavy-tailed can still fail a z-test by bad luck on its seed; the message then reports the
measured numbers, and rerunning with another ``seed`` tells bad luck from a real bias.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from metarl_bench._src.core.errors import MetaRLBenchError, UnsupportedError
from metarl_bench._src.core.registry import EstimatorSpec, make_task, signature_problems
from metarl_bench._src.estimators.truth import estimate_meta_gradient, exact_moments, meta_gradient

#: z of every statistical test (see the module docstring).
Z = 5.0
#: the tasks of the checks: a small bandit (exact grad F_N and exact moments), a small MDP
#: (exact grad F_inf, estimated grad F_N) and a two-task MDP (the average over tasks)
BANDIT = ("bandit-v0", dict(rewards=[1.0, 0.0, 0.5], init_logits=[0.0, 0.5, -0.5]))
MDP = ("tabular-v0", dict(n_states=4, n_actions=3, horizon=4, gamma=0.9, seed=1))
TWO_TASK_MDP = ("tabular-v0", dict(n_states=3, n_actions=2, horizon=3, gamma=0.8, n_tasks=2,
                                   seed=4))
INNER_LR = 1.0
N_SMALL, N_LARGE = 4, 32
#: Monte Carlo trials of the statistical checks, and samples of the estimated truth
N_TRIALS, N_TRIALS_LARGE, N_TRUTH = 2000, 1000, 4000
#: "vanishing" bias: relative bias at N_LARGE at most this on the bandit (exact truth) and
#: on the MDP (against grad F_inf, which differs from grad F_N by O(1/N): 0.9% here)
VANISHING_BANDIT, VANISHING_MDP = 0.05, 0.10


class CheckFailure(AssertionError):
    """A conformance rule was broken; the message says which, what was found, and the fix."""


class CheckSkipped(Exception):
    """The check does not apply to this estimator; the message says why."""


def fail(check: str, rule: str, found: str, fix: str) -> CheckFailure:
    return CheckFailure(f"[{check}] rule: {rule}\n  found: {found}\n  fix: {fix}")


@dataclass
class Context:
    """What every check needs: the spec under test, its options, the tasks, the seed."""

    spec: EstimatorSpec
    options: dict[str, Any]
    seed: int = 0
    _tasks: dict[str, Any] = field(default_factory=dict)

    def task(self, which: tuple[str, dict[str, Any]]) -> Any:
        key = which[0] + repr(sorted(which[1].items()))
        if key not in self._tasks:
            self._tasks[key] = make_task(which[0], **which[1])
        return self._tasks[key]

    def call(self, task: Any, theta: torch.Tensor, *, n_inner: int = N_SMALL,
             n_trials: int = 5, seed: int | None = None, **overrides: Any) -> Any:
        kwargs = dict(n_inner=n_inner, inner_lr=INNER_LR, n_trials=n_trials, n_outer=None,
                      generator=torch.Generator().manual_seed(self.seed if seed is None
                                                              else seed))
        kwargs.update(self.options)
        kwargs.update(overrides)
        return self.spec.fn(task, theta, **kwargs)


# ---- the checks -------------------------------------------------------------------------

def check_signature(ctx: Context) -> str:
    problems = signature_problems(ctx.spec.fn)
    if problems:
        raise fail("check_signature",
                   "an estimator is called as fn(task, theta, *, n_inner, inner_lr, n_trials, "
                   "n_outer=None, generator=None, **options)",
                   "; ".join(problems),
                   "take task and theta positionally and every common keyword by name "
                   "(mb.batched_estimator(from_samples) builds such a function)")
    return "accepts task, theta and n_inner, inner_lr, n_trials, n_outer, generator"


class _TaskUnsupported(Exception):
    """The estimator raised UnsupportedError on a task other than the bandit."""


def _tensor_result(ctx: Context, check: str, task: Any, theta: torch.Tensor,
                   n_trials: int = 5) -> torch.Tensor:
    try:
        out = ctx.call(task, theta, n_trials=n_trials)
    except UnsupportedError as exc:
        if task.name == BANDIT[0]:
            raise fail(check, "every estimator runs on a bandit with exact outer (the tasks "
                       "of every check)", f"UnsupportedError: {exc}",
                       "support tasks with a model and n_outer=None") from None
        raise _TaskUnsupported(task.name) from None
    if not isinstance(out, torch.Tensor):
        raise fail(check, "an estimator returns a torch.Tensor",
                   f"a {type(out).__name__} on {task.name}",
                   "stack the estimates into one tensor of shape (n_trials, *theta.shape)")
    return out


def check_returns_tensor_of_shape(ctx: Context) -> str:
    check = "check_returns_tensor_of_shape"
    seen = []
    for which in (BANDIT, TWO_TASK_MDP):
        task = ctx.task(which)
        theta = task.initial_params()
        for n_trials in (1, 3):
            try:
                out = _tensor_result(ctx, check, task, theta, n_trials)
            except _TaskUnsupported:
                seen.append(f"({task.name} unsupported)")
                break
            expected = (n_trials, *theta.shape)
            if tuple(out.shape) != expected:
                raise fail(check, "the result has shape (n_trials, *theta.shape): one "
                           "independent estimate per row",
                           f"shape {tuple(out.shape)} for n_trials={n_trials} and theta of "
                           f"shape {tuple(theta.shape)} on {task.name} "
                           f"(n_tasks={task.n_tasks}); expected {expected}",
                           "return one row per trial; with a task distribution, average "
                           "each trial's estimates over its tasks")
            if out.requires_grad:
                raise fail(check, "the result is detached (holds no autograd graph)",
                           f"a tensor with requires_grad=True on {task.name}",
                           "return estimates.detach(): a held graph keeps every trajectory "
                           "of the call alive")
            seen.append(expected)
    return "shapes " + ", ".join(str(s) for s in seen)


class _Sweep:
    """Calls over tasks x dtypes; a task the estimator declares unsupported (other than the
    bandit) is left out and named in ``covered``."""

    def __init__(self, ctx: Context, check: str, tasks: tuple, dtypes: tuple, n_trials: int):
        self.ctx, self.check, self.tasks, self.dtypes, self.n_trials = (
            ctx, check, tasks, dtypes, n_trials)
        self.done: list[str] = []
        self.unsupported: list[str] = []

    def __iter__(self) -> Iterator[tuple[Any, torch.dtype, torch.Tensor]]:
        for which in self.tasks:
            task = self.ctx.task(which)
            label = f"{task.name} n_tasks={task.n_tasks}"
            try:
                for dtype in self.dtypes:
                    yield task, dtype, _tensor_result(self.ctx, self.check, task,
                                                      task.initial_params(dtype=dtype),
                                                      self.n_trials)
            except _TaskUnsupported:
                self.unsupported.append(label)
                continue
            self.done.append(label)

    @property
    def covered(self) -> str:
        return ", ".join(self.done) + (f" ({', '.join(self.unsupported)}: unsupported, not "
                                       f"checked)" if self.unsupported else "")


def _each_call(ctx: Context, check: str, tasks: tuple, dtypes: tuple, n_trials: int,
               rule: str, fix: str,
               problem: Callable[[Any, torch.dtype, torch.Tensor], str | None]) -> _Sweep:
    """Run the calls of a ``_Sweep``; the first whose ``problem(task, dtype, out)`` is not
    None fails the check with that as what was found."""
    sweep = _Sweep(ctx, check, tasks, dtypes, n_trials)
    for task, dtype, out in sweep:
        found = problem(task, dtype, out)
        if found is not None:
            raise fail(check, rule, found, fix)
    return sweep


def check_dtype_follows_theta(ctx: Context) -> str:
    sweep = _each_call(
        ctx, "check_dtype_follows_theta", (BANDIT, TWO_TASK_MDP),
        (torch.float32, torch.float64), 5, "the result has theta's dtype",
        "compute in theta.dtype (make the task's tensors with dtype=theta.dtype) instead of a "
        "fixed dtype",
        lambda task, dtype, out: None if out.dtype == dtype else
        f"{out.dtype} for theta in {dtype} on {task.name}")
    return f"float32 -> float32, float64 -> float64 on {sweep.covered}"


def check_device_follows_theta(ctx: Context) -> str:
    check = "check_device_follows_theta"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    task = ctx.task(BANDIT)
    for device in devices:
        out = _tensor_result(ctx, check, task, task.initial_params(device=device))
        if out.device.type != torch.device(device).type:
            raise fail(check, "the result is on theta's device",
                       f"{out.device} for theta on {device}",
                       "create every tensor on theta.device (torch.zeros(..., "
                       "device=theta.device), .to(theta.device))")
    return "devices " + ", ".join(devices) + ("" if len(devices) > 1 else
                                              " (no CUDA here: cuda not checked)")


def check_finite(ctx: Context) -> str:
    def problem(task: Any, dtype: torch.dtype, out: torch.Tensor) -> str | None:
        bad = (~torch.isfinite(out)).sum().item()
        return (f"{bad} NaN or infinite entries of {out.numel()} on {task.name} in {dtype}"
                if bad else None)

    sweep = _each_call(ctx, "check_finite", (BANDIT, MDP, TWO_TASK_MDP),
                       (torch.float32, torch.float64), 50, "every estimate is finite",
                       "look for a log or division of a probability that can be 0, or an "
                       "overflow in float32", problem)
    return f"50 estimates finite in float32 and float64 on {sweep.covered}"


def check_same_seed_same_bits(ctx: Context) -> str:
    check = "check_same_seed_same_bits"

    def problem(task: Any, dtype: torch.dtype, first: torch.Tensor) -> str | None:
        torch.manual_seed(12345)  # an estimator drawing from the global RNG now differs
        again = _tensor_result(ctx, check, task, task.initial_params(), 20)
        if torch.equal(first, again):
            return None
        return (f"{(first != again).sum().item()} of {first.numel()} entries differ between "
                f"two calls with generator seed {ctx.seed} on {task.name}")

    sweep = _each_call(ctx, check, (BANDIT, TWO_TASK_MDP), (torch.float64,), 20,
                       "the same generator seed gives bit-identical estimates",
                       "draw every random number from the `generator` argument (e.g. "
                       "torch.rand(..., generator=generator)), never from the global RNG",
                       problem)
    return f"two calls, same seed: identical bits on {sweep.covered}"


def check_seeds_change_estimates(ctx: Context) -> str:
    check = "check_seeds_change_estimates"
    task = ctx.task(BANDIT)
    theta = task.initial_params()
    first = _tensor_result(ctx, check, task, theta, 20)
    other = ctx.call(task, theta, n_trials=20, seed=ctx.seed + 1)
    if ctx.spec.deterministic:
        if not torch.equal(first, other):
            raise fail(check, "a deterministic estimator gives the same value for every "
                       "seed", "different values for seeds 0 and 1",
                       "register it without deterministic=True if it samples")
        return "deterministic, as claimed: the same value for seeds 0 and 1"
    if torch.equal(first, other):
        raise fail(check, "a stochastic estimator gives different estimates for different "
                   "seeds", f"identical estimates for seeds {ctx.seed} and {ctx.seed + 1}",
                   "use the `generator` argument to draw the samples; if the estimator "
                   "samples nothing, register it with deterministic=True")
    if torch.equal(first[0:1].expand_as(first), first):
        raise fail(check, "the trials of one call are independent",
                   "every row of one call is the same estimate",
                   "draw fresh samples for each trial (one row per trial), not one repeated")
    return "seeds 0 and 1 give different estimates; rows differ within a call"


def check_depends_on_theta(ctx: Context) -> str:
    check = "check_depends_on_theta"
    task = ctx.task(BANDIT)
    theta = task.initial_params()
    before = theta.clone()
    out = _tensor_result(ctx, check, task, theta, 20)
    if not torch.equal(theta, before) or theta.grad is not None or theta.requires_grad:
        raise fail(check, "an estimator leaves theta untouched",
                   "theta was modified in place, or given a .grad or requires_grad",
                   "work on theta.detach().clone() (or one copy per row); never write into "
                   "the caller's tensor")
    if not out.abs().max() > 0:
        raise fail(check, "a meta-gradient estimate is not identically zero on a task "
                   "whose meta-gradient is not", "every entry is 0",
                   "return the estimate, not a placeholder")
    moved = theta + torch.tensor([0.4, -0.3, 0.2], dtype=theta.dtype)
    out_moved = ctx.call(task, moved, n_trials=20)
    if torch.equal(out, out_moved):
        raise fail(check, "the estimate depends on theta (the gradient must reach the "
                   "parameters)",
                   "bit-identical estimates at theta and at theta + (0.4, -0.3, 0.2) with "
                   "the same seed",
                   "sample at and differentiate with respect to the theta passed in, not a "
                   "stored or initial parameter")
    return "estimates change when theta moves; theta left untouched"


def check_bad_input_raises_typed_errors(ctx: Context) -> str:
    check = "check_bad_input_raises_typed_errors"
    task = ctx.task(BANDIT)
    theta = task.initial_params()
    cases = [
        ("n_inner=0", lambda: ctx.call(task, theta, n_inner=0)),
        ("n_trials=0", lambda: ctx.call(task, theta, n_trials=0)),
        ("inner_lr=nan", lambda: ctx.call(task, theta, inner_lr=math.nan)),
        ("theta of the wrong shape", lambda: ctx.call(task, torch.zeros(5, dtype=theta.dtype))),
        ("theta a list", lambda: ctx.call(task, [0.0, 0.0, 0.0])),
        ("generator=42", lambda: ctx.call(task, theta, generator=42)),
    ]
    for label, bad_call in cases:
        try:
            bad_call()
        except MetaRLBenchError as exc:
            if not str(exc):
                raise fail(check, "a typed error says what was wrong",
                           f"{type(exc).__name__} with an empty message for {label}",
                           "name the argument, the value and what is allowed") from None
            continue
        except Exception as exc:  # noqa: BLE001 - any other error is the finding
            raise fail(check, "bad input raises a metarl_bench error (ParameterError, "
                       "ShapeError, ...) naming what was wrong",
                       f"{type(exc).__name__}: {str(exc)[:120]} for {label}",
                       "validate the arguments first (mb.batched_estimator does it for a "
                       "from-samples form)") from None
        raise fail(check, "bad input raises a metarl_bench error instead of returning",
                   f"no error for {label}",
                   "validate the arguments first (mb.batched_estimator does it for a "
                   "from-samples form)")
    return f"{len(cases)} bad calls, each a typed error"


def _twin_options(ctx: Context) -> dict[str, Any]:
    return {k: v for k, v in ctx.options.items() if k in ctx.spec.options}


def _on_same_samples(ctx: Context, twin: Callable[..., torch.Tensor], n_rows: int,
                     n_inner: int) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
    """(task, from-samples form, twin) on the same float64 inner samples, for 2 tasks."""
    options = _twin_options(ctx)
    for which in (BANDIT, TWO_TASK_MDP):
        task = ctx.task(which)
        theta = task.initial_params() + 0.1
        index = torch.arange(n_rows) % task.n_tasks
        inner = task.sample(theta.expand(n_rows, *theta.shape), n_inner, index,
                            torch.Generator().manual_seed(ctx.seed))
        yield (task, ctx.spec.from_samples(task, theta, inner, inner_lr=INNER_LR, **options),
               twin(task, theta, inner, inner_lr=INNER_LR, **options))


def check_batched_equals_per_trial(ctx: Context) -> str:
    from metarl_bench._src.estimators.reference import per_trial

    check = "check_batched_equals_per_trial"
    for task, batched, looped in _on_same_samples(ctx, per_trial(ctx.spec.from_samples), 6, 5):
        if not torch.allclose(batched, looped, rtol=1e-10, atol=1e-12):
            raise fail(check, "rows never interact: the from-samples form on R rows equals "
                       "it run one row at a time on the same samples (float64, rtol 1e-10)",
                       f"max difference {(batched - looped).abs().max().item():.3e} on "
                       f"{task.name}",
                       "reduce over trajectories (axis 1) and time, never over rows (axis "
                       "0), except in a sum whose gradient is taken per row")
    return "6 rows batched = row by row on 2 tasks (rtol 1e-10)"


def check_from_samples_equals_reference(ctx: Context) -> str:
    check = "check_from_samples_equals_reference"
    for task, fast, slow in _on_same_samples(ctx, ctx.spec.reference, 3, 4):
        if fast.shape != slow.shape or not torch.allclose(fast, slow, rtol=1e-10, atol=1e-12):
            found = (f"shapes {tuple(fast.shape)} and {tuple(slow.shape)}"
                     if fast.shape != slow.shape else
                     f"max difference {(fast - slow).abs().max().item():.3e}")
            raise fail(check, "the fast from-samples form equals its slow twin on the same "
                       "samples (float64, rtol 1e-10)", f"{found} on {task.name}",
                       "one of the two is wrong: compare them term by term (pathwise part, "
                       "then the correction) on a single row")
    return "fast = slow twin on 2 tasks (rtol 1e-10)"


@dataclass(frozen=True)
class Moments:
    mean: torch.Tensor        # (D,)
    mean_se: torch.Tensor     # (D,) standard error of the mean (0 when exact)
    variance: float           # trace of the covariance
    exact: bool


def _monte_carlo(samples: torch.Tensor) -> Moments:
    flat = samples.reshape(samples.shape[0], -1).double()
    n = flat.shape[0]
    return Moments(flat.mean(0), flat.std(0) / math.sqrt(n), float(flat.var(0).sum()), False)


def _moments(ctx: Context, task: Any, theta: torch.Tensor, n_inner: int,
             truth: torch.Tensor, n_trials: int) -> Moments:
    """Exact moments where the spec allows an enumeration; Monte Carlo of the call otherwise."""
    spec = ctx.spec
    if spec.from_samples is not None and spec.is_count_determined(_twin_options(ctx)):
        try:
            m = exact_moments(task, theta, spec, n_inner=n_inner, inner_lr=INNER_LR,
                              truth=truth, **_twin_options(ctx))
            return Moments(m.mean.reshape(-1), torch.zeros_like(m.mean.reshape(-1)),
                           float(m.covariance.trace()), True)
        except UnsupportedError:
            pass
    return _monte_carlo(ctx.call(task, theta, n_inner=n_inner, n_trials=n_trials))


def _describe(m: Moments, truth: torch.Tensor) -> str:
    bias = float((m.mean - truth).norm())
    cosine = float(torch.nn.functional.cosine_similarity(m.mean, truth, 0))
    kind = "exact" if m.exact else "Monte Carlo"
    return (f"bias {bias:.3g} ({bias / float(truth.norm()):.2%} of |truth| "
            f"{float(truth.norm()):.3g}), variance {m.variance:.3g}, cosine {cosine:.4f} "
            f"({kind} moments)")


def _ascent(check: str, m: Moments, truth: torch.Tensor, where: str, *, strict: bool) -> None:
    """The mean estimate points uphill: its projection on the truth is positive (``strict``:
    beyond noise) or at least not significantly negative."""
    direction = truth / truth.norm()
    projection = float(m.mean @ direction)
    noise = float((m.mean_se * direction).norm())
    ok = projection > Z * noise if strict else projection > -Z * noise
    if not ok:
        raise fail(check, "the mean estimate is an ascent direction of the meta-objective "
                   "(positive projection on the true meta-gradient)",
                   f"projection {projection:.3g} (standard error {noise:.2g}) on {where}",
                   "check the sign of every term, and that the estimate is the gradient of "
                   "the return to maximise (not of a loss)")


def _unbiased(check: str, m: Moments, truth: torch.Tensor, truth_se: torch.Tensor,
              where: str) -> None:
    tolerance = Z * torch.sqrt(m.mean_se ** 2 + truth_se ** 2) + 1e-9 * (1 + truth.abs())
    excess = (m.mean - truth).abs() / tolerance
    if excess.max() > 1:
        i = int(excess.argmax())
        raise fail(check, f"bias='zero': the mean equals the truth within {Z:g} standard "
                   f"errors (exact moments: within 1e-9)",
                   f"coordinate {i}: mean {float(m.mean[i]):.6g}, truth {float(truth[i]):.6g}, "
                   f"{float(excess[i]):.2f} x the tolerance on {where}; {_describe(m, truth)}",
                   "an exactly unbiased estimator has every correction term with the right "
                   "weight; if the bias is real, register it with bias='vanishing' or "
                   "'persistent'")


def _vanishing(check: str, m: Moments, truth: torch.Tensor, limit: float, where: str) -> None:
    bias = float((m.mean - truth).norm())
    allowed = limit * float(truth.norm()) + Z * float(m.mean_se.norm())
    if bias > allowed:
        raise fail(check, f"bias='vanishing': at N={N_LARGE} the bias is at most "
                   f"{limit:.0%} of |truth| (+{Z:g} standard errors)",
                   f"{_describe(m, truth)} on {where}",
                   "a consistent estimator's mean tends to the true meta-gradient as N "
                   "grows: check the scale (1/N, inner_lr) and sign of each term; if the "
                   "bias does not vanish, register it with bias='persistent'")


def check_bandit_statistics(ctx: Context) -> str:
    check = "check_bandit_statistics"
    task = ctx.task(BANDIT)
    theta = task.initial_params()
    truth = meta_gradient(task, theta, inner_lr=INNER_LR, n_inner=N_SMALL).reshape(-1)
    m = _moments(ctx, task, theta, N_SMALL, truth, N_TRIALS)
    where = f"{task.name} {BANDIT[1]}, N={N_SMALL}, inner_lr={INNER_LR}, exact outer"
    _ascent(check, m, truth, where, strict=True)
    lines = [f"N={N_SMALL}: {_describe(m, truth)}"]
    if ctx.spec.bias == "zero":
        _unbiased(check, m, truth, torch.zeros_like(truth), where)
    elif ctx.spec.bias == "vanishing":
        truth = meta_gradient(task, theta, inner_lr=INNER_LR, n_inner=N_LARGE).reshape(-1)
        m = _moments(ctx, task, theta, N_LARGE, truth, N_TRIALS_LARGE)
        _vanishing(check, m, truth, VANISHING_BANDIT, where.replace(f"N={N_SMALL}",
                                                                    f"N={N_LARGE}"))
        lines.append(f"N={N_LARGE}: {_describe(m, truth)}")
    return f"bias={ctx.spec.bias!r} against exact grad F_N; " + "; ".join(lines)


def check_exact_moments_match_monte_carlo(ctx: Context) -> str:
    check = "check_exact_moments_match_monte_carlo"
    task = ctx.task(BANDIT)
    theta = task.initial_params()
    truth = meta_gradient(task, theta, inner_lr=INNER_LR, n_inner=N_SMALL).reshape(-1)
    exact = exact_moments(task, theta, ctx.spec, n_inner=N_SMALL, inner_lr=INNER_LR,
                          truth=truth, **_twin_options(ctx))
    samples = ctx.call(task, theta, n_trials=N_TRIALS).reshape(N_TRIALS, -1).double()
    mean, covariance = exact.mean.reshape(-1), exact.covariance
    se = torch.sqrt(covariance.diagonal().clamp(min=0) / N_TRIALS)
    excess = (samples.mean(0) - mean).abs() / (Z * se + 1e-9 * (1 + mean.abs()))
    where = f"{task.name}, N={N_SMALL}, {N_TRIALS} trials"
    if excess.max() > 1:
        i = int(excess.argmax())
        raise fail(check, "the registered estimator samples the distribution its from-samples "
                   f"form defines: Monte Carlo mean within {Z:g} standard errors of the exact "
                   "mean",
                   f"coordinate {i}: Monte Carlo {float(samples.mean(0)[i]):.6g}, exact "
                   f"{float(mean[i]):.6g} ({float(excess[i]):.2f} x the tolerance) on {where}",
                   "the registered function must sample N inner trajectories per trial at "
                   "theta and apply the from-samples form (mb.batched_estimator does)")
    # trace of the covariance, estimated without bias around the exact mean
    squared = ((samples - mean) ** 2).sum(1)
    variance, variance_se = float(squared.mean()), float(squared.std() / math.sqrt(N_TRIALS))
    exact_variance = float(covariance.trace())
    if abs(variance - exact_variance) > Z * variance_se + 1e-9 * (1 + exact_variance):
        raise fail(check, f"the Monte Carlo variance is within {Z:g} standard errors of the "
                   "exact variance of the from-samples form",
                   f"Monte Carlo {variance:.6g} +- {variance_se:.2g}, exact "
                   f"{exact_variance:.6g} on {where}",
                   "the registered function must average the estimates of one trial's tasks "
                   "only, and add no noise of its own")
    return (f"mean and variance ({exact_variance:.3g}) of {N_TRIALS} calls agree with the "
            f"exact moments")


def check_mdp_statistics(ctx: Context) -> str:
    check = "check_mdp_statistics"
    task = ctx.task(MDP)
    theta = task.initial_params()
    where = f"{task.name} {MDP[1]}, inner_lr={INNER_LR}, exact outer"
    limit = meta_gradient(task, theta, inner_lr=INNER_LR).reshape(-1)
    try:
        samples = ctx.call(task, theta, n_inner=N_SMALL, n_trials=N_TRIALS)
    except UnsupportedError as exc:
        raise CheckSkipped(f"the estimator does not support this task: {exc}") from None
    m = _monte_carlo(samples)
    _ascent(check, m, limit, f"{where}, N={N_SMALL}", strict=False)
    lines = [f"N={N_SMALL} against grad F_inf: {_describe(m, limit)}"]
    if ctx.spec.bias == "zero":
        estimated = estimate_meta_gradient(task, theta, n_inner=N_SMALL, inner_lr=INNER_LR,
                                           n_samples=N_TRUTH,
                                           generator=torch.Generator().manual_seed(ctx.seed + 7))
        truth, truth_se = estimated.mean.reshape(-1), estimated.stderr.reshape(-1)
        _unbiased(check, m, truth, truth_se, f"{where}, N={N_SMALL} (truth estimated from "
                  f"{N_TRUTH} leave-one-out estimates)")
        lines.append(f"against the estimated grad F_N: {_describe(m, truth)}")
    elif ctx.spec.bias == "vanishing":
        m = _monte_carlo(ctx.call(task, theta, n_inner=N_LARGE, n_trials=N_TRIALS_LARGE))
        _vanishing(check, m, limit, VANISHING_MDP, f"{where}, N={N_LARGE} against grad F_inf")
        lines.append(f"N={N_LARGE} against grad F_inf: {_describe(m, limit)}")
    return f"bias={ctx.spec.bias!r}; " + "; ".join(lines)


# ---- the list -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckDef:
    name: str
    run: Callable[[Context], str]
    #: None when the check applies to the spec, else why it is skipped
    applies: Callable[[EstimatorSpec], str | None] = lambda spec: None


def _needs_twin(spec: EstimatorSpec) -> str | None:
    if spec.from_samples is None:
        return "no from-samples form registered"
    if spec.reference is None:
        return "no slow reference twin registered"
    return None


def _needs_from_samples(spec: EstimatorSpec) -> str | None:
    return "no from-samples form registered" if spec.from_samples is None else None


def _needs_exact_moments(spec: EstimatorSpec) -> str | None:
    if spec.from_samples is None:
        return "no from-samples form registered"
    if not spec.is_count_determined():
        return "not count-determined: its bandit moments cannot be enumerated"
    return None


CHECKS: tuple[CheckDef, ...] = (
    CheckDef("check_signature", check_signature),
    CheckDef("check_returns_tensor_of_shape", check_returns_tensor_of_shape),
    CheckDef("check_dtype_follows_theta", check_dtype_follows_theta),
    CheckDef("check_device_follows_theta", check_device_follows_theta),
    CheckDef("check_finite", check_finite),
    CheckDef("check_same_seed_same_bits", check_same_seed_same_bits),
    CheckDef("check_seeds_change_estimates", check_seeds_change_estimates),
    CheckDef("check_depends_on_theta", check_depends_on_theta),
    CheckDef("check_bad_input_raises_typed_errors", check_bad_input_raises_typed_errors),
    CheckDef("check_batched_equals_per_trial", check_batched_equals_per_trial,
             _needs_from_samples),
    CheckDef("check_from_samples_equals_reference", check_from_samples_equals_reference,
             _needs_twin),
    CheckDef("check_exact_moments_match_monte_carlo", check_exact_moments_match_monte_carlo,
             _needs_exact_moments),
    CheckDef("check_bandit_statistics", check_bandit_statistics),
    CheckDef("check_mdp_statistics", check_mdp_statistics),
)


def run_check(check: CheckDef, ctx: Context) -> tuple[str, str, float]:
    """(status, message, seconds): status is passed, failed or skipped."""
    start = time.perf_counter()
    reason = check.applies(ctx.spec)
    if reason is not None:
        return "skipped", reason, 0.0
    try:
        message = check.run(ctx)
        status = "passed"
    except CheckSkipped as exc:
        status, message = "skipped", str(exc)
    except CheckFailure as exc:
        status, message = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - a crash inside a check is a failure to report
        status = "failed"
        message = (f"[{check.name}] rule: the estimator runs on a valid call\n"
                   f"  found: {type(exc).__name__}: {exc}\n"
                   f"  fix: run the call shown by this check's code under a debugger")
    return status, message, time.perf_counter() - start
