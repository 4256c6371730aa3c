"""Meta-training: optimise the initial parameters theta with an estimator's meta-gradient.

Each iteration draws a meta-batch of B tasks (uniformly, with replacement, from the task's
distribution of ``n_tasks``), samples N inner trajectories per task at theta, adapts with
one inner step per task, samples M outer trajectories at each adapted theta', and steps
theta along the average g of the estimator's B per-task estimates of grad F_N (ascent: F_N
is a return): with Adam or SGD, or with TRPO (``optimizer="trpo"``, ``training.trpo``: the
natural gradient F^{-1} g in a KL trust region around the adapted policies, as MAML-TRPO).
The outer gradient weights the outer trajectories' scores by the reward-to-go, as every
estimator does, or (``outer_advantages="task"``) by the task's own inner-step advantages, as
MAML-TRPO's outer loss does (``TaskAdvantageOuter``).
It logs, per iteration, the mean return of the inner trajectories (before adaptation) and
of the outer ones (after adaptation): the learning curve of meta-RL papers.

Output: JSON lines (schema below), and a PNG learning curve drawn on matplotlib's Agg
canvas. Schema (``SCHEMA_VERSION``): one ``{"type": "header", ...}`` line with the
configuration, then one ``{"type": "iteration", "iteration", "return_before",
"return_after", "grad_norm", "seconds"}`` line per iteration, flushed as it finishes. Rows
may carry more fields, each present only where it applies: ``success_before`` and
``success_after`` on tasks with a success flag (Meta-World: the fraction of trajectories
whose flag was ever set), and TRPO's ``accepted``, ``kl``, ``step_fraction``,
``backtracks`` and ``surrogate_gain`` (``TRPOStep``).

Resume: beside the log ``train.jsonl`` a JSON checkpoint ``train.state.json`` is written
atomically after every iteration (theta, the optimiser's and the generator's state), before
the iteration's log line. The same call again continues where a crash, Ctrl-C or SIGKILL
stopped it, bit for bit; on a finished log it does no work. See ``train_state``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from metarl_bench._src.core import resources, validation
from metarl_bench._src.core.errors import (ParameterError, UnsupportedError, did_you_mean,
                                           unknown_name)
from metarl_bench._src.core.files import check_path, plain
from metarl_bench._src.core.progress import Progress
from metarl_bench._src.core.registry import estimator_spec
from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.estimators.common import Outer, OuterStep, sampled_outer
from metarl_bench._src.evaluation.tables import estimator_colour
from metarl_bench._src.tasks import Task
from metarl_bench._src.tasks.advantages import inner_returns
from metarl_bench._src.training import state as train_state
from metarl_bench._src.training.trpo import TRPO, trpo_step

SCHEMA_VERSION = train_state.LOG_SCHEMA_VERSION
OPTIMIZERS = ("adam", "sgd", "trpo")
#: What weights the outer trajectories' scores in the outer gradient: the plain reward-to-go
#: (the estimators' own, ``outer_at``) or the task's inner-step advantages (MAML-TRPO's).
OUTER_ADVANTAGES = ("plain", "task")
#: The step size of adam and sgd when none is given (TRPO's step comes from its max KL).
DEFAULT_OUTER_LR = 0.01
#: The first 8 bytes of every PNG file: what a learning curve may replace.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class TrainResult:
    """What ``train`` returns: the configuration, one dict per iteration, the final theta."""

    config: dict[str, Any]
    iterations: list[dict[str, Any]] = field(default_factory=list)
    theta: torch.Tensor | None = None

    def curve(self, key: str = "return_after") -> list[float]:
        return [row[key] for row in self.iterations]


def train(task: Task, estimator: str = "lsf", *, iterations: int = 100, meta_batch: int = 20,
          n_inner: int = 20, n_outer: int = 20, inner_lr: float = 0.1,
          outer_lr: float | None = None, optimizer: str = "adam", seed: int = 0,
          theta: torch.Tensor | None = None, options: dict[str, Any] | None = None,
          trpo: TRPO | None = None, outer_advantages: str = "plain",
          jsonl: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
          progress: bool | Callable[[dict[str, Any]], None] | None = None,
          max_memory: int | str | None = None,
          max_work: float | None = resources.DEFAULT_MAX_WORK) -> TrainResult:
    """Meta-train theta for ``iterations`` steps; see the module docstring.

    ``estimator``: any registered estimator with a from-samples form (all built-in ones but
    ``exact``; ``loo`` only on tasks with a model). ``optimizer``: ``"adam"`` or ``"sgd"``
    with step size ``outer_lr`` (default 0.01), or ``"trpo"``: the MAML-TRPO step of
    ``training.trpo`` with the settings ``trpo`` (a ``TRPO``; default ``TRPO()``: max KL
    0.01, garage's), whose length the KL sets (no ``outer_lr``). Same seed, bit-identical
    run.

    ``outer_advantages``: what weights the outer trajectories' scores in the outer gradient
    grad V(theta') every estimator pulls back (and TRPO's line-search surrogate): ``"plain"``
    (default), the discounted reward-to-go, as the estimators compute it (``outer_at``); or
    ``"task"``, the task's own inner-step advantages (``task.advantages``: baseline, GAE,
    normalisation, fitted on the M outer trajectories of each row), as MAML-TRPO's outer
    loss does. A training-only option: a baselined, slightly biased (at finite M) estimate
    of grad V(theta') with less noise; it changes no estimator and no task. An estimator
    that samples the outer step without ``outer_at`` (``es_maml``) is refused with it.

    ``jsonl``: the log; with it, a checkpoint ``<log without suffix>.state.json`` is kept
    beside it, and calling again with the same arguments resumes an interrupted run (and
    returns a finished one's result without work). A log of another configuration is
    refused (ParameterError) and left as it is. ``plot``: a PNG learning curve written at
    the end; an existing file there must be a PNG (a previous curve) or empty, so that a
    results file is never replaced by a picture. ``progress``: ``True`` for a tqdm bar on
    stderr with an ETA and the latest returns, or a callable given each row finished in
    this call.

    ``max_memory`` (bytes or ``"8GiB"``; default half the available memory) and ``max_work``
    (trajectory steps of the whole run; None lifts it) refuse, before anything runs, a run
    whose one iteration is estimated to need more memory (``resources.training_memory``) or
    that plans more work (ResourceError). Every argument is checked before any file is
    written.
    """
    if not isinstance(task, Task):
        raise ParameterError(f"task must be a metarl_bench task (see make_task), got "
                             f"{type(task).__name__}")
    spec = estimator_spec(estimator)
    if spec.from_samples is None:
        raise UnsupportedError(f"estimator {estimator!r} has no from-samples form, so it cannot "
                               f"drive meta-training")
    if spec.needs_model:
        raise UnsupportedError(f"estimator {estimator!r} needs the exact outer value of a "
                               f"model, and meta-training samples every outer step (n_outer "
                               f"trajectories per task); choose an estimator that samples it, "
                               f"e.g. lsf or unbiased")
    iterations = validation.positive_int("iterations", iterations)
    meta_batch = validation.positive_int("meta_batch", meta_batch)
    n_inner = validation.positive_int("n_inner", n_inner)
    n_outer = validation.positive_int("n_outer", n_outer)
    inner_lr = validation.finite_float("inner_lr", inner_lr)
    seed = validation.positive_int("seed", seed, minimum=0)
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "trpo":
        if outer_lr is not None:
            raise ParameterError(f"outer_lr is the step size of adam and sgd; trpo's step "
                                 f"length comes from its max KL (trpo=TRPO(max_kl=...)), got "
                                 f"outer_lr={outer_lr!r}")
        trpo = TRPO() if trpo is None else trpo
        if not isinstance(trpo, TRPO):
            raise ParameterError(f"trpo must be a TRPO (metarl_bench._src.training.trpo), got "
                                 f"{type(trpo).__name__}")
    else:
        if trpo is not None:
            raise ParameterError(f"trpo settings are for optimizer='trpo', not {optimizer!r}")
        outer_lr = validation.finite_float(
            "outer_lr", DEFAULT_OUTER_LR if outer_lr is None else outer_lr, positive=True)
    if not isinstance(outer_advantages, str) or outer_advantages not in OUTER_ADVANTAGES:
        hint = did_you_mean(str(outer_advantages), OUTER_ADVANTAGES)
        raise ParameterError(f"outer_advantages must be one of "
                             f"{', '.join(map(repr, OUTER_ADVANTAGES))}, got "
                             f"{outer_advantages!r}.{hint}")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise ParameterError(f"progress must be True, False, None or a callable, got "
                             f"{type(progress).__name__}")
    options = dict(options or {})
    # the K-step options (truncate, wrt) shape a K-step estimate of run/evaluate; training
    # takes one inner step and moves theta, so its estimators take their form's options only
    form_options = [key for key in spec.options
                    if key not in getattr(spec.fn, "chain_options", ())]
    for key in options:
        if key not in form_options:
            if key in spec.options:
                raise ParameterError(
                    f"option {key!r} of estimator {estimator!r} is for K-step estimates "
                    f"(run, evaluate); training takes one inner step and meta-trains theta; "
                    f"its options: {', '.join(form_options) or '(none)'}")
            raise ParameterError(f"estimator {estimator!r} has no option {key!r}; options: "
                                 f"{', '.join(form_options) or '(none)'}")
    if max_work is not None:
        max_work = validation.finite_float("max_work", max_work, positive=True)
    if theta is None:
        theta = task.initial_params()
    validation.params_tensor(theta, task.param_shape, task.name)
    with resources.limit_memory(max_memory):
        check_training_resources(task, spec, iterations=iterations, meta_batch=meta_batch,
                                 n_inner=n_inner, n_outer=n_outer, options=options,
                                 dtype=theta.dtype, max_work=max_work)
    if plot is not None:
        check_plot_path(plot, "plot", log=jsonl)
    config = dict(task=task.name, task_params=task.params, estimator=estimator,
                  iterations=iterations, meta_batch=meta_batch, n_inner=n_inner,
                  n_outer=n_outer, inner_lr=inner_lr, outer_lr=outer_lr, optimizer=optimizer,
                  seed=seed, options=options, torch_version=torch.__version__)
    if trpo is not None:  # adam's and sgd's configurations (and so their logs) stay as they were
        config["trpo"] = trpo.describe()
    if outer_advantages != "plain":  # likewise: the default's configurations stay as they were
        config["outer_advantages"] = outer_advantages
    result = TrainResult(config=config)
    parameter = torch.nn.Parameter(theta.detach().clone())
    step = None if trpo is not None else (
        torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)([parameter], lr=outer_lr)
    generator = torch.Generator(device=theta.device).manual_seed(seed)
    # every check above and the files' (in TrainingFiles) come before anything is written
    files = train_state.TrainingFiles(jsonl, config, theta) if jsonl is not None else None
    try:
        finished = 0
        if files is not None:
            finished, result.iterations = files.resume.finished, list(files.resume.rows)
            files.restore(parameter, step, generator)
            files.start()
        with Progress(iterations, "train", enabled=progress is True, initial=finished,
                      unit_scale=False) as bar:
            for iteration in range(finished, iterations):
                started = time.perf_counter()
                sampled = _iteration(task, spec, parameter.detach(), meta_batch, n_inner,
                                     n_outer, inner_lr, options, generator,
                                     outer_advantages)
                row = sampled.row
                if step is not None:
                    step.zero_grad()
                    parameter.grad = -sampled.meta_gradient
                    step.step()
                else:
                    taken = trpo_step(task, parameter.detach(), sampled.meta_gradient,
                                      sampled.inner, *sampled.outer_at_adapted(spec.name),
                                      inner_lr=inner_lr, settings=trpo,
                                      advantages=sampled.outer_weights)
                    with torch.no_grad():
                        parameter.copy_(taken.theta)
                    row = {**row, **taken.row()}
                row = plain(dict(iteration=iteration, **row,
                                 seconds=time.perf_counter() - started))
                result.iterations.append(row)
                if files is not None:
                    files.record(iteration + 1, parameter.detach(), step, generator, row)
                bar.advance(1, before=f"{row['return_before']:.4g}",
                            after=f"{row['return_after']:.4g}")
                if callable(progress):
                    progress(row)
    finally:
        if files is not None:
            files.close()
    result.theta = parameter.detach().clone()
    if plot is not None:
        plot_learning_curves({estimator: result}, plot)
    return result


def check_training_resources(task: Task, spec: Any, *, iterations: int, meta_batch: int,
                             n_inner: int, n_outer: int, options: dict[str, Any],
                             dtype: torch.dtype, max_work: float | None) -> None:
    """Refuse, before anything is allocated, a run whose one iteration exceeds the memory
    limit in force or whose iterations together exceed ``max_work`` trajectory steps."""
    trajectories = spec.trajectories_per_task(n_inner, n_outer, options)
    needed, driver = resources.training_memory(task, meta_batch=meta_batch, n_inner=n_inner,
                                               n_outer=n_outer, trajectories=trajectories,
                                               dtype=dtype)
    resources.check_memory(
        needed, f"one meta-training iteration of {spec.name} on {task.name} "
        f"(meta_batch={meta_batch}, n_inner={n_inner}, n_outer={n_outer})",
        f"lower {driver}, or raise the limit (--max-memory SIZE, max_memory=)")
    resources.check_work(
        resources.training_work(task, iterations=iterations, meta_batch=meta_batch,
                                trajectories=trajectories),
        max_work, f"training {spec.name} on {task.name} ({iterations} iterations x "
        f"meta_batch {meta_batch} x {trajectories} trajectories x horizon "
        f"{resources.horizon_of(task)})",
        "lower iterations (--iterations), meta_batch (--meta-batch), n_inner (--n-inner) or "
        "n_outer (--n-outer), or lift the guard (--no-work-limit, max_work=None)")


def check_plot_path(path: Any, option: str = "plot", *,
                    log: str | os.PathLike | None = None) -> str:
    """A path the learning curve may be written to, checked without creating or changing
    anything: writable, neither the log ``log`` nor its checkpoint, and, if a file is there,
    a PNG (a previous curve, which is replaced) or empty. Any other file (a results store,
    a log) is refused rather than overwritten with a picture."""
    path = check_path(path, option)
    if log is not None:
        for other, what in ((log, "the training log"),
                            (train_state.checkpoint_path(log), "the training checkpoint")):
            if _same_file(path, os.fspath(other)):
                raise ParameterError(f"{option} {path!r} is {what}; choose another path for "
                                     f"the learning curve")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(PNG_SIGNATURE))
        except OSError as exc:
            raise ParameterError(f"{option} {path!r} cannot be read to check that it is a PNG: "
                                 f"{exc.strerror}") from None
        if head != PNG_SIGNATURE:
            raise ParameterError(f"{option} {path!r} exists and is not a PNG image; only a "
                                 f"previous learning curve (a PNG) is replaced: choose another "
                                 f"path, or remove the file")
    return path


def _same_file(first: str, second: str) -> bool:
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)  # hard links
    except OSError:  # one of them does not exist (yet)
        return False


@dataclass
class _Sampled:
    """One iteration's samples and the estimator's meta-gradient, before theta moves: the
    log row so far, the inner trajectories, each outer call's (adapted points, outer
    trajectories), and the weights of the outer scores when they are not the reward-to-go
    (``outer_advantages="task"``: one outer call's, (B, M, T))."""

    meta_gradient: torch.Tensor
    row: dict[str, Any]
    inner: Trajectories
    outer_calls: list[tuple[torch.Tensor, Trajectories]]
    outer_weights: torch.Tensor | None = None

    def outer_at_adapted(self, estimator: str) -> tuple[Trajectories, torch.Tensor]:
        """The outer trajectories sampled at the adapted parameters and those parameters,
        what a TRPO step measures its trust region on: one outer call, one row per task."""
        shapes = [tuple(points.shape) for points, _ in self.outer_calls]
        expected = (self.inner.n_rows, *self.meta_gradient.shape)
        if shapes != [expected]:
            raise UnsupportedError(
                f"trpo measures its trust region on the outer trajectories sampled at the "
                f"adapted parameters of each task ({expected}); estimator {estimator!r} "
                f"sampled outer trajectories at {shapes or 'no points'}: use adam or sgd")
        points, traj = self.outer_calls[0]
        return traj, points


class TaskAdvantageOuter(OuterStep):
    """The outer step of ``outer_advantages="task"``, handed to an estimator's form in place
    of the outer sampler: at the adapted parameters theta' (R, *P) it samples M outer
    trajectories per row (the same draws, in the same order, as the sampler would), and
    returns V (the mean discounted return, as ``outer_at``) and the gradient of
    (1/M) sum_j sum_t log pi_theta'(a_t|x_t) A_t, A_t the task's inner-step advantages
    (``advantages.inner_returns``) computed on those M trajectories. With the plain setting
    A_t is the reward-to-go, and the result is ``outer_at``'s bit for bit.

    ``calls`` records each call's (adapted points, trajectories), ``weights`` each call's A_t.
    """

    exact = False

    def __init__(self, task: Task, n_outer: int, generator: torch.Generator, estimator: str):
        self.task, self.n_outer, self.generator, self.estimator = (task, n_outer, generator,
                                                                   estimator)
        self.calls: list[tuple[torch.Tensor, Trajectories]] = []
        self.weights: list[torch.Tensor] = []

    def after(self, adapted: torch.Tensor, task_index: torch.Tensor) -> Outer:
        point = adapted.detach().requires_grad_()
        traj = self.task.sample(point.detach(), self.n_outer, task_index, self.generator)
        self.calls.append((point.detach().clone(), traj))
        weights = inner_returns(self.task, traj).detach()
        self.weights.append(weights)
        return sampled_outer(self.task, point, traj, weights)

    def __call__(self, adapted: torch.Tensor, index: torch.Tensor) -> Trajectories:
        raise UnsupportedError(self.refusal("samples the outer trajectories itself"))

    def refusal(self, why: str) -> str:
        return (f"estimator {self.estimator!r} {why}, not through outer_at, so it would "
                f"ignore outer_advantages='task'; use outer_advantages='plain' or another "
                f"estimator")


def _success_rate(batches: list[Trajectories]) -> float | None:
    """The fraction of trajectories whose success flag was ever set (None: no flag)."""
    if not batches or any(traj.success is None for traj in batches):
        return None
    ever = torch.cat([traj.success.any(-1).reshape(-1) for traj in batches])
    return float(ever.to(torch.float64).mean())


def _iteration(task: Task, spec: Any, theta: torch.Tensor, meta_batch: int, n_inner: int,
               n_outer: int, inner_lr: float, options: dict[str, Any],
               generator: torch.Generator, outer_advantages: str = "plain") -> _Sampled:
    task_index = torch.randint(task.n_tasks, (meta_batch,), generator=generator,
                               device=generator.device).to(theta.device)
    inner = task.sample(theta.expand(meta_batch, *theta.shape), n_inner, task_index, generator)
    outer_calls: list[tuple[torch.Tensor, Trajectories]] = []
    outer_weights = None
    if outer_advantages == "task":
        outer: Any = TaskAdvantageOuter(task, n_outer, generator, spec.name)
        outer_calls = outer.calls
    else:
        def outer(adapted: torch.Tensor, index: torch.Tensor) -> Trajectories:
            traj = task.sample(adapted, n_outer, index, generator)
            outer_calls.append((adapted.detach().clone(), traj))
            return traj

    estimates = spec.from_samples(task, theta, inner, inner_lr=inner_lr, outer=outer,
                                  **options).detach()
    if outer_advantages == "task":
        if not outer_calls:
            raise UnsupportedError(outer.refusal("did not take its outer step"))
        if len(outer.weights) == 1:
            outer_weights = outer.weights[0]
    if not torch.isfinite(estimates).all():
        raise UnsupportedError(f"estimator {spec.name!r} returned non-finite meta-gradients; "
                               f"lower inner_lr or outer_lr")
    meta_gradient = estimates.mean(0)
    outer_batches = [traj for _, traj in outer_calls]
    after = torch.cat([traj.rewards.sum(-1).reshape(-1) for traj in outer_batches])
    row = dict(return_before=float(inner.rewards.sum(-1).mean()),
               return_after=float(after.mean()),
               grad_norm=float(meta_gradient.norm()))
    success_before, success_after = _success_rate([inner]), _success_rate(outer_batches)
    if success_before is not None and success_after is not None:
        row.update(success_before=success_before, success_after=success_after)
    return _Sampled(meta_gradient, row, inner, outer_calls, outer_weights)


def load_training(path: str | os.PathLike) -> TrainResult:
    """Read the JSON lines written by ``train(jsonl=...)`` (a torn last line, cut short by
    a crash, is ignored)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ParameterError(f"cannot read training log {path}: {exc.strerror}") from None
    contents = train_state.parse_log(path, data)
    if contents.header is None:
        raise ParameterError(f"{path}: no header line")
    return TrainResult(config=contents.header, iterations=contents.rows)


def plot_learning_curves(results: dict[str, TrainResult], path: str | os.PathLike) -> None:
    """Return before (dashed) and after (solid) adaptation per iteration, in each
    estimator's colour (as in the reports), written as a PNG on an Agg canvas (no display
    needed; pyplot and the global backend are left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, result in results.items():
        colour = estimator_colour(result.config.get("estimator", label))
        steps = [row["iteration"] for row in result.iterations]
        axes.plot(steps, result.curve("return_after"), color=colour,
                  label=f"{label}: after adaptation")
        axes.plot(steps, result.curve("return_before"), color=colour, linestyle="--",
                  label=f"{label}: before")
    first = next(iter(results.values())).config
    axes.set_xlabel("meta-iteration")
    axes.set_ylabel("mean return per trajectory")
    axes.set_title(f"{first['task']}: meta-batch {first['meta_batch']}, N={first['n_inner']}, "
                   f"M={first['n_outer']}, inner lr {first['inner_lr']}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")
