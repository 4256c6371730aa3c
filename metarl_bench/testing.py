"""The conformance kit: does an estimator keep the contract of a registered estimator?

Modelled on scikit-learn's ``check_estimator`` and Gymnasium's ``check_env``: a list of
small named checks, each failing with a message that names the rule it broke, what it found
and how to fix it::

    from metarl_bench.testing import check_estimator
    check_estimator("lsf")                    # a registered name, an EstimatorSpec or a function
    report = check_estimator(my_fn, bias="vanishing", on_fail=None)   # inspect, don't raise
    print(report)

In pytest, one test per check (``-k check_dtype`` selects one)::

    from metarl_bench.testing import estimator_checks

    @pytest.mark.parametrize("check", estimator_checks("my-estimator"), ids=str)
    def test_conformance(check):
        check()

What is checked: the call signature; a tensor of shape (n_trials, *theta.shape), detached,
in theta's dtype (float32 and float64) and on theta's device; finite values; the same seed
gives the same bits and different seeds different estimates (unless ``deterministic``);
the estimate depends on theta and theta is left untouched; bad input raises metarl_bench's
typed errors; where a from-samples form exists, batched rows equal rows run one at a time,
the form equals its slow twin (``reference``), and its exact bandit moments match Monte Carlo
of the registered function; and statistics against exact truth on a small bandit (exact
grad F_N) and a small MDP (exact grad F_inf; grad F_N estimated by leave-one-out).

The statistical checks test what the estimator claims (``bias`` of its spec, or given here):
every mean estimate must be an ascent direction of the meta-objective; ``bias="zero"``:
the mean equals grad F_N (exact moments: to 1e-9; Monte Carlo: within 5 standard errors);
``"vanishing"``: at N=32 the bias is at most 5% of |grad F_N| on the bandit and 10% of
|grad F_inf| on the MDP (plus 5 standard errors); ``"persistent"`` or None: the measured
bias, variance and cosine are reported, not judged. Seeds are fixed, so results repeat.
A whole run takes a few seconds per estimator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from metarl_bench._src.estimators.conformance import CHECKS, CheckDef, CheckFailure, Context, run_check
from metarl_bench._src.core.errors import ParameterError, UnsupportedError
from metarl_bench._src.core.registry import (BIAS_CLAIMS, ESTIMATORS, EstimatorSpec, _load_plugins,
                                        estimator_spec)

__all__ = ["Check", "CheckFailure", "CheckResult", "ConformanceReport", "check_estimator",
           "check_names", "estimator_checks"]

_CLAIMS = ("bias", "deterministic", "from_samples", "reference", "count_determined",
           "needs_model")


def _spec(estimator: str | EstimatorSpec | Callable[..., Any],
          claims: dict[str, Any]) -> EstimatorSpec:
    unknown = sorted(set(claims) - set(_CLAIMS))
    if unknown:
        raise ParameterError(f"unknown claim(s) {', '.join(unknown)}; claims: "
                             f"{', '.join(_CLAIMS)}")
    if "bias" in claims and claims["bias"] is not None and claims["bias"] not in BIAS_CLAIMS:
        raise ParameterError(f"bias must be one of {', '.join(map(repr, BIAS_CLAIMS))} or "
                             f"None, got {claims['bias']!r}")
    if isinstance(estimator, str):
        spec = estimator_spec(estimator)
    elif isinstance(estimator, EstimatorSpec):
        spec = estimator
    elif callable(estimator):
        _load_plugins()
        registered = [s for s in ESTIMATORS.values() if s.fn is estimator]
        spec = registered[0] if registered else EstimatorSpec(
            name=getattr(estimator, "__name__", repr(estimator)), fn=estimator)
    else:
        raise ParameterError(f"estimator must be a registered name, an EstimatorSpec or a "
                             f"function, got {type(estimator).__name__}")
    return dataclasses.replace(spec, **claims)


@dataclass(frozen=True)
class Check:
    """One named check of one estimator; calling it raises ``CheckFailure`` when it fails
    (and ``pytest.skip`` when it does not apply, under pytest)."""

    name: str
    estimator: str
    _definition: CheckDef
    _context: Context

    def __call__(self) -> str:
        status, message, _ = run_check(self._definition, self._context)
        if status == "failed":
            raise CheckFailure(message)
        if status == "skipped":
            try:
                import pytest
            except ImportError:  # called outside pytest, which is not installed
                raise UnsupportedError(f"check {self} does not apply: {message}") from None
            pytest.skip(message)
        return message

    def __str__(self) -> str:
        return f"{self.estimator}-{self.name}"


def check_names() -> list[str]:
    """The names of every check, in the order they run."""
    return [c.name for c in CHECKS]


def estimator_checks(estimator: str | EstimatorSpec | Callable[..., Any], *,
                     options: dict[str, Any] | None = None, seed: int = 0,
                     include_skipped: bool = False, **claims: Any) -> list[Check]:
    """The checks of ``estimator`` that apply to it, for ``pytest.mark.parametrize``.

    ``options``: estimator options passed to every call; ``claims``: overrides of what the
    spec states (``bias``, ``deterministic``, ``from_samples``, ``reference``,
    ``count_determined``, ``needs_model``).
    """
    spec = _spec(estimator, claims)
    context = Context(spec, dict(options or {}), seed)
    return [Check(c.name, spec.name, c, context) for c in CHECKS
            if include_skipped or c.applies(spec) is None]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "passed", "failed" or "skipped"
    message: str
    seconds: float


@dataclass(frozen=True)
class ConformanceReport:
    """What ``check_estimator`` found; ``str(report)`` is the readable report."""

    estimator: str
    claims: dict[str, Any]
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    def __str__(self) -> str:
        counts = {s: sum(r.status == s for r in self.results)
                  for s in ("passed", "failed", "skipped")}
        seconds = sum(r.seconds for r in self.results)
        claims = ", ".join(f"{k}={v!r}" for k, v in self.claims.items())
        lines = [f"check_estimator({self.estimator!r}; {claims}): {counts['passed']} passed, "
                 f"{counts['failed']} failed, {counts['skipped']} skipped ({seconds:.1f} s)"]
        for r in self.results:
            mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[r.status]
            text = r.message.replace("\n", "\n" + " " * 8)
            if r.status == "failed":
                lines.append(f"  {mark} {text}")
            else:
                lines.append(f"  {mark} {r.name}: {text}")
        return "\n".join(lines)


def check_estimator(estimator: str | EstimatorSpec | Callable[..., Any], *,
                    options: dict[str, Any] | None = None, seed: int = 0,
                    on_fail: str | None = "raise", **claims: Any) -> ConformanceReport:
    """Run every check on ``estimator``; raise ``AssertionError`` with the report if any
    failed (``on_fail="raise"``, the default) or just return the report (``on_fail=None``).

    ``estimator``: a registered name, an :class:`~metarl_bench.EstimatorSpec`, or a
    function (its registered spec is used when it is registered). ``claims`` override what
    the spec states, e.g. ``bias="zero"`` for an exactly unbiased estimator.
    """
    if on_fail not in ("raise", None):
        raise ParameterError(f"on_fail must be 'raise' or None, got {on_fail!r}")
    checks = estimator_checks(estimator, options=options, seed=seed, include_skipped=True,
                              **claims)
    spec = checks[0]._context.spec
    results = tuple(CheckResult(c.name, *run_check(c._definition, c._context)) for c in checks)
    report = ConformanceReport(spec.name, {"bias": spec.bias,
                                           "deterministic": spec.deterministic}, results)
    if on_fail == "raise" and not report.passed:
        raise AssertionError(str(report))
    return report

