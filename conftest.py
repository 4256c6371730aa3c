"""What every pytest run in this repository keeps (tests/ and benchmarks/pytest/ alike):
tests never write outside a temporary folder.

* Each test runs with a fresh, empty temporary folder as its working directory, so a command
  with default output paths (``metarl-bench run``'s ``metarl-bench-results/``, ``train``'s
  ``train.jsonl``) writes there, never into the folder pytest was started from (where a
  user's own results may be). A test that leaves a file in it fails: it should say where it
  writes (``tmp_path``, or ``monkeypatch.chdir(tmp_path)`` when the default path is tested).
* The run fails if the repository's tree gained, lost or changed a file while it ran
  (caches and environments excepted), whatever path a test wrote through.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
#: Folders a run may write to: caches, virtual environments, asv's and pytest-benchmark's
#: storage (the latter only when asked, with --benchmark-autosave or --benchmark-save).
_UNWATCHED = {".git", ".venv", "__pycache__", ".asv", ".benchmarks", ".pytest_cache"}
_SNAPSHOT = pytest.StashKey[dict]()


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, modification time) of every file under ``root`` outside the
    unwatched folders."""
    state = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders
                         if name not in _UNWATCHED and not name.endswith(".egg-info")]
        for name in files:
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError:  # removed while walking
                continue
            state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return state


def tree_changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
                 ) -> list[str]:
    return sorted([f"new {path}" for path in after.keys() - before.keys()]
                  + [f"removed {path}" for path in before.keys() - after.keys()]
                  + [f"changed {path}" for path in before.keys() & after.keys()
                     if before[path] != after[path]])


def pytest_sessionstart(session):
    session.config.stash[_SNAPSHOT] = tree_state(REPO)


def pytest_sessionfinish(session, exitstatus):
    changes = tree_changes(session.config.stash[_SNAPSHOT], tree_state(REPO))
    if changes:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = ("the test run changed the repository's tree (tests must write into a "
                   "temporary folder): " + ", ".join(changes[:20])
                   + (f" and {len(changes) - 20} more" if len(changes) > 20 else ""))
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _in_an_empty_temporary_folder(request, tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    yield
    left = sorted(os.listdir(folder))
    if left:
        pytest.fail(f"{request.node.nodeid} wrote {left} into its working directory; write "
                    f"into tmp_path (or monkeypatch.chdir(tmp_path) to test a default path)",
                    pytrace=False)
