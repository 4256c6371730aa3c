"""Shared set-up of the Meta-World benchmarks (asv ``bench_metaworld.py`` and the
pytest-benchmark suite): the batched sampler's throughput against Meta-World's own
environments and against a raw ``mj_step`` loop, and the share of an ``lsf`` estimate that is
not sampling. Public API only (plus metaworld and mujoco themselves). Times are process CPU
seconds (``time.process_time``): env-steps per CPU-second, whatever the thread count."""

import time

import numpy as np
import torch

import metarl_bench as mb

from . import mujoco_cases
from .mujoco_cases import interleaved

TASK_ID = "metaworld-ml1-v0"
SKILLS = ("reach-v3", "push-v3", "pick-place-v3")
#: ML1 as the field samples it: 10 goals x N = 10 trajectories of 500 steps a call
FULL = dict(n_tasks=10, n_traj=10, horizon=500)
SEED = 0


def metaworld_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("mujoco", "metaworld"))


class Throughput(mujoco_cases.Throughput):
    """One skill's ``n_tasks`` goals, three ways: the batched sampler (``n_traj``
    trajectories a goal, policy included), Meta-World's own environments (the reference
    sampler, one trajectory a goal: it steps them one after another, so its rate does not
    depend on how many), and a raw loop of ``mj_step`` over one MjData per batched trajectory
    that replays its controls and hand (mocap) targets: the physics alone. ``run`` measures
    process CPU seconds."""

    clock = staticmethod(time.process_time)

    def __init__(self, skill: str, n_tasks: int, n_traj: int, horizon: int):
        params = dict(env_name=skill, n_tasks=n_tasks, horizon=horizon, seed=0)
        self.tasks = {sampler: mb.make_task(TASK_ID, sampler=sampler, nthread=1, **params)
                      for sampler in ("batch", "metaworld")}
        task = self.tasks["batch"]
        self.n_traj = {"batch": n_traj, "metaworld": 1, "raw": n_traj}
        self.rows = task.initial_params().expand(n_tasks, -1)
        self.task_index = torch.arange(n_tasks)
        self.env_steps = {path: n_tasks * n * horizon for path, n in self.n_traj.items()}
        self._prepare_raw(task, self.sample("batch"))
        self.sample("metaworld")  # makes the reference's environments: not timed

    def sample(self, sampler: str):
        return self.tasks[sampler].sample(self.rows, self.n_traj[sampler], self.task_index,
                                          torch.Generator().manual_seed(SEED))

    def _prepare_raw(self, task, traj) -> None:
        import mujoco

        env = task.classes[task.tasks[0].env_name]()
        self.model, self.frame_skip = env.model, env.frame_skip
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        resets = []
        for goal in task.tasks:  # a goal's reset always ends in the same state
            env.set_task(goal)
            env.reset()
            resets.append(np.empty(mujoco.mj_stateSize(self.model, spec)))
            mujoco.mj_getState(self.model, env.data, resets[-1], spec)
        self.initial = [resets[index] for index in
                        np.repeat(np.arange(task.n_tasks), self.n_traj["raw"])]
        self.spec = spec
        actions = traj.actions.reshape(-1, traj.horizon, 4).numpy()
        # Meta-World's set_xyz_action, done ahead: the loop then only writes and steps
        mocap = np.empty(actions.shape[:2] + (3,))
        position = self._mocap_start()
        for t in range(actions.shape[1]):
            position = np.clip(position + np.clip(actions[:, t, :3], -1, 1) * env.action_scale,
                               env.mocap_low, env.mocap_high)
            mocap[:, t] = position
        self.mocap = mocap
        self.ctrl = np.stack([actions[..., 3], -actions[..., 3]], axis=-1)
        self.datas = [mujoco.MjData(self.model) for _ in self.initial]

    def _mocap_start(self) -> np.ndarray:
        import mujoco

        data = mujoco.MjData(self.model)
        start = []
        for state in self.initial:
            mujoco.mj_setState(self.model, data, state, self.spec)
            start.append(data.mocap_pos[0].copy())
        return np.array(start)

    def raw_loop(self) -> None:
        import mujoco

        for data, state in zip(self.datas, self.initial):
            mujoco.mj_setState(self.model, data, state, self.spec)
        for t in range(self.mocap.shape[1]):
            for data, mocap, ctrl in zip(self.datas, self.mocap[:, t], self.ctrl[:, t]):
                data.mocap_pos[0] = mocap
                data.ctrl[:] = ctrl
                mujoco.mj_step(self.model, data, nstep=self.frame_skip)

    def rates(self, rounds: int) -> dict[str, float]:
        """Env-steps per CPU-second of each path, the fastest of ``rounds`` interleaved."""
        seconds = interleaved({path: (lambda path=path: self.run(path))
                               for path in ("batch", "metaworld", "raw")}, rounds)
        return {path: self.env_steps[path] / min(times) for path, times in seconds.items()}


class EstimateShare(mujoco_cases.EstimateShare):
    """One ``lsf`` estimate on ML1 reach with the batched sampler, with the CPU time inside
    the task's ``sample`` (simulation and the policy's sampling passes) measured apart from
    the rest (the estimator's own computation)."""

    def __init__(self, n_tasks: int = 10, n_inner: int = 10, n_outer: int = 10,
                 horizon: int = 500, estimator: str = "lsf"):
        task = mb.make_task(TASK_ID, env_name="reach-v3", n_tasks=n_tasks, horizon=horizon,
                            sampler="batch", nthread=1, seed=0)
        super().__init__(estimator, task=task, n_inner=n_inner, n_outer=n_outer, inner_lr=0.1,
                         clock=time.process_time)
