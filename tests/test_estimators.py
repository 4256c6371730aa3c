"""Every estimator: batched against its slow twin on more tasks than the conformance kit's,
Monte Carlo against exact moments, special-case equivalences, and the signatures theory
predicts (docs/metrics.md, "Slopes"). The contract every registered estimator keeps (shape,
dtype, seeds, rows independent, bad input) is the conformance kit's, run per estimator in
test_testing.py."""

import math

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.estimators.common import inner_step
from metarl_bench._src.estimators.reference import per_trial

from conftest import SCIENCE_BANDIT, SCIENCE_LR, generator

TWINNED = [name for name in mb.list_estimators() if mb.estimator_spec(name).reference]
SAMPLED = [name for name in TWINNED if not mb.estimator_spec(name).needs_model]

TASKS = {
    "bandit": dict(name="bandit-v0", **SCIENCE_BANDIT),
    "bandit-3tasks": dict(name="bandit-v0", rewards="random", n_arms=4, n_tasks=3, seed=3),
    "tabular": dict(name="tabular-v0", n_states=4, n_actions=3, horizon=4, gamma=0.9, seed=1),
    "tabular-2tasks": dict(name="tabular-v0", n_states=3, n_actions=2, horizon=3, gamma=0.8,
                           n_tasks=2, seed=4),
    # Gaussian policy: the twins' log-probability Hessians are Gaussian ones
    "lq-2tasks": dict(name="lq-navigation-v0", n_tasks=2, horizon=3, gamma=0.9,
                      control_cost=0.1, start_std=0.2, init_std=0.4),
}


def make(key):
    kwargs = dict(TASKS[key])
    return mb.make_task(kwargs.pop("name"), **kwargs)


def inner_samples(task, theta, n_rows, n_inner, seed=0):
    index = torch.arange(n_rows) % task.n_tasks
    return task.sample(theta.expand(n_rows, *theta.shape), n_inner, index, generator(seed))


class RecordedOuter:
    """Samples the outer trajectories once (batched), then replays each row on demand."""

    def __init__(self, task, n_outer, seed):
        self.task, self.n_outer, self.gen, self.recorded = task, n_outer, generator(seed), None

    def __call__(self, adapted, task_index):
        if self.recorded is None:
            self.recorded = self.task.sample(adapted, self.n_outer, task_index, self.gen)
            self.row = 0
            return self.recorded
        traj = self.recorded.rows(slice(self.row, self.row + 1))
        self.row += 1
        return traj


@pytest.mark.parametrize("task_key", list(TASKS))
@pytest.mark.parametrize("name, n_outer", [(name, None) for name in TWINNED]
                         + [(name, 5) for name in SAMPLED])
def test_batched_equals_slow_twin_on_the_same_samples(name, task_key, n_outer):
    spec = mb.estimator_spec(name)
    task = make(task_key)
    theta = task.initial_params() + 0.2
    inner = inner_samples(task, theta, n_rows=4, n_inner=5)
    options = {"baseline": 0.3} if name == "unbiased" else {}
    outer = None if n_outer is None else RecordedOuter(task, n_outer, seed=9)
    # LQ's gradients are tens of times a softmax's: a step of 0.7 would make sigma' explode
    inner_lr = 0.02 if task_key.startswith("lq") else 0.7
    fast = spec.from_samples(task, theta, inner, inner_lr=inner_lr, outer=outer, **options)
    slow = spec.reference(task, theta, inner, inner_lr=inner_lr, outer=outer, **options)
    assert fast.shape == (4, *task.param_shape)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", TWINNED)
def test_batched_equals_fast_code_looped_over_trials(name):
    # stricter than the conformance kit's rtol 1e-10 (written for third-party estimators):
    # the in-tree batched forms agree with themselves row by row to 1e-12
    task = make("tabular")
    theta = task.initial_params()
    inner = inner_samples(task, theta, n_rows=6, n_inner=7)
    spec = mb.estimator_spec(name)
    torch.testing.assert_close(
        spec.from_samples(task, theta, inner, inner_lr=1.0),
        per_trial(spec.from_samples)(task, theta, inner, inner_lr=1.0), rtol=1e-12, atol=1e-13)


def test_trial_averages_its_tasks():
    # a trial of a 2-task distribution is the mean of one row per task, drawn in row order
    task = make("tabular-2tasks")
    theta = task.initial_params()
    spec = mb.estimator_spec("lsf")
    estimate = spec.fn(task, theta, n_inner=4, inner_lr=1.0, n_trials=3, generator=generator(2))
    inner = inner_samples(task, theta, n_rows=6, n_inner=4, seed=2)
    rows = spec.from_samples(task, theta, inner, inner_lr=1.0)
    torch.testing.assert_close(estimate, rows.reshape(3, 2, *theta.shape).mean(1))


# ---- special-case equivalences -------------------------------------------------------

def test_dice_equals_lsf_on_one_step_tasks(science_bandit):
    theta = science_bandit.initial_params()
    inner = inner_samples(science_bandit, theta, 50, 8)
    torch.testing.assert_close(
        mb.estimator_spec("dice").from_samples(science_bandit, theta, inner, inner_lr=2.0),
        mb.estimator_spec("lsf").from_samples(science_bandit, theta, inner, inner_lr=2.0))


def test_dice_differs_from_lsf_when_horizon_exceeds_one():
    task = make("tabular")
    theta = task.initial_params()
    inner = inner_samples(task, theta, 20, 4)
    dice = mb.estimator_spec("dice").from_samples(task, theta, inner, inner_lr=1.0)
    lsf = mb.estimator_spec("lsf").from_samples(task, theta, inner, inner_lr=1.0)
    assert (dice - lsf).abs().max() > 1e-4


@pytest.mark.parametrize("task_key", ["bandit", "tabular"])
def test_zero_step_size_reduces_every_estimator_to_its_limit(task_key):
    # eta = 0: theta' = theta, so maml, fomaml and lsf are grad V(theta) exactly, and
    # unbiased adds V(theta) sum_i s_i (the score term does not vanish with eta)
    task = make(task_key)
    theta = task.initial_params()
    inner = inner_samples(task, theta, 5, 6)
    point = theta.clone().requires_grad_()
    (grad_v,) = torch.autograd.grad(task.value(point.unsqueeze(0), inner.task_index[:1])[0], point)
    for name in ("maml", "fomaml", "lsf", "dice"):
        out = mb.estimator_spec(name).from_samples(task, theta, inner, inner_lr=0.0)
        torch.testing.assert_close(out, grad_v.expand_as(out), msg=name)


def test_unbiased_with_baseline_equal_to_outer_value_removes_the_score_term():
    task = make("bandit")
    theta = task.initial_params()
    inner = inner_samples(task, theta, 1, 6)
    spec = mb.estimator_spec("unbiased")
    step = inner_step(task, theta, inner, 2.0)
    value = float(task.value(step.adapted.detach(), inner.task_index))
    torch.testing.assert_close(
        spec.from_samples(task, theta, inner, inner_lr=2.0, baseline=value),
        mb.estimator_spec("maml").from_samples(task, theta, inner, inner_lr=2.0))


# ---- Monte Carlo against exact enumerated moments -------------------------------------

@pytest.mark.parametrize("task_key", ["bandit", "bandit-3tasks"])
@pytest.mark.parametrize("name", ["unbiased", "lsf", "dice", "maml", "fomaml", "loo"])
def test_monte_carlo_moments_agree_with_exact_moments(name, task_key):
    # 40k seeded trials. Mean: every coordinate within 4.5 standard errors (a false alarm
    # has probability < 1e-4 per coordinate). Variance (trace): within 5% relative (its
    # standard error here is < 1.5%).
    task = make(task_key)
    theta = task.initial_params() + torch.linspace(-0.3, 0.3, task.param_shape[0],
                                                   dtype=torch.float64)
    n_inner, inner_lr, n_trials = 6, SCIENCE_LR, 40_000
    spec = mb.estimator_spec(name)
    truth = mb.meta_gradient(task, theta, inner_lr=inner_lr, n_inner=n_inner)
    exact = mb.exact_moments(task, theta, spec, n_inner=n_inner, inner_lr=inner_lr, truth=truth)
    samples = spec.fn(task, theta, n_inner=n_inner, inner_lr=inner_lr, n_trials=n_trials,
                      generator=generator(11))
    stderr = samples.std(0) / math.sqrt(n_trials)
    assert torch.all((samples.mean(0) - exact.mean).abs() <= 4.5 * stderr + 1e-12)
    mc_variance = float(samples.var(0).sum())
    assert mc_variance == pytest.approx(float(torch.trace(exact.covariance)), rel=0.05)


def test_unbiased_and_loo_means_match_the_exact_finite_gradient(science_bandit):
    theta = science_bandit.initial_params()
    for n_inner in (1, 4, 32):
        truth = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=n_inner)
        for name in ("unbiased", "loo"):
            moments = mb.exact_moments(science_bandit, theta, mb.estimator_spec(name),
                                       n_inner=n_inner, inner_lr=SCIENCE_LR, truth=truth)
            torch.testing.assert_close(moments.mean, truth, rtol=0, atol=1e-13)


def test_unbiased_monte_carlo_mean_matches_loo_reference_on_tabular():
    # both are unbiased for grad F_N: their means agree within 4.5 joint standard errors
    task = make("tabular")
    theta = task.initial_params()
    args = dict(n_inner=4, inner_lr=1.0, n_trials=40_000)
    unbiased = mb.get_estimator("unbiased")(task, theta, generator=generator(1), **args)
    loo = mb.get_estimator("loo")(task, theta, generator=generator(2), **args)
    stderr = torch.sqrt(unbiased.var(0) / args["n_trials"] + loo.var(0) / args["n_trials"])
    assert torch.all((unbiased.mean(0) - loo.mean(0)).abs() <= 4.5 * stderr)


# ---- what a correct suite shows -----------------------------------------------------------

GRID = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@pytest.fixture(scope="module")
def bandit_result():
    task = mb.make_task("bandit-v0", **SCIENCE_BANDIT)
    return mb.evaluate(task, ["unbiased", "lsf", "maml", "fomaml"], n_inner=GRID, n_trials=50,
                       inner_lr=SCIENCE_LR, truth="finite", seed=0)


def cell(result, name, n):
    return next(r for r in result.records if r["estimator"] == name and r["n_inner"] == n)


def slope(result, name, metric):
    return next(s for s in result.slopes if s["estimator"] == name and s["metric"] == metric)


@pytest.mark.slow
def test_science_reference_numbers_on_the_bandit(bandit_result):
    # the published independent check of this bandit, to the digits it gives
    assert cell(bandit_result, "unbiased", 1)["variance"] == pytest.approx(0.155, abs=5e-4)
    assert cell(bandit_result, "unbiased", 256)["variance"] == pytest.approx(48.4, abs=0.05)
    assert cell(bandit_result, "lsf", 1)["variance"] == pytest.approx(7.2e-3, abs=5e-5)
    assert cell(bandit_result, "lsf", 256)["variance"] == pytest.approx(1.0e-4, abs=5e-6)
    assert all(r["moments"] == "exact" for r in bandit_result.records)


@pytest.mark.slow
def test_science_signatures_on_the_bandit(bandit_result):
    r = bandit_result
    assert slope(r, "unbiased", "variance")["slope"] == pytest.approx(1.0, abs=0.05)
    assert max(cell(r, "unbiased", n)["bias"] for n in GRID) < 1e-12
    assert slope(r, "lsf", "variance")["slope"] == pytest.approx(-1.0, abs=0.2)
    assert slope(r, "lsf", "bias")["slope"] <= -0.5
    assert all(cell(r, "lsf", n)["mse"] < cell(r, "unbiased", n)["mse"] for n in GRID)
    for name in ("maml", "fomaml"):
        biases = [cell(r, name, n)["bias"] for n in GRID[3:]]
        assert min(biases) > 0.04 and max(biases) / min(biases) < 1.1, (name, biases)
        assert abs(slope(r, name, "bias")["slope"]) < 0.1


@pytest.fixture(scope="module")
def tabular_result():
    task = mb.make_task("tabular-v0", n_states=4, n_actions=3, horizon=4, gamma=0.9, seed=1)
    return mb.evaluate(task, ["unbiased", "lsf", "maml", "fomaml"], n_inner=[1, 4, 16, 64],
                       n_trials=4000, inner_lr=1.0, truth="finite", truth_samples=10_000, seed=0)


def test_science_signatures_on_a_tabular_mdp(tabular_result):
    # Monte Carlo with seeded estimates and an estimated truth: slopes with stated margins
    r = tabular_result
    grid = [1, 4, 16, 64]
    assert all(x["moments"] == "monte-carlo" and x["truth_kind"] == "estimated" for x in r.records)
    assert slope(r, "unbiased", "variance")["slope"] == pytest.approx(1.0, abs=0.15)
    assert slope(r, "lsf", "variance")["slope"] < -0.6
    assert all(cell(r, "lsf", n)["mse"] < cell(r, "unbiased", n)["mse"] for n in grid)
    for n in grid:  # unbiased: bias within its interval of zero
        assert cell(r, "unbiased", n)["bias_ci"][0] == 0.0
    for name in ("maml",):
        biases = [cell(r, name, n)["bias"] for n in grid[1:]]
        assert min(biases) > 10 * max(cell(r, name, n)["bias_noise"] for n in grid)
        assert max(biases) / min(biases) < 1.3, biases
    assert cell(r, "lsf", 64)["bias"] < cell(r, "maml", 64)["bias"] / 10


def test_maml_and_fomaml_means_converge_to_their_biased_closed_form_limits(science_bandit):
    # As N grows theta'_N -> theta'_inf = theta + eta grad V and J_N -> E[grad_theta g] =
    # grad^2 V - E[g s^T], so (docs/estimators.md) the means tend to
    #   fomaml: grad V(theta'_inf)            maml: (I + eta (grad^2 V - E[g s^T]))^T grad V(theta'_inf)
    # with an O(1/N) gap; on a bandit E[g s^T] = sum_a pi_a r_a (e_a - pi)(e_a - pi)^T.
    task, eta = science_bandit, SCIENCE_LR
    theta = task.initial_params()
    rewards = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    value = lambda th: torch.softmax(th, -1) @ rewards  # noqa: E731
    pi = torch.softmax(theta, -1)
    centred = torch.eye(3, dtype=torch.float64) - pi                     # rows e_a - pi
    g_s = torch.einsum("a,ai,aj->ij", pi * rewards, centred, centred)
    hessian = torch.autograd.functional.hessian(value, theta)
    grad_v = torch.autograd.functional.jacobian(value, theta)
    outer_grad = torch.autograd.functional.jacobian(value, theta + eta * grad_v)
    limits = {"fomaml": outer_grad,
              "maml": outer_grad + eta * (hessian - g_s).T @ outer_grad}
    for name, limit in limits.items():
        gaps = []
        for n_inner in (64, 256):
            truth = mb.meta_gradient(task, theta, inner_lr=eta, n_inner=n_inner)
            mean = mb.exact_moments(task, theta, mb.estimator_spec(name), n_inner=n_inner,
                                    inner_lr=eta, truth=truth).mean
            gaps.append(float((mean - limit).norm()))
        assert gaps[1] < 1e-3 and gaps[1] < gaps[0] / 3, (name, gaps)
    # and the limits are biased: far from grad F_inf (the bias of section 4 that never vanishes)
    limit_truth = mb.meta_gradient(task, theta, inner_lr=eta)
    assert float((limits["maml"] - limit_truth).norm()) > 0.1
    assert float((limits["fomaml"] - limit_truth).norm()) > 0.04
