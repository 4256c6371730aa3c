"""Statistical comparison of estimators on one task over a grid of N.

``evaluate`` runs every (estimator, N) cell with its own seed derived from (seed, name, N),
so adding an estimator or an N never changes the numbers of the others. Each cell is fully
described by its configuration (``evaluation.config.CellConfig``); results go to the results
store (``evaluation.store``), keyed by that configuration, so a re-run resumes where an
earlier one stopped.

A cell is computed by two pure functions of its configuration, :func:`compute_truth` and
:func:`compute_cell`, which is what lets sweeps run cells on other processes and machines
and still agree bit for bit with a serial run.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import torch

from metarl_bench._src.core import resources, validation
from metarl_bench._src.core.errors import ParameterError, ShapeError, UnsupportedError
from metarl_bench._src.core.files import plain
from metarl_bench._src.core.progress import as_advance
from metarl_bench._src.core.registry import (EstimatorSpec, RunDefaults, estimator_spec,
                                             list_estimators, unmatched_arguments)
from metarl_bench._src.core.stats import (METRICS, MIN_SLOPE_POINTS, fit_log_log, summarize,
                                          summarize_exact)
from metarl_bench._src.estimators.common import check_truncate, check_wrt, wrt_shape
from metarl_bench._src.estimators.entries import resolve_all
from metarl_bench._src.estimators.truth import (estimate_meta_gradient, exact_finite_truth,
                                                exact_moments, meta_gradient,
                                                supports_exact_moments)
from metarl_bench._src.evaluation.config import (PER_CELL_FIELDS, CellConfig, cell_key,
                                                 cell_seed)
from metarl_bench._src.evaluation.store import SCHEMA_VERSION, Store, latest, make_line, read_lines
from metarl_bench._src.evaluation.tables import format_result
from metarl_bench._src.tasks import Task

SLOPE_METRICS = ("bias", "variance", "mse")
#: The grid of N ``evaluate`` runs unless told otherwise: ``run``'s default grid.
DEFAULT_N_INNER = RunDefaults.n_inner
#: Metrics adaptive trials can target: their interval narrows like 1/sqrt(trials).
TARGET_METRICS = ("mse", "variance", "bias")
#: The default cap on adaptive trials, as a multiple of the first batch: 16 times the
#: trials narrow an interval about 4 times.
ADAPTIVE_CAP_FACTOR = 16
#: Least growth of the trials from one adaptive round to the next, so that rounds are few.
ADAPTIVE_MIN_GROWTH = 1.5
__all__ = ["SCHEMA_VERSION", "CellConfig", "Result", "cell_seed", "compute_cell",
           "compute_truth", "evaluate", "fit_slopes", "load_results", "plain"]


@dataclass
class Result:
    """What ``evaluate`` returns: ``records`` (one dict per cell), ``slopes``, ``config``.

    A record is the cell's configuration and its statistics in one flat dict, plus its store
    ``key``. ``slopes`` are fitted from the records, never stored. ``lines``: the records as
    results-store lines.
    """

    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    slopes: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_json(self, path: str | os.PathLike, *, force: bool = False) -> int:
        """Append this result's cells to the results store at ``path``; returns how many.

        Cells already in the file are skipped (``force=True`` appends them again: the
        latest line wins on reading). Nothing in the file is ever overwritten.
        """
        store = Store(path, option="path")
        todo = [line for line in self.lines if force or line["key"] not in store]
        for line in todo:
            store.append(line)
        return len(todo)

    @property
    def settings(self) -> CellConfig:
        """The configuration the cells of this result share, typed (estimator, options and
        N, which differ from cell to cell, are the first cell's)."""
        return CellConfig.from_dict(self.lines[0]["config"] if self.lines else self.records[0])

    def table(self) -> str:
        return format_result(self)


def record_of(line: dict[str, Any]) -> dict[str, Any]:
    return {**line["config"], **line["result"], "key": line["key"]}


def group_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in PER_CELL_FIELDS}


def results_of(lines: Iterable[dict[str, Any]]) -> list[Result]:
    """Lines grouped into results (one per shared configuration), in first-seen order."""
    groups: dict[str, Result] = {}
    for line in lines:
        shared = group_config(line["config"])
        result = groups.setdefault(cell_key(shared), Result(config={
            **shared, "estimators": [], "n_inner": []}))
        record = record_of(line)
        result.records.append(record)
        result.lines.append(line)
        if record["estimator"] not in result.config["estimators"]:
            result.config["estimators"].append(record["estimator"])
        if record["n_inner"] not in result.config["n_inner"]:
            result.config["n_inner"].append(record["n_inner"])
    for result in groups.values():
        result.config["n_inner"].sort()
        result.slopes = fit_slopes(result.records,
                                   eps=torch.finfo(getattr(torch, result.config["dtype"])).eps)
    return list(groups.values())


def load_results(path: str | os.PathLike) -> list[Result]:
    """Read a results store: one :class:`Result` per shared configuration.

    A key written more than once counts once, with its latest line; a torn last line (a
    crash in the middle of a write) is ignored; anything else that is not a results line
    raises :class:`ResultsFileError` naming the line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ParameterError(f"no results file {path!r}")
    return results_of(latest(read_lines(path)).values())


def fit_slopes(records: Sequence[dict[str, Any]], *, eps: float = torch.finfo(torch.float64).eps
               ) -> list[dict[str, Any]]:
    """Log-log slopes of bias, variance and MSE against N, per (task, estimator, options).

    Only values that mean something enter a fit: finite, above the floating-point floor
    (1e4 machine epsilons of the truth's norm, squared for variance and MSE: an exactly
    unbiased estimator's enumerated bias sits there), and for the bias, distinguishable from
    zero (its interval excludes 0). With fewer than 3 such values no slope is given, and
    ``reason`` says why.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        options = json.dumps(record.get("options") or {}, sort_keys=True)
        groups.setdefault((record["task"], record["estimator"], options), []).append(record)
    slopes = []
    for (task, name, options), rows in groups.items():
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
            slopes.append(plain(dict(task=task, estimator=name, options=json.loads(options),
                                     metric=metric, slope=fit.slope, stderr=fit.stderr,
                                     n_points=fit.n_points, reason=reason)))
    return slopes


def _n_inner_grid(n_inner: int | Iterable[int]) -> list[int]:
    values = [n_inner] if isinstance(n_inner, int) else list(n_inner)
    if not values:
        raise ParameterError("n_inner must list at least one value")
    return [validation.positive_int("n_inner", n) for n in values]


@dataclass(frozen=True)
class Plan:
    """A checked evaluation: the task, theta and every cell's configuration, by N."""

    task: Task
    theta: torch.Tensor
    cells: dict[int, list[CellConfig]]

    @property
    def configs(self) -> list[CellConfig]:
        return [config for row in self.cells.values() for config in row]


def plan(task: Task, estimators: Sequence[str | EstimatorSpec] | str | EstimatorSpec, *,
         n_inner: int | Iterable[int], n_trials: int = CellConfig.n_trials,
         inner_lr: float = CellConfig.inner_lr, n_outer: int | None = None,
         seed: int = CellConfig.seed, truth: str = CellConfig.truth,
         theta: torch.Tensor | None = None, exact: bool = CellConfig.exact,
         truth_samples: int = CellConfig.truth_samples, n_boot: int = CellConfig.n_boot,
         dtype: torch.dtype = torch.float64, device: Any = None,
         options: dict[str, dict[str, Any]] | None = None, n_steps: int = CellConfig.n_steps,
         target_rel_ci: float | None = None, max_trials: int | None = None,
         target_metric: str = CellConfig.target_metric, wrt: str = CellConfig.wrt) -> Plan:
    """Check every argument and list the cells; allocates nothing large, writes nothing.

    ``estimators``: names, entries with options (``"unbiased:baseline=0.5"``, see
    ``estimators.entries``) or specs such as ``decomposed(...)``. The other arguments are
    ``evaluate``'s; the defaults are :class:`CellConfig`'s."""
    if not isinstance(task, Task):
        raise ParameterError(f"task must be a metarl_bench task (see make_task), got "
                             f"{type(task).__name__}")
    if isinstance(estimators, (str, EstimatorSpec)):
        estimators = [estimators]
    estimators = list(estimators)
    if not estimators:
        raise ParameterError("estimators must name at least one estimator")
    for name, given in (options or {}).items():
        estimator_spec(name)
        if not isinstance(given, dict):
            raise ParameterError(f"options[{name!r}] must be a dict of keyword options, got "
                                 f"{type(given).__name__}")
    entries = resolve_all(estimators, options)
    if not task.has_model:  # first: no other setting could make such an estimator run
        check_model_free(task, entries)
    n_steps = validation.positive_int("n_steps", n_steps)
    for entry in entries:
        if n_steps > 1 and "n_steps" not in _keywords(entry.spec.fn):
            raise UnsupportedError(f"estimator {entry.label!r} takes one inner step only "
                                   f"(it has no n_steps keyword); use n_steps=1")
        if "truncate" in entry.options:  # checked against K before anything runs
            check_truncate(entry.options["truncate"], n_steps)
    wrt = check_wrt(wrt, validation.finite_float("inner_lr", inner_lr))
    for entry in entries:
        if wrt != "theta" and "wrt" not in entry.spec.options:
            raise UnsupportedError(f"estimator {entry.label!r} has no meta-gradient of the "
                                   f"inner step size (no wrt keyword); use wrt='theta'")
    grid = _n_inner_grid(n_inner)
    n_trials = validation.positive_int("n_trials", n_trials, minimum=2)
    inner_lr = validation.finite_float("inner_lr", inner_lr)
    n_outer = validation.optional_positive_int("n_outer", n_outer)
    truth_samples = validation.positive_int("truth_samples", truth_samples, minimum=2)
    seed = validation.positive_int("seed", seed, minimum=0)
    n_boot = validation.positive_int("n_boot", n_boot, minimum=10)
    target_rel_ci, max_trials, target_metric = check_adaptive(target_rel_ci, max_trials,
                                                              target_metric, n_trials)
    if truth not in ("finite", "limit"):
        raise ParameterError(f"truth must be 'finite' or 'limit', got {truth!r}")
    if not isinstance(exact, bool):
        raise ParameterError(f"exact must be True or False, got {exact!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ParameterError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if not task.has_model and n_outer is None:
        raise UnsupportedError(f"task {task.name!r} has no model: the estimators and the "
                               f"estimated truth sample the outer step, so pass n_outer=M")
    if not task.has_model and truth == "limit":
        raise UnsupportedError(f"task {task.name!r} has no model, so grad F_inf is unknown; "
                               f"use truth='finite' (estimated from samples)")
    if truth == "finite" and any(e.spec.name == "exact" for e in entries) and not all(
            exact_finite_truth(task, n, n_steps) for n in grid):
        raise UnsupportedError(f"estimator 'exact' with truth='finite' needs an exact "
                               f"enumeration of the inner samples at every N, which "
                               f"{task.name!r} does not have here; use truth='limit'")
    if theta is None:
        device = validation.check_device(device)
        theta_config = None
        theta = task.initial_params(dtype=dtype, device=device)
    else:
        validation.params_tensor(theta, task.param_shape, task.name)
        validation.check_device(theta.device)
        theta_config = theta.detach().cpu().tolist()
    cells = {n: [CellConfig(task=task.name, task_params=plain(task.params), theta=theta_config,
                            estimator=entry.spec.name, options=plain(entry.options), n_inner=n,
                            n_outer=n_outer, inner_lr=inner_lr, n_trials=n_trials, seed=seed,
                            truth=truth, truth_samples=truth_samples, exact=exact,
                            n_boot=n_boot, dtype=str(theta.dtype).replace("torch.", ""),
                            device=str(theta.device), n_steps=n_steps,
                            target_rel_ci=target_rel_ci, target_metric=target_metric,
                            max_trials=max_trials, wrt=wrt)
                 for entry in entries] for n in grid}
    return Plan(task, theta, cells)


def check_model_free(task: Task, entries: Sequence[Any]) -> None:
    """Refuse, first, an estimator that needs a model on a task without one: no other
    setting (truth, n_outer, memory) could make it run."""
    needing = [entry.label for entry in entries if entry.spec.needs_model]
    if needing:
        usable = [name for name in list_estimators() if not estimator_spec(name).needs_model]
        raise UnsupportedError(
            f"{' and '.join(map(repr, needing))} need{'s' if len(needing) == 1 else ''} a "
            f"model (the exact value of the task), which {task.name!r} does not have; "
            f"estimators that sample the outer step: {', '.join(usable)}")


def check_adaptive(target_rel_ci: Any, max_trials: Any, target_metric: Any, n_trials: int
                   ) -> tuple[float | None, int | None, str]:
    """The adaptive-trials settings, checked; ``max_trials`` defaults to
    ``ADAPTIVE_CAP_FACTOR * n_trials``."""
    if target_rel_ci is None:
        if max_trials is not None:
            raise ParameterError("max_trials (--max-trials) caps adaptive trials: it needs "
                                 "target_rel_ci (--target-rel-ci)")
        return None, None, "mse"
    target_rel_ci = validation.finite_float("target_rel_ci", target_rel_ci, positive=True)
    if target_metric not in TARGET_METRICS:
        raise ParameterError(f"target_metric must be one of {', '.join(TARGET_METRICS)}, got "
                             f"{target_metric!r}")
    if max_trials is None:
        max_trials = ADAPTIVE_CAP_FACTOR * n_trials
    max_trials = validation.positive_int("max_trials", max_trials)
    if max_trials < n_trials:
        raise ParameterError(f"max_trials ({max_trials}) must be at least n_trials "
                             f"({n_trials}), the first batch of adaptive trials")
    return target_rel_ci, max_trials, target_metric


def _keywords(fn: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(fn, follow_wrapped=False).parameters)
    except (TypeError, ValueError):
        return set()


def estimated_truth(task: Task, config: CellConfig) -> bool:
    return config.truth == "finite" and not exact_finite_truth(task, config.n_inner,
                                                               config.n_steps)


def exact_statistics(task: Task, config: CellConfig) -> bool:
    """Whether the cell's statistics come from exact enumerated moments (else Monte Carlo)."""
    return config.exact and supports_exact_moments(
        task, estimator_spec(config.estimator), config.n_inner, config.n_outer,
        config.call_options, config.n_steps)


def check_resources(task: Task, configs: Sequence[CellConfig],
                    max_work: float | None) -> float:
    """Refuse, before anything is allocated, a cell whose memory or a plan whose total work
    exceeds the limits; returns the planned trajectories (for progress)."""
    steps = 0.0
    trajectories = 0.0
    truths: set[tuple[int, int]] = set()
    for config in configs:
        n_truth = config.truth_samples if estimated_truth(task, config) else None
        # K inner steps hold about K steps' trajectories and graphs at once
        sizes = dict(n_inner=config.inner_per_trial, n_outer=config.n_outer,
                     n_trials=config.planned_trials, truth_samples=n_truth)
        needed, driver = resources.cell_memory(task, **sizes, n_boot=config.n_boot,
                                               dtype=config.torch_dtype,
                                               bootstrap=not exact_statistics(task, config))
        resources.check_memory(
            needed, f"the cell {config.estimator} at N={config.n_inner} on {task.name} "
            f"(n_trials={config.planned_trials}, n_outer={config.n_outer}, "
            f"truth_samples={n_truth})",
            f"raise the limit to at least {resources.size(needed)} (--max-memory SIZE, "
            f"max_memory=); lowering the counts helps {driver}"
            if driver == resources.FLAGS["chunk"] else
            f"lower {driver}, or raise the limit (--max-memory SIZE, max_memory=)")
        steps += resources.cell_work(task, **sizes)
        # the cells at one N share one truth (run_plan), so its trajectories count once
        shared = (config.n_inner, config.n_steps)
        trajectories += _cell_trajectories(task, config, None if shared in truths else n_truth)
        truths.add(shared)
    resources.check_work(steps, max_work, f"this evaluation ({len(configs)} cells)",
                         "lower n_trials / truth_samples / N, or lift the guard "
                         "(--no-work-limit, max_work=None)")
    return trajectories


def trajectories_per_trial(task: Task, config: CellConfig) -> int:
    """Trajectories one estimate of the cell samples, over the tasks of the distribution:
    K inner steps sample N fresh inner trajectories at each of theta_1..theta_{K-1} too."""
    spec = estimator_spec(config.estimator)
    return task.n_tasks * (spec.trajectories_per_task(config.n_inner, config.n_outer,
                                                      config.call_options)
                           + config.inner_per_trial - config.n_inner)


#: Pilot calls of :func:`planned_seconds` at the largest N stop growing before one would
#: take longer than this.
PILOT_SECONDS = 2.0


def planned_seconds(checked: Plan, configs: Sequence[CellConfig],
                    announce: float = math.inf) -> float:
    """About how long the cells ``configs`` of ``checked`` take on this machine, from the
    pace (trajectories per second) of pilot calls: of an estimator, and of the estimated
    truth where there is one. One unit at the smallest N first (cheap; its pace is the
    slowest, so a plan that it already puts below ``announce`` seconds stops there), then at
    the largest N one unit, growing fourfold towards a chunk of its cell while the next call
    (the last one's time, scaled) would take under ``PILOT_SECONDS``: small calls run at a
    far lower throughput than a cell's chunks where a fixed cost per call dominates (a
    K-step bandit's truth: one sample's pace predicted 7.4 h for a run of 3 min). So a pilot
    costs seconds, even before a run of days. An estimate within a few times the
    truth, not a promise (a plan whose single truth sample takes a minute, such as 100 inner
    steps with leave-one-out baselines, pays that minute); pilots draw from their own
    generator, so no result depends on them."""
    if not configs:
        return 0.0
    task, theta = checked.task, checked.theta

    def size(config: CellConfig) -> tuple[int, float]:
        return config.inner_per_trial, _cell_trajectories(task, config, None)

    smallest, largest = min(configs, key=size), max(configs, key=size)
    generator = torch.Generator(device=theta.device).manual_seed(0)

    def estimator(config: CellConfig, count: int) -> None:
        _call_estimator(estimator_spec(config.estimator), task, theta, count,
                        generator=generator, **config.call_keywords())

    def truth(config: CellConfig, count: int) -> None:
        estimate_meta_gradient(task, theta, n_inner=config.n_inner, inner_lr=config.inner_lr,
                               n_samples=count, n_outer=config.n_outer, generator=generator,
                               n_steps=config.n_steps)

    def per_trial(config: CellConfig) -> float:
        return _cell_trajectories(task, replace(config, n_trials=1, max_trials=None), None)

    def per_sample(config: CellConfig) -> float:
        return _cell_trajectories(task, replace(config, n_trials=0, max_trials=0), 1)

    truths = {(c.n_inner, c.n_steps): c.truth_samples * per_sample(c)
              for c in configs if estimated_truth(task, c)}
    n_large = largest.inner_per_trial
    # (call, trajectories to plan, trajectories per unit at the largest N, most units a call)
    pilots = [(estimator, sum(_cell_trajectories(task, c, None) for c in configs),
               per_trial, min(largest.planned_trials, resources.chunk_trials(
                   task, n_large, largest.n_outer, theta.dtype)))]
    if truths:
        pilots.append((truth, sum(truths.values()), per_sample, min(
            largest.truth_samples,
            resources.truth_chunk(task, n_large, largest.n_outer, theta.dtype)[0])))

    def timed(call: Callable[..., None], config: CellConfig, count: int) -> float:
        start = time.perf_counter()
        call(config, count)
        return time.perf_counter() - start

    estimator(smallest, 1)  # one-time costs: lazy imports, first-use kernels, simulators
    paces = [unit(smallest) / max(timed(call, smallest, 1), 1e-9) for call, _, unit, _ in pilots]
    seconds = lambda: sum(planned / pace  # noqa: E731
                          for (_, planned, _, _), pace in zip(pilots, paces))
    if seconds() < announce:
        return seconds()
    for index, (call, _, unit, most) in enumerate(pilots):
        count, last = 0, 0.0
        while count < most:
            grown = min(most, 4 * count) if count else 1
            # the next call's time from the last one's: a fixed cost per call keeps calls
            # short where the pace of one unit would predict long ones, and growing on
            # towards a chunk's size is what finds a vectorised call's real pace
            if count and grown / count * last > PILOT_SECONDS:
                break
            last = timed(call, largest, grown)
            paces[index] = grown * unit(largest) / max(last, 1e-9)
            count = grown
    return seconds()


def _cell_trajectories(task: Task, config: CellConfig, n_truth: int | None) -> float:
    own = config.planned_trials * trajectories_per_trial(task, config)
    # a model-free truth samples the outer step too
    per_truth_sample = task.n_tasks * (config.inner_per_trial + (
        0 if task.has_model else (config.n_outer or 0)))
    return own + (n_truth or 0) * per_truth_sample


def evaluate(task: Task,
             estimators: Sequence[str | EstimatorSpec] = ("unbiased", "lsf", "maml", "fomaml"),
             *,
             n_inner: int | Iterable[int] = DEFAULT_N_INNER,
             n_trials: int = CellConfig.n_trials, inner_lr: float = CellConfig.inner_lr,
             n_outer: int | None = None, seed: int = CellConfig.seed,
             truth: str = CellConfig.truth, theta: torch.Tensor | None = None,
             exact: bool = CellConfig.exact, truth_samples: int = CellConfig.truth_samples,
             n_boot: int = CellConfig.n_boot, dtype: torch.dtype = torch.float64,
             device: str | torch.device | None = None,
             options: dict[str, dict[str, Any]] | None = None,
             n_steps: int = CellConfig.n_steps, target_rel_ci: float | None = None,
             max_trials: int | None = None, target_metric: str = CellConfig.target_metric,
             wrt: str = CellConfig.wrt,
             jsonl: str | os.PathLike | None = None, force: bool = False,
             progress: bool | Callable[[dict[str, Any]], None] | None = None,
             max_memory: int | str | None = None,
             max_work: float | None = resources.DEFAULT_MAX_WORK) -> Result:
    """Bias, variance, MSE and cosine of each estimator against the truth, for each N.

    ``truth``: ``"finite"`` (grad F_N: exact on bandits, else the mean of ``truth_samples``
    exactly unbiased estimates, reported as estimated with its error in the intervals:
    leave-one-out ones on tasks with a model, ``unbiased`` ones with ``n_outer`` sampled outer
    trajectories on tasks without one; each record's ``truth_method`` says which) or
    ``"limit"`` (grad F_inf, exact; tasks with a model). ``exact``: use the exact enumerated
    moments where the task and estimator allow it (bandit, exact outer), Monte Carlo over
    ``n_trials`` otherwise; each record says which (``moments``). ``options``:
    per-estimator keyword options, e.g. ``{"unbiased": {"baseline": 0.5}}``; an entry of
    ``estimators`` may also carry its own (``"unbiased:baseline=0.5"``, see
    ``estimator_entries``) or be a spec such as ``decomposed(...)``. ``n_steps``: K inner
    steps for every estimator and the truth (an estimator that cannot take them raises
    :class:`UnsupportedError`). ``wrt``: the meta-gradient of theta (``"theta"``), of the
    inner step size eta (``"inner_lr"``: dF/d eta, one number) or of both (``"all"``: theta's
    flattened, then eta's), for the estimates and the truth alike.

    ``target_rel_ci``: adaptive trials. Each cell starts with ``n_trials`` estimates and adds
    more, in rounds, until the 95% interval of ``target_metric`` (``"mse"``, ``"variance"``
    or ``"bias"``) is at most ``target_rel_ci`` times the metric (0.1: a width of 10% of
    the value), or ``max_trials`` (default ``16 * n_trials``) is reached; each record says
    how many it used (``n_trials_used``), the width reached (``rel_ci``) and whether the
    target was (``target_reached``). Memory and work are checked for the cap.

    ``jsonl``: a results store (docs/results.md): each cell is appended as soon as it
    is finished, and cells already there are read back instead of recomputed (a resumed
    run); ``force=True`` recomputes and appends them again. ``progress``: True for a bar on
    stderr, or a function called with each finished record. ``max_memory`` (bytes or
    ``"8GiB"``; default half the available memory) and ``max_work`` (trajectory steps; None
    lifts it) refuse, before anything runs, a cell or an evaluation too large for them.
    Every argument is checked before any file is opened.
    """
    if not isinstance(force, bool):
        raise ParameterError(f"force must be True or False, got {force!r}")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise ParameterError(f"progress must be True, False, None or a callable, got "
                             f"{type(progress).__name__}")
    if max_work is not None:
        max_work = validation.finite_float("max_work", max_work, positive=True)
    with resources.limit_memory(max_memory):
        checked = plan(task, estimators, n_inner=n_inner, n_trials=n_trials, inner_lr=inner_lr,
                       n_outer=n_outer, seed=seed, truth=truth, theta=theta, exact=exact,
                       truth_samples=truth_samples, n_boot=n_boot, dtype=dtype, device=device,
                       options=options, n_steps=n_steps, target_rel_ci=target_rel_ci,
                       max_trials=max_trials, target_metric=target_metric, wrt=wrt)
        if jsonl is not None:
            check_storable(checked.task)
        store = Store(jsonl) if jsonl is not None else None
        note = unmatched_lines(store, [checked.task])
        if note is not None:
            warnings.warn(note, stacklevel=2)
        total = check_plans([checked], store, force, max_work)
        on_record = None if progress is None or isinstance(progress, bool) else progress
        advance, bar = as_advance(progress is True, total, f"evaluate {task.name}", "traj")
        try:
            (result,) = run_plans([checked], store, force, advance, on_record)
        finally:
            if bar is not None:
                bar.close()
    return result


def check_plans(plans: Sequence[Plan], store: Store | None, force: bool,
                max_work: float | None) -> float:
    """Refuse, before anything is allocated, plans whose pending cells exceed the memory
    limit in force or whose work together exceeds ``max_work``; returns the trajectories
    they will sample (for progress). Every runner of plans (``evaluate``, ``metarl-bench
    run``, a serial or Dask sweep) checks them so."""
    return sum(check_resources(p.task, pending(p, store, force), max_work) for p in plans)


def run_plans(plans: Sequence[Plan], store: Store | None, force: bool,
              advance: Callable[[float], None] = lambda n: None,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run plans one after another in this process (``run_plan``): one :class:`Result` per
    plan, handed to ``on_result`` as soon as its plan is done."""
    results = []
    for checked in plans:
        (result,) = results_of(run_plan(checked, store, force, advance, on_record))
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


def pending(checked: Plan | Sequence[CellConfig], store: Store | None, force: bool
            ) -> list[CellConfig]:
    """The cells of a plan (or a list of cells) still to compute: all of them, or those not
    in the store."""
    configs = checked.configs if isinstance(checked, Plan) else checked
    return [c for c in configs if force or store is None or c.key not in store]


def check_storable(task: Task) -> None:
    """Refuse to store results of a task made with an argument that has no stable written
    form (a lambda, a local function): its key could not tell two such tasks apart."""
    if task.unkeyed:
        shown = ", ".join(f"{name}={task.spec_kwargs.get(name)!r}" for name in task.unkeyed)
        raise ParameterError(f"task {task.name!r} was made with {shown}, which has no stable "
                             f"name to key stored results by; pass a function defined at a "
                             f"module's top level, or leave out the results file")


def unmatched_lines(store: Store | None, tasks: Sequence[Task]) -> str | None:
    """One line saying how many lines of ``store`` hold results of these tasks that can never
    be read back, and why (None: there are none): lines whose task arguments are not a whole
    identity of today's task (``registry.unmatched_arguments``), such as a MuJoCo result
    stored before ``init_std`` entered the key. Such a line may hold another
    configuration's numbers, so it is ignored, never reused; its cells are computed again."""
    if store is None:
        return None
    by_name = {task.name: task for task in tasks}
    count, reasons = 0, set()
    for line in store.lines.values():
        task = by_name.get(line["config"]["task"])
        if task is None:
            continue
        names = unmatched_arguments(task, line["config"].get("task_params") or {})
        if names:
            count += 1
            reasons.update(names)
    if not count:
        return None
    return (f"note: {count} line{'s' if count > 1 else ''} of {store.path} for "
            f"{', '.join(sorted(by_name))} {'are' if count > 1 else 'is'} ignored: written by "
            f"an older metarl-bench whose key left out or wrote otherwise the task argument(s) "
            f"{', '.join(sorted(reasons))}, so they may hold another configuration's numbers")


def run_plan(checked: Plan, store: Store | None, force: bool,
             advance: Callable[[float], None] = lambda n: None,
             on_record: Callable[[dict[str, Any]], None] | None = None
             ) -> list[dict[str, Any]]:
    """Compute a plan's pending cells in order, appending each to ``store`` as it finishes;
    returns the store lines of every cell of the plan (computed or read back)."""
    lines = []
    for configs in checked.cells.values():
        missing = pending(configs, store, force)
        truth = compute_truth(checked.task, checked.theta, missing[0], advance) if missing \
            else None
        for config in configs:
            if any(config is m for m in missing):
                line = make_line(config, compute_cell(checked.task, checked.theta, config, truth,
                                                      advance))
                if store is not None:
                    store.append(line)
                if on_record is not None:
                    on_record(record_of(line))
            else:
                line = store.lines[config.key]
            lines.append(line)
    return lines


@dataclass(frozen=True)
class Truth:
    """The reference of the cells at one N: its value, its samples if estimated, its kind."""

    reference: torch.Tensor
    samples: torch.Tensor | None
    kind: str
    method: str = ""


def compute_truth(task: Task, theta: torch.Tensor, config: CellConfig,
                  advance: Callable[[float], None] = lambda n: None) -> Truth:
    """The reference of a cell; a function of the cell's task, theta, N, inner_lr, truth,
    truth_samples and seed only, so every estimator at one N shares it."""
    n, inner_lr, n_steps, wrt = config.n_inner, config.inner_lr, config.n_steps, config.wrt
    if config.truth == "limit":
        return Truth(meta_gradient(task, theta, inner_lr=inner_lr, n_steps=n_steps, wrt=wrt),
                     None, "exact", "grad F_inf by nested autodiff through the model")
    if exact_finite_truth(task, n, n_steps):
        return Truth(meta_gradient(task, theta, inner_lr=inner_lr, n_inner=n, n_steps=n_steps,
                                   wrt=wrt),
                     None, "exact", "grad F_N by exact enumeration of the inner samples")
    generator = torch.Generator(device=theta.device).manual_seed(config.stream_seed("truth"))
    n_outer = None if task.has_model else config.n_outer
    per_sample = task.n_tasks * (n * n_steps + (n_outer or 0))
    estimate = estimate_meta_gradient(
        task, theta, n_inner=n, inner_lr=inner_lr, n_samples=config.truth_samples,
        n_outer=n_outer, generator=generator, n_steps=n_steps, wrt=wrt,
        progress=lambda done: advance(done * per_sample))
    return Truth(estimate.mean, estimate.samples, "estimated", estimate.method)


def _call_estimator(spec: Any, task: Task, theta: torch.Tensor, n_trials: int,
                    **kwargs: Any) -> torch.Tensor:
    """Call a registered estimator and check what it returns, naming it if it misbehaves."""
    try:
        inspect.signature(spec.fn, follow_wrapped=False).bind(task, theta, n_trials=n_trials,
                                                              **kwargs)
    except TypeError as exc:
        raise UnsupportedError(
            f"estimator {spec.name!r} cannot be called as fn(task, theta, *, n_inner, inner_lr, "
            f"n_trials, n_outer, generator, **options): {exc}") from None
    except ValueError:  # no signature to read (a builtin): let the call decide
        pass
    out = spec.fn(task, theta, n_trials=n_trials, **kwargs)
    expected = (n_trials, *wrt_shape(kwargs.get("wrt", "theta"), theta))
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"estimator {spec.name!r} returned a {type(out).__name__}; expected a "
                         f"tensor of shape {expected}")
    if tuple(out.shape) != expected:
        raise ShapeError(f"estimator {spec.name!r} returned shape {tuple(out.shape)}; expected "
                         f"{expected} (n_trials, *theta.shape)")
    if out.dtype != theta.dtype:
        raise ShapeError(f"estimator {spec.name!r} returned dtype "
                         f"{str(out.dtype).replace('torch.', '')}; expected theta's dtype "
                         f"{str(theta.dtype).replace('torch.', '')} (a lower precision would "
                         f"pass for the estimator's own error)")
    if out.device != theta.device:
        raise ShapeError(f"estimator {spec.name!r} returned a tensor on {out.device}; expected "
                         f"theta's device {theta.device}")
    return out.detach()


def compute_cell(task: Task, theta: torch.Tensor, config: CellConfig, truth: Truth,
                 advance: Callable[[float], None] = lambda n: None) -> dict[str, Any]:
    """Measure one cell: its estimates, their statistics against ``truth``, the time and the
    peak memory of computing the estimates.

    With a ``target_rel_ci`` in the configuration, trials come in rounds: after each, the
    relative width of the target metric's interval decides whether to stop (reached, or the
    cap ``max_trials`` hit) or how many to add; the generator runs on, so the rounds and the
    numbers are a function of the configuration alone.
    """
    spec = estimator_spec(config.estimator)
    common = config.call_keywords()
    # a tiny warm-up call first, so that one-time costs (lazy imports, first-use kernels)
    # do not land in the timing of whichever cell happens to run first
    _call_estimator(spec, task, theta, 1,
                    generator=torch.Generator(device=theta.device).manual_seed(0), **common)
    generator = torch.Generator(device=theta.device).manual_seed(
        config.stream_seed(spec.name))
    # large cells in chunks (about 2**20 trajectories, at most 1 GiB), so memory stays
    # bounded; the chunk depends on the configuration alone and the generator runs on, so
    # results do not depend on the machine
    per_chunk = resources.chunk_trials(task, config.inner_per_trial, config.n_outer,
                                       theta.dtype)
    trajectories = trajectories_per_trial(task, config)
    target, cap = config.target_rel_ci, config.planned_trials
    parts: list[torch.Tensor] = []
    seconds, batch, memory, width = 0.0, config.n_trials, None, None
    while True:
        start = time.perf_counter()
        # memory is measured on the first n_trials only, so cells of one run (adaptive
        # or not) are measured on batches of one size and compare alike
        with resources.PeakMemory(theta.device, enabled=memory is None) as peak:
            for lo in range(0, batch, per_chunk):
                size = min(per_chunk, batch - lo)
                parts.append(_call_estimator(spec, task, theta, size, generator=generator,
                                             **common))
                advance(size * trajectories)
        seconds += time.perf_counter() - start
        memory = memory or peak
        estimates = torch.cat(parts)
        used = estimates.shape[0]
        n_nonfinite = int((~torch.isfinite(estimates.reshape(used, -1))).any(-1).sum())
        stats, problem = _statistics(task, theta, spec, config, estimates, n_nonfinite,
                                     truth)
        if target is None or problem is not None:  # a cell without statistics has no width
            width = None
            break
        width = relative_width(stats, config.target_metric)
        if width <= target or used >= cap:
            break
        batch = min(cap, next_trials(used, width, target)) - used
    adaptive = {}
    if target is not None:
        advance((cap - used) * trajectories)  # the planned work this cell did not need
        adaptive = dict(rel_ci=width, target_reached=width is not None and width <= target)
    mse = stats["mse"]
    simulators = getattr(task, "versions", dict)()  # a plug-in task need not subclass Task
    return plain(dict(
        n_steps=config.n_steps, truth_kind=truth.kind, truth_method=truth.method,
        moments=stats.pop("moments"), **stats,
        truth_norm=float(truth.reference.norm()), trajectories=trajectories,
        mse_x_trajectories=None if mse is None else mse * trajectories,
        n_nonfinite=n_nonfinite, problem=problem, n_trials_used=used, **adaptive,
        seconds=seconds, peak_memory_bytes=memory.bytes, memory_method=memory.method,
        torch_version=torch.__version__,
        **({"simulator_versions": simulators} if simulators else {})))


def relative_width(stats: dict[str, Any], metric: str) -> float:
    """Width of a metric's 95% interval over the metric (infinite when it is 0 or unknown:
    no number of trials gives a relative interval on a zero)."""
    point = stats.get(metric)
    low, high = stats.get(f"{metric}_ci") or (None, None)
    if point is None or low is None or high is None or not point > 0:
        return math.inf
    return (high - low) / point


def next_trials(used: int, width: float, target: float) -> int:
    """Trials for the next adaptive round: an interval narrows like 1/sqrt(trials), so
    (width / target)^2 times as many, with a 10% margin and at least 1.5 times as many."""
    growth = max(ADAPTIVE_MIN_GROWTH, 1.1 * (width / target) ** 2) if math.isfinite(width) \
        else ADAPTIVE_CAP_FACTOR
    return math.ceil(used * growth)


def _statistics(task: Task, theta: torch.Tensor, spec: Any, config: CellConfig,
                estimates: torch.Tensor, n_nonfinite: int, truth: Truth
                ) -> tuple[dict[str, Any], str | None]:
    """The cell's statistics, or all of them None with the reason when any would be
    non-finite: a NaN or overflowing estimate is counted and reported, never averaged."""
    flat = estimates.reshape(estimates.shape[0], -1)
    problem = None
    if n_nonfinite:
        problem = f"{n_nonfinite} of {flat.shape[0]} estimates are not finite"
    elif not torch.isfinite(truth.reference).all():
        problem = "the truth is not finite"
    if problem is None:
        if exact_statistics(task, config):
            moments = exact_moments(task, theta, spec, n_inner=config.n_inner,
                                    inner_lr=config.inner_lr, truth=truth.reference,
                                    n_steps=config.n_steps, **config.call_options)
            stats = summarize_exact(moments.mean, moments.covariance, truth.reference,
                                    moments.mean_cosine)
            kind = "exact"
        else:
            stats = summarize(estimates, truth.reference, truth.samples, n_boot=config.n_boot,
                              seed=config.bootstrap_seed)
            kind = "monte-carlo"
        if all(math.isfinite(stats[k]) for k in ("bias", "variance", "mse")):
            return {**stats, "moments": kind}, None
        largest = float(flat.abs().max())
        problem = (f"the statistics overflow {str(theta.dtype).replace('torch.', '')} "
                   f"(largest |estimate| {largest:.3g})")
    empty = {name: None for name in METRICS}
    empty.update({f"{name}_ci": [None, None] for name in METRICS})
    empty.update({name: None for name in ("bias_raw", "bias_noise", "cosine_raw",
                                          "correlation_raw")})
    return {**empty, "moments": None}, problem
