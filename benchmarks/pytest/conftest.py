"""pytest-benchmark suite of metarl_bench: set-up shared by its tests and the summary tables.

Run from the repository root (the plain ``pytest`` run only collects ``tests/``)::

    python -m pytest benchmarks/pytest --benchmark-only [--benchmark-json PATH]
"""

import math
import os
import sys
from pathlib import Path

import pytest
import torch

# The grid lives in benchmarks/common.py (shared with the asv suite); make it importable
# however pytest was started (`pytest` does not put the working directory on sys.path).
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption(
        "--torch-threads", type=int, default=None, metavar="N",
        help="torch intra-op threads for the run (default: torch's own choice). With as many "
             "threads as cores, any other load on the machine stalls torch's thread pool and "
             "inflates the batched timings far more than the per-trial ones; 1 is steadier.")


def pytest_configure(config):
    config.stash[RESULTS] = {"cells": {}, "speedup": {}, "ratios": {}, "throughput": {}}
    threads = config.getoption("--torch-threads")
    if threads is not None:
        torch.set_num_threads(threads)


def pytest_benchmark_update_machine_info(config, machine_info):
    # the JSON's machine_info knows the CPU but not how torch used it
    machine_info["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}


@pytest.fixture(scope="session")
def results(request):
    """What the tests measured, for the tables printed at the end of the run."""
    return request.config.stash[RESULTS]


def _fmt(value, spec=".3g"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _ms(seconds):
    return "-" if seconds is None else f"{1e3 * seconds:.1f} ms"


# after pytest-benchmark's own tables, so these are the last thing on the screen
@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stash = config.stash.get(RESULTS, None)
    if not stash or not (stash["cells"] or stash["speedup"] or stash["ratios"]
                         or stash["throughput"] or stash.get("mujoco")
                         or stash.get("metaworld")):
        return
    write = terminalreporter.write_line
    if stash.get("mujoco"):
        _mujoco_summary(terminalreporter, stash["mujoco"])
    if stash.get("metaworld"):
        _metaworld_summary(terminalreporter, stash["metaworld"])
    if stash["cells"]:
        terminalreporter.section("metarl_bench: statistics and memory per cell")
        header = (f"{'cell':<22} {'median':>10} {'peak alloc':>11} {'bias':>9} {'variance':>9} "
                  f"{'mse':>9} {'cosine':>7} {'moments':>11} {'traj':>5}")
        write(header)
        for cell, info in stash["cells"].items():
            peak = info.get("peak_allocated_bytes")
            write(f"{cell:<22} {_ms(info.get('median_s')):>10} "
                  f"{'-' if peak is None else f'{peak / 2**20:.1f} MiB':>11} "
                  f"{_fmt(info['bias']):>9} {_fmt(info['variance']):>9} {_fmt(info['mse']):>9} "
                  f"{_fmt(info['cosine'], '.4f'):>7} {info['moments']:>11} "
                  f"{info['trajectories_per_estimate']:>5}")
    if stash["throughput"]:
        terminalreporter.section("metarl_bench: estimates per second (medians of the rounds)")
        for label, rate in stash["throughput"].items():
            write(f"{label:<52} {rate:>12,.0f}")
    if stash["speedup"] or stash["ratios"]:
        terminalreporter.section("metarl_bench: speed-ups against the anchors (lsf: tabular-v0, "
                                 "N=64, 1000 trials; maml: 30-arm bandit)")
        write(f"{'':<44} {'median':>12} {'fastest':>12}")
        for label, seconds in sorted(stash["speedup"].items()):
            write(f"{label:<44} {_ms(seconds['median']):>12} {_ms(seconds['min']):>12}")
        for label, (value, target) in stash["ratios"].items():
            write(f"{label:<44} {_fmt(value, '.2f'):>10} x   (target {target})")
        load = stash.get("load_average")
        write(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} "
              f"CPUs; 1-min load average {_fmt(load, '.2f')} at the end (this run included: "
              f"well above the thread count means other work inflated the timings)")
        write("timings are recorded (extra_info, --benchmark-json), never asserted")


def _mujoco_summary(terminalreporter, measured):
    write = terminalreporter.write_line
    terminalreporter.section("metarl_bench: MuJoCo (HalfCheetahVel, fastest of the rounds)")
    throughput = measured.get("throughput")
    if throughput:
        write(f"{'path (256 trajectories x 100 steps)':<40} {'env-steps/s':>12}")
        for name in ("batch", "gymnasium", "raw"):
            write(f"{name:<40} {throughput[f'env_steps_per_s_{name}']:>12.0f}")
        write(f"batch / gymnasium {throughput['vs_gymnasium']:.2f}x (target >= 1.5), "
              f"batch / raw mj_step {throughput['vs_raw']:.2f}x (target >= 0.75); "
              f"1-min load {throughput['load_average']:.2f}")
    share = measured.get("share")
    if share:
        for name in ("lsf", "dice"):
            write(f"{name}: {share[f'{name}_seconds']:.2f} s an estimate, "
                  f"{share[f'{name}_share_outside_sampling']:.0%} outside sampling "
                  f"(target <= 25%)")
        write(f"torch {torch.get_num_threads()} threads; 1-min load {share['load_average']:.2f}")


def _metaworld_summary(terminalreporter, measured):
    write = terminalreporter.write_line
    terminalreporter.section("metarl_bench: Meta-World ML1 (env-steps per CPU-second, best round)")
    skills = [name for name in measured if name != "share"]
    if skills:
        write(f"{'skill':<16} {'batch':>8} {'metaworld':>10} {'raw':>8} {'vs metaworld':>13} "
              f"{'vs raw':>7} {'load':>5}")
        for skill in skills:
            info = measured[skill]
            write(f"{skill:<16} {info['env_steps_per_cpu_s_batch']:>8.0f} "
                  f"{info['env_steps_per_cpu_s_metaworld']:>10.0f} "
                  f"{info['env_steps_per_cpu_s_raw']:>8.0f} {info['vs_metaworld']:>12.2f}x "
                  f"{info['vs_raw']:>7.2f} {info['load_average']:>5.2f}")
        write("targets: batch >= 3x metaworld, >= 0.75 of raw mj_step")
    share = measured.get("share")
    if share:
        write(f"lsf on ML1 reach (10 goals, N = M = 10, 500 steps): "
              f"{share['lsf_cpu_seconds']:.1f} CPU s an estimate, "
              f"{share['lsf_share_outside_sampling']:.0%} outside sampling (target <= 25%); "
              f"1-min load {share['load_average']:.2f}")
