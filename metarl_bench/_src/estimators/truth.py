"""Ground truth: exact meta-gradients, estimated finite-N references, exact moments.

grad F_inf by nested autodiff through the exact model; grad F_N by enumerating pull counts
(bandits); otherwise grad F_N estimated as the mean of many exactly unbiased estimates
(leave-one-out with the exact model; score-function with sampled outer steps on tasks
without a model), reported with its standard error and the method that made it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import torch

from metarl_bench._src.core import resources

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import UnsupportedError
from metarl_bench._src.estimators.common import (check_truncate, check_wrt, multi_step,
                                                with_respect_to)
from metarl_bench._src.core.progress import as_advance
from metarl_bench._src.core.registry import EstimatorSpec, estimator_spec
from metarl_bench._src.core.trajectories import Trajectories, discounted_return


#: The most outcomes an exact enumeration may list (a bandit with K arms and N samples has
#: C(N+K-1, K-1): 33,153 for K=3, N=256; 9.7e10 for K=10, N=64, where estimates take over).
MAX_ENUMERATION = 1_000_000


def enumeration_size(task: Any, n_inner: int, n_steps: int = 1) -> int | None:
    """Outcomes of K = ``n_steps`` inner steps of N samples: C**K for C outcomes per step."""
    size = task.enumeration_size(n_inner)
    return None if size is None else size ** n_steps


def enumerable(task: Any, n_inner: int, n_steps: int = 1) -> bool:
    """Whether the inner samples of ``task`` at N = ``n_inner`` (over ``n_steps`` inner steps)
    can be enumerated exactly."""
    size = enumeration_size(task, n_inner, n_steps)
    return size is not None and size <= MAX_ENUMERATION


def exact_finite_truth(task: Any, n_inner: int, n_steps: int = 1) -> bool:
    """Whether ``meta_gradient(..., n_inner=N, n_steps=K)`` is available (else estimated)."""
    return enumerable(task, n_inner, n_steps) and (n_steps == 1 or "n_steps" in inspect.signature(
        task.finite_meta_objective).parameters)


def _check(task: Any, theta: torch.Tensor, inner_lr: Any) -> float:
    validation.params_tensor(theta, task.param_shape, task.name)
    if not task.has_model:
        raise UnsupportedError(f"task {task.name!r} has no model: its exact meta-gradient is "
                               f"unknown; estimate a reference with a large sample instead")
    return validation.finite_float("inner_lr", inner_lr)


def meta_gradient(task: Any, theta: torch.Tensor, *, inner_lr: float,
                  n_inner: int | None = None, n_steps: int = 1,
                  wrt: str = "theta") -> torch.Tensor:
    """Exact meta-gradient: grad F_inf (``n_inner=None``) or grad F_N (``n_inner=N``).

    grad F_inf = E_task (I + eta grad^2 V(theta)) grad V(theta + eta grad V(theta)), by nested
    autodiff through the exact value. grad F_N needs an exact enumeration of the inner
    samples (bandit-v0); other tasks raise :class:`UnsupportedError`.
    K = ``n_steps`` inner steps: F_inf = E_task V(theta_K), theta_{k+1} = theta_k + eta grad
    V(theta_k), differentiated through all K exact steps; F_N by nested enumeration of every
    step's samples (C**K outcomes, at most ``MAX_ENUMERATION``).
    ``wrt="inner_lr"``: dF/d eta instead, shape (1,), by differentiating the same objective
    in eta (through every exact step for F_inf, through the enumerated F_N, whose
    multinomial weights at theta_k, k >= 1, depend on eta too); ``"all"``: both,
    (theta.numel() + 1,), theta's part flattened first.
    Result: shape theta.shape (``wrt="theta"``), theta's dtype and device.
    """
    inner_lr = _check(task, theta, inner_lr)
    n_steps = validation.positive_int("n_steps", n_steps)
    wrt = check_wrt(wrt, inner_lr)
    point = theta.detach().requires_grad_()
    if wrt != "theta":  # eta as a leaf: every use of it below is differentiated
        inner_lr = torch.tensor(inner_lr, dtype=theta.dtype, device=theta.device,
                                requires_grad=True)
    if n_inner is None:
        task_index = torch.arange(task.n_tasks, device=theta.device)
        rows = point.unsqueeze(0).expand(task.n_tasks, *theta.shape)
        for _ in range(n_steps):
            (grad,) = torch.autograd.grad(task.value(rows, task_index).sum(), rows,
                                          create_graph=True)
            rows = rows + inner_lr * grad
        objective = task.value(rows, task_index).mean()
    else:
        n_inner = validation.positive_int("n_inner", n_inner)
        if not exact_finite_truth(task, n_inner, n_steps):
            size = enumeration_size(task, n_inner, n_steps)
            why = (f"which {task.name!r} does not have (bandit-v0 does)" if size is None else
                   f"here of {size:,} outcomes, more than the {MAX_ENUMERATION:,} allowed"
                   if size > MAX_ENUMERATION else
                   f"which {task.name!r} does not have for {n_steps} inner steps")
            raise UnsupportedError(
                f"the exact finite-N meta-gradient needs an enumeration of the inner samples, "
                f"{why}; use n_inner=None for grad F_inf, or estimate_meta_gradient(...) for "
                f"an estimated grad F_N")
        if n_steps == 1:
            objective = task.finite_meta_objective(point, n_inner, inner_lr)
        else:
            objective = task.finite_meta_objective(point, n_inner, inner_lr, n_steps=n_steps)
    if wrt == "theta":
        (grad,) = torch.autograd.grad(objective, point)
        return grad
    grad, eta_grad = torch.autograd.grad(objective, (point, inner_lr))
    return with_respect_to(wrt, grad.unsqueeze(0), eta_grad.reshape(1))[0]


@dataclass(frozen=True)
class EstimatedGradient:
    """A reference gradient estimated from ``samples`` (S, *P): mean and standard error;
    ``method`` says which estimator and how many trajectories made it."""

    samples: torch.Tensor
    method: str = ""

    @property
    def mean(self) -> torch.Tensor:
        return self.samples.mean(0)

    @property
    def stderr(self) -> torch.Tensor:
        return self.samples.std(0) / self.samples.shape[0] ** 0.5


#: Trajectories in the pilot batch that sets the constant baseline of a model-free truth.
PILOT_TRAJECTORIES = 64


def estimate_meta_gradient(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float,
                           n_samples: int = 20_000, n_outer: int | None = None,
                           chunk: int | None = None,
                           generator: torch.Generator | None = None,
                           n_steps: int = 1,
                           progress: bool | Callable[[int], None] | None = None,
                           wrt: str = "theta") -> EstimatedGradient:
    """grad F_N estimated as the mean of ``n_samples`` exactly unbiased estimates.

    Tasks with a model: leave-one-out estimates (``loo``: exact outer, O(1/N) variance), in
    chunks of about 2**15 inner trajectories per task and at most 1 GiB
    (``resources.truth_chunk``). Tasks without one: ``unbiased`` score-function
    estimates with ``n_outer`` sampled outer trajectories and a constant baseline b, the mean
    return of a separate pilot batch of 64 trajectories per task at theta (independent of
    every estimate, so each stays exactly unbiased while the score term
    (V(theta') - b) sum_i s_i loses most of its variance), in the chunks of an estimator
    cell (at most 1 GiB each: a MuJoCo trajectory weighs a thousand tabular ones).
    K = ``n_steps`` inner steps: their K-step forms (``loo`` with exact lookahead
    baselines) stay exactly unbiased, ``loo``'s variance O(1) in N instead of O(1/N): the
    reference gets noisier, and its standard error says by how much. Chunk sizes depend on
    the configuration alone (N, K, M), never on the machine, so the result is the same
    everywhere. ``progress``: True for a bar on stderr, or a function called with the number
    of samples of each chunk. The result's ``method`` says which estimator, N, K, M and how
    many samples made it. ``wrt``: the meta-gradient of theta, of eta (``"inner_lr"``) or
    of both (``"all"``); both estimators' eta-gradients are exactly unbiased too
    (``common.multi_step``).
    """
    validation.params_tensor(theta, task.param_shape, task.name)
    inner_lr = validation.finite_float("inner_lr", inner_lr)
    n_samples = validation.positive_int("n_samples", n_samples)
    n_inner = validation.positive_int("n_inner", n_inner)
    n_steps = validation.positive_int("n_steps", n_steps)
    n_outer = validation.optional_positive_int("n_outer", n_outer)
    itemsize = theta.element_size()
    steps_note = "" if n_steps == 1 else f", K={n_steps} steps"
    if task.has_model:
        name, options, n_outer = "loo", {}, None
        method = f"mean of {n_samples} loo estimates (exact outer), N={n_inner}{steps_note}"
    elif n_outer is None:
        raise UnsupportedError(
            f"task {task.name!r} has no model: an estimated truth samples the outer step, "
            f"so it needs n_outer=M")
    else:
        name = "unbiased"
    # chunks sized by what a sample weighs (trajectories, rows, graphs), never by the machine
    default_chunk, per_sample_bytes = resources.truth_chunk(task, n_inner * n_steps, n_outer,
                                                            theta.dtype)
    chunk = default_chunk if chunk is None else validation.positive_int("chunk", chunk)
    resources.check_memory(
        n_samples * theta.numel() * itemsize + min(chunk, n_samples) * per_sample_bytes,
        f"estimate_meta_gradient(n_samples={n_samples}, n_inner={n_inner}) on {task.name}",
        "lower n_samples or n_inner, or raise the limit (max_memory= / --max-memory)")
    if not task.has_model:
        baseline = pilot_return(task, theta, generator)
        options = {"baseline": baseline}
        method = (f"mean of {n_samples} unbiased estimates, N={n_inner}, M={n_outer}"
                  f"{steps_note}, baseline {baseline:.6g} from {pilot_trajectories(task)} "
                  f"pilot trajectories per task")
    if n_steps > 1:
        options = {**options, "n_steps": n_steps}
    if check_wrt(wrt, inner_lr) != "theta":
        options = {**options, "wrt": wrt}
    fn = estimator_spec(name).fn
    advance, bar = as_advance(progress, n_samples, f"truth N={n_inner}", "sample")
    parts = []
    try:
        for start in range(0, n_samples, chunk):
            size = min(chunk, n_samples - start)
            parts.append(fn(task, theta, n_inner=n_inner, inner_lr=inner_lr, n_trials=size,
                            n_outer=n_outer, generator=generator, **options))
            advance(size)
    finally:
        if bar is not None:
            bar.close()
    return EstimatedGradient(torch.cat(parts), method)


def pilot_trajectories(task: Any) -> int:
    """Trajectories per task of :func:`pilot_return`: ``PILOT_TRAJECTORIES``, or fewer where
    the task says a trajectory is dear (``task.pilot_trajectories``)."""
    return int(getattr(task, "pilot_trajectories", PILOT_TRAJECTORIES))


def pilot_return(task: Any, theta: torch.Tensor, generator: torch.Generator | None) -> float:
    """Mean discounted return at theta over ``pilot_trajectories(task)`` trajectories per
    task of the distribution (the constant baseline of an estimated truth: any constant
    keeps it unbiased, a closer one only narrows it)."""
    task_index = torch.arange(task.n_tasks, device=theta.device)
    rows = theta.detach().expand(task.n_tasks, *theta.shape)
    traj = task.sample(rows, pilot_trajectories(task), task_index, generator)
    return float(discounted_return(traj.rewards, task.gamma).mean())


@dataclass(frozen=True)
class ExactMoments:
    """Exact mean (*P), covariance (D, D) and mean per-estimate cosine to a truth."""

    mean: torch.Tensor
    covariance: torch.Tensor
    mean_cosine: float


def supports_exact_moments(task: Any, spec: EstimatorSpec, n_inner: int,
                           n_outer: int | None, options: dict[str, Any] | None = None,
                           n_steps: int = 1) -> bool:
    return (n_outer is None and spec.from_samples is not None
            and spec.is_count_determined(options) and enumerable(task, n_inner, n_steps))


def exact_moments(task: Any, theta: torch.Tensor, spec: EstimatorSpec, *, n_inner: int,
                  inner_lr: float, truth: torch.Tensor, n_steps: int = 1,
                  **options: Any) -> ExactMoments:
    """Exact moments of a count-determined estimator over the enumerated inner samples.

    For each task k of the distribution: mean_k = sum_n p(n) e_k(n), cov_k likewise; a trial
    averages independent per-task estimates, so mean = mean_k mean_k and
    cov = sum_k cov_k / n_tasks**2. Zero Monte Carlo error. K = ``n_steps`` inner steps: the
    sum runs over every sequence of K outcomes (C**K of them), each weighted by
    prod_k p_{theta_k}(n_k) at the estimator's own adapted parameters theta_k.
    """
    n_steps = validation.positive_int("n_steps", n_steps)
    window = check_truncate(options.pop("truncate", None), n_steps)
    wrt = check_wrt(options.pop("wrt", "theta"), inner_lr)
    if spec.from_samples is not None and not spec.is_count_determined(options):
        raise UnsupportedError(
            f"estimator {spec.name!r} with options {options} is random beyond its inner "
            f"samples (e.g. a noisy critic or perturbations), so its moments are not a sum "
            f"over the enumerated samples: use Monte Carlo moments (evaluate(exact=False))")
    if not supports_exact_moments(task, spec, n_inner, None, options, n_steps):
        raise UnsupportedError(f"exact moments need an enumerable task (bandit-v0) and a "
                               f"count-determined estimator with exact outer; got "
                               f"{task.name!r} and {spec.name!r}"
                               + (f" with {enumeration_size(task, n_inner, n_steps):,} "
                                  f"outcomes over {n_steps} steps (at most "
                                  f"{MAX_ENUMERATION:,})" if n_steps > 1 else ""))
    dim = truth.numel()
    per_task: dict[int, list[torch.Tensor]] = {}
    cosine_sum = 0.0
    truth_flat = truth.reshape(-1)
    one_step = n_steps == 1 and window == 1 and wrt == "theta"
    outcomes = (_one_step_outcomes if one_step else _multi_step_outcomes)(
        task, theta, spec, n_inner, inner_lr, n_steps, {**options, "truncate": window,
                                                        "wrt": wrt})
    for log_weight, estimates, k in outcomes:
        weight = torch.exp(log_weight)
        estimates = estimates.detach().reshape(-1, dim)
        sums = per_task.setdefault(k, [theta.new_zeros(()), theta.new_zeros(dim),
                                       theta.new_zeros(dim, dim)])
        sums[0] += weight.sum()
        sums[1] += weight @ estimates
        sums[2] += (estimates * weight.unsqueeze(-1)).T @ estimates
        if task.n_tasks == 1:
            cosine = torch.nn.functional.cosine_similarity(estimates, truth_flat.unsqueeze(0), -1)
            cosine_sum += float(weight @ cosine)
    means, covariances = [], []
    for total, first, second in per_task.values():
        mean = first / total
        means.append(mean)
        covariances.append(second / total - torch.outer(mean, mean))
    n_tasks = len(means)
    mean = torch.stack(means).mean(0)
    covariance = torch.stack(covariances).sum(0) / n_tasks ** 2
    # per-estimate cosine of a multi-task average needs the joint law of all tasks' counts:
    # report it only where one task makes it a single sum
    mean_cosine = cosine_sum if n_tasks == 1 else float("nan")
    return ExactMoments(mean.reshape(truth.shape), covariance, mean_cosine)


def _one_step_outcomes(task: Any, theta: torch.Tensor, spec: EstimatorSpec, n_inner: int,
                       inner_lr: float, n_steps: int, options: dict[str, Any]
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    options = {k: v for k, v in options.items() if k not in ("truncate", "wrt")}  # defaults
    for log_weight, inner in task.enumerate_inner(theta, n_inner):
        yield log_weight, spec.from_samples(task, theta, inner, inner_lr=inner_lr, outer=None,
                                            **options), int(inner.task_index[0])


def _multi_step_outcomes(task: Any, theta: torch.Tensor, spec: EstimatorSpec, n_inner: int,
                         inner_lr: float, n_steps: int, options: dict[str, Any]
                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(log-probability, estimate, task) of every sequence of K enumerated outcomes.

    One step's outcomes are enumerated once, at theta. An outcome's log-probability at
    another point theta_k is its log-probability at theta plus the change of its policy
    log-probability, sum (log pi_{theta_k} - log pi_theta) over its steps: the environment's
    part and the multiplicity of a multiset of trajectories do not depend on the policy.
    """
    by_task: dict[int, list[tuple[torch.Tensor, Trajectories]]] = {}
    for log_weight, inner in task.enumerate_inner(theta, n_inner):
        by_task.setdefault(int(inner.task_index[0]), []).append((log_weight, inner))
    chunk = getattr(task, "enumeration_chunk", 4096)
    for k, parts in by_task.items():
        base_log_weight = torch.cat([w for w, _ in parts])
        outcomes = _concatenate([t for _, t in parts])
        n_outcomes = base_log_weight.shape[0]
        base_log_prob = task.log_prob(theta.detach().expand(n_outcomes, *theta.shape),
                                      outcomes).sum((1, 2))
        total = n_outcomes ** n_steps
        for lo in range(0, total, chunk):
            flat = torch.arange(lo, min(lo + chunk, total), device=theta.device)
            picks = [flat // n_outcomes ** (n_steps - 1 - j) % n_outcomes for j in range(n_steps)]
            steps = [outcomes.rows(pick) for pick in picks]
            wrt = options.get("wrt", "theta")
            run = multi_step(spec.from_samples, task, theta, steps, inner_lr=inner_lr,
                             **{k: v for k, v in options.items() if k != "wrt"})
            log_weight = sum(base_log_weight[pick] - base_log_prob[pick]
                             + task.log_prob(point, traj).sum((1, 2)).detach()
                             for pick, point, traj in zip(picks, run.points, steps))
            yield log_weight, with_respect_to(wrt, run.estimate, run.inner_lr_grad), k


def _concatenate(parts: list[Trajectories]) -> Trajectories:
    """The rows of several Trajectories in one; an optional field (None) stays None."""
    def joined(name: str) -> torch.Tensor | None:
        values = [getattr(t, name) for t in parts]
        return None if all(v is None for v in values) else torch.cat(values)

    return Trajectories(**{f.name: joined(f.name) for f in fields(Trajectories)})
