"""Meta-World's batched sampler (``sampler="batch"``) against Meta-World's own environments.

Every equality here is exact: the batched simulator steps the same MuJoCo model from the same
integration state with the same controls (``mujoco.batch`` is bit-identical to a loop of
``mj_step``), and computes the observation and reward with the reference's operations in its
order, so no bit may differ. Episodes are 500 steps (Meta-World's ``max_path_length``).

Actions come from Meta-World's scripted policies (``metaworld.policies``, shown the goal the
observation hides) run closed-loop on the reference environment, with seeded noise, and are
replayed on the batch: the episodes reach the object, grasp, lift, place and succeed, so the
reward's branches (caging, gripping, the lift bonus, the success value 10) are all taken.
One simulation per skill gets uniform actions in [-2, 2], which the environment clips.
"""

import numpy as np
import pytest
import torch

import metarl_bench as mb

SKILL_POLICIES = {"reach-v3": "SawyerReachV3Policy", "push-v3": "SawyerPushV3Policy",
                  "pick-place-v3": "SawyerPickPlaceV3Policy"}
HORIZON = 500


def _modules():
    pytest.importorskip("mujoco")
    pytest.importorskip("metaworld")
    from metarl_bench._src.tasks.envs import metaworld_batch
    from metarl_bench._src.tasks.metaworld_tasks import require_metaworld

    return require_metaworld(), metaworld_batch


def _ml1(skill):
    """``metaworld.ML1(skill, seed=0)``, built once (seconds each) and shared with the tasks."""
    from metarl_bench._src.tasks.metaworld_tasks import _benchmark

    return _benchmark("ML1", skill, 0)


def _reference_episode(cls, task, policy, noise, rng):
    """One 500-step episode of Meta-World's own environment; the actions it took, and its
    observations (reset's first), rewards and success flags."""
    env = cls()
    env.set_task(task)
    observation, _ = env.reset()
    observations, actions, rewards, successes = [observation], [], [], []
    for _ in range(HORIZON):
        if policy is None:
            action = rng.uniform(-2.0, 2.0, 4)
        else:
            shown = observation.copy()
            shown[-3:] = env._target_pos
            action = np.asarray(policy.get_action(shown), dtype=np.float64)
            action = action + noise * rng.standard_normal(4)
        observation, reward, _, _, info = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(reward)
        successes.append(bool(info["success"]))
    env.close()
    return (np.array(observations), np.array(actions), np.array(rewards),
            np.array(successes))


@pytest.mark.parametrize("skill", list(SKILL_POLICIES))
def test_the_batch_steps_metaworld_bit_for_bit(skill):
    metaworld, metaworld_batch = _modules()
    import metaworld.policies

    policy = getattr(metaworld.policies, SKILL_POLICIES[skill])()
    ml1 = _ml1(skill)
    cls = ml1.train_classes[skill]
    # scripted (train and test goals), noisy scripted, and wild actions
    sims = [(ml1.train_tasks[0], policy, 0.0), (ml1.test_tasks[0], policy, 0.1),
            (ml1.train_tasks[1], policy, 0.5), (ml1.train_tasks[2], None, 0.0)]
    rng = np.random.default_rng(7)
    reference = [_reference_episode(cls, task, p, noise, rng) for task, p, noise in sims]
    observations, actions, rewards, successes = (np.stack(parts) for parts in zip(*reference))

    resets = {skill: metaworld_batch.SkillResets(cls())}
    simulator = metaworld_batch.MetaWorldBatchSimulator(resets, len(sims), nthread=2)
    got = [simulator.reset(np.arange(len(sims)), [task for task, _, _ in sims])]
    got_rewards, got_successes = [], []
    for t in range(HORIZON):
        observation, reward = simulator.step(actions[:, t])
        got.append(observation)
        got_rewards.append(reward)
        assert simulator.last_success.dtype == bool
        assert simulator.last_success.shape == (len(sims),)
        got_successes.append(simulator.last_success)
    assert np.array_equal(np.stack(got, 1), observations)
    assert np.array_equal(np.stack(got_rewards, 1), rewards)
    assert np.array_equal(np.stack(got_successes, 1), successes)
    # the branches were taken: the scripted episodes succeed, and pick-place lifts
    assert successes[:2].any(axis=1).all()
    assert (rewards[:2] == 10.0).any() and not successes[3].all()
    if skill == "pick-place-v3":
        assert ((rewards > 1.0) & (rewards < 10.0)).any()       # the lift bonus


@pytest.mark.parametrize("task_id, params", [
    ("metaworld-ml1-v0", {"env_name": "reach-v3", "n_tasks": 2}),
    ("metaworld-ml1-v0", {"env_name": "push-v3", "split": "test", "n_tasks": 2}),
    ("metaworld-ml10-v0", {"skills": ["reach-v3", "push-v3", "pick-place-v3"], "n_tasks": 3}),
])
def test_the_batch_sampler_gives_the_reference_samplers_trajectories(task_id, params):
    """Through the task's sample (policy, seeds, rows): the batch at 1 and 2 threads, and
    the reference sampler, give the same trajectories."""
    _modules()
    kwargs = dict(horizon=HORIZON, hidden=(8,), **params)
    reference = mb.make_task(task_id, sampler="metaworld", **kwargs)
    rows = torch.arange(reference.n_tasks)
    theta = reference.initial_params()[None].expand(reference.n_tasks, -1)
    expected = reference.sample(theta, 1, rows, torch.Generator().manual_seed(5))
    for nthread in (1, 2):
        batched = mb.make_task(task_id, sampler="batch", nthread=nthread, **kwargs)
        got = batched.sample(theta, 1, rows, torch.Generator().manual_seed(5))
        for name in ("observations", "actions", "rewards"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
    # the reference task, told to use the batch for one call, gives them too
    again = reference.sample(theta, 1, rows, torch.Generator().manual_seed(5), sampler="batch")
    assert torch.equal(again.rewards, expected.rewards)


def test_the_helpers_equal_metaworlds_scalar_functions():
    _, metaworld_batch = _modules()
    from metaworld.utils import reward_utils
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-0.2, 0.3, 3000), [0.0, 0.05, 0.015, -0.0]])
    margin = np.concatenate([rng.uniform(0.0, 0.5, x.size - 3), [0.0, 0.0, 0.3]])
    for lower, upper in ((0, 0.05), (0.015, 0.05), (0, 0.005)):
        expected = [reward_utils.tolerance(float(v), bounds=(lower, upper), margin=float(m),
                                           sigmoid="long_tail") for v, m in zip(x, margin)]
        got = metaworld_batch.long_tail_tolerance(x, lower, upper, margin)
        assert np.array_equal(got, expected)
    a, b = rng.uniform(0, 1, (2, 3000))
    a[:3], b[:3] = 0.0, (0.0, 1.0, 0.5)
    expected = [reward_utils.hamacher_product(float(p), float(q)) for p, q in zip(a, b)]
    assert np.array_equal(metaworld_batch.hamacher_product(a, b), expected)
    vectors = rng.normal(size=(3000, 3)) * rng.uniform(1e-3, 1, (3000, 1))
    assert np.array_equal(metaworld_batch.row_norm(vectors),
                          [np.linalg.norm(v) for v in vectors])
    assert np.array_equal(metaworld_batch.row_norm(vectors[:, :2]),
                          [np.linalg.norm(v) for v in vectors[:, :2]])
    # every branch of Markley's method: random rotations, and ones near each axis' half turn
    matrices = np.concatenate([Rotation.random(3000, random_state=1).as_matrix(),
                               Rotation.from_rotvec(np.pi * np.eye(3)).as_matrix(),
                               np.eye(3)[None]])
    assert np.array_equal(metaworld_batch.quat_from_matrix(matrices),
                          [Rotation.from_matrix(m).as_quat() for m in matrices])
    skewed = matrices[:2] * np.array([1.0, 1.0, 1.001])        # not orthogonal: scipy's path
    assert np.array_equal(metaworld_batch.quat_from_matrix(skewed),
                          Rotation.from_matrix(skewed).as_quat())
    with pytest.raises(mb.UnsupportedError, match="margin is negative"):
        metaworld_batch.long_tail_tolerance(np.zeros(2), 0, 0.05, np.array([0.1, -0.1]))


def test_a_batch_episode_ends_where_metaworlds_does():
    metaworld, metaworld_batch = _modules()
    ml1 = _ml1("reach-v3")
    cls = ml1.train_classes["reach-v3"]
    simulator = metaworld_batch.MetaWorldBatchSimulator(
        {"reach-v3": metaworld_batch.SkillResets(cls())}, 2, nthread=1)
    with pytest.raises(mb.UnsupportedError, match="reset the simulator"):
        simulator.step(np.zeros((2, 4)))
    simulator.reset(np.zeros(2), ml1.train_tasks[:2])
    with pytest.raises(mb.ParameterError, match=r"actions must be \(2, 4\), got \(2, 3\)"):
        simulator.step(np.zeros((2, 3)))
    for _ in range(cls.max_path_length):
        simulator.step(np.zeros((2, 4)))
    with pytest.raises(mb.UnsupportedError, match="end after 500 steps"):
        simulator.step(np.zeros((2, 4)))
    simulator.reset(np.zeros(2), ml1.train_tasks[:2])
    simulator.step(np.zeros((2, 4)))
    with pytest.raises(mb.ParameterError, match="one seed and one task per simulation"):
        simulator.reset(np.zeros(3), ml1.train_tasks[:3])
    door = _ml1("door-open-v3")
    with pytest.raises(mb.UnsupportedError, match="door-open-v3 needs sampler='metaworld'"):
        simulator.reset(np.zeros(2), [ml1.train_tasks[0], door.train_tasks[0]])
    with pytest.raises(mb.UnsupportedError, match="not SawyerDoorEnvV3"):
        metaworld_batch.SkillResets(door.train_classes["door-open-v3"]())


@pytest.mark.parametrize("task_id, params, error, message", [
    ("metaworld-ml1-v0", {"env_name": "door-open-v3"}, mb.UnsupportedError,
     "sampler='batch' steps reach-v3, push-v3, pick-place-v3; door-open-v3 needs "
     "sampler='metaworld'"),
    ("metaworld-ml10-v0", {}, mb.UnsupportedError, "basketball-v3, button-press-topdown-v3"),
    ("metaworld-ml1-v0", {"nthread": -1}, mb.ParameterError, "nthread"),
    ("metaworld-ml1-v0", {"sampler": "bach"}, mb.UnknownNameError, "Did you mean 'batch'"),
])
def test_bad_batch_arguments_are_typed_errors(task_id, params, error, message):
    _modules()
    with pytest.raises(error, match=message):
        mb.make_task(task_id, **{"sampler": "batch", **params})
