"""Sweeps: spec checking, and the same bits on a 2-process Dask cluster as serially."""

import json
import os
import signal
import subprocess

import pytest

import metarl_bench as mb
from conftest import REPO, cli_command, signal_when_written
from metarl_bench._src.cli import main
from metarl_bench._src.evaluation.config import cell_key
from metarl_bench._src.evaluation.store import TIMING_FIELDS

SPEC = """
estimators = ["lsf", "maml"]
n_inner = [2, 8]
seeds = [0, 1]
n_trials = 40

[[tasks]]
name = "bandit-v0"
inner_lr = [2.0]

[[tasks]]
name = "tabular-v0"
params = { n_states = 3, n_actions = 2, horizon = 3 }
truth_samples = 200
"""

YAML_SPEC = """
estimators: [lsf, maml]
n_inner: [2, 8]
seeds: [0, 1]
n_trials: 40
tasks:
  - name: bandit-v0
    inner_lr: [2.0]
  - name: tabular-v0
    params: {n_states: 3, n_actions: 2, horizon: 3}
    truth_samples: 200
"""


def lines_by_key(path):
    out = {}
    for text in open(path):
        line = json.loads(text)
        for name in TIMING_FIELDS:
            line["result"].pop(name)
        out[line["key"]] = line
    return out


def run(argv):
    return main(["sweep", *argv, "--quiet"])


def test_dask_with_two_workers_writes_the_same_bits_as_serial_and_resumes(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    serial, dask = tmp_path / "serial.jsonl", tmp_path / "dask.jsonl"
    assert run([str(spec), "--json", str(serial), "--serial"]) == 0
    assert run([str(spec), "--json", str(dask), "--workers", "2"]) == 0
    by_serial, by_dask = lines_by_key(serial), lines_by_key(dask)
    assert len(by_serial) == 16 and by_serial == by_dask
    # the sweep's cells are the cells evaluate computes, bit for bit
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    direct = mb.evaluate(task, ["lsf", "maml"], n_inner=[2, 8], n_trials=40, seed=1,
                         truth_samples=200)
    for record in direct.records:
        stored = by_serial[record["key"]]["result"]
        assert stored["bias"] == record["bias"] and stored["variance"] == record["variance"]
    before = dask.read_bytes()
    capsys.readouterr()
    assert run([str(spec), "--json", str(dask), "--workers", "2"]) == 0   # resume: nothing to do
    assert dask.read_bytes() == before
    assert "0 cells computed, 16 already in the store" in capsys.readouterr().out


def test_yaml_and_toml_specs_expand_to_the_same_cells(tmp_path):
    from metarl_bench._src.evaluation.sweep import build, read_spec

    (tmp_path / "a.toml").write_text(SPEC)
    (tmp_path / "a.yaml").write_text(YAML_SPEC)
    keys = [[c for p in build(read_spec(str(tmp_path / name))).plans for c in p.configs]
            for name in ("a.toml", "a.yaml")]
    assert keys[0] == keys[1] and len(keys[0]) == 16


@pytest.mark.parametrize("text, message", [
    ("[[tasks]]\nname = 'bandit-v0'\nestimator = ['lsf']\n",
     "unknown key 'estimator'. Did you mean 'estimators'?"),
    ("n_inner = [2]\n", "'tasks' must list at least one task"),
    ("[[tasks]]\nname = 'bandit'\n", "spec.toml: tasks[1]: unknown task 'bandit'. Did you mean "
                                   "'bandit-v0'?"),
    ("[[tasks]]\nname = 'bandit-v0'\n[[tasks]]\nname = 'bandit-v0'\nparams = { nope = 1 }\n",
     "spec.toml: tasks[2]: unknown parameter 'nope' for task 'bandit-v0'"),
    ("[[tasks]]\nname = 'tabular-v0'\nparams = { n_states = 0 }\n",
     "spec.toml: tasks[1]: n_states must be"),
    ("n_outer = ['sampled']\n[[tasks]]\nname = 'bandit-v0'\n", "n_outer values must be"),
    ("inner_lr = [nan]\n[[tasks]]\nname = 'bandit-v0'\n", "inner_lr must be finite"),
    ("n_trials = 1\n[[tasks]]\nname = 'bandit-v0'\n", "n_trials must be an integer >= 2"),
    ("[[tasks]]\nname = 'bandit-v0'\nestimators = ['lsff']\n", "Did you mean 'lsf'?"),
    ("tasks = [1, 2\n", "does not parse"),
    ("[[tasks]]\nname = 'bandit-v0'\n", "no 'output' in the spec"),
])
def test_a_bad_spec_is_one_line_and_writes_nothing(tmp_path, capsys, text, message):
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    keep = tmp_path / "keep.jsonl"
    argv = [str(spec)] + (["--json", str(keep)] if "output" not in message else [])
    assert run(argv + ["--serial"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not keep.exists()


def test_the_example_spec_is_valid():
    from metarl_bench._src.evaluation.sweep import build, read_spec

    sweep = build(read_spec(REPO / "examples" / "sweeps" / "small.toml"))
    assert sweep.output and sum(len(p.configs) for p in sweep.plans) == 80


def test_the_spec_output_folder_is_made_once_every_check_has_passed(tmp_path, monkeypatch,
                                                                     capsys):
    """As the example spec is run (``output = "results/small-sweep.jsonl"``, no results/
    folder yet): the folder is made, as run makes its --out; a refused command makes none."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.toml"
    spec.write_text('output = "results/small.jsonl"\nestimators = ["lsf"]\nn_inner = [2]\n'
                    'n_trials = 10\n[[tasks]]\nname = "bandit-v0"\n')
    assert run([str(spec), "--serial", "--max-memory", "1KiB"]) == 2
    assert "needs about" in capsys.readouterr().err
    assert run([str(spec), "--serial", "--workers", "100000"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["spec.toml"]
    assert run([str(spec), "--serial"]) == 0
    assert "results: results/small.jsonl" in capsys.readouterr().out
    assert len((tmp_path / "results" / "small.jsonl").read_text().splitlines()) == 1
    assert run([str(spec), "--serial"]) == 0                # resumes: nothing new
    assert len((tmp_path / "results" / "small.jsonl").read_text().splitlines()) == 1
    (tmp_path / "afile").write_text("keep")
    assert run([str(spec), "--serial", "--json", str(tmp_path / "afile" / "r.jsonl")]) == 2
    assert "--json 'afile' exists and is not a folder" in capsys.readouterr().err.replace(
        str(tmp_path) + os.sep, "")


def test_n_steps_is_a_sweep_axis_in_the_cell_key_only_beyond_one_step(tmp_path, capsys):
    spec = tmp_path / "steps.toml"
    spec.write_text('estimators = ["lsf"]\nn_inner = [2]\nn_steps = [1, 2]\nn_trials = 20\n'
                    '[[tasks]]\nname = "bandit-v0"\ninner_lr = [2.0]\n')
    store = tmp_path / "steps.jsonl"
    assert run([str(spec), "--json", str(store), "--serial"]) == 0
    lines = lines_by_key(store)
    by_steps = {line["config"].get("n_steps", 1): line for line in lines.values()}
    assert len(lines) == 2 and set(by_steps) == {1, 2}
    # one step: no n_steps in the configuration, so the key is the one stores had before
    assert "n_steps" not in by_steps[1]["config"] and by_steps[2]["config"]["n_steps"] == 2
    task = mb.make_task("bandit-v0")
    for n_steps, line in by_steps.items():
        (record,) = mb.evaluate(task, ["lsf"], n_inner=[2], n_trials=20, inner_lr=2.0,
                                n_steps=n_steps).records
        assert record["key"] == line["key"]
        assert record["bias"] == line["result"]["bias"]
    capsys.readouterr()
    assert run([str(spec), "--json", str(store), "--serial"]) == 0   # resume: nothing to do
    assert "0 cells computed, 2 already in the store" in capsys.readouterr().out
    spec.write_text(spec.read_text().replace("n_steps = [1, 2]", "n_steps = [0]"))
    assert run([str(spec), "--json", str(tmp_path / "bad.jsonl"), "--serial"]) == 2
    assert "n_steps must be" in capsys.readouterr().err


SMALL_SPEC = ("estimators = ['lsf']\nn_inner = [2, 4]\nn_trials = 20\n"
              "[[tasks]]\nname = 'bandit-v0'\n")


@pytest.mark.parametrize("argv, message", [
    (["--workers", "100000"], "--workers 100000: a local cluster takes at most 4 worker "
                              "processes per CPU"),
    (["--workers", "2", "--max-memory", "1KiB"],
     "more than 512 B (--max-memory 1 KiB shared by 2 workers)"),
    (["--serial", "--max-memory", "1KiB"], "more than 1 KiB (the limit set by --max-memory)"),
])
def test_workers_and_memory_refusals_are_one_line_and_write_nothing(tmp_path, capsys, argv,
                                                                   message):
    spec = tmp_path / "spec.toml"
    spec.write_text(SMALL_SPEC)
    store = tmp_path / "store.jsonl"
    assert run([str(spec), "--json", str(store), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not store.exists()


def test_the_default_memory_limit_says_it_is_shared(tmp_path, capsys, monkeypatch):
    from metarl_bench._src.core import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 2048)
    spec = tmp_path / "spec.toml"
    spec.write_text(SMALL_SPEC)
    assert run([str(spec), "--json", str(tmp_path / "store.jsonl"), "--workers", "2"]) == 2
    assert ("more than 512 B (50% of the available memory, shared by 2 workers)"
            in capsys.readouterr().err)


def test_a_local_cluster_has_no_more_workers_than_cells_to_compute(tmp_path, monkeypatch):
    from metarl_bench._src.evaluation import sweep as sweep_module
    from metarl_bench._src.evaluation.store import Store

    started = []
    monkeypatch.setattr(sweep_module, "_run_on_dask",
                        lambda sweep, todo, store, scheduler, workers, *rest:
                        started.append(workers))
    spec = tmp_path / "spec.toml"
    spec.write_text(SMALL_SPEC)
    checked = sweep_module.build(sweep_module.read_spec(str(spec)))
    store = Store(tmp_path / "store.jsonl")
    sweep_module.run_sweep(checked, store, workers=8)
    assert started == [2]     # two cells: two processes, not eight


INTERRUPTED_SPEC = """
estimators = ["lsf", "maml"]
n_inner = [1, 2, 3, 4, 5, 6, 7, 8]
n_trials = 1000
truth = "limit"

[[tasks]]
name = "tabular-v0"
params = { n_states = 3, n_actions = 2, horizon = 3 }
"""
@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_cells_and_the_same_command_completes_them(tmp_path):
    """SIGINT after the first cell lands: exit 130 with one line counting the cells kept;
    the same command again gives the file an uninterrupted sweep writes (timing aside)."""
    spec = tmp_path / "spec.toml"
    spec.write_text(INTERRUPTED_SPEC)
    interrupted, whole = tmp_path / "interrupted.jsonl", tmp_path / "whole.jsonl"
    argv = ["sweep", str(spec), "--json", str(interrupted), "--serial", "--quiet"]
    code, err = signal_when_written(argv, 1, signal.SIGINT)
    kept = interrupted.read_bytes().count(b"\n")
    assert code == 130 and 1 <= kept < 16, (code, kept, err)
    assert err == (f"metarl-bench: interrupted; {kept} finished cells of this run kept in "
                   f"{interrupted}: the same command resumes\n")
    done = subprocess.run(cli_command(argv), capture_output=True)
    assert done.returncode == 0, done.stderr
    assert f"{16 - kept} cells computed, {kept} already in the store" in done.stdout.decode()
    assert run([str(spec), "--json", str(whole), "--serial"]) == 0
    assert lines_by_key(interrupted) == lines_by_key(whole)


def test_a_store_line_of_an_older_key_is_reported_by_the_sweep_and_not_reused(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('estimators = ["lsf"]\nn_inner = [2]\nn_trials = 20\n\n'
                    '[[tasks]]\nname = "bandit-v0"\ninner_lr = [2.0]\n')
    out = tmp_path / "out.jsonl"
    assert main(["sweep", str(spec), "--json", str(out), "--quiet", "--serial"]) == 0
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    # the same cell as a version whose key held an argument today's factory does not take
    line["config"]["task_params"]["arms_layout"] = "old"
    line["key"] = cell_key(line["config"])
    out.write_text(json.dumps(line) + "\n")
    capsys.readouterr()
    assert main(["sweep", str(spec), "--json", str(out), "--quiet", "--serial"]) == 0
    err = capsys.readouterr().err
    (note,) = [text for text in err.splitlines() if "ignored" in text]
    assert "1 line of" in note and "arms_layout" in note
    assert len(out.read_text().splitlines()) == 2  # computed again, appended
