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
    #: figures beyond those against N: ``(results, folder) -> list[Figure]``
    figures: Callable[[Any, str], list[Any]] | None = None


def _tang2022() -> list[dict[str, Any]]:
    from metarl_bench._src.core.registry import make_task

    return [dict(task=make_task(task_id, **params), estimators=list(HEADLINE_ESTIMATORS),
                 n_inner=list(HEADLINE_N), n_trials=HEADLINE_TRIALS, inner_lr=inner_lr, seed=0,
                 truth="finite")
            for task_id, params, inner_lr in HEADLINE]


#: Vuorio, Beck, Whiteson, Foerster, Farquhar (2022, arXiv:2209.11303): the bias truncated
#: backpropagation adds, against the window w, for short and long inner loops. Exact truths:
#: grad F_inf of the full K steps by autodiff through the model (no enumeration reaches
#: K = 100), so the bias at w = K is LSF's own finite-N bias.
VUORIO_TASKS = (
    ("bandit-v0", {"rewards": [1.0, 0.0, 0.5], "init_logits": [0.0, 0.5, -0.5]}, 0.5),
    ("tabular-v0", {"n_states": 5, "n_actions": 3, "horizon": 5, "gamma": 0.9, "seed": 0}, 0.5),
)
VUORIO_STEPS = (5, 20, 100)
VUORIO_WINDOWS = (0, 1, 2, 5, 10, 20, 50, 100)
VUORIO_ESTIMATOR = "lsf"
VUORIO_N = 16
VUORIO_TRIALS = 200


def _vuorio2022() -> list[dict[str, Any]]:
    from metarl_bench._src.core.registry import make_task

    return [dict(task=make_task(task_id, **params),
                 estimators=[f"{VUORIO_ESTIMATOR}:truncate={w}" for w in VUORIO_WINDOWS
                             if w < n_steps] + [VUORIO_ESTIMATOR],
                 n_inner=[VUORIO_N], n_trials=VUORIO_TRIALS, inner_lr=inner_lr, seed=0,
                 truth="limit", n_steps=n_steps)
            for task_id, params, inner_lr in VUORIO_TASKS for n_steps in VUORIO_STEPS]


def _window_figures(results: Any, folder: str) -> list[Any]:
    from metarl_bench._src.reporting.figures import window_figures

    return window_figures(results, folder)


REPRODUCTIONS = {
    "tang2022": Reproduction(
        "tang2022", "Tang (ICML 2022): unbiased vs LSF vs MAML estimates against N",
        _tang2022),
    "vuorio2022": Reproduction(
        "vuorio2022", "Vuorio et al. (2022): bias and variance of truncated meta-gradients "
        "against the window, K = 5, 20, 100", _vuorio2022, _window_figures),
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
    return write_report(results, folder, title=entry.title, source=store,
                        more_figures=entry.figures)
