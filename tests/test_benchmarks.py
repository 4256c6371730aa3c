"""The benchmark suites follow the registries, and the asv tools read results correctly."""

import importlib.util
import os
import sys

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.registry import ESTIMATORS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # noqa: E402


def load_tool():
    path = os.path.join(REPO, "benchmarks", "tools", "asv_history.py")
    spec = importlib.util.spec_from_file_location("asv_history", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_estimator_is_benchmarked():
    from benchmarks import bench_estimators

    assert bench_estimators.PARAMS[0] == mb.list_estimators() == common.ESTIMATORS


def test_a_newly_registered_estimator_joins_the_suite_without_edits():
    mb.register_estimator("test-new", lambda task, theta, **kw: torch.zeros(1))
    try:
        assert "test-new" in common.estimator_names()
    finally:
        ESTIMATORS.pop("test-new")


def test_stale_exclusions_fail_loudly(monkeypatch):
    monkeypatch.setattr(common, "EXCLUDED", {"no-such-estimator": "gone"})
    with pytest.raises(RuntimeError, match="excludes unregistered estimators"):
        common.estimator_names()


def test_unsupported_cells_are_skipped_not_failed():
    with pytest.raises(NotImplementedError, match="enumeration"):
        common.Case("exact", "tabular", 4)
    assert common.Case("lsf", "bandit", 4).run(n_trials=3).shape == (3, 3)


def test_asv_tool_classifies_and_compares_results():
    tool = load_tool()
    assert tool.kind_of("bench_estimators.Estimate.time_estimate") == "time"
    assert tool.kind_of("bench_estimators.Allocation.track_allocated_bytes") == "memory"
    assert tool.kind_of("bench_estimators.Statistics.track_variance") == "variance"
    results = {
        "result_columns": ["result", "params", "stats_ci_99_a", "stats_ci_99_b"],
        "results": {"bench_estimators.Statistics.track_variance": [
            [1.0, 2.0], [["'lsf'", "'maml'"], ["'bandit'"]], None, None]},
    }
    cells = tool.expand(results)
    assert cells[("bench_estimators.Statistics.track_variance", ("'maml'", "'bandit'"))][
        "value"] == 2.0
    old, same, worse = {"value": 1.0, "ci": (None, None)}, {"value": 1.0, "ci": (None, None)}, \
        {"value": 1.5, "ci": (None, None)}
    assert tool.worse("variance", old, same, 1.1, 1e-12) is None
    assert tool.worse("variance", old, worse, 1.1, 1e-12) == "1.50x"
