"""Hallucination check: replay a plan the world model imagined in the true simulator and measure how
far the imagined frames and rewards drifted from what really happens."""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
import torch

from robobrain.training.wm_eval import psnr


def replay_in_simulator(env: Any, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step a robobrain task through ``actions`` [H, A] from its current state, then restore it.

    Returns the real frames uint8[H, S, S, 3] and rewards [H]. The env is left exactly as it was
    (physics state and its last rendered frame); its episode counters are not touched.
    """
    raw = getattr(env, "unwrapped", env)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    saved = np.empty(mujoco.mj_stateSize(raw.model, spec))
    mujoco.mj_getState(raw.model, raw.data, saved, spec)
    ctrl = raw.data.ctrl.copy()
    frames, rewards = [], []
    try:
        for a in actions:
            obs, reward, *_ = raw.step(a)
            frames.append(obs["pixels"])
            rewards.append(reward)
    finally:
        mujoco.mj_setState(raw.model, raw.data, saved, spec)
        raw.data.ctrl[:] = ctrl
        mujoco.mj_forward(raw.model, raw.data)
        raw._warnings = raw._warning_counts()
        raw._frame = raw._render_pixels()
    return np.stack(frames), np.asarray(rewards, dtype=np.float32)


def hallucination_check(policy: Any, envs: list[Any], index: int) -> dict[str, list[float]]:
    """Compare the last plan of env ``index`` (imagined by a world-model MPC policy) with its replay.

    Returns per horizon step: ``psnr`` of imagined vs real frames and ``reward_abs_error``.
    """
    rollout = policy.imagine_plan()
    imagined = rollout.pixels[index].cpu()
    real, real_reward = replay_in_simulator(envs[index], policy.planned_actions()[index])
    if imagined.shape[1:] != real.shape[1:]:
        raise ValueError(
            f"imagined frames {tuple(imagined.shape)} and real frames {real.shape} differ in size"
        )
    return {
        "psnr": psnr(imagined, torch.from_numpy(real)).tolist(),
        "reward_abs_error": np.abs(rollout.reward[index].float().cpu().numpy() - real_reward).tolist(),
    }
