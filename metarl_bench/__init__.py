"""metarl_bench: benchmarks for gradient estimators in gradient-based meta-RL.

Public API (everything else lives in ``metarl_bench._src`` and may change)::

    import metarl_bench as mb
    task = mb.make_task("bandit-v0", rewards=[1.0, 0.2, -0.5])
    grads = mb.get_estimator("lsf")(task, task.initial_params(), n_inner=16, inner_lr=1.0,
                                    n_trials=1000)
"""

from metarl_bench._src.tasks import envs as _envs
from metarl_bench._src import estimators as _estimators
from metarl_bench._src.tasks.envs import set_tasks
from metarl_bench._src.core.errors import (MetaRLBenchError, ParameterError, RegistrationError,
                                      ResourceError, ResultsFileError, ShapeError,
                                      UnknownNameError, UnsupportedError)
from metarl_bench._src.estimators.common import batched as batched_estimator
from metarl_bench._src.estimators.decomposition import decomposed
from metarl_bench._src.estimators.entries import Entry as EstimatorEntry
from metarl_bench._src.estimators.entries import resolve as estimator_entry
from metarl_bench._src.evaluation.evaluate import Result, evaluate, load_results
from metarl_bench._src.tasks.policies import Policy, make_policy
from metarl_bench._src.core.registry import (Estimator, EstimatorSpec, estimator_spec, get_estimator,
                                        list_estimators, list_tasks, make_task,
                                        register_estimator, register_task)
from metarl_bench._src.tasks import Task
from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.estimators.truth import estimate_meta_gradient, exact_moments, meta_gradient

# Each task's run defaults (``metarl-bench run --task ID``) finish in a few minutes on two
# cores with finite statistics: a smaller grid where the truth is estimated, the inner step
# that suits the family's reward scale, n_outer and a smaller budget where there is no model.
# Tasks with a model keep 20,000 truth samples: the store key holds truth_samples (even
# under --truth limit), so results stored by commands that relied on it still resume.
_TABULAR = dict(n_inner=(1, 2, 4, 8, 16, 32, 64))
_MUJOCO = dict(inner_lr=1e-3, n_inner=(2, 8), n_outer=8, n_trials=8, truth_samples=32)
register_task("bandit-v0", "metarl_bench._src.tasks.bandit:make_bandit")
register_task("bernoulli-bandit-v0", "metarl_bench._src.tasks.bandit:make_bernoulli_bandit",
              defaults=_TABULAR)
register_task("gaussian-bandit-v0", "metarl_bench._src.tasks.bandit:make_gaussian_bandit",
              defaults=_TABULAR)
register_task("tabular-v0", "metarl_bench._src.tasks.tabular:make_tabular", defaults=_TABULAR)
register_task("navigation2d-v0", "metarl_bench._src.tasks.navigation:make_navigation2d",
              defaults=dict(inner_lr=1e-3, n_inner=(2, 4, 8), n_outer=8, n_trials=20,
                            truth_samples=50))
register_task("lq-navigation-v0", "metarl_bench._src.tasks.lq:make_lq_navigation",
              defaults=dict(inner_lr=0.01, n_inner=(1, 2, 4, 8, 16, 32)))
register_task("halfcheetah-vel-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_halfcheetah_vel",
              defaults=_MUJOCO)
register_task("halfcheetah-dir-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_halfcheetah_dir",
              defaults=_MUJOCO)
register_task("ant-dir-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_ant_dir",
              defaults={**_MUJOCO, "n_inner": (2, 4), "n_outer": 2, "n_trials": 4,
                        "truth_samples": 8})
register_task("gym-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_gym", defaults=_MUJOCO)
# Meta-World: N = 2, 4 with M = 2 sampled outer trajectories on 5 goals of 150 steps, few
# trials (its environments step in Python, about a millisecond a step); MAML-TRPO's step
_METAWORLD = dict(inner_lr=0.1, n_inner=(2, 4), n_outer=2, n_trials=3, truth_samples=4)
register_task("metaworld-ml1-v0", "metarl_bench._src.tasks.metaworld_tasks:make_metaworld_ml1",
              defaults=_METAWORLD)
register_task("metaworld-ml10-v0",
              "metarl_bench._src.tasks.metaworld_tasks:make_metaworld_ml10", defaults=_METAWORLD)
register_task("tabular-discounted-v0", "metarl_bench._src.tasks.tabular:make_discounted_tabular",
              defaults=dict(n_inner=(1, 2, 4, 8), n_trials=1000))
_envs.register_gymnasium_envs()
_estimators._register_builtin()

__version__ = "0.1.0"

__all__ = [
    "Estimator", "EstimatorEntry", "EstimatorSpec", "MetaRLBenchError", "ParameterError",
    "Policy", "RegistrationError", "ResourceError", "Result", "ResultsFileError", "ShapeError",
    "Task", "Trajectories", "UnknownNameError", "UnsupportedError", "batched_estimator",
    "decomposed", "estimate_meta_gradient", "estimator_entry", "estimator_spec", "evaluate",
    "exact_moments", "get_estimator", "list_estimators", "list_tasks", "load_results",
    "make_policy", "make_task", "meta_gradient", "register_estimator", "register_task",
    "set_tasks",
]
