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

register_task("bandit-v0", "metarl_bench._src.tasks.bandit:make_bandit")
register_task("bernoulli-bandit-v0", "metarl_bench._src.tasks.bandit:make_bernoulli_bandit")
register_task("gaussian-bandit-v0", "metarl_bench._src.tasks.bandit:make_gaussian_bandit")
register_task("tabular-v0", "metarl_bench._src.tasks.tabular:make_tabular")
register_task("navigation2d-v0", "metarl_bench._src.tasks.navigation:make_navigation2d")
register_task("lq-navigation-v0", "metarl_bench._src.tasks.lq:make_lq_navigation")
register_task("halfcheetah-vel-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_halfcheetah_vel")
register_task("halfcheetah-dir-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_halfcheetah_dir")
register_task("ant-dir-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_ant_dir")
register_task("gym-v0", "metarl_bench._src.tasks.gymnasium_tasks:make_gym")
register_task("tabular-discounted-v0", "metarl_bench._src.tasks.tabular:make_discounted_tabular")
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
