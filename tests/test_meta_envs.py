"""The meta-task protocol of every Gymnasium environment this package registers: bad input is
a typed error, and ``reset(options={"task": ...})`` sets the task (docs/tasks.md).
Deterministic."""

import gymnasium
import numpy as np
import pytest

import metarl_bench as mb

MUJOCO = ["metarl_bench/HalfCheetahVel-v0", "metarl_bench/HalfCheetahDir-v0",
          "metarl_bench/AntDir-v0"]
ENVS = ["metarl_bench/Navigation2D-v0", "metarl_bench/LQNavigation-v0", *MUJOCO]


def make(env_id):
    if env_id in MUJOCO:
        pytest.importorskip("mujoco")
    return gymnasium.make(env_id).unwrapped


@pytest.mark.parametrize("env_id", ENVS)
def test_reset_with_a_task_option_sets_the_task(env_id):
    env = make(env_id)
    first, second = env.sample_tasks(2, np.random.default_rng(3))
    env.set_task(first)
    env.reset(seed=0, options={"task": second})
    assert {k: np.asarray(v).tolist() for k, v in env.get_task().items()} == \
        {k: np.asarray(v).tolist() for k, v in second.items()}
    env.reset(seed=0)                                    # no option: the task stays
    assert np.array_equal(list(env.get_task().values())[0], list(second.values())[0])


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("count", [-1, 1.5, "2", None])
def test_sample_tasks_refuses_a_count_that_is_not_a_natural_number(env_id, count):
    env = make(env_id)
    with pytest.raises(mb.ParameterError, match="n_tasks must be an integer >= 0"):
        env.sample_tasks(count, 0)
    assert env.sample_tasks(0, 0) == []


@pytest.mark.parametrize("env_id", ENVS)
def test_set_task_refuses_a_wrong_shape_or_text(env_id):
    env = make(env_id)
    (key,) = env.sample_tasks(1, 0)[0]
    for value in ([1.0, 2.0, 3.0], "abc", [[1.0]], None, float("nan"), {"x": 1}):
        with pytest.raises(mb.ParameterError):
            env.set_task({key: value})


@pytest.mark.parametrize("env_id", ["metarl_bench/Navigation2D-v0",
                                    "metarl_bench/LQNavigation-v0"])
def test_step_before_any_task_is_a_typed_error(env_id):
    env = make(env_id)
    with pytest.raises(mb.ParameterError, match=r"call reset\(\)"):
        env.step(np.zeros(env.action_space.shape))
    env.reset(seed=0)
    env.step(np.zeros(env.action_space.shape))
