"""Evaluate any policy on any env: per-episode seeds, success with a Wilson interval, returns,
decision latency; ``eval_info.json`` and mp4 videos (real | imagined for world-model MPC).

K envs run side by side and the policy acts for all of them in one batched call. Episode i is reset
with seed ``seed + i``, so the same command gives the same json (latency aside).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from robobrain.data.store import atomic_write_json, remove_dead_temporaries

log = logging.getLogger(__name__)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges (not 3e-17 off)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` created if needed; a path that cannot be a directory is a ``ValueError``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission, a read-only disk
        raise ValueError(f"cannot write the evaluation to {out}: {e.strerror} ({e.filename})") from e
    return out


def _check_actions(actions: Any, num_envs: int, space: gym.spaces.Box | gym.spaces.Discrete) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):  # action indices [K]
        a = np.asarray(actions)
        if a.shape != (num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(
                f"policy returned actions {a.dtype}{list(a.shape)}, expected int[{num_envs}] for {space}"
            )
        if not np.all((a >= space.start) & (a < space.start + space.n)):
            raise ValueError(f"policy returned actions {a.tolist()} outside {space}")
        return a
    a = np.asarray(actions, dtype=np.float32)
    if a.shape != (num_envs, *space.shape):
        raise ValueError(f"policy returned actions of shape {a.shape}, expected {(num_envs, *space.shape)}")
    if not np.all(np.isfinite(a)):
        raise ValueError("policy returned NaN or inf actions")
    return a


def evaluate_policy(
    policy: Any,
    envs: list[gym.Env],
    episodes: int,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    video_episodes: int = 2,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    hallucination_every: int = 10,
) -> dict[str, Any]:
    """Run ``episodes`` episodes over the K ``envs``; returns (and writes) the report.

    For a world-model MPC policy on robobrain tasks, every ``hallucination_every`` decisions the plan
    chosen for env 0 is replayed in the true simulator and the drift of its imagined frames (PSNR) and
    rewards is reported under ``hallucination`` (0 turns this off). The first ``video_episodes`` are
    written as mp4 under ``out_dir/videos`` (none, and none recorded, without ``out_dir``).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if isinstance(envs, gym.vector.VectorEnv):
        raise ValueError(
            "evaluate_policy takes a list of single envs (it resets each episode with its own seed), "
            "not a vector env: e.g. [robobrain.envs.make_env(env_id) for _ in range(k)]"
        )
    envs = list(envs)[:episodes]  # a slot that would never start an episode has no observation
    out = None if out_dir is None else prepare_out_dir(out_dir)  # before the episodes, not after them
    k = len(envs)
    space = envs[0].action_space
    if not isinstance(space, gym.spaces.Box | gym.spaces.Discrete):
        raise ValueError(f"robobrain policies drive Box and Discrete action spaces, got {space}")
    next_episode = 0
    slot_episode = [-1] * k
    slot_return = [0.0] * k
    slot_len = [0] * k
    slot_latency: list[list[float]] = [[] for _ in range(k)]
    frames: dict[int, list[np.ndarray]] = {}
    results: list[dict[str, Any]] = []
    latencies: list[float] = []
    obs_slots: list[dict[str, np.ndarray]] = [{}] * k
    active = np.zeros(k, dtype=bool)
    has_imagination = hasattr(policy, "imagined_frames")
    can_replay = hasattr(policy, "imagine_plan") and hasattr(getattr(envs[0], "unwrapped", envs[0]), "scene")
    drift: list[dict[str, list[float]]] = []

    def start(i: int) -> None:
        nonlocal next_episode
        ep = next_episode
        next_episode += 1
        obs, _ = envs[i].reset(seed=seed + ep)
        if not (isinstance(obs, dict) and "pixels" in obs):
            kind = type(obs).__name__
            raise ValueError(
                f"env {i} observes a {kind}, not robobrain's dict of pixels and state: make it with "
                "robobrain.envs.make_env (or wrap it in robobrain.envs.PixelObservation)"
            )
        obs_slots[i] = obs
        slot_episode[i], slot_return[i], slot_len[i], slot_latency[i] = ep, 0.0, 0, []
        active[i] = True
        # (from the reset frame; no imagined one beside it yet. Without out_dir, none: nowhere to write)
        if out is not None and ep < video_episodes:
            first = obs["pixels"]
            frames[ep] = [np.concatenate([first, np.zeros_like(first)], axis=1) if has_imagination else first]

    for i in range(min(k, episodes)):
        start(i)
    policy.reset(k)
    bar = tqdm(total=episodes, desc="eval", unit="ep", disable=not progress)
    while active.any():
        batch = {key: np.stack([o[key] for o in obs_slots]) for key in obs_slots[int(np.argmax(active))]}
        t0 = time.perf_counter()
        actions = _check_actions(policy.act(batch), k, space)
        latency = time.perf_counter() - t0
        latencies.append(latency)
        recording = any(slot_episode[i] in frames for i in np.flatnonzero(active))
        imagined = policy.imagined_frames(steps=1) if has_imagination and recording else None
        check_due = hallucination_every > 0 and (len(latencies) - 1) % hallucination_every == 0
        if can_replay and check_due and active[0]:
            from robobrain.hallucination import hallucination_check

            drift.append(hallucination_check(policy, envs, 0))
        restart = np.zeros(k, dtype=bool)
        for i in np.flatnonzero(active):
            obs, reward, terminated, truncated, info = envs[i].step(actions[i])
            obs_slots[i] = obs
            slot_return[i] += float(reward)
            slot_len[i] += 1
            slot_latency[i].append(latency)
            ep = slot_episode[i]
            if ep in frames:
                real = obs["pixels"]
                if imagined is not None:
                    pred = imagined[i, 0]
                    if pred.shape != real.shape:
                        pred = np.zeros_like(real)
                    real = np.concatenate([real, pred], axis=1)
                frames[ep].append(real)
            if terminated or truncated:
                results.append(
                    {
                        "episode": ep,
                        "seed": seed + ep,
                        "success": bool(info["success"]) if "success" in info else None,
                        "return": slot_return[i],
                        "length": slot_len[i],
                        "latency_ms": 1e3 * float(np.mean(slot_latency[i])),
                        # (a robobrain task ends an episode whose physics blew up, truncated)
                        "sim_unstable": bool(info.get("sim_unstable", False)),
                    }
                )
                bar.update(1)
                active[i] = False
                if next_episode < episodes:
                    start(i)
                    restart[i] = True
        if restart.any():
            policy.reset(k, mask=restart)
    bar.close()

    results.sort(key=lambda r: r["episode"])
    # An env without info["success"] (Pendulum, ...) has no success rate: null, not 0.
    has_success = all(r["success"] is not None for r in results)
    n_success = sum(bool(r["success"]) for r in results)
    lo, hi = wilson_interval(n_success, len(results))
    lat = np.array(latencies) * 1e3
    report = {
        **(meta or {}),
        "num_envs": k,
        "seed": seed,
        "episodes": results,
        "summary": {
            "episodes": len(results),
            "success_rate": n_success / max(len(results), 1) if has_success else None,
            "success_ci95": [lo, hi] if has_success else None,
            "mean_return": float(np.mean([r["return"] for r in results])),
            "mean_length": float(np.mean([r["length"] for r in results])),
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "sim_unstable_episodes": sum(r["sim_unstable"] for r in results),
        },
    }
    if report["summary"]["sim_unstable_episodes"]:
        log.warning(
            "%d of %d episodes ended because the simulation blew up (sim_unstable in the report)",
            report["summary"]["sim_unstable_episodes"], len(results),
        )  # fmt: skip
    if drift:
        report["hallucination"] = {
            "checks": len(drift),
            "psnr_per_step": np.mean([d["psnr"] for d in drift], axis=0).tolist(),
            "reward_abs_error_per_step": np.mean([d["reward_abs_error"] for d in drift], axis=0).tolist(),
            "reward_bias_per_step": np.mean([d["reward_bias"] for d in drift], axis=0).tolist(),
        }
        if all("state_error" in d for d in drift):
            report["hallucination"]["state_error_per_step"] = {
                name: np.mean([d["state_error"][name] for d in drift], axis=0).tolist()
                for name in drift[0]["state_error"]
            }
    if out is not None:
        for folder in (out, out / "videos"):  # (what a killed evaluation left half-written)
            remove_dead_temporaries(folder)
        atomic_write_json(out / "eval_info.json", report)
        for old in (out / "videos").glob("episode_*.mp4"):  # an earlier evaluation's, not this report's
            old.unlink()
        if frames:
            from robobrain.video import write_video

            for ep, fr in frames.items():
                if fr:
                    write_video(out / "videos" / f"episode_{ep:03d}_seed{seed + ep}.mp4", np.stack(fr))
    return report
