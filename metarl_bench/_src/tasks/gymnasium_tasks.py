"""Tasks on Gymnasium environments: the MuJoCo locomotion meta-tasks (``halfcheetah-vel-v0``,
``halfcheetah-dir-v0``, ``ant-dir-v0``) and any third-party Gymnasium environment
(``gym-v0``), each with a policy from ``policies``.

Two samplers step the simulations of one call, every row x trajectory together, with one
batched policy forward pass per time step:

* ``"batch"`` (default for the MuJoCo tasks): ``envs.batch_sim.BatchSimulator``, MuJoCo's
  thread pool over per-simulation state, bit-identical to the Gymnasium environment;
* ``"gymnasium"``: a ``gymnasium.vector.SyncVectorEnv`` of the environment, the reference
  path and the one that runs any Gymnasium environment.

Both seed simulation i's reset with an integer drawn from the task's torch generator, as
``env.reset(seed=...)`` does, so the two samplers give the same trajectories bit for bit.

These tasks have no model: estimators run with a sampled outer step (``n_outer=M``) and
``evaluate`` compares them with an estimated truth.
"""

from __future__ import annotations

import contextlib
import sys
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np
import torch

from metarl_bench._src.core import validation
from metarl_bench._src.tasks.advantages import make_advantages
from metarl_bench._src.core.errors import ParameterError, UnsupportedError, unknown_name
from metarl_bench._src.tasks.policies import make_policy
from metarl_bench._src.tasks.base import Task
from metarl_bench._src.core.trajectories import Trajectories

SAMPLERS = ("batch", "gymnasium")
ACTION_DTYPES = {"float64": np.float64, "float32": np.float32}
#: Simulators a task keeps, one per (sampler, size): the sizes of one run vary little (an
#: estimator's chunk, the truth's, the pilot batch), and each holds its simulations' state.
SIMULATOR_CACHE = 4
# Reset seeds are drawn below 2**62 so that they stay exact through any integer conversion.
_SEED_BOUND = 2 ** 62


def _require_gymnasium_env(env_id: str, kwargs: dict[str, Any]) -> Any:
    import gymnasium

    try:
        return gymnasium.make(env_id, disable_env_checker=True, **kwargs)
    except (gymnasium.error.DependencyNotInstalled, ImportError) as exc:
        # Gymnasium's own MuJoCo envs say DependencyNotInstalled; ours fail to import mujoco
        raise UnsupportedError(
            f"{env_id} needs MuJoCo: pip install 'metarl-bench[mujoco]' ({exc})") from None
    except gymnasium.error.Error as exc:
        raise ParameterError(f"cannot make Gymnasium environment {env_id!r}: {exc}") from None
    except TypeError as exc:
        raise ParameterError(f"bad arguments for Gymnasium environment {env_id!r}: {exc}"
                             ) from None


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the policy's forward passes of a sampling loop on one torch thread.

    The actions of a chaotic simulation must not depend on the caller's thread count, and
    these small per-step matmuls gain nothing from threads: spinning OpenMP workers only
    compete with the simulator's own thread pool.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class VectorEnvSimulator:
    """``n_sims`` copies of a Gymnasium environment in a ``SyncVectorEnv``, with the
    ``BatchSimulator`` interface. Rewards after an episode ends (terminated) are 0: a
    trajectory has the fixed horizon of the task."""

    #: reset() takes each simulation's task (the batched simulator takes goals)
    takes_tasks = True

    def __init__(self, make_env: Callable[[], Any], n_sims: int,
                 set_task: Callable[[Any, Any], None] | None):
        import gymnasium

        self.n_sims = n_sims
        self.vector_env = gymnasium.vector.SyncVectorEnv([make_env] * n_sims)
        self._set_task = set_task
        self._alive = np.ones(n_sims, dtype=bool)

    def reset(self, seeds: np.ndarray, tasks: list[Any]) -> np.ndarray:
        if self._set_task is None:
            if any(task is not None for task in tasks):
                # the meta-task protocol: each sub-environment its own task
                self.vector_env.set_attr("task", list(tasks))
        else:
            for env, task in zip(self.vector_env.envs, tasks):
                self._set_task(env.unwrapped, task)
        observations, _ = self.vector_env.reset(seed=[int(seed) for seed in seeds])
        self._alive[:] = True
        return np.asarray(observations, dtype=np.float64)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        observations, rewards, terminated, truncated, _ = self.vector_env.step(actions)
        rewards = np.where(self._alive, np.asarray(rewards, dtype=np.float64), 0.0)
        self._alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        return np.asarray(observations, dtype=np.float64), rewards

    def close(self) -> None:
        self.vector_env.close()


class GymnasiumTask(Task):
    """A distribution of ``n_tasks`` tasks of a Gymnasium environment with a policy.

    ``tasks``: the task of each index (a dict for the meta-task protocol, passed to
    ``set_task``), or None for a plain environment. ``goal_key``: the dict entry the batched
    simulator reads (None: only the Gymnasium sampler).
    """

    has_model = False

    def __init__(self, *, name: str, env_id: str, env_kwargs: dict[str, Any],
                 tasks: list[Any], policy: Any, horizon: int, gamma: float, sampler: str,
                 action_dtype: str, nthread: int, goal_key: str | None,
                 set_task: Callable[[Any, Any], None] | None, advantages: Any = None,
                 reference_env: Any = None):
        self.name = name
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs)
        self.tasks = list(tasks)
        self.n_tasks = len(self.tasks)
        self.policy = policy
        self.param_shape = tuple(policy.param_shape)
        self.horizon = horizon
        self.gamma = gamma
        self.sampler = sampler
        self.action_dtype = ACTION_DTYPES[action_dtype]
        self.nthread = nthread
        self.goal_key = goal_key
        self._set_task = set_task
        self.advantages = advantages if advantages is not None else make_advantages()
        self._reference_env = (reference_env if reference_env is not None
                               else _require_gymnasium_env(env_id, self.env_kwargs).unwrapped)
        # memory of one trajectory against a tabular one (sets evaluate's chunk size): per
        # step, float observations and actions and the policy's widest layer of activations
        space = self._reference_env.observation_space
        width = max([space.shape[0], *policy.spec.get("hidden", [])])
        self.trajectory_cost = max(1, horizon * width // 16)
        self._simulators: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def simulator(self, n_sims: int, sampler: str | None = None) -> Any:
        """The (cached) simulator of ``n_sims`` simulations for ``sampler``: the cache keeps
        the ``SIMULATOR_CACHE`` most recently used, evicting the least recently used."""
        sampler = sampler or self.sampler
        key = (sampler, n_sims)
        if key in self._simulators:
            self._simulators.move_to_end(key)
        else:
            if len(self._simulators) >= SIMULATOR_CACHE:
                _, old = self._simulators.popitem(last=False)
                getattr(old, "close", lambda: None)()
            self._simulators[key] = self.new_simulator(sampler, n_sims)
        return self._simulators[key]

    def new_simulator(self, sampler: str, n_sims: int) -> Any:
        """A simulator of ``n_sims`` simulations for ``sampler`` (``simulator`` caches them)."""
        if sampler == "batch":
            from metarl_bench._src.tasks.envs.batch_sim import BatchSimulator

            return BatchSimulator(self._reference_env, n_sims, nthread=self.nthread)
        limited = {**self.env_kwargs, "max_episode_steps": self.horizon}
        return VectorEnvSimulator(lambda: _require_gymnasium_env(self.env_id, limited), n_sims,
                                  self._set_task)

    def versions(self) -> dict[str, str]:
        """The simulator libraries its results depend on (recorded with each result)."""
        import gymnasium

        out = {"gymnasium": gymnasium.__version__}
        simulated_by_mujoco = self.sampler == "batch" or any(
            cls.__module__.startswith("gymnasium.envs.mujoco")
            for cls in type(self._reference_env).__mro__)
        if simulated_by_mujoco:  # then mujoco is imported already
            out["mujoco"] = sys.modules["mujoco"].__version__
        return out

    def reset_seeds(self, n_rows: int, n_traj: int,
                    generator: torch.Generator | None) -> np.ndarray:
        """One reset seed per simulation, (R*N,) int64, from the task's generator."""
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, _SEED_BOUND, (n_rows * n_traj,), generator=generator,
                              device=device, dtype=torch.int64)
        return seeds.cpu().numpy()

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None, *, sampler: str | None = None
               ) -> Trajectories:
        device = params.device
        # the simulators run on the CPU, and so does the policy while sampling: then the
        # trajectories do not depend on the device of the computation (a GPU matmul differs
        # from a CPU one in the last bits, and a chaotic simulation amplifies them)
        params = params.detach().cpu()
        n_rows = params.shape[0]
        n_sims = n_rows * n_traj
        sim = self.simulator(n_sims, sampler)
        seeds = self.reset_seeds(n_rows, n_traj, generator)
        sim_tasks = np.repeat(task_index.cpu().numpy(), n_traj)
        if getattr(sim, "takes_tasks", False):
            observation = sim.reset(seeds, [self.tasks[i] for i in sim_tasks])
        else:
            goals = np.array([self.tasks[i][self.goal_key] for i in range(self.n_tasks)])
            observation = sim.reset(seeds, goals[sim_tasks])
        discrete = self.policy.discrete
        observations, actions, rewards, successes = [], [], [], []
        with one_torch_thread():
            for _ in range(self.horizon):
                obs_t = torch.from_numpy(observation).to(params).reshape(n_rows, n_traj, -1)
                action = self.policy.sample(params, obs_t, generator)
                flat = action.reshape(n_sims, *action.shape[2:]).cpu().numpy()
                # the simulator sees exactly the stored actions, in a pinned dtype: a change in
                # the last bit of an action changes a chaotic trajectory
                env_action = flat if discrete else flat.astype(self.action_dtype)
                observation, reward = sim.step(env_action)
                observations.append(obs_t)
                actions.append(action if discrete else
                               torch.from_numpy(env_action).to(params).reshape(action.shape))
                rewards.append(torch.from_numpy(reward).to(params).reshape(n_rows, n_traj))
                # a simulator with a success flag (Meta-World's) reports it after each step
                success = getattr(sim, "last_success", None)
                if success is not None:
                    successes.append(torch.from_numpy(np.asarray(success, dtype=bool))
                                     .reshape(n_rows, n_traj))
        return Trajectories(torch.stack(observations, 2).to(device),
                            torch.stack(actions, 2).to(device),
                            torch.stack(rewards, -1).to(device), task_index,
                            success=torch.stack(successes, -1).to(device)
                            if len(successes) == self.horizon else None)


def _horizon_gamma(horizon: Any, gamma: Any) -> tuple[int, float]:
    return (validation.positive_int("horizon", horizon),
            validation.finite_float("gamma", gamma, low=0.0, high=1.0))


def _choice(name: str, value: Any, allowed: tuple[str, ...] | dict[str, Any]) -> str:
    if value not in allowed:
        raise unknown_name(name, value, allowed)
    return value


def _task_policy(env: Any, policy: str, hidden: Any, init_std: Any, policy_seed: Any) -> Any:
    import gymnasium

    if not isinstance(env.observation_space, gymnasium.spaces.Box) or \
            len(env.observation_space.shape) != 1:
        raise UnsupportedError(f"observations must be a flat Box, got {env.observation_space}")
    observation_dim = env.observation_space.shape[0]
    if isinstance(env.action_space, gymnasium.spaces.Discrete):
        return make_policy(policy if policy != "mlp" else "categorical-mlp",
                           observation_dim=observation_dim,
                           n_actions=int(env.action_space.n), hidden=hidden, seed=policy_seed)
    if isinstance(env.action_space, gymnasium.spaces.Box) and \
            len(env.action_space.shape) == 1:
        return make_policy(policy, observation_dim=observation_dim,
                           action_dim=env.action_space.shape[0], hidden=hidden,
                           init_std=init_std, seed=policy_seed)
    raise UnsupportedError(f"actions must be Discrete or a flat Box, got {env.action_space}")


def _locomotion(name: str, env_id: str, goal_key: str, env_kwargs: dict[str, Any], *,
                n_tasks: Any, seed: Any, tasks: Any, horizon: Any, gamma: Any, policy: str,
                hidden: Any, init_std: Any, policy_seed: Any, sampler: str,
                action_dtype: str, nthread: Any, baseline: Any,
                gae_lambda: Any, normalize_advantages: Any) -> GymnasiumTask:
    horizon, gamma = _horizon_gamma(horizon, gamma)
    advantages = make_advantages(baseline, gae_lambda, normalize_advantages)
    _choice("sampler", sampler, SAMPLERS)
    _choice("action_dtype", action_dtype, ACTION_DTYPES)
    nthread = validation.positive_int("nthread", nthread, minimum=0)
    env = _require_gymnasium_env(env_id, env_kwargs).unwrapped
    if tasks is None:
        n_tasks = validation.positive_int("n_tasks", n_tasks)
        seed = validation.positive_int("seed", seed, minimum=0)
        tasks = env.sample_tasks(n_tasks, np.random.default_rng(seed))
    else:
        if not isinstance(tasks, (list, tuple)) or not tasks:
            raise ParameterError(f"tasks must be a non-empty list of task dicts, got {tasks!r}")
        for task in tasks:
            try:
                env.set_task(task)
            except ValueError as exc:
                raise ParameterError(f"bad task {task!r} for {name}: {exc}") from None
        tasks = [{goal_key: float(task[goal_key])} for task in tasks]
    return GymnasiumTask(
        name=name, env_id=env_id, env_kwargs=env_kwargs, tasks=tasks,
        policy=_task_policy(env, policy, hidden, init_std, policy_seed), horizon=horizon,
        gamma=gamma, sampler=sampler, action_dtype=action_dtype, nthread=nthread,
        goal_key=goal_key, set_task=None, advantages=advantages)


def make_halfcheetah_vel(n_tasks: int = 8, seed: int = 0, tasks: list | None = None,
                         horizon: int = 100, gamma: float = 0.99, policy: str = "mlp",
                         hidden: Any = (64, 64), init_std: float = 1.0, policy_seed: int = 0,
                         goal_velocity_range: Any = (0.0, 2.0), ctrl_cost_weight: float = 0.05,
                         sampler: str = "batch", action_dtype: str = "float64",
                         nthread: int = 0,
                         baseline: str | None = None, gae_lambda: float | None = None,
                         normalize_advantages: bool = False) -> GymnasiumTask:
    """HalfCheetah running at a goal velocity (MAML's HalfCheetah-Vel), Gaussian MLP policy.

    Environment ``metarl_bench/HalfCheetahVel-v0`` (see its docstring for observation, action,
    reward terms and version history): reward -|v_x - v_goal| - 0.05 |a|^2, goal
    v_goal ~ U[goal_velocity_range] = U[0, 2] (MAML, garage, pytorch-maml-rl; ProMP used
    U[0, 3]). ``n_tasks`` goals drawn with ``seed`` (or ``tasks=[{"velocity": v}, ...]``)
    form the task distribution. ``horizon`` T (MAML used 200), ``gamma``; ``policy`` "mlp"
    (tanh ``hidden`` layers, state-independent log-std ``init_std``, weights from
    ``policy_seed``) or "linear". ``sampler`` "batch" (MuJoCo's batched simulator) or
    "gymnasium" (the reference vector env; the same trajectories bit for bit);
    ``action_dtype`` the dtype of the actions the simulator is given; ``nthread`` the
    simulator's threads (0: all cores; results do not depend on it). ``baseline``
    ("linear", as MAML-RL, garage and ProMP), ``gae_lambda``, ``normalize_advantages``: the
    inner step's advantages (``metarl_bench._src.tasks.advantages``; they change F_N). No model:
    use ``n_outer=M``.
    """
    low, high = _range("goal_velocity_range", goal_velocity_range)
    ctrl = validation.finite_float("ctrl_cost_weight", ctrl_cost_weight, low=0.0)
    return _locomotion(
        "halfcheetah-vel-v0", "metarl_bench/HalfCheetahVel-v0", "velocity",
        dict(goal_velocity_range=(low, high), ctrl_cost_weight=ctrl), n_tasks=n_tasks,
        seed=seed, tasks=tasks, horizon=horizon, gamma=gamma, policy=policy, hidden=hidden,
        init_std=init_std, policy_seed=policy_seed, sampler=sampler,
        action_dtype=action_dtype, nthread=nthread, baseline=baseline, gae_lambda=gae_lambda,
        normalize_advantages=normalize_advantages)


def make_halfcheetah_dir(n_tasks: int = 8, seed: int = 0, tasks: list | None = None,
                         horizon: int = 100, gamma: float = 0.99, policy: str = "mlp",
                         hidden: Any = (64, 64), init_std: float = 1.0, policy_seed: int = 0,
                         ctrl_cost_weight: float = 0.05, sampler: str = "batch",
                         action_dtype: str = "float64", nthread: int = 0,
                         baseline: str | None = None, gae_lambda: float | None = None,
                         normalize_advantages: bool = False) -> GymnasiumTask:
    """HalfCheetah running forward or backward (MAML's HalfCheetah-Dir), Gaussian MLP policy.

    Environment ``metarl_bench/HalfCheetahDir-v0``: reward d v_x - 0.05 |a|^2, d = +-1 with
    probability 1/2. Arguments as ``halfcheetah-vel-v0`` (tasks: ``[{"direction": 1}, ...]``).
    """
    ctrl = validation.finite_float("ctrl_cost_weight", ctrl_cost_weight, low=0.0)
    return _locomotion(
        "halfcheetah-dir-v0", "metarl_bench/HalfCheetahDir-v0", "direction",
        dict(ctrl_cost_weight=ctrl), n_tasks=n_tasks, seed=seed, tasks=tasks,
        horizon=horizon, gamma=gamma, policy=policy, hidden=hidden, init_std=init_std,
        policy_seed=policy_seed, sampler=sampler, action_dtype=action_dtype, nthread=nthread,
        baseline=baseline, gae_lambda=gae_lambda, normalize_advantages=normalize_advantages)


def make_ant_dir(n_tasks: int = 8, seed: int = 0, tasks: list | None = None,
                 horizon: int = 100, gamma: float = 0.99, policy: str = "mlp",
                 hidden: Any = (64, 64), init_std: float = 1.0, policy_seed: int = 0,
                 ctrl_cost_weight: float = 0.005, contact_cost_weight: float = 5e-4,
                 healthy_reward: float = 0.05, sampler: str = "batch",
                 action_dtype: str = "float64", nthread: int = 0,
                 baseline: str | None = None, gae_lambda: float | None = None,
                 normalize_advantages: bool = False) -> GymnasiumTask:
    """Ant walking forward or backward along x (MAML's Ant-Dir), Gaussian MLP policy.

    Environment ``metarl_bench/AntDir-v0``: reward d v_x + 0.05 healthy - 0.005 |a|^2
    - 5e-4 |clip(cfrc_ext, -1, 1)|^2 (MAML's terms), d = +-1, fixed horizon (no early
    termination). ProMP's 2D-direction ant is a different task. The contact term costs a
    per-simulation call each step; ``contact_cost_weight=0`` skips it.
    """
    weights = {name: validation.finite_float(name, value, low=0.0) for name, value in (
        ("ctrl_cost_weight", ctrl_cost_weight), ("contact_cost_weight", contact_cost_weight),
        ("healthy_reward", healthy_reward))}
    return _locomotion(
        "ant-dir-v0", "metarl_bench/AntDir-v0", "direction", weights, n_tasks=n_tasks,
        seed=seed, tasks=tasks, horizon=horizon, gamma=gamma, policy=policy, hidden=hidden,
        init_std=init_std, policy_seed=policy_seed, sampler=sampler,
        action_dtype=action_dtype, nthread=nthread, baseline=baseline, gae_lambda=gae_lambda,
        normalize_advantages=normalize_advantages)


def make_gym(env_id: str = "Pendulum-v1", env_kwargs: dict | None = None, n_tasks: int = 1,
             seed: int = 0, tasks: list | None = None,
             set_task: Callable[[Any, Any], None] | None = None, horizon: int = 100,
             gamma: float = 0.99, policy: str = "mlp", hidden: Any = (64, 64),
             init_std: float = 1.0, policy_seed: int = 0,
             action_dtype: str = "float64") -> GymnasiumTask:
    """Any Gymnasium environment ``env_id`` (default Pendulum-v1) as a task, sampled through
    ``SyncVectorEnv``.

    Tasks: ``tasks=[...]`` (each passed to ``set_task(env.unwrapped, task)``, or to the
    environment's own ``set_task`` when it follows the meta-task protocol), or ``n_tasks``
    drawn with ``seed`` by the environment's ``sample_tasks``; a plain environment with
    neither is one task. Observations must be a flat Box; actions a flat Box (``policy``
    "mlp" or "linear") or Discrete (a categorical MLP). Episodes that end before ``horizon``
    get zero reward afterwards.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ParameterError("gym-v0 needs env_id, the id of a registered Gymnasium "
                             "environment (e.g. env_id='Pendulum-v1')")
    horizon, gamma = _horizon_gamma(horizon, gamma)
    _choice("action_dtype", action_dtype, ACTION_DTYPES)
    env_kwargs = dict(env_kwargs or {})
    env = _require_gymnasium_env(env_id, env_kwargs).unwrapped
    protocol = callable(getattr(env, "sample_tasks", None)) and \
        callable(getattr(env, "set_task", None))
    if set_task is not None and not callable(set_task):
        raise ParameterError(f"set_task must be callable(env, task), got {set_task!r}")
    if tasks is not None:
        if not isinstance(tasks, (list, tuple)) or not tasks:
            raise ParameterError(f"tasks must be a non-empty list, got {tasks!r}")
        if set_task is None and not protocol:
            raise ParameterError(f"{env_id} has no set_task method: pass set_task=fn(env, task)")
        tasks = list(tasks)
    elif protocol:
        tasks = env.sample_tasks(validation.positive_int("n_tasks", n_tasks),
                                 np.random.default_rng(validation.positive_int(
                                     "seed", seed, minimum=0)))
    else:
        if n_tasks != 1:
            raise ParameterError(f"{env_id} has no sample_tasks method: pass tasks=[...] and "
                                 f"set_task, or n_tasks=1")
        tasks = [None]
    return GymnasiumTask(
        name=f"gym-v0[{env_id}]", env_id=env_id, env_kwargs=env_kwargs, tasks=tasks,
        policy=_task_policy(env, policy, hidden, init_std, policy_seed), horizon=horizon,
        gamma=gamma, sampler="gymnasium", action_dtype=action_dtype, nthread=0,
        goal_key=None, set_task=set_task)


def _range(name: str, value: Any) -> tuple[float, float]:
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a pair (low, high), got {value!r}") from None
    low = validation.finite_float(f"{name}[0]", low)
    high = validation.finite_float(f"{name}[1]", high)
    if low > high:
        raise ParameterError(f"{name} must have low <= high, got ({low}, {high})")
    return low, high

