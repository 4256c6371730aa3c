"""Critics of the DiCE family: state values along sampled trajectories, and the advantages
and Q-estimates built from them.

Every quantity here is discounted from time 0, like ``trajectories.reward_to_go``: the
critic's value of step t is W_t(x_t) ~ E[sum_{t' >= t} gamma**t' r_t' | x_t], so that
G_t - W_t(x_t) is the advantage of step t in the units in which the surrogates weigh it.
The critics are constants of the surrogates (no gradient flows through them).

Critics (the ``critic`` option):

* ``"none"``: W = 0 (Monte Carlo returns);
* ``"exact"``: the task's exact W_t(s) at the current policy (tasks with a tabular model);
* ``"noisy-exact"``: the exact one plus seeded Gaussian noise gamma**t * critic_noise * eps
  per (row, time, state): a critic with a known error, drawn from the call's generator;
* ``"linear"``: least squares, on the row's own N trajectories, of the return from each step
  (discounted from that step) on one-hot state and time features (t/T, (t/T)**2, (t/T)**3:
  ``time_features_per_horizon``),
  as the linear feature baseline of MAML-RL and ProMP, with a ridge term that keeps the
  system positive definite (unvisited states, a constant time feature); the fit is then
  scaled by gamma**t into time-0 units.
"""

from __future__ import annotations

from typing import Any

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError, UnsupportedError
from metarl_bench._src.core.trajectories import Trajectories, discounts
from metarl_bench._src.tasks.advantages import decay_matrix, time_features_per_horizon

CRITICS = ("none", "exact", "noisy-exact", "linear")
DEFAULT_CRITIC_NOISE = 0.1
#: ridge of the linear critic, relative to the mean diagonal of X^T X
LINEAR_RIDGE = 1e-5


def check_critic(critic: Any, critic_noise: Any) -> tuple[str, float]:
    """The critic's name and noise scale, checked (noise only where it applies)."""
    if critic not in CRITICS:
        raise ParameterError(f"critic must be one of {', '.join(map(repr, CRITICS))}, "
                             f"got {critic!r}")
    if critic != "noisy-exact":
        if critic_noise is not None:
            raise ParameterError(f"critic_noise applies only to critic='noisy-exact', got "
                                 f"critic={critic!r}")
        return critic, 0.0
    if critic_noise is None:
        return critic, DEFAULT_CRITIC_NOISE
    return critic, validation.finite_float("critic_noise", critic_noise, low=0.0)


def returns_from_each_step(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """sum_{t' >= t} gamma**(t'-t) r_t' (discounted from t): (R, N, T) -> (R, N, T)."""
    return torch.einsum("rnu,ut->rnt", rewards, decay_matrix(rewards.shape[-1], gamma, rewards))


def linear_ridge(gram: torch.Tensor) -> torch.Tensor:
    """The ridge added to X^T X (..., F, F): LINEAR_RIDGE times its mean diagonal, floored."""
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1)
    return LINEAR_RIDGE * scale.clamp(min=1.0)


def _linear_values(task: Any, inner: Trajectories) -> torch.Tensor:
    """The fitted linear critic at every visited (t, x_t), discounted from 0: (R, N, T).

    X^T X and X^T y are assembled by scatter-adds over the one-hot state block (the
    features are never materialised), then solved in float64.
    """
    n_states = getattr(task, "n_states", None)
    if n_states is None:
        raise UnsupportedError(f"critic='linear' needs discrete states (a tabular task); "
                               f"task {task.name!r} has none")
    if inner.mask is not None:
        raise UnsupportedError(f"critic='linear' is implemented for fixed-length episodes; "
                               f"task {task.name!r} pads episodes of random length")
    rewards = inner.rewards
    n_rows, n_traj, horizon = rewards.shape
    n_features = n_states + 3
    wide = torch.float64
    targets = returns_from_each_step(rewards, task.gamma).to(wide)            # (R, N, T)
    phi = time_features_per_horizon(horizon, targets)                         # (T, 3)
    flat_state = (torch.arange(n_rows, device=rewards.device).view(-1, 1, 1) * n_states
                  + inner.states).reshape(-1)
    phi_per_step = phi.expand(n_rows, n_traj, horizon, 3).reshape(-1, 3)
    counts = torch.zeros(n_rows * n_states, dtype=wide, device=rewards.device).index_add_(
        0, flat_state, torch.ones_like(flat_state, dtype=wide))
    state_time = torch.zeros(n_rows * n_states, 3, dtype=wide, device=rewards.device).index_add_(
        0, flat_state, phi_per_step)
    state_target = torch.zeros(n_rows * n_states, dtype=wide, device=rewards.device).index_add_(
        0, flat_state, targets.reshape(-1))
    gram = targets.new_zeros(n_rows, n_features, n_features)
    gram[:, :n_states, :n_states] = torch.diag_embed(counts.view(n_rows, n_states))
    gram[:, :n_states, n_states:] = state_time.view(n_rows, n_states, 3)
    gram[:, n_states:, :n_states] = state_time.view(n_rows, n_states, 3).transpose(1, 2)
    gram[:, n_states:, n_states:] = n_traj * phi.T @ phi
    moment = torch.cat([state_target.view(n_rows, n_states),
                        torch.einsum("rnt,tk->rk", targets, phi)], -1)           # (R, F)
    eye = torch.eye(n_features, dtype=wide, device=rewards.device)
    ridge = linear_ridge(gram)
    weights = torch.linalg.solve(gram + ridge.view(-1, 1, 1) * eye, moment)      # (R, F)
    state_part = weights[:, :n_states].gather(1, inner.states.reshape(n_rows, -1))
    time_part = phi @ weights[:, n_states:].T                                   # (T, R)
    values = state_part.view(n_rows, n_traj, horizon) + time_part.T.unsqueeze(1)
    return (values * discounts(task.gamma, horizon, values)).to(rewards.dtype)


def critic_values(task: Any, params: torch.Tensor, inner: Trajectories, critic: str,
                  critic_noise: float, generator: torch.Generator | None) -> torch.Tensor:
    """W_t(x_t) of every step of every trajectory, and W_T = 0: (R, N, T + 1), no gradient.

    ``params``: the rows' parameters (R, *P) at which the exact critic is evaluated.
    """
    rewards = inner.rewards
    if critic == "none":
        values = torch.zeros_like(rewards)
    elif critic == "linear":
        values = _linear_values(task, inner)
    else:
        with torch.no_grad():
            table = task.state_values(params.detach(), inner.task_index)         # (R, T, S)
        if critic == "noisy-exact":
            gen_device = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(table.shape, generator=generator, device=gen_device,
                                dtype=table.dtype).to(table.device)
            scale = critic_noise * discounts(task.gamma, table.shape[1], table)
            table = table + scale.view(1, -1, 1) * noise
        values = table.unsqueeze(1).expand(-1, inner.n_traj, -1, -1).gather(
            -1, inner.states.unsqueeze(-1)).squeeze(-1)
    return torch.cat([values, torch.zeros_like(values[..., :1])], -1).detach()
