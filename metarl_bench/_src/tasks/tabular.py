"""Random tabular MDPs with a tabular softmax policy pi_theta(a|x) = softmax(theta[x])_a
(``policies.TabularSoftmax``):
finite-horizon (``tabular-v0``: exact value by propagating the state distribution) and
discounted infinite-horizon (``tabular-discounted-v0``: exact value by a linear solve, episodes
that end at random); the model, batched alias-table sampling and log-probabilities."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from metarl_bench._src.core import resources

from metarl_bench._src.core import validation
from metarl_bench._src.core.draws import (CategoricalTables, alias_draw, alias_outcomes,
                                            alias_table)
from metarl_bench._src.core.errors import ParameterError, UnsupportedError
from metarl_bench._src.tasks.policies import TabularSoftmax
from metarl_bench._src.tasks.base import Task, as_tensor, distribution, uniform
from metarl_bench._src.core.trajectories import Trajectories


def without_subnormals(values: torch.Tensor) -> torch.Tensor:
    """``values`` with the entries below its dtype's smallest normal number set to 0.

    A Dirichlet draw with a small concentration has transition probabilities far below
    float32's normal range (1.2e-38); converted to float32 they become subnormal, and
    arithmetic on subnormals is many times slower on some CPUs. Setting them to 0 when the
    model is converted changes each such entry by less than 1.2e-38 (float32's own rounding
    of a probability is 6e-8); the float64 model, which holds every entry, is untouched.
    A global torch.set_flush_denormal(True) was the alternative; it is a process-wide
    switch that would also change the user's own computations, so it is not used.
    """
    return values.masked_fill(values.abs() < torch.finfo(values.dtype).tiny, 0.0)


class TabularTask(Task):
    """Finite-horizon tabular MDPs with a tabular softmax policy, theta of shape (S, A).

    The model is held in float64 on the CPU and converted once per (dtype, device).
    """

    has_model = True
    #: probability of going on after each step (discounted tasks); None: fixed horizon
    continue_probability: float | None = None

    def __init__(self, *, name: str, start: torch.Tensor, transitions: torch.Tensor,
                 rewards: torch.Tensor, horizon: int, gamma: float, init_logits: torch.Tensor):
        self.name = name
        self.n_tasks, self.n_states, self.n_actions = rewards.shape
        self.horizon = horizon
        self.gamma = gamma
        self.policy = TabularSoftmax(self.n_states, self.n_actions, init_logits)
        self.param_shape = self.policy.param_shape
        self._start = start
        self._transitions = transitions
        self._rewards = rewards
        self._cache: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}

    def _model(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            start, transitions, rewards = (
                without_subnormals(t.to(dtype=like.dtype, device=like.device))
                for t in (self._start, self._transitions, self._rewards))
            self._cache[key] = (start, transitions, rewards,
                                start.cumsum(-1), transitions.cumsum(-1))
        return self._cache[key]

    def _logits(self, params: torch.Tensor) -> torch.Tensor:
        return self.policy.logits(params)

    def _alias_model(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flat alias tables of the start and transition laws, and the rewards, chained.

        A sampled trajectory walks the indices  state * A  (the offset of the policy table
        of that state) and  (state * A + action) * S  (the offset of the transition table
        of that state-action pair), so each table's outcomes are stored as the offset of the
        table the next draw reads and no arithmetic sits between two draws. Returns the
        start thresholds (n_tasks*S,) and outcomes, the transition thresholds
        (n_tasks*S*A*S,) and outcomes, and the rewards indexed by (task * S*A*S + state-
        action offset) (n_tasks*S*A*S,). Built once in float64 on the CPU from the float64
        model and then converted, so every dtype and device draws from the same tables.
        """
        key = ("alias", like.dtype, like.device)
        if key not in self._cache:
            n_states, n_actions = self.n_states, self.n_actions
            policy_offset = torch.arange(n_states) * n_actions            # next state -> s*A
            start_threshold, start_alias = alias_table(self._start)
            step_threshold, step_alias = alias_table(self._transitions)
            rewards = self._rewards.unsqueeze(-1).expand(-1, -1, -1, n_states)
            tables = (start_threshold.reshape(-1),
                      alias_outcomes(start_alias, policy_offset.expand_as(start_alias)),
                      step_threshold.reshape(-1),
                      alias_outcomes(step_alias, policy_offset.expand_as(step_alias)),
                      rewards.reshape(-1))
            self._cache[key] = tuple(
                without_subnormals(t.to(device=like.device, dtype=like.dtype))
                if t.is_floating_point() else t.to(device=like.device) for t in tables)
        return self._cache[key]

    def _offset_lookup(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """State and action of each state-action offset (s * A + a) * S: (S*A*S,) long each."""
        key = ("offsets", like.device)
        if key not in self._cache:
            offset = torch.arange(self.n_states * self.n_actions * self.n_states,
                                  device=like.device)
            state_action = offset.div(self.n_states, rounding_mode="floor")
            self._cache[key] = (state_action.div(self.n_actions, rounding_mode="floor"),
                                state_action.remainder(self.n_actions))
        return self._cache[key]

    def _policy_draws(self, n_rows: int, n_traj: int) -> int:
        """The policy draws of one ``sample`` call: one per row, trajectory and step walked
        (discounted tasks: the typical padded length of R*N episodes, log(R N) / -log gamma,
        every episode being drawn for until the last has ended)."""
        if self.continue_probability is None:
            return n_rows * n_traj * self.horizon
        if self.continue_probability == 0.0:
            return n_rows * n_traj
        steps = 1 + math.log(max(2, n_rows * n_traj)) / -math.log(self.continue_probability)
        return math.ceil(n_rows * n_traj * steps)

    def _policy_tables(self, params: torch.Tensor, n_traj: int, *, offsets: bool = True
                       ) -> tuple[CategoricalTables, bool]:
        """The policy's laws of every row, ready for ``n_traj`` trajectories per row, and
        whether the rows share them (rows that are views of one theta: one set of laws).

        A draw returns the state-action offset (s * A + a) * S (``offsets=False``: the
        action). Alias tables or cumulative sums, whichever is cheaper for how often each
        law is drawn from in this call (``draws.CategoricalTables``: a rule of the shapes
        and counts only).
        """
        n_rows = params.shape[0]
        n_states, n_actions = self.n_states, self.n_actions
        # rows that are views of one theta (the inner samples of a registered call) share
        # one policy table: building R identical tables would cost more than the draws
        shared = n_rows > 1 and params.stride(0) == 0
        probs = self.policy.probs(params[:1] if shared else params)                # (R', S, A)
        values = None
        if offsets:
            key = ("state-action", params.device)
            if key not in self._cache:
                self._cache[key] = (torch.arange(n_states * n_actions, device=params.device)
                                    * n_states).reshape(n_states, n_actions)
            values = self._cache[key].expand_as(probs).reshape(-1, n_actions)
        return CategoricalTables(probs.reshape(-1, n_actions), values,
                                 self._policy_draws(n_rows, n_traj),
                                 gathered=n_states > 1), shared

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        """Trajectories by categorical draws: one uniform per draw.

        Per trajectory: the start state (one uniform), then per step the action and, unless
        it is the last step, the next state (one uniform each), all rows and trajectories
        at once; the draws are a fixed function of the generator's stream. Start and
        transition laws are alias tables (built once per task, O(1) per draw); the policy's
        are alias tables or cumulative sums (``_policy_tables``).
        """
        params = params.detach()
        n_rows = params.shape[0]
        n_states, n_actions = self.n_states, self.n_actions
        (start_threshold, start_outcomes, step_threshold, step_outcomes,
         rewards_by_offset) = self._alias_model(params)
        policy, shared = self._policy_tables(params, n_traj)
        row_offset = (None if shared else torch.arange(n_rows, device=params.device)
                      .unsqueeze(1) * (n_states * n_actions))                      # (R, 1)
        task_offset = (None if self.n_tasks == 1 else
                       task_index.unsqueeze(1) * (n_states * n_actions * n_states))  # (R, 1)
        shape = (n_rows, n_traj)
        state = alias_draw(start_threshold, start_outcomes, task_index.unsqueeze(1) * n_states,
                           uniform(shape, generator, params, high=n_states))
        state_actions, alive_steps = [], []
        alive = (None if self.continue_probability is None else
                 torch.ones(shape, dtype=torch.bool, device=params.device))
        while True:
            state_action = policy.draw(state if shared else state + row_offset,
                                       uniform(shape, generator, params, high=n_actions))
            state_actions.append(state_action)                   # (s * A + a) * S
            if self.continue_probability is None:
                if len(state_actions) == self.horizon:
                    break
            else:
                alive_steps.append(alive)
                alive = alive & (uniform(shape, generator, params) < self.continue_probability)
                # no cap: the walk goes on until every episode has ended, so no episode is
                # cut short (the padded length is the longest of R*N geometric lengths)
                if not alive.any():
                    break
            state = alias_draw(
                step_threshold, step_outcomes,
                state_action if task_offset is None else state_action + task_offset,
                uniform(shape, generator, params, high=n_states))
        # one stacked record per step; states, actions and rewards are read off it by lookup
        scaled = torch.stack(state_actions, -1)
        state_of, action_of = self._offset_lookup(params)
        states_t, actions_t = state_of.take(scaled), action_of.take(scaled)
        rewards_t = rewards_by_offset.take(
            scaled if task_offset is None else scaled + task_offset.unsqueeze(-1))
        if self.continue_probability is None:
            return Trajectories(states_t, actions_t, rewards_t, task_index)
        mask = torch.stack(alive_steps, -1)
        ended = ~mask
        return Trajectories(states_t.masked_fill_(ended, 0), actions_t.masked_fill_(ended, 0),
                            rewards_t.masked_fill_(ended, 0.0), task_index, mask)

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

    def state_values(self, params: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        """Exact value of each state at each time under each row's policy: (R, *P) -> (R, T, S).

        W[r, t, s] = E[sum_{t' >= t} gamma**t' r_t' | x_t = s], discounted from time 0 like
        the rewards-to-go of ``trajectories.reward_to_go``, so that G_t - W[t, x_t] is the
        advantage of step t in the same units (W[:, 0] . start = V). Backward recursion over
        the remaining horizon, W[T-1] = gamma**(T-1) r_pi, W[t] = gamma**t r_pi + P_pi W[t+1].
        Fixed-horizon tasks only.
        """
        if self.continue_probability is not None:
            raise UnsupportedError(
                f"task {self.name!r}: exact per-state values (critic='exact') are implemented "
                f"for fixed-horizon tasks only; use critic='linear' or 'none'")
        start, transitions, rewards, _, _ = self._model(params)
        pi = self.policy.probs(params)                                    # (R, S, A)
        reward_pi = (pi * rewards[task_index]).sum(-1)                    # (R, S)
        transition_pi = (self._policy_transitions(pi, transitions, task_index)
                         if self.horizon > 1 else None)
        values = [self.gamma ** (self.horizon - 1) * reward_pi]
        for t in range(self.horizon - 2, -1, -1):
            later = torch.bmm(transition_pi, values[-1].unsqueeze(-1)).squeeze(-1)
            values.append(self.gamma ** t * reward_pi + later)
        return torch.stack(values[::-1], 1)


class DiscountedTabularTask(TabularTask):
    """Discounted infinite-horizon tabular MDPs with a tabular softmax policy (S, A).

    Value: V(theta) = mu^T (I - gamma P_pi)^{-1} r_pi, mu the start distribution, P_pi and
    r_pi the policy's transition matrix and expected rewards, by one differentiable linear
    solve per row.

    Episodes: after each step the episode goes on with probability gamma and ends
    otherwise, and the rewards are not discounted. Step t is reached with probability
    gamma^t, so the expected undiscounted return of an episode is exactly the discounted
    value above, and the policy-gradient and meta-gradient estimators that treat the end as
    part of the environment are unbiased for its gradients: no horizon is cut, no
    bootstrap is needed. Hence ``gamma`` (the discount the estimators apply to sampled
    rewards) is 1 and ``discount`` holds the MDP's gamma.

    Batches: a batch is walked until every episode in it has ended (no cap, so no
    truncation bias) and padded to its longest episode, ``Trajectories.mask`` marking the
    steps that happened. Episode lengths are Geometric(1 - gamma) (mean 1/(1 - gamma)); the
    padded length of n episodes is about log(n) / (1 - gamma), which sets the memory:
    e.g. gamma = 0.9 and 64,000 episodes pad to about 110 steps.
    """

    def __init__(self, *, discount: float, **kwargs: Any):
        super().__init__(horizon=None, gamma=1.0, **kwargs)
        self.discount = discount
        self.continue_probability = discount
        #: padded length to plan memory and work for: the typical longest of 2**20
        #: episodes, log(2**20) / -log(gamma) steps
        self.planning_horizon = (1 if discount == 0.0 else
                                 1 + math.ceil(math.log(2 ** 20) / -math.log(discount)))

    def value(self, params: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        start, transitions, rewards, _, _ = self._model(params)
        pi = self.policy.probs(params)                                    # (R, S, A)
        reward_pi = (pi * rewards[task_index]).sum(-1)                    # (R, S)
        transition_pi = self._policy_transitions(pi, transitions, task_index)
        eye = torch.eye(self.n_states, dtype=params.dtype, device=params.device)
        # occupancy d^T = mu^T (I - gamma P_pi)^{-1}: one solve with the transposed system
        occupancy = torch.linalg.solve((eye - self.discount * transition_pi).transpose(-1, -2),
                                       start[task_index])
        return (occupancy * reward_pi).sum(-1)


def _random_model(n_states: int, n_actions: int, concentration: float, n_tasks: int, seed: int,
                  init_scale: float, transitions: Any, rewards: Any, start: Any,
                  init_logits: Any) -> dict[str, torch.Tensor]:
    """Model tensors of random tabular MDPs, each replaceable by an explicit array."""
    S, A = n_states, n_actions
    # per entry of the transition tensor (n_tasks, S, A, S): the float64 draw, the tensor and
    # its cumulative sums, and the sampler's alias tables (a float64 threshold, two long
    # outcomes, the reward of its state-action pair)
    resources.check_memory(7 * 8 * n_tasks * S * A * S,
                           f"a tabular task with n_states={S}, n_actions={A}, n_tasks={n_tasks}",
                           "lower n_states, n_actions or n_tasks, or raise the limit "
                           "(--max-memory SIZE, max_memory=)")
    rng = np.random.default_rng(seed)
    drawn_transitions = rng.dirichlet(np.full(S, concentration), size=(n_tasks, S, A))
    drawn_rewards = rng.uniform(0.0, 1.0, size=(n_tasks, S, A))
    drawn_init = rng.normal(0.0, init_scale, size=(S, A)) if init_scale > 0 else np.zeros((S, A))

    def per_task(name: str, value: Any, shape: tuple[int, ...], drawn: np.ndarray) -> torch.Tensor:
        if value is None:
            return torch.as_tensor(drawn)
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
    return dict(start=start_t, transitions=transitions_t, rewards=rewards_t, init_logits=init_t)


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
    if horizon is None:
        raise ParameterError("tabular-v0 has a finite horizon (an integer >= 1); the "
                             "discounted infinite-horizon MDP is 'tabular-discounted-v0'")
    horizon = validation.positive_int("horizon", horizon)
    gamma = validation.finite_float("gamma", gamma, low=0.0, high=1.0)
    concentration = validation.finite_float("concentration", concentration, positive=True)
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    seed = validation.positive_int("seed", seed, minimum=0)
    init_scale = validation.finite_float("init_scale", init_scale, low=0.0)
    model = _random_model(n_states, n_actions, concentration, n_tasks, seed, init_scale,
                          transitions, rewards, start, init_logits)
    return TabularTask(name="tabular-v0", horizon=horizon, gamma=gamma, **model)


def make_discounted_tabular(*, n_states: int = 10, n_actions: int = 4, gamma: float = 0.9,
                            concentration: float = 1.0, n_tasks: int = 1, seed: int = 0,
                            init_scale: float = 1.0, transitions: Any = None, rewards: Any = None,
                            start: Any = None, init_logits: Any = None) -> DiscountedTabularTask:
    """Random discounted infinite-horizon MDP(s), softmax policy (``tabular-discounted-v0``).

    The MDPs of ``tabular-v0`` (same arguments, same draws from ``seed``) with no horizon:
    V = mu^T (I - gamma P_pi)^{-1} r_pi exactly, and episodes that go on after each step
    with probability ``gamma`` in [0, 1), undiscounted, so their expected return is V
    (see :class:`DiscountedTabularTask`).
    """
    n_states = validation.positive_int("n_states", n_states)
    n_actions = validation.positive_int("n_actions", n_actions, minimum=2)
    gamma = validation.finite_float("gamma", gamma, low=0.0)
    if gamma >= 1.0:
        raise ParameterError(f"gamma must be < 1 for an infinite horizon (episodes end with "
                             f"probability 1 - gamma per step), got {gamma}")
    concentration = validation.finite_float("concentration", concentration, positive=True)
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    seed = validation.positive_int("seed", seed, minimum=0)
    init_scale = validation.finite_float("init_scale", init_scale, low=0.0)
    model = _random_model(n_states, n_actions, concentration, n_tasks, seed, init_scale,
                          transitions, rewards, start, init_logits)
    return DiscountedTabularTask(name="tabular-discounted-v0", discount=gamma, **model)
