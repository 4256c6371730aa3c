"""Navigation2D: the Gymnasium environment and its meta-task protocol, the batched torch
sampler against the environment stepped with the same actions (bit for bit), the
estimators against their slow twins with sampled outer steps, evaluation against an
estimated truth, and meta-training."""

import json

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.tasks.envs.navigation import Navigation2DEnv
from metarl_bench._src.training.train import load_training, train

from conftest import generator
from test_estimators import RecordedOuter

SMALL = dict(n_tasks=3, horizon=12, hidden=(5,), init_std=0.5)


@pytest.mark.filterwarnings("ignore:.*Box observation space m:UserWarning")
def test_gymnasium_make_after_import_and_the_env_checker():
    env = gymnasium.make("metarl_bench/Navigation2D-v0")
    assert env.spec.max_episode_steps == 100
    check_env(env.unwrapped, skip_render_check=True)
    observation, info = env.reset(seed=3)
    assert np.array_equal(observation, np.zeros(2)) and set(info["task"]) == {"goal"}
    for _ in range(99):
        assert env.step(np.array([1.0, -1.0]))[3] is False
    observation, reward, terminated, truncated, _ = env.step(np.array([1.0, -1.0]))
    assert truncated and not terminated
    np.testing.assert_allclose(observation, [10.0, -10.0])  # every move clipped to 0.1


def test_meta_task_protocol_and_one_task_per_sub_environment():
    env = Navigation2DEnv()
    tasks = env.sample_tasks(4, np.random.default_rng(0))
    assert all(np.all(np.abs(t["goal"]) <= 0.5) for t in tasks)
    assert all(np.array_equal(a["goal"], b["goal"]) for a, b in zip(tasks, env.sample_tasks(4, 0)))
    env.set_task(tasks[2])
    assert np.array_equal(env.get_task()["goal"], tasks[2]["goal"])
    with pytest.raises(mb.ParameterError, match="goal"):
        env.set_task({"goal": [1.0, 2.0, 3.0]})
    vector = gymnasium.make_vec("metarl_bench/Navigation2D-v0", num_envs=3,
                                vectorization_mode="sync")
    mb.set_tasks(vector, tasks[:3])
    held = vector.get_attr("task")
    assert all(np.array_equal(h["goal"], t["goal"]) for h, t in zip(held, tasks[:3]))
    vector.reset(seed=0)
    _, rewards, *_ = vector.step(np.zeros((3, 2)))
    np.testing.assert_allclose(rewards, [-np.hypot(*t["goal"]) for t in tasks[:3]], rtol=1e-15)
    with pytest.raises(mb.ParameterError, match="one task per sub-environment"):
        mb.set_tasks(vector, tasks)


@pytest.mark.parametrize("policy", ["linear", "mlp"])
def test_batched_sampler_equals_the_gymnasium_env_bit_for_bit(policy):
    task = mb.make_task("navigation2d-v0", n_tasks=4, seed=5, policy=policy, hidden=(8, 8))
    # the task's goals are the environment's task distribution drawn from the same seed
    goals = [t["goal"] for t in Navigation2DEnv().sample_tasks(4, np.random.default_rng(5))]
    assert np.array_equal(task.goals.numpy(), np.stack(goals))
    theta = task.initial_params() + 0.5
    index = torch.tensor([3, 0, 2])
    traj = task.sample(theta.expand(3, -1), 2, index, generator(1))
    env = gymnasium.make("metarl_bench/Navigation2D-v0")
    for row in range(3):
        for n in range(2):
            observation, _ = env.reset(options={"task": {"goal": goals[int(index[row])]}})
            for t in range(task.horizon):
                assert np.array_equal(observation, traj.states[row, n, t].numpy())
                observation, reward, _, truncated, _ = env.step(traj.actions[row, n, t].numpy())
                assert reward == float(traj.rewards[row, n, t])
            assert truncated


def test_same_seed_same_trajectories_and_row_independence():
    task = mb.make_task("navigation2d-v0", **SMALL)
    theta = task.initial_params()
    rows = torch.stack([theta, theta + 0.3])
    first = task.sample(rows, 5, torch.tensor([0, 1]), generator(2))
    second = task.sample(rows, 5, torch.tensor([0, 1]), generator(2))
    assert torch.equal(first.actions, second.actions) and torch.equal(first.rewards, second.rewards)
    log_prob = task.log_prob(rows, first)
    assert log_prob.shape == (2, 5, task.horizon)
    torch.testing.assert_close(log_prob[1:], task.log_prob(rows[1:], first.rows(slice(1, 2))),
                               rtol=0, atol=0)


SAMPLED = ["unbiased", "lsf", "dice", "maml", "fomaml"]


@pytest.mark.parametrize("name", SAMPLED)
def test_batched_equals_slow_twin_with_sampled_outer(name):
    spec = mb.estimator_spec(name)
    task = mb.make_task("navigation2d-v0", n_tasks=2, horizon=6, hidden=(3,), init_std=0.5)
    theta = task.initial_params() + 0.1
    index = torch.arange(3) % 2
    inner = task.sample(theta.expand(3, -1), 4, index, generator(3))
    outer = RecordedOuter(task, 5, seed=4)  # the twin replays the fast call's outer samples
    fast = spec.from_samples(task, theta, inner, inner_lr=0.05, outer=outer)
    slow = spec.reference(task, theta, inner, inner_lr=0.05, outer=outer)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-10)


def test_cli_run_prints_a_table_against_an_estimated_truth(tmp_path, capsys):
    path = tmp_path / "nav.jsonl"
    code = main(["run", "--task", "navigation2d-v0", "--task-param", "n_tasks=2",
                 "--task-param", "horizon=8", "--task-param", "hidden=[4]",
                 "--estimators", "lsf,fomaml", "--n-inner", "2,4", "--n-outer", "3",
                 "--trials", "10", "--truth-samples", "40", "--inner-lr", "0.001",
                 "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "truth=finite (estimated)" in out and "lsf" in out
    records = [record for result in mb.load_results(path) for record in result.records]
    assert {r["truth_kind"] for r in records} == {"estimated"}
    assert all(r["truth_method"].startswith("mean of 40 unbiased estimates") for r in records)


def test_evaluate_on_navigation_needs_sampled_outer():
    task = mb.make_task("navigation2d-v0", **SMALL)
    with pytest.raises(mb.UnsupportedError, match="n_outer=M"):
        mb.evaluate(task, ["lsf"], n_inner=[2])
    with pytest.raises(mb.UnsupportedError, match="grad F_inf is unknown"):
        mb.evaluate(task, ["lsf"], n_inner=[2], n_outer=2, truth="limit")
    with pytest.raises(mb.UnsupportedError, match="no model"):
        mb.get_estimator("loo")(task, task.initial_params(), n_inner=2, inner_lr=0.1,
                                n_trials=2, n_outer=None)


def test_bad_navigation_arguments_raise_typed_errors():
    with pytest.raises(mb.UnknownNameError, match="Did you mean 'mlp'"):
        mb.make_task("navigation2d-v0", policy="mpl")
    with pytest.raises(mb.ParameterError, match="continuous actions"):
        mb.make_task("navigation2d-v0", policy="categorical-mlp")
    with pytest.raises(mb.ShapeError, match=r"goals must have shape \(K, 2\)"):
        mb.make_task("navigation2d-v0", goals=[[0.1, 0.2, 0.3]])
    with pytest.raises(mb.ParameterError, match="baseline must be one of"):
        mb.make_task("navigation2d-v0", baseline="critic")


def test_meta_training_with_lsf_improves_the_return_after_adaptation(tmp_path):
    # small and seeded (about 5 s idle): a linear Gaussian policy, 20-step episodes, the
    # usual meta-training inner step (linear baseline, normalised advantages). Measured:
    # the return after adaptation goes from -12.7 (iteration 0) to about -5 (iterations
    # 30-39) while the return before adaptation stays near -10.
    task = mb.make_task("navigation2d-v0", n_tasks=20, horizon=20, policy="linear",
                        init_std=0.1, baseline="linear", normalize_advantages=True)
    path = tmp_path / "train.jsonl"
    result = train(task, "lsf", iterations=40, meta_batch=20, n_inner=10, n_outer=10,
                   inner_lr=0.003, outer_lr=0.02, seed=0, jsonl=path,
                   plot=tmp_path / "curve.png")
    after, before = result.curve("return_after"), result.curve("return_before")
    first, last = np.mean(after[:5]), np.mean(after[-10:])
    assert last > first + 3.0, (first, last)
    assert np.mean(after[-10:]) > np.mean(before[-10:]) + 2.0
    assert load_training(path).iterations == result.iterations
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_train_writes_json_lines_and_a_png(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    code = main(["train", "--task", "navigation2d-v0", "--task-param", "horizon=5",
                 "--task-param", "hidden=[4]", "--estimator", "fomaml", "--iterations", "2",
                 "--meta-batch", "2", "--n-inner", "2", "--n-outer", "2", "--inner-lr", "0.001",
                 "--optimizer", "sgd", "--json", str(path)])
    assert code == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["header", "iteration", "iteration"]
    assert (tmp_path / "log.png").exists()
    assert "learning curve" in capsys.readouterr().out
    assert main(["train", "--task", "navigation2d-v0", "--estimator", "exact",
                 "--json", str(path)]) == 2
    assert "no from-samples form" in capsys.readouterr().err
