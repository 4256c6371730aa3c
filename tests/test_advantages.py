"""Inner-step advantages: GAE against a plain loop and its lambda = 1 special case, the
linear feature baseline on exact fits and singular systems, normalisation, and the
estimators that refuse non-plain settings."""

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.tasks.advantages import (gae, linear_feature_baseline, linear_features,
                                          normalize)
from metarl_bench._src.core.trajectories import reward_to_go

from conftest import generator


def gae_loop(rewards, baseline, gamma, lam):
    """gamma**t A_t with the textbook recursion on undiscounted values v_t = b_t / gamma**t."""
    horizon = rewards.shape[-1]
    scale = gamma ** torch.arange(horizon, dtype=rewards.dtype)
    values = baseline / scale
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(horizon)):
        following = values[..., t + 1] if t + 1 < horizon else torch.zeros_like(running)
        delta = rewards[..., t] + gamma * following - values[..., t]
        running = delta + gamma * lam * running
        advantages[..., t] = running
    return advantages * scale


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.95), (1.0, 0.5), (0.7, 0.0), (0.99, 1.0)])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (3, 1, 12)])
def test_gae_equals_its_loop_twin(gamma, lam, shape):
    rewards = torch.randn(shape, generator=generator(1), dtype=torch.float64)
    baseline = torch.randn(shape, generator=generator(2), dtype=torch.float64)
    torch.testing.assert_close(gae(rewards, baseline, gamma, lam),
                               gae_loop(rewards, baseline, gamma, lam), rtol=1e-12, atol=1e-12)


def test_gae_with_lambda_one_is_reward_to_go_minus_the_baseline():
    rewards = torch.randn(2, 3, 9, generator=generator(3), dtype=torch.float64)
    baseline = torch.randn(2, 3, 9, generator=generator(4), dtype=torch.float64)
    torch.testing.assert_close(gae(rewards, baseline, 0.9, 1.0),
                               reward_to_go(rewards, 0.9) - baseline, rtol=1e-12, atol=1e-12)


def test_linear_baseline_recovers_returns_linear_in_its_features():
    observations = torch.randn(2, 6, 10, 2, generator=generator(5), dtype=torch.float64)
    weights = torch.randn(2, 8, generator=generator(6), dtype=torch.float64)
    returns = torch.einsum("rntf,rf->rnt", linear_features(observations), weights)
    fitted = linear_feature_baseline(observations, returns, reg=1e-12)
    torch.testing.assert_close(fitted, returns, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("observations", [
    torch.zeros(2, 1, 5, 2, dtype=torch.float64),                  # constant features
    torch.ones(1, 1, 1, 3, dtype=torch.float64),                   # one step, one trajectory
    torch.full((1, 4, 3, 2), 1e6, dtype=torch.float64),            # huge, repeated states
])
def test_linear_baseline_never_fails_on_singular_systems(observations):
    returns = torch.randn(observations.shape[:3], generator=generator(7), dtype=torch.float64)
    fitted = linear_feature_baseline(observations, returns)
    assert fitted.shape == returns.shape and torch.isfinite(fitted).all()


def test_linear_baseline_is_bit_identical_from_call_to_call():
    """LAPACK's default least-squares driver on CPU (gelsy) differed in the last bits between
    two calls on the same input, so training with baseline=linear did not repeat."""
    observations = torch.randn(20, 10, 20, 2, generator=generator(8), dtype=torch.float64)
    returns = torch.randn(20, 10, 20, generator=generator(9), dtype=torch.float64)
    first = linear_feature_baseline(observations, returns)
    for _ in range(10):
        assert torch.equal(linear_feature_baseline(observations.clone(), returns.clone()), first)


def test_training_with_the_linear_baseline_repeats_bit_for_bit():
    from metarl_bench._src.training.train import train

    def run():
        task = mb.make_task("navigation2d-v0", policy="linear", init_std=0.1, horizon=10,
                            baseline="linear", normalize_advantages=True)
        return train(task, "lsf", iterations=3, meta_batch=4, n_inner=5, n_outer=5,
                     inner_lr=0.003, outer_lr=0.02, seed=0)

    first, second = run(), run()
    assert torch.equal(first.theta, second.theta)
    assert [row["grad_norm"] for row in first.iterations] == \
        [row["grad_norm"] for row in second.iterations]


def test_normalize_gives_zero_mean_unit_std_per_row():
    advantages = 5 + 3 * torch.randn(3, 4, 6, generator=generator(8), dtype=torch.float64)
    out = normalize(advantages)
    torch.testing.assert_close(out.reshape(3, -1).mean(-1), torch.zeros(3, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(out.reshape(3, -1).std(-1), torch.ones(3, dtype=torch.float64),
                               atol=1e-8, rtol=0)


def test_task_advantages_feed_the_inner_step_and_incompatible_estimators_refuse():
    plain = mb.make_task("navigation2d-v0", n_tasks=2, horizon=5, hidden=(4,))
    with_baseline = mb.make_task("navigation2d-v0", n_tasks=2, horizon=5, hidden=(4,),
                                 baseline="linear", gae_lambda=0.9, normalize_advantages=True)
    theta = plain.initial_params()
    kwargs = dict(n_inner=4, inner_lr=0.01, n_trials=3, n_outer=3)
    a = mb.get_estimator("lsf")(plain, theta, generator=generator(9), **kwargs)
    b = mb.get_estimator("lsf")(with_baseline, theta, generator=generator(9), **kwargs)
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    assert with_baseline.params["baseline"] == "linear"
    with pytest.raises(mb.UnsupportedError, match="plain reward-to-go"):
        mb.get_estimator("dice")(with_baseline, theta, generator=generator(9), **kwargs)
    with pytest.raises(mb.ParameterError, match="gae_lambda must be <= 1.0"):
        mb.make_task("navigation2d-v0", gae_lambda=1.5)
