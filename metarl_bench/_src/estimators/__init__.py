"""Meta-gradient estimators for one inner policy-gradient step, one module per family.

* ``common``: the shared inner/outer machinery and the batched wrapper;
* ``score_function``: ``unbiased`` and ``loo``; ``lsf``;
* ``dice``: the DiCE family, ``dice``, ``loaded-dice``, ``lvc``, ``taypo`` (their critics in
  ``critics``);
* ``maml``: ``maml`` and ``fomaml``; ``emaml``; ``es_maml``: ``es-maml`` (zero-order);
* ``exact``: the exact gradient as an estimator;
* ``reference``: the slow, obviously-correct twin of each (used by tests and benchmarks).
"""

from __future__ import annotations

from metarl_bench._src.registry import register_estimator
from metarl_bench._src.estimators import reference
from metarl_bench._src.estimators.common import batched
from metarl_bench._src.estimators.dice import (dice_from_samples, loaded_dice_from_samples,
                                              lvc_from_samples, taypo_from_samples)
from metarl_bench._src.estimators.emaml import emaml_from_samples
from metarl_bench._src.estimators.es_maml import es_maml, es_maml_trajectories
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
            ("loo", loo_from_samples, reference.loo, True),
            ("loaded-dice", loaded_dice_from_samples, reference.loaded_dice, False),
            ("lvc", lvc_from_samples, reference.lvc, False),
            ("taypo", taypo_from_samples, reference.taypo, False),
            ("emaml", emaml_from_samples, reference.emaml, False)):
        register_estimator(name, batched(from_samples, needs_model=needs_model),
                           from_samples=from_samples, reference=twin, needs_model=needs_model,
                           count_determined=_without_noisy_critic, overwrite=True)
    register_estimator("es-maml", es_maml, trajectories=es_maml_trajectories, overwrite=True)
    register_estimator("exact", exact, needs_model=True, overwrite=True)


def _without_noisy_critic(options: dict) -> bool:
    """Count-determined unless a noisy critic draws noise beyond the inner samples."""
    return options.get("critic") != "noisy-exact"
