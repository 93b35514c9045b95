"""Hallucination check: replay a plan the world model imagined in the true simulator and measure how
far the imagined frames and rewards drifted from what really happens."""

from __future__ import annotations

from typing import Any, NamedTuple

import mujoco
import numpy as np
import torch

from robobrain.training.wm_eval import psnr


class Replay(NamedTuple):
    """What really happens under a plan: frames uint8[H, S, S, 3], reward [H], state [H, n]."""

    frames: np.ndarray
    reward: np.ndarray
    state: np.ndarray


def replay_in_simulator(env: Any, actions: np.ndarray) -> Replay:
    """Step a robobrain task through ``actions`` [H, A] from its current state, then restore it.

    The env is left exactly as it was (physics state and its last rendered frame); its episode
    counters are not touched.
    """
    raw = getattr(env, "unwrapped", env)
    # All of mjData, derived quantities and the solver's warm start included (a state restored and
    # re-derived with mj_forward differs from them by one substep), and the frame rendered from it.
    saved = mujoco.MjData(raw.model)
    mujoco.mj_copyData(saved, raw.model, raw.data)
    frame = raw._frame
    frames, rewards, states = [], [], []
    try:
        for a in actions:
            obs, reward, *_ = raw.step(a)
            frames.append(obs["pixels"])
            rewards.append(reward)
            states.append(obs["state"])
    finally:
        mujoco.mj_copyData(raw.data, raw.model, saved)
        raw._frame = frame
    return Replay(np.stack(frames), np.asarray(rewards, dtype=np.float32), np.stack(states))


def hallucination_check(policy: Any, envs: list[Any], index: int) -> dict[str, Any]:
    """Compare the last plan of env ``index`` (imagined by a world-model MPC policy) with its replay.

    Returns per horizon step [H]: ``psnr`` of imagined vs real frames, ``reward_abs_error`` and
    ``reward_bias`` (imagined minus real: positive when the model is optimistic about the plan it
    chose, the mark of a planner exploiting model errors). For a model with a state head and an env
    with a ``state_layout``, ``state_error`` maps each part of the state (``block_pos``, ...) to the
    Euclidean distance [H] between the state decoded from the imagined latent and the real one.
    """
    rollout = policy.imagine_plan()
    imagined = rollout.pixels[index].cpu()
    real = replay_in_simulator(envs[index], policy.planned_actions()[index])
    if imagined.shape[1:] != real.frames.shape[1:]:
        raise ValueError(
            f"imagined frames {tuple(imagined.shape)} and real frames {real.frames.shape} differ in size"
        )
    bias = rollout.reward[index].float().cpu().numpy() - real.reward
    out: dict[str, Any] = {
        "psnr": psnr(imagined, torch.from_numpy(real.frames)).tolist(),
        "reward_abs_error": np.abs(bias).tolist(),
        "reward_bias": bias.tolist(),
    }
    model = getattr(policy, "model", None)
    layout = getattr(getattr(envs[index], "unwrapped", envs[index]), "state_layout", None)
    if model is not None and model.state_head is not None and layout:
        with torch.no_grad():
            decoded = model.decode_state(rollout.feat[index]).float().cpu().numpy()
        if decoded.shape[-1] == real.state.shape[-1]:
            out["state_error"] = {
                name: np.linalg.norm(decoded[:, sl] - real.state[:, sl], axis=-1).tolist()
                for name, sl in layout.items()
            }
    return out
