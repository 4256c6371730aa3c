"""Categorical draws chosen by use: alias tables and inverse CDF draw the same law, the choice
reads the configuration only, and the bandit and tabular samplers use it.

Randomized tests use fixed seeds and a chi-square bound at z = 5 by the Wilson-Hilferty
approximation (a false alarm has probability below about 3e-7 per law compared under the
null). A seed may change only with a note saying why.
"""

import math

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.core.draws import (CategoricalTables, alias_pays_off, cdf_draw,
                                          scaled_cdf, uniform)

from conftest import generator


def chi_square_bound(dof, z=5.0):
    """The chi-square quantile of ``dof`` degrees of freedom at the normal quantile z."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def assert_law(counts, probs):
    """The counts of the outcomes drawn follow ``probs``: an outcome of probability zero is
    never drawn, and Pearson's statistic over the others is within the bound."""
    counts, probs = counts.double(), probs.double()
    assert torch.all(counts[probs == 0] == 0)
    positive = probs > 0
    expected = counts.sum() * probs[positive]
    statistic, dof = float(((counts[positive] - expected) ** 2 / expected).sum()), \
        int(positive.sum()) - 1
    if dof == 0:  # one possible outcome: drawn every time
        assert counts[positive].item() == counts.sum().item()
    else:
        assert statistic < chi_square_bound(dof), (statistic, dof)


def laws(n_tables, n_outcomes, seed, dtype=torch.float64):
    probs = torch.rand(n_tables, n_outcomes, generator=generator(seed), dtype=torch.float64)
    probs[probs < 0.2] = 0.0      # zero-probability outcomes, the last one included
    probs[:, 0] += 1e-3           # no all-zero law
    return (probs / probs.sum(-1, keepdim=True)).to(dtype)


@pytest.mark.parametrize("alias", [True, False], ids=["alias", "inverse-cdf"])
@pytest.mark.parametrize("n_outcomes", [2, 3, 30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_methods_draw_the_exact_law(alias, n_outcomes, dtype):
    n_tables, per_table = 4, 50_000
    probs = laws(n_tables, n_outcomes, n_outcomes, dtype)
    values = torch.arange(n_tables * n_outcomes).reshape(n_tables, n_outcomes)
    tables = CategoricalTables(probs, values, n_tables * per_table, gathered=False,
                               alias=alias)
    assert tables.alias is alias
    offset = (torch.arange(n_tables) * n_outcomes).unsqueeze(1)
    drawn = tables.draw(offset, uniform((n_tables, per_table), generator(7), probs,
                                        high=n_outcomes))
    assert drawn.shape == (n_tables, per_table)
    for table in range(n_tables):
        assert_law(torch.bincount(drawn[table] - table * n_outcomes, minlength=n_outcomes),
                   probs[table])


@pytest.mark.parametrize("alias", [True, False], ids=["alias", "inverse-cdf"])
def test_draws_that_gather_their_table_per_draw_draw_its_law(alias):
    n_tables, n_outcomes, n_draws = 5, 4, 200_000
    probs = laws(n_tables, n_outcomes, 11)
    tables = CategoricalTables(probs, torch.arange(20).reshape(5, 4), n_draws, gathered=True,
                               alias=alias)
    table = torch.randint(0, n_tables, (n_draws,), generator=generator(12))
    drawn = tables.draw(table * n_outcomes, uniform((n_draws,), generator(13), probs,
                                                    high=n_outcomes))
    assert torch.equal(drawn.div(n_outcomes, rounding_mode="floor"), table)
    for k in range(n_tables):
        assert_law(torch.bincount(drawn[table == k] % n_outcomes, minlength=n_outcomes),
                   probs[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_cdf_never_draws_a_trailing_zero_probability_outcome(dtype):
    # cumulative sums that round to just below 1 would send the largest uniform past the
    # last outcome of positive probability; its entry is +inf, so the search stops there
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0, 0.0], dtype=dtype)
    probs[3] = probs[3].nextafter(torch.tensor(0.0, dtype=dtype))  # total just below 1
    cdf = scaled_cdf(probs)
    assert torch.isinf(cdf[3:]).all() and torch.isfinite(cdf[:3]).all()
    largest = torch.tensor(1.0, dtype=dtype).nextafter(torch.tensor(0.0, dtype=dtype))
    scaled = torch.stack([torch.zeros((), dtype=dtype), 6 * largest])
    assert cdf_draw(cdf, None, scaled).tolist() == [0, 3]
    certain = scaled_cdf(torch.tensor([0.0, 1.0, 0.0], dtype=dtype))
    assert cdf_draw(certain, None, 3 * torch.stack([largest, largest * 0])).tolist() == [1, 1]


def test_the_rule_reads_the_configuration_only():
    # tabular policies (several laws per row, gathered): alias tables at every size
    assert alias_pays_off(1, 3, 1, gathered=True)
    # a 30-arm bandit, N = M = 10, 1000 trials: the adapted policies (one per row, drawn
    # from 10 times) and the shared one (10,000 draws) by inverse CDF
    assert not alias_pays_off(1000, 30, 10_000, gathered=False)
    assert not alias_pays_off(1, 30, 10_000, gathered=False)
    # N = 64: the shared policy's 64,000 draws pay for its table; the adapted ones do not
    assert alias_pays_off(1, 30, 64_000, gathered=False)
    assert not alias_pays_off(1000, 30, 64_000, gathered=False)
    # one trial (the fixed cost of a call): inverse CDF
    assert not alias_pays_off(1, 30, 10, gathered=False)
    # monotone: more draws per table never turn alias tables back into inverse CDF
    for n_outcomes in (2, 3, 5, 30, 100):
        choices = [alias_pays_off(10, n_outcomes, 10 * per_table, gathered=False)
                   for per_table in (1, 10, 100, 10**3, 10**4, 10**5, 10**6)]
        assert choices == sorted(choices), n_outcomes


def choices(monkeypatch):
    """The method each CategoricalTables of the calls that follow picks."""
    picked = []
    original = CategoricalTables.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        picked.append(self.alias)

    monkeypatch.setattr(CategoricalTables, "__init__", recording)
    return picked


def test_the_samplers_pick_by_the_rule(monkeypatch):
    picked = choices(monkeypatch)
    bandit = mb.make_task("bandit-v0", rewards="random", n_arms=30, seed=0)
    theta = bandit.initial_params()
    mb.get_estimator("maml")(bandit, theta, n_inner=10, inner_lr=1.0, n_trials=1000,
                             n_outer=10, generator=generator(0))
    assert picked == [False, False]          # the shared inner policy, the adapted ones
    picked.clear()
    mb.get_estimator("maml")(bandit, theta, n_inner=64, inner_lr=1.0, n_trials=1000,
                             n_outer=64, generator=generator(0))
    assert picked == [True, False]
    picked.clear()
    tabular = mb.make_task("tabular-v0", n_states=3, n_actions=4, horizon=3)
    mb.get_estimator("lsf")(tabular, tabular.initial_params(), n_inner=2, inner_lr=1.0,
                            n_trials=1, generator=generator(0))
    assert picked == [True]


@pytest.mark.parametrize("n_outer", [10, 64])
def test_the_bandit_sampler_draws_each_rows_law(n_outer):
    # rows with their own theta (the adapted policies of a call): four policies, 2500 rows
    # each; the counts of each policy's rows against its softmax
    task = mb.make_task("bandit-v0", rewards="random", n_arms=30, seed=0)
    thetas = 2.0 * torch.randn(4, 30, generator=generator(21), dtype=torch.float64)
    rows = thetas.repeat_interleave(2500, 0)
    pulls = task.sample(rows, n_outer, torch.zeros(10_000, dtype=torch.long), generator(22))
    assert pulls.actions.shape == (10_000, n_outer, 1)
    assert torch.equal(pulls.states, torch.zeros_like(pulls.actions))
    assert torch.equal(pulls.rewards, task.arm_rewards[0][pulls.actions])
    for k in range(4):
        assert_law(torch.bincount(pulls.actions[k * 2500:(k + 1) * 2500].reshape(-1),
                                  minlength=30), torch.softmax(thetas[k], -1))


def test_the_bandit_sampler_is_the_tabular_walk_of_one_state_and_one_step():
    # the same task as a one-state tabular MDP, walked by TabularTask.sample: the same draws
    # (start state's uniform, then the arm's), the same arms and rewards
    bandit = mb.make_task("bandit-v0", rewards=[[1.0, 0.0, 0.5], [0.2, 0.9, 0.4]], n_tasks=2)
    walk = mb.make_task("tabular-v0", n_states=1, n_actions=3, horizon=1, n_tasks=2,
                        transitions=torch.ones(1, 3, 1), start=[1.0],
                        rewards=bandit.arm_rewards.reshape(2, 1, 3))
    rows = torch.randn(6, 3, generator=generator(3), dtype=torch.float64)
    index = torch.arange(6) % 2
    for params in (rows, rows[:1].expand(6, 3)):
        mine = bandit.sample(params, 40, index, generator(4))
        walked = walk.sample(params.reshape(-1, 1, 3), 40, index, generator(4))
        assert torch.equal(mine.actions, walked.actions)
        assert torch.equal(mine.rewards, walked.rewards)


def test_same_seed_same_draws_and_the_stream_moves_on_alike():
    task = mb.make_task("bernoulli-bandit-v0", success_probs=[0.9, 0.1, 0.5])
    rows = torch.randn(50, 3, generator=generator(5), dtype=torch.float64)
    index = torch.zeros(50, dtype=torch.long)
    first, second = generator(6), generator(6)
    a, b = task.sample(rows, 8, index, first), task.sample(rows, 8, index, second)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert torch.equal(first.get_state(), second.get_state())
