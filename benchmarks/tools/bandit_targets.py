"""The speed targets of the bandit (docs/benchmarks.md), against a baseline tree.

    python benchmarks/tools/bandit_targets.py BASELINE_TREE [--rounds 7]

BASELINE_TREE is a checkout (or ``git archive``) of the baseline commit, e.g. a worktree of
92246d3. Prints, for ``maml`` (the call of the targets):

* the ratio baseline / now of the registered call and of the sampler on the gate's timed grid
  (30-arm bandit at N = M = 10 and 64, 1000 estimates a call, float32; the tabular, discounted
  tabular and LQ cells), measured as ``metarl-bench check`` measures: each tree in its own
  worker on the same CPU, calls alternated one by one, the median over rounds of per-round
  ratios;
* the fixed cost of one call with ``n_trials = 1`` (N = M = 10, a bandit of 30 arms and one
  of 3, bandit-v0's default): the median of many calls in each tree's own process, the two
  trees' processes alternated ``--rounds`` times; and, in this tree, the same call on the
  generic autograd path (``bandit_forms.generic_forms``), the closed forms' slow twin.

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
import contextlib, sys, time, torch, metarl_bench as mb
torch.set_num_threads(1)
n_arms, generic = int(sys.argv[1]), sys.argv[2] == "generic"
task = mb.make_task("bandit-v0", rewards="random", n_arms=n_arms, seed=0)
theta = task.initial_params(dtype=torch.float32)
maml = mb.get_estimator("maml")
call = lambda g: maml(task, theta, n_inner=10, inner_lr=1.0, n_trials=1, n_outer=10, generator=g)
if generic:
    from metarl_bench._src.estimators.bandit_forms import generic_forms
    context = generic_forms()
else:
    context = contextlib.nullcontext()
generator = torch.Generator().manual_seed(0)
with context:
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


def overhead(tree: str, n_arms: int, generic: bool = False) -> float:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", OVERHEAD, str(n_arms),
                          "generic" if generic else "default"], env=env, cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


FORMS = """
import statistics, sys, time, torch, metarl_bench as mb
from metarl_bench._src.estimators.bandit_forms import generic_forms
torch.set_num_threads(1)
n_inner, rounds = int(sys.argv[1]), int(sys.argv[2])
task = mb.make_task("bandit-v0", rewards="random", n_arms=30, seed=0)
theta = task.initial_params(dtype=torch.float32)
maml = mb.get_estimator("maml")
call = lambda: maml(task, theta, n_inner=n_inner, inner_lr=1.0, n_trials=1000, n_outer=n_inner,
                    generator=torch.Generator().manual_seed(0))
def timed(generic):
    start = time.perf_counter()
    if generic:
        with generic_forms():
            call()
    else:
        call()
    return time.perf_counter() - start
timed(False), timed(True)
ratios = [timed(True) / timed(False) for _ in range(rounds * 5)]
print(statistics.median(ratios))
"""


def forms_ratio(tree: str, n_inner: int, rounds: int) -> float:
    """generic / closed time of the 1000-trial call in this tree, alternated in one process."""
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", FORMS, str(n_inner), str(rounds)], env=env,
                         cwd=tree, check=True, capture_output=True, text=True).stdout
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
    for n_arms in (30, 3):
        runs = {"baseline": [], "now": [], "now, generic forms": []}
        for index in range(args.rounds):
            order = [("baseline", args.baseline, False), ("now", here, False),
                     ("now, generic forms", here, True)]
            for name, tree, generic in (order if index % 2 == 0 else order[::-1]):
                runs[name].append(overhead(tree, n_arms, generic))
        print(f"n_trials=1 call (bandit {n_arms} arms, N = M = 10), median of rounds: "
              + ", ".join(f"{name} {statistics.median(times) * 1e3:.3f} ms"
                          for name, times in runs.items()))
    for n_inner in (10, 64):
        print(f"1000-trial call (bandit 30 arms, N = M = {n_inner}): generic forms / closed "
              f"forms {forms_ratio(here, n_inner, args.rounds):.2f}x (median of alternated calls)")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
