"""The bandit's benchmark anchor (benchmarks/anchor_bandit.py) computes what the library's
``maml`` computes: the same estimate from the same pulls to rounding (float64, 1e-12
absolute), and from its own draws the same mean (a z-score bound of 5 per coordinate over
40,000 seeded trials against the exact mean; a false alarm has probability below about 6e-7
per coordinate). A seed may change only with a note saying why.
"""

import numpy as np
import pytest
import torch

import metarl_bench as mb
from benchmarks import anchor_bandit
from metarl_bench._src.core.trajectories import Trajectories

from conftest import generator


def pulls_as_trajectories(task, arms):
    actions = torch.as_tensor(arms).unsqueeze(-1)                       # (R, N, 1)
    return Trajectories(torch.zeros_like(actions), actions, task.arm_rewards[0][actions],
                        torch.zeros(actions.shape[0], dtype=torch.long))


@pytest.mark.parametrize("n_inner, n_outer", [(10, 10), (64, 64), (3, 7)])
def test_the_anchor_and_the_library_agree_on_the_same_pulls(n_inner, n_outer):
    task = mb.make_task("bandit-v0", rewards="random", n_arms=anchor_bandit.N_ARMS, seed=0)
    rewards = anchor_bandit.bandit_rewards()
    assert np.array_equal(rewards, task.arm_rewards[0].numpy())
    n_rows = 50
    theta = 0.5 * torch.randn(anchor_bandit.N_ARMS, generator=generator(1), dtype=torch.float64)
    inner_arms = torch.randint(0, 30, (n_rows, n_inner), generator=generator(2))
    outer_arms = torch.randint(0, 30, (n_rows, n_outer), generator=generator(3))
    inner = pulls_as_trajectories(task, inner_arms)
    outer = pulls_as_trajectories(task, outer_arms)
    library = mb.estimator_spec("maml").from_samples(
        task, theta, inner, inner_lr=anchor_bandit.INNER_LR, outer=lambda adapted, index: outer)
    anchor = np.stack([anchor_bandit.maml_estimate(theta.numpy(), rewards, inner_arms[r].numpy(),
                                                   outer_arms[r].numpy(), anchor_bandit.INNER_LR)
                       for r in range(n_rows)])
    np.testing.assert_allclose(anchor, library.numpy(), rtol=0, atol=1e-12)


def test_the_anchors_own_draws_give_the_exact_mean():
    # 4 arms, N = 3: the exact mean (the outer step sampled or exact: the same mean) by the
    # library's enumeration of the 20 inner count vectors
    n_arms, n_inner, n_outer, trials = 4, 3, 5, 40_000
    rewards = anchor_bandit.bandit_rewards(n_arms)
    logits = [0.5, -0.3, 0.2, 0.0]   # not uniform: the draws must follow the policy
    task = mb.make_task("bandit-v0", rewards=rewards.tolist(), init_logits=logits)
    theta = task.initial_params()
    moments = mb.exact_moments(task, theta, mb.estimator_spec("maml"), n_inner=n_inner,
                               inner_lr=1.0, truth=theta)
    drawn = anchor_bandit.estimates(trials, n_inner, n_outer, n_arms=n_arms, inner_lr=1.0,
                                    theta=np.array(logits), seed=5)
    z = (drawn.mean(0) - moments.mean.numpy()) / (drawn.std(0, ddof=1) / np.sqrt(trials))
    assert np.all(np.abs(z) < 5.0), z
