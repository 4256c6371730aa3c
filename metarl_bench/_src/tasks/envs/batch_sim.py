"""Many MuJoCo simulations of one locomotion meta-task stepped together, bit for bit as the
Gymnasium environment steps one.

``BatchSimulator`` holds every simulation of a sampling call in one ``mujoco.batch.Batch``
(MuJoCo's C++ thread pool over per-simulation state rows): a time step is one write of all
controls, one ``Batch.step(nstep=frame_skip)`` and array arithmetic for observations and
rewards. It reads every constant (model, frame skip, initial state, reset noise, reward
weights) from an instance of the Gymnasium environment it mirrors, and reproduces it exactly:

* reset: simulation i draws its reset noise from ``np.random.Generator(PCG64(SeedSequence(
  seed_i)))`` in the order ``reset_model`` does, which is what ``env.reset(seed=seed_i)``
  seeds; the Batch's reset also clears the solver warmstart, as ``mj_resetData`` does;
* step: the same controls (in the action dtype given), ``frame_skip`` calls of ``mj_step``
  (the Batch's results are bit-identical to a loop over one MjData per simulation at any
  thread count), and the environment's own reward function applied to arrays.

Chaining ``mujoco.rollout`` one step at a time would instead restart the solver without its
warmstart each call, and drift from the Gymnasium environment after a few steps.

Ant's contact cost needs ``cfrc_ext``, which ``mj_step`` does not compute (Gymnasium calls
``mj_rnePostConstraint`` after the step); the Batch then keeps one MjData per simulation and
that call is made per simulation on a copy (about 50 us each): it is skipped when the contact
cost weight is 0.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from mujoco import batch as mujoco_batch

from metarl_bench._src.tasks.envs import locomotion


class BatchSimulator:
    """``n_sims`` simulations of the (unwrapped) locomotion environment ``env``.

    ``reset(seeds, goals)`` -> observations (n_sims, obs_dim) float64;
    ``step(actions)`` -> (observations, rewards (n_sims,) float64). ``goals`` holds each
    simulation's task value (goal velocity or direction). ``nthread``: the Batch's threads
    (0: all cores); results do not depend on it.
    """

    def __init__(self, env: Any, n_sims: int, nthread: int = 0):
        if not isinstance(env, (locomotion.HalfCheetahVelEnv, locomotion.HalfCheetahDirEnv,
                                locomotion.AntDirEnv)):
            raise TypeError(f"no batched simulator for {type(env).__name__}")
        self.env = env
        self.n_sims = n_sims
        self.is_ant = isinstance(env, locomotion.AntDirEnv)
        self.contact_cost = self.is_ant and env._contact_cost_weight != 0.0
        self.batch = mujoco_batch.Batch(env.model, n_sims, nthread, persistent=self.contact_cost)
        # derived fields must be bound before the calls that fill them
        self.qpos = self.batch.bind("qpos")
        self.qvel = self.batch.bind("qvel")
        self.ctrl = self.batch.bind("ctrl")
        self.xpos = self.batch.bind("xpos") if self.is_ant else None
        self.dt = env.dt
        self.goals = np.zeros(n_sims)
        self._scratch = mujoco.MjData(env.model) if self.contact_cost else None
        self._contact_forces = (np.zeros((n_sims, *env.data.cfrc_ext.shape))
                                if self.contact_cost else None)

    def _x_position(self) -> np.ndarray:
        if self.is_ant:
            return self.xpos[:, self.env._main_body, 0].copy()
        return self.qpos[:, 0].copy()

    def _observation(self) -> np.ndarray:
        skipped = 2 if self.is_ant else 1
        if not self.env._exclude_current_positions_from_observation:
            skipped = 0
        return np.concatenate([self.qpos[:, skipped:], self.qvel], axis=1)

    def reset(self, seeds: np.ndarray, goals: np.ndarray) -> np.ndarray:
        env = self.env
        seeds = np.asarray(seeds)
        if seeds.shape != (self.n_sims,) or np.shape(goals) != (self.n_sims,):
            raise ValueError(f"one seed and one goal per simulation: expected ({self.n_sims},), "
                             f"got {seeds.shape} and {np.shape(goals)}")
        self.goals = np.asarray(goals, dtype=np.float64)
        self.batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        scale = env._reset_noise_scale
        nq, nv = env.model.nq, env.model.nv
        for sim, seed in enumerate(seeds):
            # Gymnasium's seeding: env.reset(seed=s) makes this generator, reset_model draws
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))
            self.qpos[sim] = env.init_qpos + rng.uniform(low=-scale, high=scale, size=nq)
            self.qvel[sim] = env.init_qvel + scale * rng.standard_normal(nv)
        self.batch.forward()
        self._x_before = self._x_position()
        return self._observation()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        env = self.env
        self.ctrl[:] = actions
        self.batch.step(nstep=env.frame_skip)
        x_after = self._x_position()
        x_velocity = (x_after - self._x_before) / self.dt
        self._x_before = x_after
        if isinstance(env, locomotion.HalfCheetahVelEnv):
            reward, _, _ = locomotion.velocity_reward(x_velocity, actions, self.goals,
                                                      env._ctrl_cost_weight)
        elif isinstance(env, locomotion.HalfCheetahDirEnv):
            reward, _, _ = locomotion.direction_reward(x_velocity, actions, self.goals,
                                                       env._ctrl_cost_weight)
        else:
            if self.contact_cost:
                for sim in range(self.n_sims):
                    data = self.batch.get_data(sim, self._scratch)
                    mujoco.mj_rnePostConstraint(env.model, data)
                    self._contact_forces[sim] = data.cfrc_ext
            healthy = locomotion.ant_healthy(self.qpos, self.qvel, env._healthy_z_range)
            reward = locomotion.ant_direction_reward(
                x_velocity, actions, self.goals, self._contact_forces, healthy,
                ctrl_cost_weight=env._ctrl_cost_weight,
                contact_cost_weight=env._contact_cost_weight,
                healthy_reward=env._healthy_reward,
                contact_force_range=env._contact_force_range)
        return self._observation(), np.asarray(reward, dtype=np.float64)
