"""The ``metarl-bench`` command line: ``list``, ``run``, ``sweep``, ``train``, ``check``,
``report`` and ``reproduce``; one parser function per command names its handler.

Bad input exits with code 2 and one line on stderr, never a traceback. Every argument is
checked before any file is opened, so a rejected command leaves every file as it was.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from typing import Any, Sequence

import torch

from metarl_bench._src.core.errors import MetaRLBenchError, ParameterError, UnsupportedError
from metarl_bench._src.core.validation import parse_assignment
from metarl_bench._src.evaluation.config import CellConfig
from metarl_bench._src.evaluation.evaluate import TARGET_METRICS
from metarl_bench._src.gate.compare import DEFAULT_FACTOR
from metarl_bench._src.reporting import reproductions

#: The headline comparison of ``metarl-bench run`` with no --task (reproductions.HEADLINE).
HEADLINE_ESTIMATORS = ",".join(reproductions.HEADLINE_ESTIMATORS)
HEADLINE_N = ",".join(map(str, reproductions.HEADLINE_N))
HEADLINE_TRIALS = reproductions.HEADLINE_TRIALS
#: Where ``metarl-bench run`` keeps its results store and report unless told otherwise.
DEFAULT_OUT = "metarl-bench-results"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _task_param(text: str) -> tuple[str, Any]:
    try:
        return parse_assignment(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every N must be an integer >= 1, got {text!r}")
    return values


def _int_at_least(minimum: int, what: str, maximum: float = math.inf):
    """An argparse type: an integer from ``minimum`` to ``maximum``, described as ``what`` in
    errors."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "an integer >= 0")
#: More threads than CPUs only makes the timed calls fight over them (and torch crashes on
#: absurd counts such as 100000).
_threads = _int_at_least(1, f"an integer from 1 to {os.cpu_count() or 1} (the CPUs of this "
                            f"machine)", os.cpu_count() or 1)


def _float(text: str) -> float:
    """A finite number: NaN or infinity would silently disable comparisons."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _size(text: str) -> int:
    from metarl_bench._src.core.resources import parse_bytes

    try:
        return parse_bytes("--max-memory", text)
    except MetaRLBenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_guards(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that run cells: the results store, guards, progress."""
    parser.add_argument("--force", action="store_true",
                        help="recompute cells already in the results file (appended again; "
                             "the latest line wins when read)")
    _add_limits(parser, "a cell")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (shown on a terminal by default)")


def _add_limits(parser: argparse.ArgumentParser, unit: str) -> None:
    """The memory and work guards' flags; ``unit``: what one memory estimate is of."""
    parser.add_argument("--max-memory", type=_size, metavar="SIZE",
                        help=f"refuse {unit} estimated to need more memory, e.g. 8GiB "
                             f"(default: half of the available memory)")
    parser.add_argument("--no-work-limit", action="store_true",
                        help="run even when the planned trajectory steps exceed the guard "
                             "(1e10 by default)")


def _task_arguments(parser: argparse.ArgumentParser, *, help: str,
                    required: bool = False) -> None:
    parser.add_argument("--task", required=required, help=help)
    parser.add_argument("--task-param", action="append", type=_task_param, default=[],
                        metavar="KEY=VALUE",
                        help="task parameter, repeatable (JSON or a,b,c lists)")


#: Each command's one-line summary (``metarl-bench --help``) and description.
COMMANDS = {
    "list": (
        "list registered tasks and estimators",
        "List registered tasks and estimators."),
    "run": (
        "bias / variance / MSE / cosine of estimators over a grid of N",
        "Compare estimators against the exact (or estimated) meta-gradient. With no "
        "--task: the headline comparison on a bandit and a tabular MDP."),
    "sweep": (
        "run a grid of cells from a TOML or YAML spec, on Dask",
        "Run every cell of a sweep spec (tasks x estimators x N x inner_lr x "
        "seeds ...) as independent seeded jobs: on a local Dask cluster by default, "
        "on an existing one with --scheduler, or in this process with --serial. "
        "Results stream into the store as cells finish; a re-run resumes."),
    "train": (
        "meta-train a policy with one estimator; JSON lines and a PNG curve",
        "Meta-train the initial parameters with an estimator's meta-gradient "
        "(outer Adam, SGD or TRPO); log the return before and after adaptation per "
        "iteration as JSON lines and draw the learning curve as a PNG."),
    "check": (
        "compare the working tree with a baseline: statistics, time, memory",
        "Measure every estimator on a fixed seeded grid, here and in a baseline "
        "(a git revision or a suite JSON saved with --save), and fail on a "
        "regression: bias/variance/MSE worse beyond their confidence intervals, "
        "or time/memory beyond --factor. Against a revision, the two trees are "
        "timed in turn, round by round, so machine load affects both alike; "
        "against a saved file, times are shown but not gated."),
    "report": (
        "PNG figures and a self-contained HTML page of a results file",
        "Plot bias, variance and MSE against N (log-log, with 95% bands and "
        "fitted slopes), efficiency per unit of work and cost, and write them with "
        "the tables into one HTML page that needs no network."),
    "reproduce": (
        "regenerate a published comparison's figures into a folder",
        "Run a published comparison with its seeds into DIR/results.jsonl "
        "(resuming what is there) and write its report into DIR. Available: "
        + ", ".join(reproductions.REPRODUCTIONS) + "."),
}


def _command(commands: Any, name: str, handler: Any) -> argparse.ArgumentParser:
    """The sub-parser of one command, which runs ``handler(args)``."""
    summary, description = COMMANDS[name]
    parser = commands.add_parser(name, help=summary, description=description)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-parser per command, each naming its handler."""
    parser = _Parser(prog="metarl-bench",
                     description="Benchmark meta-gradient estimators against exact ground truth.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for add in (_list_parser, _run_parser, _sweep_parser, _train_parser, _check_parser,
                _report_parser, _reproduce_parser):
        add(commands)
    return parser


def _list_parser(commands: Any) -> None:
    listing = _command(commands, "list", _list)
    listing.add_argument("--tasks", action="store_true",
                         help="the tasks only, each with the settings 'run --task ID' uses "
                              "by default")


def _run_parser(commands: Any) -> None:
    run = _command(commands, "run", _run)
    _task_arguments(run, help="task id (default: the headline bandit and tabular MDP)")
    run.add_argument("--estimators", default=HEADLINE_ESTIMATORS,
                     help=f"comma-separated NAME or NAME:KEY=VALUE,... entries, e.g. "
                          f"lsf,unbiased:baseline=0.5,decomposed:inner=maml,hessian=lsf "
                          f"(default: {HEADLINE_ESTIMATORS})")
    run.add_argument("--n-steps", type=_positive_int, default=CellConfig.n_steps,
                     help="inner adaptation steps K, fresh trajectories at each (default: 1)")
    run.add_argument("--wrt", choices=("theta", "inner_lr", "all"), default=CellConfig.wrt,
                     help="the meta-gradient of theta, of the inner step size, or of both "
                          "(default: theta)")
    run.add_argument("--n-inner", type=_int_list, default=None,
                     help=f"inner trajectories N, comma-separated (default: the task's, see "
                          f"'list --tasks'; {HEADLINE_N} for the headline)")
    run.add_argument("--trials", type=_positive_int, default=None,
                     help=f"independent estimates per cell; with --target-rel-ci, the first "
                          f"batch (default: the task's; {HEADLINE_TRIALS} for the headline)")
    run.add_argument("--target-rel-ci", type=_float, default=None, metavar="WIDTH",
                     help="adaptive trials: add estimates to each cell until the 95%% interval "
                          "of --target-metric is at most WIDTH times its value (e.g. 0.1), or "
                          "--max-trials is reached")
    run.add_argument("--max-trials", type=_positive_int, default=None,
                     help="cap on a cell's adaptive trials (default: 16 x --trials)")
    run.add_argument("--target-metric", choices=TARGET_METRICS,
                     default=CellConfig.target_metric,
                     help="the metric whose interval --target-rel-ci targets (default: mse)")
    run.add_argument("--inner-lr", type=_float, default=None,
                     help="inner step size (default: the task's, e.g. 1e-3 on MuJoCo; 2.0 on "
                          "the headline bandit)")
    run.add_argument("--n-outer", type=_positive_int, default=None,
                     help="outer trajectories M (default: the task's: the exact outer value "
                          "and gradient where it has a model)")
    run.add_argument("--seed", type=_seed, default=CellConfig.seed, help="seed (default: 0)")
    run.add_argument("--truth", choices=("finite", "limit"), default=CellConfig.truth,
                     help="compare against grad F_N (finite) or grad F_inf (limit)")
    run.add_argument("--truth-samples", type=_positive_int, default=None,
                     help=f"samples of an estimated finite truth: leave-one-out with a model, "
                          f"unbiased with --n-outer without one (default: the task's; "
                          f"{CellConfig.truth_samples} for the headline)")
    run.add_argument("--monte-carlo", action="store_true",
                     help="use Monte Carlo moments even where exact enumeration is possible")
    run.add_argument("--dtype", choices=("float64", "float32"), default=CellConfig.dtype)
    run.add_argument("--device", default=CellConfig.device, help="torch device (default: cpu)")
    run.add_argument("--json", metavar="PATH",
                     help="results store (JSON lines): each cell is appended as it finishes, "
                          "and a re-run skips the cells already there (default: "
                          "OUT/results.jsonl)")
    run.add_argument("--out", metavar="DIR",
                     help=f"folder of the report (PNG figures and index.html), and of the "
                          f"results store unless --json is given (default: {DEFAULT_OUT}, or "
                          f"beside --json PATH as PATH without its suffix + '-report')")
    run.add_argument("--no-report", action="store_true",
                     help="print the tables only: no figures, no HTML page")
    _add_guards(run)


def _sweep_parser(commands: Any) -> None:
    sweep = _command(commands, "sweep", _sweep)
    sweep.add_argument("spec", metavar="SPEC", help="sweep spec, .toml or .yaml")
    sweep.add_argument("--json", metavar="PATH",
                       help="results store (default: the spec's 'output')")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of a running Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--serial", action="store_true", help="run the cells in this process")
    sweep.add_argument("--workers", type=_positive_int, default=None,
                       help="worker processes of the local cluster (default: one per core)")
    _add_guards(sweep)


def _train_parser(commands: Any) -> None:
    train = _command(commands, "train", _train)
    _task_arguments(train, help="task id, e.g. navigation2d-v0", required=True)
    train.add_argument("--estimator", default="lsf", help="estimator name (default: lsf)")
    train.add_argument("--iterations", type=_positive_int, default=100,
                       help="meta-iterations (default: 100)")
    train.add_argument("--meta-batch", type=_positive_int, default=20,
                       help="tasks per meta-iteration (default: 20)")
    train.add_argument("--n-inner", type=_positive_int, default=20,
                       help="inner trajectories N per task (default: 20)")
    train.add_argument("--n-outer", type=_positive_int, default=20,
                       help="outer trajectories M per task (default: 20)")
    train.add_argument("--inner-lr", type=_float, default=0.1,
                       help="inner step size (default: 0.1)")
    train.add_argument("--outer-lr", type=_float, default=None,
                       help="outer step size of adam and sgd (default: 0.01)")
    train.add_argument("--outer", "--optimizer", dest="optimizer",
                       choices=("adam", "sgd", "trpo"), default="adam",
                       help="outer step: adam, sgd, or trpo (MAML-TRPO: natural gradient in a "
                            "KL trust region; --max-kl) (default: adam)")
    train.add_argument("--max-kl", type=_float, default=None,
                       help="trpo's trust region, the mean KL of the adapted policies a step "
                            "may reach (default: 0.01)")
    train.add_argument("--outer-advantages", choices=("plain", "task"), default="plain",
                       help="what weights the outer trajectories' scores in the outer "
                            "gradient: plain, the reward-to-go (the estimators' own), or task, "
                            "the task's inner-step advantages (baseline, GAE, normalisation), "
                            "as MAML-TRPO (default: plain)")
    train.add_argument("--seed", type=_seed, default=0, help="seed (default: 0)")
    train.add_argument("--json", metavar="PATH", default="train.jsonl",
                       help="JSON lines log, one line per iteration, with a checkpoint beside "
                            "it (PATH without its suffix + '.state.json'); the same command "
                            "again resumes an interrupted run (default: train.jsonl)")
    train.add_argument("--plot", metavar="PATH", default=None,
                       help="PNG learning curve (default: the --json path with .png)")
    train.add_argument("--quiet", action="store_true",
                       help="no progress bar (shown on a terminal by default) and no "
                            "per-iteration lines")
    _add_limits(train, "a run whose one iteration is")


def _check_parser(commands: Any) -> None:
    check = _command(commands, "check", _check)
    check.add_argument("--baseline", metavar="REV|FILE",
                       help="git revision (e.g. HEAD~1, main) or suite JSON file")
    check.add_argument("--save", metavar="PATH", help="also save this tree's suite as JSON")
    check.add_argument("--estimators",
                       help="subset, as for run: NAME or NAME:KEY=VALUE,... entries "
                            "(default: all registered)")
    check.add_argument("--rounds", type=_positive_int, default=5,
                       help="interleaved timed rounds per estimator; the median of the "
                            "per-round ratios is compared (default: 5)")
    check.add_argument("--threads", type=_threads, default=1,
                       help="torch intra-op threads while measuring, at most the CPUs "
                            "(default: 1)")
    check.add_argument("--factor", type=_float, default=DEFAULT_FACTOR,
                       help=f"time/memory ratio that fails (default: {DEFAULT_FACTOR})")
    check.add_argument("--z", type=_float, default=3.0,
                       help="joint standard errors a statistic may worsen by (default: 3)")
    check.add_argument("--all", action="store_true", help="show unchanged rows too")
    check.add_argument("--quiet", action="store_true", help="no progress bar")


def _report_parser(commands: Any) -> None:
    report = _command(commands, "report", _report)
    report.add_argument("results", metavar="RESULTS", help="results file (JSON lines)")
    report.add_argument("-o", "--out", metavar="DIR",
                        help="output folder (default: RESULTS without its suffix + '-report')")


def _reproduce_parser(commands: Any) -> None:
    reproduce = _command(commands, "reproduce", _reproduce)
    reproduce.add_argument("name", metavar="NAME",
                           help=f"one of: {', '.join(reproductions.REPRODUCTIONS)}")
    reproduce.add_argument("-o", "--out", metavar="DIR",
                           help="output folder (default: reproduce-NAME)")
    reproduce.add_argument("--quiet", action="store_true",
                           help="no progress bar (shown on a terminal by default)")


def _check(args: argparse.Namespace) -> int:
    from metarl_bench._src.gate.command import run_check

    if args.baseline is None and args.save is None:
        raise ParameterError("check needs --baseline REV|FILE, --save PATH, or both")
    if not args.factor > 1:  # written so that NaN fails too
        raise ParameterError(f"--factor must be > 1, got {args.factor}")
    if not args.z > 0:
        raise ParameterError(f"--z must be > 0, got {args.z}")
    if args.save:
        from metarl_bench._src.gate.command import check_save

        check_save(args.save)
    estimators = ([entry.label for entry in _estimator_entries(args.estimators)]
                  if args.estimators else None)
    from metarl_bench._src.core.progress import wanted

    return run_check(args.baseline, estimators=estimators, rounds=args.rounds,
                     threads=args.threads, z=args.z, factor=args.factor, save=args.save,
                     show_all=args.all, progress=wanted(args.quiet))


def _estimator_entries(text: str) -> list[Any]:
    """A --estimators value (grammar: metarl_bench._src.estimators.entries), every entry
    checked against the registry and its estimator's options."""
    from metarl_bench._src.estimators.entries import resolve_all, split_entries

    return resolve_all(split_entries(text))


def _writable(path: str, option: str) -> str:
    """A path the command may write at its end, checked now without creating or changing it."""
    from metarl_bench._src.core.files import check_path

    return check_path(path, option)


def _list(args: argparse.Namespace) -> int:
    from metarl_bench._src.core.registry import estimator_spec, list_estimators, list_tasks, TASKS

    width = max(map(len, [*list_tasks(), *list_estimators()]))
    print("tasks:")
    for name in list_tasks():
        print(f"  {name:<{width}} {TASKS[name].summary}")
        if args.tasks:
            print(f"  {'':<{width}} run defaults: {TASKS[name].defaults.describe()}")
    if args.tasks:
        return 0
    print("estimators:")
    for name in list_estimators():
        print(f"  {name:<{width}} {estimator_spec(name).summary}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from metarl_bench._src.core import resources
    from metarl_bench._src.core.files import check_folder, make_folder
    from metarl_bench._src.core.progress import Progress, wanted
    from metarl_bench._src.core.registry import RunDefaults, make_task, task_spec
    from metarl_bench._src.evaluation.evaluate import (check_plans, plan, run_plans,
                                                       unmatched_lines)
    from metarl_bench._src.evaluation.store import Store

    estimators = [entry.label for entry in _estimator_entries(args.estimators)]
    if args.task is None:
        if args.task_param:
            raise ParameterError("--task-param needs --task")
        grid = [(name, dict(params),
                 RunDefaults(inner_lr=lr, n_inner=reproductions.HEADLINE_N,
                             n_trials=HEADLINE_TRIALS, truth_samples=CellConfig.truth_samples))
                for name, params, lr in reproductions.HEADLINE]
    else:
        grid = [(args.task, dict(args.task_param), task_spec(args.task).defaults)]
    with resources.limit_memory(args.max_memory):
        # every task, cell and guard is checked before the results file is opened
        plans = [plan(make_task(name, **params), estimators, **_settings(args, defaults),
                      seed=args.seed, truth=args.truth, exact=not args.monte_carlo,
                      dtype=getattr(torch, args.dtype), device=args.device,
                      n_steps=args.n_steps, target_rel_ci=args.target_rel_ci,
                      max_trials=args.max_trials, target_metric=args.target_metric,
                      wrt=args.wrt)
                 for name, params, defaults in grid]
        in_out = args.json is None
        if args.out is None:
            args.out = (DEFAULT_OUT if in_out else os.path.splitext(args.json)[0] + "-report")
        if not args.no_report:
            from metarl_bench._src.reporting.html import check_report_folder

            check_report_folder(args.out, "--out")
        elif in_out:  # --no-report with --json elsewhere: nothing is written into --out
            check_folder(args.out, "--out")
        if in_out:
            args.json = os.path.join(args.out, "results.jsonl")
        # the default store lives in --out; if that folder is still to be made the store is
        # empty, and the folder is created only once every check has passed, so a refused
        # command leaves no folder behind
        store = (None if in_out and not os.path.isdir(args.out)
                 else Store(args.json, option="--json"))
        total = check_plans(plans, store, args.force, _max_work(args))
        if store is None:
            make_folder(args.out, "--out")
            store = Store(args.json, option="--json")
    note = unmatched_lines(store, [checked.task for checked in plans])
    if note is not None:
        print(f"metarl-bench: {note}", file=sys.stderr)
    _announce(plans, total, store, args.force)
    lines_before = _lines_in(args.json)
    started = [time.perf_counter()]

    def announce(result: Any) -> None:
        print(result.table())
        print(f"({time.perf_counter() - started[0]:.1f} s)\n", flush=True)
        started[0] = time.perf_counter()

    try:
        with Progress(total, "run", enabled=wanted(args.quiet), unit="traj") as bar:
            results = run_plans(plans, store, args.force, bar.advance, on_result=announce)
    except KeyboardInterrupt:
        return _interrupted(args.json, lines_before)
    _note_short_cells(results)
    print(f"results: {args.json}")
    if not args.no_report:
        from metarl_bench._src.reporting.html import write_report

        page = write_report(results, args.out, source=args.json)
        print(f"report:  {page} (figures in {args.out})")
    problems = [r for result in results for r in result.records if r.get("problem")]
    if problems:
        first = problems[0]
        raise UnsupportedError(
            f"{len(problems)} cells have no statistics (e.g. {first['estimator']} at "
            f"N={first['n_inner']}: {first['problem']}); see the table")
    return 0


#: A run planned to take longer than this (seconds) says its size and duration first.
ANNOUNCE_SECONDS = 60.0


def _announce(plans: Sequence[Any], total: float, store: Any, force: bool) -> None:
    """One line before a long run starts: its cells, trajectories and the time they should
    take at the pace of a pilot call on this machine (shown even with --quiet: a run of
    many minutes should never start silently)."""
    from metarl_bench._src.evaluation.evaluate import pending, planned_seconds

    seconds, cells = 0.0, 0
    for checked in plans:
        configs = pending(checked, store, force)
        cells += len(configs)
        seconds += planned_seconds(checked, configs, announce=ANNOUNCE_SECONDS)
    if seconds > ANNOUNCE_SECONDS:
        print(f"metarl-bench: planned {cells} cells, {total:.3g} trajectories; about "
              f"{_duration(seconds)} at this machine's pace (a pilot call); --quiet hides the "
              f"progress bar, Ctrl-C keeps the finished cells", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _settings(args: argparse.Namespace, defaults: Any) -> dict[str, Any]:
    """The sizes of a run: each flag given, else the task's default (``RunDefaults``)."""
    given = dict(inner_lr=args.inner_lr, n_inner=args.n_inner, n_trials=args.trials,
                 n_outer=args.n_outer, truth_samples=args.truth_samples)
    return {name: getattr(defaults, name) if value is None else value
            for name, value in given.items()}


def _note_short_cells(results: Sequence[Any]) -> None:
    """One line on stderr when adaptive cells stopped at their cap short of their target."""
    short = [r for result in results for r in result.records
             if r.get("target_reached") is False and not r.get("problem")]
    if not short:
        return
    widest = max(short, key=lambda r: r["rel_ci"] if r["rel_ci"] is not None else math.inf)
    estimated = any(r.get("truth_kind") == "estimated" for r in short)
    print(f"note: {len(short)} cells stopped at --max-trials before their "
          f"{widest['target_metric']} interval reached {widest['target_rel_ci']:g} of its "
          f"value (widest: {widest['estimator']} at N={widest['n_inner']}, "
          f"{_width(widest['rel_ci'])}); raise --max-trials"
          + (" (or --truth-samples: the estimated truth's own error widens the bias and "
             "MSE intervals too)" if estimated else ""), file=sys.stderr)


def _max_work(args: argparse.Namespace) -> float | None:
    from metarl_bench._src.core import resources

    return None if args.no_work_limit else resources.DEFAULT_MAX_WORK


def _lines_in(path: str) -> int:
    from metarl_bench._src.evaluation.store import read_lines

    return sum(1 for _ in read_lines(path))


def _interrupted(path: str, lines_before: int) -> int:
    """Ctrl-C in run or sweep: one line counting the finished cells kept, exit 130. The count
    is read back from the file (lines, so that --force re-runs count too): an interrupt
    between a cell's write and any counter kept here would miss that cell."""
    finished = _lines_in(path) - lines_before
    print(f"metarl-bench: interrupted; {finished} finished cells of this run kept in {path}: "
          f"the same command resumes", file=sys.stderr)
    return 130


def _sweep(args: argparse.Namespace) -> int:
    from metarl_bench._src.core import resources
    from metarl_bench._src.core.progress import wanted
    from metarl_bench._src.core.files import check_folder, make_folder
    from metarl_bench._src.evaluation.evaluate import unmatched_lines
    from metarl_bench._src.evaluation.store import Store
    from metarl_bench._src.evaluation.sweep import (build, check_sweep, check_workers,
                                                    read_spec, run_sweep, sweep_results)

    check_workers(args.workers, args.scheduler)
    with resources.limit_memory(args.max_memory, name="--max-memory"):
        sweep = build(read_spec(args.spec), source=args.spec)
        output = args.json if args.json is not None else sweep.output
        if output is None:
            raise ParameterError(f"{args.spec}: no 'output' in the spec; name the results "
                                 f"store with --json PATH")
        option = "--json" if args.json is not None else "output"
        folder = os.path.dirname(output)
        if folder and not os.path.isdir(folder):
            # made, as run makes its --out, only once every check has passed (against the
            # empty store a new folder holds)
            check_folder(folder, option)
            check_sweep(sweep, None, force=args.force, serial=args.serial,
                        scheduler=args.scheduler, workers=args.workers,
                        max_work=_max_work(args))
            make_folder(folder, option)
        store = Store(output, option=option)
        note = unmatched_lines(store, [checked.task for checked in sweep.plans])
        if note is not None:
            print(f"metarl-bench: {note}", file=sys.stderr)
        lines_before = _lines_in(output)

        def log(text: str) -> None:
            if not args.quiet:
                print(text, file=sys.stderr, flush=True)

        try:
            computed, kept = run_sweep(sweep, store, force=args.force, serial=args.serial,
                                       scheduler=args.scheduler, workers=args.workers,
                                       max_work=_max_work(args), progress=wanted(args.quiet),
                                       log=log)
        except KeyboardInterrupt:
            return _interrupted(output, lines_before)
    for result in sweep_results(sweep, store):
        print(result.table() + "\n")
    print(f"{computed} cells computed, {kept} already in the store; results: {output}")
    return 0


def _width(value: float | None) -> str:
    return "no finite interval" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _train(args: argparse.Namespace) -> int:
    from metarl_bench._src.core.progress import wanted
    from metarl_bench._src.core.registry import make_task
    from metarl_bench._src.training.train import check_plot_path, train
    from metarl_bench._src.training.state import checkpoint_path, finished_iterations
    from metarl_bench._src.training.trpo import TRPO

    entries = _estimator_entries(args.estimator)
    if len(entries) != 1 or entries[0].options:
        raise ParameterError(f"--estimator names one estimator (no options), got "
                             f"{args.estimator!r}")
    estimator = [entries[0].spec.name]
    # an empty --plot is refused like an empty --json, not read as "the default"
    plot = args.plot if args.plot is not None else os.path.splitext(args.json)[0] + ".png"
    _writable(args.json, "--json")
    _writable(checkpoint_path(args.json), "--json's checkpoint")
    if args.plot is None and os.path.splitext(args.json)[1].lower() == ".png":
        raise ParameterError(f"--json {args.json!r} ends in .png, where the learning curve goes "
                             f"when no --plot is given; name the log e.g. train.jsonl, or give "
                             f"--plot PATH")
    check_plot_path(plot, "--plot", log=args.json)
    if args.max_kl is not None and args.optimizer != "trpo":
        raise ParameterError(f"--max-kl is trpo's trust region; it needs --outer trpo, not "
                             f"--outer {args.optimizer}")
    trpo = None
    if args.optimizer == "trpo":
        trpo = TRPO() if args.max_kl is None else TRPO(max_kl=args.max_kl)
    task = make_task(args.task, **dict(args.task_param))
    reported: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        # said with the first row, not before: a refused resume must print its one line only
        if not reported:
            reported.append(row)
            print(f"training {task!r} with {estimator[0]} ...", file=sys.stderr, flush=True)
        success = (f", success {row['success_before']:.3g} -> {row['success_after']:.3g}"
                   if "success_after" in row else "")
        step = (f", KL {row['kl']:.3g}, step {row['step_fraction']:.3g}" if row.get("accepted")
                else ", step rejected" if "accepted" in row else "")
        print(f"  iteration {row['iteration']:>4}: return before {row['return_before']:.4g}, "
              f"after {row['return_after']:.4g}{success}{step}", file=sys.stderr, flush=True)

    # a bar on a terminal; elsewhere (CI logs) one line per iteration, so a log shows life
    progress = True if wanted(args.quiet) else None if args.quiet else report
    try:
        result = train(task, estimator[0], iterations=args.iterations,
                       meta_batch=args.meta_batch, n_inner=args.n_inner, n_outer=args.n_outer,
                       inner_lr=args.inner_lr, outer_lr=args.outer_lr,
                       optimizer=args.optimizer, seed=args.seed, jsonl=args.json, plot=plot,
                       trpo=trpo, outer_advantages=args.outer_advantages,
                       progress=progress, max_memory=args.max_memory,
                       max_work=_max_work(args))
    except KeyboardInterrupt:
        print(f"metarl-bench: interrupted; {finished_iterations(args.json)} finished iterations "
              f"kept in {args.json}: the same command resumes", file=sys.stderr)
        return 130
    first, last = result.iterations[0], result.iterations[-1]
    print(f"return after adaptation: {first['return_after']:.4g} (iteration 0) -> "
          f"{last['return_after']:.4g} (iteration {last['iteration']})")
    print(f"log: {args.json}\nlearning curve: {plot}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from metarl_bench._src.evaluation.evaluate import load_results
    from metarl_bench._src.core.files import make_folder
    from metarl_bench._src.reporting.html import check_report_folder, write_report

    if not os.path.isfile(args.results):
        raise ParameterError(f"no results file {args.results!r}")
    results = load_results(args.results)
    if not any(result.records for result in results):
        raise ParameterError(f"{args.results!r} holds no results to report")
    folder = os.path.splitext(args.results)[0] + "-report" if args.out is None else args.out
    check_report_folder(folder, "-o/--out")
    folder = make_folder(folder, "-o/--out")
    page = write_report(results, folder, source=args.results)
    print(f"report: {page} (figures in {folder})")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from metarl_bench._src.core.errors import unknown_name
    from metarl_bench._src.core.progress import wanted
    from metarl_bench._src.reporting.html import check_report_folder

    if args.name not in reproductions.REPRODUCTIONS:
        raise unknown_name("reproduction", args.name, reproductions.REPRODUCTIONS)
    folder = f"reproduce-{args.name}" if args.out is None else args.out
    check_report_folder(folder, "-o/--out")

    page = reproductions.reproduce(args.name, folder, progress=wanted(args.quiet))
    print(f"report: {page}")
    return 0


#: The flag that sets each API argument a refusal may name (run's and train's).
API_FLAGS = {"n_trials": "--trials", "n_outer": "--n-outer", "n_inner": "--n-inner",
             "n_steps": "--n-steps", "truth": "--truth", "truth_samples": "--truth-samples",
             "n_samples": "--truth-samples", "inner_lr": "--inner-lr",
             "max_trials": "--max-trials", "target_rel_ci": "--target-rel-ci",
             "target_metric": "--target-metric", "meta_batch": "--meta-batch",
             "outer_lr": "--outer-lr", "max_memory": "--max-memory", "max_kl": "--max-kl",
             "outer_advantages": "--outer-advantages"}


def flag_words(message: str) -> str:
    """A refusal raised by the API, worded for the command line: each argument it names
    becomes its flag (``pass n_outer=M`` -> ``pass --n-outer M``, ``n_outer=None`` -> ``no
    --n-outer``); where the message already names both (``n_trials (--trials)``), the flag
    alone stays."""
    names = "|".join(sorted(API_FLAGS, key=len, reverse=True))
    message = re.sub(rf"\b({names}) \((--[a-z-]+)\)", r"\2", message)
    message = re.sub(r"\((--max-memory SIZE), max_memory=\)", r"(\1)", message)
    message = re.sub(r"max_memory= / --max-memory|--max-memory / max_memory", "--max-memory",
                     message)
    message = re.sub(rf"\b(?:use|pass) ({names})=None\b",
                     lambda m: f"leave out {API_FLAGS[m.group(1)]}", message)
    message = re.sub(rf"(?<![\w-])({names})=None\b",
                     lambda m: f"no {API_FLAGS[m.group(1)]}", message)
    message = re.sub(rf"(?<![\w-])({names})=('?)([\w.+-]+)\2",
                     lambda m: f"{API_FLAGS[m.group(1)]} {m.group(3)}", message)
    # a bare name only where it cannot be a plain word ("the truth") or a keyword's name
    bare = "|".join(sorted((n for n in API_FLAGS if n not in ("truth", "n_steps")), key=len,
                           reverse=True))
    return re.sub(rf"(?<![\w-])({bare})\b(?![=(])", lambda m: API_FLAGS[m.group(1)],
                  message)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MetaRLBenchError as exc:
        message = flag_words(str(exc)) if args.command in ("run", "train") else str(exc)
        print(f"metarl-bench: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # run and sweep say what they kept; no traceback for the rest
        print("metarl-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
