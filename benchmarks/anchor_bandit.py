"""The bandit's benchmark anchor: MAML's meta-gradient estimate on a K-armed softmax bandit,
one trial at a time in NumPy, written from the formulas (no torch, no autograd, nothing
shared with metarl_bench), as ``../shared/anchors/ref_tabular.py`` is for tabular tasks.

One trial: N inner pulls a_i ~ pi = softmax(theta) and their rewards r_i (deterministic per
arm), the inner step theta' = theta + eta g, g = (1/N) sum_i r_i (e_{a_i} - pi); M outer pulls
b_j ~ pi' = softmax(theta') and the sampled outer gradient u = (1/M) sum_j r_{b_j} (e_{b_j} - pi');
the estimate (naive-Hessian MAML) is (I + eta J)^T u with J = (1/N) sum_i r_i grad^2 log pi(a_i)
= -rbar (diag(pi) - pi pi^T), rbar the mean inner reward, so

    estimate = u - eta rbar (pi * u - pi (pi . u)).

Pulls are drawn by inverse CDF (``searchsorted`` on the cumulative sums), the N (or M) pulls
of a trial at once. Run ``python benchmarks/anchor_bandit.py`` for estimates per second.
Compare speeds against it in the same process and the same run, never against a number from
another day (benchmarks/bench_anchor.py and benchmarks/pytest/test_bench_throughput.py).
"""

from __future__ import annotations

import time

import numpy as np

#: The bandit of the speed targets: 30 arms, rewards U[0, 1) from seed 0 (as bandit-v0's
#: rewards="random", n_arms=30, seed=0), the uniform initial policy, inner step 1.
N_ARMS, INNER_LR = 30, 1.0


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def inner_step(theta: np.ndarray, pi: np.ndarray, rewards: np.ndarray, inner_arms: np.ndarray,
               inner_lr: float) -> tuple[np.ndarray, float]:
    """theta' = theta + eta (1/N) sum_i r_i (e_{a_i} - pi), and the mean inner reward."""
    inner_counts = np.bincount(inner_arms, minlength=theta.shape[0])
    mean_reward = rewards[inner_arms].mean()
    return theta + inner_lr * (inner_counts * rewards / len(inner_arms) - mean_reward * pi), \
        mean_reward


def outer_gradient(adapted: np.ndarray, rewards: np.ndarray, outer_arms: np.ndarray
                   ) -> np.ndarray:
    """u = (1/M) sum_j r_{b_j} (e_{b_j} - pi'), the sampled gradient of V at theta'."""
    outer_counts = np.bincount(outer_arms, minlength=adapted.shape[0])
    return (outer_counts * rewards - rewards[outer_arms].sum() * softmax(adapted)) \
        / len(outer_arms)


def through_the_step(pi: np.ndarray, mean_reward: float, outer_grad: np.ndarray,
                     inner_lr: float) -> np.ndarray:
    """(I + eta J)^T u with J = -rbar (diag(pi) - pi pi^T)."""
    return outer_grad - inner_lr * mean_reward * (pi * outer_grad - pi * (pi @ outer_grad))


def maml_estimate(theta: np.ndarray, rewards: np.ndarray, inner_arms: np.ndarray,
                  outer_arms: np.ndarray, inner_lr: float) -> np.ndarray:
    """One trial's estimate (K,) from given inner and outer pulls (arm indices)."""
    pi = softmax(theta)
    adapted, mean_reward = inner_step(theta, pi, rewards, inner_arms, inner_lr)
    return through_the_step(pi, mean_reward, outer_gradient(adapted, rewards, outer_arms),
                            inner_lr)


def pulls(pi: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` arms drawn from ``pi`` by inverse CDF."""
    cdf = np.cumsum(pi)
    arms = np.searchsorted(cdf, rng.random(count) * cdf[-1], side="right")
    return np.minimum(arms, len(pi) - 1)


def trial(theta: np.ndarray, rewards: np.ndarray, n_inner: int, n_outer: int, inner_lr: float,
          rng: np.random.Generator) -> np.ndarray:
    """One sampled trial: the inner pulls, the step, the outer pulls, the estimate."""
    pi = softmax(theta)
    inner_arms = pulls(pi, n_inner, rng)
    adapted, mean_reward = inner_step(theta, pi, rewards, inner_arms, inner_lr)
    outer_arms = pulls(softmax(adapted), n_outer, rng)
    return through_the_step(pi, mean_reward, outer_gradient(adapted, rewards, outer_arms),
                            inner_lr)


def bandit_rewards(n_arms: int = N_ARMS, seed: int = 0) -> np.ndarray:
    """bandit-v0's rewards="random": U[0, 1) of shape (1, n_arms) from NumPy's seed."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(1, n_arms))[0]


def estimates(n_trials: int, n_inner: int, n_outer: int, *, n_arms: int = N_ARMS,
              inner_lr: float = INNER_LR, theta: np.ndarray | None = None,
              seed: int = 0) -> np.ndarray:
    """``n_trials`` estimates (n_trials, K) at ``theta`` (default: the uniform policy), one
    trial at a time."""
    rewards = bandit_rewards(n_arms)
    theta = np.zeros(n_arms) if theta is None else np.asarray(theta, dtype=float)
    rng = np.random.default_rng(seed)
    return np.stack([trial(theta, rewards, n_inner, n_outer, inner_lr, rng)
                     for _ in range(n_trials)])


def throughput(n_inner: int = 10, n_outer: int = 10, trials: int = 200) -> float:
    """Estimates per second of the per-trial loop."""
    estimates(2, n_inner, n_outer)
    start = time.perf_counter()
    estimates(trials, n_inner, n_outer)
    return trials / (time.perf_counter() - start)


if __name__ == "__main__":
    for n in (10, 64):
        print(f"N = M = {n}: {throughput(n, n):,.0f} estimates/s")
