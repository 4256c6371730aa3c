"""K-armed bandits with deterministic rewards: one-state, one-step tabular tasks whose inner
samples are enumerable by pull counts (exact grad F_N and exact estimator moments)."""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

import numpy as np
import torch

from metarl_bench._src import validation
from metarl_bench._src.errors import ParameterError
from metarl_bench._src.tasks.base import as_tensor
from metarl_bench._src.tasks.tabular import TabularTask
from metarl_bench._src.trajectories import Trajectories


class BanditTask(TabularTask):
    """K-armed bandit(s) with deterministic rewards: a one-state, one-step tabular task.

    theta has shape (K,). The inner samples of one trial are determined (up to order) by
    the pull counts n, so F_N and the moments of count-determined estimators are finite
    sums over the C(N+K-1, K-1) count vectors (SCIENCE.md section 3).
    """

    #: rows per chunk when enumerating count vectors (bounds memory at large N)
    enumeration_chunk = 4096

    def __init__(self, *, rewards: torch.Tensor, init_logits: torch.Tensor, params: dict[str, Any]):
        n_tasks, n_arms = rewards.shape
        super().__init__(
            name="bandit-v0", start=torch.ones(n_tasks, 1, dtype=torch.float64),
            transitions=torch.ones(n_tasks, 1, n_arms, 1, dtype=torch.float64),
            rewards=rewards.reshape(n_tasks, 1, n_arms), horizon=1, gamma=1.0,
            init_logits=init_logits, params=params)
        self.n_arms = n_arms
        self.param_shape = (n_arms,)
        self.arm_rewards = rewards

    def enumeration_size(self, n_inner: int) -> int:
        return math.comb(n_inner + self.n_arms - 1, self.n_arms - 1)

    def enumerate_inner(self, theta: torch.Tensor, n_inner: int
                        ) -> Iterator[tuple[torch.Tensor, Trajectories]]:
        counts = compositions(n_inner, self.n_arms).to(theta.device)            # (C, K)
        log_pi = torch.log_softmax(theta.detach(), -1)
        log_weight = log_multinomial(counts, log_pi)                             # (C,)
        arms = torch.arange(self.n_arms, device=theta.device)
        actions = torch.repeat_interleave(arms.repeat(counts.shape[0]), counts.flatten())
        actions = actions.reshape(counts.shape[0], n_inner, 1)
        rewards = self.arm_rewards.to(dtype=theta.dtype, device=theta.device)
        for k in range(self.n_tasks):
            for lo in range(0, counts.shape[0], self.enumeration_chunk):
                chunk = actions[lo:lo + self.enumeration_chunk]
                task_index = torch.full((chunk.shape[0],), k, dtype=torch.long, device=theta.device)
                yield log_weight[lo:lo + self.enumeration_chunk], Trajectories(
                    torch.zeros_like(chunk), chunk, rewards[k][chunk], task_index)

    def finite_meta_objective(self, theta: torch.Tensor, n_inner: int,
                              inner_lr: float, n_steps: int = 1) -> torch.Tensor:
        """F_N(theta) = mean_k sum_n Mult(n; N, pi) V_k(theta + eta g(n)), differentiable.

        Uses the closed form g(n) = (1/N)(n * r) - (n.r / N) pi, not the estimators' code,
        so that it is an independent check of them. K = ``n_steps`` inner steps: nested
        enumeration, theta_{k+1} = theta_k + eta g_k(n_k) with n_k ~ Mult(N, pi_{theta_k}),
        F = sum over (n_0..n_{K-1}) of prod_k Mult(n_k; N, pi_{theta_k}) V(theta_K): C**K terms
        for the C count vectors of one step.
        """
        counts = compositions(n_inner, self.n_arms).to(device=theta.device, dtype=theta.dtype)
        if n_steps == 1:
            pi = torch.softmax(theta, -1)
            weight = torch.exp(log_multinomial(counts, torch.log_softmax(theta, -1)))  # (C,)
            total = theta.new_zeros(())
            for rewards in self.arm_rewards.to(dtype=theta.dtype, device=theta.device):
                inner_grad = (counts * rewards - (counts @ rewards).unsqueeze(-1) * pi) / n_inner
                adapted = torch.softmax(theta + inner_lr * inner_grad, -1)           # (C, K)
                total = total + (weight * (adapted @ rewards)).sum()
            return total / self.n_tasks
        total = theta.new_zeros(())
        for rewards in self.arm_rewards.to(dtype=theta.dtype, device=theta.device):
            points, log_weight = theta.unsqueeze(0), theta.new_zeros(1)             # (B, K), (B,)
            for _ in range(n_steps):
                pi = torch.softmax(points, -1).unsqueeze(1)                          # (B, 1, K)
                inner_grad = (counts * rewards - (counts @ rewards).unsqueeze(-1) * pi) / n_inner
                log_weight = (log_weight.unsqueeze(1) + log_multinomial(
                    counts, torch.log_softmax(points, -1).unsqueeze(1))).reshape(-1)
                points = (points.unsqueeze(1) + inner_lr * inner_grad).reshape(-1, self.n_arms)
            total = total + (torch.exp(log_weight) * (torch.softmax(points, -1) @ rewards)).sum()
        return total / self.n_tasks


def compositions(total: int, parts: int) -> torch.Tensor:
    """All count vectors of ``parts`` non-negative integers summing to ``total``: (C, parts)."""
    bars = np.array(list(itertools.combinations(range(total + parts - 1), parts - 1)),
                    dtype=np.int64).reshape(-1, parts - 1)
    edges = np.concatenate([np.full((bars.shape[0], 1), -1), bars,
                            np.full((bars.shape[0], 1), total + parts - 1)], axis=1)
    return torch.as_tensor(np.diff(edges, axis=1) - 1)


def log_multinomial(counts: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """log Multinomial(n; N, pi) for each row n of ``counts``."""
    counts = counts.to(log_pi.dtype)
    n_total = counts.sum(-1)
    return (torch.lgamma(n_total + 1) - torch.lgamma(counts + 1).sum(-1)
            + (counts * log_pi).sum(-1))


def make_bandit(*, rewards: Any = (1.0, 0.0, 0.5), init_logits: Any = None, n_tasks: int = 1,
                n_arms: int = 3, seed: int = 0) -> BanditTask:
    """K-armed bandit(s) with deterministic rewards and a softmax policy (``bandit-v0``).

    ``rewards``: the per-arm rewards, shape (K,) or (n_tasks, K), or ``"random"`` for
    U[0,1) rewards of shape (n_tasks, n_arms) drawn from ``seed``. ``init_logits``: the
    initial logits (K,), zeros (uniform policy) by default.
    """
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    seed = validation.positive_int("seed", seed, minimum=0)
    params: dict[str, Any] = dict(n_tasks=n_tasks)
    if isinstance(rewards, str):
        if rewards != "random":
            raise ParameterError(
                f"rewards must be an array of numbers or 'random', got {rewards!r}")
        n_arms = validation.positive_int("n_arms", n_arms, minimum=2)
        rng = np.random.default_rng(seed)
        rewards_t = torch.as_tensor(rng.uniform(0.0, 1.0, size=(n_tasks, n_arms)))
        params.update(rewards="random", n_arms=n_arms, seed=seed)
    else:
        rewards_t = as_tensor("rewards", rewards, [(-1,), (n_tasks, -1)])
        if rewards_t.dim() == 1:
            rewards_t = rewards_t.expand(n_tasks, -1).clone()
        if rewards_t.shape[-1] < 2:
            raise ParameterError(f"a bandit needs at least 2 arms, got rewards of shape "
                                 f"{tuple(rewards_t.shape)}")
        params["rewards"] = np.asarray(rewards, dtype=float).tolist()
    n_arms = rewards_t.shape[-1]
    if init_logits is None:
        init_t = torch.zeros(n_arms, dtype=torch.float64)
    else:
        init_t = as_tensor("init_logits", init_logits, [(n_arms,)])
        params["init_logits"] = np.asarray(init_logits, dtype=float).tolist()
    return BanditTask(rewards=rewards_t, init_logits=init_t, params=params)
