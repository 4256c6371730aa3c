"""A self-contained HTML report of results: tables and figures in one file, no network.

The figures are embedded as base64 PNGs and the style is inline, so the page renders the
same from a laptop, a CI artifact or an e-mail attachment, with no request leaving it.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from metarl_bench._src.core.errors import ParameterError
from metarl_bench._src.core.files import check_folder, make_folder
from metarl_bench._src.evaluation.tables import (SLOPE_COLUMNS, number, rel_ci_text,
                                                 series_label, slope_rows, trials_used)
from metarl_bench._src.reporting.figures import Figure, write_figures

#: In the head of every page written here: how a later report recognises its own page (and
#: replaces it) in a folder, and refuses to replace anyone else's index.html.
MARKER = '<meta name="generator" content="metarl-bench report">'
#: The figures a page was written with, so that the next report into the folder removes those
#: it does not write again, and no other PNG: ``<!-- metarl-bench figures: [names] -->``.
_FIGURES = re.compile(r"<!-- metarl-bench figures: (\[.*?\]) -->")
#: What pages written before the marker hold (they are ours too; their figures unlisted).
_LEGACY_ENDING = "<h2>How to read this report</h2>"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em;
       color: #1b1b1b; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; } .note { color: #555; font-size: 0.9em; }
code { background: #f5f5f5; padding: 0 3px; }
"""

_READING = """
<h2>How to read this report</h2>
<ul>
<li><b>bias</b>: the distance from the mean estimate to the truth, less what sampling noise
adds to that distance (<b>|mean-truth|</b> is the uncorrected value; <b>noise</b> what it reads
when the true bias is zero). Its interval is for the true bias; an interval from 0 means the
bias cannot be told from zero with these trials.</li>
<li><b>variance</b>: the trace of the covariance of single estimates; <b>mse</b> = bias&sup2; +
variance. <b>moments</b> says whether these are exact (enumerated: no Monte Carlo error) or
Monte Carlo estimates over the trials.</li>
<li><b>cosine</b> and <b>corr</b> (Pearson over coordinates) compare the mean estimate's
direction with the truth's; <b>mse x traj</b> is MSE times the trajectories one estimate costs:
the number to compare when choosing an estimator for a fixed sampling budget.</li>
<li>Slopes are fitted on log-log axes against N over the values above noise, with their
standard errors; none is given from fewer than 3 such values.</li>
<li><b>truth</b>: <code>finite</code> is the gradient of the N-sample objective, <code>limit</code>
its N&rarr;&infin; limit; <code>exact</code> or <code>estimated</code> says how it was obtained
(an estimated truth's own error is included in every interval).</li>
<li><b>trials</b>: the estimates behind a row. With adaptive trials (<code>--target-rel-ci</code>)
it also shows the width the target metric's interval reached, relative to the metric; a star
marks a cell that hit <code>--max-trials</code> before its target.</li>
<li><b>ms</b>: wall time of computing the row's estimates; <b>peak MiB</b>: the memory that
computing them added to the process at its peak (the resident high-water mark on CPUs, the
allocator's peak on CUDA). Both depend on the machine.</li>
</ul>
"""


def _embed(figure: Figure) -> str:
    with open(figure.path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode("ascii")
    return (f'<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(figure.title)}.</b> "
            f"{html.escape(figure.caption)}</figcaption></figure>")


def _interval(value: Any, ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None or ci[0] == ci[1] == value:
        return number(value)  # exact moments: the interval is the point
    return f"{number(value)} [{number(ci[0])}, {number(ci[1])}]"


def _trials_cell(record: dict[str, Any]) -> str:
    """Estimates used; for adaptive cells with the relative interval width reached."""
    if record.get("target_rel_ci") is None or record.get("problem"):
        return str(trials_used(record))
    return f"{trials_used(record)} (±{rel_ci_text(record)})"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table whose first column (the series) is left-aligned."""
    def row(cells: Sequence[Any], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag}{" class=name" if i == 0 else ""}>'
                                f"{html.escape(str(c))}</{tag}>"
                                for i, c in enumerate(cells)) + "</tr>"

    return f"<table>{row(header, 'th')}{''.join(row(cells, 'td') for cells in rows)}</table>"


def _records_table(records: Sequence[dict[str, Any]]) -> str:
    """The records in the order the terminal prints them (the run's order)."""
    header = ["estimator", "N", "bias [95% CI]", "|mean-truth|", "noise", "variance [95% CI]",
              "mse [95% CI]", "cosine", "corr", "mse x traj", "moments", "truth", "trials", "ms",
              "peak MiB"]
    rows = []
    for r in records:
        rows.append([series_label(r), r["n_inner"], _interval(r.get("bias"), r.get("bias_ci")),
                     number(r.get("bias_raw")), number(r.get("bias_noise")),
                     _interval(r.get("variance"), r.get("variance_ci")),
                     _interval(r.get("mse"), r.get("mse_ci")), number(r.get("cosine")),
                     number(r.get("correlation")), number(r.get("mse_x_trajectories")),
                     r.get("moments", "-"), f"{r.get('truth')} ({r.get('truth_kind')})",
                     _trials_cell(r),
                     "-" if r.get("seconds") is None else f"{r['seconds'] * 1e3:.1f}",
                     "-" if r.get("peak_memory_bytes") is None
                     else f"{r['peak_memory_bytes'] / 2 ** 20:.3g}"])
    return _html_table(header, rows)


def _config_line(config: dict[str, Any]) -> str:
    shown = {k: v for k, v in config.items() if k not in ("theta", "estimators")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _tasks(result: Any) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in result.records)) or [
        str(result.config.get("task", "?"))]


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def headings(results: Sequence[Any]) -> list[str]:
    """One section heading per result: its tasks, and, where another result shares a task,
    the settings that tell the two apart (``seed=1``, ``inner_lr=2.0, n_trials=500``)."""
    out = []
    for index, result in enumerate(results):
        tasks = _tasks(result)
        others = [other for i, other in enumerate(results)
                  if i != index and set(_tasks(other)) & set(tasks)]
        differing = [key for key in result.config if key not in ("estimators", "n_inner")
                     and any(other.config.get(key) != result.config[key] for other in others)]
        differing = list(dict.fromkeys(differing + [
            key for other in others for key in other.config if key not in result.config]))
        heading = ", ".join(tasks)
        if differing:
            heading += " (" + ", ".join(f"{key}={_short(result.config.get(key, '-'))}"
                                        for key in differing) + ")"
        out.append(heading)
    return out


def check_report_folder(folder: str | os.PathLike, option: str = "folder") -> list[str]:
    """Check, without writing, that a report may be written into ``folder``: it can be
    made, and any ``index.html`` there is a page this module wrote (anyone else's, e.g. a
    user's notes, is refused rather than replaced). Returns the figures that page lists."""
    folder = check_folder(folder, option)
    page = os.path.join(folder, "index.html")
    if not os.path.lexists(page):
        return []
    refusal = (f"{option} {folder!r} holds an index.html that metarl-bench did not write; "
               f"choose another folder, or move that file")
    if not os.path.isfile(page):
        raise ParameterError(refusal)
    try:
        with open(page, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise ParameterError(f"{option} {folder!r}: its index.html cannot be read to check "
                             f"that metarl-bench wrote it: {exc.strerror}") from None
    if MARKER not in text:
        if _LEGACY_ENDING in text and text.startswith("<!DOCTYPE html><html lang=en><head>"):
            return []  # a page of an earlier version: replaced, its figures left alone
        raise ParameterError(refusal)
    if not os.access(page, os.W_OK):
        raise ParameterError(f"{option} {folder!r}: its index.html cannot be replaced: "
                             f"permission denied")
    listed = _FIGURES.search(text)
    try:
        names = json.loads(listed.group(1)) if listed else []
    except ValueError:
        names = []
    # plain names of PNG files in the folder itself, nothing a damaged list could point at
    return [name for name in names if isinstance(name, str) and name.endswith(".png")
            and os.path.basename(name) == name and name not in (".", "..")]


def write_report(results: Sequence[Any], folder: str | os.PathLike, *,
                 title: str | None = None, source: str | None = None,
                 more_figures: Callable[[Sequence[Any], str], list[Figure]] | None = None
                 ) -> str:
    """Write the figures and ``index.html`` of ``results`` into ``folder``; returns its path.

    ``more_figures(results, folder)``: figures beyond the ones against N (a reproduction's
    own, e.g. ``figures.window_figures``), each shown in its result's section.

    ``title`` defaults to one naming the results' tasks (the scope of the page). Refuses
    (ParameterError) a folder whose ``index.html`` another program or person wrote; the
    figures a previous report listed and this one does not write are removed.
    """
    previous = check_report_folder(folder)
    make_folder(folder, "folder")
    figures = write_figures(results, folder)
    if more_figures is not None:
        figures += more_figures(results, folder)
    written = [os.path.basename(f.path) for f in figures]
    if title is None:
        title = "metarl_bench: " + ", ".join(dict.fromkeys(
            task for result in results for task in _tasks(result)))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>{MARKER}"
             f"<!-- metarl-bench figures: {json.dumps(written)} --><title>"
             f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class=note>Written {stamp}"
             + (f" from <code>{html.escape(source)}</code>" if source else "") + ".</p>"]
    for index, (result, heading) in enumerate(zip(results, headings(results))):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(f"<p class=note>{html.escape(_config_line(result.config))}</p>")
        parts.extend(_embed(f) for f in figures if f.result_index == index)
        if result.slopes:
            parts.append("<p>Log-log slopes against N (± standard error):</p>")
            parts.append(_html_table(["estimator", *SLOPE_COLUMNS], slope_rows(result.slopes)))
        parts.append(_records_table(result.records))
    parts.append(_READING)
    parts.append("</body></html>")
    path = os.path.join(folder, "index.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts))
    for name in sorted(set(previous) - set(written)):
        stale = os.path.join(folder, name)
        if os.path.isfile(stale) and not os.path.islink(stale):
            os.remove(stale)
    return path
