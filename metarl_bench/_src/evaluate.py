"""Statistical comparison of estimators on one task over a grid of N.

``evaluate`` runs every (estimator, N) cell with its own seed derived from (seed, name, N),
so adding an estimator or an N never changes the numbers of the others. Results are JSON
lines (schema below); with ``jsonl=`` each record is written and flushed as soon as its cell
finishes, so an interrupted run keeps every finished cell.

Schema (``SCHEMA_VERSION``): a ``{"type": "header", ...}`` line with the configuration, one
``{"type": "record", ...}`` line per cell, then ``{"type": "slope", ...}`` lines.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from metarl_bench._src import validation
from metarl_bench._src.errors import ParameterError, UnsupportedError
from metarl_bench._src.estimator_entries import Entry, resolve_all
from metarl_bench._src.registry import EstimatorSpec, estimator_spec
from metarl_bench._src.stats import MIN_SLOPE_POINTS, fit_log_log, summarize, summarize_exact
from metarl_bench._src.tasks import Task
from metarl_bench._src.truth import (estimate_meta_gradient, exact_finite_truth, exact_moments,
                                     meta_gradient, supports_exact_moments)

SCHEMA_VERSION = 1
SLOPE_METRICS = ("bias", "variance", "mse")


def plain(value: Any) -> Any:
    """JSON-ready copy: NaN and infinities become None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def cell_seed(seed: int, *parts: Any) -> int:
    """A seed for one cell, stable across runs, machines and the other cells of a grid."""
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode())


@dataclass
class Result:
    """What ``evaluate`` returns: ``records`` (one dict per cell), ``slopes``, ``config``."""

    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    slopes: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[dict[str, Any]]:
        return ([{"type": "header", "schema_version": SCHEMA_VERSION, **self.config}]
                + [{"type": "record", **r} for r in self.records]
                + [{"type": "slope", **s} for s in self.slopes])

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the result as JSON lines (see the module docstring for the schema)."""
        with open(path, "w") as handle:
            for line in self.lines():
                handle.write(json.dumps(plain(line), allow_nan=False) + "\n")

    def table(self) -> str:
        from metarl_bench._src.report import format_result
        return format_result(self)


def load_results(path: str | os.PathLike) -> list[Result]:
    """Read JSON lines written by ``Result.to_json`` or ``evaluate(jsonl=...)``.

    A file may hold several results (one header each); a file cut short by a crash keeps
    every complete line.
    """
    results: list[Result] = []
    with open(path) as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                if not text.endswith("\n"):  # the last line, cut short by a crash
                    break
                raise ParameterError(f"{path}:{number}: not a JSON line") from None
            kind = line.pop("type", None)
            if kind == "header":
                version = line.pop("schema_version", None)
                if version != SCHEMA_VERSION:
                    raise ParameterError(f"{path}: schema_version {version!r}, this version of "
                                         f"metarl_bench reads {SCHEMA_VERSION}")
                results.append(Result(config=line))
            elif not results:
                raise ParameterError(f"{path}:{number}: a {kind!r} line before any header")
            elif kind == "record":
                results[-1].records.append(line)
            elif kind == "slope":
                results[-1].slopes.append(line)
    return results


def fit_slopes(records: Sequence[dict[str, Any]], *, eps: float = torch.finfo(torch.float64).eps
               ) -> list[dict[str, Any]]:
    """Log-log slopes of bias, variance and MSE against N, per (task, estimator).

    Only values that mean something enter a fit: finite, above the floating-point floor
    (1e4 machine epsilons of the truth's norm, squared for variance and MSE: an exactly
    unbiased estimator's enumerated bias sits there), and for the bias, distinguishable from
    zero (its interval excludes 0). With fewer than 3 such values no slope is given, and
    ``reason`` says why.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["task"], record["estimator"]), []).append(record)
    slopes = []
    for (task, name), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["n_inner"])
        for metric in SLOPE_METRICS:
            xs, ys = [], []
            for r in rows:
                floor = 1e4 * eps * (r.get("truth_norm") or 0.0)
                floor = floor ** 2 if metric != "bias" else floor
                value = r.get(metric)
                if value is None or not math.isfinite(value) or value <= floor:
                    continue
                if metric == "bias" and not (r.get("bias_ci") or [0.0])[0] > 0:
                    continue
                xs.append(r["n_inner"])
                ys.append(value)
            fit = fit_log_log(xs, ys)
            reason = None if math.isfinite(fit.slope) else (
                f"{len(ys)} of {len(rows)} values above noise; a slope needs "
                f"{MIN_SLOPE_POINTS} at distinct N")
            slopes.append(plain(dict(task=task, estimator=name, metric=metric, slope=fit.slope,
                                     stderr=fit.stderr, n_points=fit.n_points, reason=reason)))
    return slopes


def _n_inner_grid(n_inner: int | Iterable[int]) -> list[int]:
    values = [n_inner] if isinstance(n_inner, int) else list(n_inner)
    if not values:
        raise ParameterError("n_inner must list at least one value")
    return [validation.positive_int("n_inner", n) for n in values]


def evaluate(task: Task,
             estimators: Sequence[str | EstimatorSpec] = ("unbiased", "lsf", "maml", "fomaml"), *,
             n_inner: int | Iterable[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
             n_trials: int = 1000, inner_lr: float = 1.0, n_outer: int | None = None,
             seed: int = 0, truth: str = "finite", theta: torch.Tensor | None = None,
             exact: bool = True, truth_samples: int = 20_000, n_boot: int = 200,
             dtype: torch.dtype = torch.float64, device: str | torch.device | None = None,
             options: dict[str, dict[str, Any]] | None = None, n_steps: int = 1,
             jsonl: str | os.PathLike | None = None,
             progress: Callable[[dict[str, Any]], None] | None = None) -> Result:
    """Bias, variance, MSE and cosine of each estimator against the truth, for each N.

    ``truth``: ``"finite"`` (grad F_N: exact on bandits, else the mean of ``truth_samples``
    leave-one-out estimates, reported as estimated with its error in the intervals) or
    ``"limit"`` (grad F_inf, exact). ``exact``: use the exact enumerated moments where the task
    and estimator allow it (bandit, exact outer), Monte Carlo over ``n_trials`` otherwise;
    each record says which (``moments``). ``options``: per-estimator keyword options, e.g.
    ``{"unbiased": {"baseline": 0.5}}``; an entry of ``estimators`` may also carry its own
    (``"unbiased:baseline=0.5"``, see ``estimator_entries``) or be an :class:`EstimatorSpec`
    such as ``decomposed(...)``. ``n_steps``: K inner steps for every estimator and the
    truth (an estimator that cannot take them raises :class:`UnsupportedError`). ``jsonl``:
    append the header and then each record to this file as soon as it is finished (flushed
    to disk), so an interruption loses nothing that was done.
    """
    if not isinstance(task, Task):
        raise ParameterError(f"task must be a metarl_bench task (see make_task), got "
                             f"{type(task).__name__}")
    if isinstance(estimators, (str, EstimatorSpec)):
        estimators = [estimators]
    for name in options or {}:
        estimator_spec(name.partition(":")[0])
    entries = resolve_all(estimators, options)
    n_steps = validation.positive_int("n_steps", n_steps)
    for entry in entries:
        if n_steps > 1 and "n_steps" not in _keywords(entry.spec.fn):
            raise UnsupportedError(f"estimator {entry.label!r} takes one inner step only "
                                   f"(it has no n_steps keyword); use n_steps=1")
    grid = _n_inner_grid(n_inner)
    n_trials = validation.positive_int("n_trials", n_trials, minimum=2)
    inner_lr = validation.finite_float("inner_lr", inner_lr)
    n_outer = validation.optional_positive_int("n_outer", n_outer)
    truth_samples = validation.positive_int("truth_samples", truth_samples, minimum=2)
    seed = validation.positive_int("seed", seed, minimum=0)
    n_boot = validation.positive_int("n_boot", n_boot, minimum=10)
    if truth not in ("finite", "limit"):
        raise ParameterError(f"truth must be 'finite' or 'limit', got {truth!r}")
    if not task.has_model:
        raise UnsupportedError(f"task {task.name!r} has no model, so no ground truth to compare "
                               f"against")
    if truth == "finite" and any(e.spec.name == "exact" for e in entries) and not all(
            exact_finite_truth(task, n, n_steps) for n in grid):
        raise UnsupportedError(f"estimator 'exact' with truth='finite' needs an exact "
                               f"enumeration of the inner samples at every N, which "
                               f"{task.name!r} does not have here; use truth='limit'")
    if theta is None:
        theta = task.initial_params(dtype=dtype, device=device)
    else:
        validation.params_tensor(theta, task.param_shape, task.name)
    config = dict(task=task.name, task_params=task.params,
                  estimators=[e.label for e in entries], n_inner=grid, n_steps=n_steps, n_trials=n_trials, inner_lr=inner_lr, n_outer=n_outer, seed=seed,
                  truth=truth, exact=exact, truth_samples=truth_samples,
                  theta=theta.detach().cpu().tolist(), dtype=str(theta.dtype).replace("torch.", ""),
                  device=str(theta.device), torch_version=torch.__version__)
    result = Result(config=config)
    stream = open(jsonl, "a") if jsonl is not None else None
    try:
        if stream is not None:
            _emit(stream, result.lines()[0])
        truth_limit = (meta_gradient(task, theta, inner_lr=inner_lr, n_steps=n_steps)
                       if truth == "limit" else None)
        for n in grid:
            reference, reference_samples, truth_kind = _truth(
                task, theta, n, inner_lr, truth, truth_limit, truth_samples, seed, n_steps)
            for entry in entries:
                record = _cell(task, theta, entry, n, n_trials, inner_lr, n_outer, seed, truth,
                               truth_kind, reference, reference_samples, exact, n_boot, n_steps)
                result.records.append(record)
                if stream is not None:
                    _emit(stream, {"type": "record", **record})
                if progress is not None:
                    progress(record)
        result.slopes = fit_slopes(result.records, eps=torch.finfo(theta.dtype).eps)
        if stream is not None:
            for slope in result.slopes:
                _emit(stream, {"type": "slope", **slope})
    finally:
        if stream is not None:
            stream.close()
    return result


def _emit(stream: Any, line: dict[str, Any]) -> None:
    stream.write(json.dumps(plain(line), allow_nan=False) + "\n")
    stream.flush()
    os.fsync(stream.fileno())


def _keywords(fn: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(fn, follow_wrapped=False).parameters)
    except (TypeError, ValueError):
        return set()


def _truth(task: Task, theta: torch.Tensor, n: int, inner_lr: float, truth: str,
           truth_limit: torch.Tensor | None, truth_samples: int, seed: int, n_steps: int
           ) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    if truth == "limit":
        return truth_limit, None, "exact"
    if exact_finite_truth(task, n, n_steps):
        return (meta_gradient(task, theta, inner_lr=inner_lr, n_inner=n, n_steps=n_steps), None,
                "exact")
    # the one-step seed is kept as it was, so one-step results do not change
    generator = torch.Generator(device=theta.device).manual_seed(
        cell_seed(seed, "truth", n) if n_steps == 1 else cell_seed(seed, "truth", n, n_steps))
    estimate = estimate_meta_gradient(task, theta, n_inner=n, inner_lr=inner_lr,
                                      n_samples=truth_samples, generator=generator,
                                      n_steps=n_steps)
    return estimate.mean, estimate.samples, "estimated"


def _cell(task: Task, theta: torch.Tensor, entry: Entry, n: int, n_trials: int, inner_lr: float,
          n_outer: int | None, seed: int, truth: str, truth_kind: str, reference: torch.Tensor,
          reference_samples: torch.Tensor | None, exact: bool, n_boot: int,
          n_steps: int) -> dict[str, Any]:
    spec, options, label = entry.spec, entry.options, entry.label
    if spec.name == "exact":
        options = {"truth": truth, **options}
    call_options = dict(options, n_steps=n_steps) if n_steps > 1 else options
    # a tiny warm-up call first, so that one-time costs (lazy imports, first-use kernels)
    # do not land in the timing of whichever cell happens to run first
    spec.fn(task, theta, n_inner=n, inner_lr=inner_lr, n_trials=1, n_outer=n_outer,
            generator=torch.Generator(device=theta.device).manual_seed(0), **call_options)
    generator = torch.Generator(device=theta.device).manual_seed(
        cell_seed(seed, label, n) if n_steps == 1 else cell_seed(seed, label, n, n_steps))
    extra = getattr(spec.fn, "extra_trajectories", lambda n_inner: 0)(n)
    trajectories = task.n_tasks * (n * n_steps + extra + (n_outer or 0))
    # large cells in chunks of about 2**20 trajectories, so memory stays bounded; the chunk
    # depends on N alone and the generator runs on, so results do not depend on the machine
    per_chunk = max(1, 2 ** 20 // trajectories)
    start = time.perf_counter()
    estimates = torch.cat([
        spec.fn(task, theta, n_inner=n, inner_lr=inner_lr, n_trials=min(per_chunk, n_trials - lo),
                n_outer=n_outer, generator=generator, **call_options)
        for lo in range(0, n_trials, per_chunk)])
    if theta.device.type == "cuda":
        torch.cuda.synchronize(theta.device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(estimates).all():
        raise UnsupportedError(f"estimator {label!r} returned non-finite estimates at "
                               f"N={n}; lower inner_lr or check the estimator")
    if exact and supports_exact_moments(task, spec, n, n_outer, n_steps):
        moments = exact_moments(task, theta, spec, n_inner=n, inner_lr=inner_lr,
                                truth=reference, n_steps=n_steps, **options)
        stats = summarize_exact(moments.mean, moments.covariance, reference, moments.mean_cosine)
        kind = "exact"
    else:
        stats = summarize(estimates, reference, reference_samples, n_boot=n_boot,
                          seed=cell_seed(seed, "bootstrap", label, n))
        kind = "monte-carlo"
    return plain(dict(task=task.name, estimator=label, n_inner=n, n_outer=n_outer,
                n_steps=n_steps, inner_lr=inner_lr, n_trials=n_trials, truth=truth,
                truth_kind=truth_kind, moments=kind, **stats, truth_norm=float(reference.norm()),
                trajectories=trajectories,
                mse_x_trajectories=stats["mse"] * trajectories, seconds=seconds,
                options=options))
