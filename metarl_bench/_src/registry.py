"""Registries of estimators and tasks (STYLE.md rule 5).

Estimators: ``register_estimator(name, fn)`` or ``@register_estimator(name)``. Third-party
packages add entries through the entry-point group ``metarl_bench.estimators`` (entry name =
estimator name, object = the estimator function); they are loaded on first use.

Tasks: ``register_task(id, entry_point="module:factory")``, ids versioned ``name-vN``; the
factory is imported only when the task is made. Entry-point group ``metarl_bench.tasks``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Protocol

import torch

from metarl_bench._src.errors import (RegistrationError, UnknownNameError, did_you_mean,
                                      unknown_name)


class Estimator(Protocol):
    """What every registered estimator is: batched, seeded meta-gradient estimates.

    Returns a tensor of shape (n_trials, *theta.shape): one independent estimate of the
    meta-gradient per row, in theta's dtype and on theta's device.
    """

    def __call__(self, task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float,
                 n_trials: int, n_outer: int | None = None,
                 generator: torch.Generator | None = None, **options: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator.

    ``from_samples``: the same estimator on given inner trajectories (used for exact
    moments by enumeration and by the per-trial reference); ``reference``: its slow,
    obviously-correct twin with the from-samples signature; ``needs_model``: it needs the
    exact V of the task; ``count_determined``: with exact outer its value depends on the
    inner samples only through their multiset (so bandit moments can be enumerated).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    from_samples: Callable[..., torch.Tensor] | None = None
    reference: Callable[..., torch.Tensor] | None = None
    needs_model: bool = False
    count_determined: bool = False
    options: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

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
        doc = inspect.getdoc(self.factory()) or ""
        return doc.splitlines()[0] if doc else ""


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


def register_estimator(name: str, fn: Callable[..., torch.Tensor] | None = None, *,
                       from_samples: Callable[..., torch.Tensor] | None = None,
                       reference: Callable[..., torch.Tensor] | None = None,
                       needs_model: bool = False, count_determined: bool = False,
                       overwrite: bool = False):
    """Register an estimator under ``name``; usable as a decorator when ``fn`` is omitted.

    >>> @register_estimator("my-estimator")
    ... def my_estimator(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None,
    ...                  generator=None):
    ...     ...

    ``overwrite=True`` replaces an existing entry; otherwise a second registration of the
    same name raises :class:`RegistrationError`.
    """
    if not isinstance(name, str) or not name:
        raise RegistrationError(f"estimator name must be a non-empty string, got {name!r}")

    def add(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if not callable(function):
            raise RegistrationError(f"estimator {name!r} must be callable, got {function!r}")
        if name in ESTIMATORS and not overwrite:
            raise RegistrationError(
                f"estimator {name!r} is already registered; pass overwrite=True to replace it")
        ESTIMATORS[name] = EstimatorSpec(
            name=name, fn=function, from_samples=from_samples, reference=reference,
            needs_model=needs_model, count_determined=count_determined,
            options=(keyword_options(from_samples) if from_samples is not None
                     else keyword_options(function, from_samples_form=False)))
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
                    ESTIMATORS[entry.name] = loaded
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

