"""Meta-gradient estimators for one inner policy-gradient step, one module per family.

* ``common``: the shared inner/outer machinery and the batched wrapper;
* ``score_function``: ``unbiased`` and ``loo``; ``lsf``; ``dice``: the DiCE family;
* ``maml``: ``maml`` and ``fomaml``; ``exact``: the exact gradient as an estimator;
* ``decomposition``: ``decomposed``, the inner step, Hessian and outer gradient of an
  estimate taken from three estimators (``decomposed(...)`` builds any combination);
* ``reference``: the slow, obviously-correct twin of each (used by tests and benchmarks).
"""

from __future__ import annotations

from metarl_bench._src.registry import register_estimator
from metarl_bench._src.estimators import reference
from metarl_bench._src.estimators.common import batched
from metarl_bench._src.estimators.decomposition import decomposed_estimator
from metarl_bench._src.estimators.dice import dice_from_samples
from metarl_bench._src.estimators.exact import exact
from metarl_bench._src.estimators.lsf import lsf_from_samples
from metarl_bench._src.estimators.maml import fomaml_from_samples, maml_from_samples
from metarl_bench._src.estimators.score_function import loo_from_samples, unbiased_from_samples


def _register_builtin() -> None:
    for name, from_samples, twin, needs_model in (
            ("unbiased", unbiased_from_samples, reference.unbiased, False),
            ("lsf", lsf_from_samples, reference.lsf, False),
            ("dice", dice_from_samples, reference.dice, False),
            ("maml", maml_from_samples, reference.maml, False),
            ("fomaml", fomaml_from_samples, reference.fomaml, False),
            ("loo", loo_from_samples, reference.loo, True)):
        register_estimator(name, batched(from_samples, needs_model=needs_model),
                           from_samples=from_samples, reference=twin, needs_model=needs_model,
                           count_determined=True, overwrite=True)
    register_estimator("exact", exact, needs_model=True, overwrite=True)
    register_estimator("decomposed", decomposed_estimator, overwrite=True)
