"""Decomposed estimation (inner step, Hessian and outer gradient from three estimators), and
estimators named with options (NAME:KEY=VALUE,...) in evaluate and the CLI."""

import itertools
import math
import sys

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.estimators.entries import parse_entry, split_entries

from conftest import SCIENCE_LR, generator

TABULAR = dict(n_states=3, n_actions=2, horizon=3, gamma=0.8, n_tasks=2, seed=4)


def call(estimator, task, theta, seed=0, **overrides):
    kwargs = dict(n_inner=4, inner_lr=0.9, n_trials=6, generator=generator(seed))
    kwargs.update(overrides)
    return estimator(task, theta, **kwargs)


@pytest.mark.parametrize("task_id, params", [("bandit-v0", {}), ("tabular-v0", TABULAR)])
def test_all_parts_exact_is_the_exact_limit_gradient(task_id, params):
    task = mb.make_task(task_id, **params)
    theta = task.initial_params() + 0.1
    estimates = call(mb.decomposed("exact", "exact", "exact"), task, theta)
    truth = mb.meta_gradient(task, theta, inner_lr=0.9)
    torch.testing.assert_close(estimates, truth.expand_as(estimates), rtol=0, atol=1e-13)


@pytest.mark.parametrize("n_outer", [None, 3])
@pytest.mark.parametrize("name", ["lsf", "dice", "maml", "fomaml"])
def test_one_estimator_in_every_part_with_shared_samples_is_that_estimator(name, n_outer):
    # inner = hessian = X on the same samples, outer as X's: theta'_inner is X's theta', and
    # (dh/dtheta)^T u is X's (I + eta H_X)^T u at u = grad V(theta'), so the two are X sample
    # for sample (the same generator draws the same inner, then outer, trajectories)
    task = mb.make_task("tabular-v0", **TABULAR)
    theta = task.initial_params()
    parts = mb.decomposed(name, name, n_hessian="shared")
    torch.testing.assert_close(call(parts, task, theta, n_outer=n_outer),
                               call(mb.get_estimator(name), task, theta, n_outer=n_outer),
                               rtol=1e-12, atol=1e-13)


def test_an_unbiased_hessian_on_its_own_samples_leaves_no_bias_when_the_rest_is_exact():
    # inner and outer exact: the mean is (I + eta E[H_hat])^T grad V(theta + eta grad V).
    # lsf's Hessian estimate J + g s^T is unbiased for grad^2 V, so the mean is grad F_inf;
    # so is dice's; maml's misses E[g s^T]. 10k seeded trials: every coordinate of lsf's and
    # dice's mean within 4.5 standard errors of grad F_inf (false alarm < 1e-4 per coordinate);
    # maml's more than 50 standard errors away somewhere (about 290 with these seeds).
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3, gamma=0.8, seed=4)
    theta = task.initial_params()
    truth = mb.meta_gradient(task, theta, inner_lr=1.0)
    n_trials = 10_000
    for hessian, seed in (("lsf", 1), ("dice", 3), ("maml", 2)):
        samples = call(mb.decomposed("exact", hessian, "exact", n_hessian=4), task, theta,
                       seed=seed, inner_lr=1.0, n_trials=n_trials)
        stderr = samples.std(0) / math.sqrt(n_trials)
        gap = (samples.mean(0) - truth).abs()
        if hessian == "maml":
            assert float((gap / stderr).max()) > 50
        else:
            assert torch.all(gap <= 4.5 * stderr), hessian


def test_a_sampled_inner_step_alone_gives_the_compositional_bias(science_bandit):
    # hessian and outer exact, inner from maml's N samples: exact moments by enumeration give
    # mean = (I + eta grad^2 V)^T sum_n Mult(n) grad V(theta + eta g(n)), written out here
    theta, n_inner, eta = science_bandit.initial_params(), 3, SCIENCE_LR
    rewards = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    value = lambda th: torch.softmax(th, -1) @ rewards  # noqa: E731
    pi = torch.softmax(theta, -1)
    expected_outer = torch.zeros(3, dtype=torch.float64)
    for counts in itertools.product(range(n_inner + 1), repeat=3):
        if sum(counts) != n_inner:
            continue
        n = torch.tensor(counts, dtype=torch.float64)
        weight = math.factorial(n_inner) / math.prod(math.factorial(c) for c in counts) * \
            float(torch.prod(pi ** n))
        step = (n * rewards - (n @ rewards) * pi) / n_inner
        expected_outer += weight * torch.autograd.functional.jacobian(value, theta + eta * step)
    hessian = torch.autograd.functional.hessian(value, theta)
    expected = expected_outer + eta * hessian.T @ expected_outer
    spec = mb.decomposed("maml", "exact", "exact")
    assert spec.count_determined
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=eta)
    moments = mb.exact_moments(science_bandit, theta, spec, n_inner=n_inner, inner_lr=eta,
                               truth=truth)
    torch.testing.assert_close(moments.mean, expected, rtol=0, atol=1e-13)
    assert float((moments.mean - truth).norm()) > 1e-3    # the bias this part alone causes


def test_bad_parts_raise_typed_errors(science_bandit):
    theta = science_bandit.initial_params()
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'maml'"):
        mb.decomposed(inner="mamll")
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'exact'"):
        mb.decomposed(outer="exakt")
    with pytest.raises(mb.ParameterError, match="leave n_outer unset"):
        mb.decomposed(outer="exact", n_outer=4)
    with pytest.raises(mb.ParameterError, match="n_hessian must be"):
        mb.decomposed(n_hessian=0)
    with pytest.raises(mb.UnsupportedError, match="cannot be the hessian part"):
        call(mb.decomposed("maml", "unbiased"), science_bandit, theta)
    with pytest.raises(mb.UnsupportedError, match="cannot be the hessian part"):
        call(mb.decomposed("maml", "loo"), science_bandit, theta)
    with pytest.raises(mb.ParameterError, match="asked for n_outer=3"):
        call(mb.decomposed(outer="exact"), science_bandit, theta, n_outer=3)
    with pytest.raises(mb.ParameterError, match="give n_outer"):
        call(mb.decomposed(outer="sampled"), science_bandit, theta)
    with pytest.raises(mb.UnsupportedError, match="one inner step only"):
        mb.evaluate(science_bandit, ["decomposed"], n_inner=[2], n_trials=5, n_steps=2)
    with pytest.raises(mb.UnsupportedError, match="one inner step only"):
        call(mb.decomposed(), science_bandit, theta, n_steps=3)


def test_registered_decomposed_takes_its_parts_as_options(science_bandit):
    # the registry's decomposed is decomposed(...) with its parts as options; evaluate runs
    # it through the registry (Monte Carlo moments), and a spec from decomposed(...) there too
    theta = science_bandit.initial_params()
    spec = mb.estimator_spec("decomposed")
    assert spec.options == ("inner", "hessian", "outer", "n_hessian")
    shared = dict(hessian="exact", outer="exact")
    torch.testing.assert_close(call(spec, science_bandit, theta, **shared),
                               call(mb.decomposed(**shared), science_bandit, theta))
    result = mb.evaluate(science_bandit, ["decomposed", mb.decomposed("maml", "exact")],
                         n_inner=[4], n_trials=100, inner_lr=SCIENCE_LR)
    first, second = result.records
    assert (first["estimator"], first["options"]) == ("decomposed", {})
    assert second["options"] == {"inner": "maml", "hessian": "exact"}
    assert first["trajectories"] == 8 and second["trajectories"] == 4
    assert first["moments"] == second["moments"] == "monte-carlo"


# ---- the estimator-entry grammar ------------------------------------------------------------

@pytest.mark.parametrize("text, entries", [
    ("lsf", ["lsf"]),
    ("lsf, maml", ["lsf", "maml"]),
    ("lsf,unbiased:baseline=0.5,decomposed:inner=maml,hessian=lsf,outer=exact",
     ["lsf", "unbiased:baseline=0.5", "decomposed:inner=maml,hessian=lsf,outer=exact"]),
    ("decomposed:inner=maml,hessian=lsf,unbiased", ["decomposed:inner=maml,hessian=lsf",
                                                    "unbiased"]),
])
def test_split_entries(text, entries):
    assert split_entries(text) == entries


def test_parse_entry_types_its_values():
    assert parse_entry("decomposed:inner=maml,n_hessian=16") == (
        "decomposed", {"inner": "maml", "n_hessian": 16})
    assert parse_entry("unbiased:baseline=0.5") == ("unbiased", {"baseline": 0.5})
    for bad, message in (("lsf:baseline", "expected KEY=VALUE"),
                         ("unbiased:baseline=1,baseline=2", "given twice")):
        with pytest.raises(mb.ParameterError, match=message):
            parse_entry(bad)
    with pytest.raises(mb.ParameterError, match="follows no estimator"):
        split_entries("baseline=1,lsf")


def test_evaluate_compares_variants_of_one_estimator_side_by_side(science_bandit):
    result = mb.evaluate(science_bandit, ["unbiased", "unbiased:baseline=0.5"], n_inner=[4],
                         n_trials=50, inner_lr=SCIENCE_LR)
    plain, with_baseline = result.records
    assert plain["estimator"] == with_baseline["estimator"] == "unbiased"
    assert (plain["options"], with_baseline["options"]) == ({}, {"baseline": 0.5})
    assert with_baseline["variance"] != plain["variance"] and with_baseline["bias"] < 1e-13
    with pytest.raises(mb.ParameterError, match="listed twice"):
        mb.evaluate(science_bandit, ["lsf", "lsf"], n_inner=[4], n_trials=5)
    with pytest.raises(mb.ParameterError, match="Did you mean 'baseline'"):
        mb.evaluate(science_bandit, ["unbiased:basline=0.5"], n_inner=[4], n_trials=5)


def test_cli_runs_entries_with_options(tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    assert main(["run", "--task", "bandit-v0", "--n-inner", "2", "--trials", "20",
                 "--estimators", "lsf,unbiased:baseline=0.5,"
                                 "decomposed:inner=maml,hessian=lsf,outer=exact",
                 "--n-steps", "1", "--json", str(out)]) == 0
    (result,) = mb.load_results(out)
    assert [(r["estimator"], r["options"]) for r in result.records] == [
        ("lsf", {}), ("unbiased", {"baseline": 0.5}),
        ("decomposed", {"inner": "maml", "hessian": "lsf", "outer": "exact"})]
    table = capsys.readouterr().out
    assert "unbiased:baseline=0.5" in table and "decomposed:inner=maml,hessian=lsf" in table
    assert main(["run", "--task", "bandit-v0", "--n-inner", "2", "--trials", "20",
                 "--estimators", "lsf,maml", "--n-steps", "2", "--json", str(out)]) == 0
    steps = {r["estimator"]: r["n_steps"] for result in mb.load_results(out)
             for r in result.records}
    assert steps == {"lsf": 2, "maml": 2, "unbiased": 1, "decomposed": 1}
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["run", "--estimators", "unbiased:basline=0.5"], "Did you mean 'baseline'?"),
    (["run", "--estimators", "decomposed:iner=maml"], "Did you mean 'inner'?"),
    (["run", "--estimators", "decomposed:inner=mamll"], "Did you mean 'maml'?"),
    (["run", "--estimators", "baseline=0.5,lsf"], "follows no estimator"),
    (["run", "--n-steps", "0"], "expected a positive integer"),
    (["check", "--baseline", "HEAD", "--estimators", "lsf:bias=1"], "has no option 'bias'"),
])
def test_cli_bad_entries_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("entry", ["es-maml", "decomposed", "decomposed:inner=exact"])
def test_one_step_estimators_refuse_k_steps_with_a_typed_error(entry, science_bandit, tmp_path,
                                                               monkeypatch, capsys):
    # they take n_steps (so a K-step call reaches them, never a TypeError) and refuse K > 1
    with pytest.raises(mb.UnsupportedError, match="one inner step only"):
        mb.evaluate(science_bandit, [entry], n_inner=[2], n_trials=5, n_steps=2)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--task", "bandit-v0", "--n-inner", "2", "--trials", "5",
                 "--estimators", entry, "--n-steps", "2",
                 "--json", str(tmp_path / "run.jsonl")]) == 2
    err = capsys.readouterr().err       # a progress line ("running ...") may come first
    (error,) = [line for line in err.splitlines() if "error" in line]
    assert "one inner step only" in error and "Traceback" not in err
