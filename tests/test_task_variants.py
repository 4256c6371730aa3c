"""The sampler and the task variants: alias tables, the tabular sampler's law, discounted
infinite-horizon MDPs (padded episodes), Bernoulli and Gaussian bandits.

Randomized tests use fixed seeds and state their tolerance: a z-score bound of 4.5 to 5
(a false alarm has probability below about 1e-5 per number compared under the null) or a
relative bound several standard errors wide. A seed may change only with a note saying why.
"""

import math

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.estimators.common import inner_step
from metarl_bench._src.core.draws import (alias_draw, alias_outcomes, alias_probabilities,
                                     alias_table)
from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.estimators.truth import exact_moments

from conftest import generator

COUNT_DETERMINED = [name for name in mb.list_estimators()
                    if mb.estimator_spec(name).count_determined
                    and mb.estimator_spec(name).from_samples is not None]


def rows_of(theta, n_rows):
    return theta.expand(n_rows, *theta.shape)


# ---- alias tables -------------------------------------------------------------------------

@pytest.mark.parametrize("n_columns", [1, 2, 3, 5, 20, 64])
def test_alias_tables_reproduce_their_probabilities(n_columns):
    probs = torch.rand(50, n_columns, generator=generator(n_columns), dtype=torch.float64)
    probs[probs < 0.3] = 0.0      # zero-probability outcomes, several per table
    probs[:, 0] += 1e-3           # no all-zero table
    probs /= probs.sum(-1, keepdim=True)
    threshold, alias = alias_table(probs)
    torch.testing.assert_close(alias_probabilities(threshold, alias), probs, rtol=0, atol=1e-14)
    # an outcome of probability zero is never kept and never anyone's alias
    zero = probs == 0
    assert torch.all(threshold[zero] <= 1e-15)
    assert not torch.any(zero.gather(-1, alias) & (threshold < 1 - 1e-15))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_largest_uniform_never_picks_a_column_past_the_end(dtype):
    largest = torch.tensor(1.0, dtype=dtype).nextafter(torch.tensor(0.0, dtype=dtype))
    columns = torch.arange(1, 4097)
    assert torch.all((largest * columns.to(dtype)).long() <= columns - 1)
    # and through a draw: a table whose last column is certain
    probs = torch.zeros(7, dtype=dtype)
    probs[-1] = 1.0
    threshold, alias = alias_table(probs)
    outcome = alias_draw(threshold, alias_outcomes(alias, torch.arange(7)), 0,
                         7 * largest.reshape(1))
    assert outcome.tolist() == [6]


# ---- the tabular sampler --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(n_states=6, n_actions=3, horizon=4, seed=1, n_tasks=2),
    dict(n_states=20, n_actions=5, horizon=3, seed=0, concentration=0.1),  # many tiny P(s'|s,a)
])
def test_tabular_sampler_draws_the_exact_state_action_law(kwargs):
    task = mb.make_task("tabular-v0", **kwargs)
    theta = task.initial_params()
    n_rows, n_traj = 1000 * task.n_tasks, 64
    task_index = torch.arange(n_rows) % task.n_tasks
    shared = task.sample(rows_of(theta, n_rows), n_traj, task_index, generator(3))
    # rows with their own copy of theta build per-row tables: the same draws
    own = task.sample(theta.repeat(n_rows, 1, 1), n_traj, task_index, generator(3))
    assert torch.equal(shared.states, own.states) and torch.equal(shared.actions, own.actions)
    start, transitions, rewards, _, _ = task._model(theta)
    pi = torch.softmax(theta, -1)
    worst = 0.0
    for k in range(task.n_tasks):
        mine = task_index == k
        states, actions = shared.states[mine], shared.actions[mine]
        assert torch.equal(shared.rewards[mine], rewards[k][states, actions])
        n = states.shape[0] * n_traj
        state_dist = start[k]
        for t in range(task.horizon):
            joint = (state_dist[:, None] * pi).reshape(-1)
            cell = (states[..., t] * task.n_actions + actions[..., t]).reshape(-1)
            freq = torch.bincount(cell, minlength=joint.numel()).double() / n
            z = (freq - joint) / (joint * (1 - joint) / n).sqrt().clamp_min(1e-12)
            worst = max(worst, float(z.abs().max()))
            state_dist = torch.einsum("sa,san->n", joint.reshape(pi.shape), transitions[k])
    assert worst < 5.0


# ---- discounted infinite-horizon MDPs -------------------------------------------------------

DISCOUNTED = dict(n_states=5, n_actions=3, gamma=0.8, seed=0)


def test_discounted_value_is_the_long_horizon_limit_of_tabular_v0():
    task = mb.make_task("tabular-discounted-v0", n_tasks=2, **DISCOUNTED)
    # gamma**400 < 1e-38: the finite sum equals the infinite one to rounding
    long = mb.make_task("tabular-v0", n_tasks=2, horizon=400, **DISCOUNTED)
    theta = torch.randn(5, 3, generator=generator(1), dtype=torch.float64)
    rows, index = rows_of(theta, 2), torch.arange(2)
    torch.testing.assert_close(task.value(rows, index), long.value(rows, index),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(mb.meta_gradient(task, theta, inner_lr=1.5),
                               mb.meta_gradient(long, theta, inner_lr=1.5), rtol=1e-10, atol=1e-13)


def test_discounted_meta_gradient_matches_finite_differences():
    task = mb.make_task("tabular-discounted-v0", **DISCOUNTED)
    theta, inner_lr = task.initial_params(), 1.5
    index = torch.zeros(1, dtype=torch.long)

    def objective(point):  # F_inf(theta) = V(theta + eta grad V(theta))
        point = point.detach().requires_grad_()
        (grad,) = torch.autograd.grad(task.value(point.unsqueeze(0), index).sum(), point)
        return float(task.value((point + inner_lr * grad).unsqueeze(0), index).detach())

    eps = 1e-5
    basis = torch.eye(theta.numel(), dtype=theta.dtype).reshape(-1, *theta.shape)
    differences = torch.tensor([(objective(theta + eps * e) - objective(theta - eps * e))
                                / (2 * eps) for e in basis], dtype=theta.dtype).reshape(theta.shape)
    torch.testing.assert_close(mb.meta_gradient(task, theta, inner_lr=inner_lr), differences,
                               rtol=0, atol=1e-8)


@pytest.mark.slow
def test_discounted_episodes_return_the_exact_value_and_policy_gradient():
    task = mb.make_task("tabular-discounted-v0", n_tasks=2, **DISCOUNTED)
    theta = task.initial_params()
    n_rows, n_traj = 2000, 100
    index = torch.arange(n_rows) % 2
    traj = task.sample(rows_of(theta, n_rows), n_traj, index, generator(5))
    # padded steps are empty and the mask marks a prefix of each episode; no episode is cut:
    # the batch is as long as its longest episode
    assert not torch.any(traj.rewards[~traj.mask] != 0)
    assert torch.all(traj.mask[..., 0]) and not torch.any(traj.mask[..., 1:] & ~traj.mask[..., :-1])
    assert torch.any(traj.mask[..., -1])
    lengths = traj.mask.sum(-1).double()
    # Geometric(0.2) lengths: mean 5, standard deviation sqrt(0.8)/0.2
    assert abs(float(lengths.mean()) - 5.0) < 4.5 * math.sqrt(0.8) / 0.2 / lengths.numel() ** 0.5
    exact = task.value(rows_of(theta, 2), torch.arange(2))
    returns = traj.rewards.sum(-1)
    for k in range(2):
        sample = returns[index == k].reshape(-1)
        stderr = float(sample.std()) / sample.numel() ** 0.5
        # 100,000 episodes per task: the check below rules out any bias above 1.4% of V
        # (cutting episodes at 20 steps would leave gamma**20 = 1.2% at gamma = 0.8, which
        # the padding test and the no-cut assertion above exclude exactly)
        assert stderr < 0.003 * float(exact[k])
        assert abs(float(sample.mean() - exact[k])) < 4.5 * stderr
    # the inner policy gradient g (masked log-probs, undiscounted reward-to-go) has mean
    # grad V exactly; with padding counted wrongly it would be off by a margin
    one = torch.zeros(100, dtype=torch.long)
    traj = task.sample(rows_of(theta, 100), n_traj, one, generator(6))
    step = inner_step(task, theta, traj.one_per_row(), 1.0, differentiable=False)
    per_traj = (step.adapted - step.params).detach().reshape(-1, theta.numel())
    point = theta.clone().requires_grad_()
    (exact_grad,) = torch.autograd.grad(task.value(point.unsqueeze(0), one[:1]).sum(), point)
    z = (per_traj.mean(0) - exact_grad.reshape(-1)) / (per_traj.std(0) / per_traj.shape[0] ** 0.5)
    assert float(z.abs().max()) < 4.5


def _padded(traj, extra):
    def pad(tensor, value):
        fill = tensor.new_full((*tensor.shape[:2], extra), value)
        return torch.cat([tensor, fill], -1)
    return Trajectories(pad(traj.states, 0), pad(traj.actions, 0), pad(traj.rewards, 0.0),
                        traj.task_index, pad(traj.mask, False))


@pytest.mark.parametrize("name", COUNT_DETERMINED)
def test_padding_adds_exactly_nothing_to_any_estimate(name):
    task = mb.make_task("tabular-discounted-v0", **DISCOUNTED)
    theta = task.initial_params()
    traj = task.sample(rows_of(theta, 3), 4, torch.zeros(3, dtype=torch.long), generator(7))
    spec = mb.estimator_spec(name)
    estimate = spec.from_samples(task, theta, traj, inner_lr=1.0)
    padded = spec.from_samples(task, theta, _padded(traj, 5), inner_lr=1.0)
    torch.testing.assert_close(padded, estimate, rtol=0, atol=1e-12)


def test_discounted_unbiased_mean_matches_the_estimated_truth():
    task = mb.make_task("tabular-discounted-v0", **DISCOUNTED)
    theta, n_inner = task.initial_params(), 4
    truth = mb.estimate_meta_gradient(task, theta, n_inner=n_inner, inner_lr=1.0,
                                      n_samples=4000, generator=generator(8))
    estimates = mb.get_estimator("unbiased")(task, theta, n_inner=n_inner, inner_lr=1.0,
                                             n_trials=4000, generator=generator(9))
    stderr = (estimates.var(0) / estimates.shape[0] + truth.stderr ** 2).sqrt()
    assert float(((estimates.mean(0) - truth.mean) / stderr).abs().max()) < 4.5


def test_discounted_task_arguments_are_checked():
    with pytest.raises(mb.ParameterError, match="tabular-discounted-v0"):
        mb.make_task("tabular-v0", horizon=None)
    with pytest.raises(mb.ParameterError, match="gamma must be < 1"):
        mb.make_task("tabular-discounted-v0", gamma=1.0)


# ---- Bernoulli and Gaussian bandits --------------------------------------------------------

BERNOULLI = dict(success_probs=[0.9, 0.2, 0.5], init_logits=[0.2, -0.1, 0.3])


def test_certain_bernoulli_arms_are_the_deterministic_bandit():
    rewards, logits = [1.0, 0.0, 1.0], [0.2, -0.1, 0.3]
    bernoulli = mb.make_task("bernoulli-bandit-v0", success_probs=rewards, init_logits=logits)
    plain = mb.make_task("bandit-v0", rewards=rewards, init_logits=logits)
    theta = plain.initial_params()
    for n_inner in (1, 3, 8):
        torch.testing.assert_close(
            mb.meta_gradient(bernoulli, theta, inner_lr=2.0, n_inner=n_inner),
            mb.meta_gradient(plain, theta, inner_lr=2.0, n_inner=n_inner), rtol=0, atol=1e-14)
    # sample for sample: the arms are drawn first, from the same stream
    for name in ("lsf", "unbiased"):
        estimator = mb.get_estimator(name)
        torch.testing.assert_close(
            estimator(bernoulli, theta, n_inner=5, inner_lr=2.0, n_trials=50,
                      generator=generator(1)),
            estimator(plain, theta, n_inner=5, inner_lr=2.0, n_trials=50,
                      generator=generator(1)), rtol=0, atol=1e-12)


def test_bernoulli_enumeration_lists_every_outcome_once():
    task = mb.make_task("bernoulli-bandit-v0", success_probs=[[0.9, 0.2], [0.3, 0.6]], n_tasks=2)
    theta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    assert task.enumeration_size(5) == math.comb(5 + 3, 3)
    totals = {}
    for log_weight, inner in task.enumerate_inner(theta, 5):
        k = int(inner.task_index[0])
        totals[k] = totals.get(k, 0.0) + float(torch.exp(log_weight).sum())
        assert inner.rewards.shape == (log_weight.shape[0], 5, 1)
    assert totals == pytest.approx({0: 1.0, 1: 1.0}, abs=1e-13)


def test_bernoulli_exact_gradient_matches_finite_differences_of_f_n():
    task = mb.make_task("bernoulli-bandit-v0", **BERNOULLI)
    theta, eps = task.initial_params(), 1e-6
    for n_inner in (1, 4, 9):
        basis = torch.eye(3, dtype=theta.dtype)
        differences = torch.stack([
            (task.finite_meta_objective(theta + eps * e, n_inner, 2.0)
             - task.finite_meta_objective(theta - eps * e, n_inner, 2.0)) / (2 * eps)
            for e in basis])
        torch.testing.assert_close(mb.meta_gradient(task, theta, inner_lr=2.0, n_inner=n_inner),
                                   differences, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["unbiased", "loo", "lsf"])
def test_bernoulli_exact_moments_match_monte_carlo(name):
    task = mb.make_task("bernoulli-bandit-v0", **BERNOULLI)
    theta, n_inner, inner_lr = task.initial_params(), 4, 2.0
    truth = mb.meta_gradient(task, theta, inner_lr=inner_lr, n_inner=n_inner)
    moments = exact_moments(task, theta, mb.estimator_spec(name), n_inner=n_inner,
                            inner_lr=inner_lr, truth=truth)
    estimates = mb.get_estimator(name)(task, theta, n_inner=n_inner, inner_lr=inner_lr,
                                       n_trials=100_000, generator=generator(11))
    variance = moments.covariance.diagonal()
    z = (estimates.mean(0) - moments.mean) / (variance / estimates.shape[0]).sqrt()
    assert float(z.abs().max()) < 4.5
    # sample variances of 1e5 draws: a few percent covers their spread
    torch.testing.assert_close(estimates.var(0), variance, rtol=0.05, atol=0)
    if name != "lsf":  # the unbiased ones: their exact mean is grad F_N itself
        torch.testing.assert_close(moments.mean, truth, rtol=0, atol=1e-14)


def test_gaussian_bandit_without_noise_is_the_deterministic_bandit():
    means, logits = [1.0, 0.0, 0.5], [0.0, 0.5, -0.5]
    gaussian = mb.make_task("gaussian-bandit-v0", means=means, stds=0.0, init_logits=logits)
    plain = mb.make_task("bandit-v0", rewards=means, init_logits=logits)
    theta = plain.initial_params()
    torch.testing.assert_close(
        mb.get_estimator("lsf")(gaussian, theta, n_inner=6, inner_lr=2.0, n_trials=40,
                                generator=generator(2)),
        mb.get_estimator("lsf")(plain, theta, n_inner=6, inner_lr=2.0, n_trials=40,
                                generator=generator(2)), rtol=0, atol=1e-12)
    assert gaussian.enumeration_size(4) is None
    with pytest.raises(mb.UnsupportedError, match="continuous rewards"):
        gaussian.finite_meta_objective(theta, 4, 2.0)


def test_gaussian_rewards_have_their_arm_means_and_stds():
    task = mb.make_task("gaussian-bandit-v0", means=[1.0, -1.0], stds=[0.5, 2.0])
    theta = task.initial_params()
    traj = task.sample(rows_of(theta, 100), 400, torch.zeros(100, dtype=torch.long), generator(4))
    for arm, (mean, std) in enumerate([(1.0, 0.5), (-1.0, 2.0)]):
        rewards = traj.rewards[traj.actions == arm]
        n = rewards.numel()
        assert abs(float(rewards.mean()) - mean) < 4.5 * std / n ** 0.5
        assert abs(float(rewards.std()) / std - 1) < 4.5 / (2 * n) ** 0.5


def test_bandit_variant_arguments_are_checked():
    with pytest.raises(mb.ParameterError, match=r"success_probs must lie in \[0.0, 1.0\]"):
        mb.make_task("bernoulli-bandit-v0", success_probs=[0.5, 1.5])
    with pytest.raises(mb.ParameterError, match="stds must be >= 0"):
        mb.make_task("gaussian-bandit-v0", stds=-1.0)
    with pytest.raises(mb.UnsupportedError, match="more than the"):
        task = mb.make_task("bernoulli-bandit-v0", success_probs="random", n_arms=3)
        mb.meta_gradient(task, task.initial_params(), inner_lr=1.0, n_inner=64)


# ---- chunked calls --------------------------------------------------------------------------

def test_large_calls_run_in_chunks_with_the_generator_running_on(monkeypatch):
    from metarl_bench._src.estimators import common

    task = mb.make_task("bandit-v0", rewards=[1.0, 0.0, 0.5])
    theta, lsf = task.initial_params(), mb.get_estimator("lsf")
    seeded = generator(12)
    parts = [lsf(task, theta, n_inner=4, inner_lr=1.0, n_trials=count, generator=seeded)
             for count in (3, 2, 2)]
    # 4 trajectory steps per trial, at most 12 per chunk: 7 trials run as 3 + 2 + 2
    monkeypatch.setattr(common, "CHUNK_STEPS", 12)
    chunked = lsf(task, theta, n_inner=4, inner_lr=1.0, n_trials=7, generator=generator(12))
    assert torch.equal(chunked, torch.cat(parts))


def test_float32_models_hold_no_subnormal_numbers():
    task = mb.make_task("tabular-v0", n_states=20, n_actions=5, horizon=3, concentration=0.002)
    tiny32 = torch.finfo(torch.float32).tiny
    assert torch.any((task._transitions > 0) & (task._transitions < tiny32))  # the premise
    theta32 = task.initial_params(dtype=torch.float32)
    for table in (*task._model(theta32), *task._alias_model(theta32)):
        if table.is_floating_point():
            assert not torch.any((table != 0) & (table.abs() < tiny32))
    # the float64 model keeps them, and float32 runs stay close to float64 ones
    theta64 = task.initial_params()
    assert torch.any((task._model(theta64)[1] > 0) & (task._model(theta64)[1] < tiny32))
    torch.testing.assert_close(mb.meta_gradient(task, theta32, inner_lr=1.0).double(),
                               mb.meta_gradient(task, theta64, inner_lr=1.0), rtol=1e-4, atol=1e-6)
