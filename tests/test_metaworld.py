"""Meta-World tasks (ML1, ML10): the MuJoCo compatibility fix, the task protocol, the
reference sampler against Meta-World's own environments stepped by hand, and bad input.
Sampling is seeded, so every check is deterministic; equalities are exact (the sampler steps
the same environments with the same actions, so nothing may differ in any bit)."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.tasks import metaworld_tasks
from metarl_bench._src.tasks.metaworld_tasks import (fix_mocap_welds, reset_mocap_welds,
                                                     require_metaworld)

SMALL = dict(n_tasks=2, horizon=20, hidden=(8,))


def _metaworld():
    pytest.importorskip("mujoco")
    pytest.importorskip("metaworld")
    return require_metaworld()


def test_the_weld_fix_applies_only_from_mujoco_3_17(monkeypatch):
    metaworld = _metaworld()
    from metaworld.sawyer_xyz_env import SawyerMocapBase

    original = SawyerMocapBase.reset_mocap_welds
    monkeypatch.setattr(SawyerMocapBase, "reset_mocap_welds", original)
    assert fix_mocap_welds(metaworld, "3.3.0") is False
    assert SawyerMocapBase.reset_mocap_welds is original
    assert fix_mocap_welds(metaworld, "3.17.0") is True
    assert SawyerMocapBase.reset_mocap_welds is reset_mocap_welds
    assert fix_mocap_welds(metaworld, "4.0.0") is True


def test_the_weld_fix_writes_metaworlds_numbers_and_a_zero():
    import mujoco

    _metaworld()
    eq_type = np.array([mujoco.mjtEq.mjEQ_WELD, mujoco.mjtEq.mjEQ_CONNECT])
    model = SimpleNamespace(nmocap=1, eq_type=eq_type, eq_data=np.full((2, 12), 7.0))
    reset_mocap_welds(SimpleNamespace(model=model))
    assert model.eq_data[0].tolist() == [0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 5, 0]
    assert model.eq_data[1].tolist() == [7.0] * 12          # not a weld: untouched
    narrow = SimpleNamespace(nmocap=1, eq_type=eq_type[:1], eq_data=np.zeros((1, 10)))
    with pytest.raises(mb.UnsupportedError, match="10 numbers per weld"):
        reset_mocap_welds(SimpleNamespace(model=narrow))


def test_a_fixed_environment_resets_and_steps_on_this_mujoco():
    metaworld = _metaworld()
    ml1 = metaworld.ML1("reach-v3", seed=0)
    env = ml1.train_classes["reach-v3"]()
    env.set_task(ml1.train_tasks[0])
    observation, _ = env.reset()
    assert observation.shape == (39,) and np.isfinite(observation).all()
    _, reward, *_ = env.step(np.zeros(4))
    assert np.isfinite(reward)


def _by_hand(task, actions, rows):
    """Meta-World's own environment for each simulation, given the same task and actions."""
    observations, rewards = [], []
    for sim, index in enumerate(rows):
        env = task.classes[task.tasks[index].env_name]()
        env.set_task(task.tasks[index])
        obs, _ = env.reset()
        per_step_obs, per_step_reward = [obs], []
        for action in actions[sim]:
            obs, reward, *_ = env.step(action)
            per_step_obs.append(obs)
            per_step_reward.append(reward)
        observations.append(per_step_obs[:-1])
        rewards.append(per_step_reward)
    return np.array(observations), np.array(rewards)


@pytest.mark.parametrize("task_id, params", [
    ("metaworld-ml1-v0", {"env_name": "reach-v3"}),
    ("metaworld-ml1-v0", {"env_name": "push-v3", "split": "test"}),
    ("metaworld-ml1-v0", {"env_name": "pick-place-v3"}),
    ("metaworld-ml10-v0", {"n_tasks": 3}),
])
def test_the_sampler_steps_metaworld_exactly(task_id, params):
    _metaworld()
    task = mb.make_task(task_id, **{**SMALL, **params})
    theta = task.initial_params()[None]
    rows = torch.arange(task.n_tasks)
    traj = task.sample(theta.expand(task.n_tasks, -1), 2, rows,
                       torch.Generator().manual_seed(3))
    assert traj.observations.shape == (task.n_tasks, 2, 20, 39)
    actions = traj.actions.reshape(task.n_tasks * 2, 20, 4).numpy()
    observations, rewards = _by_hand(task, actions, np.repeat(rows.numpy(), 2))
    assert np.array_equal(traj.observations.reshape(-1, 20, 39).numpy(), observations)
    assert np.array_equal(traj.rewards.reshape(-1, 20).numpy(), rewards)
    again = task.sample(theta.expand(task.n_tasks, -1), 2, rows,
                        torch.Generator().manual_seed(3))
    assert torch.equal(again.actions, traj.actions) and torch.equal(again.rewards, traj.rewards)
    other = task.sample(theta.expand(task.n_tasks, -1), 2, rows,
                        torch.Generator().manual_seed(4))
    assert not torch.equal(other.actions, traj.actions)


def test_ml1_goals_come_from_the_split_and_ml10_covers_its_skills_evenly():
    metaworld = _metaworld()
    ml1 = metaworld.ML1("reach-v3", seed=0)
    train = mb.make_task("metaworld-ml1-v0", **SMALL)
    test = mb.make_task("metaworld-ml1-v0", split="test", **SMALL)
    assert [t.data for t in train.tasks] == [t.data for t in ml1.train_tasks[:2]]
    assert [t.data for t in test.tasks] == [t.data for t in ml1.test_tasks[:2]]
    ml10 = mb.make_task("metaworld-ml10-v0", n_tasks=12, horizon=20, hidden=(8,))
    skills = [t.env_name for t in ml10.tasks]
    assert skills[:10] == list(metaworld.ML10(seed=0).train_classes) and skills[10:] == skills[:2]
    held_out = mb.make_task("metaworld-ml10-v0", split="test", n_tasks=5, horizon=20,
                            hidden=(8,))
    assert {t.env_name for t in held_out.tasks} == {
        "drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"}
    chosen = mb.make_task("metaworld-ml10-v0", skills=["push-v3"], n_tasks=3, horizon=20,
                          hidden=(8,))
    assert {t.env_name for t in chosen.tasks} == {"push-v3"}


@pytest.mark.parametrize("params, message", [
    ({"env_name": "reech-v3"}, "unknown env_name 'reech-v3'. Did you mean 'reach-v3'"),
    ({"split": "validation"}, "unknown split 'validation'"),
    ({"n_tasks": 51}, "n_tasks must be at most 50"),
    ({"horizon": 501}, "horizon must be at most 500"),
    ({"sampler": "gymnasium"}, "unknown sampler 'gymnasium'. Valid samplers: batch, metaworld"),
])
def test_bad_ml1_arguments_are_typed_errors(params, message):
    _metaworld()
    with pytest.raises(mb.MetaRLBenchError, match=message):
        mb.make_task("metaworld-ml1-v0", **params)


@pytest.mark.parametrize("params, message", [
    ({"skills": ["drawer-open-v3"]}, "'drawer-open-v3' is an ML10 test skill, not a train"),
    ({"split": "test", "skills": ["push-v3"]}, "'push-v3' is an ML10 train skill"),
    ({"skills": ["puhs-v3"]}, "Did you mean 'push-v3'"),
    ({"split": "test45"}, "unknown split 'test45'"),
])
def test_bad_ml10_arguments_are_typed_errors(params, message):
    _metaworld()
    with pytest.raises(mb.MetaRLBenchError, match=message):
        mb.make_task("metaworld-ml10-v0", **params)


def test_a_missing_metaworld_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld -> ImportError
    metaworld_tasks._benchmark.cache_clear()
    with pytest.raises(mb.UnsupportedError, match="pip install --no-deps metaworld==3.1.1"):
        mb.make_task("metaworld-ml1-v0")
    assert main(["run", "--task", "metaworld-ml1-v0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("metarl-bench: error: Meta-World tasks need")
    assert list(tmp_path.iterdir()) == []
    metaworld_tasks._benchmark.cache_clear()


def test_a_result_records_the_simulator_versions(tmp_path):
    metaworld = _metaworld()
    import mujoco
    from importlib.metadata import version

    out = tmp_path / "r.jsonl"
    assert main(["run", "--quiet", "--no-report", "--json", str(out), "--task",
                 "metaworld-ml1-v0", "--task-param", "n_tasks=1", "--task-param", "horizon=10",
                 "--task-param", "hidden=[8]", "--estimators", "lsf", "--n-inner", "2",
                 "--trials", "2", "--truth-samples", "2"]) == 0
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["result"]["simulator_versions"]["mujoco"] == mujoco.__version__
    assert line["result"]["simulator_versions"]["metaworld"] == version("metaworld")
    assert metaworld is not None
