"""Slow, obviously-correct twins of the estimators (STYLE.md rule 3).

One row at a time, every matrix of docs/estimators.md built explicitly (per-trajectory
gradients and scores by Jacobians, J_N by a full Hessian), then the formula applied as
written. Same signature as the ``*_from_samples`` forms; tests require both to agree on
the same samples. ``per_trial`` is the other slow form: the fast code run one trial at a time
(trajectories vectorised, a Python loop over trials), the baseline of the speed-up benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.autograd.functional import hessian, jacobian

from metarl_bench._src.core.trajectories import Trajectories, discounted_return, discounts, reward_to_go


@dataclass(frozen=True)
class _Row:
    theta: torch.Tensor        # (D,)
    grads: torch.Tensor        # g(tau_i), (N, D)
    scores: torch.Tensor       # s(tau_i), (N, D)
    step_scores: torch.Tensor  # grad log pi(a_t|x_t), (N, T, D)
    j_n: torch.Tensor          # (1/N) sum_i grad_theta g(tau_i), (D, D)
    adapted: torch.Tensor      # theta', (D,)
    value: torch.Tensor        # V(theta'), ()
    outer_grad: torch.Tensor   # grad V(theta'), (D,)


def _log_prob_fn(task: Any, traj: Trajectories, shape: torch.Size) -> Callable:
    return lambda flat: task.log_prob(flat.reshape(1, *shape), traj)[0]         # (N, T)


def _row(task: Any, theta: torch.Tensor, inner: Trajectories, inner_lr: float,
         outer: Callable | None) -> _Row:
    shape = theta.shape
    flat = theta.detach().reshape(-1)
    log_prob = _log_prob_fn(task, inner, shape)
    returns = reward_to_go(inner.rewards, task.gamma)[0]                          # (N, T)
    step_scores = jacobian(log_prob, flat, vectorize=True)                        # (N, T, D)
    grads = (step_scores * returns.unsqueeze(-1)).sum(1)
    j_n = hessian(lambda th: (log_prob(th) * returns).sum(-1).mean(), flat)
    adapted = flat + inner_lr * grads.mean(0)
    value, outer_grad = _outer_row(task, adapted, inner.task_index, outer, shape)
    return _Row(flat, grads, step_scores.sum(1), step_scores, j_n, adapted, value, outer_grad)


def _outer_row(task: Any, adapted: torch.Tensor, task_index: torch.Tensor,
               outer: Callable | None, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """V(theta') and grad V(theta') of one row (flat theta'), exact or from M trajectories."""
    if outer is None:
        value_fn = lambda th: task.value(th.reshape(1, *shape), task_index)[0]  # noqa: E731
        return value_fn(adapted), jacobian(value_fn, adapted)
    outer_traj = outer(adapted.reshape(1, *shape), task_index)
    outer_scores = jacobian(_log_prob_fn(task, outer_traj, shape), adapted, vectorize=True)
    outer_returns = reward_to_go(outer_traj.rewards, task.gamma)[0]
    outer_grad = (outer_scores * outer_returns.unsqueeze(-1)).sum(1).mean(0)
    return discounted_return(outer_traj.rewards, task.gamma)[0].mean(), outer_grad


def _per_row(formula: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def twin(task: Any, theta: torch.Tensor, inner: Trajectories, *, inner_lr: float,
             outer: Callable | None = None, **options: Any) -> torch.Tensor:
        rows = []
        for r in range(inner.n_rows):
            traj = inner.rows(slice(r, r + 1))
            row = _row(task, theta, traj, inner_lr, outer)
            rows.append(formula(row, traj, task, inner_lr, **options).reshape(theta.shape))
        return torch.stack(rows)

    twin.__name__ = formula.__name__
    twin.__doc__ = formula.__doc__
    return twin


@_per_row
def fomaml(row: _Row, traj: Trajectories, task: Any, inner_lr: float) -> torch.Tensor:
    """grad V(theta')."""
    return row.outer_grad


@_per_row
def maml(row: _Row, traj: Trajectories, task: Any, inner_lr: float) -> torch.Tensor:
    """(I + eta J_N)^T grad V(theta')."""
    return row.outer_grad + inner_lr * row.j_n.T @ row.outer_grad


@_per_row
def unbiased(row: _Row, traj: Trajectories, task: Any, inner_lr: float,
             baseline: float | str = 0.0) -> torch.Tensor:
    """(I + eta J_N)^T grad V(theta') + sum_i (V(theta') - b_i) s(tau_i), b_i = b or the
    mean return of the other trajectories."""
    pathwise = row.outer_grad + inner_lr * row.j_n.T @ row.outer_grad
    if baseline != "loo-mean":
        return pathwise + (row.value - baseline) * row.scores.sum(0)
    returns = discounted_return(traj.rewards, task.gamma)[0]
    n_traj = returns.shape[0]
    for i in range(n_traj):
        others = [float(returns[j]) for j in range(n_traj) if j != i]
        left_out_mean = sum(others) / len(others) if others else 0.0
        pathwise = pathwise + (row.value - left_out_mean) * row.scores[i]
    return pathwise


@_per_row
def lsf(row: _Row, traj: Trajectories, task: Any, inner_lr: float) -> torch.Tensor:
    """(I + eta H_N)^T grad V(theta'), H_N = J_N + (1/N) sum_i g(tau_i) s(tau_i)^T."""
    h_n = row.j_n + row.grads.T @ row.scores / row.grads.shape[0]
    return row.outer_grad + inner_lr * h_n.T @ row.outer_grad


@_per_row
def dice(row: _Row, traj: Trajectories, task: Any, inner_lr: float) -> torch.Tensor:
    """(I + eta H_causal)^T grad V(theta'),
    H_causal = J_N + (1/N) sum_i sum_t gamma^t r_t c_t c_t^T, c_t = sum_{k<=t} s_k."""
    cumulative = row.step_scores.cumsum(1)                                       # (N, T, D)
    weights = traj.rewards[0] * discounts(task.gamma, traj.horizon, traj.rewards)  # (N, T)
    products = torch.einsum("nt,ntd,nte->de", weights, cumulative, cumulative)
    h_causal = row.j_n + products / row.grads.shape[0]
    return row.outer_grad + inner_lr * h_causal.T @ row.outer_grad


@_per_row
def loo(row: _Row, traj: Trajectories, task: Any, inner_lr: float) -> torch.Tensor:
    """(I + eta J_N)^T grad V(theta') + sum_i (V(theta') - V(theta' - (eta/N) g_i)) s_i."""
    n_traj = row.grads.shape[0]
    pathwise = row.outer_grad + inner_lr * row.j_n.T @ row.outer_grad
    left_out = row.adapted - (inner_lr / n_traj) * row.grads                    # (N, D)
    task_index = traj.task_index.expand(n_traj)
    values = task.value(left_out.reshape(n_traj, *task.param_shape), task_index)
    return pathwise + ((row.value - values).unsqueeze(-1) * row.scores).sum(0)


@_per_row
def emaml(row: _Row, traj: Trajectories, task: Any, inner_lr: float,
          score_scale: str = "mean") -> torch.Tensor:
    """(I + eta J_N)^T grad V(theta') + V(theta') c sum_i s(tau_i), c = 1/(N T) or 1."""
    pathwise = row.outer_grad + inner_lr * row.j_n.T @ row.outer_grad
    n_steps = traj.n_traj * traj.horizon if traj.mask is None else int(traj.mask.sum())
    scale = 1.0 / max(n_steps, 1) if score_scale == "mean" else 1.0
    return pathwise + scale * row.value * row.scores.sum(0)


# ---- the DiCE family with critics: weights, then (I + eta (J_A + products))^T grad V ------

def _critic_table(task: Any, theta: torch.Tensor, inner: Trajectories, critic: str,
                  critic_noise: float | None, generator: torch.Generator | None
                  ) -> torch.Tensor | None:
    """Exact W[r, t, s] (+ noise) for every row, or None for the other critics."""
    if critic not in ("exact", "noisy-exact"):
        return None
    rows = theta.detach().expand(inner.n_rows, *theta.shape)
    table = task.state_values(rows, inner.task_index)
    if critic == "noisy-exact":
        noise_scale = 0.1 if critic_noise is None else critic_noise
        noise = torch.randn(table.shape, generator=generator, dtype=table.dtype)
        for t in range(table.shape[1]):
            table[:, t] += noise_scale * task.gamma ** t * noise[:, t]
    return table


def _row_critic(task: Any, traj: Trajectories, critic: str,
                table: torch.Tensor | None) -> torch.Tensor:
    """W_t(x_t) of one row's trajectories, W_T = 0: (N, T + 1), one entry at a time."""
    states, rewards = traj.states[0], traj.rewards[0]
    n_traj, horizon = rewards.shape  # states may carry a trailing observation axis
    values = torch.zeros(n_traj, horizon + 1, dtype=rewards.dtype)
    if critic == "none":
        return values
    if table is not None:
        for n in range(n_traj):
            for t in range(horizon):
                values[n, t] = table[t, states[n, t]]
        return values
    from metarl_bench._src.estimators.critics import LINEAR_RIDGE
    n_states = task.n_states
    features = torch.zeros(n_traj, horizon, n_states + 3, dtype=torch.float64)
    targets = torch.zeros(n_traj, horizon, dtype=torch.float64)
    for n in range(n_traj):
        for t in range(horizon):
            features[n, t, states[n, t]] = 1.0
            features[n, t, n_states:] = torch.tensor([(t / horizon) ** p for p in (1, 2, 3)])
            targets[n, t] = sum(task.gamma ** (u - t) * float(rewards[n, u])
                                for u in range(t, horizon))
    x, y = features.reshape(-1, n_states + 3), targets.reshape(-1)
    gram = x.T @ x
    ridge = LINEAR_RIDGE * max(float(torch.diagonal(gram).mean()), 1.0)
    weights = torch.linalg.solve(gram + ridge * torch.eye(n_states + 3, dtype=torch.float64),
                                 x.T @ y)
    for t in range(horizon):
        values[:, t] = task.gamma ** t * (features[:, t] @ weights).to(rewards.dtype)
    return values


def _gae_row(task: Any, traj: Trajectories, values: torch.Tensor, tau: float) -> torch.Tensor:
    rewards = traj.rewards[0]
    n_traj, horizon = rewards.shape
    advantages = torch.zeros_like(rewards)
    for t in range(horizon):
        for u in range(t, horizon):
            delta = task.gamma ** u * rewards[:, u] + values[:, u + 1] - values[:, u]
            advantages[:, t] += tau ** (u - t) * delta
    return advantages


def _through_weights(task: Any, theta: torch.Tensor, traj: Trajectories, inner_lr: float,
                     outer: Callable | None, weights: torch.Tensor,
                     products: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One row: g = (1/N) sum A_t s_t, H = (1/N) sum A_t grad s_t + products(step scores),
    theta' = theta + eta g, estimate (I + eta H)^T grad V(theta')."""
    shape = theta.shape
    flat = theta.detach().reshape(-1)
    log_prob = _log_prob_fn(task, traj, shape)
    step_scores = jacobian(log_prob, flat, vectorize=True)                        # (N, T, D)
    n_traj = step_scores.shape[0]
    grad = (step_scores * weights.unsqueeze(-1)).sum((0, 1)) / n_traj
    j_weighted = hessian(lambda th: (log_prob(th) * weights).sum(-1).mean(), flat)
    h_n = j_weighted + products(step_scores) / n_traj
    value, outer_grad = _outer_row(task, flat + inner_lr * grad, traj.task_index, outer, shape)
    return (outer_grad + inner_lr * h_n.T @ outer_grad).reshape(shape)


def _same_and_decayed_products(weights: torch.Tensor, decay: float):
    """sum_n sum_t A_t [s_t s_t^T + s_t S_t^T + S_t s_t^T], S_t = sum_{k<t} decay^(t-k) s_k."""
    def products(step_scores: torch.Tensor) -> torch.Tensor:
        n_traj, horizon, dim = step_scores.shape
        total = torch.zeros(dim, dim, dtype=step_scores.dtype)
        for n in range(n_traj):
            for t in range(horizon):
                s_t = step_scores[n, t]
                earlier = torch.zeros(dim, dtype=step_scores.dtype)
                for k in range(t):
                    earlier += decay ** (t - k) * step_scores[n, k]
                total += weights[n, t] * (torch.outer(s_t, s_t) + torch.outer(s_t, earlier)
                                          + torch.outer(earlier, s_t))
        return total

    return products


def _family_twin(weights_of: Callable[..., torch.Tensor], decay_of: Callable[..., float]):
    def twin(task: Any, theta: torch.Tensor, inner: Trajectories, *, inner_lr: float,
             outer: Callable | None = None, critic: str = "none",
             critic_noise: float | None = None, generator: torch.Generator | None = None,
             **options: Any) -> torch.Tensor:
        table = _critic_table(task, theta, inner, critic, critic_noise, generator)
        rows = []
        for r in range(inner.n_rows):
            traj = inner.rows(slice(r, r + 1))
            values = _row_critic(task, traj, critic, None if table is None else table[r])
            weights = weights_of(task, traj, values, critic, **options)
            rows.append(_through_weights(task, theta, traj, inner_lr, outer, weights,
                                         _same_and_decayed_products(weights,
                                                                    decay_of(**options))))
        return torch.stack(rows)

    return twin


def _gae_weights(task, traj, values, critic, dependency_decay=1.0, gae_lambda=1.0):
    return _gae_row(task, traj, values, gae_lambda)


def _taypo_weights(task, traj, values, critic, order=2):
    rewards = traj.rewards[0]
    if critic == "none":
        return reward_to_go(traj.rewards, task.gamma)[0]
    horizon = rewards.shape[1]
    return torch.stack([task.gamma ** t * rewards[:, t] + values[:, t + 1]
                        for t in range(horizon)], -1)


loaded_dice = _family_twin(_gae_weights, lambda dependency_decay=1.0, gae_lambda=1.0:
                           dependency_decay)
loaded_dice.__doc__ = """(I + eta H)^T grad V(theta'), H = J_A + (1/N) sum A_t [s_t s_t^T +
s_t S_t^T + S_t s_t^T], S_t = sum_{k<t} lambda^(t-k) s_k, A_t = GAE(tau) of the critic."""
lvc = _family_twin(_gae_weights, lambda gae_lambda=1.0: 0.0)
lvc.__doc__ = """(I + eta H)^T grad V(theta'), H = J_A + (1/N) sum A_t s_t s_t^T."""
# order 1: only same-step products (decay 0); order 2: every earlier step counts (decay 1)
taypo = _family_twin(_taypo_weights, lambda order=2: 0.0 if order == 1 else 1.0)
taypo.__doc__ = """(I + eta H)^T grad V(theta'), H = J_Q + (1/N) sum_t Q_t s_t s_t^T
(+ sum_{t<m} Q_m (s_t s_m^T + s_m s_t^T) for order 2), Q_t = G_t or gamma^t r_t + W_{t+1}."""


def tmaml(task: Any, theta: torch.Tensor, inner: Trajectories, *, inner_lr: float,
          outer: Callable | None = None, baseline: float | str = "loo-mean") -> torch.Tensor:
    """(I + eta (H_causal - C))^T grad V(theta'), theta' = theta + eta g_N (plain),
    C = (1/N) sum_i sum_t b_it [grad s_t + s_t s_t^T + s_t S_<t^T + S_<t s_t^T], b_it the
    other trajectories' mean reward-to-go at t (one entry at a time) or gamma^t b."""
    rows = []
    for r in range(inner.n_rows):
        traj = inner.rows(slice(r, r + 1))
        row = _row(task, theta, traj, inner_lr, outer)
        returns = reward_to_go(traj.rewards, task.gamma)[0]                          # (N, T)
        n_traj, horizon = returns.shape
        weights = torch.zeros_like(returns)
        for i in range(n_traj):
            for t in range(horizon):
                if baseline == "loo-mean":
                    others = [float(returns[j, t]) for j in range(n_traj) if j != i]
                    weights[i, t] = sum(others) / len(others) if others else 0.0
                else:
                    weights[i, t] = task.gamma ** t * baseline
        log_prob = _log_prob_fn(task, traj, theta.shape)
        second = hessian(lambda th: (log_prob(th) * weights).sum() / n_traj, row.theta)
        cumulative = row.step_scores.cumsum(1)
        rewards = traj.rewards[0] * discounts(task.gamma, traj.horizon, traj.rewards)
        h_causal = row.j_n + torch.einsum("nt,ntd,nte->de", rewards, cumulative,
                                          cumulative) / n_traj
        control = second + _same_and_decayed_products(weights, 1.0)(row.step_scores) / n_traj
        h_n = h_causal - control
        rows.append((row.outer_grad + inner_lr * h_n.T @ row.outer_grad).reshape(theta.shape))
    return torch.stack(rows)


def hf_maml(task: Any, theta: torch.Tensor, inner: Trajectories, *, inner_lr: float,
            outer: Callable | None = None, delta: float = 0.01) -> torch.Tensor:
    """u + eta [g_IS(theta + delta u) - g_IS(theta - delta u)] / (2 delta), u = grad V(theta'),
    g_IS(x) = (1/N) sum_i p_x(tau_i)/p_theta(tau_i) sum_t grad log pi_x(a_t|x_t) G_t by
    per-trajectory Jacobians, one row at a time."""
    shape = theta.shape
    rows = []
    for r in range(inner.n_rows):
        traj = inner.rows(slice(r, r + 1))
        row = _row(task, theta, traj, inner_lr, outer)
        log_prob = _log_prob_fn(task, traj, shape)
        returns = reward_to_go(traj.rewards, task.gamma)[0]                          # (N, T)
        base = log_prob(row.theta).sum(-1)

        def weighted_gradient(point: torch.Tensor) -> torch.Tensor:
            step_scores = jacobian(log_prob, point, vectorize=True)                  # (N, T, D)
            ratios = torch.exp(log_prob(point).sum(-1) - base)                       # (N,)
            per_traj = (step_scores * returns.unsqueeze(-1)).sum(1)                  # (N, D)
            return (ratios.unsqueeze(-1) * per_traj).mean(0)

        difference = (weighted_gradient(row.theta + delta * row.outer_grad)
                      - weighted_gradient(row.theta - delta * row.outer_grad))
        rows.append((row.outer_grad + inner_lr * difference / (2 * delta)).reshape(shape))
    return torch.stack(rows)


def es_maml(task: Any, theta: torch.Tensor, inner: Trajectories, *, inner_lr: float,
            outer: Callable | None = None, perturbations: torch.Tensor,
            sigma: float) -> torch.Tensor:
    """(1/(2 sigma P)) sum_p [F(theta + sigma e_p) - F(theta - sigma e_p)] e_p, one point at
    a time: F(x) = V(x + eta g_N(x)), rows of ``inner`` ordered (R, sign, P)."""
    shape = theta.shape
    n_rows, n_perturbations = perturbations.shape[:2]
    rows = []
    for r in range(n_rows):
        estimate = torch.zeros(shape, dtype=theta.dtype)
        for sign_index, sign in enumerate((1.0, -1.0)):
            for p in range(n_perturbations):
                index = (r * 2 + sign_index) * n_perturbations + p
                traj = inner.rows(slice(index, index + 1))
                point = (theta.detach() + sign * sigma * perturbations[r, p]).reshape(-1)
                scores = jacobian(_log_prob_fn(task, traj, shape), point, vectorize=True)
                returns = reward_to_go(traj.rewards, task.gamma)[0]
                adapted = point + inner_lr * (scores * returns.unsqueeze(-1)).sum(1).mean(0)
                if outer is None:
                    value = task.value(adapted.reshape(1, *shape), traj.task_index)[0]
                else:
                    value = discounted_return(outer(adapted.reshape(1, *shape),
                                                    traj.task_index).rewards,
                                              task.gamma)[0].mean()
                estimate += sign * value * perturbations[r, p] / (2 * sigma * n_perturbations)
        rows.append(estimate)
    return torch.stack(rows)


def per_trial(from_samples: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The fast code, one trial (row) at a time: the 'careful per-trial implementation'.

    Estimators with several inner rows per estimate (``es-maml``: 2 P perturbed points) get
    their per-row tensor option ``perturbations`` sliced along with their block of rows.
    """

    def looped(task: Any, theta: torch.Tensor, inner: Trajectories, *, inner_lr: float,
               outer: Callable | None = None, **options: Any) -> torch.Tensor:
        perturbations = options.pop("perturbations", None)
        n_rows = inner.n_rows if perturbations is None else perturbations.shape[0]
        block = inner.n_rows // n_rows
        parts = []
        for r in range(n_rows):
            if perturbations is not None:
                options["perturbations"] = perturbations[r:r + 1]
            parts.append(from_samples(task, theta, inner.rows(slice(r * block, (r + 1) * block)),
                                      inner_lr=inner_lr, outer=outer, **options))
        return torch.cat(parts)

    return looped


# ---- K inner steps: per-row nested autodiff --------------------------------------------
#
# The K-step twins do not chain Jacobians by hand (the fast path does, in
# common.multi_step): one row at a time, theta_0 is a leaf, each step builds theta_{k+1} from
# theta_k *with the graph kept*, so theta_k is a differentiable function of theta_0, and one
# backward pass of the objective below differentiates through all K steps. Each estimator is
# a step map whose Jacobian is the estimator's A_k, plus its score terms.

def _step_map_maml(task: Any, point: torch.Tensor, traj: Trajectories, inner_lr: float,
                   shape: torch.Size) -> torch.Tensor:
    """theta + eta grad L, L = (1/N) sum_i sum_t log pi_t G_t (returns held fixed): A = I + eta J."""
    log_prob = _log_prob_fn(task, traj, shape)(point)
    returns = reward_to_go(traj.rewards, task.gamma)[0]
    (grad,) = torch.autograd.grad((log_prob * returns).sum(-1).mean(), point, create_graph=True)
    return point + inner_lr * grad


def _step_map_fomaml(task: Any, point: torch.Tensor, traj: Trajectories, inner_lr: float,
                     shape: torch.Size) -> torch.Tensor:
    """theta + eta stop(g_N): A = I (and d/d eta = g_N)."""
    return point + inner_lr * _plain_gradient(task, point, traj, shape)


def _plain_gradient(task: Any, point: torch.Tensor, traj: Trajectories,
                    shape: torch.Size) -> torch.Tensor:
    """g_N at ``point``, detached."""
    leaf = point.detach().requires_grad_()
    log_prob = _log_prob_fn(task, traj, shape)(leaf)
    returns = reward_to_go(traj.rewards, task.gamma)[0]
    (grad,) = torch.autograd.grad((log_prob * returns).sum(-1).mean(), leaf)
    return grad


def _step_map_lsf(task: Any, point: torch.Tensor, traj: Trajectories, inner_lr: float,
                  shape: torch.Size) -> torch.Tensor:
    """theta + eta grad L + (eta/N) sum_i stop(g_i) (l_i - stop(l_i)), l_i = log p(tau_i):
    the added term is zero, its Jacobian (eta/N) sum_i g_i s_i^T, so A = I + eta H_N."""
    log_prob_fn = _log_prob_fn(task, traj, shape)
    returns = reward_to_go(traj.rewards, task.gamma)[0]
    grads = jacobian(lambda th: (log_prob_fn(th) * returns).sum(-1), point.detach())  # (N, D)
    log_prob = log_prob_fn(point).sum(-1)                                            # (N,)
    zero = (grads * (log_prob - log_prob.detach()).unsqueeze(-1)).mean(0)
    return _step_map_maml(task, point, traj, inner_lr, shape) + inner_lr * zero


def _step_map_dice(task: Any, point: torch.Tensor, traj: Trajectories, inner_lr: float,
                   shape: torch.Size) -> torch.Tensor:
    """theta + eta grad L_DiCE, L_DiCE = (1/N) sum_i sum_t gamma^t r_t box(sum_{k<=t} log pi_k)."""
    log_prob = _log_prob_fn(task, traj, shape)(point)
    cumulative = log_prob.cumsum(-1)
    weights = traj.rewards[0] * discounts(task.gamma, traj.horizon, traj.rewards)
    surrogate = (weights * torch.exp(cumulative - cumulative.detach())).sum(-1).mean()
    (grad,) = torch.autograd.grad(surrogate, point, create_graph=True)
    return point + inner_lr * grad


def _final_outer(task: Any, final: torch.Tensor, traj: Trajectories, outer: Callable | None,
               shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pathwise objective, V(theta_K) detached, grad V(theta_K)) of one row."""
    if outer is None:
        value = task.value(final.reshape(1, *shape), traj.task_index)[0]
        (grad,) = torch.autograd.grad(value, final, retain_graph=True)
        return value, value.detach(), grad
    point = final.detach()
    outer_traj = outer(point.reshape(1, *shape), traj.task_index)
    scores = jacobian(_log_prob_fn(task, outer_traj, shape), point, vectorize=True)  # (M, T, D)
    returns = reward_to_go(outer_traj.rewards, task.gamma)[0]
    grad = (scores * returns.unsqueeze(-1)).sum(1).mean(0)
    value = discounted_return(outer_traj.rewards, task.gamma)[0].mean()
    return (final * grad).sum(), value, grad


def _multi_step_twin(step_map: Callable, score: str | None = None) -> Callable:
    def twin(task: Any, theta: torch.Tensor, steps: list[Trajectories], *, inner_lr: float,
             outer: Callable | None = None, baseline: float = 0.0,
             truncate: int | None = None, wrt: str = "theta") -> torch.Tensor:
        shape = theta.shape
        first = 0 if truncate is None else len(steps) - truncate  # the first step kept
        rows = []
        for r in range(steps[0].n_rows):
            trajs = [s.rows(slice(r, r + 1)) for s in steps]
            points = [theta.detach().reshape(-1).clone().requires_grad_()]
            eta = torch.tensor(inner_lr, dtype=theta.dtype, requires_grad=True)
            for k, traj in enumerate(trajs):
                if k == first:  # truncation: theta_first is where differentiation starts
                    points[-1] = points[-1].detach().requires_grad_()
                step_size = eta if k >= first else inner_lr
                points.append(step_map(task, points[-1], traj, step_size, shape))
            if first == len(trajs):
                points[-1] = points[-1].detach().requires_grad_()
            start = points[first]
            pathwise, value, _ = _final_outer(task, points[-1], trajs[0], outer, shape)
            objective = pathwise
            log_probs = [_log_prob_fn(task, traj, shape)(point).sum(-1)       # (N,) each
                         for traj, point in zip(trajs, points)]
            if score == "unbiased":
                # the magic box of every kept step's samples: its gradient is
                # sum_k (d theta_k / d theta_first)^T sum_i s(tau_i^k)
                total = sum(lp.sum() for lp in log_probs[first:]) + 0.0 * value
                objective = objective + (value - baseline) * torch.exp(total - total.detach())
            elif score == "loo":
                objective = objective + sum(
                    ((value - _loo_baselines(task, trajs, points, k, inner_lr, shape))
                     * log_probs[k]).sum() for k in range(first, len(trajs)))
            if wrt == "theta":
                (grad,) = torch.autograd.grad(objective, start)
                rows.append(grad.reshape(shape))
                continue
            grad, eta_grad = torch.autograd.grad(objective, (start, eta), allow_unused=True)
            eta_grad = torch.zeros(1, dtype=theta.dtype) if eta_grad is None else eta_grad.reshape(1)
            rows.append(eta_grad if wrt == "inner_lr" else torch.cat([grad.reshape(-1), eta_grad]))
        return torch.stack(rows)

    return twin


def _loo_baselines(task: Any, trajs: list[Trajectories], points: list[torch.Tensor], k: int,
                   inner_lr: float, shape: torch.Size) -> torch.Tensor:
    """b_ki = V(Phi^(K-k-1)(theta_{k+1} - (eta/N) g(tau_i^k))), Phi the exact inner step, one
    trajectory at a time."""
    traj = trajs[k]
    returns = reward_to_go(traj.rewards, task.gamma)[0]
    grads = jacobian(lambda th: (_log_prob_fn(task, traj, shape)(th) * returns).sum(-1),
                     points[k].detach())                                         # (N, D)
    value_fn = lambda th: task.value(th.reshape(1, *shape), traj.task_index)[0]  # noqa: E731
    baselines = []
    for g in grads:
        point = points[k + 1].detach() - inner_lr / grads.shape[0] * g
        for _ in range(len(trajs) - k - 1):
            point = point + inner_lr * jacobian(value_fn, point)
        baselines.append(value_fn(point))
    return torch.stack(baselines).detach()


#: name -> the K-step twin ``(task, theta, steps, *, inner_lr, outer=None, **options)``,
#: ``steps`` a list of K Trajectories (R, N, T). Tests require ``common.multi_step`` on the
#: registered one-step form to agree with it on the same samples.
MULTI_STEP = {
    "maml": _multi_step_twin(_step_map_maml),
    "fomaml": _multi_step_twin(_step_map_fomaml),
    "lsf": _multi_step_twin(_step_map_lsf),
    "dice": _multi_step_twin(_step_map_dice),
    "unbiased": _multi_step_twin(_step_map_maml, score="unbiased"),
    "loo": _multi_step_twin(_step_map_maml, score="loo"),
}
