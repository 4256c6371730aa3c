"""Shared fixtures. Randomized tests use fixed seeds; each states its tolerance and how
it may fail (a seed may change only with a note in the commit saying why)."""

import subprocess
import time

import pytest
import torch

import metarl_bench as mb

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


def signal_when_written(command, path, lines, signum, seconds=60):
    """Start ``command``, send it ``signum`` once ``path`` holds ``lines`` complete lines (or
    after ``seconds``, or at once if it has ended), wait for it; (return code, stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and process.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.01)
        process.send_signal(signum)
        stderr = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    return process.returncode, stderr.decode(errors="replace")
