"""The guard of ../conftest.py: a test that writes into its working directory fails, and a
run that changes the repository's tree fails, whatever path the write took."""

import shutil
import subprocess
import sys

from conftest import REPO

WRITES = '''
import os
from pathlib import Path

def test_into_the_working_directory():
    Path("metarl-bench-results").mkdir()

def test_into_the_repository():
    (Path(__file__).parent / "results.jsonl").write_text("{}")

def test_into_tmp_path(tmp_path):
    (tmp_path / "fine.txt").write_text("x")
    assert os.listdir(".") == []
'''


def test_writes_outside_a_temporary_folder_fail_the_run(tmp_path):
    shutil.copy(REPO / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (tmp_path / "test_writes.py").write_text(WRITES)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_writes.py"], cwd=tmp_path, capture_output=True, text=True)
    out = done.stdout
    assert done.returncode == 1, out
    assert "test_into_the_working_directory wrote ['metarl-bench-results'] into its working " \
           "directory" in out
    assert "the test run changed the repository's tree (tests must write into a temporary " \
           "folder): new results.jsonl" in out
    assert "3 passed, 1 error" in out, out
