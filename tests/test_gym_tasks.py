"""Any Gymnasium environment as a metarl_bench task (``gym-v0``): a task-setting hook,
discrete actions, episodes that end early. Classic-control environments only, so these run
without the MuJoCo extra. Comparisons are exact: the task replays in a fresh environment."""

import gymnasium
import numpy as np
import pytest
import torch

import metarl_bench as mb

from conftest import generator


def _set_gravity(env, task):
    env.g = task["g"]


def test_gym_task_runs_a_plain_environment_with_a_task_setting_hook():
    task = mb.make_task("gym-v0", env_id="Pendulum-v1", tasks=[{"g": 10.0}, {"g": 2.0}],
                        set_task=_set_gravity, horizon=12, hidden=(8,))
    theta = task.initial_params()
    traj = task.sample(theta.expand(2, -1), 3, torch.tensor([0, 1]), generator(0))
    assert traj.states.shape == (2, 3, 12, 3) and traj.actions.shape == (2, 3, 12, 1)
    # replay one trajectory in a fresh environment with the second task's gravity
    env = gymnasium.make("Pendulum-v1").unwrapped
    _set_gravity(env, {"g": 2.0})
    env.reset(seed=int(task.reset_seeds(2, 3, generator(0))[4]))
    rewards = [env.step(a.numpy())[1] for a in traj.actions[1, 1]]
    assert np.array_equal(np.array(rewards), traj.rewards[1, 1].numpy())
    estimate = mb.get_estimator("lsf")(task, theta, n_inner=2, inner_lr=1e-3, n_trials=2,
                                       n_outer=2, generator=generator())
    assert torch.isfinite(estimate).all()


def test_gym_task_with_discrete_actions_zeroes_rewards_after_the_episode_ends():
    task = mb.make_task("gym-v0", env_id="CartPole-v1", horizon=200, hidden=(8,))
    assert task.policy.discrete
    traj = task.sample(task.initial_params().expand(1, -1), 6, torch.tensor([0]), generator())
    lengths = traj.rewards.sum(-1)                   # CartPole pays 1 per step while alive
    assert (lengths < 200).any()                     # a random policy falls early
    alive = traj.rewards.cumsum(-1) == torch.arange(1, 201, dtype=torch.float64)
    assert torch.equal(traj.rewards, alive.double())  # ones until the end, zeros afterwards


def test_gym_task_errors():
    with pytest.raises(mb.ParameterError, match="cannot make Gymnasium environment"):
        mb.make_task("gym-v0", env_id="NoSuchEnv-v0")
    with pytest.raises(mb.ParameterError, match="set_task"):
        mb.make_task("gym-v0", env_id="Pendulum-v1", tasks=[{"g": 1.0}])


def test_the_simulator_cache_evicts_the_least_recently_used():
    task = mb.make_task("gym-v0", env_id="Pendulum-v1", horizon=3, hidden=(4,))
    limit = 4
    first = {n: task.simulator(n) for n in range(1, limit + 1)}
    assert task.simulator(1) is first[1]          # used again: now the most recent
    task.simulator(limit + 1)                     # one too many: evicts size 2, not size 1
    assert task.simulator(1) is first[1]
    assert task.simulator(2) is not first[2]
    assert [n for _, n in task._simulators] == [4, limit + 1, 1, 2]


def test_a_task_names_the_simulator_libraries_its_results_depend_on():
    """What each result records as ``simulator_versions``: MuJoCo only where it simulates."""
    assert mb.make_task("bandit-v0").versions() == {}
    assert set(mb.make_task("gym-v0").versions()) == {"gymnasium"}   # Pendulum: no MuJoCo
    pytest.importorskip("mujoco")
    versions = mb.make_task("halfcheetah-vel-v0", n_tasks=1, horizon=5).versions()
    assert set(versions) == {"gymnasium", "mujoco"}
