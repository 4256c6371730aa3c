"""Adaptive trials (``target_rel_ci``): each cell adds estimates until its target metric's
95% interval is narrow enough relative to the metric, or its cap is reached.

Deterministic: fixed seeds, and the rounds are a function of the configuration, so every
number below is reproduced exactly on every run (no tolerance to fail on)."""

import json

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.core.errors import ParameterError, ResourceError
from metarl_bench._src.evaluation.evaluate import ADAPTIVE_CAP_FACTOR, next_trials, relative_width
from metarl_bench._src.evaluation.store import TIMING_FIELDS

# Monte Carlo moments on the bandit, so intervals depend on the number of trials
ADAPTIVE = dict(n_inner=[2, 8], n_trials=100, exact=False, seed=3)


def bandit():
    return mb.make_task("bandit-v0")


def machine_free(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_cells_stop_once_the_interval_is_narrow_enough():
    result = mb.evaluate(bandit(), ["lsf", "maml"], **ADAPTIVE, target_rel_ci=0.1,
                         max_trials=6400)
    for record in result.records:
        low, high = record["mse_ci"]
        assert record["target_reached"] is True
        assert record["rel_ci"] == pytest.approx((high - low) / record["mse"], rel=1e-12)
        assert record["rel_ci"] <= 0.1
        # more than the first batch was needed (100 estimates give 0.14-0.42), and the
        # last round was sized from the interval rather than run to the cap (221 to 2945)
        assert 100 < record["n_trials_used"] < 6400
    default = mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=100, target_rel_ci=0.1)
    assert default.config["max_trials"] == ADAPTIVE_CAP_FACTOR * 100


def test_the_same_configuration_gives_the_same_rounds_and_numbers():
    run = lambda: mb.evaluate(bandit(), ["lsf"], **ADAPTIVE, target_rel_ci=0.25)  # noqa: E731
    assert machine_free(run().records) == machine_free(run().records)


def test_an_unreachable_target_stops_at_the_cap_and_says_so():
    (record, *_) = mb.evaluate(bandit(), ["lsf"], **ADAPTIVE, target_rel_ci=1e-3,
                               max_trials=700).records
    assert record["n_trials_used"] == 700
    assert record["target_reached"] is False and record["rel_ci"] > 1e-3


def test_a_zero_metric_has_no_relative_interval_and_runs_to_the_cap():
    # unbiased has no bias: no number of trials makes an interval relative to zero narrow
    (record, *_) = mb.evaluate(bandit(), ["unbiased"], n_inner=[2], n_trials=50,
                               truth="finite", target_rel_ci=0.5, target_metric="bias",
                               max_trials=400, exact=False).records
    assert record["bias"] == 0 and record["n_trials_used"] == 400
    assert record["rel_ci"] is None and record["target_reached"] is False


def test_exact_moments_need_no_more_trials():
    for record in mb.evaluate(bandit(), ["lsf", "unbiased"], n_inner=[2, 4], n_trials=50,
                              target_rel_ci=0.01).records:
        assert record["moments"] == "exact"
        assert record["n_trials_used"] == 50 and record["rel_ci"] == 0
        assert record["target_reached"] is True


def test_the_next_round_follows_the_square_of_the_width_ratio():
    # 1.1 x (0.5 / 0.1)^2 = 27.5 times, rounded up (1.1 x 25 is 27.500000000000004)
    assert next_trials(100, 0.5, 0.1) in (2750, 2751)
    assert next_trials(100, 0.11, 0.1) == 150           # at least 1.5 times
    assert next_trials(100, float("inf"), 0.1) == ADAPTIVE_CAP_FACTOR * 100
    assert relative_width({"mse": 2.0, "mse_ci": [1.0, 2.5]}, "mse") == 0.75
    assert relative_width({"bias": 0.0, "bias_ci": [0.0, 0.1]}, "bias") == float("inf")


def test_adaptive_cells_have_their_own_keys_and_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    fixed = mb.evaluate(bandit(), ["lsf"], **ADAPTIVE, jsonl=path)
    assert "target_rel_ci" not in fixed.records[0]     # keys of non-adaptive cells unchanged
    adaptive = mb.evaluate(bandit(), ["lsf"], **ADAPTIVE, target_rel_ci=0.25, jsonl=path)
    assert {r["key"] for r in adaptive.records}.isdisjoint(r["key"] for r in fixed.records)
    before = path.read_bytes()
    again = mb.evaluate(bandit(), ["lsf"], **ADAPTIVE, target_rel_ci=0.25, jsonl=path)
    assert path.read_bytes() == before                 # resumed: nothing recomputed
    assert again.records == adaptive.records


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_trials=500), "it needs target_rel_ci"),
    (dict(target_rel_ci=float("nan")), "target_rel_ci must be finite"),
    (dict(target_rel_ci=-1), "target_rel_ci must be > 0"),
    (dict(target_rel_ci=0.1, max_trials=50), "must be at least n_trials (100)"),
    (dict(target_rel_ci=0.1, target_metric="cosine"), "target_metric must be one of"),
])
def test_bad_adaptive_settings_are_refused_before_anything_runs(tmp_path, kwargs, message):
    path = tmp_path / "r.jsonl"
    with pytest.raises(ParameterError) as info:
        mb.evaluate(bandit(), ["lsf"], **ADAPTIVE, jsonl=path, **kwargs)
    assert message in str(info.value)
    assert not path.exists()


def test_the_memory_guard_plans_for_the_cap():
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    small = dict(n_inner=[2], n_trials=100, truth="limit", max_memory="64MiB")
    mb.evaluate(task, ["lsf"], **small, target_rel_ci=1.0, max_trials=1000)
    with pytest.raises(ResourceError, match="n_trials=10000000"):
        mb.evaluate(task, ["lsf"], **small, target_rel_ci=1.0, max_trials=10 ** 7)


def test_cli_shows_the_trials_used_and_notes_cells_short_of_their_target(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    code = main(["run", "--task", "bandit-v0", "--estimators", "lsf,maml", "--n-inner", "2,8",
                 "--trials", "100", "--monte-carlo", "--target-rel-ci", "0.01",
                 "--max-trials", "300", "--json", str(path), "--no-report", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "n_trials=100..300" in out and "rel CI" in out and "*" in out
    assert "note: 4 cells stopped at --max-trials" in err
    lines = [json.loads(t) for t in open(path)]
    assert all(line["result"]["n_trials_used"] == 300 for line in lines)
    assert all(line["config"]["target_rel_ci"] == 0.01 for line in lines)


def test_a_sweep_takes_the_adaptive_settings(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('estimators = ["lsf"]\nn_inner = [2]\nn_trials = 100\n'
                    'exact_moments = false\ntarget_rel_ci = 0.25\nmax_trials = 800\n'
                    '[[tasks]]\nname = "bandit-v0"\n')
    path = tmp_path / "r.jsonl"
    assert main(["sweep", str(spec), "--serial", "--json", str(path), "--quiet"]) == 0
    (line,) = [json.loads(t) for t in open(path)]
    assert line["config"]["max_trials"] == 800
    direct = mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=100, exact=False,
                         target_rel_ci=0.25, max_trials=800).records[0]
    assert line["key"] == direct["key"]
    assert line["result"]["n_trials_used"] == direct["n_trials_used"]
    assert torch.tensor(line["result"]["mse"]) == torch.tensor(direct["mse"])
