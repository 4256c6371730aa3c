"""Meta-training survives a crash: Ctrl-C or SIGKILL loses no finished iteration, the same
call resumes bit for bit, and a log that cannot be resumed is refused without touching it.
Also the progress bar and --quiet of ``metarl-bench train``.

Every run here is tiny (a linear policy, 5-step episodes, two tasks of two trajectories):
an iteration takes a few milliseconds, so each test takes a few seconds."""

import json
import os
import signal
import subprocess

import pytest
import torch
import tqdm.auto

import metarl_bench as mb
from metarl_bench._src.core import progress as progress_module
from metarl_bench._src.cli import main
from metarl_bench._src.evaluation.store import plain as mb_plain
from metarl_bench._src.training.train import load_training, train
from metarl_bench._src.training.state import checkpoint_path, decode_tensor

from conftest import cli_command, signal_when_written

TINY = ["--task", "navigation2d-v0", "--task-param", "horizon=5", "--task-param",
        "policy=linear", "--meta-batch", "2", "--n-inner", "2", "--n-outer", "2",
        "--inner-lr", "0.01", "--outer-lr", "0.05"]


def tiny_task():
    return mb.make_task("navigation2d-v0", horizon=5, policy="linear")


def tiny_train(path, iterations=6, progress=None, optimizer="adam", seed=3):
    return train(tiny_task(), "lsf", iterations=iterations, meta_batch=2, n_inner=2,
                 n_outer=2, inner_lr=0.01, outer_lr=0.05, optimizer=optimizer, seed=seed,
                 jsonl=path, progress=progress)


def interrupt_after(count):
    """A progress callable that presses Ctrl-C after ``count`` finished iterations."""
    seen = []

    def press(row):
        seen.append(row)
        if len(seen) == count:
            raise KeyboardInterrupt

    return press


def without_seconds(path):
    """The log's lines with the one field that measures the machine removed."""
    lines = [json.loads(text) for text in open(path, "rb").read().decode().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def final_theta(path):
    return decode_tensor(json.loads(open(checkpoint_path(path)).read())["theta"])


def files_of(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_interrupted_twice_then_resumed_equals_an_uninterrupted_run(tmp_path, optimizer):
    reference = tiny_train(tmp_path / "reference.jsonl", optimizer=optimizer)
    path = tmp_path / "train.jsonl"
    for count in (2, 1):  # Ctrl-C after iteration 1, then after iteration 2
        with pytest.raises(KeyboardInterrupt):
            tiny_train(path, progress=interrupt_after(count), optimizer=optimizer)
    assert len(without_seconds(path)) == 1 + 3
    rows = []
    resumed = tiny_train(path, progress=rows.append, optimizer=optimizer)
    assert [row["iteration"] for row in rows] == [3, 4, 5]  # only the missing iterations
    assert without_seconds(path) == without_seconds(tmp_path / "reference.jsonl")
    assert torch.equal(resumed.theta, reference.theta)  # bit for bit
    assert [r["return_after"] for r in resumed.iterations] == reference.curve("return_after")
    # a finished run again: no work, the same result, the log unchanged
    log = path.read_bytes()
    again = tiny_train(path, progress=rows.append, optimizer=optimizer)
    assert len(rows) == 3 and path.read_bytes() == log
    assert torch.equal(again.theta, reference.theta) and again.iterations == resumed.iterations


@pytest.mark.slow
def test_sigkill_of_the_command_then_the_same_command_resumes(tmp_path):
    # the command kills itself with SIGKILL right after its log holds two iterations
    path = tmp_path / "killed.jsonl"
    argv = ["train", *TINY, "--iterations", "40", "--json", str(path), "--quiet"]
    code, _ = signal_when_written(argv, 3, signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed_at = len(without_seconds(path)) - 1
    assert 2 <= killed_at < 40
    finished = subprocess.run(cli_command(argv), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    reference = tiny_train(None, iterations=40, seed=0)  # the command's settings, no files
    header, *rows = without_seconds(path)
    assert rows == [{"type": "iteration", **row} for row in without_seconds_rows(reference)]
    assert header == {"type": "header", "schema_version": 1,
                      **json.loads(json.dumps(mb_plain(reference.config)))}
    assert torch.equal(final_theta(path), reference.theta)


def without_seconds_rows(result):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in result.iterations]


def test_a_torn_last_line_is_dropped_and_a_missing_last_row_restored(tmp_path):
    reference = tiny_train(tmp_path / "reference.jsonl")
    path = tmp_path / "train.jsonl"
    with pytest.raises(KeyboardInterrupt):
        tiny_train(path, progress=interrupt_after(3))
    # killed in the middle of appending a row: a torn last line
    with open(path, "ab") as handle:
        handle.write(b'{"type": "iteration", "iteration": 3, "return_bef')
    assert len(load_training(path).iterations) == 3  # the reader ignores the torn line
    with pytest.raises(KeyboardInterrupt):
        tiny_train(path, progress=interrupt_after(1))
    assert len(without_seconds(path)) == 1 + 4  # every line whole: the torn one was dropped
    # killed between writing the checkpoint and appending its row: the log lacks that row
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    resumed = tiny_train(path)
    assert without_seconds(path) == without_seconds(tmp_path / "reference.jsonl")
    assert torch.equal(resumed.theta, reference.theta)


def test_another_configuration_is_refused_in_one_line_and_the_files_are_kept(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    assert main(["train", *TINY, "--iterations", "2", "--json", str(path), "--quiet"]) == 0
    before = files_of(tmp_path)
    capsys.readouterr()
    code = main(["train", *TINY, "--iterations", "3", "--seed", "1", "--json", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "iterations: 2 in the log, 3 now" in err and "seed: 0 in the log, 1 now" in err
    assert "choose another --json path" in err
    assert files_of(tmp_path) == before


def _log_without_checkpoint(folder):
    tiny_train(folder / "x.jsonl", iterations=6)
    os.remove(checkpoint_path(folder / "x.jsonl"))


def _checkpoint_ahead_of_the_log(folder):
    tiny_train(folder / "x.jsonl", iterations=6)
    lines = (folder / "x.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "x.jsonl").write_bytes(b"".join(lines[:-2]))


def _checkpoint_without_log(folder):
    tiny_train(folder / "x.jsonl", iterations=6)
    os.remove(folder / "x.jsonl")


def _damaged_checkpoint(folder):
    tiny_train(folder / "x.jsonl", iterations=6)
    saved = json.loads(open(checkpoint_path(folder / "x.jsonl")).read())
    saved["theta"]["data"] = saved["theta"]["data"][:-1]
    open(checkpoint_path(folder / "x.jsonl"), "w").write(json.dumps(saved))


@pytest.mark.parametrize("setup, message", [
    (lambda folder: (folder / "x.jsonl").write_text('{"a": 1}\n'), "not a metarl-bench training"),
    (lambda folder: (folder / "x.jsonl").write_bytes(b"\x00\xff\n"), "not a JSON line"),
    (_log_without_checkpoint, "has no checkpoint"),
    (_checkpoint_ahead_of_the_log, "(6 finished iterations) disagrees with"),
    (_checkpoint_without_log, "no such file"),
    (lambda folder: (folder / "x.state.json").write_text("[1]"), "not a metarl-bench training "
                                                                 "checkpoint"),
    (_damaged_checkpoint, "x.state.json is damaged"),
], ids=["not-a-log", "binary", "no-checkpoint", "checkpoint-ahead", "no-log", "bad-checkpoint",
        "damaged-checkpoint"])
def test_a_log_that_cannot_be_resumed_is_refused_touching_nothing(tmp_path, capsys, setup,
                                                                   message):
    setup(tmp_path)
    before = files_of(tmp_path)
    code = main(["train", *TINY, "--iterations", "6", "--seed", "3",
                 "--json", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert files_of(tmp_path) == before


def test_a_run_that_fails_at_once_writes_no_file(tmp_path):
    task = mb.make_task("navigation2d-v0", horizon=5, policy="linear", baseline="linear")
    with pytest.raises(mb.UnsupportedError):  # dice refuses a fitted baseline
        train(task, "dice", iterations=2, meta_batch=2, n_inner=2, n_outer=2,
              jsonl=tmp_path / "x.jsonl")
    with pytest.raises(mb.ParameterError, match="progress must be"):
        train(task, "lsf", iterations=2, progress="yes", jsonl=tmp_path / "x.jsonl")
    assert os.listdir(tmp_path) == []


def test_progress_bar_on_a_terminal_lines_in_logs_and_nothing_when_quiet(tmp_path, capsys,
                                                                        monkeypatch):
    run = ["train", *TINY, "--iterations", "2", "--plot", str(tmp_path / "curve.png")]
    assert main([*run, "--json", str(tmp_path / "quiet.jsonl"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "learning curve" in captured.out
    # stderr is not a terminal here: one line per iteration instead of a bar
    assert main([*run, "--json", str(tmp_path / "lines.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "iteration    0: return before" in err and "iteration    1" in err
    assert "it/s" not in err and "s/it" not in err
    # as on a terminal: a tqdm bar with an ETA and the latest returns, no per-iteration lines
    monkeypatch.setattr(progress_module, "wanted", lambda quiet=False: not quiet)

    class EveryUpdate(tqdm.auto.tqdm):  # drawn at each update, not at most every 0.1 s
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", EveryUpdate)
    assert main([*run, "--json", str(tmp_path / "bar.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "train" in err and "2/2" in err and "after=" in err and "iteration    0" not in err
    assert main([*run, "--json", str(tmp_path / "quiet-bar.jsonl"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
