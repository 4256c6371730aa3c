"""K inner steps: the shared chain against per-row nested-autodiff twins, the K-step truths
against closed forms and finite differences, exact moments and Monte Carlo against them,
and K = 1 unchanged."""

import itertools
import math

import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.estimators import reference
from metarl_bench._src.estimators.common import multi_step, outer_at, row_params
from metarl_bench._src.estimators.truth import MAX_ENUMERATION
from metarl_bench._src.evaluation.store import TIMING_FIELDS

from conftest import SCIENCE_BANDIT, SCIENCE_LR, generator

TWINNED = sorted(reference.MULTI_STEP)
TASKS = {
    "bandit": dict(name="bandit-v0", **SCIENCE_BANDIT),
    "tabular-2tasks": dict(name="tabular-v0", n_states=3, n_actions=2, horizon=3, gamma=0.8,
                           n_tasks=2, seed=4),
}


def make(key):
    kwargs = dict(TASKS[key])
    return mb.make_task(kwargs.pop("name"), **kwargs)


def step_samples(task, theta, n_rows, n_inner, n_steps, seed=0):
    """K batches of trajectories, any of which may serve any step (the chain and its twin are
    deterministic functions of the samples)."""
    gen, index = generator(seed), torch.arange(n_rows) % task.n_tasks
    rows = theta.expand(n_rows, *theta.shape)
    return [task.sample(rows, n_inner, index, gen) for _ in range(n_steps)]


class ReplayedOuter:
    """Samples the outer trajectories of all rows at once, then replays them row by row."""

    def __init__(self, task, n_outer, seed):
        self.task, self.n_outer, self.gen, self.recorded = task, n_outer, generator(seed), None

    def __call__(self, adapted, task_index):
        if self.recorded is None:
            self.recorded, self.row = self.task.sample(adapted, self.n_outer, task_index,
                                                       self.gen), 0
            return self.recorded
        self.row += 1
        return self.recorded.rows(slice(self.row - 1, self.row))


@pytest.mark.parametrize("n_steps", [2, 3])
@pytest.mark.parametrize("task_key", list(TASKS))
@pytest.mark.parametrize("name", TWINNED)
def test_multi_step_equals_nested_autodiff_twin(name, task_key, n_steps):
    task = make(task_key)
    theta = task.initial_params() + 0.2
    steps = step_samples(task, theta, n_rows=3, n_inner=4, n_steps=n_steps)
    options = {"baseline": 0.3} if name == "unbiased" else {}
    spec = mb.estimator_spec(name)
    fast = multi_step(spec.from_samples, task, theta, steps, inner_lr=0.7, **options).estimate
    slow = reference.MULTI_STEP[name](task, theta, steps, inner_lr=0.7, **options)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    fewer = multi_step(spec.from_samples, task, theta, steps[:-1], inner_lr=0.7, **options)
    assert (fast - fewer.estimate).abs().max() > 1e-4, "the last step must change the estimate"


@pytest.mark.parametrize("name", [n for n in TWINNED if n != "loo"])
def test_multi_step_with_sampled_outer_equals_twin(name):
    task = make("tabular-2tasks")
    theta = task.initial_params()
    steps = step_samples(task, theta, n_rows=3, n_inner=3, n_steps=2, seed=1)
    spec = mb.estimator_spec(name)
    outer = ReplayedOuter(task, 4, seed=5)
    fast = multi_step(spec.from_samples, task, theta, steps, inner_lr=0.9, outer=outer).estimate
    slow = reference.MULTI_STEP[name](task, theta, steps, inner_lr=0.9, outer=outer)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


FROM_SAMPLES = [n for n in mb.list_estimators() if mb.estimator_spec(n).from_samples]


@pytest.mark.parametrize("name", FROM_SAMPLES)
def test_every_from_samples_form_chains_and_its_one_step_chain_is_itself(name):
    # every estimator built on the shared machinery gets K steps: one step through the chain
    # is the one-step form bit for bit, and the registered call with n_steps=2 is seeded
    task = make("tabular-2tasks")
    theta = task.initial_params()
    (inner,) = step_samples(task, theta, n_rows=4, n_inner=3, n_steps=1)
    spec = mb.estimator_spec(name)
    assert torch.equal(multi_step(spec.from_samples, task, theta, [inner], inner_lr=1.0).estimate,
                       spec.from_samples(task, theta, inner, inner_lr=1.0))
    one = spec.fn(task, theta, n_inner=3, inner_lr=1.0, n_trials=5, generator=generator(3))
    again = spec.fn(task, theta, n_inner=3, inner_lr=1.0, n_trials=5, generator=generator(3),
                    n_steps=1)
    assert torch.equal(one, again)
    two = [spec.fn(task, theta, n_inner=3, inner_lr=1.0, n_trials=5, generator=generator(3),
                   n_steps=2) for _ in range(2)]
    assert two[0].shape == one.shape and torch.equal(two[0], two[1])
    assert torch.isfinite(two[0]).all() and not torch.equal(two[0], one)


def test_a_form_that_bypasses_row_params_cannot_take_several_steps():
    def shared_theta_from_samples(task, theta, inner, *, inner_lr, outer=None):
        params = theta.detach().expand(inner.n_rows, *theta.shape).clone().requires_grad_()
        return outer_at(task, params, inner.task_index, outer).grad

    task = make("bandit")
    theta = task.initial_params()
    steps = step_samples(task, theta, 2, 3, 2)
    with pytest.raises(mb.UnsupportedError, match="row_params"):
        multi_step(shared_theta_from_samples, task, theta, steps, inner_lr=1.0)
    assert row_params(theta, 2).shape == (2, 3)  # outside a chain: theta repeated


def test_each_row_starts_where_its_trajectories_were_drawn():
    """Step k's rows carry their theta_k with them (no state outside the arguments): the
    parameters of a row, of a slice of rows and of one trajectory per row are its own."""
    import dataclasses

    from metarl_bench._src.core.trajectories import RowStarts

    task = make("bandit")
    theta = task.initial_params()
    (inner,) = step_samples(task, theta, 2, 3, 1)
    points = torch.arange(6, dtype=theta.dtype).reshape(2, 3)
    assert torch.equal(row_params(theta, inner), theta.expand(2, 3))
    starts = RowStarts(points)
    drawn = dataclasses.replace(inner, starts=starts)
    assert torch.equal(row_params(theta, drawn), points) and starts.used
    again = RowStarts(points)
    single = dataclasses.replace(inner, starts=again).one_per_row()
    assert torch.equal(row_params(theta, single), points.repeat_interleave(3, 0)) and again.used
    assert torch.equal(row_params(theta, drawn.rows(slice(1, 2))), points[1:])


# ---- truth for K steps ------------------------------------------------------------------

def bandit_value(theta, rewards):
    pi = np.exp(theta - theta.max())
    pi /= pi.sum()
    return pi @ rewards, pi * (rewards - pi @ rewards)          # V and its closed-form gradient


def test_k_step_limit_truth_on_the_bandit_against_finite_differences(science_bandit):
    rewards = np.array([1.0, 0.0, 0.5])
    theta = science_bandit.initial_params()

    def limit_objective(th, n_steps):
        for _ in range(n_steps):
            th = th + SCIENCE_LR * bandit_value(th, rewards)[1]
        return bandit_value(th, rewards)[0]

    for n_steps in (2, 3):
        exact = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_steps=n_steps)
        base, step = theta.numpy(), 1e-6
        differences = [(limit_objective(base + step * e, n_steps)
                        - limit_objective(base - step * e, n_steps)) / (2 * step)
                       for e in np.eye(3)]
        np.testing.assert_allclose(exact.numpy(), differences, rtol=0, atol=1e-8)


def tabular_policy_gradient(task, theta):
    """grad V of a finite-horizon tabular MDP in closed form (numpy, per task, averaged):
    sum_t gamma^t d_t(s) pi(a|s) (Q_t(s, a) - V_t(s)), with V_t, Q_t by backward induction."""
    start, transitions, rewards = (t.numpy() for t in (task._start, task._transitions,
                                                         task._rewards))
    logits = theta.reshape(task.n_states, task.n_actions)
    pi = np.exp(logits - logits.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    grads, values = [], []
    for k in range(task.n_tasks):
        p, r = transitions[k], rewards[k]
        q_values, next_value = [], np.zeros(task.n_states)
        for _ in range(task.horizon):                          # backward: t = T-1 .. 0
            q = r + task.gamma * p @ next_value
            next_value = (pi * q).sum(-1)
            q_values.insert(0, q)
        grad, d = np.zeros_like(pi), start[k]
        values.append(d @ next_value)
        for t, q in enumerate(q_values):
            v = (pi * q).sum(-1, keepdims=True)
            grad += task.gamma ** t * d[:, None] * pi * (q - v)
            d = d @ np.einsum("sa,san->sn", pi, p)
        grads.append(grad)
    return float(np.mean(values)), np.mean(grads, 0).reshape(theta.shape)


def test_k_step_limit_truth_on_a_tabular_mdp_against_finite_differences():
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3, gamma=0.8, seed=4)
    theta, inner_lr, n_steps = task.initial_params(), 0.8, 2
    np.testing.assert_allclose(   # the closed-form gradient, checked against autograd first
        tabular_policy_gradient(task, theta.numpy())[1],
        mb.meta_gradient(task, theta, inner_lr=0.0).numpy(), rtol=0, atol=1e-12)

    def limit_objective(th):
        for _ in range(n_steps):
            th = th + inner_lr * tabular_policy_gradient(task, th)[1]
        return tabular_policy_gradient(task, th)[0]

    base, step = theta.numpy(), 1e-6
    differences = np.zeros_like(base)
    for index in np.ndindex(*base.shape):
        offset = np.zeros_like(base)
        offset[index] = step
        differences[index] = (limit_objective(base + offset)
                              - limit_objective(base - offset)) / (2 * step)
    exact = mb.meta_gradient(task, theta, inner_lr=inner_lr, n_steps=n_steps)
    np.testing.assert_allclose(exact.numpy(), differences, rtol=0, atol=1e-8)


def test_k_step_finite_truth_against_an_explicit_nested_sum(science_bandit):
    # F_N with K = 2 written as two explicit loops over count vectors (closed-form step),
    # differentiated by central differences
    rewards, n_inner = np.array([1.0, 0.0, 0.5]), 2
    counts = [np.array(c) for c in itertools.product(range(n_inner + 1), repeat=3)
              if sum(c) == n_inner]

    def probability(n, pi):
        return (math.factorial(n_inner) / np.prod([math.factorial(x) for x in n])
                * np.prod(pi ** n))

    def step(th, n):
        pi = np.exp(th - th.max()) / np.exp(th - th.max()).sum()
        return th + SCIENCE_LR * (n * rewards - (n @ rewards) * pi) / n_inner, pi

    def objective(th):
        total = 0.0
        for first in counts:
            th1, pi0 = step(th, first)
            for second in counts:
                th2, pi1 = step(th1, second)
                total += probability(first, pi0) * probability(second, pi1) * \
                    bandit_value(th2, rewards)[0]
        return total

    theta = science_bandit.initial_params()
    base, h = theta.numpy(), 1e-6
    differences = [(objective(base + h * e) - objective(base - h * e)) / (2 * h) for e in np.eye(3)]
    exact = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=n_inner,
                             n_steps=2)
    np.testing.assert_allclose(exact.numpy(), differences, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n_steps", [2, 3])
def test_k_step_unbiased_and_loo_are_exactly_unbiased_by_enumeration(science_bandit, n_steps):
    theta = science_bandit.initial_params()
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=3,
                             n_steps=n_steps)
    for name in ("unbiased", "loo"):
        moments = mb.exact_moments(science_bandit, theta, mb.estimator_spec(name), n_inner=3,
                                   inner_lr=SCIENCE_LR, truth=truth, n_steps=n_steps)
        torch.testing.assert_close(moments.mean, truth, rtol=0, atol=1e-13)
    lsf = mb.exact_moments(science_bandit, theta, mb.estimator_spec("lsf"), n_inner=3,
                           inner_lr=SCIENCE_LR, truth=truth, n_steps=n_steps)
    assert float((lsf.mean - truth).norm()) > 1e-3    # lsf's bias at small N stays visible


def test_k_step_finite_truth_and_exact_moments_match_monte_carlo(science_bandit):
    # 40k seeded two-step trials at N = 4. Mean: every coordinate within 4.5 standard errors
    # (a false alarm has probability < 1e-4 per coordinate); lsf's variance within 5% (its
    # standard error is below 1.5% here).
    theta = science_bandit.initial_params()
    args = dict(n_inner=4, inner_lr=SCIENCE_LR, n_steps=2)
    truth = mb.meta_gradient(science_bandit, theta, **args)
    n_trials = 40_000
    for name, seed in (("unbiased", 11), ("lsf", 12)):
        samples = mb.get_estimator(name)(science_bandit, theta, n_trials=n_trials,
                                         generator=generator(seed), **args)
        exact = mb.exact_moments(science_bandit, theta, mb.estimator_spec(name), truth=truth,
                                 **args)
        stderr = samples.std(0) / math.sqrt(n_trials)
        assert torch.all((samples.mean(0) - exact.mean).abs() <= 4.5 * stderr), name
        if name == "lsf":
            assert float(samples.var(0).sum()) == pytest.approx(
                float(torch.trace(exact.covariance)), rel=0.05)


def test_k_step_estimated_truth_is_the_exact_one_within_its_error(science_bandit):
    # the leave-one-out K-step reference, estimated from 4000 samples: every coordinate
    # within 4.5 of its standard errors of the exact grad F_N
    theta = science_bandit.initial_params()
    exact = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=4, n_steps=2)
    estimate = mb.estimate_meta_gradient(science_bandit, theta, n_inner=4, inner_lr=SCIENCE_LR,
                                         n_samples=4000, generator=generator(2), n_steps=2)
    assert torch.all((estimate.mean - exact).abs() <= 4.5 * estimate.stderr)


def test_k_step_enumeration_respects_its_limit(science_bandit):
    theta = science_bandit.initial_params()
    n_inner = 64            # 2,145 count vectors per step: 4.6 million pairs
    assert 2145 ** 2 > MAX_ENUMERATION
    with pytest.raises(mb.UnsupportedError, match="4,601,025 outcomes"):
        mb.meta_gradient(science_bandit, theta, inner_lr=1.0, n_inner=n_inner, n_steps=2)
    with pytest.raises(mb.UnsupportedError, match="over 2 steps"):
        mb.exact_moments(science_bandit, theta, mb.estimator_spec("lsf"), n_inner=n_inner,
                         inner_lr=1.0, truth=theta, n_steps=2)


# ---- evaluate and the CLI ------------------------------------------------------------------

def test_evaluate_with_n_steps(science_bandit):
    one = mb.evaluate(science_bandit, ["lsf", "unbiased"], n_inner=[2, 4], n_trials=50,
                      inner_lr=SCIENCE_LR)
    again = mb.evaluate(science_bandit, ["lsf", "unbiased"], n_inner=[2, 4], n_trials=50,
                        inner_lr=SCIENCE_LR, n_steps=1)
    for a, b in zip(one.records, again.records):  # K = 1 unchanged
        assert {k: v for k, v in a.items() if k not in TIMING_FIELDS} == \
            {k: v for k, v in b.items() if k not in TIMING_FIELDS}
    two = mb.evaluate(science_bandit, ["lsf", "unbiased", "exact"], n_inner=[2, 4], n_trials=50,
                      inner_lr=SCIENCE_LR, n_steps=2)
    assert two.config["n_steps"] == 2 and all(r["n_steps"] == 2 for r in two.records)
    assert all(r["truth_kind"] == "exact" for r in two.records)
    unbiased = [r for r in two.records if r["estimator"] == "unbiased"]
    assert all(r["moments"] == "exact" and r["bias"] < 1e-13 for r in unbiased)
    assert all(r["trajectories"] == 2 * r["n_inner"] for r in two.records)
    assert "n_steps=2" in two.table()

    @mb.register_estimator("test-one-step")
    def one_step(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None, generator=None,
                 **options):
        """Ignores any options it does not know."""
        return torch.zeros(n_trials, *theta.shape, dtype=theta.dtype)

    try:
        with pytest.raises(mb.UnsupportedError, match="one inner step only"):
            mb.evaluate(science_bandit, ["test-one-step"], n_inner=[2], n_trials=5, n_steps=2)
    finally:
        from metarl_bench._src.core.registry import ESTIMATORS
        ESTIMATORS.pop("test-one-step", None)


def test_k_step_truth_on_a_tabular_mdp_is_estimated(small_mdp):
    result = mb.evaluate(small_mdp, ["lsf"], n_inner=[4], n_trials=200, inner_lr=1.0,
                         n_steps=2, truth_samples=500)
    (record,) = result.records
    assert record["truth_kind"] == "estimated" and record["moments"] == "monte-carlo"
    limit = mb.evaluate(small_mdp, ["lsf"], n_inner=[4], n_trials=200, inner_lr=1.0,
                        n_steps=2, truth="limit")
    assert limit.records[0]["truth_kind"] == "exact"


def test_k_step_exact_moments_on_a_bernoulli_bandit_match_monte_carlo():
    # outcomes of a step are pull and success counts; their probability at theta_k is the
    # one at theta times the policy's likelihood ratio. 40k seeded two-step trials: every
    # coordinate of the Monte Carlo mean within 4.5 standard errors of the exact mean
    task = mb.make_task("bernoulli-bandit-v0")
    theta = task.initial_params()
    truth = mb.meta_gradient(task, theta, inner_lr=1.0, n_steps=2)
    exact = mb.exact_moments(task, theta, mb.estimator_spec("unbiased"), n_inner=2,
                             inner_lr=1.0, truth=truth, n_steps=2)
    samples = mb.get_estimator("unbiased")(task, theta, n_inner=2, inner_lr=1.0,
                                           n_trials=40_000, n_steps=2, generator=generator(0))
    stderr = samples.std(0) / math.sqrt(40_000)
    assert torch.all((samples.mean(0) - exact.mean).abs() <= 4.5 * stderr)


# ---- the DiCE family over several steps -------------------------------------------------------

@pytest.mark.parametrize("n_steps", [2, 3])
@pytest.mark.parametrize("name, options, equals, task_key", [
    ("lvc", {}, "dice", "bandit"),                              # one-step task: lvc = dice
    ("loaded-dice", {}, "dice", "tabular-2tasks"),              # lambda = 1, no critic
    ("taypo", {"order": 2}, "dice", "tabular-2tasks"),
    ("taypo", {"order": 1}, "lvc", "tabular-2tasks"),
    ("loaded-dice", {"dependency_decay": 0.0}, "lvc", "tabular-2tasks"),
])
def test_family_equivalences_hold_step_for_step(name, options, equals, task_key, n_steps):
    # each step's estimate and adapted parameters equal the other's from any starting point,
    # so K chained steps on the same samples do too (float64, sample for sample)
    task = make(task_key)
    theta = task.initial_params() + 0.1
    assert theta.dtype == torch.float64
    steps = step_samples(task, theta, n_rows=4, n_inner=4, n_steps=n_steps, seed=2)
    torch.testing.assert_close(
        multi_step(mb.estimator_spec(name).from_samples, task, theta, steps, inner_lr=0.8,
                   **options).estimate,
        multi_step(mb.estimator_spec(equals).from_samples, task, theta, steps,
                   inner_lr=0.8).estimate, rtol=1e-10, atol=1e-12)
