"""Shared fixtures. Randomized tests use fixed seeds; each states its tolerance and how
it may fail (a seed may change only with a note in the commit saying why)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metarl_bench as mb

#: The repository's root; tests run in an empty temporary folder (../conftest.py).
REPO = Path(__file__).resolve().parents[1]

# A published independent check: 3 arms, r = (1, 0, 0.5), theta = (0, 0.5, -0.5),
# eta = 2, exact outer.
SCIENCE_BANDIT = dict(rewards=[1.0, 0.0, 0.5], init_logits=[0.0, 0.5, -0.5])
SCIENCE_LR = 2.0


@pytest.fixture
def science_bandit():
    return mb.make_task("bandit-v0", **SCIENCE_BANDIT)


@pytest.fixture
def small_mdp():
    return mb.make_task("tabular-v0", n_states=4, n_actions=3, horizon=4, gamma=0.9, seed=1)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


#: A child process running the command line that sends itself a signal right after the write
#: that brings its output file to a given number of lines: a deterministic point, however
#: fast or loaded the machine (a parent polling the file and signalling could land anywhere
#: from "before the first line" to "after the last"). SIGINT gets Python's default handler,
#: as in a terminal (a shell's background jobs inherit it ignored).
SIGNAL_AFTER = """
import os, signal, sys
from metarl_bench._src.evaluation.store import Store
from metarl_bench._src.training.state import TrainingFiles

signum, lines = int(sys.argv[1]), int(sys.argv[2])


def signalling(write):
    def wrapped(self, *args, **kwargs):
        write(self, *args, **kwargs)
        with open(self.path, "rb") as handle:
            if handle.read().count(b"\\n") >= lines:
                os.kill(os.getpid(), signum)
    return wrapped


Store.append = signalling(Store.append)
TrainingFiles._append = signalling(TrainingFiles._append)
signal.signal(signal.SIGINT, signal.default_int_handler)
from metarl_bench._src.cli import main
sys.exit(main(sys.argv[3:]))
"""


def cli_command(argv):
    """``metarl-bench ARGV`` as a subprocess command."""
    return [sys.executable, "-m", "metarl_bench._src.cli", *argv]


def signal_when_written(argv, lines, signum):
    """Run ``metarl-bench ARGV`` in a child that sends itself ``signum`` once its results
    store or training log holds ``lines`` lines; (return code, stderr)."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER, str(int(signum)), str(lines),
                           *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return done.returncode, done.stderr.decode(errors="replace")
