"""The MAML-TRPO outer step: a natural-gradient step on theta inside a KL trust region
around the meta-batch's adapted policies.

One meta-iteration has sampled, for each of its B tasks, N inner trajectories at theta and
M outer trajectories at the adapted theta'_b. Hold the inner trajectories fixed and read
theta'_b(theta) = theta + eta g_N(theta) as a function of theta (the task's inner step,
``estimators.common.inner_step``): moving theta moves every adapted policy. TRPO measures a
move by

* the KL: KL(theta) = (1/B) sum_b mean_{x in outer states of b} KL(pi_{theta'_b(theta_0)}(.|x)
  || pi_{theta'_b(theta)}(.|x)), in closed form per state (``Policy.kl``), averaged over the
  steps of the outer trajectories (the padded steps of early-ending episodes left out);
* the surrogate gain: L(theta) - L(theta_0) = (1/B) sum_b (1/M) sum_j sum_t
  (pi_{theta'_b(theta)}(a_t|x_t) / pi_{theta'_b(theta_0)}(a_t|x_t) - 1) G_t, the
  importance-weighted change of the outer return, G_t the reward-to-go discounted from time 0.
  Its gradient at theta_0 is the pathwise part of every estimator's estimate (the outer
  gradient of ``outer_at`` weights the scores by the same G_t), so the line search tests the
  direction against the first-order model it came from. (garage's MAML-TRPO weights both
  by baselined, centred advantages; the estimators here keep the plain outer return, and
  training's ``outer_advantages="task"`` weights both by the task's advantages, passed here
  as ``advantages``.)

The step (Schulman et al. 2015, as MAML-TRPO in garage and ProMP take it):

1. the direction g: the estimator's meta-gradient (any estimator; the KL and the surrogate
   only set the step's length and whether it is taken);
2. s = (F + damping I)^{-1} g by ``cg_iterations`` of conjugate gradient, F the Hessian of
   KL(theta) at theta_0 (the Fisher information of the adapted policies pulled back through
   the inner step), applied as Hessian-vector products of autodiff (never formed);
3. the largest step of the quadratic model, beta = sqrt(2 max_kl / s^T (F + damping I) s);
4. backtracking: theta_0 + r^k beta s for k = 0, 1, ..., max_backtracks - 1 (r =
   ``backtrack_ratio``); the first whose KL(theta) <= max_kl and whose surrogate gain is > 0
   is taken. If none is, theta stays where it was (the iteration logs ``accepted`` false).

Defaults as garage's MAML-TRPO (its ``ConjugateGradientOptimizer``): max KL 0.01, 10 CG
iterations, damping 1e-5, backtrack ratio 0.8, 15 backtracks. References: J. Schulman et al.,
Trust Region Policy Optimization, ICML 2015, arXiv:1502.05477; C. Finn et al., MAML, ICML 2017,
arXiv:1703.03400; J. Rothfuss et al., ProMP, ICLR 2019, arXiv:1810.06784.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError, ShapeError, UnsupportedError
from metarl_bench._src.core.trajectories import Trajectories, reward_to_go
from metarl_bench._src.estimators.common import InnerStep, inner_step


@dataclass(frozen=True)
class TRPO:
    """The settings of the MAML-TRPO outer step (module docstring); checked when made.

    ``max_kl``: the trust region's radius, the mean KL a step may reach; ``cg_iterations``:
    conjugate-gradient iterations for (F + damping I)^{-1} g; ``damping``: added to the
    Fisher's diagonal; ``backtrack_ratio`` r in (0, 1) and ``max_backtracks``: the line
    search tries r^0, r^1, ..., r^(max_backtracks - 1) of the full step.
    """

    max_kl: float = 0.01
    cg_iterations: int = 10
    damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15

    def __post_init__(self) -> None:
        checked = dict(
            max_kl=validation.finite_float("max_kl", self.max_kl, positive=True),
            cg_iterations=validation.positive_int("cg_iterations", self.cg_iterations),
            damping=validation.finite_float("damping", self.damping, low=0.0),
            backtrack_ratio=validation.finite_float("backtrack_ratio", self.backtrack_ratio,
                                                    positive=True),
            max_backtracks=validation.positive_int("max_backtracks", self.max_backtracks))
        if checked["backtrack_ratio"] >= 1:
            raise ParameterError(f"backtrack_ratio must be < 1 (each backtrack shortens the "
                                 f"step), got {self.backtrack_ratio}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def describe(self) -> dict[str, Any]:
        """The settings as plain data (a training log's configuration)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TRPOStep:
    """One outer step's outcome: the new ``theta`` (theta_0 itself when no step was
    accepted), the mean ``kl`` it reached, the ``step_fraction`` r^k of the full step taken
    (0 when none), the ``backtracks`` k tried before it (``max_backtracks`` when none was
    accepted) and its ``surrogate_gain``."""

    theta: torch.Tensor
    accepted: bool
    kl: float
    step_fraction: float
    backtracks: int
    surrogate_gain: float

    def row(self) -> dict[str, Any]:
        """The fields a training log records per iteration."""
        return dict(accepted=self.accepted, kl=self.kl, step_fraction=self.step_fraction,
                    backtracks=self.backtracks, surrogate_gain=self.surrogate_gain)


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       iterations: int, residual_tol: float = 1e-10) -> torch.Tensor:
    """x with A x = b for a symmetric positive-definite A given as ``matvec(v) = A v``, by
    ``iterations`` of conjugate gradient from x = 0 (any shape: dot products run over every
    entry). Stops early once |r|^2 <= residual_tol |b|^2, or on a direction of non-positive
    curvature (A not positive definite there), returning the iterate reached.

    Reference: M. Hestenes, E. Stiefel. Methods of Conjugate Gradients for Solving Linear
    Systems. J. Res. NBS 49 (1952).
    """
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = (residual * residual).sum()
    stop = residual_tol * residual_sq
    for _ in range(iterations):
        if not residual_sq > stop:
            break
        product = matvec(direction)
        curvature = (direction * product).sum()
        if not (torch.isfinite(curvature) and curvature > 0):
            break
        alpha = residual_sq / curvature
        x = x + alpha * direction
        residual = residual - alpha * product
        new_residual_sq = (residual * residual).sum()
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x


def mean_kl(task: Any, old_points: torch.Tensor, new_points: torch.Tensor,
            traj: Trajectories) -> torch.Tensor:
    """(1/R) sum_r mean over the steps of row r's trajectories of KL(pi_old(.|x_t) ||
    pi_new(.|x_t)), each row with its own old and new parameters (R, *P); padded steps
    (``traj.mask``) left out. A scalar, differentiable in both."""
    if getattr(task, "policy", None) is None:
        raise UnsupportedError(f"task {task.name!r} has no policy object, so TRPO has no "
                               f"closed-form KL of its policies")
    kl = task.policy.kl(old_points, new_points, traj.states)                   # (R, N, T)
    if kl.shape != traj.rewards.shape:
        raise ShapeError(f"{type(task.policy).__name__}.kl returned shape {tuple(kl.shape)}; "
                         f"expected one value per step, {tuple(traj.rewards.shape)}")
    if traj.mask is None:
        return kl.mean((1, 2)).mean()
    steps = traj.mask.sum((1, 2)).clamp(min=1).to(kl.dtype)
    return (kl.masked_fill(~traj.mask, 0.0).sum((1, 2)) / steps).mean()


def fisher_product(task: Any, step: InnerStep, outer: Trajectories, sampled_at: torch.Tensor,
                   *, damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (F + damping I) v, F the Hessian at theta_0 of the trust region's mean KL
    (``trpo_step``), by Gauss-Newton: F = sum_b J_b^T K_b J_b, exactly, because the KL and its
    gradient vanish at theta_0.

    J_b = d theta'_b / d theta = I + eta H_b is the inner step's Jacobian (H_b the Hessian of
    row b's inner surrogate, symmetric, so J_b^T w = J_b w: one reverse pass through the inner
    gradient's graph, ``step.adapted`` with ``step.params``); K_b is the Hessian of the KL in
    theta'_b at sampled_at[b] (the Fisher information of the adapted policy on the outer
    states, over B). Each product costs two second-order passes through the inner
    trajectories' graph and one through the outer states'; differentiating the KL of
    theta'(theta) twice (``kl_hessian_product``, the slow twin) needs a third-order pass.
    """
    points = sampled_at.detach().clone().requires_grad_()
    (kl_grad,) = torch.autograd.grad(mean_kl(task, sampled_at, points, outer), points,
                                     create_graph=True)
    moves = step.adapted.requires_grad

    def jacobian_product(rows: torch.Tensor) -> torch.Tensor:
        # d/dtheta of theta'_b is the row's own; J_b^T = J_b
        if not moves:  # theta' does not depend on theta beyond theta itself
            return rows
        (product,) = torch.autograd.grad(step.adapted, step.params, rows, retain_graph=True)
        return product

    def product(vector: torch.Tensor) -> torch.Tensor:
        along = jacobian_product(vector.expand_as(step.params).contiguous())
        if kl_grad.requires_grad:
            (curved,) = torch.autograd.grad(kl_grad, points, along, retain_graph=True)
        else:  # a policy whose KL does not curve (e.g. nothing to measure it on)
            curved = torch.zeros_like(along)
        return jacobian_product(curved).sum(0) + damping * vector

    return product


def kl_hessian_product(task: Any, theta: torch.Tensor, inner: Trajectories,
                       outer: Trajectories, sampled_at: torch.Tensor, *, inner_lr: float,
                       damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The slow twin of ``fisher_product``, for tests: autodiff's Hessian of KL(theta'(theta))
    at theta_0 times v, differentiating through the inner step twice (a third-order pass)."""
    step = inner_step(task, theta, inner, inner_lr)
    kl = mean_kl(task, sampled_at, sampled_at + (step.adapted - step.adapted.detach()), outer)
    (kl_grad,) = torch.autograd.grad(kl, step.params, create_graph=True)

    def product(vector: torch.Tensor) -> torch.Tensor:
        (hessian_v,) = torch.autograd.grad((kl_grad * vector).sum(), step.params,
                                           retain_graph=True)
        return hessian_v.sum(0) + damping * vector

    return product


def trpo_step(task: Any, theta: torch.Tensor, direction: torch.Tensor, inner: Trajectories,
              outer: Trajectories, sampled_at: torch.Tensor, *, inner_lr: float,
              settings: TRPO, advantages: torch.Tensor | None = None) -> TRPOStep:
    """The MAML-TRPO step from ``theta`` (P) along ``direction`` (P, an ascent direction of
    the meta-objective, e.g. the mean of an estimator's estimates).

    ``inner``: the B rows of inner trajectories sampled at theta; ``outer``: the B rows of
    outer trajectories, row b sampled at ``sampled_at[b]`` (B, *P), the adapted parameters
    the estimator reached. The trust region is measured around ``sampled_at``:
    theta'_b(theta) = sampled_at[b] + (inner_step(theta) - inner_step(theta_0))_b, which
    equals ``sampled_at`` at theta_0 exactly and moves with theta as the task's inner step
    does. See the module docstring for the formulas. ``advantages`` (B, M, T): what weights
    the surrogate's ratios in place of the reward-to-go G_t (training's
    ``outer_advantages="task"``: the task's advantages, as the outer gradient used).
    """
    if direction.shape != theta.shape:
        raise ShapeError(f"direction must have theta's shape {tuple(theta.shape)}, got "
                         f"{tuple(direction.shape)}")
    if sampled_at.shape != (outer.n_rows, *theta.shape) or inner.n_rows != outer.n_rows:
        raise ShapeError(f"{inner.n_rows} rows of inner and {outer.n_rows} of outer "
                         f"trajectories, sampled at points of shape {tuple(sampled_at.shape)};"
                         f" expected one point of shape {tuple(theta.shape)} per row")
    sampled_at = sampled_at.detach()
    if advantages is None:
        returns = reward_to_go(outer.rewards, task.gamma)
    elif advantages.shape != outer.rewards.shape:
        raise ShapeError(f"advantages must have the outer rewards' shape "
                         f"{tuple(outer.rewards.shape)}, got {tuple(advantages.shape)}")
    else:
        returns = advantages.detach()
    old_log_prob = task.log_prob(sampled_at, outer).detach()

    def gain_at(points: torch.Tensor) -> torch.Tensor:
        ratio = torch.exp(task.log_prob(points, outer) - old_log_prob)
        return ((ratio - 1.0) * returns).sum(-1).mean()

    step = inner_step(task, theta, inner, inner_lr)
    start = step.adapted.detach()
    fisher = fisher_product(task, step, outer, sampled_at, damping=settings.damping)
    natural = conjugate_gradient(fisher, direction.detach(), settings.cg_iterations)
    curvature = float((natural * fisher(natural)).sum())
    rejected = TRPOStep(theta, False, 0.0, 0.0, settings.max_backtracks, 0.0)
    if not (math.isfinite(curvature) and curvature > 0):
        return rejected
    full_step = math.sqrt(2.0 * settings.max_kl / curvature) * natural
    del fisher, step
    for backtracks in range(settings.max_backtracks):
        fraction = settings.backtrack_ratio ** backtracks
        candidate = theta + fraction * full_step
        moved = inner_step(task, candidate, inner, inner_lr, differentiable=False).adapted
        points = sampled_at + (moved.detach() - start)
        with torch.no_grad():
            reached = float(mean_kl(task, sampled_at, points, outer))
            gain = float(gain_at(points))
        if math.isfinite(reached) and math.isfinite(gain) and reached <= settings.max_kl \
                and gain > 0:
            return TRPOStep(candidate.detach(), True, reached, fraction, backtracks, gain)
    return rejected
