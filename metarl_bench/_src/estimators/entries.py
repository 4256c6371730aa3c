"""Estimators named with options: the grammar shared by ``evaluate``, ``metarl-bench run``
and ``metarl-bench check``.

An entry is ``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE...]``; a list joins entries with commas:

    lsf,unbiased:baseline=0.5,decomposed:inner=maml,hessian=lsf,outer=exact

A comma-separated piece starts a new entry unless it is ``KEY=VALUE`` with no ``:`` before
its ``=``; then it is one more option of the entry before it (estimator names never hold
``=``, option keys never hold ``:``). Values are JSON where they parse (``0.5``, ``16``,
``true``, ``"text"``), else the text itself (``maml``): the ``KEY=VALUE`` grammar of
``core.validation.parse_assignment``, shared with ``--task-param``. An entry's label, used in
records, tables, figures and reports, is the entry as written without spaces
(``entry_label``), so ``unbiased`` and ``unbiased:baseline=0.5`` sit side by side (records
keep the name and the options apart).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from metarl_bench._src.core.errors import ParameterError, did_you_mean
from metarl_bench._src.core.registry import EstimatorSpec, estimator_spec
from metarl_bench._src.core.validation import parse_assignment


def _factories() -> dict[str, Callable[..., EstimatorSpec]]:
    from metarl_bench._src.estimators.decomposition import decomposed

    return {"decomposed": decomposed}


def split_entries(text: str) -> list[str]:
    """``"a,b:k=1,j=2,c"`` -> ``["a", "b:k=1,j=2", "c"]`` (see the module docstring)."""
    entries: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        key, sep, _ = piece.partition("=")
        if sep and ":" not in key:
            if not entries or ":" not in entries[-1]:
                raise ParameterError(f"option {piece!r} follows no estimator: write "
                                     f"NAME:{piece} (estimators: NAME[:KEY=VALUE,...],...)")
            entries[-1] += "," + piece
        else:
            entries.append(piece)
    if not entries:
        raise ParameterError("--estimators must name at least one estimator")
    return entries


def parse_entry(text: str) -> tuple[str, dict[str, Any]]:
    """``"unbiased:baseline=0.5"`` -> ``("unbiased", {"baseline": 0.5})``."""
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise ParameterError(f"estimator entry {text!r} has no name")
    options: dict[str, Any] = {}
    for piece in (p.strip() for p in rest.split(",") if p.strip()):
        try:
            key, value = parse_assignment(piece)
        except ParameterError as exc:
            raise ParameterError(f"estimator {name!r}: {exc}") from None
        if key in options:
            raise ParameterError(f"estimator {name!r}: option {key!r} given twice")
        options[key] = value
    return name, options


def entry_label(name: str, options: dict[str, Any] | None = None) -> str:
    """The entry that names an estimator with options, as written: ``NAME`` or
    ``NAME:KEY=VALUE,...`` (values as the grammar reads them back: JSON unless text)."""
    if not options:
        return name
    return name + ":" + ",".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in options.items())


def check_options(name: str, options: dict[str, Any], allowed: Iterable[str]) -> None:
    """Every key of ``options`` must be an option of estimator ``name``."""
    allowed = list(allowed)
    for key in options:
        if key not in allowed:
            raise ParameterError(
                f"estimator {name!r} has no option {key!r}.{did_you_mean(key, allowed)} "
                f"Options: {', '.join(allowed) or '(none)'}.")


@dataclass(frozen=True)
class Entry:
    """One estimator of a comparison: its ``label``, its ``spec``, the ``options`` of each call."""

    label: str
    spec: EstimatorSpec
    options: dict[str, Any]


def resolve(entry: str | EstimatorSpec, options: dict[str, Any] | None = None) -> Entry:
    """An entry (text in the grammar above, or a spec such as ``decomposed(...)``, whose name
    is such a text) checked against the registry: the registered estimator and the options of
    each call. ``options`` are extra call options (``evaluate(options=...)``)."""
    if isinstance(entry, EstimatorSpec):
        entry = entry.name
    if not isinstance(entry, str):
        raise ParameterError(f"an estimator is a name or an EstimatorSpec, got {entry!r}")
    name, given = parse_entry(entry)
    spec = estimator_spec(name)
    merged = {**(options or {}), **given}
    check_options(name, merged, spec.options)
    factories = _factories()
    if name in factories:  # builds it once, so that a bad part is reported before any run
        factories[name](**{k: v for k, v in merged.items()
                           if k in inspect.signature(factories[name]).parameters})
    return Entry(entry.replace(" ", ""), spec, merged)


def resolve_all(entries: Iterable[str | EstimatorSpec],
                options: dict[str, dict[str, Any]] | None = None) -> list[Entry]:
    """Every entry resolved; ``options`` keyed by estimator name or label; labels unique."""
    options = dict(options or {})
    resolved = []
    for entry in entries:
        key = (entry.name if isinstance(entry, EstimatorSpec) else str(entry)).replace(" ", "")
        base = key.partition(":")[0]
        resolved.append(resolve(entry, options.get(key, options.get(base))))
    labels = [e.label for e in resolved]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ParameterError(f"estimator {repeated[0]!r} is listed twice")
    return resolved
