"""Meta-World (Yu et al., CoRL 2019, arXiv:1910.10897; Farama's ``metaworld`` 3.1.1) as
meta-RL tasks: ``metaworld-ml1-v0`` (one manipulation skill, its 50 train or 50 disjoint test
goals) and ``metaworld-ml10-v0`` (10 train skills, or 5 held-out test skills, 50 goals each).

Tasks are built from the benchmark objects (``metaworld.ML1(env_name, seed)``,
``metaworld.ML10(seed)``) and each environment is given its task with ``set_task``, which
freezes the goal and object positions: a reset is then deterministic, and a trajectory's
randomness is the policy's alone. That avoids the traps of the registered vector ids (the
``ML1-train`` id of 3.1.1 hands out the test goals, with terminate-on-success on) and of
``reset(seed=...)``, which Meta-World ignores (each simulation is seeded with ``env.seed``).

Meta-World 3.1.1 pins ``mujoco==3.3.0`` and writes 11 numbers into each weld constraint's
``eq_data``, which MuJoCo 3.17 widened to 12: :func:`fix_mocap_welds` (applied when the first
task is made, only where MuJoCo is 3.17 or newer) writes the 11 values and a 0.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from metarl_bench._src.core import validation
from metarl_bench._src.core.errors import ParameterError, UnsupportedError, unknown_name
from metarl_bench._src.core.trajectories import Trajectories
from metarl_bench._src.tasks.advantages import make_advantages
from metarl_bench._src.tasks.gymnasium_tasks import (GymnasiumTask, _choice, _horizon_gamma,
                                                     _task_policy)

#: The Meta-World release these tasks are written and tested against.
METAWORLD_VERSION = "3.1.1"
#: The install a missing Meta-World asks for (Meta-World's own metadata pins mujoco==3.3.0,
#: which pip cannot install beside mujoco>=4, hence --no-deps).
INSTALL = ("pip install 'metarl-bench[metaworld]' && pip install --no-deps "
           f"metaworld=={METAWORLD_VERSION}")
SPLITS = ("train", "test")
SAMPLERS = ("metaworld", "batch")
#: Most Meta-World environments the reference sampler keeps alive (each holds its own MuJoCo
#: model and data, about 18 MB): a batch of more simulations is sampled in waves of rows.
#: The batched sampler keeps one environment per skill, for resets, and steps any number.
MAX_ENVS = 64
#: What Meta-World writes into a weld constraint's data (anchor, relative pose, torque
#: scale): the same 11 numbers for every weld of every Sawyer environment.
_WELD_DATA = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0)
#: The first MuJoCo whose weld constraints hold 12 numbers.
_WIDE_WELDS = (3, 17)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def reset_mocap_welds(env: Any) -> None:
    """Meta-World's ``SawyerMocapBase.reset_mocap_welds`` for MuJoCo >= 3.17: each weld
    constraint gets Meta-World's 11 numbers, and 0 in the places MuJoCo added after them.

    Meta-World 3.1.1 assigns an 11-number array to each weld row of ``model.eq_data``;
    MuJoCo 3.17 widened those rows to 12, so its assignment fails ("could not broadcast
    (11,) into (12,)"). A 12th value of 0 is MuJoCo's own default. Trajectories then differ
    from Meta-World's pinned mujoco 3.3.0 by about 5e-4 from the first reset (the physics
    changed between those releases, not this fix).
    """
    mujoco, _ = _modules()
    model = env.model
    if model.nmocap == 0 or model.eq_data is None:
        return
    width = model.eq_data.shape[1]
    if width < len(_WELD_DATA):
        raise UnsupportedError(
            f"MuJoCo {mujoco.__version__} keeps {width} numbers per weld constraint; the "
            f"Meta-World compatibility fix covers {len(_WELD_DATA)} (MuJoCo < 3.17) or more")
    for row in range(model.eq_data.shape[0]):
        if model.eq_type[row] == mujoco.mjtEq.mjEQ_WELD:
            model.eq_data[row, :len(_WELD_DATA)] = _WELD_DATA
            model.eq_data[row, len(_WELD_DATA):] = 0.0


def fix_mocap_welds(metaworld: Any, mujoco_version: str) -> bool:
    """Install :func:`reset_mocap_welds` in Meta-World's Sawyer base class where MuJoCo is
    3.17 or newer (idempotent); returns whether it is installed."""
    if _version(mujoco_version) < _WIDE_WELDS:
        return False
    metaworld.sawyer_xyz_env.SawyerMocapBase.reset_mocap_welds = reset_mocap_welds
    return True


def _modules() -> tuple[Any, Any]:
    """(mujoco, metaworld); a typed error naming the install command when one is absent."""
    try:
        import mujoco
        import metaworld
        import metaworld.sawyer_xyz_env
    except ImportError as exc:
        raise UnsupportedError(f"Meta-World tasks need MuJoCo and Meta-World: {INSTALL} "
                               f"({exc})") from None
    return mujoco, metaworld


def require_metaworld() -> Any:
    """The ``metaworld`` module, with the MuJoCo compatibility fix applied; a typed error
    naming the install command when it (or MuJoCo) is absent."""
    mujoco, metaworld = _modules()
    fix_mocap_welds(metaworld, mujoco.__version__)
    return metaworld


def versions() -> dict[str, str]:
    """The simulator libraries a Meta-World result depends on (recorded with each result)."""
    from importlib.metadata import version

    mujoco, _ = _modules()
    return {"mujoco": mujoco.__version__, "metaworld": version("metaworld")}


@functools.lru_cache(maxsize=8)
def _benchmark(kind: str, env_name: str | None, seed: int) -> Any:
    """A benchmark object (its goals come from ``seed``); building ML1 takes seconds."""
    metaworld = require_metaworld()
    return metaworld.ML1(env_name, seed=seed) if kind == "ML1" else metaworld.ML10(seed=seed)


class MetaWorldSimulator:
    """Meta-World environments stepped one after another: the reference sampler.

    ``reset(seeds, tasks)`` starts one simulation per task (made with ``set_task``, seeded
    with ``env.seed``) on the first ``len(tasks)`` environments of a pool that grows as
    needed and is kept across calls (an environment is remade only when its skill changes).
    After each ``step``, ``last_success`` (bool, (n_sims,)) holds each simulation's
    ``info["success"]``.
    """

    takes_tasks = True

    def __init__(self, classes: dict[str, type]):
        self.classes = classes
        self.pool: list[Any] = []
        self.envs: list[Any] = []

    def reset(self, seeds: np.ndarray, tasks: list[Any]) -> np.ndarray:
        observations = []
        for index, (seed, task) in enumerate(zip(seeds, tasks)):
            cls = self.classes[task.env_name]
            if index == len(self.pool):
                self.pool.append(None)
            if type(self.pool[index]) is not cls:
                self.pool[index] = cls()
            env = self.pool[index]
            env.set_task(task)
            env.seed(int(seed))
            observation, _ = env.reset()
            observations.append(observation)
        self.envs = self.pool[:len(tasks)]
        return np.asarray(observations, dtype=np.float64)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        observations, rewards, success = [], [], []
        for index, env in enumerate(self.envs):
            observation, reward, _, _, info = env.step(actions[index])
            observations.append(observation)
            rewards.append(reward)
            success.append(bool(info["success"]))
        self.last_success = np.asarray(success, dtype=bool)
        return np.asarray(observations, dtype=np.float64), np.asarray(rewards, dtype=np.float64)

    def close(self) -> None:
        for env in self.pool:
            if env is not None:
                env.close()


class MetaWorldTask(GymnasiumTask):
    """A distribution of Meta-World tasks (skill and goal) with a policy; no model.

    Samplers: ``"metaworld"``, Meta-World's environments stepped one after another
    (:class:`MetaWorldSimulator`, the reference); ``"batch"``, every simulation of a call
    stepped together on ``mujoco.batch`` with observations and rewards on arrays
    (``envs.metaworld_batch``; reach-v3, push-v3 and pick-place-v3), equal to the reference
    bit for bit.
    """

    #: the estimated truth's constant baseline from 8 trajectories per task, not 64: a
    #: Meta-World step costs a millisecond of Python, and any constant keeps it unbiased
    pilot_trajectories = 8

    def __init__(self, *, classes: dict[str, type], **kwargs: Any):
        self.classes = classes
        super().__init__(**kwargs)
        self._pool = MetaWorldSimulator(classes)
        self._resets: dict[str, Any] = {}

    def simulator(self, n_sims: int, sampler: str | None = None) -> Any:
        """The reference sampler: one pool of environments for every batch size (each
        environment is heavy); the batched one: a (cached) simulator per batch size."""
        if (sampler or self.sampler) == "metaworld":
            return self._pool
        return super().simulator(n_sims, sampler)

    def new_simulator(self, sampler: str, n_sims: int) -> Any:
        """A batched simulator of ``n_sims`` simulations; its skills' reset environments
        (and the resets they cache) are the task's, shared by every batch size."""
        from metarl_bench._src.tasks.envs.metaworld_batch import (MetaWorldBatchSimulator,
                                                                   SkillResets, check_skills)

        _choice("sampler", sampler, SAMPLERS)
        skills = list(dict.fromkeys(task.env_name for task in self.tasks))
        check_skills(skills)
        for skill in skills:
            if skill not in self._resets:
                self._resets[skill] = SkillResets(self.classes[skill]())
        return MetaWorldBatchSimulator(self._resets, n_sims, nthread=self.nthread)

    def sample(self, params: torch.Tensor, n_traj: int, task_index: torch.Tensor,
               generator: torch.Generator | None, *, sampler: str | None = None
               ) -> Trajectories:
        """As :meth:`GymnasiumTask.sample`; the reference sampler in waves of at most
        ``MAX_ENVS`` simulations (whole rows; one row per wave when a row alone has more).
        The waves follow from the batch's shape alone, so a seeded call gives the same
        trajectories everywhere. The batched sampler steps every simulation in one wave: the
        two samplers give the same trajectories bit for bit when a call fits in one wave
        (R N <= ``MAX_ENVS``, or one row); beyond that the reference draws the policy's noise
        wave by wave, in another order from the same generator, so its trajectories follow
        the same law but are other samples (the sampler is part of a result's key)."""
        rows = max(1, MAX_ENVS // n_traj)
        if params.shape[0] <= rows or (sampler or self.sampler) == "batch":
            return super().sample(params, n_traj, task_index, generator, sampler=sampler)
        waves = [super(MetaWorldTask, self).sample(params[lo:lo + rows], n_traj,
                                                   task_index[lo:lo + rows], generator,
                                                   sampler=sampler)
                 for lo in range(0, params.shape[0], rows)]
        return Trajectories(*(torch.cat([getattr(w, name) for w in waves])
                              for name in ("states", "actions", "rewards", "task_index")),
                            success=None if waves[0].success is None
                            else torch.cat([w.success for w in waves]))

    def versions(self) -> dict[str, str]:
        return {**super().versions(), **versions()}


def _metaworld_task(name: str, benchmark: Any, tasks: list[Any], *, horizon: Any, gamma: Any,
                    policy: str, hidden: Any, init_std: Any, policy_seed: Any, sampler: str,
                    nthread: Any, baseline: Any, gae_lambda: Any,
                    normalize_advantages: Any) -> MetaWorldTask:
    horizon, gamma = _horizon_gamma(horizon, gamma)
    sampler = _choice("sampler", sampler, SAMPLERS)
    nthread = validation.positive_int("nthread", nthread, minimum=0)
    if sampler == "batch":
        from metarl_bench._src.tasks.envs.metaworld_batch import check_skills

        check_skills([task.env_name for task in tasks])
    classes = {**benchmark.train_classes, **benchmark.test_classes}
    reference = classes[tasks[0].env_name]()
    if horizon > reference.max_path_length:
        raise ParameterError(f"horizon must be at most {reference.max_path_length} (Meta-World "
                             f"episodes end there), got {horizon}")
    reference.set_task(tasks[0])
    return MetaWorldTask(
        classes=classes, name=name, env_id=f"metaworld/{tasks[0].env_name}", env_kwargs={},
        tasks=tasks, policy=_task_policy(reference, policy, hidden, init_std, policy_seed),
        horizon=horizon, gamma=gamma, sampler=sampler,
        action_dtype="float64", nthread=nthread, goal_key=None, set_task=None,
        advantages=make_advantages(baseline, gae_lambda, normalize_advantages),
        reference_env=reference)


def _split(split: Any) -> str:
    return _choice("split", split, SPLITS)


def make_metaworld_ml1(env_name: str = "reach-v3", split: str = "train", n_tasks: int = 5,
                       seed: int = 0, horizon: int = 150, gamma: float = 0.99,
                       policy: str = "mlp", hidden: Any = (100, 100), init_std: float = 1.0,
                       policy_seed: int = 0, sampler: str = "metaworld", nthread: int = 0,
                       baseline: str | None = "linear", gae_lambda: float | None = 1.0,
                       normalize_advantages: bool = True) -> MetaWorldTask:
    """Meta-World ML1: one manipulation skill ``env_name`` (e.g. ``reach-v3``, ``push-v3``,
    ``pick-place-v3``) at the first ``n_tasks`` of the 50 goals of its ``split``.

    ``metaworld.ML1(env_name, seed)`` draws 50 train goals and 50 disjoint test goals
    (``split="test"``), hidden from the observation (39 numbers: hand, gripper, two objects,
    previous frame); actions are 4 numbers in [-1, 1] (hand motion, gripper), rewards
    Meta-World's shaped v3 rewards. ``n_tasks`` (at most 50) goals form the task
    distribution: 5 by default, to keep a default run in minutes (every estimate samples
    every goal); the field's ML1 meta-batch is 10. ``horizon`` T (at most 500, Meta-World's episode;
    150 as older MAML code, to keep a run in minutes), ``gamma`` 0.99. ``policy`` "mlp": a
    Gaussian MLP with tanh ``hidden`` layers (the field's 2x100; newer code 2x512 or 3x400),
    state-independent log-std ``init_std``, weights from ``policy_seed``. Inner step as
    MAML-TRPO's: a linear feature ``baseline``, GAE ``gae_lambda`` 1 and normalized
    advantages. ``sampler`` "metaworld": Meta-World's own environments, stepped one after
    another (the reference); "batch": every simulation of a call stepped together on
    ``mujoco.batch``, observations and rewards computed on arrays, the same trajectories bit
    for bit for calls of up to 64 simulations (larger ones: the same law, other samples, as
    the reference samples them in waves; see ``MetaWorldTask.sample``) (reach-v3, push-v3 and pick-place-v3 only: other skills are refused with a typed
    error). ``nthread``: the batched sampler's threads (0: all cores; results do not depend
    on it). Needs MuJoCo and Meta-World (``pip install 'metarl-bench[metaworld]'`` then
    ``pip install --no-deps metaworld==3.1.1``); no model: use ``n_outer=M``.
    """
    metaworld = require_metaworld()
    if env_name not in metaworld.ML1.ENV_NAMES:
        raise unknown_name("env_name", env_name, metaworld.ML1.ENV_NAMES)
    split = _split(split)
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    if n_tasks > 50:
        raise ParameterError(f"n_tasks must be at most 50 (ML1 has 50 {split} goals), got "
                             f"{n_tasks}")
    benchmark = _benchmark("ML1", env_name, validation.positive_int("seed", seed, minimum=0))
    goals = benchmark.train_tasks if split == "train" else benchmark.test_tasks
    return _metaworld_task(
        "metaworld-ml1-v0", benchmark, list(goals[:n_tasks]), horizon=horizon, gamma=gamma,
        policy=policy, hidden=hidden, init_std=init_std, policy_seed=policy_seed,
        sampler=sampler, nthread=nthread, baseline=baseline, gae_lambda=gae_lambda,
        normalize_advantages=normalize_advantages)


def make_metaworld_ml10(split: str = "train", skills: list | None = None, n_tasks: int = 10,
                        seed: int = 0, horizon: int = 150, gamma: float = 0.99,
                        policy: str = "mlp", hidden: Any = (100, 100), init_std: float = 1.0,
                        policy_seed: int = 0, sampler: str = "metaworld", nthread: int = 0,
                        baseline: str | None = "linear", gae_lambda: float | None = 1.0,
                        normalize_advantages: bool = True) -> MetaWorldTask:
    """Meta-World ML10: ``n_tasks`` tasks over the 10 train skills (``split="train"``) or the
    5 held-out test skills (``split="test"``), or over ``skills``, a subset of the split's.

    ``metaworld.ML10(seed)`` draws 50 goals per skill; task k is skill ``k mod S`` (in the
    split's order) at its goal ``k div S``, so any ``n_tasks`` covers the S skills evenly
    (at most 50 S). Other arguments as ``metaworld-ml1-v0``; ``sampler="batch"`` needs
    ``skills`` among reach-v3, push-v3 and pick-place-v3 (the split's other skills are
    refused with a typed error).
    """
    split = _split(split)
    benchmark = _benchmark("ML10", None, validation.positive_int("seed", seed, minimum=0))
    classes = benchmark.train_classes if split == "train" else benchmark.test_classes
    names = list(classes)
    if skills is not None:
        if not isinstance(skills, (list, tuple)) or not skills:
            raise ParameterError(f"skills must be a non-empty list of ML10 {split} skills, got "
                                 f"{skills!r}")
        for skill in skills:
            if skill not in names:
                other = "test" if split == "train" else "train"
                if skill in (benchmark.test_classes if split == "train"
                             else benchmark.train_classes):
                    raise ParameterError(f"skill {skill!r} is an ML10 {other} skill, not a "
                                         f"{split} one; the {split} skills: {', '.join(names)}")
                raise unknown_name("skill", skill, names)
        names = list(dict.fromkeys(skills))
    n_tasks = validation.positive_int("n_tasks", n_tasks)
    if n_tasks > 50 * len(names):
        raise ParameterError(f"n_tasks must be at most {50 * len(names)} (50 goals for each of "
                             f"{len(names)} skills), got {n_tasks}")
    pool = benchmark.train_tasks if split == "train" else benchmark.test_tasks
    by_skill = {name: [task for task in pool if task.env_name == name] for name in names}
    tasks = [by_skill[names[k % len(names)]][k // len(names)] for k in range(n_tasks)]
    return _metaworld_task(
        "metaworld-ml10-v0", benchmark, tasks, horizon=horizon, gamma=gamma, policy=policy,
        hidden=hidden, init_std=init_std, policy_seed=policy_seed, sampler=sampler,
        nthread=nthread, baseline=baseline, gae_lambda=gae_lambda,
        normalize_advantages=normalize_advantages)


__all__ = ["INSTALL", "METAWORLD_VERSION", "MetaWorldSimulator",
           "MetaWorldTask", "fix_mocap_welds", "make_metaworld_ml1", "make_metaworld_ml10",
           "require_metaworld", "reset_mocap_welds", "versions"]
