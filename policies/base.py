"""The Policy protocol every controller in robobrain satisfies."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

Observation = dict[str, np.ndarray]
"""Batched observation: ``{"pixels": uint8[N, H, W, 3], "state": float32[N, n]}``."""


@runtime_checkable
class Policy(Protocol):
    """Acts for N environments at once.

    ``reset(num_envs)`` starts new episodes in all envs, ``reset(num_envs, mask)`` only in those
    where ``mask`` [N] is True; ``act(obs)`` returns actions [N, A] in the env's action bounds.
    """

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None: ...

    def act(self, obs: Observation) -> np.ndarray: ...


def batch_size(obs: Observation) -> int:
    """N, the number of environments in a batched observation."""
    return len(next(iter(obs.values())))
