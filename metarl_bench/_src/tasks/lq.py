"""Linear-quadratic navigation (``lq-navigation-v0``): continuous control with an exact,
differentiable value, so every exact-truth tool of the tabular tasks applies to a Gaussian
policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metarl_bench._src.core import resources, validation
from metarl_bench._src.core.draws import normal
from metarl_bench._src.tasks.envs.lq import sample_goals
from metarl_bench._src.tasks.policies import LinearGaussian
from metarl_bench._src.tasks.base import Task, as_tensor
from metarl_bench._src.core.trajectories import Trajectories, reward_to_go


class LQNavigationTask(Task):
    """Linear-quadratic navigation to a goal g in R^d, linear Gaussian policy.

    ## Dynamics and policy
    x_{t+1} = x_t + a_t (no clipping), a_t = K x_t + k + sigma * eps_t, eps_t ~ N(0, I_d);
    theta = (K (d, d), k (d,), log sigma (d,)) flattened, D = d^2 + 2d.
    x_0 ~ N(start_mean, start_std^2 I) (a fixed start when start_std = 0).

    ## Reward
    r_t = -|x_t - g|^2 - c |a_t|^2 (c = ``control_cost``) for t = 0..T-1, discounted by
    gamma^t.

    ## Exact value
    The state stays Gaussian: with m_t, C_t its mean and covariance, A = I + K and
    S = diag(sigma^2),
        m_{t+1} = A m_t + k,    C_{t+1} = A C_t A^T + S,
        E r_t = -(|m_t - g|^2 + tr C_t) - c (|K m_t + k|^2 + tr(K C_t K^T) + tr S),
    and V(theta) = sum_t gamma^t E r_t: a polynomial in (K, k) and exp(log sigma), exact and
    differentiable to any order, batched over rows (one (K, k, sigma) per row).

    ## Task distribution
    ``n_tasks`` goals U[goal_low, goal_high]^d drawn from ``seed`` (or explicit ``goals``),
    with the same code as the Gymnasium environment ``metarl_bench/LQNavigation-v0``'s
    ``sample_tasks(n_tasks, seed)``; that environment stepped with this sampler's actions
    gives its observations bit for bit, and its rewards bit for bit for d <= 4 (within 2d ulp
    beyond: numpy and torch sum the d squares in different orders).

    ## Version history
    * v0: initial version.
    """

    has_model = True

    def __init__(self, *, goals: torch.Tensor, horizon: int, gamma: float, control_cost: float,
                 start_mean: torch.Tensor, start_std: float, policy: LinearGaussian):
        self.name = "lq-navigation-v0"
        self.goals = goals
        self.n_tasks, self.dim = goals.shape
        self.horizon, self.gamma, self.control_cost = horizon, gamma, control_cost
        self.start_mean, self.start_std = start_mean, start_std
        self.policy = policy
        self.param_shape = policy.param_shape

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None) -> Trajectories:
        params = params.detach()
        n_rows, dim = params.shape[0], self.dim
        goals = self.goals.to(dtype=params.dtype, device=params.device)[task_index].unsqueeze(1)
        state = self.start_mean.to(params).expand(n_rows, n_traj, dim)
        if self.start_std > 0:
            state = state + self.start_std * normal((n_rows, n_traj, dim), generator, params)
        states = params.new_empty(n_rows, n_traj, self.horizon, dim)
        actions = params.new_empty(n_rows, n_traj, self.horizon, dim)
        rewards = params.new_empty(n_rows, n_traj, self.horizon)
        for t in range(self.horizon):
            action = self.policy.sample(params, state, generator)
            states[:, :, t] = state
            actions[:, :, t] = action
            rewards[:, :, t] = (-((state - goals) ** 2).sum(-1)
                                - self.control_cost * (action ** 2).sum(-1))
            state = state + action
        return Trajectories(states, actions, rewards, task_index)

    def value(self, params: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        blocks = self.policy.layout.split(params)
        gain, bias, log_std = blocks["gain"], blocks["bias"], blocks["log_std"]
        n_rows, dim = params.shape[0], self.dim
        eye = torch.eye(dim, dtype=params.dtype, device=params.device)
        closed_loop = eye + gain                                                 # (R, d, d)
        noise = torch.diag_embed(torch.exp(2 * log_std))                        # (R, d, d)
        goals = self.goals.to(dtype=params.dtype, device=params.device)[task_index]
        mean = self.start_mean.to(params).expand(n_rows, dim)
        cov = (self.start_std ** 2) * eye.expand(n_rows, dim, dim)
        value = params.new_zeros(n_rows)
        for t in range(self.horizon):
            expected = -(((mean - goals) ** 2).sum(-1) + cov.diagonal(0, 1, 2).sum(-1))
            if self.control_cost:
                action_mean = torch.einsum("rij,rj->ri", gain, mean) + bias
                action_cov = gain @ cov @ gain.transpose(1, 2) + noise
                expected = expected - self.control_cost * (
                    (action_mean ** 2).sum(-1) + action_cov.diagonal(0, 1, 2).sum(-1))
            value = value + self.gamma ** t * expected
            if t + 1 < self.horizon:
                mean = torch.einsum("rij,rj->ri", closed_loop, mean) + bias
                cov = closed_loop @ cov @ closed_loop.transpose(1, 2) + noise
        return value


def make_lq_navigation(*, dim: int = 2, horizon: int = 5, gamma: float = 1.0, n_tasks: int = 1,
                       seed: int = 0, goal_low: float = -0.5, goal_high: float = 0.5,
                       goals: Any = None, control_cost: float = 0.0, init_std: float = 0.5,
                       init_gain: Any = None, init_bias: Any = None, start_mean: Any = None,
                       start_std: float = 0.0) -> LQNavigationTask:
    """Linear-quadratic navigation with an exact value, linear Gaussian policy
    (``lq-navigation-v0``).

    x_{t+1} = x_t + a_t, a_t = K x_t + k + sigma eps_t, reward -|x_t - g|^2 - c|a_t|^2.
    ``dim``: d; ``n_tasks`` goals U[goal_low, goal_high]^d from ``seed`` or explicit
    ``goals`` (n_tasks, d); ``control_cost``: c; initial policy K = ``init_gain`` (zeros),
    k = ``init_bias`` (zeros), sigma = ``init_std``; start x_0 ~ N(``start_mean`` (zeros),
    ``start_std``^2 I).
    """
    dim = validation.positive_int("dim", dim)
    # the policy's parameters (d^2 + 2d), made twice (initial values and theta), before any
    # evaluation's own check can run
    resources.check_memory(2 * 8 * (dim * dim + 2 * dim),
                           f"an lq-navigation-v0 task with dim={dim} ({dim * dim + 2 * dim:,} "
                           f"policy parameters)",
                           "lower dim, or raise the limit (--max-memory SIZE, max_memory=)")
    horizon = validation.positive_int("horizon", horizon)
    gamma = validation.finite_float("gamma", gamma, low=0.0, high=1.0)
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    seed = validation.positive_int("seed", seed, minimum=0)
    goal_low, goal_high = validation.interval("goal_low", goal_low, "goal_high", goal_high)
    control_cost = validation.finite_float("control_cost", control_cost, low=0.0)
    init_std = validation.finite_float("init_std", init_std, positive=True)
    start_std = validation.finite_float("start_std", start_std, low=0.0)
    if goals is None:
        goals_t = torch.as_tensor(sample_goals(n_tasks, np.random.default_rng(seed), dim,
                                               goal_low, goal_high))
    else:
        goals_t = as_tensor("goals", goals, [(dim,), (-1, dim)]).reshape(-1, dim)

    def optional(name: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor | None:
        if value is None:
            return None
        return as_tensor(name, value, [shape])

    policy = LinearGaussian(dim, dim, init_std=init_std,
                            init_gain=optional("init_gain", init_gain, (dim, dim)),
                            init_bias=optional("init_bias", init_bias, (dim,)))
    start = optional("start_mean", start_mean, (dim,))
    return LQNavigationTask(goals=goals_t, horizon=horizon, gamma=gamma,
                            control_cost=control_cost,
                            start_mean=torch.zeros(dim, dtype=torch.float64) if start is None
                            else start, start_std=start_std, policy=policy)


def pathwise_meta_gradients(task: LQNavigationTask, theta: torch.Tensor, *, n_inner: int,
                            inner_lr: float, n_samples: int,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent unbiased estimates of grad F_N by reparameterisation: (n_samples, D).

    Each trajectory is a differentiable function of theta and fixed noise (x_{t+1} = x_t +
    K x_t + k + sigma eps_t), so F_N(theta) = E_eps mean_k V_k(theta + eta g_N(theta, tau(theta,
    eps))) can be differentiated inside the expectation. g_N differentiates the surrogate
    sum_t log pi_theta(a_t|x_t) G_t in the policy's theta only (the trajectory held fixed), so
    the policy sees a copy of theta while the trajectory sees theta itself. No score
    function appears at the outer level: a check of the score-function estimators that
    shares none of their code. One sample is the average over the task distribution of one
    trial's per-task pathwise gradients.
    """
    n_rows = n_samples * task.n_tasks
    task_index = torch.arange(n_rows, device=theta.device) % task.n_tasks
    # one leaf copy per trial, shared by that trial's tasks: one backward pass gives every
    # trial's gradient
    trials = theta.detach().unsqueeze(0).repeat(n_samples, 1).requires_grad_()
    rows = trials.unsqueeze(1).expand(n_samples, task.n_tasks, -1).reshape(n_rows, -1)
    policy_params = rows.clone()
    blocks = task.policy.layout.split(rows)
    gain, bias, std = blocks["gain"], blocks["bias"], torch.exp(blocks["log_std"])
    goals = task.goals.to(theta)[task_index].unsqueeze(1)
    dim = task.dim
    state = task.start_mean.to(theta).expand(n_rows, n_inner, dim)
    if task.start_std > 0:
        state = state + task.start_std * normal((n_rows, n_inner, dim), generator, theta)
    states, actions, rewards = [], [], []
    for _ in range(task.horizon):
        noise = normal((n_rows, n_inner, dim), generator, theta)
        action = (torch.einsum("rij,rnj->rni", gain, state) + bias.unsqueeze(1)
                  + std.unsqueeze(1) * noise)
        states.append(state)
        actions.append(action)
        rewards.append(-((state - goals) ** 2).sum(-1) - task.control_cost * (action ** 2).sum(-1))
        state = state + action
    traj = Trajectories(torch.stack(states, 2), torch.stack(actions, 2), torch.stack(rewards, -1),
                        task_index)
    returns = reward_to_go(traj.rewards, task.gamma)
    surrogate = (task.policy.log_prob(policy_params, traj.states, traj.actions)
                 * returns).sum(-1).mean(-1)
    (inner_grad,) = torch.autograd.grad(surrogate.sum(), policy_params, create_graph=True)
    values = task.value(policy_params + inner_lr * inner_grad, task_index)
    objectives = values.reshape(n_samples, task.n_tasks).mean(-1)
    (grads,) = torch.autograd.grad(objectives.sum(), trials)
    return grads
