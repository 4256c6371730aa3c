"""K-armed bandits: one-state, one-step tabular tasks. Deterministic rewards (``bandit-v0``)
and Bernoulli arms (``bernoulli-bandit-v0``) have inner samples enumerable by counts (exact
grad F_N and exact estimator moments); Gaussian arms (``gaussian-bandit-v0``) do not."""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

import numpy as np
import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError, UnsupportedError
from metarl_bench._src.tasks.base import as_tensor, normal, uniform
from metarl_bench._src.tasks.tabular import TabularTask
from metarl_bench._src.core.trajectories import Trajectories


class BanditTask(TabularTask):
    """K-armed bandit(s) with deterministic rewards: a one-state, one-step tabular task.

    theta has shape (K,). The inner samples of one trial are determined (up to order) by
    the pull counts n, so F_N and the moments of count-determined estimators are finite
    sums over the C(N+K-1, K-1) count vectors (docs/objective.md, "Ground truth").
    """

    #: rows per chunk when enumerating count vectors (bounds memory at large N)
    enumeration_chunk = 4096

    def __init__(self, *, rewards: torch.Tensor, init_logits: torch.Tensor):
        n_tasks, n_arms = rewards.shape
        super().__init__(
            name="bandit-v0", start=torch.ones(n_tasks, 1, dtype=torch.float64),
            transitions=torch.ones(n_tasks, 1, n_arms, 1, dtype=torch.float64),
            rewards=rewards.reshape(n_tasks, 1, n_arms), horizon=1, gamma=1.0,
            init_logits=init_logits)
        self.n_arms = n_arms
        self.param_shape = (n_arms,)
        self.arm_rewards = rewards

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        """One pull per trajectory: the draws of ``TabularTask.sample`` for one state and one
        step (the start state's uniform, unused, then the arm's), without its walk."""
        params = params.detach()
        shape = (params.shape[0], n_traj)
        uniform(shape, generator, params)  # the start state: certain, its draw keeps the stream
        policy, _ = self._policy_tables(params, n_traj, offsets=False)
        arms = policy.draw(None, uniform(shape, generator, params, high=self.n_arms))
        arms = arms.unsqueeze(-1)                                                 # (R, N, 1)
        rewards_by_arm = self._alias_model(params)[-1]                        # (n_tasks * K,)
        means = rewards_by_arm.take(arms if self.n_tasks == 1 else
                                    arms + (task_index * self.n_arms).reshape(-1, 1, 1))
        pulls = Trajectories(torch.zeros_like(arms), arms, means, task_index)
        # then (stochastic rewards) the rewards' own draws
        rewards = self._draw_rewards(pulls, generator, params)
        return pulls if rewards is None else Trajectories(pulls.states, pulls.actions, rewards,
                                                          task_index)

    def _draw_rewards(self, pulls: Trajectories, generator: torch.Generator | None,
                      like: torch.Tensor) -> torch.Tensor | None:
        """The rewards of the sampled pulls (``pulls.rewards`` holds the arms' means);
        None: deterministic arms, the means are the rewards."""
        return None

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


class BernoulliBanditTask(BanditTask):
    """K-armed Bernoulli bandit(s): arm k pays 1 with probability p_k, else 0 (theta (K,)).

    V(theta) = softmax(theta) . p exactly. One inner sample is an (arm, reward) pair, one of
    2K outcomes with probabilities pi_k p_k (success) and pi_k (1 - p_k) (failure), so the
    N inner samples of a trial are determined (up to order) by their success and failure
    counts per arm: a count vector of 2K entries summing to N, multinomially distributed.
    The inner gradient is g = (1/N)(s - (sum_k s_k) pi), s the successes per arm, and F_N,
    grad F_N and the moments of count-determined estimators are exact finite sums over the
    C(N+2K-1, 2K-1) count vectors (2K = 6 arms' outcomes: 435,897 at N=32; truth.py caps
    enumerations at MAX_ENUMERATION, beyond which the truth is estimated).
    """

    def __init__(self, *, success_probs: torch.Tensor, init_logits: torch.Tensor):
        super().__init__(rewards=success_probs, init_logits=init_logits)
        self.name = "bernoulli-bandit-v0"
        self.success_probs = success_probs

    def _draw_rewards(self, pulls: Trajectories, generator: torch.Generator | None,
                      like: torch.Tensor) -> torch.Tensor:
        success = uniform(pulls.rewards.shape, generator, like) < pulls.rewards
        return success.to(pulls.rewards.dtype)

    def enumeration_size(self, n_inner: int) -> int:
        return math.comb(n_inner + 2 * self.n_arms - 1, 2 * self.n_arms - 1)

    def _log_outcome_probs(self, log_pi: torch.Tensor) -> torch.Tensor:
        """log of (pi_k p_k, pi_k (1 - p_k)) per task: (n_tasks, 2K); log 0 = -inf."""
        probs = self.success_probs.to(dtype=log_pi.dtype, device=log_pi.device)
        return torch.cat([log_pi + torch.log(probs), log_pi + torch.log1p(-probs)], -1)

    def enumerate_inner(self, theta: torch.Tensor, n_inner: int
                        ) -> Iterator[tuple[torch.Tensor, Trajectories]]:
        counts = compositions(n_inner, 2 * self.n_arms).to(theta.device)        # (C, 2K)
        log_outcome = self._log_outcome_probs(torch.log_softmax(theta.detach(), -1))
        outcomes = torch.arange(2 * self.n_arms, device=theta.device)
        pulled = torch.repeat_interleave(outcomes.repeat(counts.shape[0]), counts.flatten())
        pulled = pulled.reshape(counts.shape[0], n_inner, 1)
        actions = pulled % self.n_arms
        rewards = (pulled < self.n_arms).to(theta.dtype)
        for k in range(self.n_tasks):
            log_weight = log_multinomial(counts, log_outcome[k])
            for lo in range(0, counts.shape[0], self.enumeration_chunk):
                rows = slice(lo, lo + self.enumeration_chunk)
                task_index = torch.full((actions[rows].shape[0],), k, dtype=torch.long,
                                        device=theta.device)
                yield log_weight[rows], Trajectories(
                    torch.zeros_like(actions[rows]), actions[rows], rewards[rows], task_index)

    def finite_meta_objective(self, theta: torch.Tensor, n_inner: int,
                              inner_lr: float) -> torch.Tensor:
        """F_N(theta) = mean_k sum_c Mult(c; N, q_k) V_k(theta + eta g(c)), differentiable.

        c = (successes s, failures f) per arm, q_k = (pi p_k, pi (1 - p_k)); closed form
        g(c) = (1/N)(s - (sum s) pi), not the estimators' code, so that it checks them.
        """
        counts = compositions(n_inner, 2 * self.n_arms).to(device=theta.device,
                                                           dtype=theta.dtype)
        successes = counts[:, :self.n_arms]
        pi = torch.softmax(theta, -1)
        inner_grad = (successes - successes.sum(-1, keepdim=True) * pi) / n_inner   # (C, K)
        adapted = torch.softmax(theta + inner_lr * inner_grad, -1)
        log_outcome = self._log_outcome_probs(torch.log_softmax(theta, -1))
        total = theta.new_zeros(())
        for k, probs in enumerate(self.success_probs.to(dtype=theta.dtype, device=theta.device)):
            weight = torch.exp(log_multinomial(counts, log_outcome[k]))
            total = total + (weight * (adapted @ probs)).sum()
        return total / self.n_tasks


class GaussianBanditTask(BanditTask):
    """K-armed Gaussian bandit(s): arm k pays a N(mean_k, std_k**2) reward (theta (K,)).

    V(theta) = softmax(theta) . means exactly, so grad F_inf is exact; the rewards are
    continuous, so there is no enumeration and grad F_N is estimated (leave-one-out).
    """

    def __init__(self, *, means: torch.Tensor, stds: torch.Tensor, init_logits: torch.Tensor):
        super().__init__(rewards=means, init_logits=init_logits)
        self.name = "gaussian-bandit-v0"
        self.stds = stds

    def _draw_rewards(self, pulls: Trajectories, generator: torch.Generator | None,
                      like: torch.Tensor) -> torch.Tensor:
        stds = self.stds.to(dtype=like.dtype, device=like.device)
        noise = normal(pulls.rewards.shape, generator, like)
        scale = stds[pulls.task_index.unsqueeze(-1), pulls.actions[..., 0]].unsqueeze(-1)
        return pulls.rewards + scale * noise

    def enumeration_size(self, n_inner: int) -> None:
        return None

    def enumerate_inner(self, theta: torch.Tensor, n_inner: int
                        ) -> Iterator[tuple[torch.Tensor, Trajectories]]:
        raise UnsupportedError("gaussian-bandit-v0 has continuous rewards: its inner samples "
                               "cannot be enumerated")

    def finite_meta_objective(self, theta: torch.Tensor, n_inner: int,
                              inner_lr: float) -> torch.Tensor:
        raise UnsupportedError("gaussian-bandit-v0 has no exact F_N (continuous rewards); "
                               "estimate it with estimate_meta_gradient")


def compositions(total: int, parts: int) -> torch.Tensor:
    """All count vectors of ``parts`` non-negative integers summing to ``total``: (C, parts)."""
    bars = np.array(list(itertools.combinations(range(total + parts - 1), parts - 1)),
                    dtype=np.int64).reshape(-1, parts - 1)
    edges = np.concatenate([np.full((bars.shape[0], 1), -1), bars,
                            np.full((bars.shape[0], 1), total + parts - 1)], axis=1)
    return torch.as_tensor(np.diff(edges, axis=1) - 1)


def log_multinomial(counts: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """log Multinomial(n; N, pi) for each row n of ``counts``.

    An outcome of probability 0 (log_pi = -inf) counts 0 times log 0 = 0 when it is absent.
    """
    counts = counts.to(log_pi.dtype)
    n_total = counts.sum(-1)
    terms = torch.where(counts > 0, counts * log_pi, 0.0)
    return torch.lgamma(n_total + 1) - torch.lgamma(counts + 1).sum(-1) + terms.sum(-1)


def _arm_values(name: str, value: Any, n_tasks: int, n_arms: int | None, seed: int | None,
                low: float | None = None, high: float | None = None) -> torch.Tensor:
    """Per-arm numbers (n_tasks, K): an array (K,) or (n_tasks, K), or ``"random"``: U[0,1)
    of shape (n_tasks, n_arms) drawn from ``seed``. ``n_arms`` and ``seed`` (None when not
    given) only shape the random draw: given with an array, a seed is refused and an
    n_arms must agree with the array, so that no argument is silently ignored."""
    if isinstance(value, str):
        if value != "random":
            raise ParameterError(f"{name} must be an array of numbers or 'random', got {value!r}")
        n_arms = validation.positive_int("n_arms", 3 if n_arms is None else n_arms, minimum=2)
        seed = validation.positive_int("seed", 0 if seed is None else seed, minimum=0)
        rng = np.random.default_rng(seed)
        return torch.as_tensor(rng.uniform(0.0, 1.0, size=(n_tasks, n_arms)))
    if seed is not None:
        raise ParameterError(f"seed draws {name}='random'; with {name} given as numbers it "
                             f"would be ignored, so leave it out")
    out = as_tensor(name, value, [(-1,), (n_tasks, -1)])
    if n_arms is not None and n_arms != out.shape[-1]:
        raise ParameterError(f"n_arms={n_arms!r} disagrees with {name}, which has "
                             f"{out.shape[-1]} arms; n_arms sizes {name}='random' only")
    if out.dim() == 1:
        out = out.expand(n_tasks, -1).clone()
    if out.shape[-1] < 2:
        raise ParameterError(f"a bandit needs at least 2 arms, got {name} of shape "
                             f"{tuple(out.shape)}")
    if (low is not None and (out < low).any()) or (high is not None and (out > high).any()):
        raise ParameterError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return out


def _initial_logits(init_logits: Any, n_arms: int) -> torch.Tensor:
    if init_logits is None:
        return torch.zeros(n_arms, dtype=torch.float64)
    return as_tensor("init_logits", init_logits, [(n_arms,)])


def make_bandit(*, rewards: Any = (1.0, 0.0, 0.5), init_logits: Any = None, n_tasks: int = 1,
                n_arms: int | None = None, seed: int | None = None) -> BanditTask:
    """K-armed bandit(s) with deterministic rewards and a softmax policy (``bandit-v0``).

    ``rewards``: the per-arm rewards, shape (K,) or (n_tasks, K), or ``"random"`` for
    U[0,1) rewards of shape (n_tasks, n_arms) drawn from ``seed`` (default 3 arms, seed 0;
    both only for ``"random"``). ``init_logits``: the
    initial logits (K,), zeros (uniform policy) by default.
    """
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    rewards_t = _arm_values("rewards", rewards, n_tasks, n_arms, seed)
    init_t = _initial_logits(init_logits, rewards_t.shape[-1])
    return BanditTask(rewards=rewards_t, init_logits=init_t)


def make_bernoulli_bandit(*, success_probs: Any = (0.9, 0.1, 0.5), init_logits: Any = None,
                          n_tasks: int = 1, n_arms: int | None = None,
                          seed: int | None = None) -> BernoulliBanditTask:
    """K-armed Bernoulli bandit(s), softmax policy (``bernoulli-bandit-v0``).

    Pulling arm k pays 1 with probability p_k and 0 otherwise, as in MAML-RL's
    ``Bandit-K*`` tasks. ``success_probs``: p, shape (K,) or (n_tasks, K), entries in
    [0, 1], or ``"random"`` for p ~ U[0,1) of shape (n_tasks, n_arms) drawn from ``seed``
    (MAML-RL's task distribution). ``init_logits``: the initial logits (K,), zeros by default.
    """
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    probs_t = _arm_values("success_probs", success_probs, n_tasks, n_arms, seed,
                          low=0.0, high=1.0)
    init_t = _initial_logits(init_logits, probs_t.shape[-1])
    return BernoulliBanditTask(success_probs=probs_t, init_logits=init_t)


def make_gaussian_bandit(*, means: Any = (1.0, 0.0, 0.5), stds: Any = 1.0,
                         init_logits: Any = None, n_tasks: int = 1,
                         n_arms: int | None = None, seed: int | None = None
                         ) -> GaussianBanditTask:
    """K-armed Gaussian bandit(s), softmax policy (``gaussian-bandit-v0``).

    Pulling arm k pays a N(mean_k, std_k**2) reward. ``means``: shape (K,) or (n_tasks, K),
    or ``"random"`` for U[0,1) means of shape (n_tasks, n_arms) drawn from ``seed``;
    ``stds``: a number or an array (K,) or (n_tasks, K), >= 0. No enumeration (the
    rewards are continuous): the finite-N truth is estimated, the exact V is softmax . means.
    """
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    means_t = _arm_values("means", means, n_tasks, n_arms, seed)
    n_arms = means_t.shape[-1]
    scalar = isinstance(stds, (int, float)) and not isinstance(stds, bool)
    stds_t = as_tensor("stds", [stds] * n_arms if scalar else stds,
                       [(n_arms,), (n_tasks, n_arms)]).expand(n_tasks, n_arms)
    if (stds_t < 0).any():
        raise ParameterError(f"stds must be >= 0, got {stds!r}")
    init_t = _initial_logits(init_logits, n_arms)
    return GaussianBanditTask(means=means_t, stds=stds_t.clone(), init_logits=init_t)
