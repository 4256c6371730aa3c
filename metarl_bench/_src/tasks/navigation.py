"""2D point navigation (``navigation2d-v0``): the Gymnasium environment
``metarl_bench/Navigation2D-v0`` batched in pure torch, with a Gaussian policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarl_bench._src.core import validation
from metarl_bench._src.tasks.advantages import Advantages, make_advantages
from metarl_bench._src.tasks.envs.navigation import sample_goals
from metarl_bench._src.core.errors import ParameterError, unknown_name
from metarl_bench._src.tasks.policies import (CONTINUOUS_POLICIES, DISCRETE_POLICIES, Policy,
                                        make_policy)
from metarl_bench._src.tasks.base import Task, as_tensor
from metarl_bench._src.core.trajectories import Trajectories


class Navigation2DTask(Task):
    """``metarl_bench/Navigation2D-v0`` (see its docstring for the specification) for a
    finite distribution of ``n_tasks`` goals, every row and trajectory stepped together.

    Per time step: one batched policy call for all R x N positions, the move clipped to
    +-max_action, reward -|x_{t+1} - g| (bit for bit as the env computes it). Trajectories
    hold the positions x_t the actions were
    chosen from (R, N, T, 2), the unclipped actions (R, N, T, 2) and the rewards (R, N, T).
    No model: the meta-gradient is estimated (``has_model`` is False).
    """

    has_model = False

    def __init__(self, *, goals: torch.Tensor, horizon: int, gamma: float, max_action: float,
                 policy: Policy, advantages: Advantages):
        self.name = "navigation2d-v0"
        self.goals = goals
        self.n_tasks = goals.shape[0]
        self.horizon, self.gamma, self.max_action = horizon, gamma, max_action
        self.policy = policy
        self.param_shape = policy.param_shape
        self.advantages = advantages

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        params = params.detach()
        n_rows = params.shape[0]
        goals = self.goals.to(dtype=params.dtype, device=params.device)[task_index].unsqueeze(1)
        position = params.new_zeros(n_rows, n_traj, 2)
        positions = params.new_empty(n_rows, n_traj, self.horizon, 2)
        actions = params.new_empty(n_rows, n_traj, self.horizon, 2)
        rewards = params.new_empty(n_rows, n_traj, self.horizon)
        for t in range(self.horizon):
            action = self.policy.sample(params, position, generator)
            positions[:, :, t] = position
            actions[:, :, t] = action
            position = position + action.clamp(-self.max_action, self.max_action)
            offset = position - goals
            # hypot, not sqrt of a sum: torch's vectorised float64 sqrt is not always
            # correctly rounded, its hypot agrees with numpy's bit for bit (the env's)
            rewards[:, :, t] = -torch.hypot(offset[..., 0], offset[..., 1])
        return Trajectories(positions, actions, rewards, task_index)


def make_navigation2d(*, n_tasks: int = 20, seed: int = 0, horizon: int = 100,
                      gamma: float = 0.99, max_action: float = 0.1, goal_low: float = -0.5,
                      goal_high: float = 0.5, goals: Any = None, policy: str = "mlp",
                      hidden: Any = (64, 64), init_std: float = 1.0, policy_seed: int = 0,
                      baseline: str | None = None, gae_lambda: float | None = None,
                      normalize_advantages: bool = False) -> Navigation2DTask:
    """2D point navigation to an unseen goal, Gaussian policy (``navigation2d-v0``).

    ``n_tasks`` goals U[goal_low, goal_high]^2 drawn from ``seed`` (the same draws as
    ``Navigation2DEnv.sample_tasks(n_tasks, seed)``), or explicit ``goals`` (n_tasks, 2).
    Reward -|x_{t+1} - g| after a move clipped to +-``max_action``; fixed ``horizon``
    (100 in MAML), no early end. ``policy``: ``"mlp"`` (Gaussian MLP with ``hidden`` tanh
    layers, 64x64 by default) or ``"linear"``; ``init_std`` the initial action standard
    deviation, ``policy_seed`` the initial weights. ``baseline``, ``gae_lambda``,
    ``normalize_advantages``: the inner step's advantages (they change what F_N is; see
    ``metarl_bench._src.tasks.advantages``).
    """
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    seed = validation.positive_int("seed", seed, minimum=0)
    horizon = validation.positive_int("horizon", horizon)
    gamma = validation.finite_float("gamma", gamma, low=0.0, high=1.0)
    max_action = validation.finite_float("max_action", max_action, positive=True)
    goal_low, goal_high = validation.interval("goal_low", goal_low, "goal_high", goal_high)
    if policy not in CONTINUOUS_POLICIES + DISCRETE_POLICIES:
        raise unknown_name("policy kind", policy, CONTINUOUS_POLICIES + DISCRETE_POLICIES)
    if policy not in CONTINUOUS_POLICIES:
        raise ParameterError(f"navigation2d-v0 has continuous actions: policy must be one of "
                             f"{', '.join(CONTINUOUS_POLICIES)}, got {policy!r}")
    advantages = make_advantages(baseline, gae_lambda, normalize_advantages)
    if goals is None:
        goals_t = torch.as_tensor(sample_goals(n_tasks, np.random.default_rng(seed),
                                               goal_low, goal_high))
    else:
        goals_t = as_tensor("goals", goals, [(-1, 2)])
    net = make_policy(policy, observation_dim=2, action_dim=2, hidden=hidden,
                      init_std=init_std, seed=policy_seed)
    return Navigation2DTask(goals=goals_t, horizon=horizon, gamma=gamma, max_action=max_action,
                            policy=net, advantages=advantages)
