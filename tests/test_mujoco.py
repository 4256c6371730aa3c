"""The Gymnasium meta-tasks: registration, the meta-task protocol, and the batched simulator
against the Gymnasium environment bit for bit (observations and rewards).

Every comparison here is exact (``torch.equal`` / ``np.array_equal``): the two paths run
the same floating-point operations in the same order, so any difference is a bug, never
noise. HalfCheetah is chaotic (a change of 1e-8 in an action moves x by about 0.17 after 100
steps), so equality after tens of steps also checks that nothing was rounded on the way.
"""

import gymnasium
import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.tasks.envs import GYMNASIUM_ENVS

from conftest import generator

pytest.importorskip("mujoco", reason="MuJoCo tasks need the 'mujoco' extra: "
                                     "pip install -e '.[mujoco]'")

from metarl_bench._src.tasks.envs.batch_sim import BatchSimulator  # noqa: E402  (needs mujoco)

MUJOCO_TASKS = ["halfcheetah-vel-v0", "halfcheetah-dir-v0", "ant-dir-v0"]
MUJOCO_ENVS = sorted(env_id for env_id, (entry_point, _) in GYMNASIUM_ENVS.items()
                     if entry_point.startswith("metarl_bench._src.tasks.envs.locomotion:"))


def _task_key(env):
    return next(iter(env.get_task()))


# ---- registration and the meta-task protocol ------------------------------------------

@pytest.mark.parametrize("env_id", MUJOCO_ENVS)
def test_gymnasium_make_works_after_import(env_id):
    env = gymnasium.make(env_id)
    assert env.spec.max_episode_steps == 200
    observation, _ = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert np.isfinite(reward) and not terminated and not truncated
    doc = type(env.unwrapped).__doc__
    for section in ("## Action space", "## Observation space", "## Rewards",
                    "## Task distribution" if "Vel" in env_id else "## Rewards",
                    "## Starting state", "## Episode end", "## Arguments",
                    "## Version history"):
        assert section in doc, (env_id, section)


@pytest.mark.parametrize("env_id", MUJOCO_ENVS)
def test_meta_task_protocol(env_id):
    env = gymnasium.make(env_id).unwrapped
    tasks = env.sample_tasks(400, np.random.default_rng(0))
    key = _task_key(env)
    values = np.array([task[key] for task in tasks])
    if key == "velocity":
        assert 0.0 <= values.min() and values.max() <= 2.0
        assert values.min() < 0.1 and values.max() > 1.9          # covers U[0, 2]
    else:
        assert set(values) == {-1.0, 1.0}
    env.set_task(tasks[3])
    assert env.get_task() == tasks[3]
    with pytest.raises(ValueError, match=key):
        env.set_task({"nope": 1.0})
    if key == "direction":
        with pytest.raises(ValueError, match="-1 or 1"):
            env.set_task({"direction": 0.5})


def test_goal_velocity_range_is_a_parameter():
    env = gymnasium.make("metarl_bench/HalfCheetahVel-v0",
                         goal_velocity_range=(0.0, 3.0)).unwrapped     # ProMP's range
    values = [task["velocity"] for task in env.sample_tasks(400, np.random.default_rng(0))]
    assert max(values) > 2.5
    with pytest.raises(ValueError, match="goal_velocity_range"):
        gymnasium.make("metarl_bench/HalfCheetahVel-v0", goal_velocity_range=(2.0, 1.0))


def test_each_sub_environment_of_a_vector_env_has_its_own_task():
    vector_env = gymnasium.make_vec("metarl_bench/HalfCheetahVel-v0", num_envs=3,
                                    vectorization_mode="sync")
    tasks = [{"velocity": 0.0}, {"velocity": 1.0}, {"velocity": 2.0}]
    vector_env.set_attr("task", tasks)
    assert list(vector_env.get_attr("task")) == tasks
    vector_env.reset(seed=[0, 0, 0])
    _, rewards, *_ = vector_env.step(np.zeros((3, 6), dtype=np.float32))
    # same state and action, goals one apart: rewards differ by the goal distance alone
    # (while v_x < 0: then -|v_x - g| falls by exactly 1 per unit of g, up to rounding)
    np.testing.assert_allclose(np.diff(rewards), -1.0, atol=1e-12)


def test_rewards_reduce_to_gymnasium_v5_with_its_constants(tmp_path, monkeypatch):
    """HalfCheetahDir(+1, ctrl 0.1) is HalfCheetah-v5 and AntDir with Ant-v5's weights is
    Ant-v5 (fixed horizon, no contact forces observed): the forward velocity, control and
    contact costs follow Gymnasium's definitions to the last bit."""
    # Gymnasium's own HalfCheetah-v5 has MuJoCo log a deprecation to ./MUJOCO_LOG.TXT
    monkeypatch.chdir(tmp_path)
    pairs = [
        (gymnasium.make("metarl_bench/HalfCheetahDir-v0", ctrl_cost_weight=0.1),
         gymnasium.make("HalfCheetah-v5")),
        (gymnasium.make("metarl_bench/AntDir-v0", ctrl_cost_weight=0.5, healthy_reward=1.0),
         gymnasium.make("Ant-v5", include_cfrc_ext_in_observation=False,
                        terminate_when_unhealthy=False)),
    ]
    rng = np.random.default_rng(0)
    for ours, theirs in pairs:
        ours.reset(seed=3)
        theirs.reset(seed=3)
        for _ in range(30):
            action = rng.uniform(-1.2, 1.2, ours.action_space.shape).astype(np.float32)
            (our_obs, our_reward, *_), (obs, reward, *_) = ours.step(action), theirs.step(action)
            assert np.array_equal(our_obs, obs) and our_reward == reward


# ---- the batched simulator, bit for bit -----------------------------------------------

@pytest.mark.parametrize("action_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("env_id,kwargs", [
    ("metarl_bench/HalfCheetahVel-v0", {}),
    ("metarl_bench/HalfCheetahDir-v0", {}),
    ("metarl_bench/AntDir-v0", {}),
    ("metarl_bench/AntDir-v0", {"contact_cost_weight": 0.0}),
], ids=["HalfCheetahVel", "HalfCheetahDir", "AntDir", "AntDir-no-contact"])
def test_batch_simulator_equals_gymnasium_bit_for_bit(env_id, kwargs, action_dtype):
    n_sims, n_steps = 3, 40
    envs = [gymnasium.make(env_id, **kwargs) for _ in range(n_sims)]
    rng = np.random.default_rng(1)
    tasks = envs[0].unwrapped.sample_tasks(n_sims, rng)
    key = _task_key(envs[0].unwrapped)
    seeds = np.array([5, 6, 2 ** 61 + 7])
    sim = BatchSimulator(envs[0].unwrapped, n_sims, nthread=2)
    observations = sim.reset(seeds, np.array([task[key] for task in tasks]))
    expected = []
    for env, seed, task in zip(envs, seeds, tasks):
        env.unwrapped.set_task(task)
        expected.append(env.reset(seed=int(seed))[0])
    assert np.array_equal(observations, np.stack(expected))
    for step in range(n_steps):
        # beyond the control range too: MuJoCo clamps, the cost sees the raw action
        actions = rng.normal(0.0, 0.8, (n_sims, envs[0].action_space.shape[0]))
        actions = actions.astype(action_dtype)
        observations, rewards = sim.step(actions)
        results = [env.step(actions[i]) for i, env in enumerate(envs)]
        assert np.array_equal(observations, np.stack([r[0] for r in results])), step
        assert np.array_equal(rewards, np.array([r[1] for r in results])), step


def test_sampler_paths_agree_bit_for_bit_and_are_seeded():
    task = mb.make_task("halfcheetah-vel-v0", n_tasks=2, horizon=25, nthread=2)
    theta = task.initial_params()
    rows = theta.expand(3, -1)
    index = torch.tensor([0, 1, 1])
    fast = task.sample(rows, 4, index, generator(7))
    reference = task.sample(rows, 4, index, generator(7), sampler="gymnasium")
    again = task.sample(rows, 4, index, generator(7))
    other = task.sample(rows, 4, index, generator(8))
    for field in ("states", "actions", "rewards"):
        assert torch.equal(getattr(fast, field), getattr(reference, field)), field
        assert torch.equal(getattr(fast, field), getattr(again, field)), field
    assert not torch.equal(fast.rewards, other.rewards)
    assert fast.states.shape == (3, 4, 25, 17) and fast.actions.shape == (3, 4, 25, 6)
    assert fast.rewards.dtype == torch.float64


def test_trajectories_do_not_depend_on_torch_threads():
    task = mb.make_task("halfcheetah-dir-v0", n_tasks=2, horizon=20)
    rows = task.initial_params().expand(2, -1)
    index = torch.tensor([0, 1])
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = task.sample(rows, 8, index, generator(0))
        torch.set_num_threads(2)
        two = task.sample(rows, 8, index, generator(0))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one.rewards, two.rewards) and torch.equal(one.actions, two.actions)


def test_float32_actions_are_what_the_simulator_saw():
    task = mb.make_task("halfcheetah-vel-v0", n_tasks=1, horizon=15, action_dtype="float32")
    traj = task.sample(task.initial_params().expand(1, -1), 3, torch.tensor([0]), generator())
    assert torch.equal(traj.actions, traj.actions.float().double())
    replay = gymnasium.make("metarl_bench/HalfCheetahVel-v0", task=task.tasks[0])
    seeds = task.reset_seeds(1, 3, generator())
    replay.reset(seed=int(seeds[1]))
    rewards = [replay.step(a.numpy().astype(np.float32))[1] for a in traj.actions[0, 1]]
    assert np.array_equal(np.array(rewards), traj.rewards[0, 1].numpy())


# ---- tasks in the metarl_bench registry -------------------------------------------------

@pytest.mark.parametrize("task_id", MUJOCO_TASKS)
def test_mujoco_tasks_run_sampling_estimators_with_a_sampled_outer_step(task_id):
    task = mb.make_task(task_id, n_tasks=2, horizon=10, hidden=(16,))
    theta = task.initial_params()
    assert not task.has_model and task.param_shape == theta.shape
    for name in ("lsf", "dice"):
        estimate = mb.get_estimator(name)(task, theta, n_inner=3, inner_lr=1e-3, n_trials=2,
                                          n_outer=3, generator=generator())
        assert estimate.shape == (2, *theta.shape) and torch.isfinite(estimate).all()
    with pytest.raises(mb.UnsupportedError, match="n_outer"):
        mb.get_estimator("lsf")(task, theta, n_inner=3, inner_lr=1e-3, n_trials=2)


def test_task_parameters_are_checked():
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'batch'"):
        mb.make_task("halfcheetah-vel-v0", sampler="batc")
    with pytest.raises(mb.ParameterError, match="goal_velocity_range"):
        mb.make_task("halfcheetah-vel-v0", goal_velocity_range=(1.0, 0.0))
    with pytest.raises(mb.ParameterError, match="-1 or 1"):
        mb.make_task("ant-dir-v0", tasks=[{"direction": 2.0}])
    with pytest.raises(mb.UnknownNameError, match="action_dtype"):
        mb.make_task("halfcheetah-dir-v0", action_dtype="float16")
    task = mb.make_task("halfcheetah-vel-v0", tasks=[{"velocity": 0.5}, {"velocity": 1.5}])
    assert task.n_tasks == 2 and task.tasks[1] == {"velocity": 1.5}


def test_check_suite_times_the_mujoco_sampler_and_calls():
    from metarl_bench._src.gate.suite import SAMPLER, Item, Suite

    # the suite as a check worker runs it, in this process, on the MuJoCo task alone
    suite = Suite(["lsf", "loo"], tasks=["halfcheetah-vel"])
    items = [Item(**item) for item in suite.prepare()]
    # no model: no from-samples form with the exact outer step, and loo needs one
    assert items == [Item(path="sampler", estimator=SAMPLER, task="halfcheetah-vel", n_inner=4),
                     Item(path="call", estimator="lsf", task="halfcheetah-vel", n_inner=4)]
    for item in items:
        wall, cpu = suite.time(item, calls=1)
        assert wall > 0 and cpu > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trajectories_do_not_depend_on_the_device():
    task = mb.make_task("halfcheetah-vel-v0", n_tasks=2, horizon=30)
    theta = task.initial_params()
    index = torch.tensor([0, 1])
    on_cpu = task.sample(theta.expand(2, -1), 4, index, generator(3))
    on_gpu = task.sample(theta.cuda().expand(2, -1), 4, index.cuda(), generator(3))
    assert on_gpu.rewards.is_cuda
    for field in ("states", "actions", "rewards"):
        assert torch.equal(getattr(on_cpu, field), getattr(on_gpu, field).cpu()), field
    estimate = mb.get_estimator("lsf")(task, theta.cuda(), n_inner=3, inner_lr=1e-3,
                                       n_trials=2, n_outer=3, generator=generator())
    assert estimate.is_cuda and torch.isfinite(estimate).all()


def test_benchmark_grid_runs_halfcheetah_with_a_sampled_outer_step():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common

    with pytest.raises(NotImplementedError, match="model"):
        common.Case("loo", "halfcheetah-vel", 4)
    case = common.Case("lsf", "halfcheetah-vel", 4)
    assert case.n_outer == 20 and not case.statistics
    assert case.run().shape == (case.n_trials, *case.theta.shape)


def test_cli_run_prints_a_table_against_an_estimated_truth(tmp_path, capsys):
    from metarl_bench._src.cli import main

    assert main(["run", "--task", "halfcheetah-vel-v0", "--task-param", "n_tasks=1",
                 "--task-param", "horizon=5", "--task-param", "hidden=[8]", "--n-outer", "2",
                 "--n-inner", "2", "--trials", "3", "--truth-samples", "5", "--inner-lr",
                 "1e-3", "--estimators", "lsf,fomaml", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "truth=finite (estimated)" in out and "lsf" in out and "fomaml" in out


def test_making_the_environments_is_quiet(tmp_path, monkeypatch, recwarn):
    """Gymnasium's half_cheetah.xml uses an attribute MuJoCo 4 deprecates: the notice is
    dropped, instead of being printed and logged to MUJOCO_LOG.TXT at every make."""
    monkeypatch.chdir(tmp_path)
    for env_id in MUJOCO_ENVS:
        gymnasium.make(env_id)
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert not [w for w in recwarn if "MuJoCo" in str(w.message)]


def test_a_linear_baseline_changes_the_inner_step_and_dice_refuses_it():
    plain = mb.make_task("halfcheetah-dir-v0", n_tasks=2, horizon=8, hidden=(8,))
    fitted = mb.make_task("halfcheetah-dir-v0", n_tasks=2, horizon=8, hidden=(8,),
                          baseline="linear")
    assert fitted.params["baseline"] == "linear"
    theta = plain.initial_params()
    call = dict(n_inner=4, inner_lr=1e-3, n_trials=2, n_outer=3)
    without = mb.get_estimator("fomaml")(plain, theta, generator=generator(), **call)
    with_baseline = mb.get_estimator("fomaml")(fitted, theta, generator=generator(), **call)
    assert torch.isfinite(with_baseline).all() and not torch.equal(without, with_baseline)
    with pytest.raises(mb.UnsupportedError, match="plain"):
        mb.get_estimator("dice")(fitted, theta, generator=generator(), **call)
