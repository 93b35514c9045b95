"""Video-prediction evaluation of a world model on held-out episodes.

Open-loop k-step prediction from a context window, PSNR and SSIM per horizon step, against two
baselines computed on the same windows: copy-last-frame, and the same model fed the actions of another
episode ("shuffled actions"; a model that ignores its actions is useless for planning). Plus reward
correlation and success accuracy of the open-loop predictions, and, for a model that decodes the env
state, how far the state decoded from its latent is from the true one (is the goal / the block in the
latent at all?).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robobrain.data import Episode, reports_success
from robobrain.world_model import WorldModel

log = logging.getLogger(__name__)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8 images [..., H, W, 3] -> [...]; an exact image scores 100 dB
    (the MSE is floored at 1e-10)."""
    mse = (pred.float() / 255 - target.float() / 255).square().mean((-3, -2, -1))
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, per channel, averaged) of uint8 [..., H, W, 3]."""
    lead = pred.shape[:-3]
    x = pred.reshape(-1, *pred.shape[-3:]).permute(0, 3, 1, 2).float() / 255
    y = target.reshape(-1, *target.shape[-3:]).permute(0, 3, 1, 2).float() / 255
    size = min(11, x.shape[-1])
    w = _gaussian_window(size).to(x.device).expand(3, 1, size, size)

    def filt(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, w, groups=3)

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean((-3, -2, -1)).reshape(lead)


def make_windows(
    episodes: list[Episode],
    context: int,
    horizon: int,
    max_windows: int,
    seed: int = 0,
    pad_short: bool = False,
) -> dict[str, np.ndarray]:
    """Context + future windows from whole episodes.

    Returns ctx_pixels [N, C, S, S, 3], ctx_actions [N, C, A] (action *before* each context frame,
    zeros at an episode start), actions [N, K, A] (taken from the last context frame on),
    future [N, K, S, S, 3], reward [N, K], success [N, K], ctx_states [N, C, n] (env state at each
    context frame), ctx_state [N, n] (the last of them), future_state [N, K, n], valid [N, K] (the
    future frame exists), terminal [N, K] (the future frame is the final one of an episode the env
    terminated: a fall, not a time limit), episode [N] (the index of the window's episode in
    ``episodes``).

    Every window of an episode with at least C + K observations lies inside it (valid all True). With
    ``pad_short``, an episode too short for one (but holding the C context frames and a future one)
    gives the window from its start, padded past its final observation as the training sampler pads
    it: ``valid`` is False there, the final frame and state repeat, actions, rewards and success are
    zero. A caller that reads the padding must mask it with ``valid``.
    """
    picks = []
    for e, ep in enumerate(episodes):
        starts = range(0, len(ep) - context - horizon + 2)
        if not starts and pad_short and len(ep) >= context:
            starts = range(1)
        picks += [(e, t0) for t0 in starts]
    if not picks:
        shortest = "" if pad_short else f" + horizon {horizon}"
        raise ValueError(f"no episode is long enough for context {context}{shortest}")
    rng = np.random.default_rng(seed)
    if len(picks) > max_windows:
        picks = [picks[i] for i in sorted(rng.choice(len(picks), max_windows, replace=False))]
    keys = ("ctx_pixels", "ctx_actions", "actions", "future", "reward", "success", "ctx_states")
    out: dict[str, list[np.ndarray]] = {k: [] for k in (*keys, "future_state", "valid", "terminal")}
    for e, t0 in picks:
        ep = episodes[e]
        last = t0 + context - 1
        real = min(horizon, len(ep) - last)  # future frames that exist (all K but for a short episode)
        fut = slice(last + 1, last + 1 + real)
        prev = np.concatenate([ep.action[t0 - 1 : t0] if t0 > 0 else np.zeros_like(ep.action[:1]),
                               ep.action[t0:last]])  # fmt: skip
        out["ctx_pixels"].append(ep.pixels[t0 : last + 1])
        out["ctx_actions"].append(prev)
        out["ctx_states"].append(ep.state[t0 : last + 1])
        out["actions"].append(_pad(ep.action[last : last + real], horizon, "constant"))
        out["reward"].append(_pad(ep.reward[last : last + real], horizon, "constant"))
        out["success"].append(_pad(ep.success[last : last + real], horizon, "constant"))
        out["future"].append(_pad(ep.pixels[fut], horizon, "edge"))
        out["future_state"].append(_pad(ep.state[fut], horizon, "edge"))
        out["valid"].append(np.arange(horizon) < real)
        out["terminal"].append((np.arange(horizon) == real - 1) & (ep.terminated and last + real == len(ep)))
    windows = {k: np.stack(v) for k, v in out.items()}
    windows["ctx_state"] = windows["ctx_states"][:, -1]
    windows["episode"] = np.array([e for e, _ in picks], dtype=np.int64)
    return windows


def _pad(x: np.ndarray, length: int, mode: str) -> np.ndarray:
    """``x`` [T, ...] padded at its end to [length, ...] (``mode``: numpy's "constant" zeros or
    "edge" repeats of the last row); unchanged (not copied) when already that long."""
    if len(x) == length:
        return x
    return np.pad(x, [(0, length - len(x))] + [(0, 0)] * (x.ndim - 1), mode=mode)


def other_episode_partners(
    episode: np.ndarray, seed: int = 0, length: np.ndarray | None = None
) -> np.ndarray:
    """For each window, a random window of another episode, whose actions the shuffled-actions
    baseline feeds it: [N] indices. (Neighbouring windows mostly share an episode, so their actions are
    the window's own, a few steps late.) With one episode only, the window half the list away.
    ``length`` [N] (each window's real future steps): the partner reaches at least as far where
    another episode's window does, so that no real frame is imagined under a partner's padding."""
    rng = np.random.default_rng(seed)
    n = len(episode)
    partners = np.empty(n, dtype=np.int64)
    for i in range(n):
        others = episode != episode[i]
        if length is not None and (others & (length >= length[i])).any():
            others &= length >= length[i]
        others = np.flatnonzero(others)
        partners[i] = rng.choice(others) if len(others) else (i + n // 2) % n
    return partners


@torch.no_grad()
def predict(model: WorldModel, windows: dict[str, np.ndarray], actions: np.ndarray, batch: int = 64) -> dict:
    """Open-loop predictions for every window with the given future actions [N, K, A]: pixels,
    reward, success_logit, terminal_logit (a model with a termination head) and, when the model
    decodes the env state, state_post [N, n] (decoded from the filtered state at the last context
    frame) and state [N, K, n] (decoded from the imagined ones)."""
    dev = model.device
    frames, rewards, success, terminal, post_states, states = [], [], [], [], [], []
    for i in range(0, len(actions), batch):
        sl = slice(i, i + batch)
        state = model.observe(
            torch.from_numpy(windows["ctx_pixels"][sl]).to(dev),
            torch.from_numpy(windows["ctx_actions"][sl]).to(dev),
            # read for the goal (goal-conditioned) and the robot's own state (proprioception) only
            env_state=torch.from_numpy(windows["ctx_states"][sl]).to(dev),
        )
        last_frame = torch.from_numpy(windows["ctx_pixels"][sl, -1]).to(dev)
        out = model.imagine(
            state, torch.from_numpy(actions[sl]).float().to(dev), decode=True, reference=last_frame
        )
        frames.append(out.pixels.cpu())
        rewards.append(out.reward.float().cpu())
        success.append(out.success_logit.float().cpu())
        if out.terminal_logit is not None:
            terminal.append(out.terminal_logit.float().cpu())
        if model.state_head is not None:
            post_states.append(model.decode_state(state.feat).float().cpu())
            states.append(model.decode_state(out.feat).float().cpu())
    result = {"pixels": torch.cat(frames), "reward": torch.cat(rewards), "success_logit": torch.cat(success)}
    if terminal:
        result["terminal_logit"] = torch.cat(terminal)
    if states:
        result |= {"state_post": torch.cat(post_states), "state": torch.cat(states)}
    bad = [k for k, v in result.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # (NaN predictions scored as a plausible report: reward_corr 0, success_acc 1)
        raise ValueError(f"the world model predicts NaN or inf ({', '.join(bad)}): are its weights finite?")
    return result


def state_errors(
    pred: torch.Tensor, true: torch.Tensor, layout: Mapping[str, slice] | None
) -> dict[str, float]:
    """Median Euclidean error of each named part of the env state (in the state's units, metres for
    positions). pred, true: [N, n]; without a layout the whole vector is one part."""
    parts = dict(layout) if layout else {"state": slice(0, true.shape[-1])}
    return {name: float((pred[:, sl] - true[:, sl]).norm(dim=-1).median()) for name, sl in parts.items()}


def reward_correlation(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Pearson correlation of predicted and true rewards [M]: NaN when the true rewards are constant
    (nothing to predict), 0 when the predictions are (they tell nothing; an untrained two-hot head
    predicts exactly 0 everywhere)."""
    if not true.std() > 0:
        return float("nan")
    if not pred.std() > 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([pred, true]))[0, 1])


def termination_report(logit: torch.Tensor, terminal: torch.Tensor, valid: torch.Tensor) -> dict[str, Any]:
    """How well predicted ends (logit > 0) match the true ones, over the frames that exist.
    logit, terminal, valid: [N, K]. ``recall``: the share of true ends predicted (None without any
    true end); ``false_alarms``: the share of other frames predicted as an end."""
    predicted = (logit > 0)[valid]
    truth = terminal[valid]
    ends = int(truth.sum())
    return {
        "true_ends": ends,
        "recall": float(predicted[truth].float().mean()) if ends else None,
        "false_alarms": float(predicted[~truth].float().mean()) if (~truth).any() else None,
    }


def evaluate_world_model(
    model: WorldModel,
    episodes: list[Episode],
    context: int = 5,
    horizon: int = 10,
    max_windows: int = 256,
    seed: int = 0,
    video_path: str | os.PathLike[str] | None = None,
    state_layout: Mapping[str, slice] | None = None,
) -> dict[str, Any]:
    """The report: per-step PSNR/SSIM of the model and both baselines, reward correlation,
    success accuracy and, for a model that decodes the env state, the median error of each part of
    the state (``state_layout``: name -> slice) decoded from the filtered context and after the last
    imagined step. Writes real | predicted | difference as an mp4 when ``video_path`` is given.

    PSNR is averaged over windows per step, so an exact frame's 100 dB weighs in: copy-last is exact
    wherever nothing moved (a scripted Reach episode standing on its goal), and
    ``copy_last_frame["exact_share"]`` gives the share of such windows per step. ``reward_corr`` is
    None (JSON null) when the true rewards are constant.

    Episodes too short for a whole window (an env that ends episodes early, e.g. on a fall) are
    evaluated from their start up to their end (``make_windows(pad_short=True)``): every figure reads
    only the frames that exist (None at a step no window reaches), and ``windows_per_step`` says over
    how many windows each step is averaged. For a model with a termination head, ``termination``
    reports how many true ends (a terminated episode's final frame) it predicts (logit > 0, the mode
    the planner imagines with) and how often it predicts an end where there is none. A short
    episode's end comes at any step of its window, a long one's only at the last step of its last
    window (when that is drawn): with both, ``recall`` mixes ends foreseen from near and far."""
    for name, value in (("context", context), ("horizon", horizon), ("max_windows", max_windows)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    model.eval()
    w = make_windows(episodes, context, horizon, max_windows, seed, pad_short=True)
    n = len(w["actions"])
    future = torch.from_numpy(w["future"])
    valid = torch.from_numpy(w["valid"])
    pred = predict(model, w, w["actions"])
    partners = other_episode_partners(w["episode"], seed, length=w["valid"].sum(1))
    shuffled = predict(model, w, w["actions"][partners])
    copy_last = torch.from_numpy(w["ctx_pixels"][:, -1:]).expand_as(future)
    count = valid.sum(0)

    def step_mean(x: torch.Tensor) -> list[float | None]:
        """[N, K] -> per-step mean over the windows that reach the step."""
        mean = (x.float() * valid).sum(0) / count.clamp(min=1)
        return [float(m) if c else None for m, c in zip(mean, count, strict=True)]

    def per_step(frames: torch.Tensor) -> dict[str, list[float | None]]:
        return {"psnr": step_mean(psnr(frames, future)), "ssim": step_mean(ssim(frames, future))}

    true_r = torch.from_numpy(w["reward"])[valid]
    pred_r = pred["reward"][valid]
    corr = reward_correlation(pred_r, true_r)
    corr_or_none = corr if math.isfinite(corr) else None  # (strict JSON has no NaN)
    true_s = torch.from_numpy(w["success"])[valid]
    success_acc: float | None = float(((pred["success_logit"][valid] > 0) == true_s).float().mean())
    success_rate: float | None = float(w["success"][w["valid"]].mean())
    if not any(reports_success(ep.meta) for ep in episodes):  # (flags all False: eval's null)
        success_acc = success_rate = None
    report: dict[str, Any] = {
        "windows": n,
        "episodes": len(episodes),
        "context": context,
        "horizon": horizon,
        "windows_per_step": count.tolist(),
        "model": per_step(pred["pixels"]),
        "copy_last_frame": {
            **per_step(copy_last),
            "exact_share": step_mean((copy_last == future).flatten(-3).all(-1)),
        },
        "shuffled_actions": per_step(shuffled["pixels"]),
        "shuffled_from_other_episodes": float((w["episode"][partners] != w["episode"]).mean()),
        "reward_corr": corr_or_none,
        "reward_mae": float((pred_r - true_r).abs().mean()),
        "success_acc": success_acc,
        "success_rate_in_data": success_rate,
    }
    k = horizon - 1
    if not count[k]:
        fits = max(len(ep) for ep in episodes) - context + 1  # (frames T + 1: context, then the horizon)
        log.warning(
            "no episode lasts the %d steps of the horizon after its %d context frames: the figures at "
            "step %d are null; pass --horizon %d or less (the longest episode's, %d steps, less the context)",
            horizon, context, horizon, fits, fits + context - 1,
        )  # fmt: skip
    report["summary"] = {
        f"psnr@{horizon}": report["model"]["psnr"][k],
        f"psnr@{horizon}_copy_last": report["copy_last_frame"]["psnr"][k],
        f"psnr@{horizon}_shuffled": report["shuffled_actions"]["psnr"][k],
        f"ssim@{horizon}": report["model"]["ssim"][k],
        "reward_corr": corr_or_none,
        "success_acc": success_acc,
    }
    if "terminal_logit" in pred:
        report["termination"] = termination_report(
            pred["terminal_logit"], torch.from_numpy(w["terminal"]), valid
        )
        report["summary"]["termination_recall"] = report["termination"]["recall"]
    if "state" in pred:
        report["state_error"] = {
            "filtered": state_errors(pred["state_post"], torch.from_numpy(w["ctx_state"]), state_layout)
        }
        reach = valid[:, k]  # (the windows whose episode lasts the whole horizon)
        report["state_error"][f"imagined@{horizon}"] = (
            state_errors(
                pred["state"][:, k][reach], torch.from_numpy(w["future_state"][:, k])[reach], state_layout
            )
            if reach.any()
            else None
        )
        report["summary"]["state_error_filtered"] = report["state_error"]["filtered"]
    if video_path is not None:
        from robobrain.video import write_video

        shown = valid[:8, :, None, None, None]  # (past a short episode's end: black)
        real, fake = future[:8] * shown, pred["pixels"][:8] * shown
        diff = (real.int() - fake.int()).abs().clamp(0, 255).to(torch.uint8)
        side = torch.cat([real, fake, diff], dim=-2)  # [n, K, S, 3S, 3]
        write_video(Path(video_path), side.flatten(0, 1).numpy(), fps=5)
    return report
