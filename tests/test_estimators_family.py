"""The DiCE family (loaded-dice, lvc, taypo), emaml and es-maml: equivalences sample for
sample, batched against slow twins with their options, exact moments against Monte Carlo,
expected Hessians by enumerating every trajectory of a small MDP, and the signatures that
tell the estimators apart (which bias vanishes with N and which does not)."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.estimators import reference
from metarl_bench._src.estimators.es_maml import es_maml_from_samples, perturbed_points
from metarl_bench._src.tasks.bandit import compositions
from metarl_bench._src.core.trajectories import Trajectories

from conftest import SCIENCE_LR, generator
from test_estimators import TASKS, inner_samples, make


def fast(name, task, theta, inner, inner_lr=0.7, outer=None, **options):
    return mb.estimator_spec(name).from_samples(task, theta, inner, inner_lr=inner_lr,
                                                outer=outer, **options)


def fresh_outer(task, n_outer, seed=9):
    """An outer sampler that starts from the same seed at every call (equal theta' in two
    estimators then gives equal outer samples)."""
    if n_outer is None:
        return None
    return lambda adapted, index: task.sample(adapted, n_outer, index, generator(seed))


SAME = dict(rtol=1e-10, atol=1e-12)

# ---- special-case equivalences, sample for sample (float64) ---------------------------

EQUIVALENT = [
    (("loaded-dice", {"dependency_decay": 1.0}), ("dice", {})),
    (("loaded-dice", {"dependency_decay": 0.0}), ("lvc", {})),
    (("loaded-dice", {"dependency_decay": 0.0, "critic": "exact", "gae_lambda": 0.6}),
     ("lvc", {"critic": "exact", "gae_lambda": 0.6})),
    (("loaded-dice", {"dependency_decay": 0.0, "critic": "linear"}), ("lvc", {"critic": "linear"})),
    (("taypo", {"order": 1}), ("lvc", {})),
    (("taypo", {"order": 2}), ("dice", {})),
    (("emaml", {"score_scale": "sum"}), ("unbiased", {})),
]


@pytest.mark.parametrize("n_outer", [None, 5])
@pytest.mark.parametrize("task_key", ["tabular", "tabular-2tasks"])
@pytest.mark.parametrize("left, right", EQUIVALENT,
                         ids=[f"{a[0]}{a[1]}={b[0]}{b[1]}" for a, b in EQUIVALENT])
def test_special_cases_agree_sample_for_sample(left, right, task_key, n_outer):
    task = make(task_key)
    theta = task.initial_params() + 0.2
    inner = inner_samples(task, theta, n_rows=4, n_inner=6)
    a = fast(left[0], task, theta, inner, outer=fresh_outer(task, n_outer), **left[1])
    b = fast(right[0], task, theta, inner, outer=fresh_outer(task, n_outer), **right[1])
    torch.testing.assert_close(a, b, **SAME)


def test_on_a_one_step_bandit_the_family_is_lsf(science_bandit):
    theta = science_bandit.initial_params()
    inner = inner_samples(science_bandit, theta, 30, 8)
    lsf = fast("lsf", science_bandit, theta, inner, inner_lr=SCIENCE_LR)
    for name, options in [("dice", {}), ("lvc", {}), ("taypo", {"order": 1}),
                          ("taypo", {"order": 2}), ("loaded-dice", {"dependency_decay": 0.3})]:
        torch.testing.assert_close(fast(name, science_bandit, theta, inner, SCIENCE_LR,
                                        **options), lsf, **SAME, msg=f"{name} {options}")


def test_with_a_critic_the_members_differ():
    # the differences a user wants measured: each pair below is equal with no critic
    task = make("tabular")
    theta = task.initial_params()
    inner = inner_samples(task, theta, 6, 5)
    pairs = [(("taypo", {"order": 2, "critic": "exact"}), ("dice", {})),
             (("taypo", {"order": 2, "critic": "exact"}), ("loaded-dice", {"critic": "exact"})),
             (("taypo", {"order": 1, "critic": "linear"}), ("lvc", {"critic": "linear"})),
             (("loaded-dice", {"critic": "exact"}), ("loaded-dice", {})),
             (("loaded-dice", {"dependency_decay": 0.5}), ("dice", {}))]
    for (a, opts_a), (b, opts_b) in pairs:
        gap = (fast(a, task, theta, inner, **opts_a) - fast(b, task, theta, inner, **opts_b))
        assert gap.abs().max() > 1e-4, (a, opts_a, b, opts_b)


# ---- batched against the slow twins, with options ------------------------------------

TWIN_CASES = [
    ("loaded-dice", {"dependency_decay": 0.5, "critic": "exact", "gae_lambda": 0.7}),
    ("loaded-dice", {"dependency_decay": 0.3, "critic": "linear", "gae_lambda": 0.9}),
    ("loaded-dice", {"critic": "noisy-exact", "critic_noise": 0.3}),
    ("lvc", {"critic": "linear", "gae_lambda": 0.0}),
    ("taypo", {"order": 1, "critic": "linear"}),
    ("taypo", {"order": 2, "critic": "exact"}),
    ("taypo", {"order": 2, "critic": "noisy-exact"}),
    ("emaml", {"score_scale": "sum"}),
    ("unbiased", {"baseline": "loo-mean"}),
]


@pytest.mark.parametrize("task_key", list(TASKS))
@pytest.mark.parametrize("n_outer", [None, 4])
@pytest.mark.parametrize("name, options", TWIN_CASES,
                         ids=[f"{n}{o}" for n, o in TWIN_CASES])
def test_batched_equals_slow_twin_with_options(name, options, task_key, n_outer):
    task = make(task_key)
    theta = task.initial_params() + 0.1
    inner = inner_samples(task, theta, n_rows=3, n_inner=4)
    spec = mb.estimator_spec(name)
    noisy = options.get("critic") == "noisy-exact"
    outer = None if n_outer is None else ReplayedOuter(task, n_outer, seed=9)
    extra = {"generator": generator(5)} if noisy else {}
    if task_key.startswith("lq") and options.get("critic", "none") != "none":
        # critics read per-state values or features: LQ's continuous states have neither
        with pytest.raises(mb.UnsupportedError):
            spec.from_samples(task, theta, inner, inner_lr=0.02, outer=outer, **options, **extra)
        return
    # LQ's gradients are tens of times a softmax's: a step of 0.7 would make sigma' explode
    inner_lr = 0.02 if task_key.startswith("lq") else 0.7
    calls = []
    for form in (spec.from_samples, spec.reference):
        extra = {"generator": generator(5)} if noisy else {}
        calls.append(form(task, theta, inner, inner_lr=inner_lr, outer=outer, **options,
                          **extra))
    torch.testing.assert_close(calls[0], calls[1], **SAME)


class ReplayedOuter:
    """Samples every row's outer trajectories at the first (batched) call, then hands them
    out again in row order, as many rows per call as asked for, from the start once all
    were handed out: the batched form, its twin and a per-trial loop see the same samples."""

    def __init__(self, task, n_outer, seed):
        self.task, self.n_outer, self.seed = task, n_outer, seed
        self.recorded, self.cursor = None, 0

    def __call__(self, adapted, task_index):
        if self.recorded is None:
            self.recorded = self.task.sample(adapted, self.n_outer, task_index,
                                             generator(self.seed))
            return self.recorded
        rows = adapted.shape[0]
        traj = self.recorded.rows(slice(self.cursor, self.cursor + rows))
        self.cursor = (self.cursor + rows) % self.recorded.n_rows
        return traj


def es_inputs(task, theta, n_rows, n_perturbations, sigma, n_inner, seed=0):
    perturbations = torch.randn(n_rows, n_perturbations, *theta.shape, generator=generator(seed),
                                dtype=theta.dtype)
    index = (torch.arange(n_rows) % task.n_tasks).repeat_interleave(2 * n_perturbations)
    inner = task.sample(perturbed_points(theta, perturbations, sigma), n_inner, index,
                        generator(seed + 1))
    return perturbations, inner


@pytest.mark.parametrize("task_key", ["bandit-3tasks", "tabular"])
@pytest.mark.parametrize("n_outer", [None, 3])
def test_es_maml_batched_equals_slow_twin_and_per_trial_loop(task_key, n_outer):
    task = make(task_key)
    theta = task.initial_params()
    perturbations, inner = es_inputs(task, theta, 3, 2, 0.3, 4)
    kwargs = dict(inner_lr=0.7, perturbations=perturbations, sigma=0.3)
    outer = None if n_outer is None else ReplayedOuter(task, n_outer, seed=2)
    batched = es_maml_from_samples(task, theta, inner, outer=outer, **kwargs)
    torch.testing.assert_close(batched, reference.es_maml(task, theta, inner, outer=outer,
                                                          **kwargs), **SAME)
    looped = reference.per_trial(es_maml_from_samples)(task, theta, inner, outer=outer,
                                                       **kwargs)
    torch.testing.assert_close(batched, looped, **SAME)


@pytest.mark.parametrize("name, options", [("es-maml", {"n_perturbations": 2}),
                                           ("loaded-dice", {"critic": "noisy-exact"}),
                                           ("taypo", {"critic": "linear"})])
def test_random_options_are_seeded(name, options):
    task = make("tabular-2tasks")
    theta = task.initial_params(dtype=torch.float32)
    run = lambda seed: mb.get_estimator(name)(task, theta, n_inner=3, inner_lr=1.0,  # noqa: E731
                                              n_trials=5, generator=generator(seed), **options)
    first, again, other = run(0), run(0), run(1)
    assert first.shape == (5, *task.param_shape) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bad_options_are_typed_errors():
    task = make("tabular")
    theta = task.initial_params()
    call = lambda name, **o: mb.get_estimator(name)(task, theta, n_inner=2, inner_lr=1.0,  # noqa
                                                    n_trials=2, **o)
    for name, options, message in [
            ("loaded-dice", {"dependency_decay": 1.5}, "dependency_decay must be <= 1.0"),
            ("loaded-dice", {"critic": "perfect"}, "critic must be one of"),
            ("lvc", {"critic_noise": 0.2}, "critic_noise applies only to critic='noisy-exact'"),
            ("taypo", {"order": 3}, "order must be 1 or 2"),
            ("emaml", {"score_scale": "max"}, "score_scale must be 'mean' or 'sum'"),
            ("es-maml", {"sigma": 0.0}, "sigma must be > 0"),
            ("taypo", {"gae_lambda": 0.5}, "has no option 'gae_lambda'")]:
        with pytest.raises(mb.ParameterError, match=message):
            call(name, **options)


def test_exact_critic_needs_a_model_and_says_so():
    task = make("tabular")
    modelless = copy.copy(task)
    modelless.has_model = False
    modelless.state_values = mb.Task.state_values.__get__(modelless)
    theta = task.initial_params()
    with pytest.raises(mb.UnsupportedError, match="no exact per-state values"):
        mb.get_estimator("loaded-dice")(modelless, theta, n_inner=2, inner_lr=1.0, n_trials=2,
                                        n_outer=2, critic="exact")


# ---- exact moments on bandits against Monte Carlo --------------------------------------

MOMENT_CASES = [
    ("loaded-dice", {"critic": "exact"}),
    ("loaded-dice", {"critic": "linear", "gae_lambda": 0.5}),
    ("lvc", {}),
    ("taypo", {"order": 2, "critic": "exact"}),
    ("taypo", {"order": 1, "critic": "linear"}),
    ("emaml", {"score_scale": "mean"}),
    ("emaml", {"score_scale": "sum"}),
    ("unbiased", {"baseline": "loo-mean"}),
]


@pytest.mark.parametrize("task_key", ["bandit", "bandit-3tasks"])
@pytest.mark.parametrize("name, options", MOMENT_CASES, ids=[f"{n}{o}" for n, o in MOMENT_CASES])
def test_monte_carlo_moments_agree_with_exact_moments(name, options, task_key):
    # 20k seeded trials. Mean: every coordinate within 4.5 standard errors (a false alarm has
    # probability < 1e-4 per coordinate). Variance (trace): within 7% relative (its standard
    # error here is below 2%; heavier tails of emaml "sum" included).
    task = make(task_key)
    theta = task.initial_params() + torch.linspace(-0.3, 0.3, task.param_shape[0],
                                                   dtype=torch.float64)
    n_inner, n_trials = 6, 20_000
    spec = mb.estimator_spec(name)
    truth = mb.meta_gradient(task, theta, inner_lr=SCIENCE_LR, n_inner=n_inner)
    exact = mb.exact_moments(task, theta, spec, n_inner=n_inner, inner_lr=SCIENCE_LR,
                             truth=truth, **options)
    samples = spec.fn(task, theta, n_inner=n_inner, inner_lr=SCIENCE_LR, n_trials=n_trials,
                      generator=generator(11), **options)
    stderr = samples.std(0) / math.sqrt(n_trials)
    assert torch.all((samples.mean(0) - exact.mean).abs() <= 4.5 * stderr + 1e-12)
    mc_variance = float(samples.var(0).sum())
    assert mc_variance == pytest.approx(float(torch.trace(exact.covariance)), rel=0.07)


def test_noisy_critic_and_es_maml_are_not_count_determined(science_bandit):
    theta = science_bandit.initial_params()
    truth = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=4)
    spec = mb.estimator_spec("loaded-dice")
    assert spec.is_count_determined({"critic": "exact"})
    assert not spec.is_count_determined({"critic": "noisy-exact"})
    assert not mb.estimator_spec("es-maml").is_count_determined({})
    with pytest.raises(mb.UnsupportedError, match="random beyond its inner samples"):
        mb.exact_moments(science_bandit, theta, spec, n_inner=4, inner_lr=SCIENCE_LR,
                         truth=truth, critic="noisy-exact")
    result = mb.evaluate(science_bandit, ["loaded-dice", "lvc", "es-maml"], n_inner=[4],
                         n_trials=50, inner_lr=SCIENCE_LR,
                         options={"loaded-dice": {"critic": "noisy-exact"}})
    assert [r["moments"] for r in result.records] == ["monte-carlo", "exact", "monte-carlo"]


# ---- expected Hessians by enumerating every trajectory of a small MDP ------------------

def all_trajectories(task, theta):
    """Every trajectory of a one-task MDP as one row each (R = (S A)^T) and its probability."""
    start, transitions, rewards = (t[0] for t in task._model(theta)[:3])
    pi = torch.softmax(theta, -1)
    n_states, n_actions, horizon = task.n_states, task.n_actions, task.horizon
    states, actions, probability = [], [], []
    for path in itertools.product(range(n_states * n_actions), repeat=horizon):
        xs, as_ = [p // n_actions for p in path], [p % n_actions for p in path]
        weight = start[xs[0]]
        for t in range(horizon):
            weight = weight * pi[xs[t], as_[t]]
            if t + 1 < horizon:
                weight = weight * transitions[xs[t], as_[t], xs[t + 1]]
        states.append(xs)
        actions.append(as_)
        probability.append(weight)
    states = torch.tensor(states).unsqueeze(1)
    actions = torch.tensor(actions).unsqueeze(1)
    traj = Trajectories(states, actions, rewards[states, actions],
                        torch.zeros(len(probability), dtype=torch.long))
    return traj, torch.stack(probability)


def with_linear_outer(task, direction):
    """The task with V(theta) replaced by direction . theta, so that an estimate of one
    trajectory is direction + eta H(tau)^T direction whatever theta' is."""
    linear = copy.copy(task)
    linear.value = lambda params, index: params.reshape(params.shape[0], -1) @ direction
    return linear


SMALL_MDP = dict(n_states=2, n_actions=2, horizon=3, gamma=0.9, seed=0)


@pytest.fixture(scope="module")
def small_mdp_enumerated():
    task = mb.make_task("tabular-v0", **SMALL_MDP)
    theta = task.initial_params()
    traj, probability = all_trajectories(task, theta)
    assert float(probability.sum()) == pytest.approx(1.0, abs=1e-12)
    direction = torch.randn(theta.numel(), generator=generator(0), dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(
        lambda th: task.value(th.reshape(1, *theta.shape), torch.zeros(1, dtype=torch.long))[0],
        theta.reshape(-1))
    return task, theta, traj, probability, direction, hessian.T @ direction


def expected_hessian_along(setup, name, **options):
    task, theta, traj, probability, direction, _ = setup
    eta = 0.5
    estimates = fast(name, with_linear_outer(task, direction), theta, traj, inner_lr=eta,
                     **options).reshape(len(probability), -1)
    return (probability @ estimates - direction) / eta


@pytest.mark.parametrize("name, options", [
    ("dice", {}), ("loaded-dice", {"critic": "exact"}), ("loaded-dice", {"critic": "exact",
                                                                          "gae_lambda": 0.0}),
    ("taypo", {"order": 2}), ("taypo", {"order": 2, "critic": "exact"})])
def test_expected_hessian_is_exact_for_the_unbiased_members(small_mdp_enumerated, name, options):
    # E[H(tau)]^T u over all 64 trajectories equals grad^2 V^T u to rounding: the Hessian
    # estimate is unbiased, so with H_N an average of N such terms, at every N.
    # (An exact critic keeps it unbiased whatever GAE's tau, since E[delta_t | x_t, a_t]
    # = advantage exactly.)
    exact = small_mdp_enumerated[-1]
    torch.testing.assert_close(expected_hessian_along(small_mdp_enumerated, name, **options),
                               exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, options", [
    ("lvc", {}), ("taypo", {"order": 1}), ("loaded-dice", {"dependency_decay": 0.5}),
    ("loaded-dice", {"gae_lambda": 0.5})])
def test_expected_hessian_is_biased_for_lvc_and_decayed_dependencies(small_mdp_enumerated, name,
                                                                    options):
    # the missing cross-time products: the gap is a property of one trajectory's H, so no N
    # removes it (measured: 16%, 16%, 9% and 12% of |grad^2 V u| = 0.31; asserted > 5%)
    exact = small_mdp_enumerated[-1]
    gap = expected_hessian_along(small_mdp_enumerated, name, **options) - exact
    assert float(gap.norm()) > 0.05 * float(exact.norm()), float(gap.norm())


def test_lvc_bias_levels_off_at_its_predicted_limit_while_dice_vanishes(small_mdp_enumerated):
    # As N grows, lvc's mean tends to (I + eta E[H_lvc])^T grad V(theta + eta grad V), with
    # E[H_lvc] from the enumeration above: a bias against grad F_inf that no N removes
    # (0.0198 here, 5% of |grad F_inf|). Monte Carlo, 1000 seeded trials per cell: lvc's
    # bias at N = 128 and 256 is within [0.9, 1.4] of that limit (measured 1.26 and about
    # 1.1; a bias vanishing like 1/N would halve), each more than 10 noise levels above zero,
    # while dice's has fallen below a third of it.
    task, theta, traj, probability = small_mdp_enumerated[:4]
    eta, dim = 2.0, theta.numel()
    expected_h_transposed = torch.stack([
        expected_hessian_along((task, theta, traj, probability, torch.eye(dim)[j].double(), None),
                               "lvc") for j in range(dim)])
    index = torch.zeros(1, dtype=torch.long)
    value = lambda th: task.value(th.reshape(1, *theta.shape), index)[0]  # noqa: E731
    grad_v = torch.autograd.functional.jacobian(value, theta.reshape(-1))
    outer = torch.autograd.functional.jacobian(value, theta.reshape(-1) + eta * grad_v)
    truth = mb.meta_gradient(task, theta, inner_lr=eta).reshape(-1)
    limit_bias = float((outer + eta * expected_h_transposed @ outer - truth).norm())
    assert limit_bias > 0.05 * float(truth.norm())
    result = mb.evaluate(task, ["lvc", "dice"], n_inner=[128, 256], n_trials=1000,
                         inner_lr=eta, truth="limit", seed=0)
    lvc = [r for r in result.records if r["estimator"] == "lvc"]
    dice = [r for r in result.records if r["estimator"] == "dice"]
    for record in lvc:
        assert 0.9 < record["bias"] / limit_bias < 1.4, (record["bias"], limit_bias)
        assert record["bias"] > 10 * record["bias_noise"]
    assert dice[1]["bias"] < limit_bias / 3, dice[1]["bias"]


# ---- signatures on the bandit, exact moments -------------------------------------------

def exact_bias(task, theta, name, n_inner, **options):
    truth = mb.meta_gradient(task, theta, inner_lr=SCIENCE_LR, n_inner=n_inner)
    moments = mb.exact_moments(task, theta, mb.estimator_spec(name), n_inner=n_inner,
                               inner_lr=SCIENCE_LR, truth=truth, **options)
    return float((moments.mean - truth).norm())


def test_lvc_is_unbiased_like_on_a_one_step_bandit_and_emaml_mean_is_not(science_bandit):
    theta = science_bandit.initial_params()
    grid = [8, 32, 128]
    lvc = [exact_bias(science_bandit, theta, "lvc", n) for n in grid]
    emaml = [exact_bias(science_bandit, theta, "emaml", n) for n in grid]
    emaml_sum = [exact_bias(science_bandit, theta, "emaml", n, score_scale="sum") for n in grid]
    slope = np.polyfit(np.log(grid), np.log(lvc), 1)[0]
    assert slope < -0.5, lvc          # vanishes with N like lsf (measured about -1.4)
    assert min(emaml) > 0.1 and max(emaml) / min(emaml) < 1.2, emaml  # does not vanish
    assert max(emaml_sum) < 1e-12     # the unbiased score term


def test_unbiased_with_a_leave_one_out_mean_baseline_stays_exactly_unbiased(science_bandit):
    # b_i = the mean return of the other N - 1 trajectories does not depend on tau_i: the
    # exact mean equals grad F_N to rounding at every N, and the variance drops (measured
    # 12x at N = 256) while still growing with N
    theta = science_bandit.initial_params()
    spec = mb.estimator_spec("unbiased")
    variances = {}
    for n_inner in (2, 4, 32, 256):
        truth = mb.meta_gradient(science_bandit, theta, inner_lr=SCIENCE_LR, n_inner=n_inner)
        for baseline in (0.0, "loo-mean"):
            moments = mb.exact_moments(science_bandit, theta, spec, n_inner=n_inner,
                                       inner_lr=SCIENCE_LR, truth=truth, baseline=baseline)
            torch.testing.assert_close(moments.mean, truth, rtol=0, atol=1e-12)
            variances[n_inner, baseline] = float(torch.trace(moments.covariance))
    assert all(variances[n, "loo-mean"] < variances[n, 0.0] / 3 for n in (4, 32, 256))
    assert variances[256, "loo-mean"] > 5 * variances[32, "loo-mean"]
    with pytest.raises(mb.ParameterError, match="baseline must be a number or 'loo-mean'"):
        spec.fn(science_bandit, theta, n_inner=2, inner_lr=1.0, n_trials=2, baseline="mean")


# ---- es-maml: the Gaussian-smoothed target and its O(sigma^2) bias ----------------------

def finite_objective(task, thetas, n_inner):
    """F_N at each row of ``thetas`` (B, K), by the closed form of bandit-v0 (one task)."""
    counts = compositions(n_inner, task.n_arms).to(thetas.dtype)                 # (C, K)
    rewards = task.arm_rewards[0].to(thetas.dtype)
    log_pi = torch.log_softmax(thetas, -1)                                        # (B, K)
    weight = torch.exp(torch.lgamma(torch.tensor(n_inner + 1.0, dtype=thetas.dtype))
                       - torch.lgamma(counts + 1).sum(-1) + log_pi @ counts.T)     # (B, C)
    pi = log_pi.exp().unsqueeze(1)
    inner_grad = (counts * rewards - (counts @ rewards).unsqueeze(-1) * pi) / n_inner
    adapted = torch.softmax(thetas.unsqueeze(1) + SCIENCE_LR * inner_grad, -1)     # (B, C, K)
    return (weight * (adapted @ rewards)).sum(-1)


def smoothed_gradient(task, theta, n_inner, sigma, nodes=10):
    """grad E_e F_N(theta + sigma e) = E[F_N(theta + sigma e) e] / sigma by Gauss-Hermite
    quadrature over e ~ N(0, I_K) (exact for polynomials of degree < 2 * nodes per axis)."""
    points, weights = np.polynomial.hermite_e.hermegauss(nodes)
    grid = torch.tensor(list(itertools.product(points, repeat=theta.numel())))      # (B, K)
    grid_weights = torch.tensor([float(np.prod(w)) for w in itertools.product(
        weights / math.sqrt(2 * math.pi), repeat=theta.numel())])
    values = finite_objective(task, theta + sigma * grid, n_inner)
    return (grid_weights * values) @ grid / sigma


def test_es_maml_targets_the_smoothed_gradient_whose_bias_shrinks_like_sigma_squared(
        science_bandit):
    task, n_inner = science_bandit, 4
    theta = task.initial_params()
    truth = mb.meta_gradient(task, theta, inner_lr=SCIENCE_LR, n_inner=n_inner)
    torch.testing.assert_close(finite_objective(task, theta.unsqueeze(0), n_inner)[0],
                               task.finite_meta_objective(theta, n_inner, SCIENCE_LR))
    sigmas = [0.4, 0.2, 0.1]
    smoothed = {s: smoothed_gradient(task, theta, n_inner, s) for s in sigmas}
    bias = [float((smoothed[s] - truth).norm()) for s in sigmas]
    # halving sigma divides the smoothing bias by about 4 (measured 3.56 and 3.89)
    assert 3.3 < bias[0] / bias[1] < 4.5 and 3.6 < bias[1] / bias[2] < 4.4, bias
    # es-maml's Monte Carlo mean is that smoothed gradient: 20k seeded trials of 4
    # perturbations each, every coordinate within 4.5 standard errors; at sigma = 0.4 the
    # bias (0.025) stands well above the Monte Carlo noise
    samples = mb.get_estimator("es-maml")(task, theta, n_inner=n_inner, inner_lr=SCIENCE_LR,
                                          n_trials=20_000, generator=generator(7), sigma=0.4,
                                          n_perturbations=4)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    assert torch.all((samples.mean(0) - smoothed[0.4]).abs() <= 4.5 * stderr)
    assert bias[0] > 5 * float(stderr.norm()), (bias[0], float(stderr.norm()))


# ---- the command line ------------------------------------------------------------------

def test_cli_lists_and_runs_the_family(tmp_path, capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("loaded-dice", "lvc", "taypo", "emaml", "es-maml"))
    assert main(["run", "--task", "bandit-v0", "--estimators",
                 "loaded-dice,lvc,taypo,emaml,es-maml", "--n-inner", "2,8",
                 "--trials", "30", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines()
            if line.split() and line.split()[0] in ("loaded-dice", "lvc", "taypo", "emaml",
                                                     "es-maml")]
    moments = {(row[0], row[1]): row[-2] for row in rows}
    assert all(moments[(name, n)] == "exact" for name in ("loaded-dice", "lvc", "taypo", "emaml")
               for n in ("2", "8"))
    assert moments[("es-maml", "2")] == "monte-carlo"


@pytest.mark.parametrize("name, options", [("es-maml", {"n_perturbations": 2}),
                                           ("decomposed", {"inner": "lsf"})])
def test_es_maml_and_decomposed_run_in_chunks_like_every_batched_estimator(name, options,
                                                                           monkeypatch):
    """A large call is split into the chunks of ``batched`` and the generator runs on: the
    result is the chunks' calls one after another."""
    from metarl_bench._src.estimators import common

    task = make("tabular")
    theta = task.initial_params()
    call = lambda n_trials, gen: mb.get_estimator(name)(  # noqa: E731
        task, theta, n_inner=3, inner_lr=1.0, n_trials=n_trials, generator=gen, **options)
    per_task = mb.estimator_spec(name).trajectories_per_task(3, None, options)
    monkeypatch.setattr(common, "CHUNK_STEPS", 4 * per_task * task.horizon)
    counts = common.chunk_counts(10, common.trials_per_chunk(task, per_task))
    assert counts == [4, 3, 3]
    gen = generator(3)
    chunked = torch.cat([call(count, gen) for count in counts])
    assert torch.equal(call(10, generator(3)), chunked)
