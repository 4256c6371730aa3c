"""Shared set-up of the MuJoCo benchmarks (asv ``bench_mujoco.py`` and the pytest-benchmark
suite): the sampler throughput on HalfCheetahVel and the share of an estimate's time that is
not simulation. Public API only (plus gymnasium and mujoco themselves)."""

import time

import torch

import metarl_bench as mb

#: HalfCheetahVel as the issue measures it: 100 steps, 8 tasks; N=256 simulations a call
#: for the throughput; 8 tasks x N=20 trajectories (and M=20 outer) for the estimates.
TASK_ID = "halfcheetah-vel-v0"
TASK_PARAMS = {"n_tasks": 8, "horizon": 100, "seed": 0}
THROUGHPUT_SIMS = 256
ESTIMATE_N, ESTIMATE_M, ESTIMATE_LR = 20, 20, 1e-3
SEED = 0


def mujoco_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("mujoco") is not None


class Throughput:
    """The same N=256 trajectories of 100 steps three ways: the task's batched sampler,
    the task's Gymnasium ``SyncVectorEnv`` sampler (policy included in both), and a raw
    Python loop of ``mj_step`` over one MjData per trajectory replaying their actions."""

    def __init__(self, n_sims: int = THROUGHPUT_SIMS):
        self.tasks = {sampler: mb.make_task(TASK_ID, sampler=sampler, **TASK_PARAMS)
                      for sampler in ("batch", "gymnasium")}
        task = self.tasks["batch"]
        self.n_rows = task.n_tasks
        self.n_traj = n_sims // self.n_rows
        self.rows = task.initial_params().expand(self.n_rows, -1)
        self.task_index = torch.arange(self.n_rows)
        self.env_steps = self.n_rows * self.n_traj * task.horizon
        traj = self.sample("batch")
        self._prepare_raw(traj)

    def sample(self, sampler: str):
        return self.tasks[sampler].sample(self.rows, self.n_traj, self.task_index,
                                          torch.Generator().manual_seed(SEED))

    def _prepare_raw(self, traj) -> None:
        import gymnasium
        import mujoco

        env = gymnasium.make("metarl_bench/HalfCheetahVel-v0").unwrapped
        self.model, self.frame_skip = env.model, env.frame_skip
        self.actions = traj.actions.reshape(-1, traj.horizon, traj.actions.shape[-1]).numpy()
        self.initial = []
        seeds = self.tasks["batch"].reset_seeds(self.n_rows, self.n_traj,
                                                torch.Generator().manual_seed(SEED))
        for seed in seeds:
            env.reset(seed=int(seed))
            self.initial.append((env.data.qpos.copy(), env.data.qvel.copy()))
        self.datas = [mujoco.MjData(self.model) for _ in seeds]

    def raw_loop(self) -> None:
        import mujoco

        for data, (qpos, qvel) in zip(self.datas, self.initial):
            mujoco.mj_resetData(self.model, data)
            data.qpos[:], data.qvel[:] = qpos, qvel
            mujoco.mj_forward(self.model, data)
        for t in range(self.actions.shape[1]):
            for data, action in zip(self.datas, self.actions[:, t]):
                data.ctrl[:] = action
                mujoco.mj_step(self.model, data, nstep=self.frame_skip)

    #: what ``run`` measures: wall seconds
    clock = staticmethod(time.perf_counter)

    def run(self, path: str) -> float:
        """Seconds (of ``clock``) of one call of ``path``: a sampler, or "raw"."""
        start = self.clock()
        if path == "raw":
            self.raw_loop()
        else:
            self.sample(path)
        return self.clock() - start


class EstimateShare:
    """One ``lsf`` or ``dice`` estimate on HalfCheetahVel (8 tasks, N = M = 20, 100 steps),
    with the time spent inside the task's ``sample`` (simulation and the policy's sampling
    passes) measured apart from the rest (the estimator's own computation). ``task``,
    ``n_inner``, ``n_outer``, ``inner_lr`` and ``clock`` (wall time by default) let another
    task family measure the same way."""

    def __init__(self, estimator: str, *, task=None, n_inner: int = ESTIMATE_N,
                 n_outer: int = ESTIMATE_M, inner_lr: float = ESTIMATE_LR,
                 clock=time.perf_counter):
        self.task = task if task is not None else mb.make_task(TASK_ID, **TASK_PARAMS)
        self.theta = self.task.initial_params()
        self.estimator = mb.get_estimator(estimator)
        self.n_inner, self.n_outer, self.inner_lr = n_inner, n_outer, inner_lr
        self.clock = clock
        self.sampling_seconds = 0.0
        sample = self.task.sample

        def timed_sample(*args, **kwargs):
            start = clock()
            try:
                return sample(*args, **kwargs)
            finally:
                self.sampling_seconds += clock() - start

        self.task.sample = timed_sample

    def run(self) -> tuple[float, float]:
        """(total seconds, seconds outside sampling) of one estimate, on ``clock``."""
        self.sampling_seconds = 0.0
        start = self.clock()
        estimate = self.estimator(self.task, self.theta, n_inner=self.n_inner,
                                  inner_lr=self.inner_lr, n_trials=1, n_outer=self.n_outer,
                                  generator=torch.Generator().manual_seed(SEED))
        total = self.clock() - start
        assert torch.isfinite(estimate).all()
        return total, total - self.sampling_seconds


def interleaved(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each named callable, ``rounds`` times, interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    return times
