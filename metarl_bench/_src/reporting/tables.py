"""Plain-text tables of results, for the terminal."""

from __future__ import annotations

import math
from typing import Any, Sequence


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _label(row: dict[str, Any]) -> str:
    """An estimator as the CLI names it: NAME, or NAME:KEY=VALUE,... with its options."""
    options = row.get("options") or {}
    return row["estimator"] + (":" + ",".join(f"{k}={v}" for k, v in options.items())
                               if options else "")


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
            problems.append(f"  {_label(r)} at N={r['n_inner']}: {r['problem']}")
        lo, hi = r["bias_ci"]
        rows.append([_label(r), r["n_inner"], _num(r["bias"]), f"[{_num(lo)}, {_num(hi)}]",
                     _num(r.get("bias_raw")), _num(r["bias_noise"]),
                     _num(r["variance"]), _num(r["mse"]), _num(r["cosine"]),
                     _num(r.get("correlation")),
                     _num(r["mse_x_trajectories"]), r["moments"] or "-",
                     f"{r['seconds'] * 1e3:.1f}"]
                    + ([trials_used(r), rel_ci_text(r)] if adaptive else []))
    header = ["estimator", "N", "bias", "bias 95% CI", "|mean-truth|", "noise", "variance", "mse",
              "cosine", "corr", "mse x traj", "moments", "ms"] + (
        ["trials", "rel CI"] if adaptive else [])
    parts = [title, _table(header, rows),
             "bias = |mean - truth| less what sampling noise adds to it (noise), with a 95% "
             "interval for the true bias; mse = bias^2 + variance; cosine, corr (Pearson over "
             "coordinates): of the mean estimate with the truth"
             + ("; trials: estimates used; rel CI: the target metric's interval width over "
                "its value (* short of the target at the cap)" if adaptive else "")]
    if problems:
        parts.append("no statistics (shown as -) for these cells:\n" + "\n".join(problems))
    if result.slopes:
        by_estimator: dict[str, dict[str, Any]] = {}
        for s in result.slopes:
            by_estimator.setdefault(_label(s), {})[s["metric"]] = s
        slope_rows = []
        for name, metrics in by_estimator.items():
            cells = [name]
            for metric in ("bias", "variance", "mse"):
                s = metrics.get(metric)
                cells.append("n/a" if s is None or s["slope"] is None else
                             f"{s['slope']:+.2f} ± {_num(s['stderr'])}")
            slope_rows.append(cells)
        parts += ["log-log slopes against N (± standard error; n/a: fewer than 3 values above "
                  "noise):",
                  _table(["estimator", "bias", "variance", "mse"], slope_rows)]
    return "\n\n".join(parts)
