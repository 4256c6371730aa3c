"""Plain-text tables of results, for the terminal (``Result.table()``), and the formatting
the reports share with them: numbers, and one label per series (``series_label``)."""

from __future__ import annotations

import math
import zlib
from typing import Any, Sequence

from metarl_bench._src.estimators.entries import entry_label


def number(value: float | None) -> str:
    """A number in 3 significant digits (exponent form outside 1e-3..1e4); ``-`` for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Right-aligned columns under a header and a rule."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def series_label(record: dict[str, Any]) -> str:
    """A record's (or slope's) series as the terminal, the figures and the HTML page name
    it: the estimator entry as written (``NAME`` or ``NAME:KEY=VALUE,...``)."""
    return entry_label(record["estimator"], record.get("options"))


#: Colours of the estimators in figures, by registration order (matplotlib's tab10, then
#: Dark2): an estimator has the same colour in every figure of every report.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#1b9e77", "#d95f02", "#7570b3", "#e7298a",
           "#66a61e", "#e6ab02", "#a6761d", "#666666")


def estimator_colour(name: str) -> str:
    """The colour of estimator ``name``: its place in the registry (built-in estimators
    first, in the order they are registered, then plug-ins); a name that is not registered
    here (a store from another installation) gets one derived from the name itself."""
    from metarl_bench._src.core.registry import ESTIMATORS, list_estimators

    list_estimators()  # loads the plug-ins
    order = list(ESTIMATORS)
    index = order.index(name) if name in order else zlib.crc32(name.encode())
    return COLOURS[index % len(COLOURS)]


def trials_used(record: dict[str, Any]) -> int:
    """Estimates behind a record (an adaptive cell records how many it used)."""
    return max(record.get("n_trials_used") or record.get("n_trials") or 1, 1)


def rel_ci_text(record: dict[str, Any]) -> str:
    """The relative interval width an adaptive cell reached, starred when short of target."""
    if record.get("problem"):
        return "-"
    width = record.get("rel_ci")
    text = "inf" if width is None else f"{width:.3g}"
    return text if record.get("target_reached") else text + "*"


def format_result(result: Any) -> str:
    settings = result.settings
    params = ", ".join(f"{k}={v}" for k, v in settings.task_params.items())
    first = result.records[0] if result.records else {}
    adaptive = settings.target_rel_ci is not None
    trials = (f"n_trials={settings.n_trials}..{settings.max_trials} (until the "
              f"{settings.target_metric} 95% interval is within {settings.target_rel_ci:g} "
              f"of it)" if adaptive else f"n_trials={settings.n_trials}")
    title = (f"{settings.task}({params})  inner_lr={settings.inner_lr}  "
             + (f"n_steps={settings.n_steps}  " if settings.n_steps != 1 else "") +
             f"{trials}  n_outer={settings.n_outer or 'exact'}  "
             f"truth={settings.truth} ({first.get('truth_kind', '?')})  seed={settings.seed}")
    rows = []
    problems = []
    for r in result.records:
        if r.get("problem"):
            problems.append(f"  {series_label(r)} at N={r['n_inner']}: {r['problem']}")
        lo, hi = r["bias_ci"]
        rows.append([series_label(r), r["n_inner"], number(r["bias"]),
                     f"[{number(lo)}, {number(hi)}]",
                     number(r.get("bias_raw")), number(r["bias_noise"]),
                     number(r["variance"]), number(r["mse"]), number(r["cosine"]),
                     number(r.get("correlation")),
                     number(r["mse_x_trajectories"]), r["moments"] or "-",
                     f"{r['seconds'] * 1e3:.1f}"]
                    + ([trials_used(r), rel_ci_text(r)] if adaptive else []))
    header = ["estimator", "N", "bias", "bias 95% CI", "|mean-truth|", "noise", "variance", "mse",
              "cosine", "corr", "mse x traj", "moments", "ms"] + (
        ["trials", "rel CI"] if adaptive else [])
    parts = [title, text_table(header, rows),
             "bias = |mean - truth| less what sampling noise adds to it (noise), with a 95% "
             "interval for the true bias; mse = bias^2 + variance; cosine, corr (Pearson over "
             "coordinates): of the mean estimate with the truth"
             + ("; trials: estimates used; rel CI: the target metric's interval width over "
                "its value (* short of the target at the cap)" if adaptive else "")]
    if problems:
        parts.append("no statistics (shown as -) for these cells:\n" + "\n".join(problems))
    if result.slopes:
        parts += ["log-log slopes against N (± standard error; n/a: fewer than 3 values above "
                  "noise):",
                  text_table(["estimator", *SLOPE_COLUMNS], slope_rows(result.slopes))]
    return "\n\n".join(parts)


#: The metrics whose log-log slopes against N a table shows, in its column order.
SLOPE_COLUMNS = ("bias", "variance", "mse")


def slope_rows(slopes: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per series, in the order the series come: its label, then each metric's
    slope with its standard error (``n/a`` where none was fitted)."""
    by_series: dict[str, dict[str, dict[str, Any]]] = {}
    for slope in slopes:
        by_series.setdefault(series_label(slope), {})[slope["metric"]] = slope
    return [[label, *(slope_text(metrics.get(metric)) for metric in SLOPE_COLUMNS)]
            for label, metrics in by_series.items()]


def slope_text(slope: dict[str, Any] | None) -> str:
    if slope is None or slope.get("slope") is None or not math.isfinite(slope["slope"]):
        return "n/a"
    return f"{slope['slope']:+.2f} ± {number(slope.get('stderr'))}"
