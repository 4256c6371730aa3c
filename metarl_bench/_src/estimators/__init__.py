"""Layer 2: the meta-gradient estimators, their slow twins, the truths and the conformance kit."""

from __future__ import annotations

from metarl_bench._src.core.registry import register_estimator
from metarl_bench._src.estimators import reference
from metarl_bench._src.estimators.common import batched
from metarl_bench._src.estimators.decomposition import (decomposed_estimator,
                                                       decomposed_trajectories)
from metarl_bench._src.estimators.dice import (dice_from_samples, loaded_dice_from_samples,
                                              lvc_from_samples, taypo_from_samples)
from metarl_bench._src.estimators.emaml import emaml_from_samples
from metarl_bench._src.estimators.es_maml import es_maml, es_maml_trajectories
from metarl_bench._src.estimators.exact import exact
from metarl_bench._src.estimators.hessian_free import hf_maml_from_samples
from metarl_bench._src.estimators.lsf import lsf_from_samples
from metarl_bench._src.estimators.maml import fomaml_from_samples, maml_from_samples
from metarl_bench._src.estimators.score_function import loo_from_samples, unbiased_from_samples
from metarl_bench._src.estimators.tmaml import tmaml_from_samples


def _register_builtin() -> None:
    # bias: what each estimator's docstring states against grad F_N at its default options
    # (checked by the conformance kit)
    for name, from_samples, twin, needs_model, bias in (
            ("unbiased", unbiased_from_samples, reference.unbiased, False, "zero"),
            ("lsf", lsf_from_samples, reference.lsf, False, "vanishing"),
            ("dice", dice_from_samples, reference.dice, False, "vanishing"),
            ("maml", maml_from_samples, reference.maml, False, "persistent"),
            ("fomaml", fomaml_from_samples, reference.fomaml, False, "persistent"),
            ("loo", loo_from_samples, reference.loo, True, "zero"),
            ("loaded-dice", loaded_dice_from_samples, reference.loaded_dice, False, "vanishing"),
            ("lvc", lvc_from_samples, reference.lvc, False, "persistent"),
            ("taypo", taypo_from_samples, reference.taypo, False, "vanishing"),
            ("emaml", emaml_from_samples, reference.emaml, False, "persistent"),
            ("tmaml", tmaml_from_samples, reference.tmaml, False, "vanishing"),
            ("hf-maml", hf_maml_from_samples, reference.hf_maml, False, "vanishing")):
        register_estimator(name, batched(from_samples, needs_model=needs_model, name=name),
                           from_samples=from_samples, reference=twin, needs_model=needs_model,
                           count_determined=_without_noisy_critic, bias=bias, overwrite=True)
    register_estimator("es-maml", es_maml, trajectories=es_maml_trajectories,
                       bias="persistent", overwrite=True)
    register_estimator("exact", exact, needs_model=True, bias="zero", deterministic=True,
                       overwrite=True)
    # default parts (maml's inner step, lsf's Hessian on samples of its own): both errors
    # against grad F_N are O(1/N); other parts may claim otherwise (maml's Hessian persists)
    register_estimator("decomposed", decomposed_estimator, trajectories=decomposed_trajectories,
                       bias="vanishing", overwrite=True)


def _without_noisy_critic(options: dict) -> bool:
    """Count-determined unless a noisy critic draws noise beyond the inner samples."""
    return options.get("critic") != "noisy-exact"
