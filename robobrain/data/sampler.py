"""Fixed-length windows from stored episodes, never crossing an episode boundary (an episode shorter
than a window gives one that is padded past its end, and masked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from robobrain.config import is_int
from robobrain.data.store import Episode


class SequenceBatch(NamedTuple):
    """A batch of B windows of L steps from within single episodes.

    pixels: uint8[B, L, H, W, 3] -- o_t .. o_{t+L-1}
    state: float32[B, L, n]
    action: float32[B, L, A] -- a_t taken after o_t
    reward: float32[B, L] -- reward for a_t
    success: bool[B, L] -- success after a_t
    terminal: bool[B, L] -- the episode ended in a terminal state after a_t (its last action, when
        the env terminated it; never after a time limit)
    valid: bool[B, L] -- o_t is one of the episode's observations, not padding past its final one

    Nothing in a window follows its last action, so the loss never reads the last action, reward,
    success or terminal flag; in a window that ends on the episode's final observation they are zero
    padding. A window of an episode shorter than a window runs past its final observation: there
    ``valid`` is False, the final observation and state are repeated and the rest is zeros, and the
    loss reads none of it (nor the transitions into it).
    """

    pixels: np.ndarray
    state: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    success: np.ndarray
    terminal: np.ndarray
    valid: np.ndarray


class SequenceSampler:
    """Samples windows uniformly over all valid start positions of all episodes.

    An episode of T steps (T + 1 observations) offers ``T - L + 2`` windows of L observations, the
    last ending on its final observation, so every transition is trained on. One with fewer than L
    observations offers one window from its start, padded past its end and masked (``valid``): an
    env whose episodes end early on a fall (InvertedPendulum's random ones last ~6 steps) is trained
    on whole, falls included, under the presets' windows.
    """

    def __init__(self, episodes: Sequence[Episode], seq_len: int, seed: int | None = None) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.rng = np.random.default_rng(seed)
        self.set_episodes(episodes)

    def set_episodes(self, episodes: Sequence[Episode]) -> None:
        """Sample from these episodes from now on (the online loop adds new ones); the RNG carries on."""
        self.episodes = list(episodes)
        shapes = {(ep.pixels.shape[1:], ep.state.shape[1:], ep.action.shape[1:]) for ep in self.episodes}
        if len(shapes) > 1:  # (a batch stacks windows of several episodes)
            raise ValueError(
                f"episodes of different shapes per step (pixels, state, action): {sorted(shapes)}; "
                "train on one env's episodes"
            )
        seq_len = self.seq_len
        if not self.episodes:
            raise ValueError("no episodes to sample windows from")
        counts = np.array([max(len(ep) - seq_len + 2, 1) for ep in self.episodes], dtype=np.int64)
        self.num_padded = int(sum(len(ep) + 1 < seq_len for ep in self.episodes))
        """Episodes shorter than a window: sampled as one window from their start, padded and masked."""
        self._cum = np.cumsum(counts)

    @property
    def num_windows(self) -> int:
        return int(self._cum[-1])

    def sample(self, batch_size: int) -> SequenceBatch:
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")  # (numpy's, from stack)
        flat = self.rng.integers(0, self.num_windows, size=batch_size)
        ep_idx = np.searchsorted(self._cum, flat, side="right")
        starts = flat - np.concatenate([[0], self._cum[:-1]])[ep_idx]
        return self._gather(ep_idx, starts)  # (valid by construction)

    def gather(self, ep_idx: np.ndarray, starts: np.ndarray) -> SequenceBatch:
        """Windows at explicit (episode index, start step) pairs: ``ep_idx`` and ``starts`` [B], B >= 1,
        each start in [0, max(T - L + 1, 0)] for its episode of T steps (a window past it came back
        empty)."""
        ep_idx, starts = np.atleast_1d(ep_idx), np.atleast_1d(starts)
        if len(ep_idx) != len(starts) or len(starts) == 0:
            raise ValueError(f"ep_idx and starts must be [B >= 1] alike, got {len(ep_idx)} and {len(starts)}")
        eps = [self.episodes[i] for i in ep_idx]
        for i, ep, s in zip(ep_idx, eps, starts, strict=True):
            if not 0 <= s <= max(len(ep) - self.seq_len + 1, 0):
                raise ValueError(
                    f"start {s} of episode {i} ({len(ep)} steps): windows of {self.seq_len} observations "
                    f"start in [0, {max(len(ep) - self.seq_len + 1, 0)}]"
                )
        return self._gather(ep_idx, starts)

    def _gather(self, ep_idx: np.ndarray, starts: np.ndarray) -> SequenceBatch:
        eps = [self.episodes[i] for i in ep_idx]
        seq_len = self.seq_len
        frames = [np.arange(s, s + seq_len) for s in starts]
        # Observations read: a slice (no copy before the stack), or past a short episode's final
        # observation that one repeated (masked).
        held = [
            slice(s, s + seq_len) if s + seq_len <= len(ep) + 1 else np.minimum(f, len(ep))
            for ep, s, f in zip(eps, starts, frames, strict=True)
        ]

        def steps(name: str) -> np.ndarray:
            """Per-step arrays [B, L, ...]; zeros past the episode's last action."""
            out = []
            for ep, s in zip(eps, starts, strict=True):
                a = getattr(ep, name)[s : s + seq_len]
                if len(a) < seq_len:
                    a = np.concatenate([a, np.zeros((seq_len - len(a), *a.shape[1:]), a.dtype)])
                out.append(a)
            return np.stack(out)

        return SequenceBatch(
            pixels=np.stack([ep.pixels[f] for ep, f in zip(eps, held, strict=True)]),
            state=np.stack([ep.state[f] for ep, f in zip(eps, held, strict=True)]),
            action=steps("action"),
            reward=steps("reward"),
            success=steps("success"),
            terminal=np.stack([_terminal(ep, s, seq_len) for ep, s in zip(eps, starts, strict=True)]),
            valid=np.stack([f <= len(ep) for ep, f in zip(eps, frames, strict=True)]),
        )


def _terminal(episode: Episode, start: int, seq_len: int) -> np.ndarray:
    """bool[L]: whether the episode ended in a terminal state after each action of the window."""
    out = np.zeros(seq_len, dtype=bool)
    last = len(episode) - 1 - start  # (the index of the episode's last action in the window)
    if episode.terminated and 0 <= last < seq_len:  # (< 0: the window holds no action of it)
        out[last] = True
    return out
