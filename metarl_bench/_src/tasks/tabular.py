"""Random finite-horizon tabular MDPs with a tabular softmax policy pi_theta(a|x) =
softmax(theta[x])_a (``policies.TabularSoftmax``): the model (start distribution, transitions, rewards), batched sampling,
log-probabilities and the exact value by propagating the state distribution."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarl_bench._src import resources, validation
from metarl_bench._src.policies import TabularSoftmax
from metarl_bench._src.tasks.base import Task, as_tensor, distribution, inverse_cdf, uniform
from metarl_bench._src.trajectories import Trajectories


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
        self.policy = TabularSoftmax(self.n_states, self.n_actions, init_logits)
        self.param_shape = self.policy.param_shape
        self._start = start
        self._transitions = transitions
        self._rewards = rewards
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
        return self.policy.logits(params)

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        params = params.detach()
        n_rows = params.shape[0]
        _, _, rewards, start_cdf, transition_cdf = self._model(params)
        probs = torch.softmax(self._logits(params), dim=-1)             # (R, S, A)
        shape = (n_rows, n_traj)
        rows = torch.arange(n_rows, device=params.device).unsqueeze(1)  # (R, 1)
        tasks = task_index.unsqueeze(1)                                  # (R, 1)
        state = inverse_cdf(start_cdf[tasks].expand(*shape, -1), uniform(shape, generator, params))
        states, actions, rewards_t = [], [], []
        for t in range(self.horizon):
            action = inverse_cdf(probs[rows, state].cumsum(-1), uniform(shape, generator, params))
            states.append(state)
            actions.append(action)
            rewards_t.append(rewards[tasks, state, action])
            if t + 1 < self.horizon:
                state = inverse_cdf(transition_cdf[tasks, state, action],
                                     uniform(shape, generator, params))
        return Trajectories(torch.stack(states, -1), torch.stack(actions, -1),
                            torch.stack(rewards_t, -1), task_index)

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
        pi = self.policy.probs(params)                                    # (R, S, A)
        reward_pi = (pi * rewards[task_index]).sum(-1)                    # (R, S)
        state_dist = start[task_index]                                    # (R, S)
        value = (state_dist * reward_pi).sum(-1)
        if self.horizon > 1:
            transition_pi = self._policy_transitions(pi, transitions, task_index)
            for t in range(1, self.horizon):
                state_dist = torch.bmm(state_dist.unsqueeze(1), transition_pi).squeeze(1)
                value = value + self.gamma ** t * (state_dist * reward_pi).sum(-1)
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
    n_states = validation.positive_int("n_states", n_states)
    n_actions = validation.positive_int("n_actions", n_actions, minimum=2)
    horizon = validation.positive_int("horizon", horizon)
    gamma = validation.finite_float("gamma", gamma, low=0.0, high=1.0)
    concentration = validation.finite_float("concentration", concentration, positive=True)
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    seed = validation.positive_int("seed", seed, minimum=0)
    init_scale = validation.finite_float("init_scale", init_scale, low=0.0)
    params = dict(n_states=n_states, n_actions=n_actions, horizon=horizon, gamma=gamma,
                  concentration=concentration, n_tasks=n_tasks, seed=seed, init_scale=init_scale)
    S, A = n_states, n_actions
    # the transition tensor (n_tasks, S, A, S) in float64, its cumulative sums for sampling,
    # and the draw it is made from
    resources.check_memory(3 * 8 * n_tasks * S * A * S,
                           f"tabular-v0 with n_states={S}, n_actions={A}, n_tasks={n_tasks}",
                           "lower n_states, n_actions or n_tasks, or raise the limit "
                           "(--max-memory SIZE, max_memory=)")
    rng = np.random.default_rng(seed)
    drawn_transitions = rng.dirichlet(np.full(S, concentration), size=(n_tasks, S, A))
    drawn_rewards = rng.uniform(0.0, 1.0, size=(n_tasks, S, A))
    drawn_init = rng.normal(0.0, init_scale, size=(S, A)) if init_scale > 0 else np.zeros((S, A))

    def per_task(name: str, value: Any, shape: tuple[int, ...], drawn: np.ndarray) -> torch.Tensor:
        if value is None:
            return torch.as_tensor(drawn)
        params[name] = np.asarray(value).tolist()
        out = as_tensor(name, value, [shape, (n_tasks, *shape)])
        return out.expand(n_tasks, *shape).clone() if out.dim() == len(shape) else out

    transitions_t = distribution("transitions", per_task("transitions", transitions, (S, A, S),
                                                           drawn_transitions))
    rewards_t = per_task("rewards", rewards, (S, A), drawn_rewards)
    start_t = distribution("start", per_task("start", start, (S,), np.full((n_tasks, S), 1.0 / S)))
    if init_logits is None:
        init_t = torch.as_tensor(drawn_init)
    else:
        init_t = as_tensor("init_logits", init_logits, [(S, A)])
        params["init_logits"] = np.asarray(init_logits, dtype=float).tolist()
    return TabularTask(name="tabular-v0", start=start_t, transitions=transitions_t,
                       rewards=rewards_t, horizon=horizon, gamma=gamma, init_logits=init_t,
                       params=params)
