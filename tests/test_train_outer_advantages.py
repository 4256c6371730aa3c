"""``train(outer_advantages=...)`` / ``--outer-advantages``: the outer step's scores weighted
by the task's own inner-step advantages (MAML-TRPO's outer loss) instead of the reward-to-go.

The default ("plain") leaves configurations, rows and checkpoints as they were (the adam log
of 600665a in test_trpo.py resumes unchanged; here: no key in the configuration, and the
"task" path on a plain task equals the default bit for bit, which proves the plumbing). On a
task with a baseline the gradient changes, with far less variance, and on identical outer
trajectories its mean moves from the plain one's only by the bias of a baseline fitted on
the same samples, which shrinks as 1/M (measured, paired, at M = 5 and 80). Every sample is
seeded, so every check is deterministic."""

import json
import os

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.core.registry import estimator_spec
from metarl_bench._src.estimators.common import outer_at
from metarl_bench._src.training.state import checkpoint_path
from metarl_bench._src.training.train import TaskAdvantageOuter, train
from metarl_bench._src.training.trpo import TRPO

from conftest import generator
from test_train_resume import interrupt_after, without_seconds, without_seconds_rows


def navigation(**advantages):
    return mb.make_task("navigation2d-v0", horizon=5, policy="linear", **advantages)


def tiny(task, path=None, optimizer="trpo", progress=None, **kwargs):
    return train(task, "lsf", iterations=4, meta_batch=3, n_inner=4, n_outer=4,
                 inner_lr=0.01, optimizer=optimizer, seed=2, jsonl=path, progress=progress,
                 **kwargs)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "trpo"])
def test_task_advantages_on_a_plain_task_equal_the_default_bit_for_bit(tmp_path, optimizer):
    task = navigation()
    default = tiny(task, tmp_path / "default.jsonl", optimizer)
    plain = tiny(task, tmp_path / "plain.jsonl", optimizer, outer_advantages="plain")
    via_task = tiny(task, tmp_path / "task.jsonl", optimizer, outer_advantages="task")
    assert "outer_advantages" not in default.config and plain.config == default.config
    assert via_task.config == {**default.config, "outer_advantages": "task"}
    assert without_seconds(tmp_path / "plain.jsonl") == without_seconds(
        tmp_path / "default.jsonl")
    assert without_seconds_rows(via_task) == without_seconds_rows(default)
    assert torch.equal(via_task.theta, default.theta) and torch.equal(plain.theta, default.theta)
    assert not torch.equal(default.theta, task.initial_params())


def test_the_outer_step_equals_outer_at_on_a_plain_task():
    task = navigation()
    points = task.initial_params().expand(6, *task.param_shape) + 0.1
    index = torch.arange(6) % task.n_tasks
    plain = outer_at(task, points, index, lambda p, i: task.sample(p, 5, i, generator(4)))
    step = TaskAdvantageOuter(task, 5, generator(4), "lsf")
    via_task = step.after(points, index)
    assert torch.equal(via_task.grad, plain.grad) and torch.equal(via_task.value, plain.value)
    assert not via_task.exact and len(step.calls) == 1 and torch.equal(step.calls[0][0], points)


def test_a_baseline_changes_the_gradient_and_its_expectation_only_at_order_1_over_m():
    plain_task, based_task = navigation(), navigation(baseline="linear")
    rows = 4000
    theta = plain_task.initial_params()
    points = (theta + 0.2 * torch.randn((1, *theta.shape), dtype=theta.dtype,
                                        generator=generator(7))).expand(rows, *theta.shape)
    index = torch.zeros(rows, dtype=torch.long)
    bias = {}
    for n_outer in (5, 80):
        plain = TaskAdvantageOuter(plain_task, n_outer, generator(5), "lsf").after(points, index)
        based = TaskAdvantageOuter(based_task, n_outer, generator(5), "lsf").after(points, index)
        assert torch.equal(plain.value, based.value)  # the same outer trajectories
        assert torch.isfinite(based.grad).all()
        plain_grad, based_grad = plain.grad.reshape(rows, -1), based.grad.reshape(rows, -1)
        # the baseline removes most of the noise (measured: 11x less variance at M = 5, 9x at 80)
        assert based_grad.var(0).sum() < plain_grad.var(0).sum() / 5
        # paired on the same samples, the mean moves by the bias of a baseline fitted on them
        bias[n_outer] = float((based_grad - plain_grad).mean(0).norm()
                              / plain_grad.mean(0).norm())
    # measured 24% of |grad V| at M = 5 and 2.4% at M = 80: it vanishes as M grows
    assert bias[80] < bias[5] / 4 and bias[80] < 0.05, bias


def test_trpo_line_search_weights_its_surrogate_by_the_same_advantages():
    task = navigation(baseline="linear", gae_lambda=1.0, normalize_advantages=True)
    plain = tiny(task)
    based = tiny(task, outer_advantages="task")
    assert all(torch.isfinite(torch.tensor(row["surrogate_gain"])) for row in based.iterations)
    assert [row["surrogate_gain"] for row in based.iterations] != [
        row["surrogate_gain"] for row in plain.iterations]
    assert [row["return_before"] for row in based.iterations][0] == plain.iterations[0][
        "return_before"]  # the same first samples; the steps differ
    assert not torch.equal(based.theta, plain.theta) and torch.isfinite(based.theta).all()


def test_an_interrupted_run_with_task_advantages_resumes_bit_for_bit(tmp_path):
    task = navigation(baseline="linear", gae_lambda=1.0, normalize_advantages=True)
    reference = tiny(task, tmp_path / "reference.jsonl", outer_advantages="task")
    path = tmp_path / "train.jsonl"
    with pytest.raises(KeyboardInterrupt):
        tiny(task, path, progress=interrupt_after(2), outer_advantages="task")
    checkpoint = json.loads(open(checkpoint_path(path)).read())
    assert checkpoint["finished"] == 2 and checkpoint["config"]["outer_advantages"] == "task"
    resumed = tiny(task, path, outer_advantages="task")
    assert torch.equal(resumed.theta, reference.theta)
    assert without_seconds(path) == without_seconds(tmp_path / "reference.jsonl")
    with pytest.raises(mb.ParameterError, match="outer_advantages"):  # another run
        tiny(task, path)


def _registered_from_samples():
    return [name for name in mb.list_estimators()
            if estimator_spec(name).from_samples is not None
            and not estimator_spec(name).needs_model]


@pytest.mark.parametrize("estimator", _registered_from_samples())
def test_every_estimator_takes_task_advantages_or_refuses_with_a_typed_error(estimator):
    for task, optimizer in ((navigation(), "adam"),
                            (navigation(baseline="linear", gae_lambda=1.0), "trpo")):
        def run(**kwargs):
            return train(task, estimator, iterations=1, meta_batch=2, n_inner=3, n_outer=3,
                         inner_lr=0.01, optimizer=optimizer, seed=0, **kwargs)

        if estimator == "es_maml":  # it samples the outer step itself, not through outer_at
            with pytest.raises(mb.UnsupportedError, match="would ignore outer_advantages"):
                run(outer_advantages="task")
            continue
        try:
            reference = run()
        except mb.UnsupportedError as refusal:  # its own grounds (dice: a plain inner step)
            with pytest.raises(mb.UnsupportedError, match=str(refusal)[:40]):
                run(outer_advantages="task")
            continue
        result = run(outer_advantages="task")
        assert torch.isfinite(result.theta).all()
        if task.advantages.plain:
            assert torch.equal(result.theta, reference.theta)


def test_an_estimator_that_never_takes_its_outer_step_is_refused(monkeypatch):
    from metarl_bench._src.training import train as train_module

    spec = estimator_spec("lsf")
    silent = type(spec)(**{**spec.__dict__, "from_samples": lambda task, theta, inner, *,
                           inner_lr, outer: torch.zeros(inner.n_rows, *theta.shape,
                                                        dtype=theta.dtype)})
    monkeypatch.setattr(train_module, "estimator_spec", lambda name: silent)
    with pytest.raises(mb.UnsupportedError, match="did not take its outer step"):
        tiny(navigation(), optimizer="adam", outer_advantages="task")


@pytest.mark.parametrize("value, message", [
    ("tsk", "Did you mean 'task'"), ("Plain", "Did you mean 'plain'"), (None, "got None"),
    (1, "one of 'plain', 'task'")])
def test_a_bad_value_is_a_typed_error_before_anything_is_written(tmp_path, value, message):
    with pytest.raises(mb.ParameterError, match=message):
        tiny(navigation(), tmp_path / "train.jsonl", outer_advantages=value)
    assert os.listdir(tmp_path) == []


def test_the_command_line_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--task", "navigation2d-v0", "--task-param", "horizon=5",
            "--task-param", "baseline=linear", "--iterations", "2", "--meta-batch", "2",
            "--n-inner", "3", "--n-outer", "3", "--inner-lr", "0.01", "--outer", "trpo"]
    assert main([*argv, "--outer-advantages", "task", "--json", "task.jsonl"]) == 0
    assert main([*argv, "--json", "plain.jsonl"]) == 0
    capsys.readouterr()
    task_header, *task_rows = without_seconds(tmp_path / "task.jsonl")
    plain_header, *plain_rows = without_seconds(tmp_path / "plain.jsonl")
    assert task_header["outer_advantages"] == "task" and "outer_advantages" not in plain_header
    assert len(task_rows) == 2 and task_rows != plain_rows
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--outer-advantages", "tsk", "--json", "bad.jsonl"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--outer-advantages" in err and "'task'" in err
    assert len(err.strip().splitlines()) == 1 and sorted(os.listdir(tmp_path)) == before
