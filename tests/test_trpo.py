"""The MAML-TRPO outer step (``training.trpo``) and ``train(optimizer="trpo")``: conjugate
gradient on a known system, the Gauss-Newton Fisher product against autodiff's Hessian, the
policies' closed-form KL against torch.distributions, the KL bound and the exact objective on
a bandit, rejection, every estimator and task kind, determinism, resume, bad input, and an
adam log of the previous version resuming unchanged.

Every sample is seeded, so every check is deterministic. The bandit's "the exact F_N rises"
holds for these seeds with a margin (about +0.08 for a step of KL 0.01); another seed could in
principle draw a meta-batch whose direction lowers F_N (a seed may change only with a note)."""

import json
import os
import shutil

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.core.registry import estimator_spec
from metarl_bench._src.estimators.common import inner_step
from metarl_bench._src.tasks.policies import (CategoricalMLP, GaussianMLP, LinearGaussian,
                                              TabularSoftmax)
from metarl_bench._src.training import train as train_module
from metarl_bench._src.training.state import checkpoint_path, decode_tensor
from metarl_bench._src.training.train import train
from metarl_bench._src.training.trpo import (TRPO, conjugate_gradient, fisher_product,
                                             kl_hessian_product, mean_kl, trpo_step)

from conftest import REPO, generator
from test_train_resume import interrupt_after, without_seconds

OLD_ADAM_LOG = REPO / "tests" / "data" / "train_adam_600665a"


def sampled(task, theta, estimator="lsf", meta_batch=4, n_inner=5, n_outer=5, inner_lr=0.3,
            seed=0):
    """One training iteration's samples and meta-gradient (train's own ``_iteration``)."""
    return train_module._iteration(task, estimator_spec(estimator), theta, meta_batch, n_inner,
                                   n_outer, inner_lr, {}, generator(seed))


def perturbed(task, seed=1, scale=0.1):
    theta = task.initial_params()
    return theta + scale * torch.randn(theta.shape, dtype=theta.dtype, generator=generator(seed))


def test_conjugate_gradient_solves_a_symmetric_positive_definite_system():
    factor = torch.randn(6, 6, dtype=torch.float64, generator=generator(0))
    matrix = factor @ factor.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64, generator=generator(1))
    x = conjugate_gradient(lambda v: matrix @ v, b, iterations=6)  # exact in n steps
    assert torch.allclose(x, torch.linalg.solve(matrix, b), rtol=0, atol=1e-9)
    # any shape: the dot products run over every entry (theta of a tabular policy is (S, A))
    x = conjugate_gradient(lambda v: (matrix @ v.reshape(6)).reshape(2, 3), b.reshape(2, 3), 6)
    assert torch.allclose(x.reshape(6), torch.linalg.solve(matrix, b), rtol=0, atol=1e-9)
    few = conjugate_gradient(lambda v: matrix @ v, b, iterations=2)
    assert not torch.allclose(few, torch.linalg.solve(matrix, b), atol=1e-6)
    assert torch.equal(conjugate_gradient(lambda v: matrix @ v, torch.zeros(6).double(), 10),
                       torch.zeros(6).double())


@pytest.mark.parametrize("task_id, params", [
    ("bandit-v0", {}),
    ("tabular-v0", {"n_states": 4, "n_actions": 3, "horizon": 4}),
    ("navigation2d-v0", {"horizon": 6, "policy": "linear"}),
    ("navigation2d-v0", {"horizon": 6, "hidden": (5,)}),
    ("lq-navigation-v0", {}),
])
def test_the_gauss_newton_fisher_product_equals_the_hessian_of_the_kl(task_id, params):
    task = mb.make_task(task_id, **params)
    theta = perturbed(task)
    batch = sampled(task, theta, inner_lr=0.05)
    outer, points = batch.outer_at_adapted("lsf")
    fast = fisher_product(task, inner_step(task, theta, batch.inner, 0.05), outer, points,
                          damping=1e-3)
    slow = kl_hessian_product(task, theta, batch.inner, outer, points, inner_lr=0.05,
                              damping=1e-3)
    for seed in (2, 3):
        v = torch.randn(theta.shape, dtype=theta.dtype, generator=generator(seed))
        exact = slow(v)
        assert torch.allclose(fast(v), exact, rtol=1e-9, atol=1e-12 * exact.abs().max())
        assert float((v * fast(v)).sum()) > 0  # positive definite with damping


def _kl_by_torch(old_dist, new_dist):
    return torch.distributions.kl_divergence(old_dist, new_dist)


@pytest.mark.parametrize("kind", ["tabular", "linear", "mlp", "categorical-mlp"])
def test_policy_kl_matches_torch_distributions(kind):
    policies = {"tabular": lambda: TabularSoftmax(3, 4, torch.zeros(3, 4)),
                "linear": lambda: LinearGaussian(3, 2, init_std=0.5),
                "mlp": lambda: GaussianMLP(3, 2, hidden=(5,), init_std=0.5, seed=1),
                "categorical-mlp": lambda: CategoricalMLP(3, 4, hidden=(6,), seed=2)}
    policy = policies[kind]()
    base = policy.initial_params()
    old, new = (base + 0.4 * torch.randn(2, *base.shape, dtype=base.dtype,
                                         generator=generator(seed)) for seed in (0, 1))
    if kind == "tabular":
        x = torch.randint(3, (2, 5, 4), generator=generator(2))
        logits_old, logits_new = policy.logits(old), policy.logits(new)
        rows = torch.arange(2).reshape(2, 1, 1)
        expected = _kl_by_torch(torch.distributions.Categorical(logits=logits_old[rows, x]),
                                torch.distributions.Categorical(logits=logits_new[rows, x]))
    else:
        x = torch.randn(2, 5, 4, 3, dtype=torch.float64, generator=generator(2))
        if kind == "categorical-mlp":
            expected = _kl_by_torch(
                torch.distributions.Categorical(logits=policy.log_softmax(old, x)),
                torch.distributions.Categorical(logits=policy.log_softmax(new, x)))
        else:
            (m0, s0), (m1, s1) = (policy.mean_and_log_std(p, x) for p in (old, new))
            expected = _kl_by_torch(
                torch.distributions.Normal(m0, s0.exp().expand_as(m0)),
                torch.distributions.Normal(m1, s1.exp().expand_as(m1))).sum(-1)
    got = policy.kl(old, new, x)
    assert got.shape == x.shape[:3]
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-13)
    assert torch.allclose(policy.kl(old, old, x), torch.zeros_like(got), atol=1e-15)


def _bandit_adapted(task, theta, inner, inner_lr):
    """Each row's theta'(theta) from its pull counts, by the bandit's closed form
    g(n) = (1/N)(n * r) - (n . r / N) pi (not the estimators' code)."""
    counts = torch.nn.functional.one_hot(inner.actions[..., 0], task.n_arms).sum(1).double()
    rewards = task.arm_rewards[0]
    pi = torch.softmax(theta, -1)
    n_inner = inner.n_traj
    return theta + inner_lr * ((counts * rewards) / n_inner
                               - (counts @ rewards).unsqueeze(-1) / n_inner * pi)


@pytest.mark.parametrize("estimator", ["lsf", "maml", "unbiased"])
def test_a_trpo_step_on_a_bandit_stays_in_the_trust_region_and_raises_the_exact_objective(
        estimator):
    task = mb.make_task("bandit-v0")
    theta = task.initial_params()
    settings = TRPO(max_kl=0.01)
    for seed in (0, 2):
        batch = sampled(task, theta, estimator, meta_batch=16, n_inner=8, n_outer=16,
                        inner_lr=2.0, seed=seed)
        outer, points = batch.outer_at_adapted(estimator)
        step = trpo_step(task, theta, batch.meta_gradient, batch.inner, outer, points,
                         inner_lr=2.0, settings=settings)
        assert step.accepted and 0 < step.kl <= settings.max_kl
        # the KL measured independently: categorical KL of the closed-form adapted policies
        before = _bandit_adapted(task, theta, batch.inner, 2.0)
        after = _bandit_adapted(task, step.theta, batch.inner, 2.0)
        assert torch.allclose(before, points, rtol=0, atol=1e-12)
        measured = _kl_by_torch(torch.distributions.Categorical(logits=before),
                                torch.distributions.Categorical(logits=after)).mean()
        assert float(measured) <= settings.max_kl * (1 + 1e-9)
        assert float(measured) == pytest.approx(step.kl, rel=1e-9)
        assert step.surrogate_gain > 0
        rise = task.finite_meta_objective(step.theta, 8, 2.0) - \
            task.finite_meta_objective(theta, 8, 2.0)
        assert float(rise) > 0.02


def test_a_larger_trust_region_takes_a_longer_step():
    task = mb.make_task("bandit-v0")
    theta = task.initial_params()
    batch = sampled(task, theta, meta_batch=16, n_inner=8, n_outer=16, inner_lr=2.0)
    outer, points = batch.outer_at_adapted("lsf")
    lengths = []
    for max_kl in (0.001, 0.01):
        step = trpo_step(task, theta, batch.meta_gradient, batch.inner, outer, points,
                         inner_lr=2.0, settings=TRPO(max_kl=max_kl))
        assert step.accepted and step.kl <= max_kl
        lengths.append(float((step.theta - theta).norm()))
    assert lengths[1] > 2 * lengths[0]  # about sqrt(10) times: KL is quadratic in the step


def test_a_step_that_cannot_improve_the_surrogate_is_rejected_and_theta_stays():
    task = mb.make_task("bandit-v0")
    theta = task.initial_params()
    batch = sampled(task, theta, "maml", meta_batch=16, n_inner=8, n_outer=16, inner_lr=2.0)
    outer, points = batch.outer_at_adapted("maml")
    # maml's estimate is the surrogate's gradient here: its opposite lowers the surrogate
    step = trpo_step(task, theta, -batch.meta_gradient, batch.inner, outer, points,
                     inner_lr=2.0, settings=TRPO(max_kl=0.01, max_backtracks=5))
    assert not step.accepted
    assert step.theta is theta
    assert step.row() == dict(accepted=False, kl=0.0, step_fraction=0.0, backtracks=5,
                              surrogate_gain=0.0)
    zero = trpo_step(task, theta, torch.zeros_like(theta), batch.inner, outer, points,
                     inner_lr=2.0, settings=TRPO())
    assert not zero.accepted and zero.theta is theta


def test_a_rejected_step_in_training_leaves_theta_unchanged(monkeypatch):
    task = mb.make_task("bandit-v0")
    theta = task.initial_params()
    # a direction that lowers the surrogate in every iteration: training keeps theta
    original = train_module._iteration

    def opposite(*args):
        batch = original(*args)
        estimate = estimator_spec("maml").from_samples(
            task, args[2], batch.inner, inner_lr=args[6],
            outer=lambda *_: batch.outer_calls[0][1]).mean(0)
        batch.meta_gradient = -estimate.detach()
        return batch

    monkeypatch.setattr(train_module, "_iteration", opposite)
    result = train(task, "maml", iterations=3, meta_batch=8, n_inner=8, n_outer=8,
                   inner_lr=2.0, optimizer="trpo", seed=0)
    assert [row["accepted"] for row in result.iterations] == [False] * 3
    assert [row["step_fraction"] for row in result.iterations] == [0.0] * 3
    assert torch.equal(result.theta, theta)


def _registered_from_samples():
    names = []
    for name in mb.list_estimators():
        spec = estimator_spec(name)
        if spec.from_samples is not None and not spec.needs_model:
            names.append(name)
    return names


@pytest.mark.parametrize("estimator", _registered_from_samples())
def test_trpo_drives_every_estimator_that_training_accepts(estimator):
    task = mb.make_task("tabular-v0", n_states=3, n_actions=2, horizon=3)
    result = train(task, estimator, iterations=2, meta_batch=3, n_inner=4, n_outer=4,
                   inner_lr=0.5, optimizer="trpo", seed=1)
    for row in result.iterations:
        assert {"accepted", "kl", "step_fraction", "backtracks", "surrogate_gain"} <= set(row)
        assert row["kl"] <= 0.01 and (row["step_fraction"] > 0) == row["accepted"]
    assert torch.isfinite(result.theta).all()


TASKS = [("bandit-v0", {}), ("bernoulli-bandit-v0", {}), ("tabular-v0", {"horizon": 3}),
         ("tabular-discounted-v0", {"n_states": 3}), ("lq-navigation-v0", {}),
         ("navigation2d-v0", {"horizon": 5, "hidden": (4,)})]


@pytest.mark.parametrize("task_id, params", TASKS, ids=[t for t, _ in TASKS])
def test_trpo_trains_on_every_kind_of_task(task_id, params):
    task = mb.make_task(task_id, **params)
    result = train(task, "lsf", iterations=2, meta_batch=3, n_inner=3, n_outer=3,
                   inner_lr=0.05, optimizer="trpo", seed=0)
    assert len(result.iterations) == 2 and torch.isfinite(result.theta).all()
    assert all(row["kl"] <= 0.01 for row in result.iterations)


@pytest.mark.parametrize("task_id, params", [
    ("halfcheetah-vel-v0", {"n_tasks": 2, "horizon": 4, "hidden": (4,)}),
    ("gym-v0", {"env_id": "CartPole-v1", "horizon": 4, "hidden": (4,)}),
])
def test_trpo_trains_on_gymnasium_and_mujoco_tasks(task_id, params):
    pytest.importorskip("gymnasium")
    if task_id.startswith("halfcheetah"):
        pytest.importorskip("mujoco")
    task = mb.make_task(task_id, **params)
    result = train(task, "lsf", iterations=1, meta_batch=2, n_inner=2, n_outer=2,
                   inner_lr=0.01, optimizer="trpo", seed=0)
    assert torch.isfinite(result.theta).all() and result.iterations[0]["kl"] <= 0.01


def test_a_task_without_a_closed_form_kl_is_a_typed_error():
    task = mb.make_task("bandit-v0")

    class NoKL(TabularSoftmax):
        def kl(self, *args):
            return super(TabularSoftmax, self).kl(*args)

    task.policy = NoKL(1, 3, torch.zeros(1, 3))
    with pytest.raises(mb.UnsupportedError, match="no closed-form KL"):
        train(task, "lsf", iterations=1, meta_batch=2, n_inner=2, n_outer=2, inner_lr=1.0,
              optimizer="trpo")


def tiny(path=None, iterations=5, progress=None, **kwargs):
    task = mb.make_task("navigation2d-v0", horizon=5, policy="linear")
    return train(task, "lsf", iterations=iterations, meta_batch=3, n_inner=3, n_outer=3,
                 inner_lr=0.01, optimizer="trpo", seed=2, jsonl=path, progress=progress,
                 **kwargs)


def test_the_same_seed_gives_the_same_bits(tmp_path):
    first, second = tiny(tmp_path / "a.jsonl"), tiny(tmp_path / "b.jsonl")
    assert torch.equal(first.theta, second.theta)
    assert without_seconds(tmp_path / "a.jsonl") == without_seconds(tmp_path / "b.jsonl")
    assert any(row["accepted"] for row in first.iterations)
    other = tiny(tmp_path / "c.jsonl", trpo=TRPO(max_kl=0.02))
    assert not torch.equal(other.theta, first.theta)


def test_an_interrupted_trpo_run_resumes_bit_for_bit(tmp_path):
    reference = tiny(tmp_path / "reference.jsonl")
    path = tmp_path / "train.jsonl"
    with pytest.raises(KeyboardInterrupt):
        tiny(path, progress=interrupt_after(2))
    checkpoint = json.loads(open(checkpoint_path(path)).read())
    assert checkpoint["finished"] == 2 and checkpoint["optimizer"] is None
    assert checkpoint["config"]["trpo"] == TRPO().describe()
    assert checkpoint["config"]["outer_lr"] is None
    resumed = tiny(path)
    assert torch.equal(resumed.theta, reference.theta)
    assert without_seconds(path) == without_seconds(tmp_path / "reference.jsonl")
    assert torch.equal(decode_tensor(json.loads(open(checkpoint_path(path)).read())["theta"]),
                       reference.theta)
    with pytest.raises(mb.ParameterError, match="max_kl"):  # another trust region: a new run
        tiny(path, trpo=TRPO(max_kl=0.05))


def test_an_adam_log_of_the_previous_version_resumes_unchanged(tmp_path):
    if json.loads((OLD_ADAM_LOG / "train.jsonl").read_text().splitlines()[0])[
            "torch_version"] != torch.__version__:
        pytest.skip("the stored log was written with another torch version")
    for name in ("train.jsonl", "train.state.json"):
        shutil.copy(OLD_ADAM_LOG / name, tmp_path / name)
    before = (tmp_path / "train.jsonl").read_bytes()

    def run(path):
        task = mb.make_task("navigation2d-v0", horizon=5, policy="linear")
        return train(task, "lsf", iterations=4, meta_batch=2, n_inner=2, n_outer=2,
                     inner_lr=0.01, outer_lr=0.05, optimizer="adam", seed=3, jsonl=path)

    resumed = run(tmp_path / "train.jsonl")
    fresh = run(tmp_path / "fresh.jsonl")
    assert (tmp_path / "train.jsonl").read_bytes().startswith(before)  # only appended to
    assert without_seconds(tmp_path / "train.jsonl") == without_seconds(tmp_path / "fresh.jsonl")
    assert torch.equal(resumed.theta, fresh.theta)
    assert "trpo" not in resumed.config and "success_after" not in resumed.iterations[0]


@pytest.mark.parametrize("settings, message", [
    (dict(max_kl=0), "max_kl must be > 0"),
    (dict(max_kl=-0.01), "max_kl must be > 0"),
    (dict(max_kl=float("nan")), "max_kl must be finite"),
    (dict(cg_iterations=0), "cg_iterations must be an integer >= 1"),
    (dict(damping=-1e-5), "damping must be >= 0"),
    (dict(backtrack_ratio=1.0), "backtrack_ratio must be < 1"),
    (dict(backtrack_ratio=0.0), "backtrack_ratio must be > 0"),
    (dict(max_backtracks=0), "max_backtracks must be an integer >= 1"),
])
def test_bad_trpo_settings_are_typed_errors(settings, message):
    with pytest.raises(mb.ParameterError, match=message):
        TRPO(**settings)


def test_bad_training_arguments_for_trpo_are_typed_errors(tmp_path):
    task = mb.make_task("bandit-v0")
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'trpo'"):
        train(task, "lsf", iterations=1, optimizer="trpoo")
    with pytest.raises(mb.ParameterError, match="trpo's step length comes from its max KL"):
        train(task, "lsf", iterations=1, optimizer="trpo", outer_lr=0.1)
    with pytest.raises(mb.ParameterError, match="trpo settings are for optimizer='trpo'"):
        train(task, "lsf", iterations=1, optimizer="adam", trpo=TRPO())
    with pytest.raises(mb.ParameterError, match="trpo must be a TRPO"):
        train(task, "lsf", iterations=1, optimizer="trpo", trpo={"max_kl": 0.1})
    with pytest.raises(mb.ShapeError, match="direction must have theta's shape"):
        batch = sampled(task, task.initial_params())
        outer, points = batch.outer_at_adapted("lsf")
        trpo_step(task, task.initial_params(), torch.zeros(2).double(), batch.inner, outer,
                  points, inner_lr=0.3, settings=TRPO())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, message", [
    (["--outer", "trpo", "--max-kl", "0"], "--max-kl must be > 0"),
    (["--outer", "trpo", "--outer-lr", "0.1"], "--outer-lr is the step size of adam and sgd"),
    (["--max-kl", "0.05"], "--max-kl is trpo's trust region; it needs --outer trpo"),
    (["--optimizer", "sgd", "--max-kl", "0.05"], "it needs --outer trpo, not --outer sgd"),
])
def test_the_command_line_refuses_bad_trpo_flags_in_one_line(tmp_path, monkeypatch, capsys,
                                                              argv, message):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--task", "bandit-v0", "--iterations", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_the_command_line_trains_with_trpo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--task", "bandit-v0", "--outer", "trpo", "--max-kl", "0.02",
                 "--iterations", "2", "--meta-batch", "4", "--n-inner", "4", "--n-outer", "4",
                 "--inner-lr", "1.0", "--json", "log.jsonl"])
    assert code == 0
    err = capsys.readouterr().err
    assert "iteration    1" in err and ("KL" in err or "step rejected" in err)
    header, *rows = without_seconds(tmp_path / "log.jsonl")
    assert header["optimizer"] == "trpo" and header["trpo"]["max_kl"] == 0.02
    assert len(rows) == 2 and all(row["kl"] <= 0.02 for row in rows)


def test_mean_kl_leaves_out_the_padded_steps():
    task = mb.make_task("tabular-discounted-v0", n_states=3)
    theta = perturbed(task)
    batch = sampled(task, theta)
    outer, points = batch.outer_at_adapted("lsf")
    assert outer.mask is not None and not outer.mask.all()
    moved = points + 0.3
    kl = task.policy.kl(points, moved, outer.states)
    by_row = [kl[r][outer.mask[r]].mean() for r in range(outer.n_rows)]
    assert float(mean_kl(task, points, moved, outer)) == pytest.approx(
        float(torch.stack(by_row).mean()), rel=1e-12)
