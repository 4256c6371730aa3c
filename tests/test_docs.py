"""Every command and snippet the documentation shows works as shown.

Fenced blocks of the Markdown files in ``DOCUMENTS``, by language:

* ``python``: run as pasted, each in a fresh interpreter whose working directory is an empty
  temporary folder; it must exit 0. (A snippet too slow for a test is made smaller in the
  document, never skipped here.)
* ``bash``: every ``metarl-bench`` command line (``\\`` continuations joined) must parse with
  the command line's own parser, so no flag, command or value a document shows is refused.
* ``console``: a transcript, ``$ metarl-bench ...`` lines followed by what they print. Each
  command runs (in a temporary folder, so it must be quick: a refusal, ``list``) and its
  stdout and stderr must read as shown, line wrapping aside; ``...`` in the shown output
  stands for any text.

Other blocks (``toml``, ``json``, synopses, untagged output) are not run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

#: The documents whose blocks are checked (README.md joins once it is rewritten: add it here).
DOCUMENTS = sorted((REPO / "docs").glob("*.md"))
_FENCE = re.compile(r"^(\s*)```\s*([\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int        # of the opening fence
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, dedented to their fence's indentation."""
    found, opened, body = [], None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if opened is None:
            if fence:
                opened, body = (number, fence.group(1), fence.group(2)), []
        elif fence and not fence.group(2):
            start, indent, language = opened
            found.append(Block(path, start, language, "\n".join(
                text[len(indent):] if text.startswith(indent) else text for text in body)))
            opened = None
        else:
            body.append(line)
    assert opened is None, f"{path}:{opened[0]}: a fenced block that never closes"
    return found


def of(language: str) -> list[Block]:
    return [block for path in DOCUMENTS for block in blocks(path) if block.language == language]


def command_lines(text: str) -> list[list[str]]:
    """The ``metarl-bench`` commands of a shell block, continuations joined, as argv lists
    without the program."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and Path(words[0]).name == "metarl-bench":
            commands.append(words[1:])
    return commands


@pytest.mark.parametrize("block", of("python"), ids=str)
def test_a_python_snippet_runs_as_pasted(block, tmp_path):
    done = subprocess.run([sys.executable, "-c", block.text], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, f"{block}:\n{done.stderr[-3000:]}"


def parse_error(argv: list[str]) -> str | None:
    """What the command line's parser says about ``argv``, or None when it accepts it."""
    from metarl_bench._src.cli import build_parser

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            return stderr.getvalue().strip() or "exits"
    return None


@pytest.mark.parametrize("block", of("bash"), ids=str)
def test_every_command_line_shown_parses(block):
    refused = [f"metarl-bench {shlex.join(argv)}: {parse_error(argv)}"
               for argv in command_lines(block.text) if parse_error(argv) is not None]
    assert refused == [], f"{block}"


def transcript(text: str) -> list[tuple[list[str], str]]:
    """(argv, shown output) of each ``$ metarl-bench`` line of a console block."""
    steps: list[tuple[list[str], list[str]]] = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("$ "):
            (argv,) = command_lines(line[2:]) or [None]
            assert argv is not None, f"not a metarl-bench command: {line}"
            steps.append((argv, []))
        else:
            steps[-1][1].append(line)
    return [(argv, "\n".join(shown)) for argv, shown in steps]


def reads_as_shown(output: str, shown: str) -> bool:
    """Whether ``output`` is ``shown`` up to line wrapping and whitespace, ``...`` in
    ``shown`` matching any text."""
    pattern = r"\s*".join(r".*?".join(map(re.escape, word.split("...")))
                          for word in shown.split())
    return re.fullmatch(r"\s*" + pattern + r"\s*", output, flags=re.DOTALL) is not None


@pytest.mark.parametrize("block", of("console"), ids=str)
def test_a_transcript_reads_as_the_command_prints(block, tmp_path, monkeypatch):
    from metarl_bench._src.cli import main

    monkeypatch.chdir(tmp_path)
    for argv, shown in transcript(block.text):
        output = io.StringIO()
        with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
            main(argv)
        assert reads_as_shown(output.getvalue(), shown), (
            f"{block}: metarl-bench {shlex.join(argv)} prints\n{output.getvalue()}")


def test_the_checks_see_what_is_wrong(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent("""
        Text.

          ```bash
          .venv/bin/metarl-bench run --task bandit-v0 \\
              --n-inner 1,2 --trials 10   # a comment
          pip install metarl-bench
          metarl-bench run --no-such-flag
          ```

        ```console
        $ metarl-bench report missing.jsonl
        metarl-bench: error: no results file
        'missing.jsonl'
        ```
        """).lstrip("\n"))
    bash, console = blocks(page)
    assert (bash.line, bash.language, console.language) == (3, "bash", "console")
    assert command_lines(bash.text) == [
        ["run", "--task", "bandit-v0", "--n-inner", "1,2", "--trials", "10"],
        ["run", "--no-such-flag"]]
    assert parse_error(command_lines(bash.text)[0]) is None
    assert "unrecognized arguments: --no-such-flag" in parse_error(command_lines(bash.text)[1])
    ((argv, shown),) = transcript(console.text)
    assert argv == ["report", "missing.jsonl"]
    assert reads_as_shown("metarl-bench: error: no results file 'missing.jsonl'\n", shown)
    assert not reads_as_shown("metarl-bench: error: no results file 'other.jsonl'\n", shown)
    assert reads_as_shown("a b c d", "a ... d") and not reads_as_shown("a b c", "a ... d")

