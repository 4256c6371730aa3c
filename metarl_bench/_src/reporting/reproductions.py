"""Published comparisons that ``metarl-bench reproduce NAME`` regenerates into a folder.

Each entry runs seeded ``evaluate`` calls into a results store in the folder and writes the
report (figures and an HTML page) beside it; a second call resumes from the store, so it
only redraws.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

#: The comparison behind the headline claim of Tang (ICML 2022): on a bandit with exact
#: moments and a small random MDP, the unbiased estimate's variance grows like N, LSF's falls
#: like 1/N with a bias that vanishes, and naive-Hessian / first-order MAML stay biased.
HEADLINE = (
    ("bandit-v0", {"rewards": [1.0, 0.0, 0.5], "init_logits": [0.0, 0.5, -0.5]}, 2.0),
    ("tabular-v0", {"n_states": 5, "n_actions": 3, "horizon": 5, "gamma": 0.9, "seed": 0}, 1.0),
)
HEADLINE_ESTIMATORS = ("unbiased", "lsf", "maml", "fomaml")
HEADLINE_N = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HEADLINE_TRIALS = 2000


@dataclass(frozen=True)
class Reproduction:
    name: str
    title: str
    runs: Callable[[], list[dict[str, Any]]]   # evaluate() keyword arguments, task made


def _tang2022() -> list[dict[str, Any]]:
    from metarl_bench._src.core.registry import make_task

    return [dict(task=make_task(task_id, **params), estimators=list(HEADLINE_ESTIMATORS),
                 n_inner=list(HEADLINE_N), n_trials=HEADLINE_TRIALS, inner_lr=inner_lr, seed=0,
                 truth="finite")
            for task_id, params, inner_lr in HEADLINE]


REPRODUCTIONS = {
    "tang2022": Reproduction(
        "tang2022", "Tang (ICML 2022): unbiased vs LSF vs MAML estimates against N",
        _tang2022),
}


def reproduce(name: str, folder: str | os.PathLike, *, progress: Any = None) -> str:
    """Run the reproduction ``name`` into ``folder``; returns the path of its HTML report."""
    from metarl_bench._src.core.errors import unknown_name
    from metarl_bench._src.evaluation.evaluate import evaluate
    from metarl_bench._src.core.files import make_folder
    from metarl_bench._src.reporting.html import check_report_folder, write_report

    if name not in REPRODUCTIONS:
        raise unknown_name("reproduction", name, REPRODUCTIONS)
    entry = REPRODUCTIONS[name]
    check_report_folder(folder)  # a foreign index.html: refused before the runs, not after
    folder = make_folder(folder, "folder")
    store = os.path.join(folder, "results.jsonl")
    results = [evaluate(jsonl=store, progress=progress, **kwargs) for kwargs in entry.runs()]
    return write_report(results, folder, title=entry.title, source=store)
