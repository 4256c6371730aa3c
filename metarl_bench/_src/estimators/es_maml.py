"""ES-MAML: a zero-order meta-gradient from antithetic Gaussian perturbations of theta."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import UnsupportedError
from metarl_bench._src.estimators.common import OuterSampler, validate_call
from metarl_bench._src.core.trajectories import Trajectories, discounted_return, discounts

DEFAULT_PERTURBATIONS = 1


def perturbed_points(theta: torch.Tensor, perturbations: torch.Tensor,
                     sigma: float) -> torch.Tensor:
    """theta + sigma e_p and theta - sigma e_p: (R, P, *P) -> (R * 2 * P, *P), rows (R, 2, P)."""
    signs = torch.tensor([1.0, -1.0], dtype=theta.dtype, device=theta.device)
    signs = signs.view(1, 2, 1, *([1] * theta.dim()))
    points = theta.detach() + sigma * signs * perturbations.unsqueeze(1)
    return points.reshape(-1, *theta.shape)


def es_maml_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                         inner_lr: float, outer: OuterSampler | None = None,
                         perturbations: torch.Tensor, sigma: float) -> torch.Tensor:
    """ES-MAML on given perturbations and inner samples drawn at the perturbed points.

    g = (1 / (2 sigma P)) sum_p [F(theta + sigma e_p) - F(theta - sigma e_p)] e_p,
    F(x) = V(x + eta g_N(x)), g_N(x) the REINFORCE step from N fresh trajectories at x and V
    exact (``outer`` None) or the mean discounted return of M trajectories at the adapted point.

    Reference: X. Song, W. Gao, Y. Yang, K. Choromanski, A. Pacchiano, Y. Tang. ES-MAML:
    Simple Hessian-Free Meta Learning. ICLR 2020, arXiv:1910.01215.
    Shapes: ``perturbations`` e (R, P, *P); ``inner`` (R * 2 * P, N, T), its rows ordered
    (R, sign, P) as ``perturbed_points`` lists them -> (R, *P).
    Bias/variance: unbiased for the gradient of the Gaussian-smoothed F_N,
    E_e[F_N(theta + sigma e)], so biased for grad F_N by O(sigma^2); variance of order
    Var(F_hat) dim(theta) / (sigma^2 P), not shrinking with N towards zero (every F_hat is
    one noisy evaluation).
    """
    n_rows, n_perturbations = perturbations.shape[:2]
    points = perturbed_points(theta, perturbations, sigma).requires_grad_()
    log_prob = task.log_prob(points, inner)
    # G_t = (sum of all) - (sum up to t) + (term t): the rewards-to-go without reversing the
    # time axis twice, which was a third of the whole cost here
    discounted_rewards = inner.rewards * discounts(task.gamma, inner.horizon, inner.rewards)
    returns = (discounted_rewards.sum(-1, keepdim=True) - discounted_rewards.cumsum(-1)
               + discounted_rewards)
    objective = (log_prob * returns).sum(-1).mean(-1)
    (inner_grad,) = torch.autograd.grad(objective.sum(), points)
    adapted = (points + inner_lr * inner_grad).detach()
    with torch.no_grad():
        if outer is None:
            values = task.value(adapted, inner.task_index)
        else:
            values = discounted_return(outer(adapted, inner.task_index).rewards,
                                       task.gamma).mean(-1)
    values = values.reshape(n_rows, 2, n_perturbations)
    difference = values[:, 0] - values[:, 1]                                   # (R, P)
    estimate = torch.einsum("rp,rpd->rd", difference, perturbations.reshape(n_rows,
                                                                             n_perturbations, -1))
    return (estimate / (2.0 * sigma * n_perturbations)).reshape(n_rows, *theta.shape)


def es_maml_trajectories(n_inner: int, n_outer: int | None, options: dict[str, Any]) -> int:
    """2 P (N + M): every perturbed point samples its own inner and outer trajectories."""
    return 2 * options.get("n_perturbations", DEFAULT_PERTURBATIONS) * (n_inner + (n_outer or 0))


def es_maml(task: Any, theta: torch.Tensor, *, n_inner: int, inner_lr: float, n_trials: int,
            n_outer: int | None = None, generator: torch.Generator | None = None,
            n_perturbations: int = DEFAULT_PERTURBATIONS, sigma: float = 0.1,
            n_steps: int = 1) -> torch.Tensor:
    """ES-MAML: antithetic Gaussian perturbations of theta, each adapted and evaluated.

    estimate = (1 / (2 sigma P)) sum_p [F(theta + sigma e_p) - F(theta - sigma e_p)] e_p,
    e_p ~ N(0, I) (P = ``n_perturbations``, sigma = ``sigma``), F(x) = V(x + eta g_N(x)) from
    N fresh inner trajectories at each perturbed point, V exact or from M outer trajectories.
    Each estimate uses 2 P (N + M) trajectories. All trials, tasks and perturbations are one
    batch: perturbations drawn first, then every inner sample, then every outer sample.

    Reference: X. Song, W. Gao, Y. Yang, K. Choromanski, A. Pacchiano, Y. Tang. ES-MAML:
    Simple Hessian-Free Meta Learning. ICLR 2020, arXiv:1910.01215.
    Shapes: -> (n_trials, *P).
    Bias/variance: estimates the gradient of the Gaussian-smoothed F_N: bias O(sigma^2)
    against grad F_N, not vanishing with N; variance about Var(F_hat) dim(theta) /
    (sigma^2 P), so small sigma trades bias for variance. Not count-determined (the
    perturbations are random beyond the inner samples): Monte Carlo moments only.
    One inner step only: ``n_steps`` > 1 raises UnsupportedError.
    """
    if validation.positive_int("n_steps", n_steps) > 1:
        raise UnsupportedError("estimator 'es-maml' is defined for one inner step only; "
                               "use n_steps=1")
    n_inner, inner_lr, n_trials, n_outer = validate_call(
        task, theta, n_inner, inner_lr, n_trials, n_outer, generator, needs_model=False)
    n_perturbations = validation.positive_int("n_perturbations", n_perturbations)
    sigma = validation.finite_float("sigma", sigma, positive=True)
    n_rows = n_trials * task.n_tasks
    task_index = torch.arange(n_rows, device=theta.device) % task.n_tasks
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perturbations = torch.randn((n_rows, n_perturbations, *theta.shape), generator=generator,
                                device=gen_device, dtype=theta.dtype).to(theta.device)
    points = perturbed_points(theta, perturbations, sigma)
    point_index = task_index.repeat_interleave(2 * n_perturbations)
    inner = task.sample(points, n_inner, point_index, generator)
    outer = None if n_outer is None else (
        lambda adapted, index: task.sample(adapted, n_outer, index, generator))
    estimates = es_maml_from_samples(task, theta, inner, inner_lr=inner_lr, outer=outer,
                                     perturbations=perturbations, sigma=sigma)
    return estimates.reshape(n_trials, task.n_tasks, *theta.shape).mean(1).detach()
