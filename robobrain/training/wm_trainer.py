"""Offline world-model training on an EpisodeStore, with exact resume."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from robobrain.checkpoint import (
    CONFIG_FILE,
    Checkpoint,
    CheckpointError,
    check_trained_env,
    exclusive_run,
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    load_weights,
    restoring,
    save_checkpoint,
    set_cuda_rng_states,
)
from robobrain.config import PresetConfig, WMTrainConfig, WorldModelConfig, from_dict, to_dict
from robobrain.data import Episode, EpisodeStore, SequenceBatch, SequenceSampler
from robobrain.data.store import atomic_write_json
from robobrain.training.logging import MetricLogger
from robobrain.world_model import WorldModel
from robobrain.world_model.networks import num_conv_layers

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or gradients too many times in a row."""


def with_kept_checkpoint(error: NonFiniteLossError, run_dir: Path) -> NonFiniteLossError:
    """``error``, saying which checkpoint of the run at ``run_dir`` is left (what followed it is lost)."""
    kept = latest_checkpoint(run_dir)
    note = f"the run's checkpoint before it, {kept}" if kept else "no checkpoint of the run"
    return NonFiniteLossError(f"{error}. Kept: {note} (a resume repeats the same steps)")


def split_episodes(store: EpisodeStore, holdout_fraction: float) -> tuple[list[Episode], list[Episode]]:
    """(train, held-out) episodes. Episode number k (``episode_<k>.npz``) is held out when
    ``k % round(1 / holdout_fraction)`` is the period's last, so the held-out set spans every
    collection the store holds and does not shift when a file is unreadable or removed (``eval-wm``
    recomputes it later)."""
    items = list(store.episodes())
    if not items:
        inner = store.root / "episodes"  # (a `robobrain train` run's directory, given for its store)
        hint = f" (a train run's episodes are in {inner})" if inner.is_dir() else ""
        raise ValueError(f"{store.root}: no readable episodes{hint}")
    episodes = [ep for _, ep in items]
    if holdout_fraction <= 0 or len(episodes) < 2:
        return episodes, []
    period = max(2, round(1 / holdout_fraction))
    held = {i for i, (name, _) in enumerate(items) if _episode_number(name, i) % period == period - 1}
    names = store.names()  # (readable or not)
    if max(_episode_number(n, i) for i, n in enumerate(names)) < period - 1:
        # fewer episodes than the period: the store's last file (none while it is unreadable). Not when
        # the period's last is unreadable: the last file was then a training episode, held out later.
        held = {i for i, (name, _) in enumerate(items) if name == names[-1]}
    return [ep for i, ep in enumerate(episodes) if i not in held], [episodes[i] for i in sorted(held)]


def _episode_number(name: str, default: int) -> int:
    digits = "".join(c for c in Path(name).stem if c.isdigit())
    return int(digits) if digits else default


def batch_to_torch(batch: SequenceBatch, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {
        "pixels": torch.from_numpy(batch.pixels).to(device),
        "state": torch.from_numpy(batch.state).to(device),
        "action": torch.from_numpy(batch.action).to(device),
        "reward": torch.from_numpy(batch.reward).to(device),
        "success": torch.from_numpy(batch.success).to(device),
        "terminal": torch.from_numpy(batch.terminal).to(device),
        "valid": torch.from_numpy(batch.valid).to(device),
    }


def sized_config(
    cfg: WorldModelConfig, episodes: Sequence[Episode], source: str = "the data"
) -> WorldModelConfig:
    """``cfg`` with action_dim, image_size, state_dim (when state decoding is on) and the goal's place
    in the state vector (when ``use_goal`` and the data's env names a ``goal`` in its state layout)
    taken from the data (the first of ``episodes``, all of one env), and a termination head (when
    ``use_termination``) if any of them ended in a terminal state. ``source``: where the episodes
    are from, for errors."""
    from robobrain.envs import get_state_layout

    if not episodes:
        raise ValueError("no episodes to size the world model by")
    episode = episodes[0]
    env_id = episode.meta.get("env_id")
    if cfg.use_goal and env_id is None:
        warnings.warn(
            "the data's episodes name no env_id in their meta, so the goal's place in the state is "
            "unknown: the world model is trained without goal conditioning (collect with "
            "`robobrain collect` or collect_episodes on registered envs, which record it, or pass "
            "meta={'env_id': ...})",
            stacklevel=2,
        )
    layout = get_state_layout(env_id) or {}
    goal = layout.get("goal") if cfg.use_goal else None
    if goal is not None and goal.stop > episode.state.shape[-1]:
        raise ValueError(
            f"{episode.meta.get('env_id')}: the goal sits at state[{goal.start}:{goal.stop}], but the "
            f"data's state vectors have {episode.state.shape[-1]} entries"
        )
    check_frame_side(int(episode.pixels.shape[1]), f"{source}: its frames")
    proprio = proprio_slice(layout) if cfg.use_proprio else None
    if cfg.use_proprio and proprio is None:
        warnings.warn(
            f"{env_id}: its state layout names no gripper_pos / gripper_vel / finger, so the world "
            "model is trained on pixels without proprioception",
            stacklevel=2,
        )
    sized = {
        "action_dim": episode.action.shape[-1],
        "image_size": episode.pixels.shape[1],
        "state_dim": episode.state.shape[-1] if cfg.state_weight > 0 else 0,
        "goal_start": goal.start if goal is not None else 0,
        "goal_dim": goal.stop - goal.start if goal is not None else 0,
        "proprio_start": proprio.start if proprio is not None else 0,
        "proprio_dim": proprio.stop - proprio.start if proprio is not None else 0,
        "termination": cfg.termination or (cfg.use_termination and any(ep.terminated for ep in episodes)),
    }
    if any(getattr(cfg, k) != v for k, v in sized.items()):
        log.info("world model sized to the data: %s", sized)
        cfg = dataclasses.replace(cfg, **sized)
    return cfg


def check_frame_side(side: int, what: str) -> None:
    """Refuse frames of ``side`` px that no world model takes (a power of two >= 16), naming ``what``
    they are: the model's build said only "image_size ... got 48", after a run had collected."""
    try:
        num_conv_layers(side)
    except ValueError:
        raise ValueError(
            f"{what} are {side} px: a world model needs a power of two >= 16 (collect them with "
            "--image-size 64, say)"
        ) from None


def data_mismatch(cfg: WorldModelConfig, episode: Episode) -> dict[str, tuple[int, int]]:
    """What of a model of ``cfg`` the ``episode``'s kind of data cannot feed, as {what: (the model's,
    the data's)}: another action size or frame size, another state size where the model predicts
    the state, a goal or proprioception slice past the end of the state vectors. Only the data
    decides: which of the heads and inputs a model has is its settings' business."""
    n = episode.state.shape[-1]
    data = {"action_dim": episode.action.shape[-1], "image_size": episode.pixels.shape[1]}
    if cfg.state_dim:
        data["state_dim"] = n
    diff = {k: (getattr(cfg, k), v) for k, v in data.items() if getattr(cfg, k) != v}
    for part in ("goal", "proprio"):
        stop = getattr(cfg, f"{part}_start") + getattr(cfg, f"{part}_dim")
        if getattr(cfg, f"{part}_dim") and stop > n:
            diff[f"{part} end in the state"] = (stop, n)
    return diff


PROPRIO_KEYS = ("gripper_pos", "gripper_vel", "finger")
"""The parts of a robobrain state layout that are the robot's own state (proprioception)."""


def proprio_slice(layout: dict[str, slice]) -> slice | None:
    """The contiguous slice of the state vector holding ``PROPRIO_KEYS`` (None without them)."""
    parts = [layout[k] for k in PROPRIO_KEYS if k in layout]
    if not parts:
        return None
    start, stop = min(p.start for p in parts), max(p.stop for p in parts)
    if sum(p.stop - p.start for p in parts) != stop - start:
        raise ValueError(f"the proprioceptive parts of the state layout are not contiguous: {layout}")
    return slice(start, stop)


def state_stats(episodes: list[Episode], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std [n] of the state vectors of ``episodes`` (summed in float64: the
    squares of float32 states above ~1e19 overflow float32)."""
    states = np.concatenate([ep.state for ep in episodes]).astype(np.float64)
    return (
        torch.as_tensor(states.mean(0), dtype=torch.float32, device=device),
        torch.as_tensor(states.std(0), dtype=torch.float32, device=device),
    )


def model_config_from_checkpoint(
    config: dict[str, Any], where: str | os.PathLike[str] = ""
) -> WorldModelConfig:
    """The world-model config of a checkpoint's ``config.json`` (``where``: its directory, named
    in the error when it is not one)."""
    try:
        return from_dict(WorldModelConfig, config["world_model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(where) / CONFIG_FILE}: not a world-model config ({e})") from e


def train_config_from_checkpoint(config: dict[str, Any], where: str | os.PathLike[str] = "") -> WMTrainConfig:
    """The training config a checkpoint's ``config.json`` records (the defaults where it has none)."""
    try:
        return from_dict(WMTrainConfig, config.get("train", {}))
    except (TypeError, ValueError) as e:  # (from_dict: a TypeError for what is no JSON object)
        raise CheckpointError(f"{Path(where) / CONFIG_FILE}: not a training config ({e})") from e


def load_world_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> WorldModel:
    """A trained WorldModel from a checkpoint or run directory, in eval mode."""
    return world_model_from_checkpoint(load_checkpoint(path, with_training_state=False), device)


def world_model_from_checkpoint(ckpt: Checkpoint, device: torch.device | str = "cpu") -> WorldModel:
    """The WorldModel of a checkpoint already read (a caller that needs its config too reads it once:
    the weights once, and a run's ``latest`` resolved once), in eval mode."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():  # (torch: AssertionError)
        raise ValueError(f"device {device}: this torch ({torch.__version__}) sees no CUDA device")
    cfg = model_config_from_checkpoint(ckpt.config, ckpt.path)
    try:
        model = WorldModel(cfg)
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. a size written as a string, or negative
        where = ckpt.path / CONFIG_FILE
        raise CheckpointError(f"{where}: a world-model config that cannot be built ({e})") from e
    load_weights(model, ckpt)
    return model.to(device).eval()


def lr_schedule(cfg: WMTrainConfig, step: int, total_steps: int | None) -> float:
    """Learning rate of the update that starts at ``step`` (0-based) of a ``total_steps`` run:
    constant, then a linear decay over the last ``cfg.lr_decay`` share (never exactly zero);
    constant throughout when ``total_steps`` is None or ``cfg.lr_decay`` is 0."""
    if total_steps is None or cfg.lr_decay <= 0:
        return cfg.lr
    decay_steps = max(1, round(cfg.lr_decay * total_steps))
    left = total_steps - step
    return cfg.lr * min(1.0, max(left, 1) / decay_steps)


class WorldModelTrainer:
    """One optimizer, one sampler, one model; ``train_step`` skips (and counts) non-finite steps.

    ``total_steps`` is the length of the run the learning-rate schedule (``cfg.lr_decay``) spans;
    None keeps the rate constant (the online loop's open-ended refits).
    """

    def __init__(
        self,
        model: WorldModel,
        cfg: WMTrainConfig,
        sampler: SequenceSampler,
        device: torch.device | str,
        total_steps: int | None = None,
    ) -> None:
        if sampler is not None and sampler.seq_len < 2:  # (WorldModel.loss learns from transitions)
            raise ValueError(f"training windows need seq_len >= 2, got {sampler.seq_len}")
        self.model = model
        self.cfg = cfg
        self.sampler = sampler
        self.device = torch.device(device)
        self.total_steps = total_steps
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.nonfinite_total = 0
        self._nonfinite_run = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of the update that starts at ``step`` (see :func:`lr_schedule`)."""
        return lr_schedule(self.cfg, step, self.total_steps)

    def train_step(self) -> dict[str, float] | None:
        """One gradient step. Returns metrics, or None when the step was skipped as non-finite."""
        self.model.train()
        batch = batch_to_torch(self.sampler.sample(self.cfg.batch_size), self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss, metrics = self.model.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        ok = bool(torch.isfinite(loss))
        if ok:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            ok = bool(torch.isfinite(grad_norm))
            metrics["grad_norm"] = float(grad_norm)
        self.step += 1
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self._nonfinite_run += 1
            log.warning("step %d: non-finite loss or gradient; skipped", self.step)
            if self._nonfinite_run >= self.cfg.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self._nonfinite_run} consecutive non-finite losses/gradients up to step {self.step} "
                    f"(last metrics {metrics}); check the data and the learning rate"
                )
            return None
        self._nonfinite_run = 0
        lr = self.lr_at(self.step - 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        metrics["lr"] = lr
        self.optimizer.step()
        return metrics

    def training_state(self) -> dict[str, Any]:
        state = {
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_run": self._nonfinite_run,
            "schedule_steps": self.total_steps,
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state().tolist(),
        }
        if torch.cuda.is_initialized():  # (a CPU run on a GPU host starts no CUDA context for this)
            state["cuda_rng"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
        return state

    def restore(self, step: int, state: dict[str, Any], optimizer_state: dict[str, Any] | None) -> None:
        """Go on from a checkpoint's ``step``, training state and optimizer state; ``ValueError`` for
        what no run writes (the caller makes it a ``CheckpointError``: :func:`restoring`)."""
        if step < 0:
            raise ValueError(f"step {step} < 0")
        if optimizer_state is None:  # (state.json without its "optimizer" went on with fresh AdamW moments)
            raise ValueError("state.json names no optimizer state")
        self.step = step
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self._nonfinite_run = int(state.get("nonfinite_run", 0))
        saved = state.get("schedule_steps")
        if self.cfg.lr_decay > 0 and saved is not None and saved != self.total_steps:
            log.warning(
                "the learning-rate schedule was laid over %s steps and now over %s: "
                "the resumed run is not the run an uninterrupted command would have made",
                saved,
                self.total_steps,
            )
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        if "cuda_rng" in state and torch.cuda.is_available():
            set_cuda_rng_states(state["cuda_rng"])
        self.optimizer.load_state_dict(optimizer_state)
        for param, saved in self.optimizer.state.items():  # (torch checks none: the first step failed)
            for name, value in saved.items():
                if not torch.is_tensor(value):
                    continue
                if value.dim() and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer {name} of shape {list(value.shape)} for a parameter of shape "
                        f"{list(param.shape)}"
                    )
                # (a NaN moment made the first step's weights NaN, saved as the next checkpoint)
                if not torch.isfinite(value).all() or (name == "exp_avg_sq" and (value < 0).any()):
                    raise ValueError(f"optimizer {name} holds NaN, inf or (a second moment) negative values")


#: The config fields `robobrain train-wm` sets by flags: a resume with others is refused. The rest come
#: from the preset, whose values may change between robobrain versions: a run goes on with its own.
_FLAG_FIELDS = {
    "world_model": {"open_loop_horizon", "use_proprio", "keypoints", "use_termination"},
    "train": {"seed"},
}


def train_world_model(
    data_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    preset: PresetConfig,
    steps: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    max_minutes: float | None = None,
    preset_name: str | None = None,
) -> dict[str, float]:
    """Train (or resume training) until ``steps`` gradient steps, or until ``max_minutes`` of wall
    clock in this call (then it checkpoints and returns); returns the last metrics. ``preset_name``
    (``robobrain train-wm --preset``) is recorded, and named when a resume's configs differ.

    Re-running with the same run directory resumes from ``checkpoints/latest``: weights, optimizer,
    sampler and torch RNG states and counters are restored, so the result equals an uninterrupted run.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if max_minutes is not None and not max_minutes > 0:  # (NaN never ran out; <= 0 saved an untrained model)
        raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
    with exclusive_run(run_dir, "train-wm") as held:
        return _train_world_model(data_dir, held, preset, steps, device, progress, max_minutes, preset_name)


def _train_world_model(
    data_dir: str | os.PathLike[str],
    run_dir: Path,
    preset: PresetConfig,
    steps: int,
    device: torch.device | str,
    progress: bool,
    max_minutes: float | None,
    preset_name: str | None,
) -> dict[str, float]:
    cfg, tcfg = preset.world_model, preset.train
    store = EpisodeStore(data_dir, create=False)
    train_eps, _ = split_episodes(store, tcfg.holdout_fraction)
    cfg = sized_config(cfg, train_eps, f"--data {data_dir}")
    config = {"world_model": to_dict(cfg), "train": to_dict(tcfg), "data": str(Path(data_dir).resolve()),
              "env_id": train_eps[0].meta.get("env_id")}  # fmt: skip
    if preset_name is not None:
        config["preset"] = preset_name

    ckpt = load_latest(run_dir)
    if ckpt is not None:  # (checked, and its settings adopted, before the model is built from them)
        latest = ckpt.path
        if "online" in ckpt.config:  # (it failed at the state: "no sampler_rng, torch_rng")
            raise CheckpointError(
                f"{run_dir} is a `robobrain train` run, not a train-wm one; re-run `robobrain train` to "
                "go on with it, or pass another --run-dir"
            )
        check_trained_env(ckpt.config, config["env_id"], latest)  # (before the configs: it says more)
        was = ckpt.config.get("preset")
        if was is not None and preset_name is not None and was != preset_name:
            raise CheckpointError(
                f"{latest / 'config.json'}: the run was started with --preset {was}, not {preset_name}; "
                f"to resume it, pass --preset {was}; for another preset, use a new --run-dir"
            )
        data_was = ckpt.config.get("data")
        # (recorded absolute; an older run's relative path is read from where it is resumed)
        if data_was is not None and Path(data_was).resolve() != Path(data_dir).resolve():
            log.warning(
                "%s was trained on %s until now; it goes on with %s (for a model of that data alone, "
                "use a new --run-dir)", run_dir, data_was, data_dir,
            )  # fmt: skip
        for key, cls in (("world_model", WorldModelConfig), ("train", WMTrainConfig)):
            # Through the dataclass, so a field added since the run started takes the default that
            # keeps the behaviour the run had (e.g. lr_decay 0).
            try:
                saved = to_dict(from_dict(cls, ckpt.config.get(key, {})))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{latest / 'config.json'}: not a {key} config ({e})") from e
            if key == "world_model":  # (a head is kept, or not, as the run started: see online's)
                config[key]["termination"] = saved["termination"]
            data_diff = data_mismatch(from_dict(cls, saved), train_eps[0]) if key == "world_model" else {}
            if data_diff:  # (it was taken for the preset's drift, and failed later)
                raise CheckpointError(
                    f"{data_dir}: its episodes are not of the kind {run_dir} trained on (the run's vs the "
                    f"data's: {data_diff}); to go on, pass data like it; for a model of this data, use a "
                    "new --run-dir"
                )
            diff = {k: (saved.get(k), v) for k, v in config[key].items() if saved.get(k) != v}
            # Resumed by `train-wm --preset P` (another P than the run's was refused above; a run from
            # before the name was recorded has none): what no flag sets goes on as the run had it.
            drift = preset_name is not None
            if diff and (not drift or any(k in _FLAG_FIELDS[key] for k in diff)):
                raise CheckpointError(
                    f"{latest / 'config.json'}: the run was started with another {key} config "
                    f"(checkpoint vs now: {diff}); to resume it, pass the flags it was started "
                    f"with (--preset, --open-loop-horizon, --proprio, --keypoints, --no-termination, "
                    f"--seed set these; its config.json); for another config, use a new --run-dir"
                )
            if diff:  # the preset's values in this robobrain, or fields added since the run started
                log.warning(
                    "%s trains on with the %s settings it started with; the preset's now differ (the "
                    "run's vs the preset's): %s", latest, key, diff,
                )  # fmt: skip
                config[key] = saved
        cfg, resumed_tcfg = (
            from_dict(WorldModelConfig, config["world_model"]),
            from_dict(WMTrainConfig, config["train"]),
        )
        if resumed_tcfg.holdout_fraction != tcfg.holdout_fraction:
            train_eps, _ = split_episodes(store, resumed_tcfg.holdout_fraction)
        tcfg = resumed_tcfg

    torch.manual_seed(tcfg.seed)
    model = WorldModel(cfg).to(device)
    if model.uses_state_stats:
        model.set_state_stats(*state_stats(train_eps, device))
    sampler = SequenceSampler(train_eps, tcfg.seq_len, seed=tcfg.seed)
    if sampler.num_padded:
        log.info(
            "%d of the %d training episodes are shorter than a training window (%d observations): "
            "each is one window, padded past its end and masked",
            sampler.num_padded, len(train_eps), tcfg.seq_len,
        )  # fmt: skip
    trainer = WorldModelTrainer(model, tcfg, sampler, device, total_steps=steps)

    if ckpt is not None:
        load_weights(model, ckpt)
        state = ckpt.require("step", "sampler_rng", "torch_rng")
        with restoring(ckpt.path):
            trainer.restore(int(state["step"]), state, ckpt.optimizer_state)
        log.info("resumed from %s at step %d", latest, trainer.step)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config)

    logger = MetricLogger(run_dir, "train_wm")
    logger.truncate_after(trainer.step)  # a resumed run re-does the steps after its checkpoint
    metrics: dict[str, float] = {}
    if trainer.step >= steps:
        log.warning("%s is at step %d already, --steps is %d: nothing to train (raise --steps to go on)",
                    run_dir, trainer.step, steps)  # fmt: skip
    window: list[dict[str, float]] = []
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    # A budget stops a run after one step at least (at step 0 it saved the untrained model as latest).
    first_step = trainer.step

    def log_window() -> None:
        nonlocal metrics, window
        # (a window whose every step was skipped as non-finite has no losses: NaN, not the last row's)
        keys = window[-1] if window else [k for k in metrics if k != "nonfinite_total"]
        metrics = {k: float(np.mean([m[k] for m in window])) if window else float("nan") for k in keys}
        metrics["nonfinite_total"] = trainer.nonfinite_total
        logger.log(trainer.step, metrics)
        bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.1f}")
        window = []

    try:
        with tqdm(total=steps, initial=trainer.step, desc="train-wm", disable=not progress) as bar:
            while trainer.step < steps:
                out_of_time = (
                    deadline is not None and trainer.step > first_step and time.monotonic() >= deadline
                )
                if out_of_time:
                    log.info("time budget of %g min reached at step %d", max_minutes, trainer.step)
                    if window:  # (the steps since the last row: a resumed run logs only those after)
                        log_window()
                    save_checkpoint(
                        run_dir, trainer.step, model, config, trainer.optimizer, trainer.training_state()
                    )
                    break
                out = trainer.train_step()
                bar.update(1)
                if out is not None:
                    window.append(out)
                if trainer.step % tcfg.log_every == 0 or trainer.step == steps:
                    log_window()
                if trainer.step % tcfg.checkpoint_every == 0 or trainer.step == steps:
                    save_checkpoint(
                        run_dir, trainer.step, model, config, trainer.optimizer, trainer.training_state()
                    )
    except NonFiniteLossError as e:
        raise with_kept_checkpoint(e, run_dir) from None
    finally:
        logger.close()
    return metrics
