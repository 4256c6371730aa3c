"""MuJoCo locomotion meta-tasks on Gymnasium's v5 models: HalfCheetahVel, HalfCheetahDir,
AntDir.

Each environment is a Gymnasium v5 environment (same model file, frame skip, reset noise and
observation) whose reward depends on a *task* (a goal velocity or a direction) that can be
changed between episodes: the meta-task protocol ``sample_tasks(n, rng)``, ``set_task(task)``,
``get_task()``. The reward functions below are plain array functions shared with the batched
simulator (``metarl_bench._src.tasks.envs.batch_sim``), so that the two compute the same bits.

Forward velocity and control cost follow MAML-RL's later ports (garage, pytorch-maml-rl), which
are also what Gymnasium v5 computes: v_x = (x_after - x_before) / dt with x the root's
x-coordinate (HalfCheetah: qpos[0]; Ant: the torso's position xpos, as Gymnasium's Ant-v5),
dt = frame_skip * timestep = 0.05 s, and the control cost on the action as given (MuJoCo then
clamps the control to [-1, 1]).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from metarl_bench._src.tasks.envs.meta import MetaTaskEnv, rng_of, task_count
from metarl_bench._src.core.errors import ParameterError


@contextlib.contextmanager
def gymnasium_model_warnings() -> Iterator[None]:
    """Compile Gymnasium's model files without MuJoCo 4's deprecation of ``settotalmass``.

    The attribute is in Gymnasium's own half_cheetah.xml, not ours to change; MuJoCo would
    print the notice and append it to MUJOCO_LOG.TXT in the working directory each time an
    environment is made. Any other MuJoCo warning is passed on as a Python warning.
    """
    def handle(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(handle)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def velocity_reward(x_velocity: np.ndarray, action: np.ndarray, goal_velocity: np.ndarray,
                    ctrl_cost_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-|v_x - v_goal| - w |a|^2 for any batch shape; returns (reward, forward term, -cost).

    ``action`` (..., nu) keeps its dtype: float32 actions give a float32 control cost, exactly
    as Gymnasium's own ``control_cost`` does.
    """
    forward = -1.0 * np.abs(x_velocity - goal_velocity)
    ctrl_cost = ctrl_cost_weight * np.sum(np.square(action), axis=-1)
    return forward - ctrl_cost, forward, -ctrl_cost


def direction_reward(x_velocity: np.ndarray, action: np.ndarray, direction: np.ndarray,
                     ctrl_cost_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d v_x - w |a|^2; returns (reward, forward term, -cost)."""
    forward = direction * x_velocity
    ctrl_cost = ctrl_cost_weight * np.sum(np.square(action), axis=-1)
    return forward - ctrl_cost, forward, -ctrl_cost


def ant_direction_reward(x_velocity: np.ndarray, action: np.ndarray, direction: np.ndarray,
                         contact_forces: np.ndarray | None, healthy: np.ndarray, *,
                         ctrl_cost_weight: float, contact_cost_weight: float,
                         healthy_reward: float, contact_force_range: tuple[float, float]
                         ) -> np.ndarray:
    """d v_x + healthy_reward * healthy - w_c |a|^2 - w_f |clip(cfrc_ext)|^2.

    ``contact_forces`` (..., nbody, 6) is MuJoCo's cfrc_ext; None when its weight is 0.
    """
    forward = direction * x_velocity
    survive = healthy * healthy_reward
    costs = ctrl_cost_weight * np.sum(np.square(action), axis=-1)
    if contact_cost_weight != 0.0:
        low, high = contact_force_range
        clipped = np.clip(contact_forces, low, high)
        flat = clipped.reshape(*clipped.shape[:-2], -1)
        costs = costs + contact_cost_weight * np.sum(np.square(flat), axis=-1)
    # grouped as Gymnasium's Ant-v5 groups them, so its settings reproduce its reward bits
    return (forward + survive) - costs


def ant_healthy(qpos: np.ndarray, qvel: np.ndarray, z_range: tuple[float, float]) -> np.ndarray:
    """Gymnasium Ant's health: finite state and torso height within ``z_range``."""
    finite = np.isfinite(qpos).all(-1) & np.isfinite(qvel).all(-1)
    return finite & (z_range[0] <= qpos[..., 2]) & (qpos[..., 2] <= z_range[1])


def _check_task(task: Any, key: str) -> float:
    if not isinstance(task, dict) or set(task) != {key}:
        raise ParameterError(f"a task of this environment is a dict {{{key!r}: value}}, got {task!r}")
    given = task[key]
    number = isinstance(given, (int, float, np.integer, np.floating)) or (
        isinstance(given, np.ndarray) and given.shape == ())
    if isinstance(given, (bool, np.bool_)) or not number:
        raise ParameterError(f"task {key} must be one number, got {given!r}")
    value = float(given)
    if not np.isfinite(value):
        raise ParameterError(f"task {key} must be finite, got {given!r}")
    return value


def _check_direction(task: Any) -> float:
    direction = _check_task(task, "direction")
    if direction not in (-1.0, 1.0):
        raise ParameterError(f"task direction must be -1 or 1, got {task['direction']!r}")
    return direction


class DirectionTaskMixin(MetaTaskEnv):
    """Tasks {"direction": d}, d = -1 or +1 with probability 1/2 each."""

    def sample_tasks(self, n_tasks: int, rng: np.random.Generator | int | None = None
                     ) -> list[dict[str, float]]:
        draws = rng_of(self, rng).integers(0, 2, size=task_count(n_tasks))
        return [{"direction": float(d)} for d in 2 * draws - 1]

    def set_task(self, task: dict[str, float]) -> None:
        self._direction = _check_direction(task)

    def get_task(self) -> dict[str, float]:
        return {"direction": self._direction}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self.reset_with_task(seed=seed, options=options)


class HalfCheetahVelEnv(MetaTaskEnv, HalfCheetahEnv):
    """HalfCheetah that must run at a goal velocity (MAML's HalfCheetah-Vel).

    ## Description
    Gymnasium's HalfCheetah-v5 (same model, frame skip 5, dt = 0.05 s, reset noise and
    observation); only the reward changes: it penalises the distance of the forward
    velocity to the task's goal velocity.

    ## Action space
    Box(-1, 1, (6,), float32): torques of the six joints (MuJoCo clamps the control to
    [-1, 1]; the control cost uses the action as given).

    ## Observation space
    Box(-inf, inf, (17,), float64): qpos[1:] (8) then qvel (9), as HalfCheetah-v5. (MAML's
    rllab version also appended the torso's centre of mass; v5's observation is kept.)

    ## Rewards
    reward = -|v_x - v_goal| - ctrl_cost_weight * |a|^2, v_x = (qpos[0]' - qpos[0]) / dt.
    ``info`` holds ``reward_forward`` (the first term), ``reward_ctrl`` (the second),
    ``x_velocity`` and ``x_position``.

    ## Task distribution
    ``{"velocity": v}``, v ~ U[goal_velocity_range] = U[0, 2] by default, the range of MAML's
    experiments as ported by garage and pytorch-maml-rl. ProMP sampled U[0, 3]: pass
    ``goal_velocity_range=(0.0, 3.0)`` to reproduce it.

    ## Starting state
    As HalfCheetah-v5: qpos = init + U[-0.1, 0.1], qvel = init + 0.1 N(0, 1).

    ## Episode end
    No termination; truncation after ``max_episode_steps`` = 200 (MAML's horizon).

    ## Arguments
    ``gymnasium.make("metarl_bench/HalfCheetahVel-v0", goal_velocity_range=(0.0, 2.0),
    ctrl_cost_weight=0.05, reset_noise_scale=0.1, task=None)`` plus HalfCheetah-v5's other
    keyword arguments. ``task`` sets the initial task (default: the range's lower end).

    ## Version history
    * v0: first version, on Gymnasium's HalfCheetah-v5 model.
    """

    def __init__(self, goal_velocity_range: tuple[float, float] = (0.0, 2.0),
                 ctrl_cost_weight: float = 0.05, task: dict[str, float] | None = None,
                 **kwargs: Any):
        low, high = (float(v) for v in goal_velocity_range)
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise ParameterError(f"goal_velocity_range must be finite (low, high) with low <= high, "
                             f"got {goal_velocity_range!r}")
        self.goal_velocity_range = (low, high)
        with gymnasium_model_warnings():
            super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, goal_velocity_range, ctrl_cost_weight, task, **kwargs)
        self.set_task(task if task is not None else {"velocity": low})

    def sample_tasks(self, n_tasks: int, rng: np.random.Generator | int | None = None
                     ) -> list[dict[str, float]]:
        low, high = self.goal_velocity_range
        return [{"velocity": float(v)}
                for v in rng_of(self, rng).uniform(low, high, task_count(n_tasks))]

    def set_task(self, task: dict[str, float]) -> None:
        self._goal_velocity = _check_task(task, "velocity")

    def get_task(self) -> dict[str, float]:
        return {"velocity": self._goal_velocity}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self.reset_with_task(seed=seed, options=options)

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        reward, forward, ctrl = velocity_reward(x_velocity, action, self._goal_velocity,
                                                self._ctrl_cost_weight)
        return reward, {"reward_forward": forward, "reward_ctrl": ctrl}


class HalfCheetahDirEnv(DirectionTaskMixin, HalfCheetahEnv):
    """HalfCheetah that must run forward or backward (MAML's HalfCheetah-Dir).

    ## Description
    Gymnasium's HalfCheetah-v5 with a reward for velocity along the task's direction.

    ## Action space
    Box(-1, 1, (6,), float32), as HalfCheetah-v5.

    ## Observation space
    Box(-inf, inf, (17,), float64): qpos[1:] then qvel, as HalfCheetah-v5.

    ## Rewards
    reward = d v_x - ctrl_cost_weight * |a|^2, d in {-1, +1}, v_x = (qpos[0]' - qpos[0]) / dt.

    ## Task distribution
    ``{"direction": d}``, d = -1 or +1 with probability 1/2 each.

    ## Starting state
    As HalfCheetah-v5.

    ## Episode end
    No termination; truncation after ``max_episode_steps`` = 200.

    ## Arguments
    ``gymnasium.make("metarl_bench/HalfCheetahDir-v0", ctrl_cost_weight=0.05,
    reset_noise_scale=0.1, task=None)`` plus HalfCheetah-v5's keyword arguments; the initial
    task is forward.

    ## Version history
    * v0: first version, on Gymnasium's HalfCheetah-v5 model.
    """

    def __init__(self, ctrl_cost_weight: float = 0.05, task: dict[str, float] | None = None,
                 **kwargs: Any):
        with gymnasium_model_warnings():
            super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, ctrl_cost_weight, task, **kwargs)
        self.set_task(task if task is not None else {"direction": 1.0})

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        reward, forward, ctrl = direction_reward(x_velocity, action, self._direction,
                                                 self._ctrl_cost_weight)
        return reward, {"reward_forward": forward, "reward_ctrl": ctrl}


class AntDirEnv(DirectionTaskMixin, AntEnv):
    """Ant that must walk forward or backward along x (MAML's Ant-Dir).

    ## Description
    Gymnasium's Ant-v5 model (RK4, frame skip 5, dt = 0.05 s) with MAML's direction task: the
    goal is +1 or -1 along the x axis. This is MAML's variant (``AntEnvRandDirec`` in MAML-RL,
    ``AntDirEnv`` in pytorch-maml-rl). ProMP's ``AntRandDirec2DEnv`` is a different task: a
    direction drawn uniformly on the unit circle and reward <v_xy, direction>, so its goals
    are continuous in the plane; results on the two are not comparable.

    ## Action space
    Box(-1, 1, (8,), float32): torques of the eight hinges.

    ## Observation space
    Box(-inf, inf, (27,), float64): qpos[2:] (13) then qvel (14), Gymnasium's Ant-v5 with
    ``include_cfrc_ext_in_observation=False``. MAML's version also observed the clipped
    contact forces, the torso's orientation matrix and its centre of mass.

    ## Rewards
    reward = d v_x + healthy_reward * healthy - ctrl_cost_weight |a|^2
             - contact_cost_weight |clip(cfrc_ext, -1, 1)|^2,
    with v_x the finite difference of the torso's x position over dt (as Ant-v5; MAML read
    the torso's centre-of-mass velocity). MAML's constants are the defaults: healthy reward
    0.05, control cost 0.005 (= 0.5 * 1e-2) and contact cost 5e-4 (= 0.5 * 1e-3, the same as
    Ant-v5's). Ports that run on mujoco-py with MuJoCo >= 2.0 (pytorch-maml-rl, ProMP) read
    cfrc_ext before MuJoCo computes it, so their contact term is always 0; here it is
    computed (pass ``contact_cost_weight=0`` to reproduce them).

    ## Starting state
    As Ant-v5: qpos = init + U[-0.1, 0.1], qvel = init + 0.1 N(0, 1).

    ## Episode end
    Truncation after ``max_episode_steps`` = 200. MAML also ended an episode when the torso
    left ``healthy_z_range`` = (0.2, 1.0); here ``terminate_when_unhealthy`` defaults to False
    so that every trajectory has the same length (the healthy reward still stops counting
    while the torso is out of range).

    ## Arguments
    ``gymnasium.make("metarl_bench/AntDir-v0", ctrl_cost_weight=0.005,
    contact_cost_weight=5e-4, healthy_reward=0.05, terminate_when_unhealthy=False,
    healthy_z_range=(0.2, 1.0), contact_force_range=(-1.0, 1.0), reset_noise_scale=0.1,
    task=None)`` plus Ant-v5's keyword arguments.

    ## Version history
    * v0: first version, on Gymnasium's Ant-v5 model.
    """

    def __init__(self, ctrl_cost_weight: float = 0.005, contact_cost_weight: float = 5e-4,
                 healthy_reward: float = 0.05, terminate_when_unhealthy: bool = False,
                 task: dict[str, float] | None = None, **kwargs: Any):
        kwargs.setdefault("include_cfrc_ext_in_observation", False)
        with gymnasium_model_warnings():
            super().__init__(ctrl_cost_weight=ctrl_cost_weight,
                             contact_cost_weight=contact_cost_weight,
                             healthy_reward=healthy_reward,
                             terminate_when_unhealthy=terminate_when_unhealthy, **kwargs)
        utils.EzPickle.__init__(self, ctrl_cost_weight, contact_cost_weight, healthy_reward,
                                terminate_when_unhealthy, task, **kwargs)
        self.set_task(task if task is not None else {"direction": 1.0})

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        healthy = ant_healthy(self.data.qpos, self.data.qvel, self._healthy_z_range)
        reward = ant_direction_reward(
            x_velocity, action, self._direction,
            self.data.cfrc_ext if self._contact_cost_weight != 0.0 else None, healthy,
            ctrl_cost_weight=self._ctrl_cost_weight,
            contact_cost_weight=self._contact_cost_weight,
            healthy_reward=self._healthy_reward, contact_force_range=self._contact_force_range)
        return float(reward), {"reward_forward": self._direction * x_velocity,
                               "reward_survive": healthy * self._healthy_reward,
                               "reward_ctrl": -self.control_cost(action),
                               "reward_contact": -self.contact_cost}
