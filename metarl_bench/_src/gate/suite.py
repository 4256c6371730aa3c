"""The regression gate's measuring side: the seeded grid, and the worker that measures it on
one tree.

The parent (``gate.command``) starts one worker per tree: a copy of this file, run as a
script alone in its folder with that tree first on the path. It imports nothing but the
standard library at the top and only ``metarl_bench``'s public API inside, so it also
measures old revisions (what a revision lacks is left out of its suite and reported as new
or gone by the comparison). Requests and replies are JSON lines.

What is measured (the grid is append only: a changed entry would break comparisons):

* statistics: bias, variance and MSE of every estimator on ``STATISTICS_TASKS`` at
  ``STATISTICS_N`` (``evaluate``, seeded: unchanged code reproduces them bit for bit);
* times, along three paths through each cell of ``TIMED_TASKS`` (every task family with a
  model, at a small and a large N) and ``MUJOCO_TASKS`` (where MuJoCo is installed):
  ``sampler`` (the task's ``sample``: the rows of one theta, as the inner step draws them,
  then one theta per row, as the outer step and later inner steps draw them), ``from-samples``
  (one estimator per family on given inner trajectories, the exact outer step) and ``call``
  (the registered call: ``CALL_ESTIMATORS`` and the estimators with no from-samples form);
* peak bytes (memray) of each timed estimator path on ``MEMORY_CELL``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

SUITE_VERSION = 3
STAT_METRICS = ("bias", "variance", "mse")
TIME_METRICS = ("seconds", "cpu_seconds")
PATHS = ("sampler", "from-samples", "call")
#: the estimator column of a sampler's rows
SAMPLER = "-"


@dataclass(frozen=True)
class StatisticsTask:
    """A task of the statistics grid: ``evaluate`` with these arguments at each N."""

    task_id: str
    params: dict[str, Any]
    inner_lr: float
    truth: str
    trials: int
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TimedTask:
    """A task of the timed grid, at each N of ``n_inner``: ``trials`` rows of N inner
    trajectories (and, ``outer``, M = N outer ones per row in a call; else the exact outer
    step), theta in ``dtype``."""

    task_id: str
    params: dict[str, Any]
    inner_lr: float
    n_inner: tuple[int, ...]
    trials: int
    outer: bool = False
    dtype: str = "float64"


@dataclass(frozen=True, order=True)
class Item:
    """One timed measurement: a ``path`` (``PATHS``) of an estimator entry (``SAMPLER`` for
    the sampler) on a timed task at N. Crosses the worker's pipe as a JSON object
    (:meth:`as_json`, ``Item(**obj)``)."""

    path: str
    estimator: str
    task: str
    n_inner: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Entry:
    """An estimator entry as the worker reads it through the public API: the registered
    spec and the entry's options (empty for a plain name)."""

    spec: Any
    options: dict[str, Any]


#: name -> task. Append only. A task the measured tree does not have is left out.
STATISTICS_TASKS = {
    "bandit": StatisticsTask("bandit-v0", {"rewards": [1.0, 0.0, 0.5],
                                           "init_logits": [0.0, 0.5, -0.5]},
                             inner_lr=2.0, truth="finite", trials=200),
    "tabular": StatisticsTask("tabular-v0", {"n_states": 4, "n_actions": 3, "horizon": 4,
                                             "gamma": 0.9, "seed": 1},
                              inner_lr=1.0, truth="limit", trials=2000),
    "lq": StatisticsTask("lq-navigation-v0", {"n_tasks": 1, "horizon": 3, "init_std": 0.3},
                         inner_lr=0.02, truth="limit", trials=100),
    # no model: sampled outer step, truth estimated from 50 unbiased estimates
    "navigation": StatisticsTask("navigation2d-v0", {"n_tasks": 1, "horizon": 5, "hidden": [4]},
                                 inner_lr=0.001, truth="finite", trials=50,
                                 options={"n_outer": 2, "truth_samples": 50}),
}
STATISTICS_N = (4, 32)
#: name -> task. Append only. "bandit-30" is the bandit of the speed targets (30 arms,
#: N = M = 10 and 64, 1000 estimates a call, float32).
TIMED_TASKS = {
    "bandit-30": TimedTask("bandit-v0", {"rewards": "random", "n_arms": 30, "seed": 0},
                           inner_lr=1.0, n_inner=(10, 64), trials=1000, outer=True,
                           dtype="float32"),
    "tabular": TimedTask("tabular-v0", STATISTICS_TASKS["tabular"].params,
                         inner_lr=1.0, n_inner=(4, 32), trials=2000),
    "tabular-discounted": TimedTask("tabular-discounted-v0", {"n_states": 4, "n_actions": 3,
                                                              "gamma": 0.8, "seed": 1},
                                    inner_lr=1.0, n_inner=(4, 32), trials=500),
    "lq": TimedTask("lq-navigation-v0", STATISTICS_TASKS["lq"].params,
                    inner_lr=0.02, n_inner=(4, 32), trials=500),
}
#: A small MuJoCo task, timed where MuJoCo is installed (no model: sampler and calls only).
MUJOCO_TASKS = {
    "halfcheetah-vel": TimedTask("halfcheetah-vel-v0", {"n_tasks": 2, "horizon": 20, "seed": 0},
                                 inner_lr=1e-3, n_inner=(4,), trials=2, outer=True),
}
#: Registered calls timed on every cell besides those of the estimators with no
#: from-samples form: maml's is the call of the speed targets.
CALL_ESTIMATORS = ("maml",)
#: The cell whose estimator paths' peak bytes are measured (task, N).
MEMORY_CELL = ("tabular", 32)


def families(specs: dict[str, Any]) -> list[str]:
    """One estimator per family, the family being the module that defines its function (one
    module per family in-tree; a plug-in's own module): the estimator named like the module,
    else the first by name."""
    chosen: dict[str, str] = {}
    for name in sorted(specs):
        spec = specs[name]
        module = (spec.from_samples or spec.fn).__module__
        named = module.rpartition(".")[2].replace("_", "-") == name
        if module not in chosen or named:
            chosen[module] = name
    return sorted(chosen.values())


class Suite:
    """The seeded grid on the importable metarl_bench (a worker's side)."""

    def __init__(self, estimators: Iterable[str] | None = None,
                 tasks: Iterable[str] | None = None):
        import torch

        import metarl_bench as mb

        self.torch, self.mb = torch, mb
        self.unsupported = getattr(mb, "UnsupportedError", NotImplementedError)
        self.unknown = getattr(mb, "UnknownNameError", ValueError)
        registered = mb.list_estimators()
        # a name the measured tree lacks is reported as new/gone by the comparison; an entry
        # with options (NAME:KEY=VALUE,...) counts by its name
        self.names = ([n for n in estimators if n.partition(":")[0] in registered]
                      if estimators else registered)
        self.explicit = bool(estimators)
        self.timed_tasks: dict[str, Any] = {}
        wanted = None if tasks is None else set(tasks)
        for key, spec in {**TIMED_TASKS, **MUJOCO_TASKS}.items():
            if wanted is not None and key not in wanted:
                continue
            try:
                self.timed_tasks[key] = mb.make_task(spec.task_id, **spec.params)
            except (self.unknown, self.unsupported, ImportError):  # not in this tree / no MuJoCo
                continue
        self.runners: dict[Item, Callable[[], Any]] = {}

    # -- statistics ---------------------------------------------------------------------

    def statistics(self) -> list[dict[str, Any]]:
        rows = []
        for key, spec in STATISTICS_TASKS.items():
            try:
                task = self.mb.make_task(spec.task_id, **spec.params)
            except self.unknown:  # a task this tree does not have
                continue
            for name in self.names:
                options = {name: {"truth": spec.truth}} if name == "exact" else None
                try:
                    result = self.mb.evaluate(task, [name], n_inner=list(STATISTICS_N),
                                              n_trials=spec.trials, inner_lr=spec.inner_lr,
                                              truth=spec.truth, seed=0, options=options,
                                              **spec.options)
                except self.unsupported:
                    continue
                for record in result.records:
                    rows.append({"estimator": name, "task": key, "n_inner": record["n_inner"],
                                 **{m: record[m] for m in STAT_METRICS},
                                 **{f"{m}_ci": record[f"{m}_ci"] for m in STAT_METRICS}})
        return rows

    # -- timed items --------------------------------------------------------------------

    def _entry(self, label: str) -> Entry | None:
        """The spec and options of an entry; None where this tree cannot read its options
        (``estimator_entry`` is public API since the gate's version 3)."""
        if ":" not in label:
            return Entry(self.mb.estimator_spec(label), {})
        resolve = getattr(self.mb, "estimator_entry", None)
        if resolve is None:
            return None
        entry = resolve(label)
        return Entry(entry.spec, dict(entry.options))

    def items(self) -> list[Item]:
        """Every item of the grid this tree's estimators and tasks make (before warm-up)."""
        entries = {}
        for label in self.names:
            resolved = self._entry(label)
            if resolved is not None:
                entries[label] = resolved.spec
        with_forms = [n for n in entries if entries[n].from_samples is not None]
        forms = with_forms if self.explicit else [
            n for n in families(entries) if n in with_forms]
        calls = list(entries) if self.explicit else [
            n for n in entries if n in CALL_ESTIMATORS or n not in with_forms]
        out = []
        for key, task in self.timed_tasks.items():
            spec = {**TIMED_TASKS, **MUJOCO_TASKS}[key]
            for n_inner in spec.n_inner:
                out.append(Item(path="sampler", estimator=SAMPLER, task=key, n_inner=n_inner))
                if task.has_model:
                    out += [Item(path="from-samples", estimator=name, task=key, n_inner=n_inner)
                            for name in forms]
                out += [Item(path="call", estimator=name, task=key, n_inner=n_inner)
                        for name in calls if self.explicit or key not in MUJOCO_TASKS
                        or name in CALL_ESTIMATORS]
        return out

    def _runner(self, item: Item) -> Callable[[], Any]:
        """The timed function of ``item``: a call with no arguments, seeded inside."""
        torch = self.torch
        spec = {**TIMED_TASKS, **MUJOCO_TASKS}[item.task]
        task = self.timed_tasks[item.task]
        theta = task.initial_params(dtype=getattr(torch, spec.dtype))
        n_outer = item.n_inner if spec.outer else None
        n_rows = spec.trials * task.n_tasks
        task_index = torch.arange(n_rows) % task.n_tasks

        def seeded(seed: int = 0) -> Any:
            return torch.Generator().manual_seed(seed)

        if item.path == "sampler":
            shared = theta.expand(n_rows, *theta.shape)
            # one theta per row: the outer step's and later inner steps' adapted points
            own = theta + 0.1 * torch.randn(n_rows, *theta.shape, generator=seeded(1),
                                            dtype=theta.dtype)

            def sample() -> Any:
                generator = seeded()
                task.sample(shared, item.n_inner, task_index, generator)
                return task.sample(own, n_outer or item.n_inner, task_index, generator)

            return sample
        entry = self._entry(item.estimator)
        estimator, options = entry.spec, dict(entry.options)
        if item.path == "from-samples":
            inner = task.sample(theta.expand(n_rows, *theta.shape), item.n_inner, task_index,
                                seeded())
            form = estimator.from_samples
            if "generator" in inspect.signature(form).parameters:
                return lambda: form(task, theta, inner, inner_lr=spec.inner_lr,
                                    generator=seeded(), **options)
            return lambda: form(task, theta, inner, inner_lr=spec.inner_lr, **options)
        if n_outer is not None:
            options["n_outer"] = n_outer
        return lambda: estimator.fn(task, theta, n_inner=item.n_inner, inner_lr=spec.inner_lr,
                                    n_trials=spec.trials, generator=seeded(), **options)

    def prepare(self) -> list[dict[str, Any]]:
        """Warm every item up (lazy imports and caches are not a call's own cost); the items
        that run, as JSON objects."""
        self.runners = {}
        errors = tuple({self.unsupported, getattr(self.mb, "ResourceError", self.unsupported)})
        for item in self.items():
            try:
                runner = self._runner(item)
                runner()
            except errors:  # e.g. an exact estimator with no enumeration of this task
                continue
            self.runners[item] = runner
        return [item.as_json() for item in self.runners]

    def time(self, item: Item, calls: int) -> tuple[float, float]:
        """Wall and CPU seconds per call, over ``calls`` back-to-back calls."""
        run = self.runners[item]
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            run()
        return ((time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls)

    def memory(self) -> list[dict[str, Any]]:
        task, n_inner = MEMORY_CELL
        return [{"path": item.path, "estimator": item.estimator, "task": task,
                 "n_inner": n_inner, "peak_bytes": peak_bytes(run)}
                for item, run in self.runners.items()
                if (item.task, item.n_inner) == MEMORY_CELL and item.path != "sampler"]


def measure_statistics(estimators: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The statistics of the suite on the metarl_bench imported here, in this process."""
    return Suite(estimators).statistics()


def peak_bytes(call: Callable[[], Any]) -> int | None:
    """Peak heap bytes of ``call`` under memray (None without memray).

    The same measure as benchmarks/common.py's allocated_peak_bytes, kept here because this
    file must run alone, as a script, against any tree.
    """
    try:
        import memray
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "call.bin")
        with memray.Tracker(path):
            call()
        return int(memray.FileReader(path).metadata.peak_memory)


def serve(reply_fd: int, threads: int, estimators: list[str] | None,
          tasks: list[str] | None = None, cpus: list[int] | None = None) -> int:
    """Answer the parent's requests, one JSON line each way, until stdin closes.

    Replies go through their own pipe: whatever the measured package prints cannot
    corrupt them. ``cpus``: the CPUs this worker may run on (where the system allows it).
    """
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    import torch

    torch.set_num_threads(threads)
    replies = os.fdopen(reply_fd, "w")

    def reply(**message: Any) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    import metarl_bench

    suite = Suite(estimators, tasks)
    reply(ok={"package": metarl_bench.__file__, "names": suite.names,
              "threads": torch.get_num_threads()})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "time":
                reply(ok=suite.time(Item(**request["item"]), request["calls"]))
            else:
                reply(ok=getattr(suite, request["op"])())
        except Exception as exc:  # reported by the parent as the tree's failure
            reply(error=f"{type(exc).__name__}: {exc}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="a check suite worker (internal)")
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--estimators-json", default=None)
    parser.add_argument("--tasks-json", default=None)
    parser.add_argument("--cpus-json", default=None)
    args = parser.parse_args()
    names = json.loads(args.estimators_json) if args.estimators_json else None
    tasks = json.loads(args.tasks_json) if args.tasks_json else None
    cpus = json.loads(args.cpus_json) if args.cpus_json else None
    return serve(args.reply_fd, args.threads, names, tasks, cpus)


if __name__ == "__main__":
    sys.exit(main())
