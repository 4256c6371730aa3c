"""Gymnasium environments of metarl_bench, registered under the ``metarl_bench/``
namespace when ``metarl_bench`` is imported (entry points are imported lazily, so MuJoCo is
loaded only when a MuJoCo environment is made)."""

from __future__ import annotations

#: Gymnasium id -> (entry point, max_episode_steps).
GYMNASIUM_ENVS = {
    "metarl_bench/HalfCheetahVel-v0": (
        "metarl_bench._src.envs.locomotion:HalfCheetahVelEnv", 200),
    "metarl_bench/HalfCheetahDir-v0": (
        "metarl_bench._src.envs.locomotion:HalfCheetahDirEnv", 200),
    "metarl_bench/AntDir-v0": ("metarl_bench._src.envs.locomotion:AntDirEnv", 200),
}


def register_gymnasium_envs() -> None:
    """Register every environment of ``GYMNASIUM_ENVS`` that Gymnasium does not know yet."""
    import gymnasium

    for env_id, (entry_point, max_episode_steps) in GYMNASIUM_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=entry_point,
                               max_episode_steps=max_episode_steps)
