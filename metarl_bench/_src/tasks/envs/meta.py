"""The meta-task protocol on Gymnasium environments.

A meta-RL environment is one member of a family of tasks (a goal, a target velocity):
``sample_tasks(n, rng)`` draws n tasks from the family's distribution, ``set_task(task)``
makes the environment that task (from the next ``reset`` on), ``get_task()`` says which it
is. A task is a plain dict of numbers, so it can be logged as JSON.

Every sub-environment of a vector env holds its own task: assign them with
``set_tasks(vector_env, tasks)``, which uses Gymnasium's ``set_attr`` (one value per
sub-environment) on the ``task`` property.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError


class MetaTaskEnv:
    """Mixin for ``gymnasium.Env`` subclasses: the protocol plus a ``task`` property."""

    def sample_tasks(self, n_tasks: int, rng: np.random.Generator | int | None = None
                     ) -> list[dict[str, Any]]:
        """``n_tasks`` tasks drawn from the family's distribution with ``rng`` (a numpy
        Generator or a seed; None: the environment's own ``np_random``)."""
        raise NotImplementedError

    def set_task(self, task: dict[str, Any]) -> None:
        raise NotImplementedError

    def get_task(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def task(self) -> dict[str, Any] | None:
        """The current task, None before any is set (``set_attr`` probes this attribute)."""
        try:
            return self.get_task()
        except ParameterError:
            return None

    @task.setter
    def task(self, task: dict[str, Any]) -> None:
        self.set_task(task)

    def reset_with_task(self, *, seed: int | None = None,
                        options: dict[str, Any] | None = None) -> Any:
        """``reset`` for an environment whose own reset knows nothing of tasks (Gymnasium's
        MuJoCo models): ``options["task"]``, when given, is the task from this episode on."""
        if options and "task" in options:
            self.set_task(options["task"])
        return super().reset(seed=seed, options=options)  # type: ignore[misc]

    def reset_task(self, options: dict[str, Any] | None) -> None:
        """The task of an episode starting now: ``options["task"]`` when given, else the
        current task, else one drawn from the environment's seeded ``np_random``. Call it from
        ``reset`` after ``super().reset(seed=seed)``."""
        if options and "task" in options:
            self.set_task(options["task"])
        elif self.task is None:
            self.set_task(self.sample_tasks(1)[0])



class GoalTaskEnv(MetaTaskEnv):
    """A meta-task environment whose task is a goal vector ``{"goal": array}``, kept in
    ``self._goal`` (None until a task is set) by the subclass's ``set_task``."""

    _goal: np.ndarray | None = None

    def get_task(self) -> dict[str, Any]:
        if self._goal is None:
            raise ParameterError("no task set yet: call set_task or reset first")
        return {"goal": self._goal.copy()}

    def goal_for_step(self) -> np.ndarray:
        """The goal a ``step`` moves towards; a typed error before any task is set."""
        if self._goal is None:
            raise ParameterError(f"{type(self).__name__}.step before any task is set: call "
                                 f"reset() (or set_task) first")
        return self._goal


def task_count(n_tasks: Any) -> int:
    """A checked ``n_tasks`` of ``sample_tasks``: an integer >= 0."""
    return validation.positive_int("n_tasks", n_tasks, minimum=0)


def finite_vector(name: str, value: Any, dim: int) -> np.ndarray:
    """``value`` as ``dim`` finite float64 numbers (a copy); a typed error naming ``name``
    for anything else (text, a wrong length, NaN)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != (dim,) or not np.isfinite(array).all():
        raise ParameterError(f"{name} must be {dim} finite numbers, got {value!r}")
    return array.copy()

def rng_of(env: Any, rng: np.random.Generator | int | None) -> np.random.Generator:
    if rng is None:
        return env.np_random
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ParameterError(f"rng must be a numpy Generator, a seed or None, got {rng!r}")


def set_tasks(vector_env: Any, tasks: Sequence[dict[str, Any]]) -> None:
    """Give each sub-environment of a Gymnasium vector env its own task."""
    if len(tasks) != vector_env.num_envs:
        raise ParameterError(f"need one task per sub-environment: {vector_env.num_envs} "
                             f"sub-environments, got {len(tasks)} tasks")
    vector_env.set_attr("task", list(tasks))
