"""Sweeps: a grid of cells from a TOML or YAML spec, run as independent seeded jobs on Dask.

Every cell is a pure function of its configuration (``compute_truth`` and ``compute_cell``
in ``evaluate``), so where it runs cannot change its numbers: a local cluster, a remote one
and ``--serial`` write the same bits. Only the client writes the results store, as each
cell's future completes, so a task that Dask retries on another worker is still written
once; cells already in the store are not submitted at all (resume).

Spec (TOML shown; YAML has the same keys)::

    output = "results/sweep.jsonl"       # the results store (or --json PATH)
    estimators = ["unbiased", "lsf", "maml", "fomaml"]   # grid axes: lists
    n_inner = [1, 4, 16, 64]
    inner_lr = [1.0]
    seeds = [0, 1, 2]
    n_outer = ["exact"]                  # "exact" (exact outer step) or integers M
    n_steps = [1]                        # inner steps K (1: the one-step cells)
    truncate = ["full"]                  # windows w of truncated backpropagation (see below)
    n_trials = 1000                      # shared settings: one value each
    target_rel_ci = 0.1                  # optional adaptive trials (see run --target-rel-ci),
    max_trials = 16000                   # with their cap and the metric they target
    target_metric = "mse"
    wrt = "theta"                        # or "inner_lr" / "all": meta-gradients of eta
    truth = "finite"                     # or "limit"
    truth_samples = 20000
    exact_moments = true
    n_boot = 200
    dtype = "float64"
    device = "cpu"

    [options.unbiased]                   # per-estimator keyword options
    baseline = 0.5

    [[tasks]]                            # one table per task; any key above may be
    name = "bandit-v0"                   # overridden inside it
    params = { rewards = [1.0, 0.0, 0.5] }
    inner_lr = [2.0]

``truncate``: each estimator that takes K steps becomes one entry per window,
``NAME:...,truncate=w`` ("full": the entry as written, all K steps); a window above a
plan's n_steps is left out of that plan, and estimators with no window (``es-maml``) are
listed once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from metarl_bench._src.core import resources, validation
from metarl_bench._src.core.errors import (MetaRLBenchError, ParameterError, ResourceError,
                                           did_you_mean)
from metarl_bench._src.core.progress import Progress
from metarl_bench._src.core.registry import estimator_spec
from metarl_bench._src.evaluation.config import CellConfig
from metarl_bench._src.evaluation.evaluate import (Plan, Truth, check_plans, compute_cell,
                                                   compute_truth, pending, plan, results_of,
                                                   run_plans)
from metarl_bench._src.evaluation.store import Store, make_line

GRID_KEYS = ("estimators", "n_inner", "inner_lr", "seeds", "n_outer", "n_steps", "truncate")
SHARED_KEYS = ("n_trials", "truth", "truth_samples", "exact_moments", "n_boot", "dtype",
               "device", "options", "target_rel_ci", "max_trials", "target_metric", "wrt")
#: A spec's defaults: the grid's own, and a cell's (CellConfig's) for the shared settings.
DEFAULTS: dict[str, Any] = dict(
    estimators=["unbiased", "lsf", "maml", "fomaml"], n_inner=[1, 2, 4, 8, 16, 32, 64],
    inner_lr=[CellConfig.inner_lr], seeds=[CellConfig.seed], n_outer=["exact"],
    n_steps=[CellConfig.n_steps], truncate=["full"], n_trials=CellConfig.n_trials,
    truth=CellConfig.truth,
    truth_samples=CellConfig.truth_samples, exact_moments=CellConfig.exact,
    n_boot=CellConfig.n_boot, dtype=CellConfig.dtype, device=CellConfig.device, options={},
    target_rel_ci=CellConfig.target_rel_ci, max_trials=CellConfig.max_trials,
    target_metric=CellConfig.target_metric, wrt=CellConfig.wrt)
TOP_KEYS = ("output", "tasks", *GRID_KEYS, *SHARED_KEYS)
TASK_KEYS = ("name", "params", *GRID_KEYS, *SHARED_KEYS)
#: Local worker processes allowed per CPU. Cells are single-threaded and CPU-bound, so one
#: per CPU (the default) is the useful number; a few more are allowed (cells waiting on
#: memory or a GPU), not the thousands of processes a typo would start.
MAX_WORKERS_PER_CPU = 4


def read_spec(path: str) -> dict[str, Any]:
    """A sweep spec from a ``.toml`` or ``.yaml``/``.yml`` file (one-line errors)."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise ParameterError("the sweep spec must be a file path")
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ParameterError(f"sweep spec {path!r}: expected a .toml, .yaml or .yml file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ParameterError(f"sweep spec {path!r} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterError(f"sweep spec {path!r} is not UTF-8 text") from None
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            spec = tomllib.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except Exception as exc:  # both parsers' errors say where: keep their first line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParameterError(f"sweep spec {path!r} does not parse: {reason}") from None
    if not isinstance(spec, dict):
        raise ParameterError(f"sweep spec {path!r} must be a table of keys, got "
                             f"{type(spec).__name__}")
    return spec


def _check_keys(where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise ParameterError(f"{where}: unknown key {key!r}.{did_you_mean(key, allowed)} "
                                 f"Keys: {', '.join(allowed)}")


def _as_list(where: str, key: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ParameterError(f"{where}: {key} must list at least one value")
    return values


def _n_outer(where: str, value: Any) -> int | None:
    if value in ("exact", None):
        return None
    try:
        return validation.positive_int("n_outer", value)
    except ParameterError:
        raise ParameterError(f"{where}: n_outer values must be 'exact' or integers >= 1, got "
                             f"{value!r}") from None


@dataclass(frozen=True)
class Sweep:
    """A checked sweep: its plans (one per task x inner_lr x seed x n_outer x n_steps) and
    output."""

    plans: list[Plan]
    output: str | None


def build(spec: dict[str, Any], *, source: str = "spec") -> Sweep:
    """Check a spec and expand it into plans; allocates nothing large, writes nothing."""
    from metarl_bench._src.core.registry import make_task

    _check_keys(source, spec, TOP_KEYS)
    tasks = spec.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ParameterError(f"{source}: 'tasks' must list at least one task table "
                             f"([[tasks]] in TOML)")
    output = spec.get("output")
    if output is not None and not isinstance(output, str):
        raise ParameterError(f"{source}: output must be a file path, got {output!r}")
    plans = []
    for number, entry in enumerate(tasks, 1):
        where = f"{source}: tasks[{number}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ParameterError(f"{where} must be a table with a 'name'")
        _check_keys(where, entry, TASK_KEYS)
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise ParameterError(f"{where}: params must be a table, got {params!r}")
        settings = {**DEFAULTS, **{k: v for k, v in spec.items() if k in DEFAULTS},
                    **{k: v for k, v in entry.items() if k in DEFAULTS}}
        if settings["dtype"] not in ("float32", "float64"):
            raise ParameterError(f"{where}: dtype must be 'float32' or 'float64', got "
                                 f"{settings['dtype']!r}")
        grid = {k: _as_list(where, k, settings[k]) for k in GRID_KEYS}
        try:
            task = make_task(entry["name"], **params)
        except MetaRLBenchError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        for inner_lr, seed, n_outer, n_steps in itertools.product(
                grid["inner_lr"], grid["seeds"], grid["n_outer"], grid["n_steps"]):
            try:
                plans.append(plan(
                    task, _windowed(where, grid["estimators"], grid["truncate"], n_steps),
                    n_inner=grid["n_inner"],
                    n_trials=settings["n_trials"], inner_lr=inner_lr,
                    n_outer=_n_outer(where, n_outer), seed=seed, truth=settings["truth"],
                    theta=None, exact=settings["exact_moments"],
                    truth_samples=settings["truth_samples"], n_boot=settings["n_boot"],
                    dtype=getattr(torch, settings["dtype"]), device=settings["device"],
                    options=settings["options"], n_steps=n_steps,
                    target_rel_ci=settings["target_rel_ci"], max_trials=settings["max_trials"],
                    target_metric=settings["target_metric"], wrt=settings["wrt"]))
            except MetaRLBenchError as exc:
                raise type(exc)(f"{where} ({entry['name']}): {exc}") from None
    return Sweep(plans, output)


def _windowed(where: str, entries: list[Any], windows: list[Any], n_steps: Any) -> list[Any]:
    """Each entry once per truncation window w <= K (``truncate`` grid key); "full" keeps
    it as written; entries whose estimator has no window are kept once."""
    if windows == ["full"]:
        return entries
    for window in windows:
        if window != "full" and (isinstance(window, bool) or not isinstance(window, int)
                                 or window < 0):
            raise ParameterError(f"{where}: truncate values must be 'full' or integers >= 0, "
                                 f"got {window!r}")
    out = []
    for entry in entries:
        if not isinstance(entry, str):
            out.append(entry)
            continue
        name, has_options, _ = entry.partition(":")
        if "truncate" not in estimator_spec(name.strip()).options:
            out.append(entry)
            continue
        for window in windows:
            if window == "full":
                out.append(entry)
            elif isinstance(n_steps, int) and window <= n_steps:
                out.append(f"{entry}{',' if has_options else ':'}truncate={window}")
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the duration: cells run side by side, not inside each other,
    and a serial run then does its arithmetic exactly as a worker does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _task_and_theta(config: CellConfig) -> tuple[Any, torch.Tensor]:
    from metarl_bench._src.core.registry import make_task

    task = make_task(config.task, **config.task_params)
    theta = task.initial_params(dtype=config.torch_dtype, device=config.device)
    return task, theta


def truth_job(config: CellConfig) -> Truth:
    """A Dask task: the truth shared by the cells of one plan at one N."""
    with one_thread():
        task, theta = _task_and_theta(config)
        return compute_truth(task, theta, config)


def cell_job(config: CellConfig, truth: Truth) -> dict[str, Any]:
    """A Dask task: one cell's result (never written by the worker)."""
    with one_thread():
        task, theta = _task_and_theta(config)
        return compute_cell(task, theta, config, truth)


def check_workers(workers: int | None, scheduler: str | None) -> None:
    """Refuse more local worker processes than :data:`MAX_WORKERS_PER_CPU` per CPU."""
    cpus = os.cpu_count() or 1
    if workers is None or scheduler is not None or workers <= MAX_WORKERS_PER_CPU * cpus:
        return
    raise ParameterError(
        f"--workers {workers}: a local cluster takes at most {MAX_WORKERS_PER_CPU} worker "
        f"processes per CPU ({MAX_WORKERS_PER_CPU * cpus} on these {cpus} CPUs); each runs "
        f"one single-threaded cell at a time, so more only crowd the same cores. For more, "
        f"start a Dask cluster and pass --scheduler ADDRESS")


def run_sweep(sweep: Sweep, store: Store, *, force: bool = False, serial: bool = False,
              scheduler: str | None = None, workers: int | None = None,
              max_work: float | None = resources.DEFAULT_MAX_WORK, progress: bool = False,
              log: Callable[[str], None] = lambda text: None) -> tuple[int, int]:
    """Run the sweep's pending cells into ``store``; returns (computed, already there).

    ``workers``: processes of the local cluster (default: one per CPU), never more than the
    cells to compute, and at most :data:`MAX_WORKERS_PER_CPU` per CPU (ParameterError).
    """
    todo, n_done, workers, serial, total = check_sweep(
        sweep, store, force=force, serial=serial, scheduler=scheduler, workers=workers,
        max_work=max_work)
    n_todo = sum(len(v) for v in todo.values())
    if n_todo == 0:
        return 0, n_done
    with Progress(total, "sweep", enabled=progress, unit="traj") as bar:
        if serial:
            log(f"sweep: {n_todo} cells in this process ({n_done} already in the store)")
            with one_thread():
                run_plans([_rebuilt(p) for p in sweep.plans if todo[id(p)]], store, force,
                          bar.advance)
        else:
            _run_on_dask(sweep, todo, store, scheduler, workers, bar, log, n_done)
    return n_todo, n_done


def check_sweep(sweep: Sweep, store: Store | None, *, force: bool, serial: bool,
                scheduler: str | None, workers: int | None, max_work: float | None
                ) -> tuple[dict[int, list[CellConfig]], int, int, bool, float]:
    """The guards of :func:`run_sweep`, run without computing or writing anything (``store``
    None: an empty store); returns the pending cells of each plan (by id), the cells already
    stored, the workers to start, whether to run serially, and the planned work."""
    check_workers(workers, scheduler)
    todo = {id(p): pending(p, store, force) for p in sweep.plans}
    n_todo = sum(len(v) for v in todo.values())
    n_done = sum(len(p.configs) for p in sweep.plans) - n_todo
    if n_todo == 0:
        return todo, n_done, 0, serial, 0.0
    # a process with no cell to run would only cost its start-up (and its semaphores)
    workers = min(workers or os.cpu_count() or 1, n_todo)
    serial = serial or (scheduler is None and workers < 2)
    concurrency = 1 if serial or scheduler is not None else workers
    # each worker holds one cell at a time: the memory guard applies to them together
    with resources.share_memory(concurrency):
        total = check_plans(sweep.plans, store, force, max_work)
    return todo, n_done, workers, serial, total


def dask_setup(worker: Any) -> None:
    """Run by Dask in each local worker process as it starts (``preload``).

    Ctrl-C in a terminal reaches every process of the foreground group: the workers would
    each die with a traceback of their own. Only the client should answer it (it keeps what
    finished and closes the cluster), so the workers ignore it.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _rebuilt(checked: Plan) -> Plan:
    """The plan with its task and theta made from the configuration, as a worker makes them,
    so that a serial sweep computes from exactly what a Dask worker would."""
    task, theta = _task_and_theta(checked.configs[0])
    return Plan(task, theta, checked.cells)


def _run_on_dask(sweep: Sweep, todo: dict[int, list[CellConfig]], store: Store,
                 scheduler: str | None, workers: int, bar: Progress,
                 log: Callable[[str], None], n_done: int) -> None:
    import logging

    from distributed import Client, LocalCluster, as_completed

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ParameterError(f"--scheduler {scheduler!r}: cannot connect ({exc})") from None
        cluster = None
    else:
        # ":0": the scheduler's HTTP endpoint on any free port, never a clash with another
        # cluster on the default 8787
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.CRITICAL,
                               preload=[__name__])
        client = Client(cluster)
    where = scheduler or f"a local cluster of {workers} processes"
    n_todo = sum(len(v) for v in todo.values())
    log(f"sweep: {n_todo} cells on {where} ({n_done} already in the store)")
    try:
        futures = {}
        for checked in sweep.plans:
            configs = todo[id(checked)]
            for n in sorted({c.n_inner for c in configs}):
                at_n = [c for c in configs if c.n_inner == n]
                # one truth per (plan, N), shared by its cells; keys from the configuration
                # make identical submissions one task
                truth = client.submit(truth_job, at_n[0], key=f"truth-{at_n[0].key}",
                                      pure=False)
                for config in at_n:
                    future = client.submit(cell_job, config, truth, key=f"cell-{config.key}",
                                           pure=False)
                    futures[future.key] = (future, config, checked.task)
        for future in as_completed([f for f, _, _ in futures.values()]):
            _, config, task = futures[future.key]
            try:
                result = future.result()
            except MetaRLBenchError:
                raise
            except Exception as exc:  # a worker lost (memory) or an estimator's own bug
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ResourceError(f"cell {config.estimator} at N={config.n_inner} on "
                                    f"{config.task} failed on a worker: {reason}") from None
            store.append(make_line(config, result))
            bar.advance(result["trajectories"] * config.planned_trials)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def sweep_results(sweep: Sweep, store: Store) -> list[Any]:
    """The sweep's results as read back from the store (one per plan, in spec order)."""
    return [result for checked in sweep.plans
            for result in results_of([store.lines[c.key] for c in checked.configs
                                      if c.key in store])]
