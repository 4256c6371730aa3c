"""Decomposed estimation: the adapted parameters, the Hessian term and the outer gradient of a
meta-gradient estimate, each from its own estimator and its own samples (after Liu et al.).

Every one-step estimator here has the form (I + eta H_hat)^T grad_hat V(theta'_hat) (plus a
score term for the score-function ones). Its error against grad F_inf = (I + eta grad^2 V)^T
grad V(theta + eta grad V) has three sources: theta'_hat (the inner step from N samples, whose
error biases grad V(theta') even when everything else is exact), H_hat, and grad_hat V. The
decomposed estimator takes each from a different place, written with stop-gradients as

    theta' = stop(theta'_inner) + h - stop(h),   h = theta + eta grad L_hessian(theta),
    estimate = grad_theta [stop(grad_hat V(theta')) . theta'] = (dh/dtheta)^T grad_hat V(theta'_inner),

so replacing one part by its exact value (tasks with a model) measures that part's error alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError, UnsupportedError, unknown_name
from metarl_bench._src.estimators.common import (Outer, OuterSampler, OuterStep, batched,
                                                outer_at, row_params)
from metarl_bench._src.core.registry import ESTIMATORS, EstimatorSpec, estimator_spec
from metarl_bench._src.core.trajectories import Trajectories

OUTER_PARTS = ("exact", "sampled")


class _Captured(Exception):
    """Raised by ``_Capture`` once the inner part's adapted parameters are known."""


class _Capture(OuterStep):
    """The outer step of the inner part: records theta' and stops that estimator there."""

    adapted: torch.Tensor | None = None
    exact = True  # what the inner part's form may assume; it never gets to use the value

    def after(self, adapted: torch.Tensor, task_index: torch.Tensor) -> Outer:
        self.adapted = adapted.detach()
        raise _Captured


class _GivenGradient(OuterStep):
    """The outer step of the Hessian part: the outer gradient u computed at theta'_inner
    (not at the Hessian part's own adapted parameters); the outer value is NaN, so that an
    estimator whose estimate uses it (a score-function term) shows up as non-finite."""

    def __init__(self, grad: torch.Tensor):
        self.grad = grad

    def after(self, adapted: torch.Tensor, task_index: torch.Tensor) -> Outer:
        return Outer(torch.full(self.grad.shape[:1], math.nan, dtype=self.grad.dtype,
                                device=self.grad.device), self.grad, exact=False)


def _exact_inner_step(task: Any, theta: torch.Tensor, task_index: torch.Tensor,
                      inner_lr: float) -> torch.Tensor:
    """theta + eta grad V(theta) per row (R, *P), detached."""
    rows = row_params(theta, task_index.shape[0])
    (grad,) = torch.autograd.grad(task.value(rows, task_index).sum(), rows)
    return (rows + inner_lr * grad).detach()


def _exact_hessian_term(task: Any, theta: torch.Tensor, task_index: torch.Tensor,
                        inner_lr: float, outer_grad: torch.Tensor) -> torch.Tensor:
    """(I + eta grad^2 V(theta))^T u per row, by a Hessian-vector product (grad^2 V symmetric)."""
    rows = row_params(theta, task_index.shape[0])
    (grad,) = torch.autograd.grad(task.value(rows, task_index).sum(), rows, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * outer_grad).sum(), rows)
    return outer_grad + inner_lr * hvp


def _part(role: str, name: Any) -> EstimatorSpec | None:
    """The registered estimator of a part (None for ``"exact"``)."""
    if name == "exact":
        return None
    if not isinstance(name, str):
        raise ParameterError(f"{role} must be 'exact' or an estimator name, got {name!r}")
    choices = ["exact"] + [n for n, s in ESTIMATORS.items() if s.from_samples is not None]
    if name not in ESTIMATORS:
        raise unknown_name(f"{role} part", name, choices)
    spec = estimator_spec(name)
    if spec.from_samples is None:
        raise UnsupportedError(f"estimator {name!r} cannot be the {role} part: it has no "
                               f"from-samples form; choose one of {', '.join(choices)}")
    return spec


def decomposed(inner: str = "maml", hessian: str = "lsf", outer: str | None = None, *,
               n_hessian: int | str | None = None, n_outer: int | None = None) -> EstimatorSpec:
    """An estimator whose three parts come from three places (Liu et al. 2022).

    theta' = stop(theta'_inner) + h - stop(h), estimate = (dh/dtheta)^T grad_hat V(theta'_inner):

    * ``inner``: theta'_inner = the adapted parameters of that estimator's inner step on the N
      inner samples of the call, or ``"exact"``: theta + eta grad V(theta);
    * ``hessian``: h from that estimator's inner surrogate, on ``n_hessian`` samples of its
      own drawn at theta (None: as many as the call's N; ``"shared"``: the inner part's own
      samples), so (dh/dtheta)^T u is that estimator's (I + eta H_hat)^T u; or ``"exact"``:
      (I + eta grad^2 V(theta))^T u. Only estimators of that form qualify (not ``unbiased``,
      ``loo``: their score terms use the outer value);
    * ``outer``: u = grad V(theta'_inner) ``"exact"``, or ``"sampled"`` from ``n_outer``
      trajectories at theta'_inner; None follows the call's ``n_outer``.

    ``n_outer`` fixes M for every call. Returns an :class:`EstimatorSpec`, callable as a
    registered estimator and accepted by ``evaluate``; its name states the parts.

    With all three exact the estimate is grad F_inf exactly. With ``hessian`` = ``inner``
    and shared samples it is that estimator sample for sample (lsf, dice, maml, fomaml).

    Reference: B. Liu, X. Feng, J. Ren, L. Mai, R. Zhu, H. Zhang, J. Wang, Y. Yang.
    A Theoretical Understanding of Gradient Bias in Meta-Reinforcement Learning.
    NeurIPS 2022, arXiv:2112.15400.
    Shapes: -> (n_trials, *P).
    Bias/variance: against grad F_inf, the sum of the parts' errors: an exact part adds none;
    an inner step from N samples adds the compositional bias E grad V(theta'_N) -
    grad V(theta'_inf), O(1/N); lsf's or dice's Hessian on samples of its own is unbiased for
    grad^2 V, maml's is not; variance from every sampled part.
    """
    inner_spec, hessian_spec = _part("inner", inner), _part("hessian", hessian)
    if outer is not None and outer not in OUTER_PARTS:
        raise unknown_name("outer part", outer, OUTER_PARTS)
    if n_hessian not in (None, "shared"):
        n_hessian = validation.positive_int("n_hessian", n_hessian)
    if n_hessian is not None and hessian == "exact":
        raise ParameterError("hessian='exact' uses no samples: leave n_hessian unset")
    if n_hessian == "shared" and inner == "exact":
        raise ParameterError("n_hessian='shared' shares the inner part's samples, but "
                             "inner='exact' has none")
    n_outer = validation.optional_positive_int("n_outer", n_outer)
    if outer == "exact" and n_outer is not None:
        raise ParameterError("outer='exact' uses no outer samples: leave n_outer unset")
    needs_model = "exact" in (inner, hessian) or outer == "exact"
    parts = dict(inner=inner, hessian=hessian, outer=outer, n_hessian=n_hessian,
                 n_outer=n_outer)
    label = "decomposed:" + ",".join(f"{k}={v}" for k, v in parts.items() if v is not None)

    def from_samples(task: Any, theta: torch.Tensor, inner_traj: Trajectories, *,
                     inner_lr: float, outer: OuterSampler | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        task_index = inner_traj.task_index
        if inner_spec is None:
            adapted = _exact_inner_step(task, theta, task_index, inner_lr)
        else:
            capture = _Capture()
            try:
                inner_spec.from_samples(task, theta, inner_traj, inner_lr=inner_lr,
                                        outer=capture)
            except _Captured:
                pass
            if capture.adapted is None:
                raise UnsupportedError(f"estimator {inner!r} cannot be the inner part: its "
                                       f"form does not reach its outer step through outer_at")
            adapted = capture.adapted
        outer_grad = outer_at(task, adapted, task_index, outer).grad
        if hessian_spec is None:
            return _exact_hessian_term(task, theta, task_index, inner_lr, outer_grad)
        if n_hessian == "shared":
            hessian_traj = inner_traj
        else:
            rows = theta.detach().expand(inner_traj.n_rows, *theta.shape)
            hessian_traj = task.sample(rows, n_hessian or inner_traj.n_traj, task_index,
                                       generator)
        try:
            estimate = hessian_spec.from_samples(task, theta, hessian_traj, inner_lr=inner_lr,
                                                 outer=_GivenGradient(outer_grad))
        except UnsupportedError:
            estimate = None
        if estimate is None or not torch.isfinite(estimate).all():
            raise UnsupportedError(
                f"estimator {hessian!r} cannot be the hessian part: its estimate is not of the "
                f"form (I + eta H)^T u (it uses the outer value, a score-function term); "
                f"use maml, lsf, dice, fomaml or exact")
        return estimate

    sampled = batched(from_samples, needs_model=needs_model, multi_step_ok=False, name=label,
                      trajectories=lambda n, m, _: decomposed_trajectories(n, m, parts))

    def estimator(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float,
                  n_trials: int, n_outer: int | None = None,
                  generator: torch.Generator | None = None, n_steps: int = 1) -> torch.Tensor:
        return sampled(task, theta, n_inner=n_inner, inner_lr=inner_lr, n_trials=n_trials,
                       n_outer=_outer_count(n_outer), generator=generator, n_steps=n_steps)

    def _outer_count(call_n_outer: Any) -> int | None:
        if n_outer is not None and call_n_outer not in (None, n_outer):
            raise ParameterError(f"{label} fixes n_outer={n_outer}, the call asked for "
                                 f"{call_n_outer}")
        count = n_outer if n_outer is not None else call_n_outer
        if outer == "exact" and count is not None:
            raise ParameterError(f"{label} computes the outer gradient exactly; the call "
                                 f"asked for n_outer={count}")
        if outer == "sampled" and count is None:
            raise ParameterError(f"{label} samples the outer gradient: give n_outer")
        return count

    estimator.__name__ = from_samples.__name__ = "decomposed"
    estimator.__doc__ = from_samples.__doc__ = decomposed.__doc__
    count_determined = (hessian == "exact" or n_hessian == "shared") and (
        inner_spec is None or inner_spec.count_determined) and (
        hessian_spec is None or hessian_spec.count_determined) and outer != "sampled"
    return EstimatorSpec(name=label, fn=estimator,
                         from_samples=from_samples if count_determined else None,
                         needs_model=needs_model, count_determined=count_determined)


def decomposed_estimator(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float,
                         n_trials: int, n_outer: int | None = None,
                         generator: torch.Generator | None = None, n_steps: int = 1,
                         inner: str = "maml", hessian: str = "lsf", outer: str | None = None,
                         n_hessian: int | str | None = None) -> torch.Tensor:
    """Decomposed estimation: inner step, Hessian and outer gradient from three estimators.

    The registered form of :func:`decomposed`, its parts as options (defaults: maml's inner
    step, lsf's Hessian on N samples of its own, the outer step as the call says), so that
    ``decomposed:inner=exact,hessian=lsf,outer=exact`` names any combination.

    Reference: B. Liu, X. Feng, J. Ren, L. Mai, R. Zhu, H. Zhang, J. Wang, Y. Yang.
    A Theoretical Understanding of Gradient Bias in Meta-Reinforcement Learning.
    NeurIPS 2022, arXiv:2112.15400.
    Shapes: -> (n_trials, *P).
    Bias/variance: as :func:`decomposed`: against grad F_inf, the sum of the parts' errors.
    """
    return decomposed(inner, hessian, outer, n_hessian=n_hessian).fn(
        task, theta, n_inner=n_inner, inner_lr=inner_lr, n_trials=n_trials, n_outer=n_outer,
        generator=generator, n_steps=n_steps)


def decomposed_trajectories(n_inner: int, n_outer: int | None, options: dict[str, Any]) -> int:
    """Trajectories one estimate samples per task: the inner part's N (none when exact), the
    Hessian part's own (none when exact or shared) and M outer ones (none when exact)."""
    inner = 0 if options.get("inner", "maml") == "exact" else n_inner
    hessian = (0 if options.get("hessian", "lsf") == "exact"
               or options.get("n_hessian") == "shared" else options.get("n_hessian") or n_inner)
    outer = 0 if options.get("outer") == "exact" else (n_outer or 0)
    return inner + hessian + outer
