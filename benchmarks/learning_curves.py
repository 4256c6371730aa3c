"""Estimators compared by meta-training learning curves on the same seeds.

    .venv/bin/python benchmarks/learning_curves.py --out lc --iterations 60 --seeds 0,1,2

Every estimator trains the same task from the same initial parameters with the same seeds
(each seed fixes the meta-batches' tasks and the trajectories' noise generator), so the
curves differ only by the estimator. Writes one JSON-lines log per (estimator, seed), a PNG
of the mean return after adaptation over seeds per estimator, and prints the mean of each
estimator's last ten iterations with its spread over seeds. Each log has a checkpoint, so
the same command again resumes an interrupted comparison (a different --iterations needs a
new --out folder). Uses only the public API and
``metarl_bench``'s train module, so it runs against any commit that has ``train``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import metarl_bench as mb
from metarl_bench._src.training.train import TrainResult, plot_learning_curves, train

#: The default comparison: Navigation2D with a linear Gaussian policy and the usual
#: meta-training inner step (linear baseline, normalised advantages).
TASK = ("navigation2d-v0", {"n_tasks": 20, "horizon": 20, "policy": "linear", "init_std": 0.1,
                            "baseline": "linear", "normalize_advantages": True})
#: dice is left out: its surrogate weights raw rewards, so it refuses a task with a baseline.
ESTIMATORS = ("lsf", "unbiased", "maml", "fomaml")
SETTINGS = dict(meta_batch=20, n_inner=10, n_outer=10, inner_lr=0.003, outer_lr=0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="learning-curves", help="output folder")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in args.estimators.split(",") if n]
    os.makedirs(args.out, exist_ok=True)
    task_id, params = TASK
    runs: dict[str, list[TrainResult]] = {}
    for name in names:
        for seed in seeds:
            task = mb.make_task(task_id, **params)
            log = os.path.join(args.out, f"{name}-seed{seed}.jsonl")
            try:
                result = train(task, name, iterations=args.iterations, seed=seed, jsonl=log,
                               **SETTINGS)
            except mb.UnsupportedError as exc:
                print(f"{name}: skipped ({exc})", file=sys.stderr)
                break
            runs.setdefault(name, []).append(result)
            print(f"{name} seed {seed}: {result.iterations[-1]['return_after']:.3f}",
                  file=sys.stderr, flush=True)
    means = {name: _mean_curve(results) for name, results in runs.items()}
    plot_learning_curves(means, os.path.join(args.out, "learning-curves.png"))
    summary = []
    print(f"{'estimator':<10} {'last 10 after':>14} {'spread':>8} {'last 10 before':>15}")
    for name, results in runs.items():
        after = [statistics.mean(r.curve("return_after")[-10:]) for r in results]
        before = [statistics.mean(r.curve("return_before")[-10:]) for r in results]
        spread = statistics.stdev(after) if len(after) > 1 else float("nan")
        print(f"{name:<10} {statistics.mean(after):>14.3f} {spread:>8.3f} "
              f"{statistics.mean(before):>15.3f}")
        summary.append(dict(estimator=name, seeds=seeds, last10_after=after,
                            last10_before=before))
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump(dict(task=task_id, task_params=params, settings=SETTINGS,
                       iterations=args.iterations, results=summary), handle, indent=1)
    return 0


def _mean_curve(results: list[TrainResult]) -> TrainResult:
    """The per-iteration mean over seeds, as one TrainResult for plotting."""
    rows = []
    for step in range(len(results[0].iterations)):
        rows.append({"iteration": step, **{
            key: statistics.mean(r.iterations[step][key] for r in results)
            for key in ("return_before", "return_after")}})
    return TrainResult(config=results[0].config, iterations=rows)


if __name__ == "__main__":
    sys.exit(main())
