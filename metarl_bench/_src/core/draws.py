"""Seeded random draws shared by tasks and policies, and categorical draws: inverse-CDF
(a search of the cumulative sums per draw) and Walker's alias tables (K - 1 passes over the
table once per law, then O(1) per draw), chosen for a set of laws by how often each is drawn
from (:class:`CategoricalTables`).

Draws are made on the generator's own device and then moved to the device of the
computation: a CPU generator can drive a CUDA computation, and the draws are identical
whichever device computes with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def uniform(shape: tuple[int, ...], generator: torch.Generator | None,
            like: torch.Tensor, high: float = 1.0) -> torch.Tensor:
    """U[0, high) draws in ``like``'s dtype, on ``like``'s device.

    ``high`` scales in the same kernel: the draws are exactly ``high`` times those of
    ``high=1`` (one rounding either way), without a separate multiplication.
    """
    draws = torch.empty(shape, device=_device_of(generator), dtype=like.dtype)
    return draws.uniform_(0.0, high, generator=generator).to(like.device)


def normal(shape: tuple[int, ...], generator: torch.Generator | None,
           like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) draws in ``like``'s dtype, on ``like``'s device."""
    draws = torch.randn(shape, generator=generator, device=_device_of(generator),
                        dtype=like.dtype)
    return draws.to(like.device)


def inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first cdf entry above u; cdf (..., K), u (...,) -> long (...).

    O(K) per draw; the tabular tasks draw from alias tables instead (O(1) per draw).
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
    # NumPy on the CPU: the same IEEE operations in the same order as torch's (bit for bit
    # the same tables), at a fraction of torch's per-operation cost, which the K - 1 passes
    # pay K - 1 times; dtypes NumPy lacks (float16, bfloat16) are built in float64
    exact = probs.dtype in (torch.float32, torch.float64)
    scaled = probs.detach().to("cpu", probs.dtype if exact else torch.float64).numpy()
    threshold = scaled.reshape(-1, n_columns) * n_columns
    n_tables = threshold.shape[0]
    alias = np.tile(np.arange(n_columns), (n_tables, 1))
    done = np.zeros(threshold.shape, dtype=bool)
    table = np.arange(n_tables)
    for _ in range(n_columns - 1):
        small = np.where(done, np.inf, threshold).argmin(-1)
        large = np.where(done, -np.inf, threshold).argmax(-1)
        alias[table, small] = large
        threshold[table, large] -= 1.0 - threshold[table, small]
        done[table, small] = True
    return (torch.from_numpy(threshold).to(probs.device, probs.dtype).reshape(probs.shape),
            torch.from_numpy(alias).to(probs.device).reshape(probs.shape))


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


def alias_draw(threshold: torch.Tensor, outcomes: torch.Tensor, offset: torch.Tensor | int,
               scaled: torch.Tensor) -> torch.Tensor:
    """One draw per entry of ``scaled`` from flat alias tables of K columns each.

    ``threshold`` (n_tables * K,) from :func:`alias_table`, flattened; ``outcomes`` from
    :func:`alias_outcomes`; ``offset`` long: K times the table each draw uses, broadcast
    against the draws; ``scaled``: K u for U[0, 1) draws u (``uniform(..., high=K)``). The
    integer part of K u picks the column and its fractional part decides between the
    column and its alias, so one uniform makes one draw (the fraction keeps all but
    log2(K) bits of u's precision: each outcome's probability is off by at most one unit
    in the last place of u). For a p-bit uniform, u <= 1 - 2**-p and K (1 - 2**-p) rounds
    to a float below K, so the column is always in range (tested for every K up to 4096).
    Returns the outcomes' values, long, shaped like ``scaled``; ``scaled`` is overwritten.
    """
    flat = scaled.long()
    flat += offset
    keep = scaled.frac_() < threshold.take(flat)
    return outcomes.take(flat.add_(keep, alpha=threshold.numel()))


# -- inverse-CDF draws, and the choice between them and alias tables -----------------------


@dataclass(frozen=True)
class DrawCosts:
    """What each way of drawing from a set of laws costs, in nanoseconds on one CPU thread
    (measured once with ``benchmarks/tools/draw_costs.py`` and written here; only their
    ratios matter).

    Alias tables: ``setup`` once, then K - 1 pairing passes of ``per_pass`` plus
    ``per_pass_table`` per table and ``per_pass_entry`` per entry, then ``alias_draw`` per
    draw. Inverse CDF (each draw searching its row's own table): ``cdf_draw`` plus
    ``search_step`` per halving of the K cumulative sums, per draw.
    """

    setup: float = 10_000
    per_pass: float = 15_000
    per_pass_table: float = 150
    per_pass_entry: float = 9
    alias_draw: float = 20
    cdf_draw: float = 10
    search_step: float = 10

    def alias(self, n_tables: int, n_outcomes: int, n_draws: int) -> float:
        passes = (n_outcomes - 1) * (self.per_pass + n_tables * (
            self.per_pass_table + self.per_pass_entry * n_outcomes))
        return self.setup + passes + self.alias_draw * n_draws

    def inverse_cdf(self, n_outcomes: int, n_draws: int) -> float:
        return (self.cdf_draw + self.search_step * math.log2(max(2, n_outcomes))) * n_draws


DRAW_COSTS = DrawCosts()


def alias_pays_off(n_tables: int, n_outcomes: int, n_draws: int, *, gathered: bool) -> bool:
    """Whether ``n_tables`` laws of ``n_outcomes`` outcomes, drawn from ``n_draws`` times in
    all, are drawn from by alias tables (True) or by inverse CDF (False).

    A rule of the configuration only (shapes and counts, never the clock or the machine),
    so a seeded call draws the same numbers everywhere:

    * ``gathered`` laws (several per row, the table of each draw read off its state, as a
      tabular policy's): alias tables. An inverse-CDF draw would first gather its table's K
      cumulative sums; that is cheaper only for calls of a few thousand draws, where the
      difference is a few tens of microseconds, so every multi-state policy keeps one method
      (and the seeded draws it had).
    * one law per row, or one for all rows: whichever :data:`DRAW_COSTS` finds cheaper.
      Many tables drawn from a few times each (a bandit's adapted policies, one per row,
      drawn from M = 10 times) or few draws: inverse CDF; one table drawn from many times
      (the shared policy of a large batch): alias.
    """
    if gathered:
        return True
    return (DRAW_COSTS.alias(n_tables, n_outcomes, n_draws)
            < DRAW_COSTS.inverse_cdf(n_outcomes, n_draws))


def scaled_cdf(probs: torch.Tensor) -> torch.Tensor:
    """K times the cumulative sums of the laws along the last axis of ``probs`` (..., K), as
    :func:`cdf_draw` reads them: compared with K u, the same ``uniform(..., high=K)`` draws
    an alias table takes.

    The entries from the last outcome of positive probability on are +inf: a draw can
    never pass it, so rounding (a total just below K) never picks a zero-probability
    outcome at the end.
    """
    cdf = probs.cumsum(-1).mul_(probs.shape[-1])
    return cdf.masked_fill_(cdf >= cdf[..., -1:], float("inf"))


def cdf_draw(cdf: torch.Tensor, table: torch.Tensor | None, scaled: torch.Tensor
             ) -> torch.Tensor:
    """One outcome index per entry of ``scaled`` (K u for U[0, 1) draws u), by inverse CDF.

    ``cdf`` from :func:`scaled_cdf`: (K,) one table for every draw, or (n_rows, K) with
    ``table`` None, table r for the draws of row r (``scaled`` (n_rows, ...)): searched in
    place; or (n_tables, K) with ``table`` long, the table of each draw (broadcast against
    ``scaled``): gathered first, K numbers per draw. Outcome j is drawn when
    cdf[j-1] <= K u < cdf[j] (probability p_j).
    """
    if table is None:
        return torch.searchsorted(cdf, scaled, right=True)
    rows = cdf[table.expand_as(scaled)]
    return torch.searchsorted(rows, scaled.unsqueeze(-1), right=True).squeeze(-1)


class CategoricalTables:
    """``n_tables`` categorical laws of K outcomes, ready to draw from by the method that is
    cheaper for the draws they will serve (:func:`alias_pays_off`).

    ``probs`` (n_tables, K); ``values`` (n_tables, K) long: what a draw of outcome j from
    table i returns (as :func:`alias_outcomes`), or None for j itself; ``draws``: how many
    draws the tables will serve in all; ``gathered``: whether a draw's table varies along
    the draws of a row (see :func:`cdf_draw`); ``alias``: force a method (None: the rule's
    choice). Both methods read the same uniforms, K u for U[0, 1) draws u
    (``uniform(..., high=K)``): the law is the same, the outcome drawn from a given u is not.
    """

    def __init__(self, probs: torch.Tensor, values: torch.Tensor | None, draws: int, *,
                 gathered: bool, alias: bool | None = None):
        self.n_tables, self.n_outcomes = probs.shape
        self.alias = (alias_pays_off(self.n_tables, self.n_outcomes, draws, gathered=gathered)
                      if alias is None else alias)
        self.values = values
        if self.alias:
            threshold, columns_alias = alias_table(probs)
            self.threshold = threshold.reshape(-1)
            if values is None:
                values = torch.arange(self.n_outcomes, device=probs.device).expand_as(probs)
            self.outcomes = alias_outcomes(columns_alias, values)
        else:
            cdf = scaled_cdf(probs)
            self.cdf = cdf[0] if self.n_tables == 1 else cdf
            if values is not None:
                self.values = values.reshape(-1)

    def _row_offset(self, scaled: torch.Tensor) -> torch.Tensor | int:
        """K times the table of each row of ``scaled``: (n_rows, 1, ...), or 0 (one table)."""
        if self.n_tables == 1:
            return 0
        rows = torch.arange(self.n_tables, device=scaled.device)
        return rows.reshape(-1, *([1] * (scaled.dim() - 1))) * self.n_outcomes

    def draw(self, offset: torch.Tensor | None, scaled: torch.Tensor) -> torch.Tensor:
        """The values of one draw per entry of ``scaled`` from the tables at ``offset``, K
        times the table (long, broadcast against the draws), or None: table r for the
        draws of row r of ``scaled`` (one table: that one for every draw). ``scaled`` may be
        overwritten."""
        if self.alias:
            return alias_draw(self.threshold, self.outcomes,
                              self._row_offset(scaled) if offset is None else offset, scaled)
        if offset is None:
            index = cdf_draw(self.cdf, None, scaled)
            offset = self._row_offset(scaled) if self.values is not None else 0
        else:
            index = cdf_draw(self.cdf.reshape(-1, self.n_outcomes),
                             offset.div(self.n_outcomes, rounding_mode="floor"), scaled)
        return index if self.values is None else self.values.take(index.add_(offset))
