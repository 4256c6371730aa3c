"""Shared fixtures. Randomized tests use fixed seeds; each states its tolerance and how
it may fail (a seed may change only with a note in the commit saying why)."""

import pytest
import torch

import metarl_bench as mb

# A published independent check: 3 arms, r = (1, 0, 0.5), theta = (0, 0.5, -0.5),
# eta = 2, exact outer.
SCIENCE_BANDIT = dict(rewards=[1.0, 0.0, 0.5], init_logits=[0.0, 0.5, -0.5])
SCIENCE_LR = 2.0


@pytest.fixture
def science_bandit():
    return mb.make_task("bandit-v0", **SCIENCE_BANDIT)


@pytest.fixture
def small_mdp():
    return mb.make_task("tabular-v0", n_states=4, n_actions=3, horizon=4, gamma=0.9, seed=1)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)
