"""``metarl-bench reproduce vuorio2022``: its plan (windows per K, exact truths), and the
report it writes, on a shrunken configuration (the full one runs for minutes)."""

import os

from metarl_bench._src.cli import main
from metarl_bench._src.evaluation.evaluate import plan
from metarl_bench._src.reporting import reproductions


def test_the_plan_covers_every_window_up_to_each_k_with_exact_truths():
    runs = reproductions.REPRODUCTIONS["vuorio2022"].runs()
    assert [(r["task"].name, r["n_steps"]) for r in runs] == [
        (task, k) for task in ("bandit-v0", "tabular-v0") for k in (5, 20, 100)]
    for run in runs:
        k = run["n_steps"]
        windows = [int(e.split("=")[1]) for e in run["estimators"] if "truncate" in e]
        assert windows == [w for w in (0, 1, 2, 5, 10, 20, 50) if w < k]
        assert run["estimators"][-1] == "lsf" and run["truth"] == "limit"
        plan(**run)  # checked as evaluate would (each window against K), running nothing


def test_reproduce_writes_the_window_figures_and_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproductions, "VUORIO_STEPS", (2, 3))
    monkeypatch.setattr(reproductions, "VUORIO_WINDOWS", (0, 1, 2))
    monkeypatch.setattr(reproductions, "VUORIO_TRIALS", 20)
    monkeypatch.setattr(reproductions, "VUORIO_N", 2)
    out = tmp_path / "vuorio"
    assert main(["reproduce", "vuorio2022", "-o", str(out), "--quiet"]) == 0
    names = sorted(os.listdir(out))
    assert "bandit-v0-windows.png" in names and "tabular-v0-windows.png" in names
    page = (out / "index.html").read_text()
    assert "against the truncation window" in page and "bandit-v0-windows.png" in page
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (3 + 4)   # K = 2: w = 0, 1, full; K = 3: w = 0, 1, 2, full
    # a second call resumes from the store and only redraws
    assert main(["reproduce", "vuorio2022", "-o", str(out), "--quiet"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == len(lines)
