"""Registries of estimators and tasks (STYLE.md rule 5).

Estimators: ``register_estimator(name, fn)`` or ``@register_estimator(name)``. Third-party
packages add entries through the entry-point group ``metarl_bench.estimators`` (entry name =
estimator name, object = the estimator function); they are loaded on first use.

Tasks: ``register_task(id, entry_point="module:factory", defaults=RunDefaults(...))``, ids
versioned ``name-vN``; the factory is imported only when the task is made. Entry-point group
``metarl_bench.tasks``. A task's identity is every argument its factory was called with
(``make_task`` binds the full signature, as Gymnasium's ``EnvSpec.kwargs``): see
:func:`task_identity`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Protocol

import torch

from metarl_bench._src.core.errors import (MetaRLBenchError, ParameterError, RegistrationError,
                                           UnknownNameError, did_you_mean, unknown_name)


class Estimator(Protocol):
    """What every registered estimator is: batched, seeded meta-gradient estimates.

    Returns a tensor of shape (n_trials, *theta.shape): one independent estimate of the
    meta-gradient per row, in theta's dtype and on theta's device.
    """

    def __call__(self, task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float,
                 n_trials: int, n_outer: int | None = None,
                 generator: torch.Generator | None = None, **options: Any) -> torch.Tensor: ...


def summary_of(documented: Any) -> str:
    """The first sentence of a docstring, whole: a sentence that runs onto a second line is
    joined, not cut at the line's end (as ``metarl-bench list`` once showed two tasks)."""
    paragraph = " ".join((inspect.getdoc(documented) or "").split("\n\n")[0].split())
    sentence = re.match(r"(.+?[.!?])(?=\s+[A-Z`(]|$)", paragraph)
    return sentence.group(1) if sentence else paragraph


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator.

    ``from_samples``: the same estimator on given inner trajectories (used for exact
    moments by enumeration and by the per-trial reference); ``reference``: its slow,
    obviously-correct twin with the from-samples signature; ``needs_model``: it needs the
    exact V of the task; ``count_determined``: with exact outer its value depends on the
    inner samples only through their multiset (so bandit moments can be enumerated); a
    function of the call's options where that depends on them (a noisy critic is random
    beyond the samples).

    What the estimator claims, checked by ``metarl_bench.testing.check_estimator``:
    ``bias`` against grad F_N is ``"zero"`` (exactly unbiased), ``"vanishing"`` (tends to
    zero as N grows), ``"persistent"`` (stays as N grows, by design) or None (not stated);
    ``deterministic``: the same value whatever the seed (no sampling).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    from_samples: Callable[..., torch.Tensor] | None = None
    reference: Callable[..., torch.Tensor] | None = None
    needs_model: bool = False
    count_determined: bool | Callable[[dict[str, Any]], bool] = False
    options: tuple[str, ...] = field(default=())
    trajectories: Callable[[int, int | None, dict[str, Any]], int] | None = None

    def trajectories_per_task(self, n_inner: int, n_outer: int | None,
                              options: dict[str, Any] | None = None) -> int:
        """Trajectories one estimate samples in each task: N + M unless ``trajectories`` says."""
        if self.trajectories is not None:
            return int(self.trajectories(n_inner, n_outer, dict(options or {})))
        return n_inner + (n_outer or 0)

    def is_count_determined(self, options: dict[str, Any] | None = None) -> bool:
        """Whether, with these options, the value depends on the inner samples' counts alone."""
        if callable(self.count_determined):
            return bool(self.count_determined(dict(options or {})))
        return bool(self.count_determined)
    bias: str | None = None
    deterministic: bool = False

    @property
    def summary(self) -> str:
        return summary_of(self.fn)

    def __call__(self, task: Any, theta: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Call the estimator itself: a spec is usable wherever an estimator is."""
        return self.fn(task, theta, **kwargs)


@dataclass(frozen=True)
class RunDefaults:
    """The settings ``metarl-bench run --task ID`` uses where the command line gives none.

    Each task family needs its own: the inner step size that suits its rewards (MuJoCo's
    returns are 1000 times a bandit's), ``n_outer`` where there is no model (its outer step is
    sampled), a truth budget and trials that finish in minutes on two cores, and the grid of N.
    """

    inner_lr: float = 1.0
    n_inner: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    n_trials: int = 2000
    n_outer: int | None = None
    truth_samples: int = 20_000  # evaluation's CellConfig.truth_samples (a test holds them equal)

    def describe(self) -> str:
        """One line: the flags these defaults stand for."""
        grid = ",".join(map(str, self.n_inner))
        outer = "" if self.n_outer is None else f" --n-outer {self.n_outer}"
        return (f"--inner-lr {self.inner_lr:g} --n-inner {grid} --trials {self.n_trials}"
                f"{outer} --truth-samples {self.truth_samples}")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its factory, the arguments the registration fixes (``kwargs``) and
    the run settings its family needs (``defaults``)."""

    id: str
    entry_point: str | Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    defaults: RunDefaults = field(default_factory=RunDefaults)

    def factory(self) -> Callable[..., Any]:
        if callable(self.entry_point):
            return self.entry_point
        module_name, _, attr = self.entry_point.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RegistrationError(
                f"task {self.id!r}: cannot load entry point {self.entry_point!r}: {exc}") from exc

    @property
    def summary(self) -> str:
        return summary_of(self.factory())


#: The keywords every registered estimator is called with (task and theta positionally).
COMMON_KEYWORDS = ("n_inner", "inner_lr", "n_trials", "n_outer", "generator")
BIAS_CLAIMS = ("zero", "vanishing", "persistent")

ESTIMATORS: dict[str, EstimatorSpec] = {}
TASKS: dict[str, TaskSpec] = {}
_plugins_loaded = False


def keyword_options(fn: Callable[..., Any], *, from_samples_form: bool = True
                    ) -> tuple[str, ...]:
    """The estimator-specific keyword options of ``fn`` (those beyond the common ones).

    ``inner`` and ``outer`` are the trajectories and the outer sampler of a from-samples
    form; in a registered estimator's own signature (``from_samples_form=False``) they may
    be options (``decomposed``'s parts).
    """
    # a wrapper (``batched``) reports the options of the from-samples form it wraps
    form = from_samples_form or hasattr(fn, "__wrapped__")
    base = {"task", "theta", "n_inner", "inner_lr", "n_trials", "n_outer", "generator",
            "n_steps"} | ({"inner", "outer"} if form else set())
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in parameters
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in base)


def signature_problems(fn: Callable[..., Any]) -> list[str]:
    """Why ``fn`` cannot be called as ``fn(task, theta, n_inner=..., inner_lr=...,
    n_trials=..., n_outer=..., generator=...)``; empty when it can (or has no signature)."""
    kind = inspect.Parameter
    try:
        # the wrapper's own signature is what gets called (batched() wraps a from-samples
        # form with another signature); a pass-through (*args, **kwargs) wrapper defers to
        # the function it wraps
        parameters = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
        if all(p.kind in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD) for p in parameters) and \
                hasattr(fn, "__wrapped__"):
            parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return []
    positional = [p for p in parameters
                  if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is kind.VAR_POSITIONAL for p in parameters)
    var_keyword = any(p.kind is kind.VAR_KEYWORD for p in parameters)
    problems = []
    if len(positional) < 2 and not var_positional:
        problems.append(f"it takes {len(positional)} positional argument(s), but is called "
                        f"as fn(task, theta, ...): accept task and theta first")
    keywords = {p.name for p in parameters
                if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)}
    missing = [k for k in COMMON_KEYWORDS if k not in keywords and not var_keyword]
    if missing:
        problems.append(f"it does not accept the keyword(s) {', '.join(missing)}")
    # beyond task and theta (the first two positional), everything must have a default
    required = [p.name for p in parameters[2:] + [p for p in parameters[:2]
                                                  if p.kind is kind.KEYWORD_ONLY]
                if p.default is kind.empty and p.name not in COMMON_KEYWORDS
                and p.kind not in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD)]
    if required:
        problems.append(f"it requires {', '.join(required)}, which callers never pass: give "
                        f"{'it' if len(required) == 1 else 'them'} a default")
    return problems


def _check_signature(name: str, fn: Callable[..., Any]) -> None:
    problems = signature_problems(fn)
    if problems:
        raise RegistrationError(
            f"estimator {name!r} cannot be registered: {'; '.join(problems)}. Every estimator "
            f"is called as fn(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None, "
            f"generator=None, **options)")


def _check_bias_claim(name: str, bias: Any) -> None:
    if bias is not None and bias not in BIAS_CLAIMS:
        raise RegistrationError(f"estimator {name!r}: bias must be one of "
                                f"{', '.join(map(repr, BIAS_CLAIMS))} or None, got {bias!r}")


def register_estimator(name: str, fn: Callable[..., torch.Tensor] | None = None, *,
                       from_samples: Callable[..., torch.Tensor] | None = None,
                       reference: Callable[..., torch.Tensor] | None = None,
                       needs_model: bool = False,
                       count_determined: bool | Callable[[dict[str, Any]], bool] = False,
                       trajectories: Callable[[int, int | None, dict[str, Any]], int] | None = None,
                       bias: str | None = None, deterministic: bool = False,
                       overwrite: bool = False):
    """Register an estimator under ``name``; usable as a decorator when ``fn`` is omitted.

    >>> @register_estimator("my-estimator")
    ... def my_estimator(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None,
    ...                  generator=None):
    ...     ...

    ``trajectories(n_inner, n_outer, options)``: the trajectories one estimate samples per
    task, where that is not N + M (e.g. zero-order estimators sampling at several points).
    ``overwrite=True`` replaces an existing entry; otherwise a second registration of the
    same name raises :class:`RegistrationError`, as does a function that cannot be called
    with the common keywords. ``bias`` and ``deterministic`` state what the estimator
    claims (see :class:`EstimatorSpec`); ``metarl_bench.testing.check_estimator`` checks it.
    """
    if not isinstance(name, str) or not name:
        raise RegistrationError(f"estimator name must be a non-empty string, got {name!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise RegistrationError(f"estimator name {name!r} may hold letters, digits and _ . - "
                                f"only: ':', ',', '=' and spaces separate options in "
                                f"NAME:KEY=VALUE,... entries, so such a name could never be "
                                f"asked for")
    _check_bias_claim(name, bias)

    def add(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if not callable(function):
            raise RegistrationError(f"estimator {name!r} must be callable, got {function!r}")
        _check_signature(name, function)
        if name in ESTIMATORS and not overwrite:
            raise RegistrationError(
                f"estimator {name!r} is already registered; pass overwrite=True to replace it")
        ESTIMATORS[name] = EstimatorSpec(
            name=name, fn=function, from_samples=from_samples, reference=reference,
            needs_model=needs_model, count_determined=count_determined,
            options=(keyword_options(from_samples)
                     + tuple(getattr(function, "chain_options", ()))
                     if from_samples is not None
                     else keyword_options(function, from_samples_form=False)),
            trajectories=trajectories, bias=bias, deterministic=deterministic)
        return function

    return add if fn is None else add(fn)


def register_task(id: str, entry_point: str | Callable[..., Any], *, overwrite: bool = False,
                  defaults: RunDefaults | dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Register a task factory under a versioned id such as ``"bandit-v0"``.

    ``entry_point`` is ``"module:factory"`` (imported lazily) or a callable; ``kwargs``
    are default arguments passed to the factory; ``defaults``: the run settings the task
    needs (a :class:`RunDefaults` or a dict of its fields; unset fields keep theirs).
    Bump the version whenever the task's dynamics, rewards or an argument's default change:
    a default is part of every stored result that did not name the argument.
    """
    if not isinstance(id, str) or "-v" not in id or not id.rsplit("-v", 1)[1].isdigit():
        raise RegistrationError(f"task id must look like 'name-vN', got {id!r}")
    if id in TASKS and not overwrite:
        raise RegistrationError(f"task {id!r} is already registered; pass overwrite=True")
    if defaults is None:
        defaults = RunDefaults()
    elif isinstance(defaults, dict):
        known = [f.name for f in dataclasses.fields(RunDefaults)]
        for key in defaults:
            if key not in known:
                raise RegistrationError(f"task {id!r}: unknown default {key!r}."
                                        f"{did_you_mean(key, known)} Defaults: "
                                        f"{', '.join(known)}")
        defaults = RunDefaults(**{**defaults, "n_inner": tuple(defaults.get(
            "n_inner", RunDefaults.n_inner))})
    elif not isinstance(defaults, RunDefaults):
        raise RegistrationError(f"task {id!r}: defaults must be a RunDefaults or a dict, got "
                                f"{type(defaults).__name__}")
    TASKS[id] = TaskSpec(id=id, entry_point=entry_point, kwargs=dict(kwargs), defaults=defaults)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for group, table in (("metarl_bench.estimators", ESTIMATORS), ("metarl_bench.tasks", TASKS)):
        for entry in metadata.entry_points(group=group):
            if entry.name in table:
                continue
            try:
                loaded = entry.load()
            except Exception as exc:  # a broken plug-in must not break the registry
                raise RegistrationError(
                    f"plug-in {entry.name!r} ({entry.value}) failed to load: {exc}") from exc
            if entry.name in table:  # the module registered itself on import
                continue
            if group == "metarl_bench.estimators":
                if isinstance(loaded, EstimatorSpec):
                    _check_signature(entry.name, loaded.fn)
                    _check_bias_claim(entry.name, loaded.bias)
                    ESTIMATORS[entry.name] = dataclasses.replace(
                        loaded, name=entry.name,
                        options=loaded.options or keyword_options(loaded.from_samples
                                                                  or loaded.fn))
                else:
                    register_estimator(entry.name, loaded)
            else:
                register_task(entry.name, loaded)


def list_estimators() -> list[str]:
    _load_plugins()
    return sorted(ESTIMATORS)


def list_tasks() -> list[str]:
    _load_plugins()
    return sorted(TASKS)


def estimator_spec(name: str) -> EstimatorSpec:
    _load_plugins()
    if name not in ESTIMATORS:
        raise unknown_name("estimator", name, ESTIMATORS)
    return ESTIMATORS[name]


def get_estimator(name: str) -> Callable[..., torch.Tensor]:
    """The estimator registered under ``name`` (see :class:`Estimator`)."""
    return estimator_spec(name).fn


def task_spec(id: str) -> TaskSpec:
    """The registration of task ``id`` (unknown ids: a typed error with a suggestion)."""
    _load_plugins()
    if id not in TASKS:
        raise unknown_name("task", id, TASKS)
    return TASKS[id]


def make_task(id: str, **kwargs: Any) -> Any:
    """Build the task registered under ``id``; keyword arguments override its defaults.

    The task records every argument of its factory, defaults applied, in canonical form
    (``task.spec_kwargs``, see :func:`task_identity`), and derives from it ``task.params``,
    which enters the key of every stored result: two tasks with equal arguments share their
    results, any other argument gives other results. ``task.spec`` is the registration.
    """
    spec = task_spec(id)
    factory = spec.factory()
    arguments = {**spec.kwargs, **kwargs}
    identity = task_identity(id, factory, arguments)
    # the factory gets the canonical values (so the key names exactly what ran), except
    # objects such as functions, which a written name only stands for
    task = factory(**{name: value if name in identity.objects else identity.kwargs[name]
                      for name, value in arguments.items()})
    task.spec = spec
    task.spec_kwargs = dict(identity.kwargs)
    task.params = dict(identity.params)
    task.unkeyed = identity.unkeyed
    return task


@dataclass(frozen=True)
class TaskIdentity:
    """Every argument of a task's factory (``kwargs``: bound, defaults applied, canonical),
    the part of it that enters a stored result's key (``params``), the arguments that are
    objects rather than data (``objects``: functions, written by name) and those of them with
    no stable name (``unkeyed``: e.g. a lambda; results of such a task are not stored)."""

    kwargs: dict[str, Any]
    params: dict[str, Any]
    objects: tuple[str, ...] = ()
    unkeyed: tuple[str, ...] = ()


def task_identity(id: str, factory: Callable[..., Any], arguments: dict[str, Any]
                  ) -> TaskIdentity:
    """The identity of the task ``factory(**arguments)`` registered as ``id``.

    ``kwargs`` binds the factory's full signature with its defaults applied, each value in
    canonical form, so that equal arguments written differently are equal: tuples become
    lists, numpy and torch values Python numbers and lists, a number takes the type its
    parameter declares (by its default, else its annotation: ``gamma=1`` is ``1.0``,
    ``hidden=[64.0, 64.0]`` is ``[64, 64]``), a module-level function its ``module:name``.

    ``params`` (the store key's part) is ``kwargs`` less the options left off: an argument
    whose default is None or False and whose value is that default. Every other argument is
    written, at its default too. This rule keeps the keys of results stored before the
    identity was derived (those factories listed their arguments by hand, and left out
    exactly the options not given), while any argument set to another value changes the key.
    A changed default, which this rule cannot see, is a new task version (``register_task``).
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to bind: the arguments as given
        forms = {name: _canonical_form(value, None) for name, value in arguments.items()}
        kwargs = {name: out for name, (out, _) in forms.items()}
        return TaskIdentity(kwargs, dict(kwargs),
                            tuple(n for n, (_, f) in forms.items() if f != "data"),
                            tuple(n for n, (_, f) in forms.items() if f == "unkeyed"))
    parameters = signature.parameters
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    allowed = [name for name, p in parameters.items()
               if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             inspect.Parameter.KEYWORD_ONLY)]
    if not var_keyword:
        for key in arguments:
            if key not in allowed:
                raise UnknownNameError(
                    f"unknown parameter {key!r} for task {id!r}."
                    f"{did_you_mean(key, allowed)} Parameters: {', '.join(allowed)}.")
    try:
        bound = signature.bind(**arguments)
    except TypeError as exc:
        raise ParameterError(f"task {id!r}: {exc}") from None
    bound.apply_defaults()
    kwargs: dict[str, Any] = {}
    params: dict[str, Any] = {}
    objects: list[str] = []
    unkeyed: list[str] = []
    for name, value in bound.arguments.items():
        parameter = parameters[name]
        extra = parameter.kind is inspect.Parameter.VAR_KEYWORD
        left_off = not extra and any(parameter.default is off for off in _OFF_DEFAULTS)
        for key, given in (value.items() if extra else [(name, value)]):
            out, form = _canonical_form(given, None if extra else _number_kind(parameter))
            kwargs[key] = out
            if form != "data":
                objects.append(key)
            if form == "unkeyed":
                unkeyed.append(key)
            if not (left_off and out is parameter.default):
                params[key] = out
    return TaskIdentity(kwargs, params, tuple(objects), tuple(unkeyed))


def unmatched_arguments(task: Any, params: dict[str, Any]) -> list[str]:
    """Why a stored result's ``task_params``, written for a task of this id, can never be
    read back: the arguments that the identity of ``make_task(id, **params)`` has and they
    lack (written by a version that left them out of the key), or has in another form, or
    that the factory does not take. Empty when ``params`` is an identity of today's factory.
    """
    spec = getattr(task, "spec", None)
    if not isinstance(spec, TaskSpec):
        return []
    try:
        identity = task_identity(spec.id, spec.factory(), {**spec.kwargs, **params})
    except MetaRLBenchError:
        known = set(task.spec_kwargs)
        return sorted(name for name in params if name not in known) or ["its arguments"]
    def written(values: dict[str, Any], name: str) -> str | None:
        return json.dumps(values[name], sort_keys=True) if name in values else None

    return sorted(name for name in set(identity.params) | set(params)
                  if written(identity.params, name) != written(params, name))


#: Defaults that mean "this option is left off": an argument at one of them stays out of
#: ``task.params`` (see :func:`task_identity`).
_OFF_DEFAULTS = (None, False)


def _number_kind(parameter: inspect.Parameter) -> type | None:
    """int or float: the type a numeric argument of ``parameter`` takes (from its default,
    or failing that its annotation); None where neither says."""
    default = parameter.default
    values = list(default) if isinstance(default, (tuple, list)) else [default]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if values and len(numbers) == len(values):
        return float if any(isinstance(v, float) for v in numbers) else int
    annotation = parameter.annotation
    words = set(re.findall(r"[A-Za-z_]+", annotation if isinstance(annotation, str)
                           else getattr(annotation, "__name__", str(annotation))))
    if "float" in words and "int" not in words:
        return float
    if "int" in words and "float" not in words:
        return int
    return None


#: What a canonical form is, from best to worst: the value itself ("data"), the name of an
#: object ("named"), or a placeholder that does not identify the value ("unkeyed").
_FORMS = ("data", "named", "unkeyed")


def _canonical_form(value: Any, kind: type | None) -> tuple[Any, str]:
    """(canonical form of an argument, what that form is: one of ``_FORMS``)."""
    if value is None or isinstance(value, (bool, str)):
        return value, "data"
    if isinstance(value, int):
        return (float(value) if kind is float else value), "data"
    if isinstance(value, float):
        return (int(value) if kind is int and value.is_integer() else value), "data"
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy, torch
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
        return _canonical_form(value.tolist(), kind)
    if isinstance(value, (list, tuple, dict)):
        pairs = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        forms = {key: _canonical_form(item, None if isinstance(value, dict) else kind)
                 for key, item in pairs}
        worst = max((form for _, form in forms.values()), key=_FORMS.index, default="data")
        if isinstance(value, dict):
            return {str(key): out for key, (out, _) in forms.items()}, worst
        return [out for out, _ in forms.values()], worst
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if callable(value) and module and qualname:
        # a function or class is named by where it is defined; a lambda or a function
        # defined inside another has no such name, and two of them could look the same
        return f"{module}:{qualname}", "unkeyed" if "<" in qualname else "named"
    return f"<{type(value).__name__}>", "unkeyed"
