"""The default factories of the online loop (``robobrain train``): robobrain/Gymnasium envs, random or
scripted seed policies, and world-model MPC guided by the SB3 actor-critic."""

from __future__ import annotations

import gymnasium as gym

from robobrain.planning import MPCConfig
from robobrain.policies.mpc import WorldModelMPCPolicy
from robobrain.policies.simple import RandomPolicy, ScriptedPolicy
from robobrain.rl.guide import ActorCriticGuide
from robobrain.training.online import LoopFactories
from robobrain.world_model import WorldModel


def online_factories(
    env_id: str, image_size: int, device: str = "cpu", episode_steps: int | None = None
) -> LoopFactories:
    """Factories for ``env_id`` at ``image_size`` pixels, planning on ``device``; ``episode_steps``
    overrides the env's time limit."""
    import robobrain.envs as envs

    def make_seed_policy(kind: str, space: gym.spaces.Box, seed: int) -> RandomPolicy | ScriptedPolicy:
        if kind == "scripted":
            return ScriptedPolicy(envs.get_expert(env_id), noise_std=0.3, seed=seed)
        return RandomPolicy(space.shape[0], seed=seed, low=space.low, high=space.high)

    def make_planner(
        model: WorldModel, cfg: MPCConfig, guide: ActorCriticGuide | None
    ) -> WorldModelMPCPolicy:
        return WorldModelMPCPolicy(model, cfg, device, guide=guide)

    return LoopFactories(
        make_envs=lambda n: envs.make_vector_env(env_id, n, image_size, max_episode_steps=episode_steps),
        make_eval_envs=lambda n: [
            envs.make_env(env_id, image_size, max_episode_steps=episode_steps) for _ in range(n)
        ],
        make_seed_policy=make_seed_policy,
        make_planner=make_planner,
    )
