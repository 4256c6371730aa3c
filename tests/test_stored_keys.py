"""Stored keys never change: a results store written by an earlier version (tests/data) is
resumed by today's code with the commands that wrote it, and every cell is found, none
recomputed. A key that changes would silently recompute (or duplicate) every stored cell.

The commands are read from tests/data/README.md, so the test runs exactly what wrote the
file. A command whose cells may legitimately get new keys (a task that gained arguments its
identity was missing) is listed in EXCLUDED with the reason, and its lines are left out.
"""

import os
import re
import shlex
import shutil

import pytest

from metarl_bench._src.cli import main
from metarl_bench._src.evaluation import evaluate as evaluate_module
from metarl_bench._src.evaluation.store import Store, read_lines

DATA = os.path.join(os.path.dirname(__file__), "data")
STORE = os.path.join(DATA, "store_92246d3.jsonl")

#: task id -> why its stored cells may not resume (none today).
EXCLUDED: dict[str, str] = {}


def commands() -> list[list[str]]:
    """The ``run ...`` lines of tests/data/README.md, as argument lists."""
    with open(os.path.join(DATA, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    (prefix,) = re.findall(r"run\(\)\{ python -m metarl_bench\._src\.cli (.*?) \"\$@\"; \}", text)
    lines = [line[len("run "):] for line in text.splitlines() if line.startswith("run --")]
    return [shlex.split(prefix) + shlex.split(line) for line in lines]


def task_of(argv: list[str]) -> str:
    return argv[argv.index("--task") + 1]


def test_the_data_readme_lists_every_configuration_of_the_store():
    tasks = {line["config"]["task"] for _, line in read_lines(STORE)}
    assert len(commands()) == 9 and tasks == {task_of(argv) for argv in commands()}


def test_a_store_written_by_the_previous_version_resumes_without_recomputing_a_cell(
        tmp_path, monkeypatch, capsys):
    path = tmp_path / "store.jsonl"
    shutil.copyfile(STORE, path)
    before = path.read_bytes()
    asked: set[str] = set()
    contains = Store.__contains__

    def recording(self, key):
        asked.add(key)
        return contains(self, key)

    def recompute(*args, **kwargs):
        raise AssertionError("a stored cell was recomputed: its key changed")

    monkeypatch.setattr(Store, "__contains__", recording)
    monkeypatch.setattr(evaluate_module, "compute_cell", recompute)
    monkeypatch.setattr(evaluate_module, "compute_truth", recompute)
    monkeypatch.chdir(tmp_path)
    for argv in commands():
        if task_of(argv) in EXCLUDED:
            continue
        assert main([*argv, "--json", str(path)]) == 0, capsys.readouterr().err
    assert path.read_bytes() == before                         # nothing appended
    stored = {line["key"] for _, line in read_lines(path)
              if line["config"]["task"] not in EXCLUDED}
    assert len(stored) >= 20 and stored <= asked              # every stored key was asked for


@pytest.mark.parametrize("argv", commands(), ids=task_of)
def test_each_command_parses(argv):
    """The commands of the data README stay valid command lines (a renamed flag would
    otherwise only show as a resume failure)."""
    from metarl_bench._src.cli import build_parser

    build_parser().parse_args([*argv, "--json", "x.jsonl"])
