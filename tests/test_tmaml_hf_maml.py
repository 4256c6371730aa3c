"""TMAML and Hessian-free MAML: the three kinds of numerical test (STYLE rule 4).

Closed form: TMAML's expected Hessian equals grad^2 V exactly, by enumerating every
trajectory (N = 1, a constant baseline) and every pair of trajectories (N = 2, the
leave-one-out baseline) of a small MDP. Monte Carlo against exact: the same expected Hessian
from seeded samples, within 5 standard errors. Special cases: TMAML with baseline 0 is DiCE,
HF-MAML tends to LSF's Hessian as delta -> 0 (with a bias shrinking like delta^2). The
contract (shape, seeds, rows, twins, bias claims) is the conformance kit's (test_testing.py),
the twins' agreement on more tasks test_estimators.py's.
"""

import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.estimators.reference import _row

from conftest import SCIENCE_LR, generator
from test_estimators import inner_samples, make
from test_estimators_family import (SMALL_MDP, all_trajectories, fast, fresh_outer,
                                    with_linear_outer)

SAME = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_outer", [None, 5])
@pytest.mark.parametrize("task_key", ["bandit", "tabular", "tabular-2tasks", "lq-2tasks"])
def test_tmaml_with_no_baseline_is_dice_sample_for_sample(task_key, n_outer):
    task = make(task_key)
    theta = task.initial_params() + 0.2
    inner = inner_samples(task, theta, n_rows=4, n_inner=5)
    inner_lr = 0.02 if task_key.startswith("lq") else 0.7
    left = fast("tmaml", task, theta, inner, inner_lr, fresh_outer(task, n_outer), baseline=0)
    right = fast("dice", task, theta, inner, inner_lr, fresh_outer(task, n_outer))
    torch.testing.assert_close(left, right, **SAME)


@pytest.fixture(scope="module")
def small_mdp():
    task = mb.make_task("tabular-v0", **SMALL_MDP)
    theta = task.initial_params()
    traj, probability = all_trajectories(task, theta)
    direction = torch.randn(theta.numel(), generator=generator(0), dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(
        lambda th: task.value(th.reshape(1, *theta.shape), torch.zeros(1, dtype=torch.long))[0],
        theta.reshape(-1))
    return task, theta, traj, probability, direction, hessian.T @ direction


def pairs(traj: Trajectories) -> Trajectories:
    """Every ordered pair of the rows of ``traj`` (one trajectory each) as a row of N = 2."""
    n = traj.n_rows
    first, second = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)

    def joined(x):
        return torch.cat([x[first], x[second]], 1)

    return Trajectories(joined(traj.states), joined(traj.actions), joined(traj.rewards),
                        torch.zeros(n * n, dtype=torch.long))


def hessian_along(task, theta, traj, direction, eta=0.5, **options):
    """(estimate - u) / eta = H_N^T u per row, the outer gradient u fixed (V linear)."""
    estimates = fast("tmaml", with_linear_outer(task, direction), theta, traj, inner_lr=eta,
                     **options)
    return (estimates.reshape(traj.n_rows, -1) - direction) / eta


@pytest.mark.parametrize("baseline", [0.0, 0.7, -2.0])
def test_tmaml_expected_hessian_is_exact_over_every_trajectory(small_mdp, baseline):
    # all 64 trajectories of the 2-state, 2-action, 3-step MDP, N = 1: E[H]^T u = grad^2 V^T u
    # to rounding whatever the constant baseline (its control variate has mean zero)
    task, theta, traj, probability, direction, exact = small_mdp
    mean = probability @ hessian_along(task, theta, traj, direction, baseline=baseline)
    torch.testing.assert_close(mean, exact, rtol=0, atol=1e-12)


def test_tmaml_expected_hessian_is_exact_with_the_leave_one_out_baseline(small_mdp):
    # all 64**2 ordered pairs (N = 2): b_1t is the other trajectory's reward-to-go, which
    # does not depend on tau_1, so the Hessian estimate stays unbiased; its variance falls
    task, theta, traj, probability, direction, exact = small_mdp
    both = pairs(traj)
    weight = (probability.unsqueeze(1) * probability.unsqueeze(0)).reshape(-1)
    variance = {}
    for baseline in ("loo-mean", 0.0):
        along = hessian_along(task, theta, both, direction, baseline=baseline)
        mean = weight @ along
        torch.testing.assert_close(mean, exact, rtol=0, atol=1e-12)
        variance[baseline] = float(weight @ ((along - mean) ** 2).sum(-1))
    assert variance["loo-mean"] < 0.8 * variance[0.0], variance


def test_tmaml_expected_hessian_by_monte_carlo_within_five_standard_errors(small_mdp):
    # seeded: 4000 rows of N = 4 sampled trajectories; the mean of H_N^T u is within 5
    # standard errors of grad^2 V^T u in every coordinate (a failure at another seed would be
    # a 5-sigma event: change the seed only with a note)
    task, theta, _, _, direction, exact = small_mdp
    inner = inner_samples(task, theta, n_rows=4000, n_inner=4, seed=11)
    along = hessian_along(task, theta, inner, direction)
    stderr = along.std(0) / along.shape[0] ** 0.5
    assert float(((along.mean(0) - exact).abs() / stderr).max()) < 5


def exact_stats(task, theta, name, n_inner, **options):
    truth = mb.meta_gradient(task, theta, inner_lr=SCIENCE_LR, n_inner=n_inner)
    m = mb.exact_moments(task, theta, mb.estimator_spec(name), n_inner=n_inner,
                         inner_lr=SCIENCE_LR, truth=truth, **options)
    return m.mean, float((m.mean - truth).norm()), float(m.covariance.trace())


def test_tmaml_bias_vanishes_and_its_variance_is_below_dice_on_the_bandit(science_bandit):
    # exact moments (no Monte Carlo error). Measured: bias 2.9e-3, 6.6e-4, 1.6e-4 at
    # N = 4, 16, 64 (slope about -1.1); variance 0.74, 0.46, 0.40 of dice's
    theta = science_bandit.initial_params()
    grid = [4, 16, 64]
    tmaml = [exact_stats(science_bandit, theta, "tmaml", n) for n in grid]
    dice = [exact_stats(science_bandit, theta, "dice", n) for n in grid]
    slope = np.polyfit(np.log(grid), np.log([t[1] for t in tmaml]), 1)[0]
    assert slope < -0.8, [t[1] for t in tmaml]
    for n, t, d in zip(grid, tmaml, dice):
        assert t[2] < (0.8 if n == 4 else 0.5) * d[2], (n, t[2], d[2])


def test_tmaml_variance_is_below_dice_on_a_tabular_mdp(small_mdp):
    # Monte Carlo, 2000 seeded trials, N = 8, exact outer: the trace of the covariance
    # (measured 0.27 of dice's) is below 0.8 of it
    task, theta = small_mdp[:2]
    variance = {}
    for name in ("tmaml", "dice"):
        samples = mb.get_estimator(name)(task, theta, n_inner=8, inner_lr=1.0, n_trials=2000,
                                         generator=generator(5))
        variance[name] = float(samples.reshape(2000, -1).var(0).sum())
    assert variance["tmaml"] < 0.8 * variance["dice"], variance


def test_hf_maml_bias_against_lsf_shrinks_like_delta_squared(science_bandit):
    # exact moments on the bandit, where g s^T = r s s^T is symmetric so HF-MAML's limit is
    # LSF: |E hf(delta) - E lsf| over delta = 0.2, 0.1, 0.05 has slope 2 +- 0.3 on log-log
    # axes (measured 1.999 at N = 4, 16, 64)
    theta = science_bandit.initial_params()
    for n_inner in (4, 16):
        lsf_mean = exact_stats(science_bandit, theta, "lsf", n_inner)[0]
        deltas = [0.2, 0.1, 0.05]
        gaps = [float((exact_stats(science_bandit, theta, "hf-maml", n_inner, delta=d)[0]
                       - lsf_mean).norm()) for d in deltas]
        slope = np.polyfit(np.log(deltas), np.log(gaps), 1)[0]
        assert abs(slope - 2) < 0.3, (gaps, slope)


@pytest.mark.parametrize("task_key", ["bandit", "tabular", "tabular-2tasks"])
def test_hf_maml_tends_to_its_hessian_estimate_applied_to_u(task_key):
    # delta = 1e-4: the central difference is H_N u up to O(delta^2) (about 1e-8 here) and
    # rounding (about 1e-12); H_N = J_N + (1/N) sum_i g_i s_i^T built explicitly per row
    task = make(task_key)
    theta = task.initial_params() + 0.2
    inner = inner_samples(task, theta, n_rows=3, n_inner=5)
    hf = fast("hf-maml", task, theta, inner, delta=1e-4)
    lsf = fast("lsf", task, theta, inner)
    for r in range(3):
        row = _row(task, theta, inner.rows(slice(r, r + 1)), 0.7, None)
        h_n = row.j_n + row.grads.T @ row.scores / row.grads.shape[0]
        limit = row.outer_grad + 0.7 * h_n @ row.outer_grad
        torch.testing.assert_close(hf[r].reshape(-1), limit, rtol=0, atol=1e-7)
    if task_key == "bandit":  # g s^T symmetric: the limit is lsf itself
        torch.testing.assert_close(hf, lsf, rtol=0, atol=1e-7)


def test_bad_options_are_typed_errors():
    task = make("bandit")
    theta = task.initial_params()
    call = dict(n_inner=4, inner_lr=1.0, n_trials=2)
    for delta in (0, -0.1, float("nan"), "small", True):
        with pytest.raises(mb.ParameterError, match="delta must be"):
            mb.get_estimator("hf-maml")(task, theta, delta=delta, **call)
    with pytest.raises(mb.ParameterError, match="baseline must be a number or 'loo-mean'"):
        mb.get_estimator("tmaml")(task, theta, baseline="mean", **call)
    with pytest.raises(mb.ParameterError, match="Did you mean 'delta'"):
        mb.evaluate(task, ["hf-maml:delt=0.1"], n_inner=[2], n_trials=2, inner_lr=1.0)
