"""``metarl-bench train`` and ``train(...)`` refuse, before anything runs or is written, a run
too large for memory or work, and a --plot path that would destroy another file: one line
(exit 2) on the command line, a typed error in Python, and no log, checkpoint or PNG left.

Every refusal here happens before the first iteration (milliseconds); the runs that do
train are two iterations of a bandit, so the whole file takes about two seconds."""

import os
import sys

import pytest

import metarl_bench as mb
from metarl_bench._src.core import resources
from metarl_bench._src.cli import main
from metarl_bench._src.training.train import PNG_SIGNATURE, train

#: A results line as ``metarl-bench run`` writes them: what --plot must never overwrite.
RESULTS = b'{"schema": "metarl-bench/results", "schema_version": 2, "key": "0"}\n'
TRAIN = ["train", "--task", "bandit-v0", "--iterations", "2", "--quiet", "--max-memory", "4GiB"]


def exit_code(argv):
    """The command's exit code, whether argparse or the command itself refused."""
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv))
    return exit_info.value.code


def files_of(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("extra, message", [
    (["--n-outer", "1000000000000"], "lower --n-outer, or raise the limit "
                                     "(--max-memory SIZE"),
    (["--meta-batch", "1000000000"], "lower --meta-batch, or raise"),
    (["--n-inner", "100000000"], "needs about 253 GiB of memory, more than 4 GiB"),
    (["--iterations", "1000000000"], "plans 8e+11 trajectory steps, more than the 1e+10 "
                                     "allowed"),
    (["--max-memory", "lots"], "--max-memory must be a size"),
    (["--plot", "keep.jsonl"], "--plot 'keep.jsonl' exists and is not a PNG image"),
    (["--plot", ""], "--plot must be a file path, got an empty string"),
    (["--json", ""], "--json must be a file path, got an empty string"),
    (["--plot", "t.jsonl"], "--plot 't.jsonl' is the training log"),
    (["--plot", "t.state.json"], "--plot 't.state.json' is the training checkpoint"),
    (["--plot", "missing/curve.png"], "cannot be written: no folder"),
    # no --plot given: the flag named is the one given
    (["--json", "pic.png"], "--json 'pic.png' ends in .png, where the learning curve goes "
                            "when no --plot is given"),
], ids=["n-outer", "meta-batch", "n-inner", "work", "max-memory", "plot-not-png", "empty-plot",
        "empty-json", "plot-is-log", "plot-is-checkpoint", "plot-no-folder", "json-is-png"])
def test_a_refused_train_command_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                                extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.jsonl").write_bytes(RESULTS)
    before = files_of(tmp_path)
    json_given = "--json" in extra
    code = exit_code(TRAIN + ([] if json_given else ["--json", "t.jsonl"]) + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert files_of(tmp_path) == before  # no log, checkpoint or PNG; keep.jsonl intact


def test_the_work_guard_is_lifted_by_no_work_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # 2 iterations x 20 tasks x 40 trajectories x 1 step = 1600 steps
    monkeypatch.setattr(resources, "DEFAULT_MAX_WORK", 1000)
    assert main(TRAIN + ["--json", "t.jsonl"]) == 2
    assert "plans 1.6e+03 trajectory steps" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    assert main(TRAIN + ["--json", "t.jsonl", "--no-work-limit"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["t.jsonl", "t.png", "t.state.json"]


def test_the_api_takes_the_limits_and_refuses_before_writing(tmp_path):
    task = mb.make_task("bandit-v0")
    log = tmp_path / "t.jsonl"
    with pytest.raises(mb.ResourceError, match="of memory, more than 1 KiB"):
        train(task, iterations=2, max_memory="1KiB", jsonl=log)
    with pytest.raises(mb.ResourceError, match=r"lift the guard \(--no-work-limit, max_work="):
        train(task, iterations=2, max_work=1000, jsonl=log)
    with pytest.raises(mb.ParameterError, match="max_work must be finite"):
        train(task, iterations=2, max_work=float("nan"), jsonl=log)
    with pytest.raises(mb.ParameterError, match="max_memory must be a size"):
        train(task, iterations=2, max_memory="big", jsonl=log)
    (tmp_path / "keep.jsonl").write_bytes(RESULTS)
    with pytest.raises(mb.ParameterError, match="exists and is not a PNG"):
        train(task, iterations=2, jsonl=log, plot=tmp_path / "keep.jsonl")
    assert files_of(tmp_path) == {"keep.jsonl": RESULTS}
    result = train(task, iterations=2, max_work=None, max_memory="1GiB")
    assert len(result.iterations) == 2


def test_a_previous_curve_or_an_empty_file_is_replaced_by_the_new_curve(tmp_path):
    task = mb.make_task("bandit-v0")
    old_curve, empty = tmp_path / "old.png", tmp_path / "empty.png"
    old_curve.write_bytes(PNG_SIGNATURE + b"an earlier run's picture")
    empty.write_bytes(b"")
    for path in (old_curve, empty):
        train(task, iterations=2, plot=path)
        picture = path.read_bytes()
        assert picture.startswith(PNG_SIGNATURE) and b"earlier" not in picture


@pytest.mark.parametrize("option", [{"wrt": "inner_lr"}, {"truncate": 0}])
def test_k_step_options_are_refused_by_training_with_a_typed_error(tmp_path, option):
    """truncate and wrt shape K-step estimates (run, evaluate); training's one inner step
    refuses them by name before writing, instead of a TypeError from the estimator's form."""
    log = tmp_path / "t.jsonl"
    with pytest.raises(mb.ParameterError, match=f"option '{next(iter(option))}' of estimator "
                                                f"'lsf' is for K-step estimates"):
        train(mb.make_task("bandit-v0"), "lsf", iterations=2, options=option, jsonl=log)
    with pytest.raises(mb.ParameterError, match="has no option 'typo'"):
        train(mb.make_task("bandit-v0"), "lsf", iterations=2, options={"typo": 1}, jsonl=log)
    assert files_of(tmp_path) == {}
    # a form's own option still trains
    assert len(train(mb.make_task("bandit-v0"), "unbiased", iterations=1, meta_batch=2,
                     options={"baseline": 0.5}).iterations) == 1
