"""The speed targets of the bandit (docs/benchmarks.md), against a baseline tree.

    python benchmarks/tools/bandit_targets.py BASELINE_TREE [--rounds 7]

BASELINE_TREE is a checkout (or ``git archive``) of the baseline commit, e.g. a worktree of
92246d3. Prints, for ``maml`` (the call of the targets):

* the ratio baseline / now of the registered call and of the sampler on the gate's timed grid
  (30-arm bandit at N = M = 10 and 64, 1000 estimates a call, float32; the tabular, discounted
  tabular and LQ cells), measured as ``metarl-bench check`` measures: each tree in its own
  worker on the same CPU, calls alternated one by one, the median over rounds of per-round
  ratios;
* the fixed cost of one call with ``n_trials = 1`` (30-arm bandit, N = M = 10): the median of
  many calls in each tree's own process, the two trees' processes alternated ``--rounds``
  times.

Numbers only, recorded with the load average; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from metarl_bench._src.gate.command import current_tree, measure
from metarl_bench._src.gate.compare import compare

OVERHEAD = """
import time, torch, metarl_bench as mb
torch.set_num_threads(1)
task = mb.make_task("bandit-v0", rewards="random", n_arms=30, seed=0)
theta = task.initial_params(dtype=torch.float32)
maml = mb.get_estimator("maml")
call = lambda g: maml(task, theta, n_inner=10, inner_lr=1.0, n_trials=1, n_outer=10, generator=g)
generator = torch.Generator().manual_seed(0)
for _ in range(200):
    call(generator)
times = []
for _ in range(2000):
    start = time.perf_counter()
    call(generator)
    times.append(time.perf_counter() - start)
times.sort()
print(times[len(times) // 2])
"""


def overhead(tree: str) -> float:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", OVERHEAD], env=env, cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="a checkout of the baseline commit")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", default="bandit-30,tabular,tabular-discounted,lq")
    args = parser.parse_args()
    here = current_tree()
    print(f"load average before: {os.getloadavg()}")
    base, now = measure([args.baseline, here], ["maml"], rounds=args.rounds, memory=False,
                        statistics=False, tasks=args.tasks.split(","))
    for row in compare(base, now):
        if row.metric in ("seconds", "cpu_seconds") and row.ratio:
            print(f"{row.path:12s} {row.task:18s} N={row.n_inner:<3d} {row.metric:11s} "
                  f"baseline {row.baseline * 1e3:9.3f} ms  now {row.now * 1e3:9.3f} ms  "
                  f"baseline/now {1 / row.ratio:6.2f}x")
    pairs = []
    for index in range(args.rounds):
        order = [args.baseline, here] if index % 2 == 0 else [here, args.baseline]
        measured = {tree: overhead(tree) for tree in order}
        pairs.append((measured[args.baseline], measured[here]))
    print("n_trials=1 call (bandit 30 arms, N = M = 10), median of rounds: baseline "
          f"{statistics.median(b for b, _ in pairs) * 1e3:.3f} ms, now "
          f"{statistics.median(n for _, n in pairs) * 1e3:.3f} ms")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
