"""Batches of sampled trajectories and the quantities every estimator derives from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowStarts:
    """The parameters each row's trajectories were drawn at, when the rows do not all start
    from theta (inner step k >= 1 of several: each row at its own theta_k), (R, *P).

    ``used`` is set when an estimator builds its parameters from them (``row_params``), so
    that a from-samples form that ignored them (and so would start every row at theta) is
    refused rather than silently wrong. A view of them (``Trajectories.rows``,
    ``one_per_row``) reports its use to the starts it came from. ``differentiated`` False:
    nothing will differentiate the step these rows take (a step before a truncation window),
    so a form need not build its inner gradient's graph (``builds_graph``).
    """

    points: torch.Tensor
    used: bool = False
    parent: "RowStarts | None" = None
    differentiated: bool = True

    def take(self) -> torch.Tensor:
        """The points, marked used (here and in the starts they were taken from)."""
        starts: RowStarts | None = self
        while starts is not None:
            starts.used = True
            starts = starts.parent
        return self.points

    def view(self, points: torch.Tensor) -> "RowStarts":
        return RowStarts(points, parent=self, differentiated=self.differentiated)


@dataclass(frozen=True)
class Trajectories:
    """``n_rows`` independent groups of ``n_traj`` trajectories of length ``horizon``.

    A row is one (trial, task) pair: every trajectory of a row was sampled with the
    same parameters, in the task ``task_index[row]`` of the task distribution.

    Shapes: ``rewards`` (R, N, T) in the dtype of the parameters; ``task_index`` long (R,);
    ``states`` (the observation x_t each action was chosen from) and ``actions`` are
    (R, N, T) long for finite state and action sets (tabular tasks), or
    (R, N, T, *shape) float for vectors (e.g. (R, N, T, 2) positions and moves). Every
    field has the three leading axes (R, N, T); the counts are read from ``rewards``.

    ``mask`` bool (R, N, T) or None (every step happened): trajectories of different lengths
    (episodes that end at a random time) are padded to the longest, ``mask`` True on the
    steps that happened. A padded step has reward 0, state and action 0, and a task's
    ``log_prob`` is 0 there, so it adds exactly zero to every sum an estimator forms
    (returns, scores, DiCE's cumulative log-probabilities).

    ``starts`` (:class:`RowStarts`) or None (every row was drawn at the theta the estimator
    is given): the parameters each row was drawn at, when they differ per row.

    ``success`` bool (R, N, T) or None (the task has no success flag): the environment's own
    success flag after each step (Meta-World's ``info["success"]``). No estimator reads it;
    training reports the fraction of trajectories whose flag was ever set.
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    task_index: torch.Tensor
    mask: torch.Tensor | None = None
    starts: RowStarts | None = None
    success: torch.Tensor | None = None

    @property
    def observations(self) -> torch.Tensor:
        """The same tensor as ``states`` (the name continuous-control code expects)."""
        return self.states

    @property
    def n_rows(self) -> int:
        return self.rewards.shape[0]

    @property
    def n_traj(self) -> int:
        return self.rewards.shape[1]

    @property
    def horizon(self) -> int:
        return self.rewards.shape[2]

    def rows(self, index: torch.Tensor | slice) -> "Trajectories":
        return Trajectories(self.states[index], self.actions[index], self.rewards[index],
                            self.task_index[index],
                            None if self.mask is None else self.mask[index],
                            None if self.starts is None
                            else self.starts.view(self.starts.points[index]),
                            None if self.success is None else self.success[index])

    def one_per_row(self) -> "Trajectories":
        """Every trajectory as a row of its own: (R, N, T, ...) -> (R*N, 1, T, ...)."""
        n_rows, n_traj, horizon = self.rewards.shape

        def split(field: torch.Tensor) -> torch.Tensor:
            return field.reshape(n_rows * n_traj, 1, horizon, *field.shape[3:])

        return Trajectories(split(self.states), split(self.actions), split(self.rewards),
                            self.task_index.repeat_interleave(n_traj),
                            None if self.mask is None else split(self.mask),
                            None if self.starts is None else self.starts.view(
                                self.starts.points.repeat_interleave(n_traj, 0)),
                            None if self.success is None else split(self.success))


def discounts(gamma: float, horizon: int, like: torch.Tensor) -> torch.Tensor:
    """gamma**t for t = 0..horizon-1, shape (T,)."""
    return gamma ** torch.arange(horizon, dtype=like.dtype, device=like.device)


def reward_to_go(rewards_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma**t' r_t' (discounted from time 0), same shape as rewards_t.

    Discounting from time 0 (not from t) makes sum_t grad log pi_t * G_t the unbiased
    gradient of V = E sum_t gamma**t r_t (docs/objective.md).
    """
    discounted = rewards_t * discounts(gamma, rewards_t.shape[-1], rewards_t)
    return discounted.flip(-1).cumsum(-1).flip(-1)


def discounted_return(rewards_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """sum_t gamma**t r_t over the last axis."""
    return (rewards_t * discounts(gamma, rewards_t.shape[-1], rewards_t)).sum(-1)
