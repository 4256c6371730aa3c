"""Meta-World's reach, push and pick-place (v3) simulations stepped together on
``mujoco.batch``, with Meta-World's observations and v3 rewards computed on arrays, bit for bit
as Meta-World 3.1.1's own environments compute them one at a time.

``MetaWorldBatchSimulator`` keeps one ``mujoco.batch.Batch`` per skill (MuJoCo's C++ thread
pool over per-simulation state rows, the GIL released while it steps). What each part
reproduces, read from Meta-World's ``sawyer_xyz_env.py`` and ``envs/sawyer_*_v3.py``:

* reset: a task set with ``set_task`` freezes the goal and object positions, so Meta-World's
  reset (two ``reset_model`` calls, 50 hand-placing steps each, the second after
  ``mj_resetData``) always ends in the same state. Each distinct task is reset once on one
  Meta-World environment of its skill, and its whole integration state
  (``mjSTATE_INTEGRATION``: qpos, qvel, warmstart, controls, mocap pose, time, ...) is
  copied into the rows of its simulations, with that reset's observation and the constants
  the reward reads (goal, initial object and gripper positions). Reset seeds are unused:
  Meta-World's random draws are all frozen by ``set_task`` (the reference sampler's
  ``env.seed`` changes nothing either).
* step: ``set_xyz_action`` (hand motion clipped to [-1, 1], times ``action_scale``, added to
  the mocap position, clipped to the mocap box; mocap orientation [1, 0, 1, 0]), gripper
  controls (a, -a), ``frame_skip`` calls of ``mj_step``, then the position stage at the new
  state (Meta-World's ``mj_forward``: the observation and reward read its kinematics);
  ``mj_forward`` changes no state, so the rows continue exactly as the environment does.
* observation: hand position, the claws' distance / 0.1 clipped to [0, 1], object position
  and quaternion (scipy's ``Rotation.from_matrix`` of the object geom's rotation matrix, its
  orthogonal-matrix branch written out on arrays), 7 zeros of padding, the previous frame's
  18 numbers, the goal (zeros when hidden, as in ML1 and ML10), clipped to the observation
  space.
* reward and ``info["success"]`` of each skill's v2 reward function (Meta-World v3's
  default), term by term in the reference's order.

Two details decide bits and are reproduced on purpose. ``np.linalg.norm`` of a vector is
BLAS's dot product: here each row's dot product is ``np.matmul`` of (1, d) by (d, 1), the
same BLAS call. ``reward_utils.tolerance`` squares a numpy *scalar* with ``** 2``, which is
libm's ``pow`` (it differs from ``x * x`` in the last bit for about 1 in 1,000 inputs): the
array version calls ``np.power`` with an array exponent, the elementwise ``pow`` loop, not
numpy's ``x * x`` fast path for a scalar exponent 2. A test compares these helpers with the
reference's own scalar functions on random inputs, and the simulator with Meta-World's
environments on 500-step episodes.

Pick-place reads its "initial" pad positions (``init_left_pad``, ``init_right_pad``) through
a live view of ``data.xpos`` (``get_body_com`` returns one), so they are the pads' current
positions; that is what Meta-World computes, and what is computed here.

Other skills raise ``UnsupportedError`` (``SKILLS`` lists the ones written out); their tasks
run with ``sampler="metaworld"``.
"""

from __future__ import annotations

from typing import Any, Callable

import mujoco
import numpy as np
from mujoco import batch as mujoco_batch

from metarl_bench._src.core.errors import ParameterError, UnsupportedError

#: the width of Meta-World's per-frame observation (hand 3, gripper 1, objects 14)
_FRAME = 18
#: Meta-World's ``reward_utils.tolerance`` default: the long-tail sigmoid is 0.1 at the margin
_VALUE_AT_MARGIN = 0.1
#: the orientation ``set_xyz_action`` gives the mocap body every step
_MOCAP_QUAT = np.array([1.0, 0.0, 1.0, 0.0])


def row_norm(vectors: np.ndarray) -> np.ndarray:
    """``np.linalg.norm`` of each row of ``vectors`` (..., d), bit for bit: the square root
    of BLAS's dot product, which ``np.matmul`` of (1, d) by (d, 1) calls as the norm does."""
    rows = vectors[..., None, :]
    return np.sqrt(np.matmul(rows, vectors[..., :, None])[..., 0, 0])


def long_tail_tolerance(x: np.ndarray, lower: float, upper: float,
                        margin: np.ndarray) -> np.ndarray:
    """Meta-World's ``reward_utils.tolerance(x, bounds=(lower, upper), margin=margin,
    sigmoid="long_tail")`` on arrays, as the reference computes it on each scalar: 1 inside
    the bounds, else 1 / ((d * 3) ** 2 + 1) with d the distance to the bounds over the
    margin (0 outside when the margin is 0). A negative margin is refused, as there."""
    x = np.asarray(x, dtype=np.float64)
    margin = np.broadcast_to(np.asarray(margin, dtype=np.float64), x.shape)
    if (margin < 0).any():
        raise UnsupportedError(f"a reward margin is negative ({margin.min()}): Meta-World's "
                               f"tolerance refuses it")
    in_bounds = np.logical_and(lower <= x, x <= upper)
    scale = np.sqrt(1 / _VALUE_AT_MARGIN - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(x < lower, lower - x, x - upper) / margin
        scaled = d * scale
        # the reference squares a numpy scalar, i.e. libm's pow: an array exponent keeps
        # np.power on that elementwise pow (a scalar 2 would take the x * x fast path)
        sigmoid = 1 / (np.power(scaled, np.full_like(scaled, 2.0)) + 1)
    value = np.where(in_bounds, 1.0, sigmoid)
    return np.where(margin == 0, np.where(in_bounds, 1.0, 0.0), value)


def hamacher_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Meta-World's ``reward_utils.hamacher_product`` on arrays: a b / (a + b - a b), 0 where
    that denominator is not positive."""
    product = a * b
    denominator = a + b - product
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, product / denominator, 0.0)


def quat_from_matrix(matrices: np.ndarray) -> np.ndarray:
    """scipy's ``Rotation.from_matrix(m).as_quat()`` (x, y, z, w) for each (3, 3) rotation
    matrix of ``matrices`` (n, 3, 3), bit for bit: Markley's method as scipy's compiled
    backend writes it (the largest of the diagonal and the trace picks the formula), then
    division by the norm. Matrices that scipy would first orthogonalise (or refuse) are handed
    to scipy itself; MuJoCo's rotation matrices are orthogonal to rounding, so none is."""
    m = np.asarray(matrices, dtype=np.float64)
    n = m.shape[0]
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    choice = np.argmax(np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2], trace], axis=-1), -1)
    quat = np.empty((n, 4))
    for case in range(4):
        rows = choice == case
        if not rows.any():
            continue
        mm, tr = m[rows], trace[rows]
        if case < 3:
            i, j, k = case, (case + 1) % 3, (case + 2) % 3
            quat[rows, i] = 1 - tr + 2 * mm[:, i, i]
            quat[rows, j] = mm[:, j, i] + mm[:, i, j]
            quat[rows, k] = mm[:, k, i] + mm[:, i, k]
            quat[rows, 3] = mm[:, k, j] - mm[:, j, k]
        else:
            quat[rows, 0] = mm[:, 2, 1] - mm[:, 1, 2]
            quat[rows, 1] = mm[:, 0, 2] - mm[:, 2, 0]
            quat[rows, 2] = mm[:, 1, 0] - mm[:, 0, 1]
            quat[rows, 3] = 1 + tr
    norm = np.sqrt(quat[:, 0] * quat[:, 0] + quat[:, 1] * quat[:, 1]
                   + quat[:, 2] * quat[:, 2] + quat[:, 3] * quat[:, 3])
    quat /= norm[:, None]
    # scipy's test, np.isclose(m m^T, I, atol=1e-12) (rtol 1e-5), written out: it is cheaper
    eye = np.eye(3)
    off = np.abs(m @ np.transpose(m, (0, 2, 1)) - eye) > 1e-12 + 1e-5 * eye
    det = (m[:, 0, 0] * (m[:, 1, 1] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 1])
           - m[:, 0, 1] * (m[:, 1, 0] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 0])
           + m[:, 0, 2] * (m[:, 1, 0] * m[:, 2, 1] - m[:, 1, 1] * m[:, 2, 0]))
    unusual = off.any(axis=(1, 2)) | (det <= 0)
    if unusual.any():
        try:
            from scipy.spatial.transform import Rotation
        except ImportError as exc:  # Meta-World itself needs scipy: only a broken install
            raise UnsupportedError(f"Meta-World's quaternions need scipy: pip install "
                                   f"'metarl-bench[metaworld]' ({exc})") from None
        quat[unusual] = Rotation.from_matrix(m[unusual]).as_quat()
    return quat


def _without_y(points: np.ndarray) -> np.ndarray:
    """``p + [0, -p_y, 0]``, as pick-place writes its x-z distances (the y sum is 0)."""
    zeros = np.zeros(points.shape[0])
    return points + np.stack([zeros, -points[:, 1], zeros], axis=-1)


def _gripper_closed(actions: np.ndarray) -> np.ndarray:
    """``min(max(0, a), 1)`` of the gripper action (push divides it by a desired effort of
    1, which changes no bit)."""
    return np.minimum(np.maximum(actions[:, -1], 0), 1.0) / 1.0


class _State:
    """Arrays a reward reads at one step, (k, ...) for the k simulations of a skill."""

    def __init__(self, tcp: np.ndarray, observation: np.ndarray, left_pad: np.ndarray,
                 right_pad: np.ndarray, actions: np.ndarray, constants: dict[str, np.ndarray]):
        self.tcp = tcp
        self.obj = observation[:, 4:7]
        self.tcp_opened = observation[:, 3]
        self.left_pad = left_pad
        self.right_pad = right_pad
        self.actions = actions
        self.c = constants


def _reach_constants(env: Any) -> dict[str, Any]:
    return {"in_place_margin": float(np.linalg.norm(env.hand_init_pos - env._target_pos))}


def _reach_reward(s: _State) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerReachEnvV3.compute_reward`` (v2) and its success: hand (tcp) within 5 cm."""
    tcp_to_target = row_norm(s.tcp - s.c["target"])
    in_place = long_tail_tolerance(tcp_to_target, 0, 0.05, s.c["in_place_margin"])
    return 10 * in_place, tcp_to_target <= 0.05


def _push_constants(env: Any) -> dict[str, Any]:
    xz = [0, 2]
    caging_xz_margin = np.linalg.norm(env.obj_init_pos[xz] - env.init_tcp[xz])
    caging_xz_margin -= 0.005
    return {"target_to_obj_init": float(np.linalg.norm(env.obj_init_pos - env._target_pos)),
            "caging_xz_margin": caging_xz_margin}


def _push_caging(s: _State) -> np.ndarray:
    """``SawyerXYZEnv._gripper_caging_reward`` as push calls it (obj_radius 0.015, pad
    success 0.05, x-z 0.005, high density)."""
    pad_y_lr = np.stack([s.left_pad[:, 1], s.right_pad[:, 1]], axis=-1)
    pad_to_obj_lr = np.abs(pad_y_lr - s.obj[:, 1:2])
    pad_to_objinit_lr = np.abs(pad_y_lr - s.c["obj_init_pos"][:, 1:2])
    caging_lr_margin = np.abs(pad_to_objinit_lr - 0.05)
    caging_lr = long_tail_tolerance(pad_to_obj_lr, 0.015, 0.05, caging_lr_margin)
    caging_y = hamacher_product(caging_lr[:, 0], caging_lr[:, 1])
    xz = [0, 2]
    caging_xz = long_tail_tolerance(row_norm(s.tcp[:, xz] - s.obj[:, xz]), 0, 0.005,
                                    s.c["caging_xz_margin"])
    caging = hamacher_product(caging_y, caging_xz)
    gripping = np.where(caging > 0.97, _gripper_closed(s.actions), 0.0)
    caging_and_gripping = hamacher_product(caging, gripping)
    return (caging_and_gripping + caging) / 2


def _push_reward(s: _State) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerPushEnvV3.compute_reward`` (v2) and its success: object within 5 cm."""
    tcp_to_obj = row_norm(s.obj - s.tcp)
    target_to_obj = row_norm(s.obj - s.c["target"])
    in_place = long_tail_tolerance(target_to_obj, 0, 0.05, s.c["target_to_obj_init"])
    reward = 2 * _push_caging(s)
    near = (tcp_to_obj < 0.02) & (s.tcp_opened > 0)
    reward = np.where(near, reward + (1.0 + reward + 5.0 * in_place), reward)
    reward = np.where(target_to_obj < 0.05, 10.0, reward)
    return reward, target_to_obj <= 0.05


def _pick_place_constants(env: Any) -> dict[str, Any]:
    init_obj_x_z = env.obj_init_pos + np.array([0.0, -env.obj_init_pos[1], 0.0])
    init_tcp_x_z = env.init_tcp + np.array([0.0, -env.init_tcp[1], 0.0])
    return {"in_place_margin": np.linalg.norm(env.obj_init_pos - env._target_pos),
            "x_z_margin": np.linalg.norm(init_obj_x_z - init_tcp_x_z, ord=2) - 0.005}


def _pick_place_caging(s: _State) -> np.ndarray:
    """``SawyerPickPlaceEnvV3._gripper_caging_reward``; its "initial" pads are the current
    ones (a live view of ``data.xpos`` in Meta-World)."""
    obj_y = s.obj[:, 1]
    right_margin = np.abs(np.abs(obj_y - s.right_pad[:, 1]) - 0.05)
    left_margin = np.abs(np.abs(obj_y - s.left_pad[:, 1]) - 0.05)
    right_caging = long_tail_tolerance(obj_y - s.right_pad[:, 1], 0.015, 0.05, right_margin)
    left_caging = long_tail_tolerance(s.left_pad[:, 1] - obj_y, 0.015, 0.05, left_margin)
    y_caging = hamacher_product(left_caging, right_caging)
    tcp_obj_norm_x_z = row_norm(_without_y(s.tcp) - _without_y(s.obj))
    x_z_caging = long_tail_tolerance(tcp_obj_norm_x_z, 0, 0.005, s.c["x_z_margin"])
    caging = hamacher_product(y_caging, x_z_caging)
    gripping = np.where(caging > 0.97, _gripper_closed(s.actions), 0.0)
    caging_and_gripping = hamacher_product(caging, gripping)
    return (caging_and_gripping + caging) / 2


def _pick_place_reward(s: _State) -> tuple[np.ndarray, np.ndarray]:
    """``SawyerPickPlaceEnvV3.compute_reward`` (v2) and its success: object within 7 cm."""
    obj_to_target = row_norm(s.obj - s.c["target"])
    tcp_to_obj = row_norm(s.obj - s.tcp)
    in_place = long_tail_tolerance(obj_to_target, 0, 0.05, s.c["in_place_margin"])
    reward = hamacher_product(_pick_place_caging(s), in_place)
    lifted = (tcp_to_obj < 0.02) & (s.tcp_opened > 0) & \
        (s.obj[:, 2] - 0.01 > s.c["obj_init_pos"][:, 2])
    reward = np.where(lifted, reward + (1.0 + 5.0 * in_place), reward)
    reward = np.where(obj_to_target < 0.05, 10.0, reward)
    return reward, obj_to_target <= 0.07


#: skill -> (Meta-World class name, per-task constants from a reset environment, reward)
_SKILLS: dict[str, tuple[str, Callable[[Any], dict], Callable[[_State], tuple]]] = {
    "reach-v3": ("SawyerReachEnvV3", _reach_constants, _reach_reward),
    "push-v3": ("SawyerPushEnvV3", _push_constants, _push_reward),
    "pick-place-v3": ("SawyerPickPlaceEnvV3", _pick_place_constants, _pick_place_reward),
}
#: the skills whose observations and rewards are written out here
SKILLS = tuple(_SKILLS)


def check_skills(names: list[str]) -> None:
    """A typed error naming the skills of ``names`` that ``sampler="batch"`` cannot step."""
    missing = sorted(set(names) - set(SKILLS))
    if missing:
        raise UnsupportedError(
            f"sampler='batch' steps {', '.join(SKILLS)}; {', '.join(missing)} "
            f"{'needs' if len(missing) == 1 else 'need'} sampler='metaworld'")


class _Snapshot:
    """One task's reset: its integration state, observation, and reward constants."""

    def __init__(self, env: Any, observation: np.ndarray, constants: Callable[[Any], dict]):
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self.state = np.empty(mujoco.mj_stateSize(env.model, spec))
        mujoco.mj_getState(env.model, env.data, self.state, spec)
        self.observation = np.array(observation, dtype=np.float64)
        space = env.sawyer_observation_space
        self.low = np.array(space.low, dtype=np.float64)
        self.high = np.array(space.high, dtype=np.float64)
        target = np.array(env._target_pos, dtype=np.float64)
        self.goal = np.zeros(3) if env._partially_observable else target
        self.constants = {"target": target,
                          "obj_init_pos": np.array(env.obj_init_pos, dtype=np.float64),
                          **constants(env)}


class SkillResets:
    """One Meta-World environment of a skill and the reset of each task it has been given
    (kept: a reset runs 100 hand-placing steps, and the same task always resets the same)."""

    def __init__(self, env: Any):
        skill = next((name for name, (cls, *_) in _SKILLS.items()
                      if type(env).__name__ == cls), None)
        if skill is None:
            raise UnsupportedError(f"sampler='batch' steps {', '.join(SKILLS)}; not "
                                   f"{type(env).__name__} (use sampler='metaworld')")
        version = getattr(env, "reward_function_version", "v2")
        if version != "v2":
            raise UnsupportedError(f"sampler='batch' computes the v2 reward functions (Meta-World "
                                   f"v3's default), not {version!r}")
        self.env = env
        self.skill = skill
        _, self.constants, self.reward = _SKILLS[skill]
        self.snapshots: dict[bytes, _Snapshot] = {}

    def snapshot(self, task: Any) -> _Snapshot:
        if task.data not in self.snapshots:
            self.env.set_task(task)
            observation, _ = self.env.reset()
            self.snapshots[task.data] = _Snapshot(self.env, observation, self.constants)
        return self.snapshots[task.data]


class _SkillBatch:
    """The simulations of one skill in a call: a Batch of ``capacity`` rows, the first
    ``n`` of them in use."""

    def __init__(self, resets: SkillResets, capacity: int, nthread: int):
        env = resets.env
        self.resets = resets
        self._reward = resets.reward
        model = env.model
        self.batch = mujoco_batch.Batch(model, capacity, nthread)
        self.state = self.batch.state
        self.mocap_pos = self.batch.bind("mocap_pos")
        self.mocap_quat = self.batch.bind("mocap_quat")
        self.ctrl = self.batch.bind("ctrl")
        # bound before the first call, so that every step copies them out
        self.xpos = self.batch.bind("xpos")
        self.geom_xmat = self.batch.bind("geom_xmat")
        self.site_xpos = self.batch.bind("site_xpos")
        self.ids = {name: model.body(name).id
                    for name in ("hand", "rightclaw", "leftclaw", "obj", "leftpad", "rightpad")}
        self.obj_geom = model.geom("objGeom").id
        self.fingers = (model.site("rightEndEffector").id, model.site("leftEndEffector").id)
        self.frame_skip = env.frame_skip
        self.action_scale = env.action_scale
        self.mocap_low, self.mocap_high = env.mocap_low, env.mocap_high
        self.rows: Any = None
        self.n = 0

    def reset(self, tasks: list[Any]) -> np.ndarray:
        snapshots = [self.resets.snapshot(task) for task in tasks]
        self.n = n = len(tasks)
        self.rows = None if n == self.batch.nsim else np.arange(n)
        self.state[:n] = np.stack([s.state for s in snapshots])
        observations = np.stack([s.observation for s in snapshots])
        self.previous = observations[:, :_FRAME].copy()
        self.low = np.stack([s.low for s in snapshots])
        self.high = np.stack([s.high for s in snapshots])
        self.goal = np.stack([s.goal for s in snapshots])
        self.constants = {name: np.stack([np.asarray(s.constants[name]) for s in snapshots])
                          for name in snapshots[0].constants}
        return observations

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n
        # SawyerXYZEnv.set_xyz_action, then do_simulation([a, -a], frame_skip)
        delta = np.clip(actions[:, :3], -1, 1) * self.action_scale
        mocap = self.mocap_pos[:n] + delta[:, None, :]
        mocap[:, 0, :] = np.clip(mocap[:, 0, :], self.mocap_low, self.mocap_high)
        self.mocap_pos[:n] = mocap
        self.mocap_quat[:n] = _MOCAP_QUAT
        self.ctrl[:n, 0] = actions[:, -1]
        self.ctrl[:n, 1] = -actions[:, -1]
        self.batch.step(self.rows, nstep=self.frame_skip, stage=mujoco.mjtStage.mjSTAGE_POS)
        ids = self.ids
        xpos = self.xpos[:n]
        claws = row_norm(xpos[:, ids["rightclaw"]] - xpos[:, ids["leftclaw"]])
        quat = quat_from_matrix(self.geom_xmat[:n, self.obj_geom].reshape(n, 3, 3))
        frame = np.concatenate([xpos[:, ids["hand"]], np.clip(claws / 0.1, 0.0, 1.0)[:, None],
                                xpos[:, ids["obj"]], quat, np.zeros((n, 7))], axis=1)
        observation = np.clip(np.concatenate([frame, self.previous, self.goal], axis=1),
                              self.low, self.high)
        self.previous = frame
        tcp = (self.site_xpos[:n, self.fingers[0]] + self.site_xpos[:n, self.fingers[1]]) / 2.0
        reward, success = self._reward(_State(tcp, observation, xpos[:, ids["leftpad"]],
                                              xpos[:, ids["rightpad"]], actions,
                                              self.constants))
        return observation, np.asarray(reward, dtype=np.float64), success


class MetaWorldBatchSimulator:
    """``n_sims`` Meta-World simulations (reach, push or pick-place) stepped together.

    ``reset(seeds, tasks)`` -> observations (n_sims, 39) float64, one Meta-World task each;
    ``step(actions)`` -> (observations, rewards (n_sims,) float64), and sets ``last_success``
    (n_sims,) bool, each simulation's ``info["success"]``. ``resets``: a ``SkillResets`` per
    skill the tasks may name (shared by the simulators of a task). ``nthread``: each Batch's
    threads (0: all cores); results do not depend on it. As Meta-World's environments, it
    refuses a step past their ``max_path_length``.
    """

    takes_tasks = True

    def __init__(self, resets: dict[str, SkillResets], n_sims: int, nthread: int = 0):
        self.resets = resets
        self.n_sims = n_sims
        self.nthread = nthread
        self.skills: dict[str, _SkillBatch] = {}
        self.groups: list[tuple[_SkillBatch, np.ndarray]] = []
        self.max_path_length = min(r.env.max_path_length for r in resets.values())
        self.path_length = 0
        self.last_success = np.zeros(n_sims, dtype=bool)

    def reset(self, seeds: np.ndarray, tasks: list[Any]) -> np.ndarray:
        if len(tasks) != self.n_sims or np.shape(seeds) != (self.n_sims,):
            raise ParameterError(f"one seed and one task per simulation: expected "
                                 f"{self.n_sims}, got {np.shape(seeds)} and {len(tasks)}")
        names = [task.env_name for task in tasks]
        unknown = sorted(set(names) - set(self.resets))
        if unknown:
            check_skills(unknown)
            raise ParameterError(f"this simulator has no environment for {', '.join(unknown)} "
                                 f"(it has {', '.join(self.resets)})")
        observations = np.empty((self.n_sims, 2 * _FRAME + 3))
        self.groups = []
        for name in dict.fromkeys(names):
            rows = np.flatnonzero(np.array(names) == name)
            if name not in self.skills:
                self.skills[name] = _SkillBatch(self.resets[name], self.n_sims, self.nthread)
            skill = self.skills[name]
            observations[rows] = skill.reset([tasks[i] for i in rows])
            self.groups.append((skill, rows))
        self.path_length = 0
        self.last_success = np.zeros(self.n_sims, dtype=bool)
        return observations

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if np.shape(actions) != (self.n_sims, 4):
            raise ParameterError(f"actions must be ({self.n_sims}, 4), got {np.shape(actions)}")
        if not self.groups:
            raise UnsupportedError("reset the simulator before stepping it")
        if self.path_length >= self.max_path_length:
            raise UnsupportedError(f"Meta-World episodes end after {self.max_path_length} "
                                   f"steps: reset before stepping again")
        observations = np.empty((self.n_sims, 2 * _FRAME + 3))
        rewards = np.empty(self.n_sims)
        success = np.empty(self.n_sims, dtype=bool)
        single = len(self.groups) == 1
        for skill, rows in self.groups:
            observations[rows], rewards[rows], success[rows] = skill.step(
                actions if single else actions[rows])
        self.path_length += 1
        self.last_success = success
        return observations, rewards

    def close(self) -> None:
        self.skills.clear()
