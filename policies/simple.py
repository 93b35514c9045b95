"""Policies that need no learning: uniform random and a task's scripted expert."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from robobrain.policies.base import Observation, batch_size, policy_rng, reset_mask


class RandomPolicy:
    """Uniform actions in [low, high]^A, seeded."""

    def __init__(
        self,
        action_dim: int,
        seed: int | None = None,
        low: float | np.ndarray = -1.0,
        high: float | np.ndarray = 1.0,
    ) -> None:
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(np.less(low, high))):
            raise ValueError(f"random actions need finite bounds with low < high, got [{low}, {high}]")
        self.action_dim = action_dim
        self.low, self.high = low, high
        self.rng = policy_rng(seed)

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        pass

    def act(self, obs: Observation) -> np.ndarray:
        n = batch_size(obs)
        return self.rng.uniform(self.low, self.high, (n, self.action_dim)).astype(np.float32)


class DiscreteRandomPolicy:
    """Uniform actions of a ``Discrete(n, start)`` space, seeded: ``act`` returns int64 [N]."""

    def __init__(self, n: int, seed: int | None = None, start: int = 0) -> None:
        if n < 1:
            raise ValueError(f"a Discrete space has n >= 1 actions, got {n}")
        self.n, self.start = int(n), int(start)
        self.rng = policy_rng(seed)

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        pass

    def act(self, obs: Observation) -> np.ndarray:
        return self.rng.integers(self.start, self.start + self.n, batch_size(obs), dtype=np.int64)


class ScriptedPolicy:
    """A task's scripted expert reading ``obs["state"]``, with optional Gaussian action noise
    (for collecting diverse data). Actions are clipped to [-1, 1].

    ``decoy_goal_prob`` > 0 makes "play" data for world models: in that share of episodes (drawn per
    env at each reset) the expert is shown a decoy goal instead of the true one -- x, y uniform in
    [-decoy_range, decoy_range], the other coordinates kept -- so it pushes or carries the object
    somewhere else. Without it, every object motion in the data heads for the goal and a
    goal-conditioned model learns that objects drift toward the goal on their own, which a planner
    then exploits. ``goal_slice`` is where the goal sits in the state (the env's state layout).
    """

    def __init__(
        self,
        expert: Callable[[np.ndarray], np.ndarray],
        noise_std: float = 0.0,
        seed: int | None = None,
        decoy_goal_prob: float = 0.0,
        goal_slice: slice | None = None,
        decoy_range: float = 0.18,
    ) -> None:
        if not (np.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
        if not 0.0 <= decoy_goal_prob <= 1.0:
            raise ValueError(f"decoy_goal_prob must be in [0, 1], got {decoy_goal_prob}")
        if decoy_goal_prob > 0 and goal_slice is None:
            raise ValueError("decoy goals need goal_slice: the env's state layout has no 'goal'")
        self.expert = expert
        self.noise_std = noise_std
        self.decoy_goal_prob = decoy_goal_prob
        self.goal_slice = goal_slice
        self.decoy_range = decoy_range
        self.rng = policy_rng(seed)
        self.decoy: np.ndarray | None = None
        """[N, 2] decoy goal x, y per env; NaN where the env's episode uses its true goal."""

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        mask = reset_mask(mask, num_envs)
        if self.decoy_goal_prob == 0:
            return
        fresh = self._draw_decoys(num_envs)
        if self.decoy is None or mask is None or len(self.decoy) != num_envs:
            self.decoy = fresh
        else:
            self.decoy[mask] = fresh[mask]

    def _draw_decoys(self, n: int) -> np.ndarray:
        xy = self.rng.uniform(-self.decoy_range, self.decoy_range, (n, 2))
        xy[self.rng.uniform(size=n) >= self.decoy_goal_prob] = np.nan
        return xy

    def act(self, obs: Observation) -> np.ndarray:
        if "state" not in obs:
            raise ValueError("ScriptedPolicy needs obs['state']")
        batch_size(obs)  # (one env's state [n] failed inside the expert)
        state = np.asarray(obs["state"])
        if self.decoy_goal_prob > 0:
            if self.decoy is None or len(self.decoy) != len(state):
                self.reset(len(state))
            assert self.decoy is not None and self.goal_slice is not None
            use = ~np.isnan(self.decoy[:, 0])
            goal_xy = slice(self.goal_slice.start, self.goal_slice.start + 2)
            state = state.copy()
            state[np.flatnonzero(use), goal_xy] = self.decoy[use]
        action = np.asarray(self.expert(state), dtype=np.float64)
        if self.noise_std > 0:
            action = action + self.rng.normal(0.0, self.noise_std, action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
