"""The DiCE family: estimators whose Hessian comes from autodiff through an inner surrogate.

Every member builds an inner surrogate L(theta) from the inner trajectories, adapts
theta' = theta + eta grad L (with the graph kept), and returns grad_theta [stop(grad V(theta'))
. theta'] = (I + eta grad^2 L)^T grad V(theta'). They differ only in the surrogate, hence in
the Hessian estimate grad^2 L; with no critic their gradient is the same REINFORCE step.
Writing s_t = grad log pi(a_t|x_t), A_t a step's weight in time-0 units (the reward-to-go G_t,
or an advantage from a critic, see ``critics``), the Hessians are, per trajectory:

* ``dice``:        sum_t A_t [grad s_t + s_t s_t^T + s_t S_<t^T + S_<t s_t^T],  S_<t = sum_{k<t} s_k
* ``loaded-dice``: the same with S_<t replaced by sum_{k<t} lambda**(t-k) s_k
* ``lvc``:         sum_t A_t [grad s_t + s_t s_t^T]  (no products across time)
* ``taypo``:       order 1 as ``lvc``, order 2 as ``dice``, with Q-estimates in place of A_t.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.tasks.advantages import decay_matrix, gae_from_values, require_plain
from metarl_bench._src.core.errors import ParameterError
from metarl_bench._src.estimators import bandit_forms
from metarl_bench._src.estimators.common import (OuterSampler, builds_graph, grad_of, outer_at,
                                                row_params)
from metarl_bench._src.estimators.critics import check_critic, critic_values
from metarl_bench._src.core.trajectories import Trajectories, discounts, reward_to_go


def _magic_box(log_prob_sum: torch.Tensor) -> torch.Tensor:
    """DiCE's operator: equals 1, its gradient is the gradient of its argument times it."""
    return torch.exp(log_prob_sum - log_prob_sum.detach())


def _through_surrogate(task: Any, theta: torch.Tensor, inner: Trajectories, inner_lr: float,
                       outer: OuterSampler | None,
                       surrogate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                       ) -> torch.Tensor:
    """(I + eta grad^2 L)^T grad V(theta') per row, L = ``surrogate(params, log_prob)`` (R, N)
    averaged over the N trajectories, theta' = theta + eta grad L."""
    params = row_params(theta, inner)
    log_prob = task.log_prob(params, inner)
    objective = surrogate(params, log_prob).mean(-1)
    (grad,) = torch.autograd.grad(objective.sum(), params, create_graph=builds_graph(inner))
    adapted = params + inner_lr * grad
    out = outer_at(task, adapted, inner.task_index, outer)
    return grad_of((adapted * out.grad).sum(), params)


def _advantages(task: Any, params: torch.Tensor, inner: Trajectories, critic: str,
                critic_noise: float, gae_lambda: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """The weight A_t of each step (R, N, T): G_t with no critic and tau = 1, else GAE."""
    if critic == "none" and gae_lambda == 1.0:
        return reward_to_go(inner.rewards, task.gamma)
    values = critic_values(task, params, inner, critic, critic_noise, generator)
    discounted = inner.rewards * discounts(task.gamma, inner.horizon, inner.rewards)
    return gae_from_values(discounted, values, gae_lambda)


def _check_family_options(dependency_decay: Any, critic: Any, critic_noise: Any,
                          gae_lambda: Any) -> tuple[float, str, float, float]:
    decay = validation.finite_float("dependency_decay", dependency_decay, low=0.0, high=1.0)
    critic, noise = check_critic(critic, critic_noise)
    tau = validation.finite_float("gae_lambda", gae_lambda, low=0.0, high=1.0)
    return decay, critic, noise, tau


def dice_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                      inner_lr: float, outer: OuterSampler | None = None) -> torch.Tensor:
    """DiCE: autodiff twice through the DiCE inner surrogate.

    L(theta) = (1/N) sum_i sum_t gamma^t r_t box(sum_{k<=t} log pi_k), box(x) = exp(x - stop(x));
    theta' = theta + eta grad L; estimate = grad_theta [stop(grad V(theta')) . theta'].
    Its Hessian is the causal one: (1/N) sum_i sum_t gamma^t r_t [sum_{k<=t} grad s_k +
    (sum_{k<=t} s_k)(sum_{k<=t} s_k)^T]; on a one-step task it equals LSF exactly.

    Reference: J. Foerster, G. Farquhar, M. Al-Shedivat, T. Rocktaeschel, E. Xing,
    S. Whiteson. DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML 2018,
    arXiv:1802.05098.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: an LSF variant: bias vanishes as N grows, variance O(1/N).
    """
    require_plain(task, "dice", "its surrogate weights raw rewards")
    if bandit_forms.applies(task, inner, outer):   # one step: the Hessian of lsf
        return bandit_forms.bandit_step(task, theta, inner, inner_lr, outer).lsf()

    def surrogate(params: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
        discounted_rewards = inner.rewards * discounts(task.gamma, inner.horizon, inner.rewards)
        return (discounted_rewards * _magic_box(log_prob.cumsum(-1))).sum(-1)

    return _through_surrogate(task, theta, inner, inner_lr, outer, surrogate)


def loaded_dice_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                             inner_lr: float, outer: OuterSampler | None = None,
                             dependency_decay: float = 1.0, critic: str = "none",
                             critic_noise: float | None = None, gae_lambda: float = 1.0,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """Loaded DiCE: DiCE with a critic's advantages and dependencies decayed by lambda.

    L(theta) = (1/N) sum_i sum_t A_t [box(w_t) - box(w_t - log pi_t)],
    w_t = sum_{k<=t} lambda^(t-k) log pi_k (lambda = ``dependency_decay``), A_t the GAE(tau)
    advantage (tau = ``gae_lambda``) of the ``critic`` in time-0 units (``critics``): with no
    critic and tau = 1, A_t = G_t. theta' = theta + eta grad L; estimate = (I + eta grad^2 L)^T
    grad V(theta'), grad^2 L = (1/N) sum_i sum_t A_t [grad s_t + s_t s_t^T + s_t S_t^T + S_t s_t^T],
    S_t = sum_{k<t} lambda^(t-k) s_k. lambda = 1 with no critic is ``dice`` sample for sample;
    lambda = 0 is ``lvc``. The critic also enters the inner step (grad L = (1/N) sum A_t s_t),
    as in practical code. ``critic_noise``: the noise scale of ``critic="noisy-exact"``
    (default 0.1), drawn from ``generator``.

    Reference: G. Farquhar, S. Whiteson, J. Foerster. Loaded DiCE: Trading off Bias and
    Variance in Any-Order Score Function Estimators for Reinforcement Learning. NeurIPS 2019,
    arXiv:1909.10549.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: an LSF variant for lambda = 1 and tau = 1 with no critic or an exact one
    (a state baseline keeps the Hessian unbiased, the bias vanishes as N grows, variance
    O(1/N), lower with the critic); lambda < 1, tau < 1 with an inexact critic, or a noisy
    critic leave a bias that does not vanish with N on multi-step tasks.
    """
    decay, critic, noise, tau = _check_family_options(dependency_decay, critic, critic_noise,
                                                      gae_lambda)
    if critic == "none" and tau == 1.0 and bandit_forms.applies(task, inner, outer):
        # one step: no earlier scores to decay, the Hessian of lsf
        return bandit_forms.bandit_step(task, theta, inner, inner_lr, outer).lsf()

    def surrogate(params: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
        advantages = _advantages(task, params, inner, critic, noise, tau, generator)
        weighted = torch.einsum("rnk,tk->rnt", log_prob,
                                decay_matrix(inner.horizon, decay, log_prob))
        return (advantages * (_magic_box(weighted) - _magic_box(weighted - log_prob))).sum(-1)

    return _through_surrogate(task, theta, inner, inner_lr, outer, surrogate)


def lvc_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                     inner_lr: float, outer: OuterSampler | None = None,
                     critic: str = "none", critic_noise: float | None = None,
                     gae_lambda: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """LVC (ProMP's low-variance curvature): the inner surrogate with per-step likelihood ratios.

    L(theta) = (1/N) sum_i sum_t A_t pi_theta(a_t|x_t) / stop(pi_theta(a_t|x_t)), A_t as in
    ``loaded-dice`` (G_t with no critic); theta' = theta + eta grad L; estimate =
    (I + eta grad^2 L)^T grad V(theta'), grad^2 L = (1/N) sum_i sum_t A_t [grad s_t + s_t s_t^T]:
    only same-step score products, no products across time.

    Reference: J. Rothfuss, D. Lee, I. Clavera, T. Asfour, P. Abbeel. ProMP: Proximal
    Meta-Policy Search. ICLR 2019, arXiv:1810.06784.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: on a one-step task it equals ``dice`` and ``lsf`` (bias vanishing with N);
    on a multi-step task its Hessian misses E[s_t S_<t^T G_t] terms, so its bias does not
    vanish as N grows; variance O(1/N), below ``dice``'s.
    """
    _, critic, noise, tau = _check_family_options(0.0, critic, critic_noise, gae_lambda)
    if critic == "none" and tau == 1.0 and bandit_forms.applies(task, inner, outer):
        return bandit_forms.bandit_step(task, theta, inner, inner_lr, outer).lsf()

    def surrogate(params: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
        advantages = _advantages(task, params, inner, critic, noise, tau, generator)
        return (advantages * _magic_box(log_prob)).sum(-1)

    return _through_surrogate(task, theta, inner, inner_lr, outer, surrogate)


def taypo_q_values(task: Any, params: torch.Tensor, inner: Trajectories, critic: str,
                   critic_noise: float, generator: torch.Generator | None) -> torch.Tensor:
    """TayPO's Q-estimates in time-0 units (R, N, T): the Monte Carlo return G_t with no
    critic, else the one-step estimate gamma^t r_t + W_{t+1}(x_{t+1}) (W_T = 0)."""
    if critic == "none":
        return reward_to_go(inner.rewards, task.gamma)
    values = critic_values(task, params, inner, critic, critic_noise, generator)
    return inner.rewards * discounts(task.gamma, inner.horizon, inner.rewards) + values[..., 1:]


def taypo_from_samples(task: Any, theta: torch.Tensor, inner: Trajectories, *,
                       inner_lr: float, outer: OuterSampler | None = None, order: int = 2,
                       critic: str = "none", critic_noise: float | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """TayPO: the inner surrogate is the order-K Taylor expansion of off-policy evaluation.

    rho_t = pi_theta(a_t|x_t) / stop(pi_theta(a_t|x_t)), Q_t a Q-estimate in time-0 units
    (``taypo_q_values``: G_t with no critic, gamma^t r_t + W_{t+1}(x_{t+1}) with one);
    U_1 = sum_t (rho_t - 1) Q_t,  U_2 = U_1 + sum_{t<m} (rho_t - 1)(rho_m - 1) Q_m;
    L = (1/N) sum_i U_K (K = ``order``); theta' = theta + eta grad L; estimate =
    (I + eta grad^2 L)^T grad V(theta'). With no critic, order 1 is ``lvc`` and order 2 is
    ``dice`` sample for sample; with a critic they differ (Q-estimates in place of returns).

    Reference: Y. Tang, T. Kozuno, M. Rowland, R. Munos, M. Valko. Unifying Gradient
    Estimators for Meta-Reinforcement Learning via Off-Policy Evaluation. NeurIPS 2021,
    arXiv:2106.13125.
    Shapes: inner (R, N, T) -> (R, *P).
    Bias/variance: order 2 with no critic or the exact one has an unbiased Hessian (an LSF
    variant, bias vanishing with N, variance O(1/N), lower with the exact critic); order 1
    is biased on multi-step tasks at every N (as ``lvc``); an inexact critic adds a bias.
    """
    if order not in (1, 2) or isinstance(order, bool):
        raise ParameterError(f"order must be 1 or 2, got {order!r}")
    critic, noise = check_critic(critic, critic_noise)
    if critic == "none" and bandit_forms.applies(task, inner, outer):
        # one step, both orders: U_1 = U_2, the Hessian of lsf
        return bandit_forms.bandit_step(task, theta, inner, inner_lr, outer).lsf()

    def surrogate(params: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
        q_values = taypo_q_values(task, params, inner, critic, noise, generator)
        ratio_minus_one = _magic_box(log_prob) - 1.0
        expansion = ratio_minus_one * q_values
        if order == 2:
            earlier = ratio_minus_one.cumsum(-1) - ratio_minus_one          # sum_{t<m}
            expansion = expansion + earlier * expansion
        return expansion.sum(-1)

    return _through_surrogate(task, theta, inner, inner_lr, outer, surrogate)
