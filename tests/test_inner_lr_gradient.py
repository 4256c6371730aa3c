"""Meta-gradients of the inner step size (``wrt="inner_lr"`` and ``"all"``): the truths
against central finite differences in eta of the exact objectives, exact moments
against the truth (exactly unbiased for ``unbiased`` and ``loo``) and against Monte Carlo,
and evaluate / CLI support. The chain's dF/d eta against per-row nested autodiff in eta is
in test_truncation.py (every window, wrt="all")."""

import subprocess

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.estimators.common import multi_step

from conftest import SCIENCE_BANDIT, cli_command, generator
from test_multistep import step_samples

ETA = 1.5


def finite_objective(task, theta, eta, n_inner, n_steps):
    if n_steps == 1:
        return float(task.finite_meta_objective(theta, n_inner, eta))
    return float(task.finite_meta_objective(theta, n_inner, eta, n_steps=n_steps))


def limit_objective(task, theta, eta, n_steps):
    index = torch.arange(task.n_tasks)
    rows = theta.detach().unsqueeze(0).repeat(task.n_tasks, *([1] * theta.dim()))
    for _ in range(n_steps):
        rows.requires_grad_()
        (grad,) = torch.autograd.grad(task.value(rows, index).sum(), rows)
        rows = (rows + eta * grad).detach()
    return float(task.value(rows, index).mean())


def central_difference(objective, eta, step=1e-5):
    return (objective(eta + step) - objective(eta - step)) / (2 * step)


@pytest.mark.parametrize("n_steps", [1, 2])
def test_finite_n_truth_is_the_eta_derivative_of_the_enumerated_objective(science_bandit,
                                                                          n_steps):
    # F_N by the bandit's closed-form enumeration (not the estimators' code); 1e-7
    theta = science_bandit.initial_params()
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=ETA, n_inner=4, n_steps=n_steps,
                             wrt="inner_lr")
    difference = central_difference(
        lambda eta: finite_objective(science_bandit, theta, eta, 4, n_steps), ETA)
    assert truth.shape == (1,)
    assert abs(float(truth) - difference) < 1e-7, (float(truth), difference)


@pytest.mark.parametrize("n_steps", [1, 2, 3, 4, 5])
def test_limit_truth_is_the_eta_derivative_of_f_inf_on_a_tabular_mdp(small_mdp, n_steps):
    theta = small_mdp.initial_params()
    both = mb.meta_gradient(small_mdp, theta, inner_lr=0.8, n_steps=n_steps, wrt="all")
    difference = central_difference(
        lambda eta: limit_objective(small_mdp, theta, eta, n_steps), 0.8)
    assert both.shape == (theta.numel() + 1,)
    assert abs(float(both[-1]) - difference) < 1e-7, (float(both[-1]), difference)
    torch.testing.assert_close(both[:-1].reshape(theta.shape),
                               mb.meta_gradient(small_mdp, theta, inner_lr=0.8, n_steps=n_steps),
                               rtol=0, atol=1e-14)


def exact_eta(task, theta, name, n_inner, n_steps, truth, **options):
    return mb.exact_moments(task, theta, mb.estimator_spec(name), n_inner=n_inner,
                            inner_lr=ETA, truth=truth, n_steps=n_steps, wrt="inner_lr",
                            **options)


@pytest.mark.parametrize("n_steps", [1, 2])
def test_unbiased_and_loo_eta_gradients_are_exactly_unbiased(science_bandit, n_steps):
    theta = science_bandit.initial_params()
    for n_inner in (2, 4):
        truth = mb.meta_gradient(science_bandit, theta, inner_lr=ETA, n_inner=n_inner,
                                 n_steps=n_steps, wrt="inner_lr")
        for name in ("unbiased", "loo"):
            moments = exact_eta(science_bandit, theta, name, n_inner, n_steps, truth)
            torch.testing.assert_close(moments.mean, truth, rtol=0, atol=1e-12)


def test_one_step_eta_gradients_coincide_and_are_unbiased(science_bandit):
    # K = 1: d theta'/d eta = g_N for every estimator whose theta' is the plain step, so
    # dF/d eta is g_N . grad V(theta') for all of them, sample for sample, and unbiased (the
    # inner samples at theta do not depend on eta)
    theta = science_bandit.initial_params()
    (inner,) = step_samples(science_bandit, theta, n_rows=5, n_inner=4, n_steps=1)
    values = [multi_step(mb.estimator_spec(n).from_samples, science_bandit, theta, [inner],
                         inner_lr=ETA).inner_lr_grad
              for n in ("fomaml", "maml", "lsf", "dice", "tmaml", "unbiased")]
    for value in values[1:]:
        torch.testing.assert_close(value, values[0], rtol=0, atol=1e-12)
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=ETA, n_inner=4, wrt="inner_lr")
    torch.testing.assert_close(exact_eta(science_bandit, theta, "lsf", 4, 1, truth).mean, truth,
                               rtol=0, atol=1e-12)


def test_k_step_lsf_eta_gradient_is_biased_but_fomaml_more(science_bandit):
    # K = 2, N = 4, exact moments: measured |bias| 6.6e-4 (lsf), 3.96e-3 (fomaml) against
    # dF_N/d eta = 0.1288
    theta = science_bandit.initial_params()
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=ETA, n_inner=4, n_steps=2,
                             wrt="inner_lr")
    lsf = float((exact_eta(science_bandit, theta, "lsf", 4, 2, truth).mean - truth).abs())
    fomaml = float((exact_eta(science_bandit, theta, "fomaml", 4, 2, truth).mean - truth).abs())
    assert 1e-5 < lsf < fomaml / 3, (lsf, fomaml)


def test_exact_moments_of_both_gradients_match_monte_carlo(science_bandit):
    # K = 2, N = 3, wrt="all": 4000 seeded registered calls; mean within 5 standard errors
    theta = science_bandit.initial_params()
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=ETA, n_inner=3, n_steps=2,
                             wrt="all")
    spec = mb.estimator_spec("lsf")
    exact = mb.exact_moments(science_bandit, theta, spec, n_inner=3, inner_lr=ETA, truth=truth,
                             n_steps=2, wrt="all")
    samples = spec.fn(science_bandit, theta, n_inner=3, inner_lr=ETA, n_trials=4000, n_steps=2,
                      wrt="all", generator=generator(6))
    assert samples.shape == (4000, 4) and exact.mean.shape == (4,)
    stderr = (exact.covariance.diagonal() / 4000).sqrt()
    assert float(((samples.mean(0) - exact.mean).abs() / stderr).max()) < 5


def test_evaluate_with_wrt_uses_the_eta_truth_and_keeps_theta_keys():
    task = mb.make_task("bandit-v0", **SCIENCE_BANDIT)
    result = mb.evaluate(task, ["unbiased", "lsf", "exact"], n_inner=[2, 4], n_trials=20,
                         inner_lr=ETA, n_steps=2, wrt="inner_lr")
    assert {r["moments"] for r in result.records if r["estimator"] != "exact"} == {"exact"}
    for record in result.records:
        if record["estimator"] in ("unbiased", "exact"):
            assert record["bias"] < 1e-10
        assert record["wrt"] == "inner_lr"
    theta_plan = mb.evaluate(task, ["lsf"], n_inner=[2], n_trials=20, inner_lr=ETA)
    assert "wrt" not in theta_plan.records[0]  # theta's cells keep their keys and records


def test_wrt_errors_are_typed_and_name_what_is_allowed():
    task = mb.make_task("bandit-v0", **SCIENCE_BANDIT)
    theta = task.initial_params()
    with pytest.raises(mb.ParameterError, match="wrt must be one of 'theta', 'inner_lr', "
                                                "'all', got 'eta'"):
        mb.get_estimator("lsf")(task, theta, n_inner=2, inner_lr=1.0, n_trials=2, wrt="eta")
    with pytest.raises(mb.ParameterError, match="needs inner_lr != 0"):
        mb.get_estimator("lsf")(task, theta, n_inner=2, inner_lr=0.0, n_trials=2,
                                wrt="inner_lr")
    with pytest.raises(mb.UnsupportedError, match="no meta-gradient of the inner step size"):
        mb.evaluate(task, ["es-maml"], n_inner=[2], n_trials=2, wrt="inner_lr")
    with pytest.raises(mb.ParameterError, match="Did you mean 'inner_lr'"):
        mb.evaluate(task, ["lsf"], n_inner=[2], n_trials=2, wrt="inner-lr")


def test_cli_run_with_wrt_all(tmp_path):
    done = subprocess.run(cli_command(["run", "--task", "bandit-v0", "--estimators",
                                       "unbiased,lsf", "--n-inner", "2,4", "--n-steps", "2",
                                       "--wrt", "all", "--trials", "20", "--inner-lr", "1.5",
                                       "--json", str(tmp_path / "out.jsonl"), "--no-report"]),
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all('"wrt": "all"' in line or '"wrt":"all"' in line
                                   for line in lines)
