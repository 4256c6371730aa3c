"""Seeded random draws shared by tasks and policies, and categorical draws: inverse-CDF
(O(K) per draw) and Walker's alias tables (O(K^2) once per law, then O(1) per draw).

Draws are made on the generator's own device and then moved to the device of the
computation: a CPU generator can drive a CUDA computation, and the draws are identical
whichever device computes with them.
"""

from __future__ import annotations

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
