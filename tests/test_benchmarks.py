"""The benchmark suites follow the registries; asv is configured as numpy configures it."""

import os
import sys

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.core.registry import ESTIMATORS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # noqa: E402


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


def test_asv_config_installs_each_commit_alone_into_a_pinned_environment():
    """numpy's set-up: one virtualenv holding the pinned runtime dependencies, each commit
    built with python -m build and installed --no-deps (torch is never reinstalled)."""
    config = pytest.importorskip("asv.config")
    conf = config.Config.load(os.path.join(REPO, "asv.conf.json"))
    assert conf.environment_type == "virtualenv"
    assert conf.build_command == ["python -m build --wheel -o {build_cache_dir} {build_dir}"]
    assert all("--no-deps" in command for command in conf.install_command)
    assert conf.matrix["req"]["torch"] == ["2.13.0"]
    # that every runtime dependency is pinned there: test_dependencies.py, without asv


def test_the_asv_publish_plugin_runs_after_asvs_own_pages(tmp_path):
    pytest.importorskip("asv")
    from asv.publishing import OutputPublisher

    from benchmarks.dashboard import asv_offline

    assert issubclass(asv_offline.OfflineAssets, OutputPublisher)
    others = [cls.order for cls in OutputPublisher.__subclasses__()
              if cls is not asv_offline.OfflineAssets]
    assert asv_offline.OfflineAssets.order > max(others, default=0)
    # a page that references nothing external is left as it is
    (tmp_path / "index.html").write_text('<script src="asv.js"></script>')

    class Conf:
        html_dir = str(tmp_path)

    asv_offline.OfflineAssets.publish(Conf, None, None, None, None)
    assert (tmp_path / "index.html").read_text() == '<script src="asv.js"></script>'


def test_one_evaluation_serves_the_three_statistics_tracks(tmp_path, monkeypatch):
    from benchmarks.bench_estimators import Statistics

    monkeypatch.chdir(tmp_path)  # asv runs a class with a setup_cache in its own folder
    folder = Statistics().setup_cache()
    assert folder == str(tmp_path)
    first = Statistics()
    first.setup(folder, "lsf", "bandit", 4)
    values = [first.track_bias(None, "lsf", "bandit", 4),
              first.track_variance(None, "lsf", "bandit", 4),
              first.track_mse(None, "lsf", "bandit", 4)]
    assert all(isinstance(v, float) for v in values)
    with pytest.raises(NotImplementedError):   # time and memory only
        Statistics().setup(folder, "lsf", "halfcheetah-vel", 4)
    monkeypatch.setattr(Statistics, "_evaluate", staticmethod(
        lambda *cell: pytest.fail("evaluated twice")))
    second = Statistics()
    second.setup(folder, "lsf", "bandit", 4)
    assert [second.track_bias(None, "lsf", "bandit", 4),
            second.track_variance(None, "lsf", "bandit", 4),
            second.track_mse(None, "lsf", "bandit", 4)] == values
    with pytest.raises(NotImplementedError):   # read back as having no statistics
        Statistics().setup(folder, "lsf", "halfcheetah-vel", 4)


def test_the_metaworld_benchmarks_skip_where_metaworld_is_absent(monkeypatch):
    from benchmarks import bench_metaworld

    monkeypatch.setattr(bench_metaworld, "metaworld_available", lambda: False)
    with pytest.raises(NotImplementedError, match="Meta-World is not installed"):
        bench_metaworld.Sampler().setup("reach-v3")
    with pytest.raises(NotImplementedError, match="Meta-World is not installed"):
        bench_metaworld.EstimateShare().setup()
