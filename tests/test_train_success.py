"""Meta-World's success flag, from the simulator to the training log: ``last_success`` after
each step equals ``info["success"]`` of Meta-World's own environment, ``task.sample`` carries
it as ``Trajectories.success`` (also across waves of environments), and ``train`` logs
``success_before`` / ``success_after`` on Meta-World and leaves them out elsewhere."""

import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.tasks import metaworld_tasks
from metarl_bench._src.training.train import _success_rate, train

from conftest import generator

SMALL = dict(env_name="reach-v3", n_tasks=2, horizon=10, hidden=(8,))


def _metaworld():
    pytest.importorskip("mujoco")
    pytest.importorskip("metaworld")
    return metaworld_tasks.require_metaworld()


def test_last_success_is_metaworlds_info_success_after_each_step():
    _metaworld()
    task = mb.make_task("metaworld-ml1-v0", **SMALL)
    sim = metaworld_tasks.MetaWorldSimulator(task.classes)
    goals = [task.tasks[0], task.tasks[1]]
    observation = sim.reset(np.array([5, 6]), goals)
    by_hand = []
    for goal, seed in zip(goals, (5, 6)):
        env = task.classes[goal.env_name]()
        env.set_task(goal)
        env.seed(seed)
        env.reset()
        by_hand.append(env)
    flags = []
    for _ in range(60):
        # a proportional controller towards each goal: the hand gets there within the episode
        targets = np.stack([env._target_pos for env in sim.envs])
        actions = np.clip(10 * (targets - observation[:, :3]), -1, 1)
        actions = np.concatenate([actions, np.zeros((2, 1))], 1)
        observation, _ = sim.step(actions)
        expected = [bool(env.step(action)[4]["success"]) for env, action in zip(by_hand, actions)]
        assert sim.last_success.dtype == bool and sim.last_success.shape == (2,)
        assert sim.last_success.tolist() == expected
        flags.append(expected)
    assert not any(flags[0]) and all(flags[-1])  # the flag was set on the way


def test_sample_carries_the_flag_across_waves(monkeypatch):
    _metaworld()
    task = mb.make_task("metaworld-ml1-v0", **SMALL)
    original = metaworld_tasks.MetaWorldSimulator.step
    steps = []

    def step(self, actions):
        out = original(self, actions)
        # a known pattern in place of reach's (rarely set) flag: sim 0 of each wave at step 3
        self.last_success = np.zeros(len(self.envs), dtype=bool)
        self.last_success[0] = len(steps) % task.horizon == 3
        steps.append(None)
        return out

    monkeypatch.setattr(metaworld_tasks.MetaWorldSimulator, "step", step)
    monkeypatch.setattr(metaworld_tasks, "MAX_ENVS", 2)  # 4 simulations: two waves
    theta = task.initial_params().expand(2, -1)
    traj = task.sample(theta, 2, torch.tensor([0, 1]), generator(0))
    assert traj.success.shape == (2, 2, 10) and traj.success.dtype == torch.bool
    expected = torch.zeros(2, 2, 10, dtype=torch.bool)
    expected[:, 0, 3] = True  # each wave is one row here
    assert torch.equal(traj.success, expected)
    assert _success_rate([traj]) == 0.5


def test_training_logs_metaworlds_success_rate():
    _metaworld()
    task = mb.make_task("metaworld-ml1-v0", **SMALL)
    result = train(task, "lsf", iterations=1, meta_batch=2, n_inner=2, n_outer=2,
                   inner_lr=0.1, optimizer="trpo", seed=0)
    row = result.iterations[0]
    for key in ("success_before", "success_after"):
        assert 0.0 <= row[key] <= 1.0 and isinstance(row[key], float)


def test_a_task_without_a_flag_logs_no_success_fields():
    task = mb.make_task("bandit-v0")
    result = train(task, "lsf", iterations=1, meta_batch=2, n_inner=2, n_outer=2,
                   inner_lr=1.0, seed=0)
    assert set(result.iterations[0]) == {"iteration", "return_before", "return_after",
                                         "grad_norm", "seconds"}


def test_the_success_rate_counts_trajectories_whose_flag_was_ever_set():
    rewards = torch.zeros(2, 3, 4, dtype=torch.float64)
    success = torch.zeros(2, 3, 4, dtype=torch.bool)
    success[0, 0, 1] = success[0, 0, 2] = True      # set twice: one trajectory
    success[1, 2, 3] = True
    traj = Trajectories(torch.zeros(2, 3, 4, 1), torch.zeros(2, 3, 4, 1), rewards,
                        torch.tensor([0, 1]), success=success)
    assert _success_rate([traj]) == pytest.approx(2 / 6)
    assert torch.equal(traj.rows(torch.tensor([1])).success, success[1:])
    assert torch.equal(traj.one_per_row().success, success.reshape(6, 1, 4))
    plain = Trajectories(traj.states, traj.actions, rewards, traj.task_index)
    assert plain.success is None and plain.one_per_row().success is None
    assert _success_rate([traj, plain]) is None
