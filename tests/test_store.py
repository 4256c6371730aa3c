"""The results store: append-only, keyed by configuration, resumable, strict about what it
reads. Deterministic tests (fixed seeds, exact equality) except where stated."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

import metarl_bench as mb
from conftest import REPO, cli_command, signal_when_written
from metarl_bench._src.evaluation import store as store_module
from metarl_bench._src.cli import main

SMALL = dict(n_inner=[2, 4], n_trials=20)


def bandit():
    return mb.make_task("bandit-v0")


def without_timing(path):
    """The file's lines with the timing fields removed: what must match bit for bit."""
    lines = []
    for text in open(path):
        line = json.loads(text)
        for name in store_module.TIMING_FIELDS:
            line["result"].pop(name)
        lines.append(line)
    return lines


def test_every_line_is_a_complete_cell_keyed_by_its_configuration(tmp_path):
    path = tmp_path / "r.jsonl"
    mb.evaluate(bandit(), ["lsf", "maml"], **SMALL, jsonl=path)
    lines = [json.loads(t) for t in open(path)]
    assert len(lines) == 4
    for line in lines:
        assert line["schema"] == "metarl-bench/results" and line["schema_version"] == 2
        assert line["key"] == store_module.cell_key(line["config"])
        assert {"estimator", "n_inner", "task_params", "inner_lr", "n_trials", "seed", "truth",
                "dtype", "device"} <= set(line["config"])
        assert "seconds" in line["result"] and "slope" not in json.dumps(line)


def test_a_rerun_resumes_and_adds_only_new_cells(tmp_path):
    path = tmp_path / "r.jsonl"
    first = mb.evaluate(bandit(), ["lsf"], **SMALL, jsonl=path)
    before = path.read_bytes()
    computed = []
    again = mb.evaluate(bandit(), ["lsf"], **SMALL, jsonl=path, progress=computed.append)
    assert path.read_bytes() == before and computed == []          # nothing recomputed
    assert again.records == first.records
    mb.evaluate(bandit(), ["lsf"], n_inner=[2, 4, 8], n_trials=20, jsonl=path,
                progress=computed.append)
    assert [r["n_inner"] for r in computed] == [8]
    assert path.read_bytes().startswith(before)                     # only ever appended
    (loaded,) = mb.load_results(path)
    assert loaded.config["n_inner"] == [2, 4, 8] and len(loaded.slopes) == 3


def test_force_appends_again_and_the_latest_line_wins(tmp_path):
    path = tmp_path / "r.jsonl"
    mb.evaluate(bandit(), ["lsf"], **SMALL, jsonl=path)
    mb.evaluate(bandit(), ["lsf"], **SMALL, jsonl=path, force=True)
    lines = [json.loads(t) for t in open(path)]
    assert len(lines) == 4 and lines[0]["key"] == lines[2]["key"]
    (loaded,) = mb.load_results(path)
    assert len(loaded.records) == 2
    assert loaded.records[0]["seconds"] == lines[2]["result"]["seconds"]


def test_to_json_appends_to_the_store_and_never_truncates(tmp_path):
    path = tmp_path / "r.jsonl"
    result = mb.evaluate(bandit(), ["lsf"], **SMALL)
    other = mb.evaluate(bandit(), ["maml"], **SMALL, jsonl=path)
    assert result.to_json(path) == 2 and result.to_json(path) == 0
    first, second = mb.load_results(path)[0].records[:2], mb.load_results(path)[0].records[2:]
    assert first == other.records and second == result.records


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\x02binary\n", ":1: binary data"),
    (b"\xff\xfe caf\xe9\n", ":1: not UTF-8"),
    (b'[1, 2, 3]\n', ":1: a JSON list"),
    (b'[1, 2, 3]', ":1: a JSON list"),                 # no newline: still not a torn line
    (b'{"type": "header", "schema_version": 1}\n', ":1: results of schema_version 1"),
    (b'{"hello": "world"}\n', ":1: not a metarl-bench results line"),
    (b'\n{"schema": "metarl-bench/results", "schema_version": 3}\n',
     ":2: schema_version 3 (a newer metarl-bench?); this version of metarl-bench reads 2"),
    # an edited schema name is said as such, not as an older version
    (b'{"schema": "metarl-bench/resultz", "schema_version": 2}\n',
     ":1: \"schema\" is 'metarl-bench/resultz', not 'metarl-bench/results': not a "
     "metarl-bench results line"),
    (b'{"schema_version": 2, "key": "0"}\n', ":1: not a metarl-bench results line (no"),
    (b"not json at all\n", ":1: not a JSON line"),
    (b'{"type": "header", "schema_version": 1, "meta_batch": 20}\n', ":1: a meta-training log"),
])
def test_a_foreign_or_corrupted_file_is_one_error_naming_the_line(tmp_path, content, message):
    path = tmp_path / "foreign.jsonl"
    path.write_bytes(content)
    with pytest.raises(mb.ResultsFileError, match=re.escape(message)):
        mb.load_results(path)
    with pytest.raises(mb.ResultsFileError, match=re.escape(message)):
        mb.evaluate(bandit(), ["lsf"], **SMALL, jsonl=path)
    assert path.read_bytes() == content


def test_genuine_results_agree_with_themselves(tmp_path):
    """The consistency checks of a read line hold on every line the previous main wrote
    (exact and Monte Carlo moments, estimated truths, adaptive trials, float32) and on
    fresh Monte Carlo cells, whose intervals come from a bootstrap."""
    assert len(list(store_module.read_lines(REPO / "tests" / "data" / "store_92246d3.jsonl"))) \
        == 23
    path = tmp_path / "r.jsonl"
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    mb.evaluate(task, ["lsf", "maml", "unbiased", "dice"], n_inner=[1, 2, 8], n_trials=40,
                exact=False, truth_samples=100, jsonl=path)
    mb.evaluate(bandit(), ["lsf", "unbiased"], n_inner=[2], n_trials=20, exact=False,
                target_rel_ci=0.5, max_trials=100, jsonl=path)
    assert len(list(store_module.read_lines(path))) == 14


def _scaled(result, name, factor):
    result[name] *= factor
    result[f"{name}_ci"] = [value * factor for value in result[f"{name}_ci"]]


@pytest.mark.parametrize("edit, message", [
    # the hand edit of the issue: a bias with another cell's point interval
    (lambda result: result.update(bias=123, bias_ci=[1.4e-16, 1.4e-16]),
     "bias 123.0 lies outside its 95% interval [1.4e-16, 1.4e-16]"),
    (lambda result: result.update(variance=-0.5, variance_ci=[-1, 0]),
     "variance is -0.5, below 0"),
    (lambda result: _scaled(result, "mse", 2), "is not bias^2 + variance"),
    (lambda result: result.update(cosine_ci=[0.5, 1.5]), "cosine's interval [0.5, 1.5] leaves"),
    (lambda result: result.update(bias_raw=3 * result["bias_raw"] + 1),
     "does not follow from bias_raw"),
    (lambda result: result.update(bias=None, bias_ci=[None, None]),
     "bias, variance or mse is null, but no problem is given"),
    (lambda result: result.update(mse_x_trajectories=2 * result["mse_x_trajectories"]),
     "is not mse x trajectories"),
])
def test_a_line_whose_numbers_contradict_each_other_is_damaged(tmp_path, capsys, edit,
                                                                message):
    path = tmp_path / "r.jsonl"
    mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=20, exact=False, jsonl=path)
    line = json.loads(path.read_text())
    edit(line["result"])
    path.write_text("\n" + json.dumps(line) + "\n")
    with pytest.raises(mb.ResultsFileError) as info:
        mb.load_results(path)
    assert str(info.value).startswith(f"{path}:2: a damaged result (was the line edited?): ")
    assert message in str(info.value)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert "r.jsonl:2: a damaged result" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl"]


def test_results_of_earlier_statistics_are_still_read(tmp_path):
    """Before bias_raw (d237413), bias was |mean - truth|, often outside its own interval,
    and mse the mean squared error: those lines are genuine, not damaged."""
    path = tmp_path / "r.jsonl"
    mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=20, exact=False, jsonl=path)
    line = json.loads(path.read_text())
    result = line["result"]
    for name in ("bias_raw", "cosine_raw", "correlation_raw"):
        result.pop(name)
    result.update(bias=2 * result["bias_ci"][1] + 1e-3, mse=result["mse"] * 1.01,
                  mse_x_trajectories=result["mse"] * 1.01 * result["trajectories"])
    path.write_text(json.dumps(line) + "\n")
    (loaded,) = mb.load_results(path)
    assert loaded.records[0]["bias"] == result["bias"]


@pytest.mark.parametrize("edit, message", [
    (lambda result: result.update(variance="abc"), "'variance' is 'abc'; expected a finite"),
    (lambda result: result.pop("variance"), "the result has no 'variance'"),
    (lambda result: result.update(bias=float("nan")), "'bias' is nan"),
    (lambda result: result.update(mse_ci=[1.0]), "'mse_ci' is [1.0]"),
])
def test_a_line_with_broken_fields_is_one_error_naming_it(tmp_path, edit, message):
    path = tmp_path / "r.jsonl"
    mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=20, jsonl=path)
    line = json.loads(path.read_text())
    edit(line["result"])
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(mb.ResultsFileError, match=re.escape("r.jsonl:1: ")) as info:
        mb.load_results(path)
    assert message in str(info.value)


def test_an_edited_line_is_caught_by_its_key(tmp_path):
    path = tmp_path / "r.jsonl"
    mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=20, jsonl=path)
    path.write_text(path.read_text().replace('"n_trials": 20', '"n_trials": 21'))
    with pytest.raises(mb.ResultsFileError, match="does not match its config"):
        mb.load_results(path)


def test_a_full_disk_is_one_error_and_earlier_results_stay(tmp_path, monkeypatch):
    """What a write failure looks like to a store's caller (what it leaves in the file is
    core.files' rule, tested in test_files.py)."""
    path = tmp_path / "r.jsonl"
    mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=20, jsonl=path)
    before = path.read_bytes()

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.files, "append_lines", full)
    with pytest.raises(mb.ResultsFileError, match="cannot write results to .*r.jsonl: No space "
                                                  "left on device; results written before"):
        mb.evaluate(bandit(), ["lsf"], n_inner=[2, 4], n_trials=20, jsonl=path)
    assert path.read_bytes() == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_is_one_line_from_the_cli(capsys):
    code = main(["run", "--task", "bandit-v0", "--estimators", "lsf", "--n-inner", "2",
                 "--trials", "10", "--quiet", "--json", "/dev/full"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and err.count("\n") == 1


@pytest.mark.slow
def test_sigkill_then_the_same_command_gives_the_uninterrupted_file(tmp_path):
    """Kill -9 after the first cells are written, run the same command again: the file is
    the one an uninterrupted run writes (timing aside)."""
    argv = ["run", "--task", "tabular-v0", "--task-param", "n_states=3",
            "--task-param", "n_actions=2", "--task-param", "horizon=3",
            "--estimators", "lsf,maml", "--n-inner", "1,2,3,4,5,6,7,8", "--trials", "200",
            "--truth", "limit", "--quiet"]
    killed, whole = tmp_path / "killed.jsonl", tmp_path / "whole.jsonl"
    code, _ = signal_when_written(argv + ["--json", str(killed)], 2, signal.SIGKILL)
    n_before = killed.read_bytes().count(b"\n")
    assert code == -signal.SIGKILL and 2 <= n_before < 16
    done = subprocess.run(cli_command(argv + ["--json", str(killed)]), capture_output=True)
    assert done.returncode == 0, done.stderr
    assert main(argv + ["--json", str(whole)]) == 0       # uninterrupted, in-process
    assert without_timing(killed) == without_timing(whole)


# ---- every bad input: one line (CLI, exit 2) or a typed error (API); files untouched --------

@pytest.fixture(scope="module")
def earlier_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("earlier") / "keep.jsonl"
    mb.evaluate(bandit(), ["lsf", "maml"], **SMALL, jsonl=path)
    return path.read_bytes()


RUN = ["run", "--task", "bandit-v0", "--estimators", "lsf", "--n-inner", "2", "--trials", "10",
       "--quiet", "--max-memory", "4GiB"]


@pytest.mark.parametrize("argv, message", [
    (RUN + ["--inner-lr", "nan"], "expected a finite number"),
    (RUN + ["--inner-lr", "inf"], "expected a finite number"),
    (RUN + ["--seed", "-1"], "expected an integer >= 0"),
    (RUN + ["--n-inner", "100000000"], "more than"),
    (RUN + ["--n-outer", "1000000000000"], "of memory, more than"),
    (RUN + ["--trials", "1000000000"], "of memory, more than"),
    (RUN[:2] + ["tabular-v0"] + RUN[3:] + ["--truth-samples", "1000000000000"],
     "of memory, more than"),
    (RUN[:2] + ["tabular-v0", "--task-param", "n_states=100000"] + RUN[3:],
     "n_states=100000, n_actions=4, n_tasks=1 needs about"),
    (RUN + ["--n-inner", "256", "--trials", "50000000"], "trajectory steps, more than"),
    (RUN + ["--device", "meta"], "device 'meta' holds no data"),
    (RUN + ["--device", "nonsense"], "device 'nonsense' is not available"),
    (RUN + ["--max-memory", "lots"], "--max-memory must be a size"),
    (RUN + ["--target-rel-ci", "nan"], "expected a finite number"),
    (RUN + ["--target-rel-ci", "0"], "--target-rel-ci must be > 0"),
    (RUN + ["--max-trials", "100"], "caps adaptive trials: it needs --target-rel-ci"),
    (RUN + ["--target-rel-ci", "0.1", "--max-trials", "1"], "must be at least --trials"),
    (RUN + ["--target-rel-ci", "0.1", "--target-metric", "cosine"], "invalid choice"),
    (["check", "--factor", "nan", "--save", "x.json"], "expected a finite number"),
    (["check", "--z", "nan", "--save", "x.json"], "expected a finite number"),
    (["check", "--factor", "1", "--save", "x.json"], "--factor must be > 1"),
])
def test_bad_input_is_one_line_and_leaves_the_results_file_byte_identical(
        tmp_path, capsys, earlier_results, argv, message):
    keep = tmp_path / "keep.jsonl"
    keep.write_bytes(earlier_results)
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv + (["--json", str(keep)] if argv[0] == "run" else [])))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert keep.read_bytes() == earlier_results


@pytest.mark.parametrize("name, content, message", [
    ("binary.jsonl", bytes(range(256)), "binary data"),
    ("latin1.jsonl", "café\n".encode("latin-1"), "not UTF-8"),
    ("array.jsonl", b"[{}, {}]\n", "a JSON list"),
])
def test_a_foreign_results_file_is_one_line_and_stays_byte_identical(tmp_path, capsys, name,
                                                                    content, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(RUN + ["--json", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and path.read_bytes() == content


@pytest.mark.parametrize("content", [bytes(range(256)), "é".encode("latin-1"), b"[1, 2]"])
def test_a_foreign_baseline_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "baseline.json"
    path.write_bytes(content)
    assert main(["check", "--baseline", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--baseline" in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_json_flag_needs_a_path(capsys):
    assert main(RUN + ["--json", ""]) == 2
    assert "--json must be a file path" in capsys.readouterr().err


def test_an_overflowing_cell_is_reported_not_averaged(tmp_path, capsys, earlier_results):
    keep = tmp_path / "keep.jsonl"
    keep.write_bytes(earlier_results)
    assert main(RUN + ["--inner-lr", "1e300", "--n-inner", "2,4", "--json", str(keep)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "no statistics" in captured.err
    assert "overflow float64" in captured.out
    assert keep.read_bytes().startswith(earlier_results)       # appended, never truncated
    records = {r["n_inner"]: r for r in mb.load_results(keep)[-1].records}
    assert records[4]["bias"] is None and records[4]["cosine"] is None
    assert "overflow" in records[4]["problem"]
    result = mb.evaluate(bandit(), ["lsf"], n_inner=[4], n_trials=10, inner_lr=1e300)
    assert result.records[0]["mse"] is None and result.records[0]["problem"]


def test_a_nan_estimate_is_counted(monkeypatch):
    spec = mb.estimator_spec("lsf")

    def half_nan(*args, **kwargs):
        out = spec.fn(*args, **kwargs)
        out[::2] = float("nan")
        return out

    mb.register_estimator("half-nan", half_nan)
    try:
        (record,) = mb.evaluate(bandit(), ["half-nan"], n_inner=[2], n_trials=10).records
    finally:
        from metarl_bench._src.core import registry
        registry.ESTIMATORS.pop("half-nan")
    assert record["n_nonfinite"] == 5 and record["bias"] is None
    assert record["problem"] == "5 of 10 estimates are not finite"


@pytest.mark.parametrize("returned, error, message", [
    (lambda n, theta: theta.new_zeros(n, 7), mb.ShapeError,
     r"returned shape \(1, 7\); expected \(1, 3\)"),
    (lambda n, theta: [0.0] * n, mb.ShapeError, "returned a list"),
    (lambda n, theta: theta.new_zeros(n, 3, dtype=torch.long), mb.ShapeError,
     "returned dtype int64; expected theta's dtype float64"),
    (lambda n, theta: theta.new_zeros(n, 3, dtype=torch.float32), mb.ShapeError,
     "returned dtype float32; expected theta's dtype float64"),
])
def test_an_estimator_returning_the_wrong_thing_is_named(returned, error, message):
    def broken(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None, generator=None):
        return returned(n_trials, theta)

    mb.register_estimator("broken", broken)
    try:
        with pytest.raises(error, match=f"estimator 'broken' {message}"):
            mb.evaluate(bandit(), ["broken"], n_inner=[2], n_trials=3)
    finally:
        from metarl_bench._src.core import registry
        registry.ESTIMATORS.pop("broken")


@pytest.mark.parametrize("name", ["a:b", "c,d", "e=f", "g h", ""])
def test_a_name_the_entry_grammar_cannot_reach_is_refused(name):
    def estimator(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None, generator=None):
        return theta.new_zeros(n_trials, *theta.shape)

    with pytest.raises(mb.RegistrationError, match="estimator name"):
        mb.register_estimator(name, estimator)
    assert name not in mb.list_estimators()


def test_an_estimator_with_the_wrong_signature_is_named():
    from metarl_bench._src.core import registry

    def positional(task, theta, n, lr):
        return theta

    # registered directly, as a plug-in could before registration checked signatures
    registry.ESTIMATORS["positional"] = registry.EstimatorSpec("positional", positional)
    try:
        with pytest.raises(mb.UnsupportedError, match="estimator 'positional' cannot be called"):
            mb.evaluate(bandit(), ["positional"], n_inner=[2], n_trials=3)
    finally:
        registry.ESTIMATORS.pop("positional")


def test_api_guards_and_devices():
    with pytest.raises(mb.ResourceError, match="more than 1 KiB"):
        mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=10, max_memory="1KiB")
    with pytest.raises(mb.ResourceError, match="max_work=None"):
        mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=10, max_work=5)
    with pytest.raises(mb.ParameterError, match="max_memory must be a size"):
        mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=10, max_memory="big")
    with pytest.raises(mb.ParameterError, match="'meta' holds no data"):
        mb.evaluate(bandit(), ["lsf"], device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(mb.ParameterError, match="'cuda' is not available"):
            mb.evaluate(bandit(), ["lsf"], device="cuda")
    with pytest.raises(mb.ResourceError, match="estimate_meta_gradient"):
        task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
        mb.estimate_meta_gradient(task, task.initial_params(), n_inner=4, inner_lr=1.0,
                                  n_samples=10 ** 13)
    with pytest.raises(mb.ParameterError, match="progress must be"):
        mb.evaluate(bandit(), ["lsf"], n_inner=[2], n_trials=10, progress="yes")
