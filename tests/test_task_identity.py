"""A task's identity is every argument of its factory: the key of a stored result names all
of them, equal arguments written differently share it, and results stored by an older
version resume where their key did not change. Deterministic (no sampling) except the
command-line runs, which use fixed seeds and compare files byte for byte."""

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.core.registry import TASKS
from metarl_bench._src.evaluation.config import CellConfig, cell_key

OLD_STORE = Path(__file__).parent / "data" / "store_92246d3.jsonl"

#: The commands that wrote tests/data/store_92246d3.jsonl (tests/data/README.md).
OLD_COMMANDS = [
    "--task bandit-v0 --estimators unbiased,lsf,maml,fomaml --n-inner 1,4 --trials 50",
    "--task tabular-v0 --task-param n_states=3 --task-param horizon=3 --estimators lsf,dice,lvc "
    "--n-inner 2,8 --trials 40 --truth-samples 200",
    "--task tabular-v0 --task-param n_states=3 --task-param horizon=3 --estimators lsf "
    "--n-steps 2 --n-inner 2 --trials 30 --truth limit",
    "--task tabular-discounted-v0 --task-param n_states=3 --estimators lsf,unbiased:baseline=0.5 "
    "--n-inner 4 --trials 30 --truth limit",
    "--task lq-navigation-v0 --estimators lsf,maml --n-inner 4 --trials 30 --truth limit "
    "--inner-lr 0.01",
    "--task bandit-v0 --estimators lsf --n-inner 4 --trials 50 --target-rel-ci 0.5 "
    "--max-trials 200 --monte-carlo",
    "--task bernoulli-bandit-v0 --estimators lsf --n-inner 4 --trials 40 --n-outer 4 "
    "--truth limit",
    "--task tabular-v0 --task-param n_states=3 --task-param horizon=3 --estimators "
    "decomposed:inner=maml,hessian=lsf --n-inner 4 --trials 30 --truth limit --dtype float32",
    "--task navigation2d-v0 --task-param horizon=5 --estimators lsf --n-inner 4 --trials 8 "
    "--n-outer 4 --truth-samples 50 --inner-lr 0.1",
]


def test_a_store_written_before_resumes_with_nothing_recomputed(tmp_path, monkeypatch, capsys):
    """Every task of the old store listed all its arguments that were set (the options left
    off were None or False), so every key is unchanged: the commands that wrote the file
    find all 23 cells in it and compute none."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store.jsonl"
    shutil.copy(OLD_STORE, store)
    for command in OLD_COMMANDS:
        args = ["run", "--quiet", "--no-report", "--json", str(store)]
        assert main(args + command.split()) == 0, command
    assert store.read_bytes() == OLD_STORE.read_bytes()
    assert "ignored" not in capsys.readouterr().err


def _other_value(name, value, task):
    """Another valid value of the argument ``name`` (now ``value``) of ``task``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.1
    if isinstance(value, (list, tuple)) and name != "tasks":
        last = value[-1]
        return [*value[:-1], last // 2 if isinstance(last, int) else (last * 0.5 or 0.1)]
    # the MuJoCo tasks' other sampler is the Gymnasium one, Meta-World's the batched one
    strings = {"policy": "linear", "sampler": "gymnasium" if value == "batch" else "batch",
               "action_dtype": "float32",
               "env_id": "MountainCarContinuous-v0", "rewards": "random",
               "success_probs": "random", "means": "random", "env_name": "push-v3",
               "split": "test", "baseline": None}
    if isinstance(value, str) and name != "set_task":
        return strings[name]
    shape = tuple(task.param_shape)
    states = getattr(task, "n_states", 1)
    dim = getattr(task, "dim", 2)
    nones = {
        "init_logits": lambda: np.full(shape, 0.25),
        "n_arms": lambda: 4, "seed": lambda: 1,
        "transitions": lambda: np.full((states, shape[-1], states), 1.0 / states),
        "rewards": lambda: np.full((states, shape[-1]), 0.5),
        "start": lambda: np.eye(states)[0],
        "goals": lambda: np.full((1, dim), 0.25),
        "init_gain": lambda: np.full((dim, dim), 0.1), "init_bias": lambda: np.full(dim, 0.1),
        "start_mean": lambda: np.full(dim, 0.1),
        "tasks": lambda: {"halfcheetah-vel-v0": [{"velocity": 0.5}],
                          "halfcheetah-dir-v0": [{"direction": -1}],
                          "ant-dir-v0": [{"direction": -1}]}.get(task.spec.id,
                                                                 [{"g": 5.0}]),
        "set_task": lambda: set_gravity_twice,
        "env_kwargs": lambda: {"g": 9.0},
        "baseline": lambda: "linear", "gae_lambda": lambda: 0.9,
        "skills": lambda: ["push-v3"],
    }
    return nones[name]()


def set_gravity(env, task):
    env.g = task["g"]


def set_gravity_twice(env, task):
    env.g = 2 * task["g"]


#: Starting points on which each argument can be changed alone: a bandit's seed and n_arms
#: shape random rewards only; a plain Gymnasium environment takes tasks with a set_task.
BASES = {
    "bandit-v0": [{}, {"rewards": "random"}],
    "bernoulli-bandit-v0": [{}, {"success_probs": "random"}],
    "gaussian-bandit-v0": [{}, {"means": "random"}],
    "gym-v0": [{}, {"tasks": [{"g": 10.0}], "set_task": set_gravity}],
    # the batched sampler takes the skills it computes rewards for
    "metaworld-ml10-v0": [{}, {"skills": ["push-v3"]}],
}


def _key(task):
    return CellConfig(task=task.name, task_params=task.params, estimator="lsf", n_inner=1,
                      n_trials=2, truth_samples=2, n_boot=10).key


def _skip_without_simulator(task_id):
    if task_id in ("halfcheetah-vel-v0", "halfcheetah-dir-v0", "ant-dir-v0") or \
            task_id.startswith("metaworld-"):
        pytest.importorskip("mujoco")
    if task_id.startswith("metaworld-"):
        pytest.importorskip("metaworld")


@pytest.mark.parametrize("task_id", sorted(TASKS))
def test_changing_any_one_argument_changes_the_key(task_id):
    _skip_without_simulator(task_id)
    names = list(inspect.signature(TASKS[task_id].factory()).parameters)
    changed = set()
    for base in BASES.get(task_id, [{}]):
        task = mb.make_task(task_id, **base)
        key = _key(task)
        for name in names:
            if name in changed:
                continue
            value = _other_value(name, task.spec_kwargs[name], task)
            try:
                other = mb.make_task(task_id, **{**base, name: value})
            except mb.MetaRLBenchError:  # not valid on this base: another base may take it
                continue
            assert _key(other) != key, f"{task_id}: {name}={value!r} kept the key"
            assert other.spec_kwargs != task.spec_kwargs
            changed.add(name)
    assert changed == set(names), f"{task_id}: no valid change tried for " \
                                  f"{sorted(set(names) - changed)}"


EQUAL_SPELLINGS = [
    ("navigation2d-v0", "hidden", [(64, 64), [64, 64], np.array([64, 64]), [64.0, 64.0],
                                   torch.tensor([64, 64])]),
    ("bandit-v0", "rewards", [(1.0, 0.0, 0.5), [1, 0, 0.5], np.array([1.0, 0.0, 0.5]),
                              torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)]),
    ("lq-navigation-v0", "gamma", [1, 1.0, np.float64(1.0), np.int64(1)]),
    ("tabular-v0", "n_states", [3, 3.0, np.int32(3)]),
    ("navigation2d-v0", "goals", [[[0.25, -0.25]], np.array([[0.25, -0.25]]),
                                  ((0.25, -0.25),)]),
]


@pytest.mark.parametrize("task_id, name, spellings", EQUAL_SPELLINGS,
                         ids=[f"{t}-{n}" for t, n, _ in EQUAL_SPELLINGS])
def test_equal_arguments_written_differently_share_the_key(task_id, name, spellings):
    keys = {_key(mb.make_task(task_id, **{name: value})) for value in spellings}
    assert len(keys) == 1


@pytest.mark.parametrize("task_id", sorted(TASKS))
def test_a_task_remade_from_its_params_is_the_same_task(task_id):
    """What a stored line holds is enough to make the task again (sweeps do)."""
    _skip_without_simulator(task_id)
    task = mb.make_task(task_id)
    again = mb.make_task(task_id, **json.loads(json.dumps(task.params)))
    assert again.spec_kwargs == task.spec_kwargs and again.params == task.params
    assert set(task.spec_kwargs) == set(inspect.signature(TASKS[task_id].factory()).parameters)
    assert task.spec.id == task_id


def test_only_options_left_off_stay_out_of_params():
    task = mb.make_task("navigation2d-v0")
    left_off = set(task.spec_kwargs) - set(task.params)
    assert left_off == {"goals", "baseline", "gae_lambda", "normalize_advantages"}
    assert all(task.spec_kwargs[name] in (None, False) for name in left_off)
    assert mb.make_task("navigation2d-v0", normalize_advantages=True).params[
        "normalize_advantages"] is True


def test_a_lambda_argument_refuses_a_results_file(tmp_path):
    task = mb.make_task("gym-v0", tasks=[{"g": 10.0}],
                        set_task=lambda env, task: setattr(env, "g", task["g"]))
    assert task.unkeyed == ("set_task",)
    path = tmp_path / "r.jsonl"
    with pytest.raises(mb.ParameterError, match="set_task=.*no stable name"):
        mb.evaluate(task, ["lsf"], n_inner=[2], n_trials=2, n_outer=2, truth_samples=2,
                    jsonl=path)
    assert not path.exists()
    named = mb.make_task("gym-v0", tasks=[{"g": 10.0}], set_task=set_gravity)
    assert named.params["set_task"] == f"{__name__}:set_gravity" and not named.unkeyed


MUJOCO_CELL = ("--task halfcheetah-vel-v0 --task-param n_tasks=2 --task-param horizon=5 "
               "--task-param hidden=[8] --estimators lsf --n-inner 2 --trials 4 --n-outer 2 "
               "--truth-samples 4 --inner-lr 0.001 --quiet --no-report").split()


def test_init_std_is_part_of_the_key_and_old_lines_without_it_are_ignored(tmp_path, capsys):
    """The case of the issue: a second init_std computed its own cell; a line stored without
    init_std (as an older version wrote it) is reported and not reused."""
    pytest.importorskip("mujoco")
    store = tmp_path / "hc.jsonl"
    assert main(["run", *MUJOCO_CELL, "--task-param", "init_std=0.5", "--json", str(store)]) == 0
    assert main(["run", *MUJOCO_CELL, "--task-param", "init_std=1.0", "--json", str(store)]) == 0
    first, second = [json.loads(line) for line in store.read_text().splitlines()]
    assert first["config"]["task_params"]["init_std"] == 0.5
    assert second["config"]["task_params"]["init_std"] == 1.0
    assert first["result"]["mse"] != second["result"]["mse"]
    capsys.readouterr()

    # the second line as 92246d3 wrote it: no init_std, policy_seed, nthread in the key
    old = dict(second)
    old["config"] = {**second["config"], "task_params": {
        k: v for k, v in second["config"]["task_params"].items()
        if k not in ("init_std", "policy_seed", "nthread")}}
    old["key"] = cell_key(old["config"])
    stale = tmp_path / "old.jsonl"
    stale.write_text(json.dumps(old) + "\n")
    assert main(["run", *MUJOCO_CELL, "--task-param", "init_std=1.0", "--json", str(stale)]) == 0
    err = capsys.readouterr().err
    (note,) = [line for line in err.splitlines() if "ignored" in line]
    assert "1 line of" in note and "init_std, nthread, policy_seed" in note
    assert len(stale.read_text().splitlines()) == 2        # computed again, appended
