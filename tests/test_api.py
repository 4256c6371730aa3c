"""Public API contract: registries, typed errors, determinism, JSON results, the CLI."""

import inspect
import subprocess
import sys

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.evaluation.store import TIMING_FIELDS

from conftest import generator, signal_when_written


def lsf_call(task, theta=None, **overrides):
    kwargs = dict(n_inner=4, inner_lr=1.0, n_trials=3, generator=generator())
    kwargs.update(overrides)
    return mb.get_estimator("lsf")(task, task.initial_params() if theta is None else theta,
                                   **kwargs)


# ---- registries -------------------------------------------------------------------------

def test_registries_list_the_builtin_entries():
    assert {"bandit-v0", "tabular-v0"} <= set(mb.list_tasks())
    assert {"exact", "unbiased", "lsf", "dice", "maml", "fomaml", "loo"} <= set(mb.list_estimators())


@pytest.mark.parametrize("task_id", mb.list_tasks())
def test_every_task_meets_the_contract(task_id):
    try:
        task = mb.make_task(task_id)
    except mb.UnsupportedError as exc:  # an optional extra (MuJoCo) is not installed
        pytest.skip(str(exc))
    theta = task.initial_params()
    assert theta.shape == task.param_shape and theta.dtype == torch.float64
    inner = task.sample(theta.unsqueeze(0).expand(2, *theta.shape), 3,
                        torch.zeros(2, dtype=torch.long), generator())
    # a task with no fixed horizon (None) pads its batches to their longest episode
    horizon = inner.horizon if task.horizon is None else task.horizon
    assert inner.rewards.shape == (2, 3, horizon)
    assert inner.actions.shape[:3] == inner.states.shape[:3] == (2, 3, horizon)
    log_prob = task.log_prob(theta.unsqueeze(0).expand(2, *theta.shape), inner)
    assert log_prob.shape == (2, 3, horizon) and torch.isfinite(log_prob).all()
    if task.policy is None or task.policy.discrete:  # probabilities; a density may exceed 1
        assert torch.all(log_prob <= 0)


def test_register_estimator_decorator_overwrite_and_duplicates():
    @mb.register_estimator("test-zero")
    def zero(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None, generator=None):
        """Always zero."""
        return torch.zeros(n_trials, *theta.shape, dtype=theta.dtype)

    try:
        assert "test-zero" in mb.list_estimators()
        task = mb.make_task("bandit-v0")
        result = mb.evaluate(task, ["test-zero"], n_inner=[1, 2], n_trials=10, inner_lr=1.0)
        assert [r["moments"] for r in result.records] == ["monte-carlo"] * 2
        assert result.records[0]["variance"] == 0
        with pytest.raises(mb.RegistrationError, match="already registered"):
            mb.register_estimator("test-zero", zero)
        mb.register_estimator("test-zero", lambda *a, **k: None, overwrite=True)
    finally:
        from metarl_bench._src.core.registry import ESTIMATORS
        ESTIMATORS.pop("test-zero", None)


def test_register_task_requires_versioned_ids():
    with pytest.raises(mb.RegistrationError, match="name-vN"):
        mb.register_task("mytask", "metarl_bench._src.tasks.bandit:make_bandit")


# ---- typed errors -------------------------------------------------------------------------

def test_unknown_names_suggest_the_closest():
    with pytest.raises(mb.UnknownNameError, match=r"Did you mean 'lsf'\?.*Valid estimators"):
        mb.get_estimator("lfs")
    with pytest.raises(mb.UnknownNameError, match=r"Did you mean 'bandit-v0'\?"):
        mb.make_task("bandit-v1")
    with pytest.raises(mb.UnknownNameError, match=r"Did you mean 'n_states'\?"):
        mb.make_task("tabular-v0", n_state=3)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_inner=0), mb.ParameterError, "n_inner must be an integer >= 1, got 0"),
    (dict(n_trials=-1), mb.ParameterError, "n_trials must be an integer >= 1"),
    (dict(n_inner=2.5), mb.ParameterError, "n_inner must be an integer"),
    (dict(inner_lr="big"), mb.ParameterError, "inner_lr must be a number"),
    (dict(inner_lr=float("nan")), mb.ParameterError, "inner_lr must be finite"),
    (dict(n_outer=0), mb.ParameterError, "n_outer must be an integer >= 1"),
    (dict(generator=0), mb.ParameterError, "generator must be a torch.Generator"),
    (dict(theta=torch.zeros(4, dtype=torch.float64)), mb.ShapeError,
     r"expected \(3,\), got \(4,\)"),
    (dict(theta=torch.zeros(3, dtype=torch.long)), mb.ShapeError, "floating"),
    (dict(theta=torch.tensor([0.0, float("inf"), 0.0])), mb.ParameterError, "NaN or infinite"),
    (dict(theta=torch.tensor([float("inf"), float("-inf"), 0.0])), mb.ParameterError,
     "NaN or infinite"),
    (dict(theta=torch.tensor([0.0, float("nan"), 0.0])), mb.ParameterError, "NaN or infinite"),
    (dict(baseline=1.0, typo=2), mb.ParameterError, "has no option 'baseline'"),
])
def test_bad_estimator_arguments_raise_typed_errors(kwargs, error, message):
    task = mb.make_task("bandit-v0")
    with pytest.raises(error, match=message):
        lsf_call(task, **kwargs)


def test_finite_parameters_whose_sum_overflows_are_accepted():
    """theta's finiteness is checked on its sum first; a sum that overflows (finite entries)
    falls back to the entry-by-entry check instead of refusing theta."""
    task = mb.make_task("bandit-v0")
    theta = torch.tensor([3e38, 3e38, 0.0], dtype=torch.float32)
    assert not torch.isfinite(theta.sum())
    estimates = lsf_call(task, theta=theta)
    assert estimates.shape[1:] == (3,)


def test_bad_task_parameters_raise_typed_errors():
    with pytest.raises(mb.ParameterError, match="gamma must be <= 1.0"):
        mb.make_task("tabular-v0", gamma=1.5)
    with pytest.raises(mb.ShapeError, match=r"rewards must have shape"):
        mb.make_task("tabular-v0", n_states=2, n_actions=2, rewards=[[1.0, 2.0, 3.0]])
    with pytest.raises(mb.ParameterError, match="sum to 1"):
        mb.make_task("tabular-v0", n_states=2, n_actions=2, start=[0.5, 0.6])
    with pytest.raises(mb.ParameterError, match="at least 2 arms"):
        mb.make_task("bandit-v0", rewards=[1.0])


def test_impossible_combinations_raise_unsupported():
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    theta = task.initial_params()
    with pytest.raises(mb.UnsupportedError, match="enumeration"):
        mb.meta_gradient(task, theta, inner_lr=1.0, n_inner=4)
    with pytest.raises(mb.UnsupportedError, match="n_outer=None"):
        mb.get_estimator("loo")(task, theta, n_inner=2, inner_lr=1.0, n_trials=2, n_outer=3)

    class NoModel(mb.Task):
        name, param_shape, has_model = "nomodel-v0", (2,), False

    with pytest.raises(mb.UnsupportedError, match="has no model"):
        mb.get_estimator("lsf")(NoModel(), torch.zeros(2), n_inner=2, inner_lr=1.0, n_trials=2)


def test_evaluate_rejects_bad_configurations():
    task = mb.make_task("bandit-v0")
    with pytest.raises(mb.ParameterError, match="truth must be 'finite' or 'limit'"):
        mb.evaluate(task, ["lsf"], truth="exact")
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'maml'"):
        mb.evaluate(task, ["mamll"])
    with pytest.raises(mb.ParameterError, match="n_inner must be an integer >= 1"):
        mb.evaluate(task, ["lsf"], n_inner=[4, 0])
    with pytest.raises(mb.ParameterError, match="has no option 'baseline'"):
        mb.evaluate(task, ["lsf"], options={"lsf": {"baseline": 1.0}})
    tabular = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    with pytest.raises(mb.UnsupportedError, match="use truth='limit'"):
        mb.evaluate(tabular, ["lsf", "exact"], truth="finite")


# ---- determinism and results ----------------------------------------------------------------

def test_same_seed_gives_identical_results_and_json_round_trips(tmp_path):
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    run = lambda path: mb.evaluate(task, ["unbiased", "lsf"], n_inner=[2, 4], n_trials=50,  # noqa: E731
                                   truth_samples=200, seed=5, jsonl=path)
    first, second = run(tmp_path / "a.jsonl"), run(tmp_path / "b.jsonl")
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING_FIELDS}  # noqa: E731
                             for r in records]
    assert strip(first.records) == strip(second.records)
    first.to_json(tmp_path / "c.jsonl")
    (loaded,) = mb.load_results(tmp_path / "c.jsonl")
    assert strip(loaded.records) == strip(first.records) and loaded.slopes == first.slopes
    (streamed,) = mb.load_results(tmp_path / "a.jsonl")
    assert strip(streamed.records) == strip(first.records)
    assert "pickle" not in (tmp_path / "c.jsonl").read_text()


def test_an_interrupted_evaluation_keeps_its_finished_cells(tmp_path):
    path = tmp_path / "partial.jsonl"
    seen = []

    def interrupt_after_three(record):
        seen.append(record)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mb.evaluate(mb.make_task("bandit-v0"), ["lsf", "maml"], n_inner=[1, 2, 4], n_trials=20,
                    jsonl=path, progress=interrupt_after_three)
    (partial,) = mb.load_results(path)
    assert [(r["estimator"], r["n_inner"]) for r in partial.records] == \
        [("lsf", 1), ("maml", 1), ("lsf", 2)]
    with open(path, "a") as handle:  # a crash in the middle of writing a line
        handle.write('{"schema": "metarl-bench/results", "schema_version": 2, "key": "e3')
    (partial,) = mb.load_results(path)
    assert len(partial.records) == 3


def test_limit_truth_and_exact_estimator_rows():
    task = mb.make_task("bandit-v0")
    result = mb.evaluate(task, ["exact", "lsf"], n_inner=[4, 64], n_trials=20, truth="limit")
    exact_rows = [r for r in result.records if r["estimator"] == "exact"]
    assert all(r["bias"] < 1e-15 and r["variance"] < 1e-28 for r in exact_rows)
    lsf_rows = {r["n_inner"]: r for r in result.records if r["estimator"] == "lsf"}
    assert lsf_rows[64]["bias"] < lsf_rows[4]["bias"]


def test_float32_and_sampled_outer_run():
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    result = mb.evaluate(task, ["lsf", "unbiased"], n_inner=[2], n_trials=30, n_outer=4,
                         dtype=torch.float32, truth="limit")
    assert all(r["moments"] == "monte-carlo" and r["trajectories"] == 6 for r in result.records)
    assert result.config["dtype"] == "float32"


# ---- command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["run", "--estimators", "lsff"], "Did you mean 'lsf'?"),
    (["run", "--task", "tabular"], "Did you mean 'tabular-v0'?"),
    (["run", "--n-inner", "1,0"], "every N must be an integer >= 1"),
    (["run", "--n-inner", "two"], "expected integers"),
    (["run", "--trials", "0"], "expected a positive integer"),
    (["run", "--trials", "ten"], "expected a positive integer"),
    (["run", "--inner-lr", "fast"], "expected a number"),
    (["run", "--truth", "exact"], "invalid choice"),
    (["run", "--task", "tabular-v0", "--task-param", "gamma=2"], "gamma must be <= 1.0"),
    (["run", "--task", "tabular-v0", "--task-param", "n_state=2"], "Did you mean 'n_states'?"),
    (["run", "--task-param", "n_states"], "expected KEY=VALUE"),
    (["run", "--json", "/no/such/folder/out.jsonl"], "cannot be written"),
    (["run", "--estimators", ","], "at least one estimator"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"], ["list", "--help"], ["run", "--help"]])
def test_cli_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out


def test_cli_list_and_run_write_a_table_and_json(tmp_path, capsys):
    assert main(["list"]) == 0
    assert "lsf" in capsys.readouterr().out
    path = tmp_path / "out.jsonl"
    assert main(["run", "--task", "bandit-v0", "--estimators", "lsf,fomaml", "--n-inner", "1,4",
                 "--trials", "20", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "lsf" in out and "log-log slopes" in out
    (loaded,) = mb.load_results(path)
    assert len(loaded.records) == 4 and loaded.config["task"] == "bandit-v0"


def test_console_script_is_installed():
    completed = subprocess.run([sys.executable, "-m", "metarl_bench._src.cli", "run",
                                "--estimators", "nope"], capture_output=True, text=True)
    assert completed.returncode == 2 and completed.stderr.startswith("metarl-bench: error:")


def test_plugin_estimators_arrive_through_entry_points(tmp_path, monkeypatch):
    # a package installed elsewhere: a module and its dist-info with an entry point
    (tmp_path / "fake_plugin.py").write_text(
        "import torch\n"
        "def half_fomaml(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None,\n"
        "                generator=None):\n"
        "    '''Half the first-order estimate (a test plug-in).'''\n"
        "    import metarl_bench as mb\n"
        "    return 0.5 * mb.get_estimator('fomaml')(task, theta, n_inner=n_inner,\n"
        "        inner_lr=inner_lr, n_trials=n_trials, n_outer=n_outer, generator=generator)\n")
    info = tmp_path / "fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[metarl_bench.estimators]\nhalf-fomaml = fake_plugin:half_fomaml\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from metarl_bench._src.core import registry
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "half-fomaml" in mb.list_estimators()
        task = mb.make_task("bandit-v0")
        full = mb.get_estimator("fomaml")(task, task.initial_params(), n_inner=3, inner_lr=1.0,
                                          n_trials=4, generator=generator())
        half = mb.get_estimator("half-fomaml")(task, task.initial_params(), n_inner=3,
                                               inner_lr=1.0, n_trials=4, generator=generator())
        torch.testing.assert_close(half, 0.5 * full)
    finally:
        registry.ESTIMATORS.pop("half-fomaml", None)


def test_ctrl_c_during_a_cli_run_keeps_every_finished_cell(tmp_path):
    import signal

    path = tmp_path / "run.jsonl"
    code, err = signal_when_written(
        ["run", "--task", "tabular-v0", "--estimators", "lsf,maml",
         "--n-inner", "1,2,3,4", "--truth", "limit", "--json", str(path)], 3, signal.SIGINT)
    assert code == 130 and "finished cells of this run kept in" in err
    assert "Traceback" not in err
    (partial,) = mb.load_results(path)
    kept = int(err.split("interrupted; ")[1].split(" finished")[0])
    assert len(partial.records) == kept >= 3


def test_large_cells_are_evaluated_in_chunks_deterministically(monkeypatch):
    from metarl_bench._src.evaluation import evaluate as evaluate_module

    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    spec = mb.estimator_spec("lsf")
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs["n_trials"])
        return spec.fn(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "estimator_spec",
                        lambda name: spec.__class__(**{**spec.__dict__, "fn": counting}))
    run = lambda: mb.evaluate(task, ["lsf"], n_inner=[2 ** 15], n_trials=100,  # noqa: E731
                              truth="limit", seed=3).records[0]
    first = run()
    assert calls == [1] + [32] * 3 + [4]      # a warm-up call, then 2**20 / 2**15 = 32 a chunk
    second = run()
    assert {k: v for k, v in first.items() if k not in TIMING_FIELDS} == \
        {k: v for k, v in second.items() if k not in TIMING_FIELDS}


def test_a_task_without_a_model_runs_sampling_estimators_with_sampled_outer():
    bandit = mb.make_task("bandit-v0")

    class ModelFree(mb.Task):
        """The bandit seen only through samples."""
        name, param_shape, horizon, gamma, has_model = "modelfree-v0", (3,), 1, 1.0, False

        def initial_params(self, dtype=torch.float64, device=None):
            return bandit.initial_params(dtype, device)

        def sample(self, params, n_traj, task_index, generator):
            return bandit.sample(params, n_traj, task_index, generator)

        def log_prob(self, params, traj):
            return bandit.log_prob(params, traj)

    task = ModelFree()
    theta = task.initial_params()
    for name in ("unbiased", "lsf", "dice", "maml", "fomaml"):
        out = mb.get_estimator(name)(task, theta, n_inner=4, inner_lr=1.0, n_trials=5,
                                     n_outer=6, generator=generator())
        assert out.shape == (5, 3) and torch.isfinite(out).all()
    with pytest.raises(mb.UnsupportedError, match="no model"):
        mb.evaluate(task, ["lsf"])
    result = mb.evaluate(task, ["lsf"], n_inner=[4], n_outer=6, n_trials=20, truth_samples=50)
    assert result.records[0]["truth_kind"] == "estimated"
    # the model-free truth (unbiased estimates, sampled outer, pilot baseline) agrees with the
    # bandit's exact grad F_N: 20,000 estimates, within 4.5 standard errors per coordinate
    estimate = mb.estimate_meta_gradient(task, theta, n_inner=4, inner_lr=1.0, n_outer=6,
                                         n_samples=20_000, generator=generator(3))
    exact = mb.meta_gradient(bandit, theta, inner_lr=1.0, n_inner=4)
    assert torch.all((estimate.mean - exact).abs() < 4.5 * estimate.stderr), (estimate.mean, exact)
    assert estimate.method.startswith("mean of 20000 unbiased estimates, N=4, M=6")


def test_help_shows_the_call_a_user_makes():
    # help() and inspect.signature follow __signature__: the registered call with its
    # options, not the from-samples form that the docstring's formula describes
    signature = inspect.signature(mb.get_estimator("loaded-dice"))
    assert "inner" not in signature.parameters
    assert {"n_inner", "inner_lr", "n_trials", "n_outer", "generator", "n_steps",
            "dependency_decay", "critic"} <= set(signature.parameters)
    assert signature.parameters["n_trials"].annotation in (int, "int")
    assert "Called as registered" in mb.get_estimator("lsf").__doc__
    assert mb.estimator_spec("lsf").summary == "Linearized score function (LSF) estimate."


def test_a_summary_is_the_whole_first_sentence():
    from metarl_bench._src.core.registry import TASKS, summary_of

    def wrapped():
        """Any Gymnasium environment (default Pendulum-v1) as a task, sampled through
        ``SyncVectorEnv``. A second sentence.

        Details."""

    assert summary_of(wrapped) == ("Any Gymnasium environment (default Pendulum-v1) as a "
                                   "task, sampled through ``SyncVectorEnv``.")
    summaries = [TASKS[name].summary for name in mb.list_tasks()] + [
        mb.estimator_spec(name).summary for name in mb.list_estimators()]
    assert all(summary.endswith((".", "?", "!")) for summary in summaries), summaries
