"""The regression gate's comparison: two suites (plain JSON data from ``gate.suite``) in, one
typed row per (path, estimator, task, N, metric) out, with a verdict.

* statistics fail when they exceed the baseline by more than ``z`` joint standard errors
  (from the two 95% intervals) plus a relative 1e-9 for floating-point noise;
* peak bytes fail at ``factor`` times the baseline (deterministic: compared directly);
* times fail at ``factor`` times the baseline, the ratio being the median over rounds of
  the per-round ratio now / baseline, and only when both suites were timed together,
  round by round (same ``run_id``); times from another run are shown, never gated. A cell
  fails when its wall-clock and its CPU seconds both reach the factor: slower code takes
  more of both, while another process taking the CPU lengthens the wall clock alone (a row
  over the factor whose twin is not reads ``unconfirmed``, shown and not failing).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

from metarl_bench._src.gate.suite import SAMPLER, STAT_METRICS, TIME_METRICS, Item

COST_METRICS = ("peak_bytes", *TIME_METRICS)
#: The ratio of time or memory that fails. Unchanged code read 0.94-1.06 with the calls of
#: both trees alternated one by one on the same CPU (docs/benchmarks.md), a hot path made
#: twice as slow about 2: 1.5 fails the second and never the first.
DEFAULT_FACTOR = 1.5
FAILING = ("worse", "slower", "larger")
#: the path of statistics rows, and of times and memory saved before paths existed
STATISTICS_PATH = "call"


@dataclass(frozen=True)
class Row:
    """One compared measurement. ``verdict``: ``worse``, ``slower`` and ``larger`` fail;
    ``better``, ``faster``, ``smaller``, ``same``, ``new`` (not in the baseline), ``gone``
    (no longer measured), ``unconfirmed`` (one of a cell's two times over the factor, the
    other not: load, not code) and ``-`` (not gated: times against a saved file) do not."""

    path: str
    estimator: str
    task: str
    n_inner: int
    metric: str
    baseline: Any
    now: Any
    ratio: float | None
    verdict: str

    @property
    def key(self) -> Item:
        return Item(path=self.path, estimator=self.estimator, task=self.task,
                   n_inner=self.n_inner)

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING


def key_of(record: dict[str, Any]) -> Item:
    """What a record measures: a path through a cell for one estimator (or the sampler),
    the suite's own ``Item``; statistics records saved before paths existed are calls."""
    return Item(path=record.get("path", STATISTICS_PATH), estimator=record["estimator"],
               task=record["task"], n_inner=record["n_inner"])


def _stderr(ci: list[float | None] | None) -> float:
    if not ci or ci[0] is None or ci[1] is None:
        return 0.0
    return (ci[1] - ci[0]) / (2 * 1.96)


def interleaved(baseline: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether the two suites' times were measured together, round by round."""
    return baseline.get("run_id") is not None and baseline.get("run_id") == now.get("run_id")


def _row(key: Item, metric: str, base: Any, now: Any, verdict: str,
         ratio: float | None = None) -> Row:
    if ratio is None and isinstance(base, (int, float)) and isinstance(now, (int, float)) \
            and base != 0:
        ratio = now / base
    return Row(**asdict(key), metric=metric, baseline=base, now=now, ratio=ratio, verdict=verdict)


def _cost_verdict(in_baseline: bool, in_now: bool, ratio: float | None, factor: float,
                  up: str, down: str) -> str:
    if not in_baseline or not in_now:
        return "new" if not in_baseline else "gone"
    if ratio is None:
        return "-"
    return up if ratio >= factor else down if ratio <= 1 / factor else "same"


def _statistics_rows(baseline: dict[str, Any], now: dict[str, Any], z: float) -> list[Row]:
    rows = []
    base_stats = {key_of(r): r for r in baseline.get("statistics", [])}
    now_stats = {key_of(r): r for r in now.get("statistics", [])}
    for key in sorted(set(base_stats) | set(now_stats)):
        for metric in STAT_METRICS:
            b, n = base_stats.get(key), now_stats.get(key)
            bv, nv = (b or {}).get(metric), (n or {}).get(metric)
            if b is None or n is None or bv is None or nv is None:
                verdict = "new" if b is None else "gone"
            else:
                tolerance = (z * math.hypot(_stderr(b.get(f"{metric}_ci")),
                                            _stderr(n.get(f"{metric}_ci")))
                             + 1e-9 * abs(bv) + 1e-15)
                verdict = ("worse" if nv - bv > tolerance else
                           "better" if bv - nv > tolerance else "same")
            rows.append(_row(key, metric, bv, nv, verdict))
    return rows


def _memory_rows(baseline: dict[str, Any], now: dict[str, Any], factor: float) -> list[Row]:
    rows = []
    base_memory = {key_of(r): r["peak_bytes"] for r in baseline.get("memory", [])}
    now_memory = {key_of(r): r["peak_bytes"] for r in now.get("memory", [])}
    for key in sorted(set(base_memory) | set(now_memory)):
        bv, nv = base_memory.get(key), now_memory.get(key)
        ratio = nv / bv if bv and nv is not None else None
        rows.append(_row(key, "peak_bytes", bv, nv, _cost_verdict(
            key in base_memory, key in now_memory, ratio, factor, "larger", "smaller"), ratio))
    return rows


def _time_rows(baseline: dict[str, Any], now: dict[str, Any], factor: float) -> list[Row]:
    rows = []
    paired = interleaved(baseline, now)
    base_times = {key_of(r): r for r in baseline.get("times", [])}
    now_times = {key_of(r): r for r in now.get("times", [])}
    for key in sorted(set(base_times) | set(now_times)):
        cell = []
        for metric in TIME_METRICS:
            b = (base_times.get(key) or {}).get(metric) or []
            n = (now_times.get(key) or {}).get(metric) or []
            bv = statistics.median(b) if b else None
            nv = statistics.median(n) if n else None
            if paired and b and len(b) == len(n):
                ratio = statistics.median(new / old if old > 0 else math.inf
                                          for old, new in zip(b, n))
            else:
                ratio = nv / bv if bv and nv is not None else None
            verdict = _cost_verdict(key in base_times, key in now_times, ratio, factor,
                                    "slower", "faster")
            if not paired and verdict not in ("new", "gone"):
                verdict = "-"
            cell.append(_row(key, metric, bv, nv, verdict, ratio))
        # wall and CPU time must agree on a slowdown: load stretches the wall clock only
        slower = [row.verdict == "slower" for row in cell]
        if any(slower) and not all(slower) and all(row.ratio is not None for row in cell):
            cell = [replace(row, verdict="unconfirmed") if row.verdict == "slower" else row
                    for row in cell]
        rows.extend(cell)
    return rows


def compare(baseline: dict[str, Any], now: dict[str, Any], *, z: float = 3.0,
            factor: float = DEFAULT_FACTOR) -> list[Row]:
    """One row per (path, estimator, task, N, metric): baseline, now, ratio and verdict (see
    :class:`Row`). Time rows carry the median of the per-round ratios, not the ratio of the
    two medians."""
    return (_statistics_rows(baseline, now, z) + _memory_rows(baseline, now, factor)
            + _time_rows(baseline, now, factor))


def format_rows(rows: list[Row], *, show_all: bool = False) -> str:
    """The reviewer's table: failures first, then other changes; unchanged rows counted."""
    from metarl_bench._src.evaluation.tables import number, text_table

    order = {"worse": 0, "slower": 0, "larger": 0, "better": 1, "faster": 1, "smaller": 1,
             "new": 2, "gone": 2, "unconfirmed": 2, "-": 3, "same": 4}
    shown = [r for r in rows if show_all or r.verdict != "same" or r.metric in COST_METRICS]
    shown.sort(key=lambda r: (order.get(r.verdict, 5), r.path, r.estimator, r.task, r.n_inner,
                              r.metric))
    table = text_table(
        ["path", "estimator", "task", "N", "metric", "baseline", "now", "ratio", "verdict"],
        [[r.path, "(sampler)" if r.estimator == SAMPLER else r.estimator, r.task, r.n_inner,
          r.metric, number(r.baseline), number(r.now), "-" if r.ratio is None else f"{r.ratio:.3g}",
          r.verdict.upper() if r.failed else r.verdict] for r in shown])
    same = sum(r.verdict == "same" for r in rows if r.metric not in COST_METRICS)
    failed = sum(r.failed for r in rows)
    summary = (f"{failed} regression(s)" if failed else "no regression") + \
        f"; {same} statistics unchanged (not shown)" * (not show_all and same > 0)
    return f"{table}\n\n{summary}"
