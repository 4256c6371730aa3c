"""Registries of estimators and tasks (STYLE.md rule 5).

Estimators: ``register_estimator(name, fn)`` or ``@register_estimator(name)``. Third-party
packages add entries through the entry-point group ``metarl_bench.estimators`` (entry name =
estimator name, object = the estimator function); they are loaded on first use.

Tasks: ``register_task(id, entry_point="module:factory")``, ids versioned ``name-vN``; the
factory is imported only when the task is made. Entry-point group ``metarl_bench.tasks``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Protocol

import torch

from metarl_bench._src.core.errors import (RegistrationError, UnknownNameError, did_you_mean,
                                      unknown_name)


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
class TaskSpec:
    id: str
    entry_point: str | Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

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
                  **kwargs: Any) -> None:
    """Register a task factory under a versioned id such as ``"bandit-v0"``.

    ``entry_point`` is ``"module:factory"`` (imported lazily) or a callable; ``kwargs``
    are default arguments passed to the factory.
    """
    if not isinstance(id, str) or "-v" not in id or not id.rsplit("-v", 1)[1].isdigit():
        raise RegistrationError(f"task id must look like 'name-vN', got {id!r}")
    if id in TASKS and not overwrite:
        raise RegistrationError(f"task {id!r} is already registered; pass overwrite=True")
    TASKS[id] = TaskSpec(id=id, entry_point=entry_point, kwargs=dict(kwargs))


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


def make_task(id: str, **kwargs: Any) -> Any:
    """Build the task registered under ``id``; keyword arguments override its defaults."""
    _load_plugins()
    if id not in TASKS:
        raise unknown_name("task", id, TASKS)
    spec = TASKS[id]
    factory = spec.factory()
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        allowed = [p for p in signature.parameters]
        for key in kwargs:
            if key not in allowed:
                raise UnknownNameError(
                    f"unknown parameter {key!r} for task {id!r}."
                    f"{did_you_mean(key, allowed)} Parameters: {', '.join(allowed)}.")
    return factory(**{**spec.kwargs, **kwargs})

