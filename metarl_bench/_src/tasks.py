"""Meta-RL tasks with an exact model: K-armed bandits and random finite-horizon tabular MDPs.

Both use a tabular softmax policy pi_theta(a|x) = softmax(theta[x])_a, so one class holds
the model (start distribution, transitions, rewards), batched sampling, log-probabilities
and the exact value; the bandit adds the enumeration of pull counts (SCIENCE.md section 3).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from metarl_bench._src import checks
from metarl_bench._src.errors import ParameterError, ShapeError
from metarl_bench._src.trajectories import Trajectories


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None,
             like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws made on the generator's own device, then moved to ``like``'s device.

    Drawing on the generator's device lets a CPU generator drive a CUDA computation, and
    keeps the draws identical whichever device computes with them.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.rand(shape, generator=generator, device=gen_device, dtype=like.dtype)
    return draws.to(like.device)


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first cdf entry above u; cdf (..., K), u (...,) -> long (...)."""
    index = (cdf < u.unsqueeze(-1)).sum(-1)
    return index.clamp_(max=cdf.shape[-1] - 1)  # cdf[-1] may round to just below 1


class Task:
    """Interface every task satisfies (subclass it for a new task).

    Attributes: ``name``, ``param_shape`` (shape of theta), ``n_tasks`` (size of the task
    distribution; the meta-objective averages over it), ``horizon`` T, ``gamma``,
    ``has_model`` (exact V available), ``params`` (the constructor arguments, for reports).
    """

    name: str = "task"
    param_shape: tuple[int, ...] = ()
    n_tasks: int = 1
    horizon: int = 1
    gamma: float = 1.0
    has_model: bool = False
    params: dict[str, Any] = {}

    def initial_params(self, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        """``n_traj`` trajectories for each row of ``params`` (R, *param_shape)."""
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, traj: Trajectories) -> torch.Tensor:
        """log pi_theta(a_t|x_t) for each row's own parameters: (R, *P) -> (R, N, T)."""
        raise NotImplementedError

    def value(self, params: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        """Exact, differentiable V(theta) of each row in its task: (R, *P) -> (R,)."""
        raise NotImplementedError

    def enumeration_size(self, n_inner: int) -> int | None:
        """How many outcomes ``enumerate_inner`` lists for N inner samples (None: it can't)."""
        return None

    def enumerate_inner(self, theta: torch.Tensor, n_inner: int
                        ) -> Iterator[tuple[torch.Tensor, Trajectories]]:
        """Exact enumeration of the inner samples (tasks with an ``enumeration_size``).

        Yields (log-probability of each row (C,), one row of ``n_inner`` trajectories per
        outcome) per task and per chunk; every outcome appears once with its probability.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({shown})"


class TabularTask(Task):
    """Finite-horizon tabular MDPs with a tabular softmax policy, theta of shape (S, A).

    The model is held in float64 on the CPU and converted once per (dtype, device).
    """

    has_model = True

    def __init__(self, *, name: str, start: torch.Tensor, transitions: torch.Tensor,
                 rewards: torch.Tensor, horizon: int, gamma: float, init_logits: torch.Tensor,
                 params: dict[str, Any]):
        self.name = name
        self.n_tasks, self.n_states, self.n_actions = rewards.shape
        self.horizon = horizon
        self.gamma = gamma
        self.params = params
        self.param_shape = (self.n_states, self.n_actions)
        self._start = start
        self._transitions = transitions
        self._rewards = rewards
        self._init_logits = init_logits
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def _model(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            start, transitions, rewards = (
                t.to(dtype=like.dtype, device=like.device)
                for t in (self._start, self._transitions, self._rewards))
            self._cache[key] = (start, transitions, rewards,
                                start.cumsum(-1), transitions.cumsum(-1))
        return self._cache[key]

    def _logits(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(params.shape[0], self.n_states, self.n_actions)

    def initial_params(self, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> torch.Tensor:
        return self._init_logits.to(dtype=dtype, device=device).reshape(self.param_shape).clone()

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        params = params.detach()
        n_rows = params.shape[0]
        _, _, rewards, start_cdf, transition_cdf = self._model(params)
        probs = torch.softmax(self._logits(params), dim=-1)             # (R, S, A)
        shape = (n_rows, n_traj)
        rows = torch.arange(n_rows, device=params.device).unsqueeze(1)  # (R, 1)
        tasks = task_index.unsqueeze(1)                                  # (R, 1)
        state = _inverse_cdf(start_cdf[tasks].expand(*shape, -1), _uniform(shape, generator, params))
        states, actions, rewards_t = [], [], []
        for t in range(self.horizon):
            action = _inverse_cdf(probs[rows, state].cumsum(-1), _uniform(shape, generator, params))
            states.append(state)
            actions.append(action)
            rewards_t.append(rewards[tasks, state, action])
            if t + 1 < self.horizon:
                state = _inverse_cdf(transition_cdf[tasks, state, action],
                                     _uniform(shape, generator, params))
        return Trajectories(torch.stack(states, -1), torch.stack(actions, -1),
                            torch.stack(rewards_t, -1), task_index)

    def log_prob(self, params: torch.Tensor, traj: Trajectories) -> torch.Tensor:
        if params.shape[0] != traj.n_rows:
            raise ShapeError(f"params has {params.shape[0]} rows, trajectories have {traj.n_rows}")
        log_pi = torch.log_softmax(self._logits(params), dim=-1)        # (R, S, A)
        n_rows, n_traj, horizon = traj.actions.shape
        flat_state_action = traj.states * self.n_actions + traj.actions
        return log_pi.reshape(n_rows, -1).gather(
            1, flat_state_action.reshape(n_rows, -1)).reshape(n_rows, n_traj, horizon)

    def _policy_transitions(self, pi: torch.Tensor, transitions: torch.Tensor,
                            task_index: torch.Tensor) -> torch.Tensor:
        """P_pi(s'|s) of each row, (R, S, S), one einsum per task of the distribution.

        Gathering each row's (S, A, S) transitions first would hold R*S*A*S numbers, A times
        the result: the largest tensor by far when rows are trajectories (leave-one-out).
        """
        out = pi.new_empty(pi.shape[0], self.n_states, self.n_states)
        for k in range(self.n_tasks):
            rows = (task_index == k).nonzero().squeeze(-1)
            if rows.numel():
                out = out.index_copy(0, rows, torch.einsum("rsa,san->rsn", pi[rows],
                                                           transitions[k]))
        return out

    def value(self, params: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        start, transitions, rewards, _, _ = self._model(params)
        pi = torch.softmax(self._logits(params), dim=-1)                 # (R, S, A)
        reward_pi = (pi * rewards[task_index]).sum(-1)                    # (R, S)
        state_dist = start[task_index]                                    # (R, S)
        value = (state_dist * reward_pi).sum(-1)
        if self.horizon > 1:
            transition_pi = self._policy_transitions(pi, transitions, task_index)
            for t in range(1, self.horizon):
                state_dist = torch.bmm(state_dist.unsqueeze(1), transition_pi).squeeze(1)
                value = value + self.gamma ** t * (state_dist * reward_pi).sum(-1)
        return value


def _as_tensor(name: str, value: Any, shapes: Sequence[tuple[int, ...]]) -> torch.Tensor:
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an array of numbers, got {value!r}") from None

    def fits(shape: tuple[int, ...]) -> bool:
        return out.dim() == len(shape) and all(d in (-1, n) for d, n in zip(shape, out.shape))

    if not any(fits(shape) for shape in shapes):
        def show(shape: tuple[int, ...]) -> str:
            dims = ["K" if d == -1 else str(d) for d in shape]
            return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"

        allowed = " or ".join(show(s) for s in shapes)
        raise ShapeError(f"{name} must have shape {allowed}, got {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise ParameterError(f"{name} contains NaN or infinite entries")
    return out


def _distribution(name: str, value: torch.Tensor) -> torch.Tensor:
    if (value < 0).any() or not torch.allclose(value.sum(-1), torch.ones(()).double(), atol=1e-9):
        raise ParameterError(f"{name} must be non-negative and sum to 1 along its last axis")
    return value


def make_tabular(*, n_states: int = 10, n_actions: int = 4, horizon: int = 10,
                 gamma: float = 0.9, concentration: float = 1.0, n_tasks: int = 1,
                 seed: int = 0, init_scale: float = 1.0, transitions: Any = None,
                 rewards: Any = None, start: Any = None, init_logits: Any = None) -> TabularTask:
    """Random finite-horizon tabular MDP(s) with a tabular softmax policy (``tabular-v0``).

    Transitions P(.|s,a) ~ Dirichlet(concentration), rewards R(s,a) ~ U[0,1) (deterministic
    given (s,a)), start distribution uniform, initial logits ~ N(0, init_scale**2); all drawn
    from ``seed``, and each replaceable by an explicit array (``transitions`` (S,A,S) or
    (n_tasks,S,A,S), ``rewards`` (S,A) or (n_tasks,S,A), ``start`` (S,) or (n_tasks,S),
    ``init_logits`` (S,A)). ``n_tasks`` > 1 makes a task distribution: the meta-objective is
    the average over its MDPs, which share the initial policy.
    """
    n_states = checks.positive_int("n_states", n_states)
    n_actions = checks.positive_int("n_actions", n_actions, minimum=2)
    horizon = checks.positive_int("horizon", horizon)
    gamma = checks.finite_float("gamma", gamma, low=0.0, high=1.0)
    concentration = checks.finite_float("concentration", concentration, positive=True)
    n_tasks = checks.positive_int("n_tasks", n_tasks)
    seed = checks.positive_int("seed", seed, minimum=0)
    init_scale = checks.finite_float("init_scale", init_scale, low=0.0)
    params = dict(n_states=n_states, n_actions=n_actions, horizon=horizon, gamma=gamma,
                  concentration=concentration, n_tasks=n_tasks, seed=seed, init_scale=init_scale)
    S, A = n_states, n_actions
    rng = np.random.default_rng(seed)
    drawn_transitions = rng.dirichlet(np.full(S, concentration), size=(n_tasks, S, A))
    drawn_rewards = rng.uniform(0.0, 1.0, size=(n_tasks, S, A))
    drawn_init = rng.normal(0.0, init_scale, size=(S, A)) if init_scale > 0 else np.zeros((S, A))

    def per_task(name: str, value: Any, shape: tuple[int, ...], drawn: np.ndarray) -> torch.Tensor:
        if value is None:
            return torch.as_tensor(drawn)
        params[name] = np.asarray(value).tolist()
        out = _as_tensor(name, value, [shape, (n_tasks, *shape)])
        return out.expand(n_tasks, *shape).clone() if out.dim() == len(shape) else out

    transitions_t = _distribution("transitions", per_task("transitions", transitions, (S, A, S),
                                                           drawn_transitions))
    rewards_t = per_task("rewards", rewards, (S, A), drawn_rewards)
    start_t = _distribution("start", per_task("start", start, (S,), np.full((n_tasks, S), 1.0 / S)))
    if init_logits is None:
        init_t = torch.as_tensor(drawn_init)
    else:
        init_t = _as_tensor("init_logits", init_logits, [(S, A)])
        params["init_logits"] = np.asarray(init_logits, dtype=float).tolist()
    return TabularTask(name="tabular-v0", start=start_t, transitions=transitions_t,
                       rewards=rewards_t, horizon=horizon, gamma=gamma, init_logits=init_t,
                       params=params)


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
                              inner_lr: float) -> torch.Tensor:
        """F_N(theta) = mean_k sum_n Mult(n; N, pi) V_k(theta + eta g(n)), differentiable.

        Uses the closed form g(n) = (1/N)(n * r) - (n.r / N) pi, not the estimators' code,
        so that it is an independent check of them.
        """
        counts = compositions(n_inner, self.n_arms).to(device=theta.device, dtype=theta.dtype)
        pi = torch.softmax(theta, -1)
        weight = torch.exp(log_multinomial(counts, torch.log_softmax(theta, -1)))   # (C,)
        total = theta.new_zeros(())
        for rewards in self.arm_rewards.to(dtype=theta.dtype, device=theta.device):
            inner_grad = (counts * rewards - (counts @ rewards).unsqueeze(-1) * pi) / n_inner
            adapted = torch.softmax(theta + inner_lr * inner_grad, -1)              # (C, K)
            total = total + (weight * (adapted @ rewards)).sum()
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
    n_tasks = checks.positive_int("n_tasks", n_tasks)
    seed = checks.positive_int("seed", seed, minimum=0)
    params: dict[str, Any] = dict(n_tasks=n_tasks)
    if isinstance(rewards, str):
        if rewards != "random":
            raise ParameterError(f"rewards must be an array of numbers or 'random', got {rewards!r}")
        n_arms = checks.positive_int("n_arms", n_arms, minimum=2)
        rng = np.random.default_rng(seed)
        rewards_t = torch.as_tensor(rng.uniform(0.0, 1.0, size=(n_tasks, n_arms)))
        params.update(rewards="random", n_arms=n_arms, seed=seed)
    else:
        rewards_t = _as_tensor("rewards", rewards, [(-1,), (n_tasks, -1)])
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
        init_t = _as_tensor("init_logits", init_logits, [(n_arms,)])
        params["init_logits"] = np.asarray(init_logits, dtype=float).tolist()
    return BanditTask(rewards=rewards_t, init_logits=init_t, params=params)

