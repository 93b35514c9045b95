"""Policies that need no learning: uniform random and a task's scripted expert."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from robobrain.policies.base import Observation, batch_size


class RandomPolicy:
    """Uniform actions in [low, high]^A, seeded."""

    def __init__(
        self,
        action_dim: int,
        seed: int | None = None,
        low: float | np.ndarray = -1.0,
        high: float | np.ndarray = 1.0,
    ) -> None:
        self.action_dim = action_dim
        self.low, self.high = low, high
        self.rng = np.random.default_rng(seed)

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        pass

    def act(self, obs: Observation) -> np.ndarray:
        n = batch_size(obs)
        return self.rng.uniform(self.low, self.high, (n, self.action_dim)).astype(np.float32)


class ScriptedPolicy:
    """A task's scripted expert reading ``obs["state"]``, with optional Gaussian action noise
    (for collecting diverse data). Actions are clipped to [-1, 1]."""

    def __init__(
        self,
        expert: Callable[[np.ndarray], np.ndarray],
        noise_std: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.expert = expert
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        pass

    def act(self, obs: Observation) -> np.ndarray:
        if "state" not in obs:
            raise ValueError("ScriptedPolicy needs obs['state']")
        action = np.asarray(self.expert(np.asarray(obs["state"])), dtype=np.float64)
        if self.noise_std > 0:
            action = action + self.rng.normal(0.0, self.noise_std, action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
