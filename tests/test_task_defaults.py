"""Each registered task's run defaults (``metarl-bench run --task ID``) give finite
statistics, and bad input to ``run`` and ``train`` is one line naming the flags. The default
runs are shrunk here (fewer N, trials and truth samples; the task, its inner step and its
n_outer as registered); their full-size wall times are in the commit that set them.
Seeded, so deterministic."""

import json

import pytest

import metarl_bench as mb
from metarl_bench._src import cli
from metarl_bench._src.core.registry import TASKS, RunDefaults
from metarl_bench._src.core.stats import METRICS

MUJOCO = ("halfcheetah-vel-v0", "halfcheetah-dir-v0", "ant-dir-v0")


def run(tmp_path, *args):
    return cli.main(["run", "--quiet", "--no-report", "--json", str(tmp_path / "r.jsonl"),
                     *args])


@pytest.mark.parametrize("task_id", sorted(TASKS))
def test_each_tasks_defaults_give_finite_statistics(task_id, tmp_path, monkeypatch):
    if task_id in MUJOCO or task_id.startswith("metaworld-"):
        pytest.importorskip("mujoco")
    if task_id.startswith("metaworld-"):
        pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    defaults = TASKS[task_id].defaults
    assert isinstance(defaults, RunDefaults)
    # the inner step and n_outer come from the task; only the sizes shrink
    assert run(tmp_path, "--task", task_id, "--estimators", "lsf", "--n-inner",
               str(defaults.n_inner[0]), "--trials", "3", "--truth-samples", "4") == 0
    (line,) = [json.loads(t) for t in (tmp_path / "r.jsonl").read_text().splitlines()]
    config, result = line["config"], line["result"]
    assert (config["inner_lr"], config["n_outer"]) == (defaults.inner_lr, defaults.n_outer)
    assert result["problem"] is None
    assert all(result[name] is not None for name in METRICS)


def test_list_tasks_shows_each_tasks_defaults(capsys):
    assert cli.main(["list", "--tasks"]) == 0
    out = capsys.readouterr().out
    assert "estimators:" not in out
    for task_id, spec in TASKS.items():
        assert f"  {task_id} " in out and spec.defaults.describe() in out
    assert "--inner-lr 0.001" in out and "--n-outer 8" in out   # MuJoCo's


def one_line_refusal(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl-bench: error: ")
    return err[0]


@pytest.mark.parametrize("estimator", ["loo", "exact"])
def test_an_estimator_that_needs_a_model_is_refused_first(estimator, tmp_path, capsys):
    for extra in ([], ["--max-memory", "100TB"], ["--truth", "limit"]):
        line = one_line_refusal(capsys, run(tmp_path, "--task", "navigation2d-v0",
                                            "--estimators", estimator, *extra))
        assert f"'{estimator}' needs a model" in line and "memory" not in line
        assert "lsf" in line                                     # what can run instead
    assert not (tmp_path / "r.jsonl").exists()


def test_a_task_too_large_to_make_is_refused_with_its_estimate(tmp_path, capsys):
    line = one_line_refusal(capsys, run(tmp_path, "--task", "lq-navigation-v0",
                                        "--task-param", "dim=100000"))
    assert "dim=100000" in line and "GiB" in line and "lower dim" in line
    assert not (tmp_path / "r.jsonl").exists()


def test_refusals_name_the_flags_not_the_api_arguments(tmp_path, capsys):
    line = one_line_refusal(capsys, run(tmp_path, "--task", "bandit-v0", "--trials", "1"))
    assert "--trials must be an integer >= 2" in line and "n_trials" not in line
    line = one_line_refusal(capsys, run(tmp_path, "--task", "bandit-v0", "--estimators",
                                        "es-maml", "--n-steps", "2"))
    assert "use --n-steps 1" in line and "n_steps=1" not in line
    line = one_line_refusal(capsys, run(tmp_path, "--task", "navigation2d-v0", "--truth",
                                        "limit", "--estimators", "lsf"))
    assert "use --truth finite" in line


def test_train_refuses_an_estimator_that_needs_the_exact_outer_value(tmp_path, capsys):
    line = one_line_refusal(capsys, cli.main([
        "train", "--task", "navigation2d-v0", "--estimator", "loo", "--iterations", "1",
        "--json", str(tmp_path / "t.jsonl"), "--quiet"]))
    assert "samples every outer step" in line and "n_outer=None" not in line
    assert not list(tmp_path.iterdir())


def test_a_mujoco_task_takes_one_hidden_width(tmp_path, capsys):
    pytest.importorskip("mujoco")
    task = mb.make_task("halfcheetah-vel-v0", hidden=8)
    assert task.policy.spec["hidden"] == [8]
    line = one_line_refusal(capsys, run(tmp_path, "--task", "halfcheetah-vel-v0",
                                        "--task-param", "hidden=abc"))
    assert "hidden must be a list of layer widths" in line


def test_a_long_plan_says_its_size_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "ANNOUNCE_SECONDS", 0.0)   # every plan counts as long here
    assert run(tmp_path, "--task", "bandit-v0", "--estimators", "lsf", "--n-inner", "2,4",
               "--trials", "10") == 0
    err = capsys.readouterr().err.splitlines()
    (line,) = [e for e in err if "planned" in e]
    assert "planned 2 cells" in line and "at this machine's pace" in line
    # a resumed run plans nothing and says nothing
    assert run(tmp_path, "--task", "bandit-v0", "--estimators", "lsf", "--n-inner", "2,4",
               "--trials", "10") == 0
    assert "planned" not in capsys.readouterr().err


def test_a_memory_refusal_names_what_can_come_down(tmp_path, capsys):
    # a chunk at its fixed size: only the limit helps
    line = one_line_refusal(capsys, run(tmp_path, "--task", "navigation2d-v0", "--estimators",
                                        "lsf", "--max-memory", "500MB"))
    assert "raise the limit to at least" in line and "whatever the counts" in line
    # the truth's samples, all in one chunk, and their bootstrap weights
    line = one_line_refusal(capsys, run(tmp_path, "--task", "tabular-v0", "--estimators",
                                        "lsf", "--n-inner", "1", "--max-memory", "100MB"))
    assert "lower --truth-samples" in line
    assert not (tmp_path / "r.jsonl").exists()


def test_run_defaults_keep_the_truth_budget_of_a_cell_configuration():
    """The two layers each hold the default truth budget (core cannot import evaluation);
    stored keys hold truth_samples, so the two must not drift apart."""
    from metarl_bench._src.evaluation.config import CellConfig

    assert RunDefaults.truth_samples == CellConfig.truth_samples
