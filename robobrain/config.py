"""Frozen dataclass configs, one per component, and the named presets.

Presets: ``debug`` (tests: 32 px, tiny nets, seconds), ``cpu`` (this 2-core machine: 64 px, GRU 128,
32x8 categorical latent, conv depth 16), ``gpu`` (a lent accelerator: GRU 512, 32x32 latent,
conv depth 32). Nothing writes into a config; derive a new one with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

SB3_ALGORITHMS = ("SAC", "TD3", "DDPG", "PPO", "A2C")
"""The stable-baselines3 algorithms with an actor and a critic: fine-tuned in imagination, guiding
the planner, and loaded by ``sb3:ALGO:PATH``."""

Preset = Literal["debug", "cpu", "gpu"]


@dataclass(frozen=True)
class WorldModelConfig:
    """Sizes and loss weights of the RSSM world model."""

    image_size: int = 64
    """Side of the square frames the model sees (must be a power of two >= 16)."""
    action_dim: int = 3
    """Action dimension A."""
    state_dim: int = 0
    """Size of the env's state vector decoded as an auxiliary target (0 = none). Apart from the goal
    (``goal_dim``) the model never reads the state: the state labels shape the latent in training."""
    use_goal: bool = True
    """Condition on the episode's goal when the data's env names one in its state layout (sets
    ``goal_start`` / ``goal_dim`` at training time)."""
    goal_start: int = 0
    goal_dim: int = 0
    """The episode's goal is ``state[goal_start : goal_start + goal_dim]`` of the env's state vector
    (0 = no goal). A goal-conditioned model is *given* the goal, the way goal-conditioned RL gives
    ``desired_goal`` (Gymnasium-Robotics, HER): it joins the latent features read by the decoder and
    the heads, unchanged through imagination. Without it the goal had to be perceived from a few
    pixels and carried by the latent, and the planner found actions under which the imagined goal
    drifted onto the gripper (bench/RESULTS.md, Reach). Set from the data's env at training time."""
    use_proprio: bool = False
    """Feed the robot's own state to the posterior beside the image embedding, when the data's env
    names it in its state layout (``gripper_pos``, ``gripper_vel``, ``finger``; sets
    ``proprio_start`` / ``proprio_dim`` at training time). The block's pose is never read: objects
    are seen only in the pixels."""
    proprio_start: int = 0
    proprio_dim: int = 0
    """The proprioceptive input is ``state[proprio_start : proprio_start + proprio_dim]``, standardised
    (0 = pixels only). Set from the data's env at training time."""
    cnn_depth: int = 16
    """Channels of the first conv layer; doubled at every stride-2 layer."""
    keypoints: int = 0
    """Spatial-softmax keypoints K whose 2K image coordinates join the conv embedding
    (``networks.SpatialSoftmax``; 0 = none)."""
    deter: int = 128
    """GRU (deterministic state) size."""
    stoch: int = 32
    """Number of categorical latent variables."""
    classes: int = 8
    """Classes per categorical variable. 32 x 8 (96 bits per step): with 8 x 8 (24 bits) one
    posterior step could not hold gripper and block of a single frame (Push: block 13 cm off at the
    first frame vs 4.3 cm; Reach MPC 86 % vs 98 %), at ~1.4x the planning cost (bench/RESULTS.md)."""
    hidden: int = 128
    """Width of the MLPs (dynamics input, prior/posterior, heads)."""
    reference_frame: bool = False
    """Refine each decoded frame with a real frame of the same episode (the last one observed): a mask
    keeps what did not change sharp from it (``networks.ReferenceRefiner``, trained on the detached
    decoded frames, so the latent learns exactly what it would without it). ``decode`` and
    ``imagine(decode=True)`` then need that frame. Planning never decodes, so it costs nothing there."""
    refiner_layers: int = 0
    """3x3 conv blocks the reference refiner runs at half resolution after summing its two inputs; any
    value > 0 also adds a 3x3 conv to its reference path (``networks.ReferenceRefiner``; 0 = its
    single-layer form). Read only with ``reference_frame``. One layer lifted held-out Push
    PSNR@10 by ~0.3 dB at equal refiner training (bench/RESULTS.md); planning never runs it."""
    use_termination: bool = True
    """Learn a termination head when the training data holds episodes that ended in a terminal state
    (a fall: ``terminated`` from the env, not a time limit; sets ``termination`` at training time)."""
    termination: bool = False
    """Predict, after each action, whether the episode ends there (DreamerV3's continue head, as a
    logit). The planner weights each imagined step's score by the probability that the episode is
    still running, and SB3's imagined episodes end where it is predicted. Set from the data."""
    decoded_frames: int = 0
    """Frames per training window the decoder reconstructs (a random draw among frames 1..L-1 of each
    window; 0, or any value >= L-1, decodes all L). Every frame is still encoded and filtered and
    trains the KL, reward, success and state terms; only the pixel loss -- the dearest part of a
    step at 64 px -- is subsampled.
    The reference refiner then learns on the first ``REFINED_FRAMES`` of the same draw. 8 of 16 (the
    ``cpu`` preset) made a 64 px step 0.80x as dear as the eighth session's preset with the training
    losses at equal steps close to decoding all 16 (bench/RESULTS.md)."""
    reward_bins: int = 0
    """0: the reward head is a regression trained by squared error. > 0: DreamerV3's two-hot discrete
    regression over this many bins in symlog space (``networks.ScalarHead``)."""
    reward_limit: float = 5.0
    """The bins span symlog(reward) in [-limit, limit] (5: rewards up to about +-147)."""
    ensemble: int = 0
    """Extra prior heads whose disagreement estimates uncertainty (0 = none)."""
    ensemble_free_nats: float = 1.0
    """KL of an ensemble head to the posterior below this many nats is not penalised (as ``free_nats``
    for the prior). 0 made disagreement no better a novelty signal on Push (bench/RESULTS.md,
    twenty-eighth session), so it stays at the prior's 1."""
    unimix: float = 0.01
    """Uniform mixture in the categorical distributions (DreamerV3)."""
    free_nats: float = 1.0
    """KL below this many nats is not penalised."""
    kl_dyn: float = 0.5
    """Weight of KL(sg(posterior) || prior): trains the dynamics."""
    kl_rep: float = 0.1
    """Weight of KL(posterior || sg(prior)): regularises the representation."""
    recon_weight: float = 1.0
    reward_weight: float = 1.0
    success_weight: float = 1.0
    termination_weight: float = 1.0
    state_weight: float = 20.0
    """Weight of the auxiliary state-decoding loss (MSE on the standardised state; needs state_dim).
    At 1.0 it was ~1 % of the summed pixel loss and the latent never held the goal; 20 cut
    the held-out goal error from 8.3 to 4.6 cm and lifted reward correlation from 0.43 to 0.64 in the
    same 20 minutes on Push (bench/RESULTS.md)."""
    open_loop_horizon: int = 0
    """Steps of the open-loop (multi-step) loss: from the posterior at every frame of a training
    window, the prior is rolled forward under the window's real actions and the reward, success and
    state heads -- and the prior itself, by KL to the later posteriors -- are trained on what follows.
    The one-step loss alone trains the dynamics only one step past an observation, while the planner
    scores 12-14 open-loop steps (PlaNet's latent overshooting, TD-MPC2's horizon loss). 0 = off."""
    open_loop_weight: float = 1.0
    """Weight of the open-loop loss relative to the one-step terms it mirrors."""

    @property
    def feat_dim(self) -> int:
        """Size of a latent feature vector: deterministic + flattened stochastic state (+ goal)."""
        return self.deter + self.stoch * self.classes + self.goal_dim


@dataclass(frozen=True)
class WMTrainConfig:
    """World-model training loop."""

    batch_size: int = 16
    seq_len: int = 16
    lr: float = 6e-4
    lr_decay: float = 0.0
    """Share of a ``train-wm`` run's last steps (of its ``--steps``) over which the learning rate falls
    linearly towards zero; constant before (a warmup-stable-decay schedule without the warmup).
    0 = constant throughout, as in DreamerV3 and TD-MPC2 and in the online loop's refits."""
    adam_eps: float = 1e-6
    grad_clip: float = 100.0
    weight_decay: float = 0.0
    holdout_fraction: float = 0.1
    """Share of episodes kept out of training for evaluation (every round(1/f)-th by name)."""
    log_every: int = 25
    checkpoint_every: int = 500
    max_nonfinite: int = 20
    """Consecutive non-finite losses after which training stops with an error."""
    seed: int = 0


@dataclass(frozen=True)
class PresetConfig:
    world_model: WorldModelConfig
    train: WMTrainConfig


# Decoder refinement (with its extra layer) and the two-hot reward head are on in every preset but
# off in the dataclass's defaults: a checkpoint saved before they existed has no such keys in its
# config.json and must load as the model it was.
_PRESET_FEATURES = MappingProxyType({"reference_frame": True, "refiner_layers": 1, "reward_bins": 41})
# Same for the learning-rate decay over the last half of a train-wm run (a run started before it
# existed resumes only with lr_decay=0), and for the cpu preset's decoded_frames (a cpu run started
# before it resumes only with decoded_frames=0; the gpu preset's long windows decode every frame).
_LR_DECAY = 0.5

PRESETS: dict[str, PresetConfig] = {
    "debug": PresetConfig(
        WorldModelConfig(
            image_size=32, cnn_depth=8, deter=32, stoch=4, classes=4, hidden=32, **_PRESET_FEATURES
        ),
        WMTrainConfig(batch_size=8, seq_len=8, lr=1e-3, lr_decay=_LR_DECAY, log_every=5, checkpoint_every=50),
    ),
    "cpu": PresetConfig(
        WorldModelConfig(decoded_frames=8, **_PRESET_FEATURES), WMTrainConfig(lr_decay=_LR_DECAY)
    ),
    "gpu": PresetConfig(
        WorldModelConfig(cnn_depth=32, deter=512, stoch=32, classes=32, hidden=512, **_PRESET_FEATURES),
        WMTrainConfig(
            batch_size=16, seq_len=50, lr=1e-4, lr_decay=_LR_DECAY, adam_eps=1e-8, grad_clip=1000.0
        ),
    ),
}


def get_preset(name: str, **overrides: Any) -> PresetConfig:
    """A preset, with world-model fields overridden (e.g. ``action_dim=4``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return dataclasses.replace(preset, world_model=dataclasses.replace(preset.world_model, **overrides))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


SEED_LIMIT = 2**32
"""Seeds are in [0, SEED_LIMIT): SB3 seeds numpy's legacy generator (``np.random.seed``), which
takes no more, and seeds derived from one (``seed + 1``, ``seed + episode``) stay within torch's
64-bit generators."""


EVAL_SEEDS = range(1_000_000, 1_100_000)
"""Env seeds kept for evaluation: ``robobrain eval`` and ``robobrain train``'s own evaluations start
episode i from ``reset(seed=EVAL_SEEDS.start + i)``; ``robobrain collect``'s default seeds skip them
(the held-out starts were collected as training data)."""


def past_eval_seeds(seed: int, num_envs: int, taken: Iterable[range] = ()) -> int:
    """``seed`` for a collection of ``num_envs`` envs (env i reset with ``seed + i``) that keeps out of
    :data:`EVAL_SEEDS` and the ``taken`` ranges (e.g. the seeds of the offline episodes a run trains
    on, whose starts it would repeat). For each range, lowest first (overlapping ones merged), every
    seed from ``start - num_envs + 1`` up is moved past it by the same shift, so distinct seeds stay
    distinct and their spacing is kept."""
    merged: list[list[int]] = []
    for r in sorted((r for r in (*taken, EVAL_SEEDS) if len(r)), key=lambda r: r.start):
        if merged and r.start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], r.stop)
        else:
            merged.append([r.start, r.stop])
    for start, stop in merged:
        if seed > start - num_envs:
            seed += stop - start + num_envs
    return seed


def check_seed(seed: int, where: str = "seed") -> None:
    """Refuse a seed outside [0, SEED_LIMIT) with an error that names ``where`` (e.g. ``--seed``)."""
    if not 0 <= seed < SEED_LIMIT:  # (2**64 - 1 was an OverflowError deep in torch.manual_seed)
        raise ValueError(f"{where} must be in [0, 2**32), got {seed}")


def numeric_array(x: Any, what: str) -> np.ndarray:
    """``x`` as a float64 array; ``ValueError`` naming ``what`` unless its entries are real numbers (a
    cast read the string "1", True and 1+5j as 1.0). An object array of numbers is taken too."""
    a = np.asarray(x)
    real = a.dtype.kind in "fiu" or (
        a.dtype.kind == "O"
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in a.flat)
    )
    if not real:
        raise ValueError(f"{what} must be numbers, got an array of dtype {a.dtype}")
    return a.astype(np.float64)


def is_int(x: object) -> bool:
    """A Python or numpy integer, not a bool (``True`` is an int to Python: it made 1x1 frames)."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


_SCALAR_TYPES = {
    "bool": lambda v: isinstance(v, bool),
    "int": is_int,
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass; unknown keys are an error, missing keys take defaults (those
    that keep what a config saved before the field existed meant), an absent ``ensemble_free_nats``
    the saved ``free_nats`` (the ensemble heads' clamp before it had its own field)."""
    if not isinstance(data, dict):  # (a list's .items() was an AttributeError its callers let through)
        raise TypeError(f"a {cls.__name__} is a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)} (saved by a newer robobrain?)")
    if cls is WorldModelConfig and "ensemble_free_nats" not in data and "free_nats" in data:
        data = {**data, "ensemble_free_nats": data["free_nats"]}  # (saved before it: the heads' clamp)
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        check = _SCALAR_TYPES.get(str(ftype))
        if check is not None and not check(value):  # (a string "false" for a bool built a refiner)
            raise TypeError(f"{cls.__name__}.{name} must be a JSON {ftype}, got {value!r}")
        if str(ftype) == "float":
            value = float(value)
        sub = {"WorldModelConfig": WorldModelConfig, "WMTrainConfig": WMTrainConfig}.get(str(ftype))
        kwargs[name] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)
