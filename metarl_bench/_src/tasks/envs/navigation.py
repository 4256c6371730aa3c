"""2D point navigation (Finn et al. 2017), as a Gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from metarl_bench._src.tasks.envs.meta import GoalTaskEnv, finite_vector, rng_of, task_count
from metarl_bench._src.core.errors import ParameterError


def sample_goals(n_tasks: int, rng: np.random.Generator, goal_low: float,
                 goal_high: float) -> np.ndarray:
    """Goals U[goal_low, goal_high]^2, (n_tasks, 2) float64: the task distribution of both
    the Gymnasium environment and the batched ``navigation2d-v0`` task."""
    return rng.uniform(goal_low, goal_high, size=(n_tasks, 2))


class Navigation2DEnv(GoalTaskEnv, gymnasium.Env):
    """A point in the plane moves towards a goal it cannot see.

    ## Description
    The 2D navigation task of MAML (Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for
    Fast Adaptation of Deep Networks", ICML 2017, arXiv:1703.03400): the agent starts at the
    origin and must learn, from rewards alone, where its task's goal is.

    ## Action space
    ``Box(-max_action, max_action, (2,), float64)``: a move (dx, dy). Actions outside the box
    are clipped to it (a Gaussian policy's samples usually are), and the log-probability of
    the unclipped action is what policy gradients use.

    ## Observation space
    ``Box(-inf, inf, (2,), float64)``: the position (x, y). The goal is not observed.

    ## Rewards
    After the move x_{t+1} = x_t + clip(a_t, -max_action, max_action), the reward is
    r_t = -|x_{t+1} - g|, minus the Euclidean distance to the goal.

    ## Starting state
    The origin (0, 0), deterministically.

    ## Episode end
    No termination; truncation after 100 steps (``max_episode_steps`` of the registration).

    ## Task distribution
    A task is ``{"goal": (gx, gy)}``; ``sample_tasks(n, rng)`` draws goals U[goal_low,
    goal_high]^2, U[-0.5, 0.5]^2 by default. Until ``set_task`` is called, ``reset`` draws a
    goal from the environment's seeded ``np_random``.

    ## Arguments
    ``gymnasium.make("metarl_bench/Navigation2D-v0", goal_low=-0.5, goal_high=0.5,
    max_action=0.1, task=None)``.

    ## Version history
    * v0: initial version (goal U[-0.5, 0.5]^2, actions clipped to +-0.1, reward after the
      move, horizon 100; as in MAML's and pytorch-maml-rl's 2D navigation).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, goal_low: float = -0.5, goal_high: float = 0.5,
                 max_action: float = 0.1, task: dict[str, Any] | None = None):
        if not goal_low < goal_high:
            raise ParameterError(f"goal_low must be below goal_high, got {goal_low} and "
                                 f"{goal_high}")
        if not max_action > 0:
            raise ParameterError(f"max_action must be > 0, got {max_action}")
        self.goal_low, self.goal_high, self.max_action = goal_low, goal_high, max_action
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = spaces.Box(-max_action, max_action, (2,), np.float64)
        self._goal: np.ndarray | None = None
        self._position = np.zeros(2)
        if task is not None:
            self.set_task(task)

    def sample_tasks(self, n_tasks: int, rng: np.random.Generator | int | None = None
                     ) -> list[dict[str, Any]]:
        goals = sample_goals(task_count(n_tasks), rng_of(self, rng), self.goal_low,
                             self.goal_high)
        return [{"goal": goal} for goal in goals]

    def set_task(self, task: dict[str, Any]) -> None:
        if not isinstance(task, dict) or "goal" not in task:
            raise ParameterError(f"a Navigation2D task is {{'goal': (gx, gy)}}, got {task!r}")
        self._goal = finite_vector("a Navigation2D task's goal", task["goal"], 2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.reset_task(options)
        self._position = np.zeros(2)
        return self._position.copy(), {"task": self.get_task()}

    def step(self, action: Any):
        move = np.clip(np.asarray(action, dtype=np.float64), -self.max_action, self.max_action)
        self._position = self._position + move
        offset = self._position - self.goal_for_step()
        distance = float(np.hypot(offset[0], offset[1]))
        return self._position.copy(), -distance, False, False, {"distance": distance}
