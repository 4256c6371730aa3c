"""Policies: log-probabilities against torch.distributions and a plain per-row forward pass,
rows independent in one backward pass, second-order autodiff, sampling moments."""

import math

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.tasks.policies import (CategoricalMLP, GaussianMLP, LinearGaussian,
                                        TabularSoftmax, make_policy)
from metarl_bench._src.core.trajectories import Trajectories

from conftest import generator


def plain_mlp(flat, sizes):
    """One row's MLP forward pass written out with torch.nn.functional.linear."""
    offset = 0
    layers = list(zip(sizes[:-1], sizes[1:]))
    weights = []
    for fan_in, fan_out in layers:
        w = flat[offset:offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        b = flat[offset:offset + fan_out]
        offset += fan_out
        weights.append((w, b))
    return weights, flat[offset:]


def mlp_forward(weights, x):
    for layer, (w, b) in enumerate(weights):
        x = torch.nn.functional.linear(x, w.T, b)
        if layer + 1 < len(weights):
            x = torch.tanh(x)
    return x


POLICIES = {
    "linear": lambda: LinearGaussian(3, 2, init_std=0.5),
    "mlp": lambda: GaussianMLP(3, 2, hidden=(5, 4), init_std=0.5, seed=1),
    "categorical-mlp": lambda: CategoricalMLP(3, 4, hidden=(6,), seed=2),
}


def rows_of(policy, n_rows, seed=0):
    theta = policy.initial_params()
    noise = torch.randn(n_rows, *theta.shape, generator=generator(seed), dtype=theta.dtype)
    return theta + 0.3 * noise


def observations_for(n_rows, seed=1):
    return torch.randn(n_rows, 4, 6, 3, generator=generator(seed), dtype=torch.float64)


@pytest.mark.parametrize("kind", list(POLICIES))
def test_log_prob_matches_torch_distributions_row_by_row(kind):
    policy = POLICIES[kind]()
    params = rows_of(policy, 3)
    x = observations_for(3)
    actions = policy.sample(params, x, generator(2))
    log_prob = policy.log_prob(params, x, actions)
    assert log_prob.shape == (3, 4, 6)
    for r in range(3):
        if kind == "linear":
            gain, bias, log_std = params[r, :6].reshape(2, 3), params[r, 6:8], params[r, 8:]
            mean = x[r] @ gain.T + bias
        else:
            sizes = [3, *policy.spec["hidden"], 2 if kind == "mlp" else 4]
            weights, log_std = plain_mlp(params[r], sizes)
            mean = mlp_forward(weights, x[r])
        if kind == "categorical-mlp":
            expected = torch.distributions.Categorical(logits=mean).log_prob(actions[r])
        else:
            expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions[r]).sum(-1)
        torch.testing.assert_close(log_prob[r], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(POLICIES))
def test_rows_are_independent_in_one_backward_pass(kind):
    policy = POLICIES[kind]()
    params = rows_of(policy, 3).requires_grad_()
    x = observations_for(3)
    actions = policy.sample(params, x, generator(3))
    (batched,) = torch.autograd.grad(policy.log_prob(params, x, actions).sum(), params)
    for r in range(3):
        one = params[r:r + 1].detach().requires_grad_()
        (alone,) = torch.autograd.grad(policy.log_prob(one, x[r:r + 1], actions[r:r + 1]).sum(),
                                       one)
        torch.testing.assert_close(batched[r], alone[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(POLICIES))
def test_second_order_autodiff_matches_finite_differences_of_the_gradient(kind):
    policy = POLICIES[kind]()
    theta = rows_of(policy, 1)
    x = observations_for(1)
    actions = policy.sample(theta, x, generator(4))
    direction = torch.randn(theta.shape, generator=generator(5), dtype=theta.dtype)

    def gradient(point, create_graph=False):
        point = point.detach().requires_grad_() if not create_graph else point
        (grad,) = torch.autograd.grad(policy.log_prob(point, x, actions).sum(), point,
                                      create_graph=create_graph)
        return grad

    point = theta.clone().requires_grad_()
    (hvp,) = torch.autograd.grad((gradient(point, create_graph=True) * direction).sum(), point)
    step = 1e-6
    central = (gradient(theta + step * direction) - gradient(theta - step * direction)) / (2 * step)
    torch.testing.assert_close(hvp, central, rtol=1e-6, atol=1e-6)


def test_gaussian_samples_have_the_policy_mean_and_std():
    policy = LinearGaussian(2, 2, init_std=0.7, init_gain=torch.tensor([[0.5, 0.0], [0.0, -1.0]]),
                            init_bias=torch.tensor([0.1, 0.2], dtype=torch.float64))
    params = policy.initial_params().unsqueeze(0)
    x = torch.tensor([1.0, 2.0], dtype=torch.float64).expand(1, 200_000, 2)
    actions = policy.sample(params, x, generator(6))
    # 200,000 draws: standard error 0.7/447 = 1.6e-3 on the mean; 5 sigma below 8e-3
    torch.testing.assert_close(actions.mean((0, 1)), torch.tensor([0.6, -1.8], dtype=torch.float64),
                               atol=8e-3, rtol=0)
    torch.testing.assert_close(actions.std((0, 1)), torch.full((2,), 0.7, dtype=torch.float64),
                               atol=8e-3, rtol=0)


def test_categorical_samples_follow_the_policy():
    policy = CategoricalMLP(3, 4, hidden=(6,), seed=2)
    params = rows_of(policy, 1) * 20  # far from uniform
    x = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64).expand(1, 100_000, 3)
    actions = policy.sample(params, x, generator(7))
    probs = torch.exp(policy.log_softmax(params, x[:, :1]))[0, 0]
    frequency = torch.bincount(actions.reshape(-1), minlength=4).double() / actions.numel()
    # 100,000 draws: standard error at most 1.6e-3; 5 sigma below 8e-3
    torch.testing.assert_close(frequency, probs, atol=8e-3, rtol=0)


def test_tabular_softmax_is_todays_tabular_policy(small_mdp):
    theta = small_mdp.initial_params()
    assert isinstance(small_mdp.policy, TabularSoftmax)
    traj = small_mdp.sample(theta.expand(2, *theta.shape), 3, torch.tensor([0, 0]), generator(8))
    log_pi = torch.log_softmax(theta, -1)
    torch.testing.assert_close(small_mdp.log_prob(theta.expand(2, *theta.shape), traj),
                               log_pi[traj.states, traj.actions], rtol=0, atol=0)


def test_mlp_has_the_default_64x64_layout_and_deterministic_init():
    policy = make_policy("mlp", observation_dim=2, action_dim=2)
    assert policy.param_shape == (2 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2 + 2,)
    assert torch.equal(policy.initial_params(),
                       make_policy("mlp", observation_dim=2, action_dim=2).initial_params())
    assert not torch.equal(policy.initial_params(),
                           make_policy("mlp", observation_dim=2, action_dim=2,
                                       seed=1).initial_params())
    assert torch.allclose(policy.initial_params()[-2:], torch.zeros(2, dtype=torch.float64))


def test_bad_policy_arguments_raise_typed_errors():
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'mlp'"):
        make_policy("mpl", observation_dim=2, action_dim=2)
    with pytest.raises(mb.ParameterError, match="hidden"):
        make_policy("mlp", observation_dim=2, action_dim=2, hidden=(64, 0))
    with pytest.raises(mb.ParameterError, match="init_std"):
        make_policy("linear", observation_dim=2, action_dim=2, init_std=-1.0)
    policy = LinearGaussian(3, 2)
    with pytest.raises(mb.ShapeError, match=r"\(R, 10\)"):
        policy.log_prob(torch.zeros(1, 9, dtype=torch.float64), torch.zeros(1, 2, 3),
                        torch.zeros(1, 2, 2))
    with pytest.raises(mb.ShapeError, match="end in 3 features"):
        policy.log_prob(policy.initial_params().unsqueeze(0), torch.zeros(1, 2, 4),
                        torch.zeros(1, 2, 2))


def test_trajectories_of_float_vectors_split_into_rows():
    states = torch.arange(2 * 3 * 4 * 2, dtype=torch.float64).reshape(2, 3, 4, 2)
    traj = Trajectories(states, -states, torch.zeros(2, 3, 4, dtype=torch.float64),
                        torch.tensor([0, 1]))
    assert (traj.n_rows, traj.n_traj, traj.horizon) == (2, 3, 4)
    single = traj.one_per_row()
    assert single.states.shape == (6, 1, 4, 2) and single.actions.shape == (6, 1, 4, 2)
    assert torch.equal(single.states[4, 0], states[1, 1])
    assert torch.equal(single.task_index, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert traj.rows(slice(1, 2)).observations.shape == (1, 3, 4, 2)
    assert math.isclose(float(traj.rows(torch.tensor([1])).actions.sum()), -float(states[1].sum()))
