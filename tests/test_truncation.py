"""Truncated backpropagation through K inner steps (``truncate=w``): w = 0 is first-order
MAML's construction and w = K the full estimate, sample for sample; every w against the
per-row nested-autodiff twins; exact moments against Monte Carlo; the bias it adds against
the full objective's exact truth; invalid windows as typed errors; K = 100."""

import subprocess

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.estimators import reference
from metarl_bench._src.estimators.common import multi_step, with_respect_to

from conftest import SCIENCE_LR, cli_command, generator
from test_multistep import ReplayedOuter, make, step_samples

CHAINED = [n for n in mb.list_estimators() if "truncate" in mb.estimator_spec(n).options]
SAME = dict(rtol=1e-12, atol=1e-12)


def test_every_k_step_estimator_takes_truncate_and_the_others_do_not():
    assert set(CHAINED) >= {"unbiased", "lsf", "dice", "maml", "fomaml", "loo", "loaded-dice",
                            "lvc", "taypo", "emaml", "tmaml", "hf-maml"}
    for name in ("es-maml", "decomposed", "exact"):
        assert "truncate" not in mb.estimator_spec(name).options


@pytest.mark.parametrize("n_outer", [None, 4])
@pytest.mark.parametrize("n_steps", [1, 2, 4])
@pytest.mark.parametrize("name", CHAINED)
def test_window_zero_is_fomaml_and_window_k_is_the_full_estimate(name, n_steps, n_outer):
    # registered calls, same seed: w = K is today's estimate bit for bit; w = 0 is fomaml's
    # K-step construction (grad V(theta_K)) to 1e-12 (the DiCE family builds theta' through
    # its own surrogate, equal to the plain step up to rounding)
    task = make("tabular-2tasks")
    theta = task.initial_params() + 0.1
    if mb.estimator_spec(name).needs_model and n_outer is not None:
        pytest.skip("model-based: exact outer only")
    call = dict(n_inner=3, inner_lr=0.8, n_trials=4, n_steps=n_steps, n_outer=n_outer)
    estimator = mb.get_estimator(name)
    full = estimator(task, theta, generator=generator(2), **call)
    assert torch.equal(estimator(task, theta, truncate=n_steps, generator=generator(2), **call),
                       full)
    first_order = mb.get_estimator("fomaml")(task, theta, generator=generator(2), **call)
    zero = estimator(task, theta, truncate=0, generator=generator(2), **call)
    torch.testing.assert_close(zero, first_order, **SAME)
    if name not in ("fomaml",):
        assert (zero - full).abs().max() > 1e-6


@pytest.mark.parametrize("truncate", [None, 0, 1, 2])
@pytest.mark.parametrize("task_key", ["bandit", "tabular-2tasks"])
@pytest.mark.parametrize("name", sorted(reference.MULTI_STEP))
def test_truncated_chain_equals_nested_autodiff_twin(name, task_key, truncate):
    # the twin detaches theta_{K-w} and differentiates the last w steps (and their score
    # terms) by nested autodiff in theta and eta, one row at a time: both meta-gradients
    # (wrt="all": theta's, then dF/d eta = sum_k g_k . lambda_{k+1} of the window)
    task = make(task_key)
    theta = task.initial_params() + 0.2
    steps = step_samples(task, theta, n_rows=3, n_inner=4, n_steps=3)
    options = {"baseline": 0.3} if name == "unbiased" else {}
    run = multi_step(mb.estimator_spec(name).from_samples, task, theta, steps, inner_lr=0.7,
                     truncate=truncate, **options)
    slow = reference.MULTI_STEP[name](task, theta, steps, inner_lr=0.7, truncate=truncate,
                                      wrt="all", **options)
    torch.testing.assert_close(with_respect_to("all", run.estimate, run.inner_lr_grad), slow,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["lsf", "unbiased"])
def test_truncated_chain_with_sampled_outer_equals_twin(name):
    task = make("tabular-2tasks")
    theta = task.initial_params()
    steps = step_samples(task, theta, n_rows=3, n_inner=3, n_steps=3, seed=1)
    spec = mb.estimator_spec(name)
    outer = ReplayedOuter(task, 4, seed=5)  # the fast call records, the twin replays
    fast = multi_step(spec.from_samples, task, theta, steps, inner_lr=0.9, outer=outer,
                      truncate=1).estimate
    slow = reference.MULTI_STEP[name](task, theta, steps, inner_lr=0.9, outer=outer,
                                      truncate=1)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_exact_moments_of_truncated_estimates_match_monte_carlo(science_bandit):
    # K = 2, N = 3, w = 1: exact moments by enumerating both steps' counts; 4000 seeded
    # registered calls have their mean within 5 standard errors in every coordinate
    theta = science_bandit.initial_params()
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=3, n_steps=2)
    spec = mb.estimator_spec("lsf")
    exact = mb.exact_moments(science_bandit, theta, spec, n_inner=3, inner_lr=SCIENCE_LR,
                             truth=truth, n_steps=2, truncate=1)
    samples = spec.fn(science_bandit, theta, n_inner=3, inner_lr=SCIENCE_LR, n_trials=4000,
                      n_steps=2, truncate=1, generator=generator(4))
    stderr = (exact.covariance.diagonal() / 4000).sqrt()
    assert float(((samples.mean(0) - exact.mean).abs() / stderr).max()) < 5
    full = mb.exact_moments(science_bandit, theta, spec, n_inner=3, inner_lr=SCIENCE_LR,
                            truth=truth, n_steps=2)
    assert float((full.mean - exact.mean).norm()) > 1e-3


def test_truncation_bias_falls_as_the_window_grows_on_the_bandit(science_bandit):
    # exact moments, K = 3, N = 4, eta = 1 (15**3 outcomes), truth the full K-step grad F_N:
    # |bias| for w = 0, 1, 2, 3 strictly decreasing (measured in docs/estimators.md)
    theta = science_bandit.initial_params()
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=1.0, n_inner=4, n_steps=3)
    spec = mb.estimator_spec("unbiased")
    biases = [float((mb.exact_moments(science_bandit, theta, spec, n_inner=4, inner_lr=1.0,
                                      truth=truth, n_steps=3, truncate=w).mean - truth).norm())
              for w in range(4)]
    assert biases[3] < 1e-12, biases          # the full unbiased estimator
    assert all(a > b for a, b in zip(biases, biases[1:])), biases


@pytest.mark.parametrize("truncate", [-1, 3, 1.5, True, "1", None])
def test_invalid_windows_are_typed_errors_naming_what_is_allowed(truncate):
    task = make("bandit")
    theta = task.initial_params()
    call = dict(n_inner=2, inner_lr=1.0, n_trials=2, n_steps=2)
    if truncate is None:  # None is the full window
        assert mb.get_estimator("lsf")(task, theta, truncate=None, **call).shape == (2, 3)
        return
    with pytest.raises(mb.ParameterError, match=r"truncate must be an integer from 0 to "
                                                r"n_steps=2"):
        mb.get_estimator("lsf")(task, theta, truncate=truncate, **call)
    with pytest.raises(mb.ParameterError, match="truncate must be an integer from 0"):
        mb.evaluate(task, ["lsf"], options={"lsf": {"truncate": truncate}}, n_inner=[2],
                    n_trials=2, inner_lr=1.0, n_steps=2)


def test_one_step_estimators_refuse_truncate():
    task = make("bandit")
    with pytest.raises(mb.ParameterError, match="has no option 'truncate'"):
        mb.evaluate(task, ["es-maml:truncate=0"], n_inner=[2], n_trials=2, inner_lr=1.0)


def test_cli_refuses_a_window_beyond_n_steps_in_one_line(tmp_path):
    done = subprocess.run(cli_command(["run", "--task", "bandit-v0", "--estimators",
                                       "lsf:truncate=5", "--n-steps", "2", "--n-inner", "2",
                                       "--trials", "2", "--json",
                                       str(tmp_path / "out.jsonl")]),
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "truncate must be an integer from 0 to --n-steps 2" \
        in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_evaluate_records_the_window_and_its_bias_against_the_full_truth(science_bandit):
    result = mb.evaluate(science_bandit, ["lsf:truncate=0", "lsf:truncate=1", "lsf"],
                         n_inner=[4], n_trials=50, inner_lr=1.0, n_steps=2)
    by_label = {(r["estimator"], r["options"].get("truncate")): r for r in result.records}
    assert {r["moments"] for r in result.records} == {"exact"}
    assert (by_label["lsf", 0]["bias"] > by_label["lsf", 1]["bias"]
            > by_label["lsf", None]["bias"])


@pytest.mark.parametrize("task_key", ["bandit", "tabular-2tasks"])
def test_one_hundred_inner_steps_run_with_a_short_window(task_key):
    task = make(task_key)
    theta = task.initial_params()
    estimator = mb.get_estimator("lsf")
    call = dict(n_inner=2, inner_lr=0.1, n_trials=2, n_steps=100, generator=generator(0))
    window = estimator(task, theta, truncate=10, **call)
    call["generator"] = generator(0)
    first_order = mb.get_estimator("fomaml")(task, theta, **call)
    assert torch.isfinite(window).all() and window.shape == first_order.shape
    assert (window - first_order).abs().max() > 1e-8


def test_sweep_truncate_axis_expands_each_chained_entry_per_window():
    from metarl_bench._src.estimators.entries import entry_label
    from metarl_bench._src.evaluation.sweep import build

    spec = {"tasks": [{"name": "bandit-v0"}], "estimators": ["lsf", "unbiased:baseline=0.5"],
            "n_inner": [2], "n_steps": [2, 3], "truncate": [0, 3, "full"], "n_trials": 2}
    sweep = build(spec)
    labels = [[entry_label(c.estimator, c.options) for c in p.configs] for p in sweep.plans]
    assert labels == [
        ["lsf:truncate=0", "lsf", "unbiased:baseline=0.5,truncate=0", "unbiased:baseline=0.5"],
        ["lsf:truncate=0", "lsf:truncate=3", "lsf", "unbiased:baseline=0.5,truncate=0",
         "unbiased:baseline=0.5,truncate=3", "unbiased:baseline=0.5"]]
    with pytest.raises(mb.ParameterError, match="truncate values must be 'full' or integers"):
        build({**spec, "truncate": [-1]})
