"""Policies behind one protocol: random, scripted experts (later: MPC and SB3)."""

from __future__ import annotations

import gymnasium as gym

from robobrain.policies.base import Observation, Policy, batch_size
from robobrain.policies.simple import RandomPolicy, ScriptedPolicy

POLICY_SPECS = ("random", "scripted")


def load_policy(
    spec: str, env_id: str, action_space: gym.spaces.Box, seed: int | None = None, **kwargs: float
) -> Policy:
    """Build a policy from a spec string for an env.

    spec: ``random`` | ``scripted``. kwargs go to the policy (``noise_std`` for scripted).
    """
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(f"robobrain policies drive 1-D Box action spaces, got {action_space}")
    if spec == "random":
        return RandomPolicy(action_space.shape[0], seed=seed, low=action_space.low, high=action_space.high)
    if spec == "scripted":
        from robobrain.envs import get_expert

        return ScriptedPolicy(get_expert(env_id), seed=seed, **kwargs)
    raise ValueError(f"unknown policy spec {spec!r}; expected one of {', '.join(POLICY_SPECS)}")


__all__ = [
    "POLICY_SPECS",
    "Observation",
    "Policy",
    "RandomPolicy",
    "ScriptedPolicy",
    "batch_size",
    "load_policy",
]
