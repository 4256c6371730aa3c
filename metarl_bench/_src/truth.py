"""Ground truth: exact meta-gradients, estimated finite-N references, exact moments.

grad F_inf by nested autodiff through the exact model; grad F_N by enumerating pull counts
(bandits); otherwise grad F_N estimated as the mean of many exactly unbiased estimates
(leave-one-out with the exact model; score-function with sampled outer steps on tasks
without a model), reported with its standard error and the method that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from metarl_bench._src import resources, validation
from metarl_bench._src.errors import UnsupportedError
from metarl_bench._src.progress import as_advance
from metarl_bench._src.registry import EstimatorSpec, estimator_spec
from metarl_bench._src.trajectories import discounted_return


#: The most outcomes an exact enumeration may list (a bandit with K arms and N samples has
#: C(N+K-1, K-1): 33,153 for K=3, N=256; 9.7e10 for K=10, N=64, where estimates take over).
MAX_ENUMERATION = 1_000_000


def enumerable(task: Any, n_inner: int) -> bool:
    """Whether the inner samples of ``task`` at N = ``n_inner`` can be enumerated exactly."""
    size = task.enumeration_size(n_inner)
    return size is not None and size <= MAX_ENUMERATION


def _check(task: Any, theta: torch.Tensor, inner_lr: Any) -> float:
    validation.params_tensor(theta, task.param_shape, task.name)
    if not task.has_model:
        raise UnsupportedError(f"task {task.name!r} has no model: its exact meta-gradient is "
                               f"unknown; estimate a reference with a large sample instead")
    return validation.finite_float("inner_lr", inner_lr)


def meta_gradient(task: Any, theta: torch.Tensor, *, inner_lr: float,
                  n_inner: int | None = None) -> torch.Tensor:
    """Exact meta-gradient: grad F_inf (``n_inner=None``) or grad F_N (``n_inner=N``).

    grad F_inf = E_task (I + eta grad^2 V(theta)) grad V(theta + eta grad V(theta)), by nested
    autodiff through the exact value. grad F_N needs an exact enumeration of the inner
    samples (bandit-v0); other tasks raise :class:`UnsupportedError`.
    Result: shape theta.shape, theta's dtype and device.
    """
    inner_lr = _check(task, theta, inner_lr)
    point = theta.detach().requires_grad_()
    if n_inner is None:
        task_index = torch.arange(task.n_tasks, device=theta.device)
        rows = point.unsqueeze(0).expand(task.n_tasks, *theta.shape)
        (grad,) = torch.autograd.grad(task.value(rows, task_index).sum(), rows, create_graph=True)
        objective = task.value(rows + inner_lr * grad, task_index).mean()
    else:
        n_inner = validation.positive_int("n_inner", n_inner)
        if not enumerable(task, n_inner):
            size = task.enumeration_size(n_inner)
            why = (f"which {task.name!r} does not have (bandit-v0 does)" if size is None else
                   f"here of {size:,} outcomes, more than the {MAX_ENUMERATION:,} allowed")
            raise UnsupportedError(
                f"the exact finite-N meta-gradient needs an enumeration of the inner samples, "
                f"{why}; use n_inner=None for grad F_inf, or estimate_meta_gradient(...) for "
                f"an estimated grad F_N")
        objective = task.finite_meta_objective(point, n_inner, inner_lr)
    (grad,) = torch.autograd.grad(objective, point)
    return grad


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
                           progress: bool | Callable[[int], None] | None = None
                           ) -> EstimatedGradient:
    """grad F_N estimated as the mean of ``n_samples`` exactly unbiased estimates.

    Tasks with a model: leave-one-out estimates (``loo``: exact outer, O(1/N) variance), in
    chunks of about 2**15 trajectories. Tasks without one: ``unbiased`` score-function
    estimates with ``n_outer`` sampled outer trajectories and a constant baseline b, the mean
    return of a separate pilot batch of 64 trajectories per task at theta (independent of
    every estimate, so each stays exactly unbiased while the score term
    (V(theta') - b) sum_i s_i loses most of its variance), in the chunks of an estimator
    cell. Chunk sizes depend on the configuration alone, never on the machine, so the result
    is the same everywhere. ``progress``: True for a bar on stderr, or a function called
    with the number of samples of each chunk. The result's ``method`` says which estimator,
    N, M and how many samples made it.
    """
    validation.params_tensor(theta, task.param_shape, task.name)
    inner_lr = validation.finite_float("inner_lr", inner_lr)
    n_samples = validation.positive_int("n_samples", n_samples)
    n_inner = validation.positive_int("n_inner", n_inner)
    n_outer = validation.optional_positive_int("n_outer", n_outer)
    itemsize = theta.element_size()
    if task.has_model:
        name, options, n_outer = "loo", {}, None
        default_chunk = max(1, 2 ** 15 // n_inner)
        per_chunk_bytes = task.n_tasks * n_inner * (
            resources.bytes_per_trajectory(task, itemsize)
            + resources.bytes_per_row(task, True, itemsize))
        method = f"mean of {n_samples} loo estimates (exact outer), N={n_inner}"
    else:
        if n_outer is None:
            raise UnsupportedError(
                f"task {task.name!r} has no model: an estimated truth samples the outer step, "
                f"so it needs n_outer=M")
        name = "unbiased"
        default_chunk = resources.chunk_trials(task, n_inner, n_outer, theta.dtype)
        per_chunk_bytes = task.n_tasks * (
            (n_inner + n_outer) * resources.bytes_per_trajectory(task, itemsize)
            + resources.bytes_per_row(task, False, itemsize))
    chunk = default_chunk if chunk is None else validation.positive_int("chunk", chunk)
    resources.check_memory(
        n_samples * theta.numel() * itemsize + min(chunk, n_samples) * per_chunk_bytes,
        f"estimate_meta_gradient(n_samples={n_samples}, n_inner={n_inner}) on {task.name}",
        "lower n_samples or n_inner, or raise the limit (max_memory= / --max-memory)")
    if not task.has_model:
        baseline = pilot_return(task, theta, generator)
        options = {"baseline": baseline}
        method = (f"mean of {n_samples} unbiased estimates, N={n_inner}, M={n_outer}, "
                  f"baseline {baseline:.6g} from {PILOT_TRAJECTORIES} pilot trajectories per "
                  f"task")
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


def pilot_return(task: Any, theta: torch.Tensor, generator: torch.Generator | None) -> float:
    """Mean discounted return at theta over 64 trajectories per task of the distribution."""
    task_index = torch.arange(task.n_tasks, device=theta.device)
    rows = theta.detach().expand(task.n_tasks, *theta.shape)
    traj = task.sample(rows, PILOT_TRAJECTORIES, task_index, generator)
    return float(discounted_return(traj.rewards, task.gamma).mean())


@dataclass(frozen=True)
class ExactMoments:
    """Exact mean (*P), covariance (D, D) and mean per-estimate cosine to a truth."""

    mean: torch.Tensor
    covariance: torch.Tensor
    mean_cosine: float


def supports_exact_moments(task: Any, spec: EstimatorSpec, n_inner: int,
                           n_outer: int | None, options: dict[str, Any] | None = None) -> bool:
    return (n_outer is None and spec.from_samples is not None
            and spec.is_count_determined(options) and enumerable(task, n_inner))


def exact_moments(task: Any, theta: torch.Tensor, spec: EstimatorSpec, *, n_inner: int,
                  inner_lr: float, truth: torch.Tensor, **options: Any) -> ExactMoments:
    """Exact moments of a count-determined estimator over the enumerated inner samples.

    For each task k of the distribution: mean_k = sum_n p(n) e_k(n), cov_k likewise; a trial
    averages independent per-task estimates, so mean = mean_k mean_k and
    cov = sum_k cov_k / n_tasks**2. Zero Monte Carlo error.
    """
    if spec.from_samples is not None and not spec.is_count_determined(options):
        raise UnsupportedError(
            f"estimator {spec.name!r} with options {options} is random beyond its inner "
            f"samples (e.g. a noisy critic or perturbations), so its moments are not a sum "
            f"over the enumerated samples: use Monte Carlo moments (evaluate(exact=False))")
    if not supports_exact_moments(task, spec, n_inner, None, options):
        raise UnsupportedError(f"exact moments need an enumerable task (bandit-v0) and a "
                               f"count-determined estimator with exact outer; got "
                               f"{task.name!r} and {spec.name!r}")
    dim = theta.numel()
    per_task: dict[int, list[torch.Tensor]] = {}
    cosine_sum = 0.0
    truth_flat = truth.reshape(-1)
    for log_weight, inner in task.enumerate_inner(theta, n_inner):
        weight = torch.exp(log_weight)
        estimates = spec.from_samples(task, theta, inner, inner_lr=inner_lr, outer=None,
                                      **options).detach().reshape(-1, dim)
        k = int(inner.task_index[0])
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
    return ExactMoments(mean.reshape(theta.shape), covariance, mean_cosine)
