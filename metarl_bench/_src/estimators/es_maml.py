"""ES-MAML: a zero-order meta-gradient from antithetic Gaussian perturbations of theta."""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core import draws, validation
from metarl_bench._src.estimators.common import OuterSampler, batched
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
    """ES-MAML: antithetic Gaussian perturbations of theta, each adapted and evaluated.

    Here on given perturbations e_p and inner samples drawn at the perturbed points
    (``draw_at_perturbed_points`` draws both for the registered estimator):
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
    n_perturbations = validation.positive_int(
        "n_perturbations", options.get("n_perturbations", DEFAULT_PERTURBATIONS))
    return 2 * n_perturbations * (n_inner + (n_outer or 0))


def draw_at_perturbed_points(task: Any, theta: torch.Tensor, task_index: torch.Tensor, *,
                              n_inner: int, generator: torch.Generator | None,
                              n_perturbations: int = DEFAULT_PERTURBATIONS,
                              sigma: float = 0.1) -> tuple[Trajectories, dict[str, Any]]:
    """P antithetic Gaussian perturbations e_p ~ N(0, I) of theta per row (P =
    ``n_perturbations``, scale ``sigma``), drawn first, then N inner trajectories at each
    perturbed point theta +- sigma e_p."""
    n_perturbations = validation.positive_int("n_perturbations", n_perturbations)
    sigma = validation.finite_float("sigma", sigma, positive=True)
    perturbations = draws.normal((task_index.shape[0], n_perturbations, *theta.shape),
                                 generator, theta)
    inner = task.sample(perturbed_points(theta, perturbations, sigma), n_inner,
                        task_index.repeat_interleave(2 * n_perturbations), generator)
    return inner, {"perturbations": perturbations, "sigma": sigma}


#: ES-MAML as registered: antithetic Gaussian perturbations of theta, each adapted on fresh
#: samples and evaluated; every estimate uses 2 P (N + M) trajectories. One inner step only
#: (``n_steps`` > 1 raises UnsupportedError). Not count-determined (the perturbations are
#: random beyond the inner samples): Monte Carlo moments only.
es_maml = batched(es_maml_from_samples, draw=draw_at_perturbed_points,
                  trajectories=es_maml_trajectories, multi_step_ok=False, name="es-maml")
