"""Speed of the DiCE family, emaml and es-maml on tabular-v0 (20 states, 5 actions, T = 20,
gamma = 0.8, N = 64, exact outer), in one run with interleaved rounds.

For each estimator (and option set) it times, round after round in turn:

* ``call``: the registered call, 1000 trials, sampling included;
* ``lsf``: the registered ``lsf`` call on the same configuration (the cost yardstick);
* ``batched``: the from-samples form on pre-sampled trajectories (1000 trials);
* ``per-trial``: the same fast code looped over trials (``reference.per_trial``) on the first
  ``--per-trial-rows`` of those samples; its throughput (estimates per second) is what the
  batched throughput is divided by.

Run from the repository root: ``python benchmarks/tools/family_speedup.py [--rounds 3]``.
Prints medians, the two ratios (targets: batched/per-trial throughput >= 10, call / lsf
call <= 3), the load average and the torch thread count. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import metarl_bench as mb
from metarl_bench._src.estimators.es_maml import es_maml_from_samples, perturbed_points
from metarl_bench._src.estimators.reference import per_trial

TASK = dict(n_states=20, n_actions=5, horizon=20, gamma=0.8, seed=0)
N_INNER, N_TRIALS, INNER_LR, SEED = 64, 1000, 1.0, 0

CASES = [
    ("loaded-dice", {}),
    ("loaded-dice", {"dependency_decay": 0.5, "critic": "exact", "gae_lambda": 0.95}),
    ("loaded-dice", {"critic": "linear"}),
    ("loaded-dice", {"critic": "noisy-exact"}),
    ("lvc", {}),
    ("taypo", {"order": 2, "critic": "exact"}),
    ("taypo", {"order": 1}),
    ("emaml", {}),
    ("unbiased", {"baseline": "loo-mean"}),
    ("es-maml", {}),
]


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-trial-rows", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma list of estimator names")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = mb.make_task("tabular-v0", **TASK)
    theta = task.initial_params()
    rows = theta.expand(N_TRIALS, *theta.shape)
    index = torch.zeros(N_TRIALS, dtype=torch.long)
    inner = task.sample(rows, N_INNER, index, torch.Generator().manual_seed(SEED))
    few = inner.rows(slice(0, args.per_trial_rows))
    lsf = mb.get_estimator("lsf")

    def registered(fn, options):
        return lambda: fn(task, theta, n_inner=N_INNER, inner_lr=INNER_LR, n_trials=N_TRIALS,
                          generator=torch.Generator().manual_seed(SEED), **options)

    print(f"tabular-v0 {TASK}, N={N_INNER}, {N_TRIALS} trials, exact outer, float64; "
          f"per-trial loop on {args.per_trial_rows} rows; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load at start {os.getloadavg()[0]:.2f}")
    header = (f"{'estimator':<58} {'call':>8} {'lsf call':>9} {'batched':>8} "
              f"{'per-trial':>10} {'speed-up':>9} {'call/lsf':>9}")
    print(header)
    wanted = None if args.only is None else set(args.only.split(","))
    for name, options in CASES:
        if wanted is not None and name not in wanted:
            continue
        spec = mb.estimator_spec(name)
        if name == "es-maml":
            p = 1
            perturbations = torch.randn(N_TRIALS, p, *theta.shape,
                                        generator=torch.Generator().manual_seed(SEED),
                                        dtype=theta.dtype)
            points = perturbed_points(theta, perturbations, 0.1)
            es_inner = task.sample(points, N_INNER, torch.zeros(points.shape[0], dtype=torch.long),
                                   torch.Generator().manual_seed(SEED))
            block = 2 * p * args.per_trial_rows
            batched = lambda: es_maml_from_samples(  # noqa: E731
                task, theta, es_inner, inner_lr=INNER_LR, perturbations=perturbations, sigma=0.1)
            looped = lambda: per_trial(es_maml_from_samples)(  # noqa: E731
                task, theta, es_inner.rows(slice(0, block)), inner_lr=INNER_LR,
                perturbations=perturbations[:args.per_trial_rows], sigma=0.1)
        else:
            extra = ({"generator": torch.Generator().manual_seed(SEED)}
                     if options.get("critic") == "noisy-exact" else {})
            batched = lambda: spec.from_samples(task, theta, inner, inner_lr=INNER_LR,  # noqa
                                                **options, **extra)
            looped = lambda: per_trial(spec.from_samples)(task, theta, few,  # noqa: E731
                                                          inner_lr=INNER_LR, **options, **extra)
        calls = {"call": registered(spec.fn, options), "lsf": registered(lsf, {}),
                 "batched": batched, "per-trial": looped}
        for call in calls.values():  # warm-up
            call()
        seconds: dict[str, list[float]] = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():
                seconds[key].append(timed(call))
        median = {key: statistics.median(values) for key, values in seconds.items()}
        speedup = (N_TRIALS / median["batched"]) / (args.per_trial_rows / median["per-trial"])
        label = f"{name} {options}" if options else name
        print(f"{label:<58} {median['call']:>8.3f} {median['lsf']:>9.3f} "
              f"{median['batched']:>8.3f} {median['per-trial']:>10.3f} {speedup:>8.1f}x "
              f"{median['call'] / median['lsf']:>8.2f}x", flush=True)
    print(f"seconds are medians of {args.rounds} interleaved rounds; load at end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
