"""The conformance kit (metarl_bench.testing): every registered estimator passes it, and each
deliberately broken estimator fails it with the named check that should catch it.

The kit's checks use fixed seeds, so these results repeat exactly; its statistical
thresholds (5 standard errors, stated in metarl_bench/_src/estimators/conformance.py) leave the
correct estimators far inside and the broken ones far outside (a sign flip sits about
-1 x |truth| away; a doubled estimate +1 x |truth|).
"""

import pytest
import torch

import metarl_bench as mb
from metarl_bench.testing import (CheckFailure, check_estimator, check_names,
                                  estimator_checks)


@pytest.mark.parametrize("name", mb.list_estimators())
def test_every_registered_estimator_passes_the_kit(name):
    report = check_estimator(name)          # raises AssertionError with the report
    assert report.passed and not report.failed
    assert {r.name for r in report.results} == set(check_names())


lsf = mb.estimator_spec("lsf").fn


def wrong_shape(task, theta, **kwargs):
    return lsf(task, theta, **kwargs).reshape(kwargs["n_trials"], -1)[:, :-1]


def returns_a_list(task, theta, **kwargs):
    return list(lsf(task, theta, **kwargs))


def global_rng(task, theta, *, generator=None, **kwargs):
    return lsf(task, theta, generator=torch.Generator().manual_seed(
        int(torch.randint(0, 2**31, ()))), **kwargs)


def sign_flipped(task, theta, **kwargs):
    return -lsf(task, theta, **kwargs)


def doubled(task, theta, **kwargs):
    return 2 * lsf(task, theta, **kwargs)


def ignores_theta(task, theta, **kwargs):
    return lsf(task, task.initial_params(dtype=theta.dtype, device=theta.device), **kwargs)


def always_float64(task, theta, **kwargs):
    return lsf(task, theta.double(), **kwargs)


def modifies_theta(task, theta, **kwargs):
    out = lsf(task, theta, **kwargs)
    theta.add_(0.0 * theta + 1e-3)
    return out


def no_validation(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None, generator=None):
    return torch.zeros(max(n_trials, 0), *theta.shape, dtype=theta.dtype) + 0.1


def noisier(task, theta, **kwargs):
    estimates = lsf(task, theta, **kwargs)
    return 2 * estimates - estimates.mean(0)    # noise doubled, mean unchanged


BROKEN = {
    "wrong-shape": (wrong_shape, {}, "check_returns_tensor_of_shape"),
    "list": (returns_a_list, {}, "check_returns_tensor_of_shape"),
    "global-rng": (global_rng, {}, "check_same_seed_same_bits"),
    "sign-flip": (sign_flipped, {"bias": "vanishing"}, "check_bandit_statistics"),
    "doubled": (doubled, {"bias": "vanishing"}, "check_bandit_statistics"),
    "ignores-theta": (ignores_theta, {}, "check_depends_on_theta"),
    "wrong-dtype": (always_float64, {}, "check_dtype_follows_theta"),
    "modifies-theta": (modifies_theta, {}, "check_depends_on_theta"),
    "no-validation": (no_validation, {}, "check_bad_input_raises_typed_errors"),
}


@pytest.mark.parametrize("key", list(BROKEN))
def test_a_broken_estimator_fails_the_right_named_check(key):
    fn, claims, expected = BROKEN[key]
    with pytest.raises(AssertionError) as raised:
        check_estimator(fn, **claims)
    report = str(raised.value)
    assert f"FAIL [{expected}] rule:" in report and "fix:" in report, report
    assert report.startswith(f"check_estimator({fn.__name__!r}")


def statistics(estimator, **claims):
    return {c.name: c for c in estimator_checks(estimator, **claims)
            if c.name in ("check_bandit_statistics", "check_mdp_statistics")}


def test_biased_claims_are_checked_only_as_claimed():
    # a doubled lsf claims nothing about its bias: the kit reports it and passes it (the
    # mean still points uphill); claiming "vanishing" fails it (test above)
    message = statistics(doubled)["check_bandit_statistics"]()
    assert "bias=None" in message and "cosine 1.0000" in message
    # maml claims a persistent bias: "zero" would be false, and fails on both tasks
    for check in statistics("maml", bias="zero").values():
        with pytest.raises(CheckFailure, match="bias='zero'"):
            check()


def test_a_registered_noisier_variance_fails_against_its_exact_moments():
    # registered with lsf's from-samples form, but the call adds noise: the Monte Carlo
    # variance of the call disagrees with the exact variance of the form
    spec = mb.estimator_spec("lsf")
    from dataclasses import replace
    report = check_estimator(replace(spec, name="noisier-lsf", fn=noisier), on_fail=None)
    assert [r.name for r in report.failed] == ["check_exact_moments_match_monte_carlo"]
    assert "variance" in report.failed[0].message


def test_checks_parametrise_pytest_and_raise_check_failure():
    checks = estimator_checks(sign_flipped, bias="vanishing")
    assert [str(c) for c in checks][:2] == ["sign_flipped-check_signature",
                                            "sign_flipped-check_returns_tensor_of_shape"]
    # a callable without a from-samples form: the twin checks do not apply
    assert "check_from_samples_equals_reference" not in {c.name for c in checks}
    (stats,) = [c for c in checks if c.name == "check_bandit_statistics"]
    with pytest.raises(CheckFailure, match="ascent direction"):
        stats()
    assert "accepts task, theta" in checks[0]()


def test_kit_arguments_are_checked():
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'lsf'"):
        check_estimator("lfs")
    with pytest.raises(mb.ParameterError, match="unknown claim"):
        check_estimator("lsf", unbiased=True)
    with pytest.raises(mb.ParameterError, match="bias must be one of"):
        check_estimator("lsf", bias="small")


# ---- registration rejects what the kit's signature check would ---------------------------

def test_register_rejects_a_function_that_cannot_take_the_common_keywords():
    def no_generator(task, theta, *, n_inner, inner_lr, n_trials, n_outer=None):
        return torch.zeros(n_trials, *theta.shape)

    with pytest.raises(mb.RegistrationError, match="does not accept the keyword.*generator"):
        mb.register_estimator("test-no-generator", no_generator)

    def extra_required(task, theta, inner, *, n_inner, inner_lr, n_trials, n_outer=None,
                       generator=None):
        return torch.zeros(n_trials, *theta.shape)

    with pytest.raises(mb.RegistrationError, match="requires inner, which callers never"):
        mb.register_estimator("test-extra", extra_required)
    with pytest.raises(mb.RegistrationError, match="positional"):
        mb.register_estimator("test-one-positional", lambda task, **kwargs: None)
    with pytest.raises(mb.RegistrationError, match="bias must be one of"):
        mb.register_estimator("test-claim", lsf, bias="low")
    assert not {"test-no-generator", "test-extra", "test-one-positional",
                "test-claim"} & set(mb.list_estimators())
    # what is accepted: explicit keywords, **kwargs, or the batched wrapper of a form
    for accepted in (lambda task, theta, **kwargs: None, lambda *args, **kwargs: None,
                     mb.batched_estimator(mb.estimator_spec("lsf").from_samples)):
        mb.register_estimator("test-accepted", accepted, overwrite=True)
    from metarl_bench._src.core.registry import ESTIMATORS
    ESTIMATORS.pop("test-accepted")
