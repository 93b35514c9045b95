"""robobrain's MuJoCo manipulation tasks, registered with Gymnasium.

``import robobrain.envs`` registers ``robobrain/Reach-v0``, ``robobrain/Push-v0`` and
``robobrain/PickPlace-v0``::

    env = gymnasium.make("robobrain/Push-v0", image_size=64)

Headless rendering: set ``MUJOCO_GL=egl`` (or ``osmesa``) before MuJoCo is first imported. When it is
unset and no display is available, this module picks ``egl``. It also defaults ``LP_NUM_THREADS=0``:
Mesa's software rasterizer then renders on the calling thread, which is 1.5-2x faster for small
images and keeps rendering fork-safe (with its worker threads, a vector env forked after the parent
rendered deadlocks in the child).
"""

from __future__ import annotations

import gymnasium as gym  # the parent package robobrain has set the rendering defaults by now

from robobrain.envs.factory import get_expert, get_state_layout, make_env, make_vector_env, render_side
from robobrain.envs.wrappers import PixelObservation, resize_image

EPISODE_STEPS = 50

TASKS = {
    "robobrain/Reach-v0": "robobrain.envs.reach:ReachEnv",
    "robobrain/Push-v0": "robobrain.envs.push:PushEnv",
    "robobrain/PickPlace-v0": "robobrain.envs.pick_place:PickPlaceEnv",
}


def register_envs() -> None:
    """Register every robobrain task with Gymnasium (idempotent)."""
    for env_id, entry_point in TASKS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=EPISODE_STEPS)


register_envs()

__all__ = [
    "EPISODE_STEPS",
    "TASKS",
    "PixelObservation",
    "get_expert",
    "get_state_layout",
    "make_env",
    "make_vector_env",
    "register_envs",
    "render_side",
    "resize_image",
]
