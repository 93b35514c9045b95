"""Fine-tuning an SB3 actor-critic inside the world model, and saving it with its replay buffer.

The SB3 model is saved in SB3's own zip format; the replay buffer's arrays go to an ``.npz`` read
with ``allow_pickle=False`` (SB3's own ``save_replay_buffer`` pickles the buffer object).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from robobrain.checkpoint import CheckpointError
from robobrain.config import SB3_ALGORITHMS
from robobrain.data import Episode
from robobrain.rl.imagination_env import ImaginationVecEnv, WorldModelDynamics, encode_start_states
from robobrain.rl.sac import RewardValueSAC
from robobrain.world_model import WorldModel

BUFFER_FIELDS = ("observations", "actions", "rewards", "dones", "timeouts", "next_observations")


class NonFiniteSB3Error(FloatingPointError):
    """The SB3 model's parameters became NaN or inf during fine-tuning."""


@dataclass(frozen=True)
class SB3Config:
    """The SB3 algorithm trained in imagination (its actor = planner prior, its critic = value)."""

    algo: str = "SAC"
    """Any stable_baselines3 algorithm class name with an actor and a critic: SAC, TD3, DDPG, PPO, A2C."""
    steps_per_iteration: int = 1000
    """Imagined env steps per fine-tuning round (summed over the imagination envs; rounded up to
    whole steps of the VecEnv, num_envs transitions each, and for A2C to whole rollouts of 5 of
    them; PPO's rollout is sized to one round)."""
    num_envs: int = 16
    """Imagination envs stepped together."""
    horizon: int = 15
    """Imagined episode length (DreamerV3's imagination horizon)."""
    success_terminates: bool = False
    """End an imagined episode when the success head fires. Off: the robobrain tasks never terminate
    (the object must stay on the goal, and every step there pays), so a critic that bootstraps past
    success values staying there -- which is what the planner's terminal value should credit."""
    start_states: int = 2048
    """Latent start states encoded from the newest real episodes."""
    learning_rate: float = 3e-4
    gamma: float = 0.99
    batch_size: int = 256
    buffer_size: int = 20_000
    """Off-policy algorithms: imagined transitions kept (small: old latents go stale as the model
    is refitted)."""
    learning_starts: int = 500
    gradient_steps: int = 4
    """Off-policy algorithms: gradient steps per step of the imagination VecEnv (num_envs transitions)."""
    net_arch: tuple[int, ...] = (256, 256)
    soft_value: bool = False
    """SAC: its critic learns SB3's soft Q, whose target pays the policy's future entropy as reward.
    Off: rewards only (:class:`robobrain.rl.sac.RewardValueSAC`, as TD-MPC2 and DreamerV3 keep
    entropy out of the critic), the value the planner adds to its sums of imagined rewards."""
    action_noise: float = 0.1
    """TD3 and DDPG: std of the Gaussian noise on their deterministic actor's actions while they
    collect (SAC and PPO sample their own)."""

    def __post_init__(self) -> None:  # (checked when the flags are read, not after the seed data)
        # A bad value found at the first fine-tuning round would come after a checkpoint, whose config
        # then refuses the corrected flag: the run could neither go on nor be fixed.
        least = {"steps_per_iteration": 1, "num_envs": 1, "horizon": 1, "start_states": 1, "batch_size": 1,
                 "buffer_size": self.num_envs, "learning_starts": 0, "gradient_steps": 0}  # fmt: skip
        for name, low in least.items():
            if not getattr(self, name) >= low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)} (--sb3.{_flag(name)})")
        for name, ok, need in (
            ("action_noise", 0 <= self.action_noise < math.inf, "finite and >= 0"),
            ("learning_rate", 0 < self.learning_rate < math.inf, "> 0 and finite"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
        ):
            if not ok:  # (NaN fails each)
                raise ValueError(f"{name} must be {need}, got {getattr(self, name)} (--sb3.{_flag(name)})")
        if not self.net_arch or min(self.net_arch) < 1:
            raise ValueError(f"net_arch must be layer widths >= 1, got {self.net_arch} (--sb3.net-arch)")
        if self.algo.upper() not in SB3_ALGORITHMS:
            raise ValueError(
                f"unknown stable-baselines3 algorithm {self.algo!r}: one with an actor and a critic, "
                f"{', '.join(SB3_ALGORITHMS)}"
            )
        if self.soft_value and self.algo.upper() != "SAC":
            raise ValueError(f"--sb3.soft-value: only SAC learns a soft Q, not {self.algo}")
        if self.algo.upper() == "PPO":  # (SB3's PPO asserts both > 1 when make_sb3_model builds it)
            rollout = -(-self.steps_per_iteration // self.num_envs) * self.num_envs
            if min(self.batch_size, rollout) < 2:
                raise ValueError(
                    f"PPO needs minibatches and rollouts of >= 2 transitions, got batch_size "
                    f"{self.batch_size} and a rollout of {rollout} (--sb3.batch-size, "
                    "--sb3.steps-per-iteration, --sb3.num-envs)"
                )


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _algo_class(cfg: SB3Config) -> type:
    import stable_baselines3

    if cfg.algo.upper() == "SAC" and not cfg.soft_value:
        return RewardValueSAC
    return getattr(stable_baselines3, cfg.algo.upper())  # (SB3Config checked the name)


def is_off_policy(model: Any) -> bool:
    """SAC, TD3, DDPG (a replay buffer; learning_starts applies), not PPO or A2C."""
    return hasattr(model, "replay_buffer")


def imagination_env(
    world_model: WorldModel,
    episodes: Sequence[Episode],
    cfg: SB3Config,
    seed: int,
    success_bonus: float = 1.0,
    disagreement_penalty: float = 0.0,
) -> ImaginationVecEnv:
    """Imagination envs starting from latents of the newest ``episodes`` (most recent first); the
    planner's ``success_bonus`` and ``disagreement_penalty`` join the imagined reward
    (:class:`WorldModelDynamics`)."""
    start = encode_start_states(world_model, list(reversed(episodes)), max_states=cfg.start_states)
    return ImaginationVecEnv(
        WorldModelDynamics(world_model, True, success_bonus, disagreement_penalty),
        start,
        cfg.num_envs,
        cfg.horizon,
        success_terminates=cfg.success_terminates,
        seed=seed,
    )


def make_sb3_model(cfg: SB3Config, env: ImaginationVecEnv, seed: int, device: str | torch.device) -> Any:
    """A fresh SB3 model of ``cfg.algo`` on ``env`` (an MLP over the latent features)."""
    cls = _algo_class(cfg)
    kwargs: dict[str, Any] = {
        "learning_rate": cfg.learning_rate,
        "gamma": cfg.gamma,
        "policy_kwargs": {"net_arch": list(cfg.net_arch)},
        "seed": seed,
        "device": device,
        "verbose": 0,
    }
    if issubclass(cls, OffPolicyAlgorithm):
        kwargs.update(
            buffer_size=cfg.buffer_size,
            batch_size=cfg.batch_size,
            learning_starts=cfg.learning_starts,
            train_freq=1,
            gradient_steps=cfg.gradient_steps,
        )
        if cls.__name__ in ("TD3", "DDPG"):  # deterministic actors: without noise (SB3's default)
            # they stop exploring after learning_starts; TD3's paper and rl-zoo use sigma 0.1
            dim = env.action_space.shape[0]
            kwargs["action_noise"] = NormalActionNoise(np.zeros(dim), np.full(dim, cfg.action_noise))
    elif cls.__name__ == "PPO":  # one rollout per round (a rollout of fixed length overshot it ~2x)
        n_steps = -(-cfg.steps_per_iteration // cfg.num_envs)
        kwargs.update(n_steps=n_steps, batch_size=min(cfg.batch_size, n_steps * cfg.num_envs))
    model = cls("MlpPolicy", env, **kwargs)
    model.set_logger(_quiet_logger())
    return model


def _quiet_logger() -> Logger:
    """SB3's values are read back by :func:`finetune`; without a logger of its own, every ``learn``
    call would make an empty ``SB3-<date>`` folder in the temp directory."""
    return Logger(folder=None, output_formats=[])


def _check_finite(model: Any, when: str) -> None:
    for name, p in model.policy.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteSB3Error(
                f"{type(model).__name__} parameter {name} is non-finite {when} "
                f"(at {model.num_timesteps} imagined steps); lower the SB3 learning rate"
            )


def finetune(model: Any, env: ImaginationVecEnv, steps: int) -> dict[str, float]:
    """Train ``model`` for ``steps`` more imagined steps in ``env``; its weights must be finite before
    and after (``NonFiniteSB3Error`` names the first bad parameter; the imagination env itself raises
    on non-finite model outputs).

    Returns the latest SB3 losses (``train/*`` entries of its logger)."""
    _check_finite(model, "before fine-tuning")
    model.set_env(env)
    try:
        model.learn(total_timesteps=steps, reset_num_timesteps=False, progress_bar=False)
    except ValueError:  # e.g. torch.distributions refusing NaN parameters mid-update
        _check_finite(model, "during fine-tuning")
        raise
    _check_finite(model, "after fine-tuning")
    values = getattr(model.logger, "name_to_value", {})
    return {k.replace("train/", "sb3_"): float(v) for k, v in values.items() if k.startswith("train/")}


def save_sb3(model: Any, directory: str | os.PathLike[str]) -> None:
    """``model.zip`` (SB3's format), ``action_space_rng.json`` and, for off-policy algorithms,
    ``replay_buffer.npz``.

    SB3's ``load`` reseeds the action space with the model's seed, and an off-policy model samples
    its warm-up actions (``learning_starts``) from it: the stream's state is saved beside the zip so
    a resumed run draws the actions an uninterrupted one would."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save(d / "model.zip")
    (d / "action_space_rng.json").write_text(json.dumps(model.action_space.np_random.bit_generator.state))
    if is_off_policy(model):
        buf = model.replay_buffer
        arrays = {name: getattr(buf, name) for name in BUFFER_FIELDS}
        np.savez(d / "replay_buffer.npz", pos=np.array(buf.pos), full=np.array(buf.full), **arrays)


def load_sb3(
    cfg: SB3Config, directory: str | os.PathLike[str], env: ImaginationVecEnv, device: str | torch.device
) -> Any:
    """The SB3 model (and its replay buffer) saved by :func:`save_sb3`."""
    d = Path(directory)
    if not (d / "model.zip").is_file():  # (SB3 then looked for model.zip.zip, and said so)
        raise CheckpointError(f"{d / 'model.zip'}: missing")
    try:
        model = _algo_class(cfg).load(d / "model.zip", env=env, device=device)
    except Exception as e:  # SB3's zip reader: BadZipFile, zlib.error, pickle errors, ...
        raise CheckpointError(
            f"{d / 'model.zip'}: cannot load the {cfg.algo} model ({type(e).__name__}: {e})"
        ) from e
    model.set_logger(_quiet_logger())
    rng_path = d / "action_space_rng.json"
    if rng_path.exists():  # (older checkpoints lack it: their action space keeps SB3's reseeding)
        try:
            model.action_space.np_random.bit_generator.state = json.loads(rng_path.read_text())
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{rng_path}: unreadable random state ({type(e).__name__}: {e})") from e
    if is_off_policy(model):
        path = d / "replay_buffer.npz"
        buf = model.replay_buffer
        try:
            with np.load(path, allow_pickle=False) as z:
                for name in BUFFER_FIELDS:
                    arr = z[name]
                    if arr.shape != getattr(buf, name).shape:
                        raise ValueError(f"{name} has shape {arr.shape}, expected {getattr(buf, name).shape}")
                    getattr(buf, name)[...] = arr
                buf.pos, buf.full = int(z["pos"]), bool(z["full"])
            if not 0 <= buf.pos < buf.buffer_size:  # (an IndexError at the first add, a run later)
                raise ValueError(f"pos {buf.pos} outside the buffer's [0, {buf.buffer_size})")
            stored = buf.buffer_size if buf.full else buf.pos
            for name in BUFFER_FIELDS:  # (a NaN reward was blamed on the learning rate, a run later)
                if not np.isfinite(getattr(buf, name)[:stored]).all():
                    raise ValueError(f"{name} holds NaN or inf")
        except Exception as e:  # a damaged zip raises BadZipFile, zlib.error, ... besides these
            raise CheckpointError(f"{path}: unreadable replay buffer ({type(e).__name__}: {e})") from e
    return model
