"""Measure the constants of ``metarl_bench._src.core.draws.DrawCosts`` on this machine.

    .venv/bin/python benchmarks/tools/draw_costs.py [--dtype float32]

Times alias-table builds over a grid of (tables, outcomes), alias draws and inverse-CDF draws
(one table per row, searched in place) over a grid of outcomes, with one torch thread, and
fits each cost model by least squares. Prints the fitted ``DrawCosts(...)`` next to the one
in the library. The library's rule uses the written constants, never a measurement, so that
a seeded call draws the same numbers on every machine; rerun this after changing how either
method draws, and write the new constants by hand (only their ratios matter).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from metarl_bench._src.core.draws import DRAW_COSTS, CategoricalTables, alias_table, uniform


def seconds(call, repeats: int = 9) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def laws(n_tables: int, n_outcomes: int, dtype: torch.dtype) -> torch.Tensor:
    logits = torch.randn(n_tables, n_outcomes, generator=torch.Generator().manual_seed(0))
    return torch.softmax(logits.to(dtype), -1)


def fit_build(dtype: torch.dtype) -> tuple[float, float, float, float]:
    """setup, per_pass, per_pass_table, per_pass_entry (ns) of ``alias_table``."""
    rows, times = [], []
    for n_tables in (1, 10, 100, 1000):
        for n_outcomes in (3, 5, 10, 30, 100):
            probs = laws(n_tables, n_outcomes, dtype)
            passes = n_outcomes - 1
            rows.append([1.0, passes, passes * n_tables, passes * n_tables * n_outcomes])
            times.append(1e9 * seconds(lambda: alias_table(probs)))
    solution, *_ = np.linalg.lstsq(np.array(rows), np.array(times), rcond=None)
    return tuple(float(max(0.0, value)) for value in solution)


def per_draw(alias: bool, n_outcomes: int, dtype: torch.dtype) -> float:
    """Nanoseconds per draw of one method, from the slope between two batch sizes."""
    n_tables = 1000
    probs = laws(n_tables, n_outcomes, dtype)
    values = torch.arange(n_tables * n_outcomes).reshape(n_tables, n_outcomes)
    tables = CategoricalTables(probs, values, 1, gathered=False, alias=alias)
    offset = (torch.arange(n_tables) * n_outcomes).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    cost = {}
    for per_table in (10, 1000):
        scaled = uniform((n_tables, per_table), generator, probs, high=n_outcomes)
        cost[per_table] = seconds(lambda: tables.draw(offset, scaled.clone()))
    return 1e9 * (cost[1000] - cost[10]) / (n_tables * (1000 - 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    dtype = getattr(torch, parser.parse_args().dtype)
    torch.set_num_threads(1)
    setup, per_pass, per_pass_table, per_pass_entry = fit_build(dtype)
    outcomes = (3, 5, 10, 30, 100)
    alias_draw = statistics.median(per_draw(True, k, dtype) for k in outcomes)
    cdf = [per_draw(False, k, dtype) for k in outcomes]
    search_step, cdf_draw = np.polyfit([math.log2(k) for k in outcomes], cdf, 1)
    fitted = dict(setup=setup, per_pass=per_pass, per_pass_table=per_pass_table,
                  per_pass_entry=per_pass_entry, alias_draw=alias_draw,
                  cdf_draw=max(0.0, cdf_draw), search_step=search_step)
    print("measured: DrawCosts(" + ", ".join(f"{k}={v:.3g}" for k, v in fitted.items()) + ")")
    print(f"library:  {DRAW_COSTS}")


if __name__ == "__main__":
    main()
