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
    where ``mask`` [N] is True; ``act(obs)`` returns actions [N, A] in the env's action bounds
    (for a ``Discrete`` space: int64 indices [N]).
    """

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None: ...

    def act(self, obs: Observation) -> np.ndarray: ...


_LEAST_DIMS = {"pixels": 4, "state": 2}
"""The dims of a batched observation's parts: pixels [N, H, W, 3], state [N, n]."""


def batch_size(obs: Observation) -> int:
    """N, the number of environments in a batched observation. One env's observation as a single
    env returns it (pixels [H, W, 3]) is refused: it was read as H envs, or failed deep inside."""
    sizes = {}
    for key, value in obs.items():
        shape = np.shape(value)
        if len(shape) < _LEAST_DIMS.get(key, 1):
            raise ValueError(
                f"policies act on batched observations, got obs[{key!r}] of shape {tuple(shape)}: for one "
                "env, add the batch axis ({k: v[None] for k, v in obs.items()})"
            )
        sizes[key] = shape[0]
    if not sizes or len(set(sizes.values())) > 1:
        raise ValueError(f"a batched observation's parts must share their first dim N, got {sizes}")
    return next(iter(sizes.values()))


def reset_mask(mask: np.ndarray | None, num_envs: int) -> np.ndarray | None:
    """``reset``'s ``mask`` [num_envs] as a bool array (0/1 read as False/True: as indices, [0, 0, 1]
    reset envs 0 and 1); another shape is a ``ValueError``."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != (num_envs,):
        raise ValueError(f"mask must be a bool [{num_envs}] array, got shape {list(m.shape)}")
    return m.astype(bool)


def policy_rng(seed: int | None) -> np.random.Generator:
    """The generator of a policy seeded with ``seed``: not ``default_rng(seed)``, which is the very
    stream Gymnasium gives an env reset with ``seed`` -- env 0 of a collection or an evaluation is --
    so a random policy's first actions were functions of that env's initial state (InvertedPendulum:
    300x its joint offsets) and the scripted policy's first decoy goal sat 1.2x the block's start."""
    return np.random.default_rng(None if seed is None else [seed, 0x706F6C])
