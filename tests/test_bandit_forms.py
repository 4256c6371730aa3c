"""The closed forms of the one-step estimators on bandits (``estimators.bandit_forms``) against
their slow twins, the generic autograd forms: the same seeded call, sample for sample.

Tolerance: float64, |closed - generic| <= 1e-12 (1 + |generic|) per entry. Both paths
compute the same formula in a different order of operations; the largest difference seen
over these tests is 3.8e-16. The outer trajectories are drawn at theta' computed by each path, so the
two draw the same arms unless a uniform falls within rounding of a cumulative probability
(about 1e-16 per draw; never in these calls).
"""

import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.estimators import bandit_forms
from metarl_bench._src.estimators.common import OuterStep, Outer

#: estimator entries with a closed form on bandits: (name, options)
CLOSED = [("maml", {}), ("fomaml", {}), ("lsf", {}), ("dice", {}), ("lvc", {}),
          ("taypo", {}), ("taypo", {"order": 1}), ("loaded-dice", {"dependency_decay": 0.3}),
          ("unbiased", {}), ("unbiased", {"baseline": 0.4}), ("unbiased", {"baseline": "loo-mean"}),
          ("emaml", {}), ("emaml", {"score_scale": "sum"})]

TASKS = {
    "bandit-30": lambda: mb.make_task("bandit-v0", rewards="random", n_arms=30, seed=1),
    "bandit-2-tasks": lambda: mb.make_task("bandit-v0", rewards="random", n_arms=5, n_tasks=2,
                                           seed=2, init_logits=[0.3, -0.2, 0.0, 1.0, -1.0]),
    "bernoulli": lambda: mb.make_task("bernoulli-bandit-v0", success_probs="random", n_arms=4,
                                      n_tasks=3, seed=3),
    "gaussian": lambda: mb.make_task("gaussian-bandit-v0", means="random", n_arms=6, seed=4,
                                     stds=0.5),
}


def both_paths(name, task, options, n_outer, *, n_inner=7, n_trials=40, seed=11, **kwargs):
    estimator = mb.get_estimator(name)
    theta = task.initial_params()

    def call():
        return estimator(task, theta, n_inner=n_inner, inner_lr=0.8, n_trials=n_trials,
                         n_outer=n_outer, generator=torch.Generator().manual_seed(seed),
                         **options, **kwargs)

    closed = call()
    with bandit_forms.generic_forms():
        generic = call()
    return closed, generic


@pytest.mark.parametrize("task_name", list(TASKS))
@pytest.mark.parametrize("name, options", CLOSED, ids=lambda x: str(x))
def test_closed_forms_equal_the_generic_forms_sample_for_sample(name, options, task_name):
    task = TASKS[task_name]()
    for n_outer in (None, 5):
        closed, generic = both_paths(name, task, options, n_outer)
        assert closed.dtype == generic.dtype == torch.float64
        assert closed.shape == generic.shape
        assert torch.all((closed - generic).abs() <= 1e-12 * (1 + generic.abs())), \
            (name, options, n_outer, (closed - generic).abs().max())
        # a real estimate, not a constant: the trials differ
        assert closed.std(0).max() > 0


def test_the_closed_form_is_the_path_taken_on_a_one_step_bandit_call(monkeypatch):
    task = TASKS["bandit-30"]()
    taken = []
    real = bandit_forms.bandit_step
    monkeypatch.setattr(bandit_forms, "bandit_step",
                        lambda *args: taken.append(args[0]) or real(*args))
    mb.get_estimator("maml")(task, task.initial_params(), n_inner=4, inner_lr=1.0, n_trials=3,
                             n_outer=4, generator=torch.Generator().manual_seed(0))
    assert taken == [task]
    taken.clear()
    with bandit_forms.generic_forms():
        mb.get_estimator("maml")(task, task.initial_params(), n_inner=4, inner_lr=1.0,
                                 n_trials=3, n_outer=4, generator=torch.Generator().manual_seed(0))
    assert taken == [] and bandit_forms._enabled


@pytest.mark.parametrize("kwargs", [dict(n_steps=2), dict(n_steps=3, truncate=1),
                                    dict(wrt="inner_lr")])
def test_several_inner_steps_take_the_generic_path(kwargs):
    """Step k >= 1 starts at each row's own theta_k and hands the form a continuation: no
    closed form there; the call equals the generic one bit for bit."""
    task = TASKS["bandit-2-tasks"]()
    closed, generic = both_paths("lsf", task, {}, 5, n_trials=6, **kwargs)
    assert torch.equal(closed, generic)


def test_other_tasks_and_outer_steps_do_not_apply():
    bandit = TASKS["bandit-30"]()
    inner = bandit.sample(bandit.initial_params().unsqueeze(0), 3, torch.zeros(1, dtype=torch.long),
                          torch.Generator().manual_seed(0))
    assert bandit_forms.applies(bandit, inner, None)
    assert bandit_forms.applies(bandit, inner, lambda adapted, index: None)

    class Given(OuterStep):
        def after(self, adapted, task_index):
            return Outer(torch.zeros(adapted.shape[0]), torch.ones_like(adapted))

    assert not bandit_forms.applies(bandit, inner, Given())
    tabular = mb.make_task("tabular-v0")
    rows = tabular.initial_params().unsqueeze(0)
    traj = tabular.sample(rows, 3, torch.zeros(1, dtype=torch.long),
                          torch.Generator().manual_seed(0))
    assert not bandit_forms.applies(tabular, traj, None)


def test_float32_calls_stay_float32_and_close_to_float64():
    task = TASKS["bandit-30"]()
    theta = task.initial_params(dtype=torch.float32)
    maml = mb.get_estimator("maml")
    closed = maml(task, theta, n_inner=10, inner_lr=1.0, n_trials=200, n_outer=10,
                  generator=torch.Generator().manual_seed(3))
    with bandit_forms.generic_forms():
        generic = maml(task, theta, n_inner=10, inner_lr=1.0, n_trials=200, n_outer=10,
                       generator=torch.Generator().manual_seed(3))
    assert closed.dtype == torch.float32
    # float32 rounding of the two orders of operations (3e-8 seen, entries up to 0.37); this
    # seeded call draws the same outer arms on both paths
    assert torch.allclose(closed, generic, rtol=0, atol=1e-6)


def test_bad_options_are_still_refused_on_bandits():
    task = TASKS["bandit-30"]()
    with pytest.raises(mb.ParameterError, match="baseline"):
        mb.get_estimator("unbiased")(task, task.initial_params(), n_inner=3, inner_lr=1.0,
                                     n_trials=2, n_outer=3, baseline="median")
    with pytest.raises(mb.ParameterError, match="score_scale"):
        mb.get_estimator("emaml")(task, task.initial_params(), n_inner=3, inner_lr=1.0,
                                  n_trials=2, n_outer=3, score_scale="max")
    with pytest.raises(mb.ParameterError, match="order"):
        mb.get_estimator("taypo")(task, task.initial_params(), n_inner=3, inner_lr=1.0,
                                  n_trials=2, n_outer=3, order=3)
