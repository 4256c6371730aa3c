"""Argument checks shared by the public entry points (STYLE.md rules 2 and 6)."""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from metarl_bench._src.core.errors import ParameterError, ShapeError


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def finite_float(name: str, value: Any, *, positive: bool = False, low: float | None = None,
                 high: float | None = None) -> float:
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ParameterError(f"{name} must be finite, got {value!r}")
    if positive and out <= 0:
        raise ParameterError(f"{name} must be > 0, got {out}")
    if low is not None and out < low:
        raise ParameterError(f"{name} must be >= {low}, got {out}")
    if high is not None and out > high:
        raise ParameterError(f"{name} must be <= {high}, got {out}")
    return out


def params_tensor(theta: Any, param_shape: tuple[int, ...], task_name: str) -> torch.Tensor:
    """Check that ``theta`` is a floating tensor of the task's parameter shape."""
    if not isinstance(theta, torch.Tensor):
        raise ShapeError(
            f"theta must be a torch.Tensor of shape {param_shape} for {task_name}, "
            f"got {type(theta).__name__}"
        )
    if tuple(theta.shape) != tuple(param_shape):
        raise ShapeError(
            f"theta shape mismatch for {task_name}: expected {tuple(param_shape)}, "
            f"got {tuple(theta.shape)}"
        )
    if not theta.is_floating_point():
        raise ShapeError(f"theta must be a floating tensor, got dtype {theta.dtype}")
    if theta.device.type == "meta":
        raise ParameterError("theta is on device 'meta', which holds no data, so nothing can "
                             "be computed from it; use a 'cpu' or 'cuda' tensor")
    # a finite sum has finite terms (a NaN or an infinity propagates); only a sum that is not
    # finite (a bad entry, or finite entries overflowing) needs the entry-by-entry check
    if not math.isfinite(theta.detach().sum().item()) and not torch.isfinite(theta).all():
        raise ParameterError("theta contains NaN or infinite entries")
    return theta


def optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def interval(low_name: str, low: Any, high_name: str, high: Any) -> tuple[float, float]:
    """Two finite numbers with low < high (e.g. the bounds of a uniform task distribution)."""
    low, high = finite_float(low_name, low), finite_float(high_name, high)
    if not low < high:
        raise ParameterError(f"{low_name} must be below {high_name}, got {low} and {high}")
    return low, high


def check_device(device: Any) -> torch.device | None:
    """A torch device that can hold tensors here, or a ParameterError saying why not."""
    if device is None:
        return None
    try:
        device = torch.device(device)
        torch.empty(1, device=device) + 1
    except (RuntimeError, AssertionError, TypeError, NotImplementedError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if len(reason) > 160:  # torch's dispatcher lists every backend it knows of
            reason = reason[:157] + "..."
        raise ParameterError(f"device {str(device)!r} is not available: {reason}") from None
    if device.type == "meta":
        raise ParameterError("device 'meta' holds no data, so nothing can be measured on it; "
                             "use 'cpu' or 'cuda'")
    return device


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` value: JSON if it parses (``0.5``, ``true``, ``[1, 2]``), else a comma
    list of numbers (``1,0,0.5``), else the text itself (``maml``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        try:
            return [float(part) for part in text.split(",")]
        except ValueError:
            pass
    return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (key, value): the grammar of ``--task-param`` and of an estimator
    entry's options (``parse_value`` reads the value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParameterError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(value.strip())
