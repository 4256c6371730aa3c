"""Figures and the HTML report: what they contain, that the page needs no network, and that
headless Chromium renders its figures with every outside request refused."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.reporting.html import write_report

from conftest import SCIENCE_BANDIT, SCIENCE_LR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: matplotlib's first default colour (the first estimator's line), as 8-bit RGB
FIRST_LINE_RGB = np.array([31, 119, 180])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    task = mb.make_task("bandit-v0", **SCIENCE_BANDIT)
    store = str(tmp_path_factory.mktemp("results") / "results.jsonl")
    result = mb.evaluate(task, ["unbiased", "lsf", "maml"], n_inner=[1, 4, 16, 64],
                         n_trials=200, inner_lr=SCIENCE_LR, seed=0, jsonl=store)
    return store, result


def test_report_writes_three_figures_per_task_and_a_page_with_no_outside_reference(
        results, tmp_path):
    _, result = results
    page = write_report([result], tmp_path, title="bandit report")
    names = sorted(os.listdir(tmp_path))
    assert names == ["bandit-v0-cost.png", "bandit-v0-efficiency.png",
                     "bandit-v0-statistics.png", "index.html"]
    for name in names[:3]:
        with open(tmp_path / name, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(page, encoding="utf-8").read()
    assert text.count('src="data:image/png;base64,') == 3
    assert not re.search(r"(src|href)=\"?(https?:)?//", text), "the page must load nothing"
    for estimator in ("unbiased", "lsf", "maml"):
        assert f"<td class=name>{estimator}</td>" in text
    assert "How to read this report" in text and "bandit report" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_headless_chromium_renders_the_figures_offline(results, tmp_path):
    import matplotlib.image

    _, result = results
    page = write_report([result], tmp_path / "report")
    shot = tmp_path / "page.png"
    # every request goes to a proxy on a closed port, so anything not inside the file fails
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--proxy-server=http://127.0.0.1:9",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1300,2600", "--hide-scrollbars", f"file://{page}"],
                   check=True, capture_output=True)
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round()
    first_line = np.abs(pixels - FIRST_LINE_RGB).max(-1) <= 8
    # the page's own style has no such blue: these pixels are the figures' lines, so the
    # embedded PNGs were decoded and drawn
    assert first_line.sum() > 500, first_line.sum()


def test_cli_report_and_its_errors(results, tmp_path, capsys):
    store, _ = results
    assert main(["report", store, "-o", str(tmp_path / "out")]) == 0
    assert "index.html" in capsys.readouterr().out
    assert (tmp_path / "out" / "bandit-v0-statistics.png").exists()
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["reproduce", "tang2023"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'tang2022'?" in err and err.count("\n") == 2


def test_a_panel_with_nothing_above_zero_is_labelled_not_a_crash(tmp_path, capsys):
    # unbiased alone with exact moments: every bias is zero, which a log axis cannot show
    path = tmp_path / "u.jsonl"
    code = main(["run", "--task", "bandit-v0", "--estimators", "unbiased", "--n-inner", "1,2,4",
                 "--trials", "50", "--json", str(path), "--quiet"])
    assert code == 0, capsys.readouterr().err
    folder = tmp_path / "u-report"
    assert sorted(os.listdir(folder)) == ["bandit-v0-cost.png", "bandit-v0-efficiency.png",
                                          "bandit-v0-statistics.png", "index.html"]


@pytest.mark.parametrize("argv, message", [
    (["report", "{store}", "-o", "{file}"], "-o/--out '{file}' exists and is not a folder"),
    (["report", "{store}", "-o", ""], "-o/--out must be a folder path, got an empty string"),
    (["reproduce", "tang2022", "-o", "{file}"], "exists and is not a folder"),
    (["run", "--task", "bandit-v0", "--n-inner", "1", "--trials", "10", "--out", "{file}"],
     "--out '{file}' exists and is not a folder"),
    (["run", "--task", "bandit-v0", "--n-inner", "1", "--trials", "10", "--out", ""],
     "--out must be a folder path"),
    (["run", "--task", "bandit-v0", "--n-inner", "1", "--trials", "10", "--out", "{new}",
      "--n-outer", "1000000000000"], "needs about"),
])
def test_a_bad_output_folder_is_one_line_and_nothing_is_created(results, tmp_path, capsys,
                                                                 argv, message):
    store, _ = results
    names = dict(store=store, file=str(tmp_path / "afile"), new=str(tmp_path / "new"))
    (tmp_path / "afile").write_text("keep")
    code = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message.format(**names) in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["afile"]
    assert (tmp_path / "afile").read_text() == "keep"


# ---- one identity per series: label, colour, order, headings ---------------------------------

def test_a_label_is_the_entry_that_names_the_series_and_parses_back():
    from metarl_bench._src.estimators.entries import entry_label, parse_entry

    for name, options in [("lsf", {}), ("unbiased", {"baseline": 0.5}),
                          ("loaded-dice", {"critic": "exact", "gae_lambda": 0.9}),
                          ("emaml", {"score_scale": "sum"}), ("x", {"flag": True})]:
        assert parse_entry(entry_label(name, options)) == (name, options)
    assert entry_label("decomposed", {"inner": "maml", "hessian": "lsf"}) == \
        "decomposed:inner=maml,hessian=lsf"


def test_an_estimator_keeps_its_colour_whatever_else_is_in_the_figure(tmp_path):
    from metarl_bench._src.evaluation.tables import estimator_colour
    from metarl_bench._src.reporting.figures import _series

    records = [{"estimator": name, "options": options, "n_inner": 1}
               for name, options in [("maml", {}), ("lsf", {}), ("unbiased", {}),
                                     ("unbiased", {"baseline": 0.5})]]
    first = {s.label: (s.colour, s.style) for s in _series(records)}
    second = {s.label: (s.colour, s.style) for s in _series(records[2:] + records[:2])}
    assert first == second
    assert len({first[label][0] for label in ("maml", "lsf", "unbiased")}) == 3
    assert first["unbiased"][0] == first["unbiased:baseline=0.5"][0] == \
        estimator_colour("unbiased")
    assert first["unbiased"][1] != first["unbiased:baseline=0.5"][1]
    assert estimator_colour("not-registered-here") == estimator_colour("not-registered-here")


def test_writing_a_report_leaves_matplotlib_and_its_backend_alone(results, tmp_path):
    code = ("import sys, matplotlib; matplotlib.use('svg')\n"
            "import metarl_bench as mb\n"
            "from metarl_bench._src.reporting.html import write_report\n"
            f"(result,) = mb.load_results({results[0]!r})\n"
            f"write_report([result], {str(tmp_path)!r})\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_page_names_its_tasks_and_tells_apart_sections_of_one_task(tmp_path):
    task = mb.make_task("bandit-v0", **SCIENCE_BANDIT)
    runs = [mb.evaluate(task, ["maml", "lsf"], n_inner=[2, 4], n_trials=20, seed=seed,
                        inner_lr=SCIENCE_LR) for seed in (0, 1)]
    other = mb.evaluate(mb.make_task("tabular-v0", n_states=3, horizon=2), ["lsf"],
                        n_inner=[2], n_trials=20, truth="limit")
    text = open(write_report([*runs, other], tmp_path), encoding="utf-8").read()
    assert "<title>metarl_bench: bandit-v0, tabular-v0</title>" in text
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings[:3] == ["bandit-v0 (seed=0)", "bandit-v0 (seed=1)", "tabular-v0"]
    # the records in the terminal's (the run's) order, not sorted by name
    table = text.split("<h2>bandit-v0 (seed=0)</h2>")[1].split("<h2>")[0]
    names = re.findall(r"<td class=name>([^<]*)</td>", table)
    assert names[-4:] == ["maml", "lsf", "maml", "lsf"]
    terminal = [line.split()[0] for line in runs[0].table().splitlines()
                if line.strip().startswith(("maml ", "lsf "))]
    assert terminal[:4] == names[-4:]


NOTES = "<html><body><h1>My notes on these runs</h1></body></html>"
RUN = ["run", "--task", "bandit-v0", "--estimators", "lsf", "--n-inner", "1,2", "--trials",
       "10", "--quiet"]


@pytest.mark.parametrize("argv", [
    [*RUN, "--out", "{out}"],
    [*RUN, "--out", "{out}", "--json", "{other}"],
    ["report", "{store}", "-o", "{out}"],
    ["reproduce", "tang2022", "-o", "{out}"],
])
def test_a_foreign_index_html_is_refused_before_anything_runs(results, tmp_path, capsys, argv):
    store, _ = results
    out = tmp_path / "notes"
    out.mkdir()
    (out / "index.html").write_text(NOTES)
    (out / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\nmine")
    names = dict(out=str(out), store=store, other=str(tmp_path / "other.jsonl"))
    code = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (f"--out {str(out)!r} holds an index.html that metarl-bench did not write; choose "
            f"another folder, or move that file") in err
    assert sorted(os.listdir(out)) == ["index.html", "plot.png"]
    assert (out / "index.html").read_text() == NOTES
    assert sorted(os.listdir(tmp_path)) == ["notes"]


def test_write_report_refuses_a_foreign_page_too(results, tmp_path):
    _, result = results
    (tmp_path / "index.html").write_text(NOTES)
    with pytest.raises(mb.ParameterError, match="holds an index.html that metarl-bench did not"):
        write_report([result], tmp_path)
    assert os.listdir(tmp_path) == ["index.html"]


def test_a_report_replaces_its_own_page_and_removes_only_its_stale_figures(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*RUN, "--out", str(out)]) == 0
    (out / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\nmine")           # the user's
    (out / "notes.txt").write_text("mine")
    first = (out / "index.html").read_text()
    # another task into the same folder: the page covers it alone, and the bandit's figures
    # (listed by the first page) go with it
    assert main(["run", "--task", "tabular-v0", "--task-param", "n_states=3", "--task-param",
                 "n_actions=2", "--task-param", "horizon=2", "--estimators", "lsf",
                 "--n-inner", "1,2", "--trials", "10", "--quiet", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["index.html", "notes.txt", "plot.png", "results.jsonl",
                                       "tabular-v0-cost.png", "tabular-v0-efficiency.png",
                                       "tabular-v0-statistics.png"]
    assert (out / "index.html").read_text() != first
    capsys.readouterr()


def test_a_page_of_an_earlier_version_is_replaced(results, tmp_path):
    _, result = results
    earlier = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>metarl_bench "
               "report</title></head><body>\n<h2>How to read this report</h2>\n</body></html>")
    (tmp_path / "index.html").write_text(earlier)
    (tmp_path / "old-bandit-v0-cost.png").write_bytes(b"\x89PNG\r\n\x1a\n")   # not listed: kept
    write_report([result], tmp_path)
    assert "bandit-v0-cost.png" in os.listdir(tmp_path)
    assert "old-bandit-v0-cost.png" in os.listdir(tmp_path)
    assert (tmp_path / "index.html").read_text() != earlier


def test_no_report_with_the_store_elsewhere_never_checks_out(tmp_path, capsys):
    """--out is only the report's folder here: a path there that could not be written is no
    reason to refuse (a file stands in for a read-only folder, which root could write)."""
    (tmp_path / "afile").write_text("keep")
    store = tmp_path / "r.jsonl"
    assert main([*RUN, "--no-report", "--json", str(store), "--out",
                 str(tmp_path / "afile")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["afile", "r.jsonl"]
    # without --json the store lives in --out, which is checked as before
    assert main([*RUN, "--no-report", "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err


def test_reproduce_refuses_a_foreign_page_before_it_runs(tmp_path, monkeypatch):
    from metarl_bench._src.reporting import reproductions

    (tmp_path / "index.html").write_text(NOTES)
    monkeypatch.setattr(reproductions, "REPRODUCTIONS", {"tang2022": None})  # never reached
    with pytest.raises(mb.ParameterError, match="holds an index.html that metarl-bench did not"):
        reproductions.reproduce("tang2022", tmp_path)
    assert os.listdir(tmp_path) == ["index.html"]
