"""lq-navigation-v0: its Gymnasium environment (protocol, and the sampler against the env
stepped with the same actions, bit for bit), the exact value against Monte Carlo returns and finite differences,
grad F_inf against finite differences, and the estimators against an independent
(reparameterised) estimate of grad F_N, as the bandit tests do against exact enumeration.

Randomized tests use fixed seeds and state their tolerance; a z-score bound of 4.5 on 8
coordinates fails by chance with probability below 1e-4 per test."""

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import metarl_bench as mb
from metarl_bench._src.tasks.envs.lq import LQNavigationEnv
from metarl_bench._src.tasks.lq import pathwise_meta_gradients

from conftest import generator

LR = 0.02


@pytest.fixture(scope="module")
def lq():
    return mb.make_task("lq-navigation-v0", n_tasks=2, horizon=3, init_std=0.3)


def perturbed(task, scale=0.2, seed=1):
    return task.initial_params() + scale * torch.randn(task.param_shape, generator=generator(seed),
                                                       dtype=torch.float64)


def central_difference(fn, theta, step=1e-6):
    grad = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e.view(-1)[i] = step
        grad.view(-1)[i] = (fn(theta + e) - fn(theta - e)) / (2 * step)
    return grad


def mean_value(task, theta):
    index = torch.arange(task.n_tasks)
    return task.value(theta.expand(task.n_tasks, *theta.shape), index).mean()


def test_value_matches_monte_carlo_returns():
    task = mb.make_task("lq-navigation-v0", n_tasks=2, horizon=4, gamma=0.9, control_cost=0.1,
                        start_std=0.3, start_mean=[0.1, -0.2])
    theta = perturbed(task)
    index = torch.tensor([0, 1])
    rows = theta.expand(2, *theta.shape)
    exact = task.value(rows, index)
    traj = task.sample(rows, 200_000, index, generator(2))
    discounted = (traj.rewards * 0.9 ** torch.arange(4, dtype=torch.float64)).sum(-1)
    stderr = discounted.std(-1) / 200_000 ** 0.5
    assert torch.all((discounted.mean(-1) - exact).abs() < 4.5 * stderr), \
        (exact, discounted.mean(-1))


def test_value_gradient_and_limit_meta_gradient_match_finite_differences():
    task = mb.make_task("lq-navigation-v0", n_tasks=2, horizon=4, gamma=0.9, control_cost=0.1,
                        start_std=0.3)
    theta = perturbed(task)
    point = theta.clone().requires_grad_()
    (grad,) = torch.autograd.grad(mean_value(task, point), point)
    torch.testing.assert_close(grad, central_difference(lambda th: mean_value(task, th), theta),
                               rtol=1e-7, atol=1e-8)

    def limit_objective(th):
        index = torch.arange(task.n_tasks)
        rows = th.expand(task.n_tasks, *th.shape).clone().requires_grad_()
        (inner,) = torch.autograd.grad(task.value(rows, index).sum(), rows)
        return task.value(rows.detach() + LR * inner, index).mean()

    limit = mb.meta_gradient(task, theta, inner_lr=LR)
    torch.testing.assert_close(limit, central_difference(limit_objective, theta),
                               rtol=1e-6, atol=1e-7)


def test_pathwise_truth_tends_to_the_limit_gradient(lq):
    # F_N -> F_inf as N grows: the N = 64 pathwise mean is near grad F_inf (bias O(1/N))
    theta = lq.initial_params()
    limit = mb.meta_gradient(lq, theta, inner_lr=LR)
    samples = pathwise_meta_gradients(lq, theta, n_inner=64, inner_lr=LR, n_samples=2000,
                                      generator=generator(3))
    assert float((samples.mean(0) - limit).norm()) < 0.05 * float(limit.norm())


def z_scores(estimates, reference):
    spread = (estimates.var(0) / estimates.shape[0] + reference.var(0) / reference.shape[0]).sqrt()
    return ((estimates.mean(0) - reference.mean(0)) / spread).abs()


@pytest.mark.parametrize("name", ["unbiased", "loo"])
def test_unbiased_estimators_match_the_pathwise_truth(lq, name):
    theta = lq.initial_params()
    truth = pathwise_meta_gradients(lq, theta, n_inner=4, inner_lr=LR, n_samples=6000,
                                    generator=generator(4))
    estimates = mb.get_estimator(name)(lq, theta, n_inner=4, inner_lr=LR, n_trials=6000,
                                       generator=generator(5))
    assert float(z_scores(estimates, truth).max()) < 4.5


def test_lsf_bias_shrinks_while_maml_and_fomaml_stay_biased(lq):
    theta = lq.initial_params()
    limit = mb.meta_gradient(lq, theta, inner_lr=LR)
    bias = {}
    for n_inner in (2, 32):
        truth = pathwise_meta_gradients(lq, theta, n_inner=n_inner, inner_lr=LR, n_samples=3000,
                                        generator=generator(6)).mean(0)
        for name in ("lsf", "maml", "fomaml"):
            estimates = mb.get_estimator(name)(lq, theta, n_inner=n_inner, inner_lr=LR,
                                               n_trials=3000, generator=generator(7))
            bias[name, n_inner] = float((estimates.mean(0) - truth).norm())
    # measured (seeded), N = 2 -> 32: lsf 1.09 -> 0.12; maml 1.25 -> 1.97; fomaml 0.13 -> 0.35;
    # |grad F_inf| = 1.68
    assert bias["lsf", 32] < 0.3 * bias["lsf", 2]
    assert bias["maml", 32] > 0.5 * float(limit.norm())
    assert bias["fomaml", 32] > 0.15 * float(limit.norm())
    # fomaml's limit is the average of grad V at each task's exact adapted point
    index = torch.arange(lq.n_tasks)
    rows = theta.expand(lq.n_tasks, *theta.shape).clone().requires_grad_()
    (inner,) = torch.autograd.grad(lq.value(rows, index).sum(), rows)
    adapted = (rows.detach() + LR * inner).requires_grad_()
    (outer,) = torch.autograd.grad(lq.value(adapted, index).sum(), adapted)
    fomaml = mb.get_estimator("fomaml")(lq, theta, n_inner=128, inner_lr=LR, n_trials=300,
                                        generator=generator(8))
    assert float((fomaml.mean(0) - outer.mean(0)).norm()) < 0.05 * float(outer.mean(0).norm())


def test_evaluate_against_the_exact_limit_and_the_estimated_finite_truth(lq):
    limit = mb.evaluate(lq, ["exact", "lsf"], n_inner=[4], n_trials=50, inner_lr=LR,
                        truth="limit")
    exact_row = next(r for r in limit.records if r["estimator"] == "exact")
    assert exact_row["truth_kind"] == "exact" and exact_row["bias"] < 1e-12
    finite = mb.evaluate(lq, ["unbiased"], n_inner=[4], n_trials=50, inner_lr=LR,
                         truth_samples=500)
    record = finite.records[0]
    assert record["truth_kind"] == "estimated" and record["truth_method"].startswith(
        "mean of 500 loo estimates")


def test_bad_lq_arguments_raise_typed_errors():
    with pytest.raises(mb.ShapeError, match=r"init_gain must have shape \(2, 2\)"):
        mb.make_task("lq-navigation-v0", init_gain=[1.0, 2.0])
    with pytest.raises(mb.ParameterError, match="init_std must be > 0"):
        mb.make_task("lq-navigation-v0", init_std=0.0)
    with pytest.raises(mb.ParameterError, match="goal_low must be below goal_high"):
        mb.make_task("lq-navigation-v0", goal_low=1.0, goal_high=0.0)


# The Gymnasium environment metarl_bench/LQNavigation-v0

# the task's spaces are unbounded on purpose (no clipping): the checker's advice to bound and
# normalise them does not apply
@pytest.mark.filterwarnings("ignore:.*For Box action spaces, we recommend:UserWarning")
@pytest.mark.filterwarnings("ignore:.*A Box (observation|action) space m:UserWarning")
def test_gymnasium_make_after_import_and_the_env_checker():
    env = gymnasium.make("metarl_bench/LQNavigation-v0")
    assert env.spec.max_episode_steps == 5  # the task's default horizon
    check_env(env.unwrapped, skip_render_check=True)
    observation, info = env.reset(seed=3)
    assert np.array_equal(observation, np.zeros(2)) and set(info["task"]) == {"goal"}
    goal = info["task"]["goal"]
    for t in range(5):
        observation, reward, terminated, truncated, _ = env.step(np.array([1.0, -2.0]))
        # the reward is the squared distance before the move; moves are never clipped
        assert reward == -float(((np.array([t, -2.0 * t]) - goal) ** 2).sum())
        assert not terminated and truncated == (t == 4)
    assert np.array_equal(observation, [5.0, -10.0])


def test_meta_task_protocol_and_one_task_per_sub_environment():
    env = LQNavigationEnv(dim=3, goal_low=-1.0, goal_high=2.0)
    tasks = env.sample_tasks(4, np.random.default_rng(0))
    assert all(t["goal"].shape == (3,) and np.all((t["goal"] >= -1) & (t["goal"] <= 2))
               for t in tasks)
    assert all(np.array_equal(a["goal"], b["goal"]) for a, b in zip(tasks, env.sample_tasks(4, 0)))
    env.set_task(tasks[2])
    assert np.array_equal(env.get_task()["goal"], tasks[2]["goal"])
    with pytest.raises(mb.ParameterError, match="goal must be 3 finite numbers"):
        env.set_task({"goal": [1.0, 2.0]})
    with pytest.raises(mb.ParameterError, match="dim must be a positive integer"):
        LQNavigationEnv(dim=0)
    vector = gymnasium.make_vec("metarl_bench/LQNavigation-v0", num_envs=3,
                                vectorization_mode="sync", dim=3, control_cost=0.5)
    mb.set_tasks(vector, tasks[:3])
    held = vector.get_attr("task")
    assert all(np.array_equal(h["goal"], t["goal"]) for h, t in zip(held, tasks[:3]))
    vector.reset(seed=0)
    _, rewards, *_ = vector.step(np.ones((3, 3)))
    np.testing.assert_allclose(rewards, [-(t["goal"] ** 2).sum() - 1.5 for t in tasks[:3]],
                               rtol=1e-15)
    with pytest.raises(mb.ParameterError, match="one task per sub-environment"):
        mb.set_tasks(vector, tasks)


@pytest.mark.parametrize("kwargs", [
    dict(dim=2, control_cost=0.1, start_mean=[0.3, -0.2]),
    dict(dim=3, horizon=7, gamma=0.9, goal_low=-2.0, goal_high=1.0, start_std=0.4),
    dict(dim=8, control_cost=0.3),
], ids=["fixed-start", "random-start", "dim-8"])
def test_sampler_equals_the_gymnasium_env_stepped_with_its_actions(kwargs):
    # Observations bit for bit in every dimension: x + a is one correctly rounded float64
    # operation per coordinate in numpy as in torch. Rewards bit for bit for d <= 4 (measured:
    # the d squares are then added in the same order); for larger d numpy's pairwise
    # summation and torch's vectorised reduction add them in different orders, which moves a
    # sum of d non-negative terms by at most about 2 d ulp (measured: 1-2 ulp at d = 5..40).
    # A random start is drawn by torch in the sampler and by numpy in the env, so there the
    # env replays the sampled x_0 through reset(options={"start": x0}).
    task = mb.make_task("lq-navigation-v0", n_tasks=4, seed=5, **kwargs)
    env_kwargs = {k: v for k, v in kwargs.items() if k not in ("horizon", "gamma")}
    env = gymnasium.make("metarl_bench/LQNavigation-v0", max_episode_steps=task.horizon,
                         **env_kwargs)
    # the task's goals are the environment's task distribution drawn from the same seed
    goals = [t["goal"] for t in env.unwrapped.sample_tasks(4, 5)]
    assert np.array_equal(task.goals.numpy(), np.stack(goals))
    theta = perturbed(task, scale=0.3)
    index = torch.tensor([3, 0, 2])
    traj = task.sample(theta.expand(3, -1), 2, index, generator(1))
    random_start = kwargs.get("start_std", 0) > 0
    for row in range(3):
        for n in range(2):
            options = {"task": {"goal": goals[int(index[row])]}}
            if random_start:
                options["start"] = traj.states[row, n, 0].numpy()
            observation, _ = env.reset(options=options)
            for t in range(task.horizon):
                assert np.array_equal(observation, traj.states[row, n, t].numpy())
                observation, reward, _, truncated, _ = env.step(traj.actions[row, n, t].numpy())
                if task.dim <= 4:
                    assert reward == float(traj.rewards[row, n, t])
                else:
                    np.testing.assert_allclose(reward, float(traj.rewards[row, n, t]),
                                               rtol=2 * task.dim * np.finfo(float).eps, atol=0)
            assert truncated


def test_env_start_distribution_is_the_tasks():
    # x_0 ~ N(start_mean, start_std^2 I), as in the task. Tolerance: 4.5 standard errors per
    # coordinate of the mean, and the sample std within 5% (1000 draws: its relative standard
    # error is about 2.2%); with the fixed seed this is deterministic.
    env = LQNavigationEnv(dim=2, start_mean=[1.0, -0.5], start_std=0.3, task={"goal": [0, 0]})
    env.reset(seed=7)
    starts = np.stack([env.reset()[0] for _ in range(1000)])
    assert np.all(np.abs(starts.mean(0) - [1.0, -0.5]) < 4.5 * 0.3 / 1000 ** 0.5)
    np.testing.assert_allclose(starts.std(0, ddof=1), 0.3, rtol=0.05)
    assert np.array_equal(LQNavigationEnv(start_mean=[1.0, -0.5], task={"goal": [0, 0]})
                          .reset(seed=0)[0], [1.0, -0.5])
