"""Every command shown in README.md is run (the cheap ones, in a temporary folder) or parsed
by the real command-line parser (the expensive ones), so that none goes stale; its Python
example is run too.

The checks work on any Markdown page: add a page to DOCUMENTS (and its cheap commands to
RUN) to hold it to the same rule. A command no check knows fails, so a new kind of command
gets a check when it is first shown.
"""

import os
import re
import shlex

import pytest

from metarl_bench._src.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The pages whose commands are checked.
DOCUMENTS = ["README.md"]
#: Commands run for real, in the order they appear, in one temporary folder per page (a
#: line starting with one of these); every other metarl-bench command is parsed only.
RUN = ("metarl-bench list", "metarl-bench run --task bandit-v0", "metarl-bench report")


def code_blocks(page: str, language: str) -> list[str]:
    with open(os.path.join(ROOT, page), encoding="utf-8") as handle:
        text = handle.read()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def commands(page: str) -> list[str]:
    """The shell commands of a page's bash blocks: continuation lines joined, comments
    dropped, ``a && b`` split, the venv's ``.venv/bin/`` prefix removed."""
    found = []
    for block in code_blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            for command in line.split("&&"):
                found.append(re.sub(r"^\.venv/bin/", "", command.strip()))
    return found


def optional_dependencies() -> set[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    markers = project["tool"]["pytest"]["ini_options"].get("markers", [])
    return set(project["project"]["optional-dependencies"]), {m.split(":")[0] for m in markers}


def no_deps_pins() -> list[str]:
    """What pyproject.toml says to install with --no-deps ([tool.metarl-bench] no-deps)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)["tool"]["metarl-bench"]["no-deps"]


def check_pip(args: list[str]) -> None:
    extras, _ = optional_dependencies()
    assert args[0] == "install", args
    for arg in args[1:]:
        if arg in no_deps_pins():  # the exact pin, and only beside --no-deps
            assert "--no-deps" in args, f"pip install {arg} needs --no-deps"
            continue
        match = re.fullmatch(r"(.*?)(\[([\w,-]+)\])?", arg.strip("'\""))
        path, _, wanted = match.groups()
        if path.startswith(("-", "torch==")):
            continue
        assert os.path.exists(os.path.join(ROOT, path)), f"pip install of a missing {path}"
        assert set((wanted or "").split(",")) - {""} <= extras, f"unknown extra in {arg}"


def check_pytest(args: list[str]) -> None:
    _, markers = optional_dependencies()
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-m":
            names = set(re.findall(r"\w+", args[index + 1])) - {"not", "and", "or"}
            assert names <= markers, f"unregistered marker in -m {args[index + 1]!r}"
            index += 1
        elif not re.fullmatch(r"--durations=\d+|-q|-x|-k", arg):
            assert os.path.exists(os.path.join(ROOT, arg.split("::")[0])), \
                f"pytest argument {arg!r}: no such option check or path"
        index += 1


def check_command(command: str, run: bool) -> None:
    argv = shlex.split(command)
    program, args = argv[0], argv[1:]
    if program == "metarl-bench":
        for arg in args:  # a file the command reads from the repository must exist
            if arg.endswith((".toml", ".yaml", ".yml")):
                assert os.path.exists(os.path.join(ROOT, arg)), f"{command}: no {arg}"
        if run:
            assert main(args) == 0, command
        else:
            build_parser().parse_args(args)          # argparse exits 2 on a stale flag
    elif program == "pip":
        check_pip(args)
    elif program in ("python", "python3") and args[:2] == ["-m", "pytest"]:
        check_pytest(args[2:])
    elif program == "python3" and args[:2] == ["-m", "venv"]:
        assert len(args) == 3, command
    else:
        pytest.fail(f"no check for the command {command!r}: run it here, or parse it")


@pytest.mark.parametrize("page", DOCUMENTS)
def test_every_command_of_the_page_runs_or_parses(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shown = commands(page)
    assert shown, f"{page} shows no command"
    for command in shown:
        check_command(command, run=command.startswith(RUN))
    capsys.readouterr()


@pytest.mark.parametrize("page", DOCUMENTS)
def test_the_python_examples_of_the_page_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for block in code_blocks(page, "python"):
        exec(compile(block, f"{page} (python block)", "exec"), {"__name__": "__readme__"})
    assert "lsf" in capsys.readouterr().out


def test_the_readme_is_a_landing_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    assert len(text.splitlines()) <= 250
    assert text.split("\n## ")[1].startswith("Quickstart"), "Quickstart comes first"
    for link in re.findall(r"\]\(([^)#]+)", text):
        assert os.path.exists(os.path.join(ROOT, link)), f"README links to a missing {link}"
    for command in ("list", "run", "sweep", "report", "reproduce", "train", "check"):
        assert f"metarl-bench {command}" in text, f"README does not show {command}"
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text.replace("torch==2.13.0", "")), \
        "README quotes a commit hash"


def test_every_parsed_command_names_its_handler():
    parser = build_parser()
    for argv in (["list"], ["run"], ["sweep", "spec.toml"], ["report", "r.jsonl"],
                 ["reproduce", "tang2022"], ["train", "--task", "bandit-v0"],
                 ["check", "--save", "s.json"]):
        assert callable(parser.parse_args(argv).handler), argv
