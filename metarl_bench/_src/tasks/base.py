"""The task interface, and the helpers tasks share: seeded uniform draws, inverse-CDF
sampling, and checked conversion of user arrays."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from metarl_bench._src.errors import ParameterError, ShapeError
from metarl_bench._src.trajectories import Trajectories


def uniform(shape: tuple[int, ...], generator: torch.Generator | None,
             like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws made on the generator's own device, then moved to ``like``'s device.

    Drawing on the generator's device lets a CPU generator drive a CUDA computation, and
    keeps the draws identical whichever device computes with them.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.rand(shape, generator=generator, device=gen_device, dtype=like.dtype)
    return draws.to(like.device)


def normal(shape: tuple[int, ...], generator: torch.Generator | None,
           like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) draws made on the generator's own device (as :func:`uniform`)."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.randn(shape, generator=generator, device=gen_device, dtype=like.dtype)
    return draws.to(like.device)


def inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first cdf entry above u; cdf (..., K), u (...,) -> long (...).

    O(K) per draw: the slow, obviously-correct twin of the alias draws below.
    """
    index = (cdf < u.unsqueeze(-1)).sum(-1)
    return index.clamp_(max=cdf.shape[-1] - 1)  # cdf[-1] may round to just below 1


def alias_table(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Walker's alias tables of the categorical laws along the last axis of ``probs`` (..., K).

    Returns ``threshold`` (..., K) in the dtype of ``probs`` and ``alias`` long (..., K): a
    draw picks a column i uniformly, keeps i with probability threshold[i] and takes
    alias[i] otherwise, so outcome j has probability
    (threshold[j] + sum_{i: alias[i] = j} (1 - threshold[i])) / K = probs[j]
    (up to rounding; :func:`alias_probabilities` inverts the table, for tests).

    Built by K - 1 vectorised pairings (Vose's scheme, all tables at once): the smallest
    unfinished column (scaled mass K p <= 1) is topped up by the largest (>= 1), which
    gives it the missing mass. A zero-probability outcome is always the smallest, so it is
    never anyone's alias and is never drawn. O(K^2) per table, built once per law; each
    draw is then O(1) where inverse-CDF sampling is O(K).
    """
    n_columns = probs.shape[-1]
    threshold = (probs * n_columns).reshape(-1, n_columns).clone()
    n_tables = threshold.shape[0]
    alias = torch.arange(n_columns, device=probs.device).repeat(n_tables, 1)
    done = torch.zeros_like(threshold, dtype=torch.bool)
    table = torch.arange(n_tables, device=probs.device)
    for _ in range(n_columns - 1):
        small = threshold.masked_fill(done, float("inf")).argmin(-1)
        large = threshold.masked_fill(done, float("-inf")).argmax(-1)
        alias[table, small] = large
        threshold[table, large] -= 1.0 - threshold[table, small]
        done[table, small] = True
    return threshold.reshape(probs.shape), alias.reshape(probs.shape)


def alias_probabilities(threshold: torch.Tensor, alias: torch.Tensor) -> torch.Tensor:
    """The probabilities an alias table draws with (..., K): the inverse of alias_table."""
    n_columns = threshold.shape[-1]
    own = threshold.clamp(0.0, 1.0)
    return (own + torch.zeros_like(own).scatter_add_(-1, alias, 1.0 - own)) / n_columns


def alias_outcomes(alias: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The flat outcome table :func:`alias_draw` reads: (2 * n_tables * K,) long.

    ``value`` (..., K) long is what a draw of outcome j from each table returns (say the
    index of the next table the chain draws from, so that no arithmetic sits between two
    draws). First half: the value of each cell's alias; second half: of the cell itself.
    """
    return torch.cat([value.gather(-1, alias).reshape(-1), value.reshape(-1)])


def alias_draw(threshold: torch.Tensor, outcomes: torch.Tensor, n_columns: int,
               offset: torch.Tensor | int, u: torch.Tensor) -> torch.Tensor:
    """One draw per entry of ``u`` from flat alias tables of ``n_columns`` columns each.

    ``threshold`` (n_tables * K,) from :func:`alias_table`, flattened; ``outcomes`` from
    :func:`alias_outcomes`; ``offset`` long: K times the table each draw uses, broadcast
    against ``u``; ``u``: U[0, 1) draws. The integer part of u K picks the column and its
    fractional part decides between the column and its alias, so one uniform makes one
    draw (the fraction keeps all but log2(K) bits of u's precision: each outcome's
    probability is off by at most one unit in the last place of u). For a p-bit uniform,
    u <= 1 - 2**-p and K (1 - 2**-p) rounds to a float below K, so the column is always in
    range (tested for every K up to 4096).
    Returns the outcomes' values, long, shaped like ``u``.
    """
    scaled = u * n_columns
    flat = scaled.long()
    flat += offset
    keep = scaled.frac_() < threshold.take(flat)
    return outcomes.take(flat.add_(keep, alpha=threshold.numel()))


class Task:
    """Interface every task satisfies (subclass it for a new task).

    Attributes: ``name``, ``param_shape`` (shape of theta), ``n_tasks`` (size of the task
    distribution; the meta-objective averages over it), ``horizon`` T (None: episodes end
    at a random time and batches are padded, see ``Trajectories.mask``), ``gamma`` (the
    discount estimators apply to sampled rewards),
    ``has_model`` (exact V available), ``params`` (the constructor arguments, for reports).
    """

    name: str = "task"
    param_shape: tuple[int, ...] = ()
    n_tasks: int = 1
    horizon: int | None = 1
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


def as_tensor(name: str, value: Any, shapes: Sequence[tuple[int, ...]]) -> torch.Tensor:
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


def distribution(name: str, value: torch.Tensor) -> torch.Tensor:
    if (value < 0).any() or not torch.allclose(value.sum(-1), torch.ones(()).double(), atol=1e-9):
        raise ParameterError(f"{name} must be non-negative and sum to 1 along its last axis")
    return value
