"""Exact ground truth against finite differences and against closed forms."""

import math

import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.core.stats import fit_log_log
from metarl_bench._src.core.trajectories import discounted_return

from conftest import SCIENCE_LR, generator


def central_difference(fn, theta, step=1e-5):
    """Gradient of a scalar function by central differences, one coordinate at a time."""
    grad = torch.zeros_like(theta)
    flat = grad.view(-1)
    for i in range(theta.numel()):
        offset = torch.zeros_like(theta).view(-1)
        offset[i] = step
        offset = offset.view_as(theta)
        flat[i] = (fn(theta + offset) - fn(theta - offset)) / (2 * step)
    return grad


def value_all(task, theta):
    index = torch.arange(task.n_tasks)
    return task.value(theta.unsqueeze(0).expand(task.n_tasks, *theta.shape), index).mean()


def limit_objective(task, theta, inner_lr):
    """F_inf(theta) = mean_k V_k(theta + eta grad V_k(theta)): grad V_k by autograd (checked
    against differences above), the outer derivative left to the caller's differences."""
    total = 0.0
    for k in range(task.n_tasks):
        index = torch.tensor([k])
        point = theta.clone().requires_grad_()
        (grad_k,) = torch.autograd.grad(task.value(point.unsqueeze(0), index)[0], point)
        total += float(task.value((theta + inner_lr * grad_k).unsqueeze(0), index)[0])
    return total / task.n_tasks


def test_bandit_value_is_expected_reward(science_bandit):
    theta = science_bandit.initial_params()
    pi = torch.softmax(theta, -1)
    assert float(value_all(science_bandit, theta)) == pytest.approx(
        float(pi @ torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)), abs=1e-15)


def test_tabular_value_matches_monte_carlo_return(small_mdp):
    # 200k sampled returns: standard error about 1e-3 of the value; tolerance 5 standard errors
    theta = small_mdp.initial_params()
    traj = small_mdp.sample(theta.unsqueeze(0), 200_000, torch.zeros(1, dtype=torch.long),
                            generator(3))
    returns = discounted_return(traj.rewards, small_mdp.gamma)[0]
    stderr = float(returns.std()) / math.sqrt(returns.numel())
    assert abs(float(returns.mean()) - float(value_all(small_mdp, theta))) < 5 * stderr


@pytest.mark.parametrize("task_kwargs", [
    dict(name="bandit-v0"),
    dict(name="bandit-v0", rewards="random", n_arms=4, n_tasks=3, seed=2),
    dict(name="tabular-v0", n_states=4, n_actions=3, horizon=4, gamma=0.9, seed=1),
    dict(name="tabular-v0", n_states=3, n_actions=2, horizon=3, gamma=0.7, n_tasks=2, seed=5),
], ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_value_gradient_and_limit_meta_gradient_match_finite_differences(task_kwargs):
    kwargs = dict(task_kwargs)
    task = mb.make_task(kwargs.pop("name"), **kwargs)
    theta = task.initial_params() + 0.3 * torch.randn(task.param_shape, generator=generator(1),
                                                      dtype=torch.float64)
    point = theta.clone().requires_grad_()
    (grad_value,) = torch.autograd.grad(value_all(task, point), point)
    torch.testing.assert_close(grad_value, central_difference(lambda th: value_all(task, th), theta),
                               rtol=1e-7, atol=1e-9)
    inner_lr = 1.5
    limit = mb.meta_gradient(task, theta, inner_lr=inner_lr)
    fd = central_difference(lambda th: limit_objective(task, th, inner_lr), theta)
    torch.testing.assert_close(limit, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("n_inner", [1, 3, 16])
@pytest.mark.parametrize("n_tasks", [1, 2])
def test_bandit_finite_meta_gradient_matches_finite_differences(n_inner, n_tasks):
    task = mb.make_task("bandit-v0", rewards="random", n_arms=3, n_tasks=n_tasks, seed=4,
                        init_logits=[0.2, -0.1, 0.4])
    theta = task.initial_params()
    exact = mb.meta_gradient(task, theta, inner_lr=SCIENCE_LR, n_inner=n_inner)
    fd = central_difference(lambda th: task.finite_meta_objective(th, n_inner, SCIENCE_LR), theta)
    torch.testing.assert_close(exact, fd, rtol=1e-7, atol=1e-10)


def test_finite_objective_brute_force_over_ordered_samples(science_bandit):
    # F_N summed over all K**N ordered sample sequences equals the count enumeration
    theta = science_bandit.initial_params()
    pi = torch.softmax(theta, -1)
    rewards = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    n_inner, total = 3, 0.0
    for seq in np.ndindex(*(3,) * n_inner):
        prob = float(torch.prod(pi[list(seq)]))
        grad = sum((torch.eye(3, dtype=torch.float64)[a] - pi) * rewards[a] for a in seq) / n_inner
        total += prob * float(torch.softmax(theta + SCIENCE_LR * grad, -1) @ rewards)
    assert float(science_bandit.finite_meta_objective(theta, n_inner, SCIENCE_LR)) == \
        pytest.approx(total, abs=1e-14)


def test_finite_meta_gradient_converges_to_limit_like_one_over_n(science_bandit):
    theta = science_bandit.initial_params()
    limit = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR)
    grid = [8, 16, 32, 64, 128, 256]
    gaps = [float((mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=n)
                   - limit).norm()) for n in grid]
    fit = fit_log_log(grid, gaps)
    assert -1.1 < fit.slope < -0.9, fit


def test_loo_estimated_truth_agrees_with_exact_finite_truth(science_bandit):
    # 20k leave-one-out estimates: mean within 4 standard errors per coordinate
    theta = science_bandit.initial_params()
    exact = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=8)
    estimate = mb.estimate_meta_gradient(science_bandit, theta, n_inner=8, inner_lr=SCIENCE_LR,
                                         n_samples=20_000, generator=generator(7))
    assert torch.all((estimate.mean - exact).abs() < 4 * estimate.stderr)


def test_enumerations_too_large_fall_back_to_estimates():
    # 10 arms and N = 64: C(73, 9) = 9.7e10 outcomes, far beyond the enumeration limit
    task = mb.make_task("bandit-v0", rewards="random", n_arms=10, seed=0)
    theta = task.initial_params()
    with pytest.raises(mb.UnsupportedError, match="more than the 1,000,000 allowed"):
        mb.meta_gradient(task, theta, inner_lr=1.0, n_inner=64)
    result = mb.evaluate(task, ["lsf"], n_inner=[2, 64], n_trials=200, truth_samples=2000)
    kinds = [(r["n_inner"], r["truth_kind"], r["moments"]) for r in result.records]
    assert kinds == [(2, "exact", "exact"), (64, "estimated", "monte-carlo")]
