"""PNG figures of results (matplotlib's object API on an Agg canvas: no display needed, and
the backend of a notebook or a script that imports metarl_bench is left as it was).

For each task of a result set: bias, variance and MSE against N on log-log axes, one line per
estimator with its 95% band and fitted slope; the statistical efficiency per unit of work
(MSE x trajectories and MSE x seconds against N); and the cost of the estimates (seconds per
1,000 estimates, and the peak memory of computing them where the records carry it). An
estimator has one colour in every figure (``estimator_colour``); variants of it with other
options differ by line style.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from metarl_bench._src.evaluation.tables import estimator_colour, series_label, trials_used

#: (record key, axis label) of the three statistics panels
STATISTICS = (("bias", "bias (noise-corrected)"), ("variance", "variance (trace)"),
              ("mse", "MSE"))


@dataclass(frozen=True)
class Figure:
    """A written PNG: its path, a title and the caption that goes under it in a report,
    with the position of its result in the list given to ``write_figures`` and its task."""

    path: str
    title: str
    caption: str
    result_index: int = 0
    task: str = ""


#: Line styles of the variants of one estimator (other options), in order of appearance.
LINE_STYLES = ("-", "--", "-.", ":")


@dataclass(frozen=True)
class Series:
    """One estimator entry's records, sorted by N, with how its line is drawn."""

    label: str
    rows: list[dict[str, Any]]
    colour: str
    style: str

    @property
    def n(self) -> list[int]:
        return [r["n_inner"] for r in self.rows]

    def plot(self, axis, values: Sequence[float], *, label: str | None = None):
        (line,) = axis.plot(self.n, values, marker="o", ms=3.5, color=self.colour,
                            linestyle=self.style, label=self.label if label is None else label)
        return line


def _series(records: Iterable[dict[str, Any]]) -> list[Series]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(series_label(record), []).append(record)
    variants: dict[str, int] = {}
    out = []
    for label, rows in grouped.items():
        name = rows[0]["estimator"]
        style = LINE_STYLES[variants.get(name, 0) % len(LINE_STYLES)]
        variants[name] = variants.get(name, 0) + 1
        out.append(Series(label, sorted(rows, key=lambda r: r["n_inner"]),
                          estimator_colour(name), style))
    return out


def _figure(width: float, height: float):
    """A figure on its own Agg canvas: pyplot's global state is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MatplotlibFigure

    figure = MatplotlibFigure(figsize=(width, height), constrained_layout=True)
    FigureCanvasAgg(figure)
    return figure


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "task"


def _positive(values: Sequence[Any]) -> list[float]:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else math.nan
            for v in values]


def _slope_text(slopes: dict[tuple[str, str], dict[str, Any]], label: str, metric: str) -> str:
    slope = slopes.get((label, metric))
    if not slope or slope.get("slope") is None:
        return ""
    return f" ({slope['slope']:+.2f})"


#: Values below this many machine epsilons of the truth's norm are floating-point noise (an
#: exactly unbiased estimator's enumerated bias): they are not drawn on log axes.
NOISE_EPSILONS = 1e4


def write_figures(results: Sequence[Any], folder: str | os.PathLike) -> list[Figure]:
    """Write the PNG figures of ``results`` (``Result`` objects) into ``folder``.

    One set per result and task (file names are prefixed by the result's position when there
    are several results), so that cells of different configurations never share a line.
    """
    os.makedirs(folder, exist_ok=True)
    figures: list[Figure] = []
    for index, result in enumerate(results):
        by_task: dict[str, list[dict[str, Any]]] = {}
        for record in result.records:
            by_task.setdefault(record["task"], []).append(record)
        slopes: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        for slope in result.slopes:
            slopes.setdefault(slope["task"], {})[(series_label(slope), slope["metric"])] = slope
        dtype = result.settings.dtype
        eps = {"float32": 2.0 ** -23, "float16": 2.0 ** -10}.get(dtype, 2.0 ** -52)
        prefix = f"{index + 1}-" if len(results) > 1 else ""
        for task, records in by_task.items():
            series = _series(records)
            stem = os.path.join(folder, prefix + _slug(task))
            truth_note = "truth: " + ", ".join(sorted(
                {f"{r.get('truth')} ({r.get('truth_kind')})" for r in records}))
            for figure in (_statistics_figure(stem, task, series, slopes.get(task, {}),
                                              truth_note, eps),
                           _efficiency_figure(stem, task, series),
                           _cost_figure(stem, task, series)):
                figures.append(dataclasses.replace(figure, result_index=index, task=task))
    return figures


def _has_positive(axis) -> bool:
    """Whether a line or band of the axis has a finite value above 0."""
    values = [np.asarray(line.get_ydata(), dtype=float) for line in axis.get_lines()]
    values += [np.asarray(c.get_paths()[0].vertices[:, 1]) for c in axis.collections
               if c.get_paths()]
    return any(bool(np.any(np.isfinite(v) & (v > 0))) for v in values)


def _save(figure, path: str) -> None:
    figure.savefig(path, dpi=110)


def _log_axes(axis, title: str, fontsize: int | None = None) -> None:
    """Log-log axes against N, titled and gridded; with ``fontsize``, a legend too."""
    axis.set_xscale("log", base=2)
    if _has_positive(axis):
        axis.set_yscale("log")
    else:  # a log axis has nothing to show (and matplotlib refuses to scale it)
        axis.text(0.5, 0.5, "no value above zero to draw\n(all at noise level or 0)",
                  transform=axis.transAxes, ha="center", va="center", color="0.4")
        axis.set_yticks([])
    axis.set_xlabel("N (inner trajectories)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    if fontsize is not None:
        axis.legend(fontsize=fontsize)


def _statistics_figure(stem, task, series, slopes, truth_note, eps) -> Figure:
    fig = _figure(15, 4.4)
    axes = fig.subplots(1, 3)
    hidden = False
    for axis, (metric, label) in zip(axes, STATISTICS):
        drawn: list[tuple[Any, list[int], list[float], list[float], list[float]]] = []
        for one in series:
            rows, n = one.rows, one.n
            floors = [NOISE_EPSILONS * eps * (r.get("truth_norm") or 0.0) for r in rows]
            if metric != "bias":
                floors = [f * f for f in floors]
            values = _positive([r.get(metric) for r in rows])
            shown = [v if v > f else math.nan for v, f in zip(values, floors)]
            hidden |= any(math.isfinite(v) and not math.isfinite(w)
                          for v, w in zip(values, shown))
            line = one.plot(axis, shown,
                            label=f"{one.label}{_slope_text(slopes, one.label, metric)}")
            bands = [r.get(f"{metric}_ci") or [None, None] for r in rows]
            low = [lo if lo > f else math.nan
                   for lo, f in zip(_positive([b[0] for b in bands]), floors)]
            high = [h if h > f else math.nan
                    for h, f in zip(_positive([b[1] for b in bands]), floors)]
            drawn.append((line, n, shown, low, high))
        finite = [v for _, _, shown, _, high in drawn for v in shown + high if math.isfinite(v)]
        # an interval reaching 0 (a bias that cannot be told from zero) runs off the log
        # axis: its band is drawn down to the bottom of the plot instead
        bottom = min(finite, default=1.0) / 10
        for line, n, _, low, high in drawn:
            if any(math.isfinite(h) for h in high):
                low = [bottom if not math.isfinite(lo) and math.isfinite(h) else lo
                       for lo, h in zip(low, high)]
                axis.fill_between(n, low, high, color=line.get_color(), alpha=0.15, lw=0)
        _log_axes(axis, label)
        axis.legend(fontsize=7, title="estimator (slope)", title_fontsize=7)
    fig.suptitle(f"{task}: statistics against N; {truth_note}; bands: 95% intervals")
    path = f"{stem}-statistics.png"
    _save(fig, path)
    caption = ("Log-log axes; slopes fitted over the values above noise are in the legends "
               "(none where fewer than 3 such values exist). A band reaching the bottom of "
               "a panel means the value cannot be told from zero there.")
    if hidden:
        caption += (" Values at floating-point noise (an exactly unbiased estimator's bias "
                    "with exact moments) are zero for all purposes and are not drawn.")
    return Figure(path, f"{task}: bias, variance and MSE against N", caption)


def _efficiency_figure(stem, task, series) -> Figure:
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for one in series:
        one.plot(axes[0], _positive([r.get("mse_x_trajectories") for r in one.rows]))
        one.plot(axes[1], _positive([(r.get("mse") or math.nan) * (r.get("seconds") or math.nan)
                                     / trials_used(r) for r in one.rows]))
    for axis, title in zip(axes, ("MSE x trajectories per estimate",
                                  "MSE x seconds per estimate")):
        _log_axes(axis, title, fontsize=7)
    fig.suptitle(f"{task}: statistical efficiency per unit of work (lower is better)")
    path = f"{stem}-efficiency.png"
    _save(fig, path)
    return Figure(path, f"{task}: efficiency per unit of work",
                  "MSE times the trajectories (or the seconds) one estimate costs: to reach a "
                  "given MSE, the estimator with the lower curve needs less of that resource.")


def _cost_figure(stem, task, series) -> Figure:
    has_memory = any(r.get("peak_memory_bytes") for one in series for r in one.rows)
    fig = _figure(11 if has_memory else 6, 4.2)
    axes = fig.subplots(1, 2 if has_memory else 1, squeeze=False)
    for one in series:
        one.plot(axes[0][0], _positive([(r.get("seconds") or math.nan) * 1e6 / trials_used(r)
                                        for r in one.rows]))
        if has_memory:
            one.plot(axes[0][1], _positive([(r.get("peak_memory_bytes") or math.nan) / 2 ** 20
                                            for r in one.rows]))
    titles = ["milliseconds per 1,000 estimates"] + (["peak memory (MiB)"] * has_memory)
    for axis, title in zip(axes[0], titles):
        _log_axes(axis, title, fontsize=7)
    trials = sorted({trials_used(r) for one in series for r in one.rows})
    shown = (f"{trials[0]}" if len(trials) == 1 else f"{trials[0]} to {trials[-1]}")
    fig.suptitle(f"{task}: cost ({shown} estimates per cell)")
    path = f"{stem}-cost.png"
    _save(fig, path)
    return Figure(path, f"{task}: time{' and memory' if has_memory else ''} per estimator",
                  "Wall time per 1,000 estimates (sampling included), measured in the run that "
                  "produced the results; time depends on the machine and its load."
                  + (" Peak memory: what computing the estimates added to the process at its "
                     "peak (the resident high-water mark on CPUs, the allocator's peak on "
                     "CUDA), large cells being computed in chunks." if has_memory else ""))


def window_figures(results: Sequence[Any], folder: str | os.PathLike) -> list[Figure]:
    """Bias and variance against the truncation window w (``truncate``), one line per number
    of inner steps K and one figure per task; the records without a window are the full
    chain (w = K). Placed after the last result of each task in a report."""
    by_task: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for index, result in enumerate(results):
        for record in result.records:
            by_task.setdefault(record["task"], []).append((index, record))
    figures = []
    for task, indexed in by_task.items():
        lines: dict[tuple[int, int], list[tuple[int, dict[str, Any]]]] = {}
        for _, record in indexed:
            steps = record.get("n_steps") or 1
            window = (record.get("options") or {}).get("truncate", steps)
            lines.setdefault((steps, record["n_inner"]), []).append((window, record))
        fig = _figure(11, 4.2)
        axes = fig.subplots(1, 2)
        colours = [_cycle_colour(i) for i in range(len(lines))]
        for colour, ((steps, n_inner), points) in zip(colours, sorted(lines.items())):
            points.sort(key=lambda p: p[0])
            windows = [w for w, _ in points]
            for axis, metric in zip(axes, ("bias", "variance")):
                axis.plot(windows, [r.get(metric) if r.get(metric) else math.nan
                                    for _, r in points], marker="o", ms=3.5, color=colour,
                          label=f"K={steps}, N={n_inner}")
        ticks = sorted({w for points in lines.values() for w, _ in points})
        for axis, (metric, label) in zip(axes, STATISTICS[:2]):
            axis.set_xscale("symlog", linthresh=1)
            axis.set_xticks(ticks, [str(w) for w in ticks])
            if _has_positive(axis):
                axis.set_yscale("log")
            axis.set_xlabel("w (inner steps differentiated, of K)")
            axis.set_title(label)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=7)
        truths = sorted({f"{r.get('truth')} ({r.get('truth_kind')})" for _, r in indexed})
        estimators = sorted({r["estimator"] for _, r in indexed})
        fig.suptitle(f"{task}: truncated meta-gradients ({', '.join(estimators)}) against the "
                     f"window; truth: {', '.join(truths)} of the full K steps")
        path = os.path.join(folder, _slug(task) + "-windows.png")
        _save(fig, path)
        figures.append(Figure(
            path, f"{task}: bias and variance against the truncation window",
            "Each line is one number of inner steps K; w = 0 is first-order (no Jacobian), "
            "w = K the full chain. The truth is the full K-step objective's, so the bias "
            "shows what truncation adds (plus the estimator's own bias at w = K).",
            result_index=max(index for index, _ in indexed), task=task))
    return figures


def _cycle_colour(index: int) -> str:
    """The index-th colour of matplotlib's default cycle (tab10)."""
    return f"C{index % 10}"
