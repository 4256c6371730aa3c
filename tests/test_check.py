"""metarl-bench check: the gates catch an injected regression and pass unchanged code."""

import copy
import json
import os

import pytest

import metarl_bench as mb
from metarl_bench._src.regression_gate import FAILING, compare, run_suite
from metarl_bench._src.cli import main
from metarl_bench._src.registry import ESTIMATORS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET = ["lsf", "unbiased", "fomaml"]


@pytest.fixture(scope="module")
def baseline():
    return run_suite(SUBSET, rounds=5, memory=False, mujoco=False)


def failing(rows):
    return [(r["estimator"], r["task"], r["n_inner"], r["metric"]) for r in rows
            if r["verdict"] in FAILING]


def test_compare_verdicts_by_hand():
    stat = dict(estimator="e", task="t", n_inner=4, bias=0.1, variance=1.0, mse=1.01,
                bias_ci=[0.05, 0.15], variance_ci=[0.9, 1.1], mse_ci=[0.91, 1.11])
    cost = dict(estimator="e", task="t", n_inner=4, seconds=1.0, peak_bytes=1000)
    base = {"statistics": [stat], "costs": [cost]}
    now = copy.deepcopy(base)
    assert {r["verdict"] for r in compare(base, now)} == {"same"}
    # variance +0.1: within 3 joint standard errors (0.051 each) -> same; +0.3 -> worse
    now["statistics"][0]["variance"] = 1.1
    assert {r["metric"]: r["verdict"] for r in compare(base, now)}["variance"] == "same"
    now["statistics"][0]["variance"] = 1.3
    assert {r["metric"]: r["verdict"] for r in compare(base, now)}["variance"] == "worse"
    now["costs"][0].update(seconds=1.9, peak_bytes=2500)
    verdicts = {r["metric"]: r["verdict"] for r in compare(base, now)}
    assert verdicts["seconds"] == "same" and verdicts["peak_bytes"] == "larger"
    now["costs"][0]["seconds"] = 2.0
    assert {r["metric"]: r["verdict"] for r in compare(base, now)}["seconds"] == "slower"
    del now["statistics"][0]
    assert {r["verdict"] for r in compare(base, now) if r["metric"] == "bias"} == {"gone"}


def test_exact_statistics_fail_on_any_real_change():
    stat = dict(estimator="e", task="t", n_inner=4, bias=0.1, variance=1.0, mse=1.01,
                bias_ci=[0.1, 0.1], variance_ci=[1.0, 1.0], mse_ci=[1.01, 1.01])
    now = copy.deepcopy(stat)
    now.update(variance=1.0 + 1e-12)  # floating-point noise passes
    assert not failing(compare({"statistics": [stat]}, {"statistics": [now]}))
    now.update(variance=1.001)
    assert failing(compare({"statistics": [stat]}, {"statistics": [now]}))


def test_an_injected_variance_bug_fails_the_check(baseline):
    lsf = mb.estimator_spec("lsf")

    def noisier_lsf(task, theta, **kwargs):
        estimates = lsf.fn(task, theta, **kwargs)
        return 2 * estimates - estimates.mean(0)   # noise doubled, mean unchanged

    mb.register_estimator("lsf", noisier_lsf, overwrite=True)
    try:
        rows = compare(baseline, run_suite(SUBSET, rounds=3, memory=False, mujoco=False))
    finally:
        ESTIMATORS["lsf"] = lsf
    failed = failing(rows)
    assert ("lsf", "tabular", 4, "variance") in failed and ("lsf", "tabular", 32, "mse") in failed
    assert {name for name, *_ in failed} == {"lsf"}


def test_unchanged_code_passes_ten_runs_out_of_ten(baseline):
    for run in range(10):
        rows = compare(baseline, run_suite(SUBSET, rounds=5, memory=False, mujoco=False))
        assert not failing(rows), (run, failing(rows))


def test_cli_check_against_a_revision_and_a_saved_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    saved = tmp_path / "suite.json"
    assert main(["check", "--baseline", "HEAD", "--estimators", "lsf,fomaml", "--rounds", "2",
                 "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "no regression" in out and "estimator" in out and "verdict" in out
    assert json.loads(saved.read_text())["suite_version"] == 1
    assert main(["check", "--baseline", str(saved), "--estimators", "lsf,fomaml",
                 "--rounds", "2"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["check"], "needs --baseline"),
    (["check", "--baseline", "no-such-rev-xyz"], "neither a suite JSON file nor a commit"),
    (["check", "--baseline", "HEAD", "--estimators", "lfs"], "Did you mean 'lsf'?"),
    (["check", "--baseline", "HEAD", "--factor", "0.5"], "--factor must be > 1"),
])
def test_cli_check_bad_input(argv, message, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
