"""What multiplies grad log pi(a_t|x_t) in the inner policy gradient: reward-to-go, a linear
feature baseline, generalised advantage estimation (GAE), advantage normalisation.

Convention: every quantity is discounted from time 0, as ``reward_to_go`` is: G_t =
sum_{t' >= t} gamma**t' r_t', a baseline b_t is fitted to G_t, and the advantage at t is
gamma**t times the usual one, so that sum_t grad log pi_t A_t stays an estimate of grad V.

What the options change. The inner step theta' = theta + eta g_N defines the meta-objective
F_N(theta) = E V(theta + eta g_N), so any option that changes g_N changes F_N itself, not
only the noise of its estimates:
- ``baseline="linear"``: b(x_t, t) fitted by ridge regression on the same N trajectories
  (as MAML-RL, garage and ProMP do). A baseline fitted on the samples it is subtracted from
  makes g_N slightly biased for grad V at finite N (the bias vanishes as N grows), so F_N
  differs from the plain one; F_inf does not change.
- ``gae_lambda``: A_t = sum_k (gamma lambda)**k delta_{t+k} with delta_t = r_t + gamma
  v(x_{t+1}) - v(x_t), v the baseline. lambda = 1 gives G_t - b_t exactly; lambda < 1 trades
  bias for variance unless the baseline is the true value function, and changes F_inf too.
- ``normalize=True``: (A - mean) / std over each row's N x T advantages. It rescales the
  step by a random factor, so F_N and F_inf both change. Off by default.
The estimated truth of a task without a model (an ``unbiased`` estimate of grad F_N) and the
estimators built on the shared inner step (``unbiased``, ``lsf``, ``maml``, ``fomaml``) all use
the task's setting, so they estimate the same F_N; ``dice`` (its own surrogate of raw
rewards) and ``loo`` (which needs per-trajectory inner gradients) refuse non-plain settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError, UnsupportedError
from metarl_bench._src.core.trajectories import Trajectories, discounts, reward_to_go

BASELINES = (None, "linear")


def _cubic(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([t, t * t, t * t * t], -1)


def time_features_per_100_steps(horizon: int, like: torch.Tensor) -> torch.Tensor:
    """(t/100, (t/100)**2, (t/100)**3) for t = 0..T-1: (T, 3). garage's (and MAML-RL's)
    scaling, the same at every horizon: the linear feature baseline of the inner step."""
    return _cubic(torch.arange(horizon, dtype=like.dtype, device=like.device) / 100.0)


def time_features_per_horizon(horizon: int, like: torch.Tensor) -> torch.Tensor:
    """(t/T, (t/T)**2, (t/T)**3) for t = 0..T-1: (T, 3). The fraction of the horizon
    elapsed: the linear critic of the DiCE family (``estimators.critics``)."""
    return _cubic(torch.arange(horizon, dtype=like.dtype, device=like.device) / horizon)


def decay_matrix(horizon: int, decay: float, like: torch.Tensor) -> torch.Tensor:
    """M[u, t] = decay**(u - t) for u >= t, else 0: (T, T), with 0**0 = 1.

    x @ M sums each step's future (sum_{u >= t} decay**(u-t) x_u); x @ M.T its past.
    """
    steps = torch.arange(horizon, device=like.device)
    lag = steps.unsqueeze(1) - steps.unsqueeze(0)
    return torch.where(lag >= 0, decay ** lag.clamp(min=0).to(like.dtype),
                       torch.zeros((), dtype=like.dtype, device=like.device))


def linear_features(observations: torch.Tensor) -> torch.Tensor:
    """(x, x**2, t, t**2, t**3, 1) for every step: (R, N, T, d) -> (R, N, T, 2d + 4)."""
    n_rows, n_traj, horizon = observations.shape[:3]
    x = observations.reshape(n_rows, n_traj, horizon, -1)
    times = time_features_per_100_steps(horizon, x).expand(n_rows, n_traj, horizon, 3)
    return torch.cat([x, x * x, times, torch.ones_like(x[..., :1])], -1)


def linear_feature_baseline(observations: torch.Tensor, returns: torch.Tensor, *,
                            reg: float = 1e-5) -> torch.Tensor:
    """Each row's ridge-regression fit of ``returns`` on ``linear_features``: (R, N, T).

    Solved as the least-squares problem [Phi; sqrt(reg * N T) I] w = [G; 0], which has full
    column rank for any reg > 0, so it cannot fail on singular systems (constant features,
    a single trajectory, repeated states); the regulariser grows with the sample count so its
    strength per sample is ``reg``.
    """
    if observations.is_floating_point() is False:
        raise UnsupportedError("the linear feature baseline needs float observations; this "
                               "task's observations are discrete indices")
    features = linear_features(observations.to(returns.dtype))              # (R, N, T, F)
    n_rows, n_traj, horizon, n_features = features.shape
    design = features.reshape(n_rows, -1, n_features)
    ridge = (reg * n_traj * horizon) ** 0.5 * torch.eye(
        n_features, dtype=returns.dtype, device=returns.device).expand(n_rows, -1, -1)
    targets = torch.cat([returns.reshape(n_rows, -1), returns.new_zeros(n_rows, n_features)], 1)
    # gels (Householder QR) needs only full column rank, which the ridge rows give; the CPU
    # default, gelsy (QR with column pivoting), returns different last bits from one call to
    # the next on the same input, and a training run would then not repeat bit for bit
    weights = torch.linalg.lstsq(torch.cat([design, ridge], 1), targets.unsqueeze(-1),
                                 driver="gels").solution
    return (design @ weights).reshape(n_rows, n_traj, horizon)


def gae_from_values(discounted_rewards: torch.Tensor, values: torch.Tensor,
                    gae_lambda: float) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016) in time-0 units: (R, N, T).

    A_t = sum_{l >= 0} lambda**l delta_{t+l}, delta_t = gamma**t r_t + W_{t+1} - W_t, from the
    discounted rewards gamma**t r_t (R, N, T) and the values W (R, N, T + 1), W_T = 0, also
    discounted from time 0. lambda = 1 gives G_t - W_t, lambda = 0 the one-step TD error;
    one (T, T) matmul. The one GAE: the inner step's (``gae``) and the critics' of the DiCE
    family (``estimators.critics``).
    """
    delta = discounted_rewards + values[..., 1:] - values[..., :-1]
    return torch.einsum("rnu,ut->rnt", delta, decay_matrix(delta.shape[-1], gae_lambda, delta))


def gae(rewards: torch.Tensor, baseline: torch.Tensor, gamma: float,
        gae_lambda: float) -> torch.Tensor:
    """gamma**t A_t^GAE(gamma, lambda) from rewards and a baseline fitted to G_t: (R, N, T)
    (``gae_from_values`` with b_T = 0)."""
    discounted = rewards * discounts(gamma, rewards.shape[-1], rewards)
    values = torch.cat([baseline, torch.zeros_like(baseline[..., :1])], -1)
    return gae_from_values(discounted, values, gae_lambda)


def normalize(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean) / (std + eps) over each row's N x T advantages."""
    flat = advantages.reshape(advantages.shape[0], -1)
    mean = flat.mean(-1).reshape(-1, 1, 1)
    std = flat.std(-1).reshape(-1, 1, 1) if flat.shape[1] > 1 else torch.ones_like(mean)
    return (advantages - mean) / (std + eps)


@dataclass(frozen=True)
class Advantages:
    """A task's inner-step advantage setting (see the module docstring for what each option
    changes in F_N). The default, plain reward-to-go, is the one every truth assumes."""

    baseline: str | None = None
    gae_lambda: float | None = None
    normalize: bool = False
    baseline_reg: float = 1e-5

    @property
    def plain(self) -> bool:
        return self.baseline is None and self.gae_lambda is None and not self.normalize

    def describe(self) -> dict[str, Any]:
        return dict(baseline=self.baseline, gae_lambda=self.gae_lambda,
                    normalize_advantages=self.normalize)

    def __call__(self, traj: Trajectories, gamma: float) -> torch.Tensor:
        returns = reward_to_go(traj.rewards, gamma)
        if self.plain:
            return returns
        if self.baseline == "linear":
            baseline = linear_feature_baseline(traj.states, returns, reg=self.baseline_reg)
        else:
            baseline = torch.zeros_like(returns)
        if self.gae_lambda is not None:
            advantages = gae(traj.rewards, baseline, gamma, self.gae_lambda)
        else:
            advantages = returns - baseline
        return normalize(advantages) if self.normalize else advantages


PLAIN = Advantages()


def make_advantages(baseline: Any = None, gae_lambda: Any = None,
                    normalize_advantages: Any = False) -> Advantages:
    """A checked ``Advantages`` from task arguments."""
    if baseline not in BASELINES:
        raise ParameterError(f"baseline must be one of {', '.join(map(repr, BASELINES))}, "
                             f"got {baseline!r}")
    if gae_lambda is not None:
        gae_lambda = validation.finite_float("gae_lambda", gae_lambda, low=0.0, high=1.0)
    if not isinstance(normalize_advantages, bool):
        raise ParameterError(f"normalize_advantages must be true or false, got "
                             f"{normalize_advantages!r}")
    return Advantages(baseline=baseline, gae_lambda=gae_lambda, normalize=normalize_advantages)


def inner_returns(task: Any, traj: Trajectories) -> torch.Tensor:
    """The weights of grad log pi_t in the task's inner policy gradient: (R, N, T)."""
    return getattr(task, "advantages", PLAIN)(traj, task.gamma)


def require_plain(task: Any, estimator: str, why: str) -> None:
    if not getattr(task, "advantages", PLAIN).plain:
        raise UnsupportedError(f"estimator {estimator!r} needs the plain reward-to-go inner "
                               f"step ({why}); task {task.name!r} sets "
                               f"{task.advantages.describe()}")
