"""Gymnasium environments of the metarl_bench task families, registered under the
``metarl_bench/`` namespace when ``metarl_bench`` is imported:

    import gymnasium, metarl_bench
    env = gymnasium.make("metarl_bench/Navigation2D-v0")

Each implements the meta-task protocol of ``meta.MetaTaskEnv`` (``sample_tasks``,
``set_task``, ``get_task``). The batched torch samplers of the metarl_bench tasks are tested
against these environments stepped with the same actions.
"""

from __future__ import annotations

from metarl_bench._src.tasks.envs.meta import MetaTaskEnv, set_tasks

#: Gymnasium id -> (entry point, max_episode_steps). Append here to register more.
GYMNASIUM_ENVS: dict[str, tuple[str, int]] = {
    "metarl_bench/Navigation2D-v0": ("metarl_bench._src.tasks.envs.navigation:Navigation2DEnv", 100),
    # the lq-navigation-v0 task's default horizon
    "metarl_bench/LQNavigation-v0": ("metarl_bench._src.tasks.envs.lq:LQNavigationEnv", 5),
    # MuJoCo, MAML's horizon of 200 steps; their module imports mujoco only when one is made
    "metarl_bench/HalfCheetahVel-v0": (
        "metarl_bench._src.tasks.envs.locomotion:HalfCheetahVelEnv", 200),
    "metarl_bench/HalfCheetahDir-v0": (
        "metarl_bench._src.tasks.envs.locomotion:HalfCheetahDirEnv", 200),
    "metarl_bench/AntDir-v0": ("metarl_bench._src.tasks.envs.locomotion:AntDirEnv", 200),
}


def register_gymnasium_envs() -> None:
    """Register every environment of ``GYMNASIUM_ENVS`` once (entry points load lazily)."""
    import gymnasium

    for env_id, (entry_point, max_episode_steps) in GYMNASIUM_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point,
                               max_episode_steps=max_episode_steps)


__all__ = ["GYMNASIUM_ENVS", "MetaTaskEnv", "register_gymnasium_envs", "set_tasks"]
