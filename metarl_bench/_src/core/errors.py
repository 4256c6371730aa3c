"""Typed errors. Every message names what was wrong and what is allowed."""

from __future__ import annotations

import difflib
from typing import Iterable


class MetaRLBenchError(Exception):
    """Base class of every error metarl_bench raises on purpose."""


class UnknownNameError(MetaRLBenchError, ValueError):
    """A task, estimator or option name that is not registered."""


class ParameterError(MetaRLBenchError, ValueError):
    """A parameter value outside its allowed range, or of the wrong type."""


class ShapeError(MetaRLBenchError, ValueError):
    """A tensor whose shape does not match what the task or estimator expects."""


class UnsupportedError(MetaRLBenchError, ValueError):
    """An impossible combination, e.g. an exact estimator on a task with no model."""


class RegistrationError(MetaRLBenchError, ValueError):
    """A name registered twice without ``overwrite=True``, or a malformed entry."""


class ResultsFileError(MetaRLBenchError, ValueError):
    """A results file that is not a metarl-bench results store, or cannot be written."""


class ResourceError(MetaRLBenchError, ValueError):
    """A computation whose estimated memory or work exceeds the allowed limit."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' when a close match exists, else ''."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    choices = sorted(choices)
    return UnknownNameError(
        f"unknown {kind} {name!r}.{did_you_mean(name, choices)} "
        f"Valid {kind}s: {', '.join(choices) if choices else '(none registered)'}."
    )
