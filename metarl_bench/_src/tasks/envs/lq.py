"""Linear-quadratic navigation, as a Gymnasium environment (the ``lq-navigation-v0`` task)."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from metarl_bench._src.tasks.envs.meta import GoalTaskEnv, finite_vector, rng_of, task_count
from metarl_bench._src.core.errors import ParameterError


def sample_goals(n_tasks: int, rng: np.random.Generator, dim: int, goal_low: float,
                 goal_high: float) -> np.ndarray:
    """Goals U[goal_low, goal_high]^dim, (n_tasks, dim) float64: the task distribution of both
    the Gymnasium environment and the ``lq-navigation-v0`` task."""
    return rng.uniform(goal_low, goal_high, size=(n_tasks, dim))


class LQNavigationEnv(GoalTaskEnv, gymnasium.Env):
    """A point in R^d moves towards a goal it cannot see, paying the squared distance.

    ## Description
    The environment of the ``lq-navigation-v0`` task: linear dynamics and a quadratic reward,
    so that with a linear Gaussian policy the state stays Gaussian and the task's value is
    exact. Stepping this environment with the actions of the task's batched sampler gives its
    observations bit for bit, and its rewards bit for bit for dim <= 4 (beyond, numpy and
    torch add the dim squares in different orders: within 2 * dim ulp).

    ## Action space
    ``Box(-inf, inf, (dim,), float64)``: a move, applied as it is (no clipping).

    ## Observation space
    ``Box(-inf, inf, (dim,), float64)``: the position x_t. The goal is not observed.

    ## Rewards
    r_t = -|x_t - g|^2 - control_cost * |a_t|^2, the squared distance of the position the
    action was chosen at (before the move), minus an optional control cost; then
    x_{t+1} = x_t + a_t. Rewards are not discounted here: the task's ``gamma`` weighs them by
    gamma^t in the return.

    ## Starting state
    x_0 ~ N(start_mean, start_std^2 I) from the environment's seeded ``np_random``;
    ``start_mean`` (zeros by default) exactly when ``start_std`` = 0 (the default).
    ``reset(options={"start": x0})`` starts at a given x0 instead (to replay a trajectory).

    ## Episode end
    No termination; truncation after 5 steps (``max_episode_steps`` of the registration, the
    task's default horizon; ``gymnasium.make(..., max_episode_steps=T)`` for another).

    ## Task distribution
    A task is ``{"goal": array of dim numbers}``; ``sample_tasks(n, rng)`` draws goals
    U[goal_low, goal_high]^dim, U[-0.5, 0.5]^2 by default, with the same code as the task's
    ``n_tasks`` goals (``sample_tasks(n, seed)`` gives the goals of ``make_task(
    "lq-navigation-v0", n_tasks=n, seed=seed)``). Until ``set_task`` is called, ``reset``
    draws a goal from the environment's seeded ``np_random``.

    ## Arguments
    ``gymnasium.make("metarl_bench/LQNavigation-v0", dim=2, goal_low=-0.5, goal_high=0.5,
    control_cost=0.0, start_mean=None, start_std=0.0, task=None)``.

    ## Version history
    * v0: initial version (same dynamics, reward, start and goal distribution as the
      ``lq-navigation-v0`` task).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, dim: int = 2, goal_low: float = -0.5, goal_high: float = 0.5,
                 control_cost: float = 0.0, start_mean: Any = None, start_std: float = 0.0,
                 task: dict[str, Any] | None = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ParameterError(f"dim must be a positive integer, got {dim!r}")
        if not goal_low < goal_high:
            raise ParameterError(f"goal_low must be below goal_high, got {goal_low} and "
                                 f"{goal_high}")
        if not (np.isfinite(control_cost) and control_cost >= 0):
            raise ParameterError(f"control_cost must be finite and >= 0, got {control_cost}")
        if not (np.isfinite(start_std) and start_std >= 0):
            raise ParameterError(f"start_std must be finite and >= 0, got {start_std}")
        self.dim = int(dim)
        self.goal_low, self.goal_high = goal_low, goal_high
        self.control_cost, self.start_std = float(control_cost), float(start_std)
        self.start_mean = (np.zeros(self.dim) if start_mean is None
                           else finite_vector("start_mean", start_mean, self.dim))
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.dim,), np.float64)
        self.action_space = spaces.Box(-np.inf, np.inf, (self.dim,), np.float64)
        self._goal: np.ndarray | None = None
        self._position = self.start_mean.copy()
        if task is not None:
            self.set_task(task)

    def sample_tasks(self, n_tasks: int, rng: np.random.Generator | int | None = None
                     ) -> list[dict[str, Any]]:
        goals = sample_goals(task_count(n_tasks), rng_of(self, rng), self.dim, self.goal_low,
                             self.goal_high)
        return [{"goal": goal} for goal in goals]

    def set_task(self, task: dict[str, Any]) -> None:
        if not isinstance(task, dict) or "goal" not in task:
            raise ParameterError(f"an LQNavigation task is {{'goal': {self.dim} numbers}}, "
                                 f"got {task!r}")
        self._goal = finite_vector("the task's goal", task["goal"], self.dim)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.reset_task(options)
        if options and "start" in options:
            self._position = finite_vector("options['start']", options["start"], self.dim)
        elif self.start_std > 0:
            self._position = (self.start_mean
                              + self.start_std * self.np_random.standard_normal(self.dim))
        else:
            self._position = self.start_mean.copy()
        return self._position.copy(), {"task": self.get_task()}

    def step(self, action: Any):
        action = np.asarray(action, dtype=np.float64)
        distance_sq = float(((self._position - self.goal_for_step()) ** 2).sum())
        # the task's torch sampler's operations in its order (sums of d terms aside)
        reward = -distance_sq - self.control_cost * float((action ** 2).sum())
        self._position = self._position + action
        return self._position.copy(), reward, False, False, {"distance_sq": distance_sq}
