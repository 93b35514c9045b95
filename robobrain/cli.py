"""The ``robobrain`` command. Each sub-command is a frozen dataclass; tyro turns it into flags.

robobrain collect --env robobrain/Push-v0 --policy scripted --episodes 20 --out data/push
robobrain demo
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from robobrain.config import EVAL_SEEDS, SEED_LIMIT, check_seed, is_int
from robobrain.data.store import MANIFEST, EpisodeStore, no_empty_dirs_on_failure
from robobrain.training.online import OnlineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collect:
    """Roll a policy out in vector envs and store the episodes in an EpisodeStore directory."""

    env: str = "robobrain/Push-v0"
    """Gymnasium id: a robobrain task, or any env that renders rgb_array."""
    policy: Literal["random", "scripted"] = "scripted"
    """Which policy acts."""
    episodes: int = 10
    """Number of episodes to store."""
    out: Path | None = None
    """EpisodeStore directory (created; episodes are appended; a store holds one env's episodes).
    Default: data/<task>, e.g. data/push for robobrain/Push-v0."""
    num_envs: int = 2
    """Environments stepped in parallel."""
    vector_mode: Literal["sync", "async"] = "sync"
    """Gymnasium vector env: in-process or one subprocess per env."""
    image_size: int = 64
    """Side of the square pixel observation."""
    episode_steps: int | None = None
    """Steps per episode: overrides the env's time limit (default: the env's own, 50 for the
    robobrain tasks)."""
    noise: float = 0.0
    """Std of Gaussian noise added to scripted actions."""
    decoy_goal_prob: float = 0.0
    """Scripted only: share of episodes in which the expert heads for a random decoy goal instead of
    the true one (play data: object motion that does not always head for the goal)."""
    seed: int | None = None
    """Seed of the envs (env i gets seed + i) and of the policy. Default: 0 into an empty store, else
    10,000 past the largest seed stored, so re-running a command adds new episodes, not copies (past
    the seeds evaluations start from, 1,000,000 to 1,099,999, too)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class TrainWM:
    """Train the world model offline on an EpisodeStore; re-running resumes."""

    data: Path = Path("data/push")
    """EpisodeStore directory."""
    run_dir: Path = Path("runs/wm")
    """Where checkpoints, logs and the resolved config go."""
    preset: Literal["debug", "cpu", "gpu"] = "cpu"
    """Model and training sizes."""
    steps: int = 5000
    """Total gradient steps (a resumed run continues up to this)."""
    device: str = "cpu"
    """torch device, e.g. cpu, cuda, cuda:1, or auto (cuda when there is one)."""
    seed: int = 0
    """Seed of the model initialisation and of batch sampling."""
    max_minutes: float | None = None
    """Stop (and checkpoint) after this much wall-clock time; re-run to continue."""
    open_loop_horizon: int | None = None
    """Steps of the open-loop (multi-step) loss (default: the preset's; 0 = off). See
    ``WorldModelConfig.open_loop_horizon``."""
    proprio: bool = False
    """Feed the robot's own state (gripper position, velocity, finger; from the episodes' state) to
    the world model beside the pixels (``WorldModelConfig.use_proprio``)."""
    keypoints: int = 0
    """Spatial-softmax keypoints added to the image encoder (``WorldModelConfig.keypoints``; 0 = none)."""
    termination: bool = True
    """Learn a termination head when episodes of the data ended in a terminal state (a fall, not a
    time limit; ``WorldModelConfig.use_termination``)."""
    progress: bool = True


@dataclass(frozen=True)
class EvalWM:
    """Open-loop video prediction on held-out episodes, against copy-last-frame and shuffled actions."""

    checkpoint: Path = Path("runs/wm")
    """Checkpoint directory or run directory (its latest checkpoint)."""
    data: Path = Path("data/push")
    """EpisodeStore directory."""
    split: Literal["holdout", "all"] = "holdout"
    """holdout: the episodes training left out (same rule as train-wm; refused for a `robobrain train`
    run, whose world model holds none out: pass all); all: every episode."""
    context: int = 5
    """Context frames filtered before predicting."""
    horizon: int = 10
    """Steps predicted open loop."""
    max_windows: int = 256
    """Windows evaluated at most."""
    out: Path | None = None
    """Report directory (default: <run>/eval_wm/<checkpoint>_<data>_<split> for a run's checkpoint,
    e.g. runs/wm/eval_wm/step_0004000_push_holdout, else <checkpoint>/eval_wm/<data>_<split>; one
    that holds the report on another store of the same name is refused)."""
    device: str = "cpu"


@dataclass(frozen=True)
class TrainPrior:
    """Clone the data's successful episodes into an action prior on a world model's latent state
    (MBOP-style), saved beside the checkpoint for `robobrain eval --guide bc`. Trains on the episodes
    the world model trained on and validates on those it held out (of a `robobrain train` run, which
    holds none out, on a tenth it trained on: the prior's own split, not the world model's)."""

    checkpoint: Path = Path("runs/wm")
    """World-model checkpoint directory or run directory (its latest checkpoint)."""
    data: tuple[Path, ...] = (Path("data/push"),)
    """EpisodeStores to clone: the one the world model was trained on, and any more demonstrations
    (e.g. scripted with less noise); each is split into train / held-out like the world model's."""
    steps: int = 3000
    """Gradient steps at most (the weights with the lowest validation error are kept)."""
    all_episodes: bool = False
    """Clone every episode, not only those that ended in success."""
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class Eval:
    """Evaluate a policy: eval_info.json (per-episode seed, success, return, latency) and videos."""

    policy: str = "scripted"
    """random | scripted | oracle | mpc:CHECKPOINT | bc:CHECKPOINT (the behaviour prior of
    `robobrain train-prior`, no planning) | sb3:ZIP"""
    env: str | None = None
    """Gymnasium id (robobrain task or any env that renders rgb_array); default: the env an mpc:/bc:
    checkpoint's world model was trained on, else robobrain/Push-v0."""
    episodes: int = 10
    """Episodes; episode i is seeded with seed + i."""
    num_envs: int = 4
    """Envs run side by side; the policy acts for all of them in one batched call."""
    seed: int = EVAL_SEEDS.start
    """Episode i starts from reset(seed=seed + i). The default is the one `robobrain train` evaluates
    with, away from the seeds that `collect` and `train` start their episodes from by default (0:
    evaluation started where the demonstrations were collected; collect's defaults skip 1,000,000 to
    1,099,999)."""
    out: Path = Path("runs/eval")
    """Output directory (eval_info.json, videos/)."""
    image_size: int | None = None
    """Pixel size (default: the world model's for mpc:/bc:, the frames an sb3: model was trained on,
    else 64)."""
    episode_steps: int | None = None
    """Steps per episode: overrides the env's time limit (default: a `robobrain train` run's own
    --episode-steps, the length its evaluations ran; else the env's own, 50 for the robobrain tasks)."""
    video_episodes: int = 2
    """Episodes recorded as mp4 (real | imagined for mpc:)."""
    device: str = "cpu"
    optimizer: Literal["cem", "mppi"] | None = None
    """MPC trajectory optimizer (default: cem; mppi with --guide bc)."""
    horizon: int | None = None
    """MPC planning horizon (default: 12; 14 with --guide bc)."""
    samples: int | None = None
    """MPC candidates per iteration (default: 128, with 3 iterations the `cpu` budget of the Reach bar in
    bench/RESULTS.md, ~83 ms per decision on 2 cores; 64 with --guide bc, the Push bar's, ~70 ms;
    raise it on a GPU)."""
    elites: int | None = None
    """(default: 32, a quarter of the samples below 128; half the samples with --guide bc)"""
    iterations: int | None = None
    """(default: 3; 1 with --guide bc)"""
    temperature: float | None = None
    """MPPI: softmax temperature over the elites' scores (default: 0.5; 4 with --guide bc)."""
    time_budget: float | None = None
    """MPC wall-clock limit on each decision's optimizer iterations (s; at least one runs). What comes
    before them is not counted: the filter's update and a guide's prior rollouts."""
    disagreement_penalty: float | None = None
    """mpc: subtract this times the ensemble's disagreement from each imagined reward (needs a world
    model trained with an ensemble): keeps plans where the model is trustworthy (default: a `robobrain
    train` run's own --mpc.disagreement-penalty; else 0)."""
    success_bonus: float | None = None
    """mpc, oracle: added to each imagined (oracle: simulated) step's reward times the predicted success
    probability (oracle: the true success flag) (default: a
    `robobrain train` run's own --mpc.success-bonus, the one its critic learned; else 1)."""
    discount: float | None = None
    """mpc, oracle: discount of the imagined (oracle: simulated) rewards; the guide's value weighs
    discount^H (default: a `robobrain train` run's own --mpc.discount, the one its critic was trained
    with; else 1)."""
    guide: Literal["auto", "both", "prior", "value", "bc", "none"] = "auto"
    """mpc: of a `robobrain train` run: how its SB3 actor-critic helps the planner (auto: the parts the
    run's planner used -- prior samples if it drew any, as many as --prior-samples says, the value if
    it planned with it); bc: average noisy rollouts of the behaviour prior of `robobrain train-prior`
    (its defaults are the planner settings of the Push rows in bench/RESULTS.md)."""
    prior_samples: int | None = None
    """mpc: candidates per iteration drawn from the guide's prior (default: 16 from an SB3 actor, or
    all but one of fewer --samples; all the candidates but one from a behaviour prior)."""
    prior_std: float | None = None
    """mpc --guide bc: std of the Gaussian noise around the behaviour prior's actions (default: 0.1)."""
    compile: bool = False
    """mpc on CUDA, unguided: torch.compile the bf16 imagination recorded in the planner's CUDA graph
    (1.8x faster decisions for 16 envs on an H200, bench/RESULTS.md; needs Triton and a C compiler)."""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    """With --compile: torch.compile's mode (max-autotune-no-cudagraphs: 13.77 vs 14.89 ms for 16 envs
    on an H200 in one pair of runs, bench/RESULTS.md; slower to start; the plan already is one CUDA
    graph, so modes that add graphs are not offered)."""
    fused: bool = False
    """mpc on CUDA, unguided: imagine in the planner's CUDA graph with one Triton kernel per rollout
    (FusedImagine; instead of --compile; needs Triton)."""
    progress: bool = True


PLANNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "search": {"optimizer": "cem", "horizon": 12, "samples": 128, "elites": 32, "iterations": 3,
               "temperature": 0.5, "prior_std": 0.1},
    "bc": {"optimizer": "mppi", "horizon": 14, "samples": 64, "elites": None, "iterations": 1,
           "temperature": 4.0, "prior_std": 0.1},
}  # fmt: skip
"""`robobrain eval`'s planner settings left unset: a free search (CEM 128 x 3, H=12: the Reach bar, 92 of
100 episodes like 256 x 4 at 0.4x its latency), or with --guide bc a soft average of behaviour-prior
rollouts (MPPI, 1 iteration, the better half of the candidates as elites: the Push rows of
bench/RESULTS.md)."""


def planner_settings(args: Eval) -> dict[str, Any]:
    """The planner flags of ``args`` with the unset ones filled from :data:`PLANNER_DEFAULTS`."""
    defaults = PLANNER_DEFAULTS["bc" if args.guide == "bc" else "search"]
    out = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in defaults.items()}
    if out["elites"] is None:  # bc: the better half
        out["elites"] = max(1, out["samples"] // 2)
    elif args.elites is None:  # a quarter of fewer --samples than the default's 128 (32 of 128)
        out["elites"] = min(out["elites"], max(1, out["samples"] // 4))
    return out


# Eval flags that only a planner reads, with their defaults; those a planner without a learned
# model (the oracle) cannot use either are in the second set.
_PLANNER_FLAGS: dict[str, Any] = {
    "optimizer": None, "horizon": None, "samples": None, "elites": None, "iterations": None,
    "temperature": None, "time_budget": None, "success_bonus": None, "discount": None,
    "disagreement_penalty": None, "guide": "auto", "prior_samples": None, "prior_std": None,
    "compile": False, "compile_mode": "default", "fused": False,
}  # fmt: skip
_LEARNED_MODEL_FLAGS = {"disagreement_penalty", "guide", "prior_samples", "prior_std", "compile",
                        "compile_mode", "fused"}  # fmt: skip


def check_planner_flags(args: Eval) -> None:
    """Refuse planner flags given to a policy that would ignore them (``--guide bc`` with ``scripted``
    would otherwise be recorded as if it had been used; with ``oracle`` it would silently switch the
    planner to the behaviour-prior settings, without a prior), or that the planner itself would
    ignore (``--temperature`` with CEM, ``--prior-std`` with an SB3 guide)."""
    if args.compile_mode != "default" and not args.compile:
        raise ValueError(f"--compile-mode {args.compile_mode}: only with --compile")
    if not args.policy.startswith("mpc:"):
        usable = set(_PLANNER_FLAGS) - _LEARNED_MODEL_FLAGS if args.policy == "oracle" else set()
        given = [name for name, default in _PLANNER_FLAGS.items()
                 if name not in usable and getattr(args, name) != default]  # fmt: skip
        if args.policy == "oracle" and args.guide == "none":
            given.remove("guide")  # (the oracle plans unguided: asking for that is no mistake)
        if given:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            learned = args.policy == "oracle" or set(given) <= _LEARNED_MODEL_FLAGS
            who = "a world-model planner (mpc:)" if learned else "a planner (oracle, mpc:)"
            them = "it" if len(given) == 1 else "them"
            raise ValueError(f"{flags}: only {who} reads {them}, not --policy {args.policy}")
    if args.samples is not None and args.samples < 2:  # (one is the warm start alone: it never moves)
        raise ValueError(f"--samples must be >= 2, got {args.samples}")
    planner = planner_settings(args)
    if not 1 <= planner["elites"] <= planner["samples"]:
        raise ValueError(  # (the config's error named num_elites and num_samples, which eval has not)
            f"--elites must be in [1, --samples {planner['samples']}], got {planner['elites']}"
        )
    if args.temperature is not None and planner["optimizer"] != "mppi":
        raise ValueError("--temperature: only --optimizer mppi reads it (CEM weighs its elites equally)")
    if args.prior_std is not None and args.guide != "bc":  # (an SB3 actor's samples: their own noise)
        raise ValueError(f"--prior-std: only --guide bc reads it, not --guide {args.guide}")
    # (the guides' own errors named no flag, and a value the user never set: "got -1, 0.2")
    if args.prior_std is not None and not 0 <= args.prior_std < math.inf:
        raise ValueError(f"--prior-std must be finite and >= 0, got {args.prior_std}")
    least = 1 if args.guide in ("bc", "prior", "both") else 0  # (0 prior samples: no prior guides it)
    if args.prior_samples is not None and args.prior_samples < least:
        hint = "; --guide value or none plans without a prior" if args.guide in ("prior", "both") else ""
        raise ValueError(
            f"--prior-samples must be >= {least} with --guide {args.guide}, got {args.prior_samples}{hint}"
        )


@dataclass(frozen=True)
class Train(OnlineConfig):
    """The main job: act with the planner, refit the world model, fine-tune the SB3 actor-critic in
    imagination, evaluate, checkpoint; repeat. Re-running with the same --run-dir resumes."""

    run_dir: Path = Path("runs/train")
    """Checkpoints, episodes, logs (train.csv, tb/), evaluations and learning_curve.png."""
    progress: bool = True


def run_image_size(cfg: OnlineConfig, run_dir: Path | None = None) -> int:
    """The pixel size a run's envs render: ``--image-size``, else that of the world model in the
    run's latest checkpoint (a resumed run), else that of the ``--init-world-model``, else that of
    the ``--seed-data`` episodes, else the preset's."""
    from robobrain.checkpoint import (
        CheckpointError,
        latest_checkpoint,
        read_config,
        recovery_hint,
        resolve_checkpoint,
    )
    from robobrain.config import get_preset
    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import model_config_from_checkpoint

    if cfg.image_size is not None:
        return cfg.image_size
    latest = latest_checkpoint(run_dir) if run_dir is not None else None
    if latest is not None:  # (a resume does not need the --init-world-model any more)
        try:
            return model_config_from_checkpoint(read_config(latest), latest).image_size
        except CheckpointError as e:  # (as the resume itself says it)
            raise CheckpointError(f"{e}{recovery_hint(latest)}") from e
    if cfg.init_world_model is not None:
        path = resolve_checkpoint(cfg.init_world_model)
        return model_config_from_checkpoint(read_config(path), path).image_size
    if cfg.seed_data is not None and Path(cfg.seed_data).is_dir():
        for _, episode in EpisodeStore(cfg.seed_data, create=False).episodes():
            return int(episode.pixels.shape[1])
    return get_preset(cfg.preset).world_model.image_size


def run_train(args: Train) -> dict:
    import dataclasses

    from robobrain.policies.online import online_factories
    from robobrain.training.curves import LearningCurveCallback, plot_learning_curve
    from robobrain.training.online import train_online

    cfg = OnlineConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(OnlineConfig)})
    factories = online_factories(cfg.env, run_image_size(cfg, args.run_dir), cfg.device, cfg.episode_steps)
    report = train_online(cfg, args.run_dir, factories, [LearningCurveCallback()], progress=args.progress)
    csv_path, png = args.run_dir / "train.csv", args.run_dir / "learning_curve.png"
    if csv_path.exists() and (not png.exists() or png.stat().st_mtime < csv_path.stat().st_mtime):
        plot_learning_curve(csv_path, png)  # (a run killed after its last row, before the drawing)
    print(json.dumps(report["summary"], indent=1))
    final = args.run_dir / "eval" / "final"
    print(
        f"report: {final / 'eval_info.json'}\nvideos: {final / 'videos'}\n"
        f"learning curve: {args.run_dir / 'learning_curve.png'}\ncheckpoint: {args.run_dir / 'checkpoints'}"
    )
    return report


def run_eval(args: Eval) -> dict:
    import torch

    from robobrain.envs import make_env
    from robobrain.evaluation import evaluate_policy
    from robobrain.planning import MPCConfig, OptimizerConfig
    from robobrain.planning.mpc import uniform_bounds
    from robobrain.policies import checkpoint_spec, load_policy

    if args.episodes < 1 or args.num_envs < 1:
        raise ValueError(f"--episodes and --num-envs must be >= 1, got {args.episodes}, {args.num_envs}")
    if args.video_episodes < 0:
        raise ValueError(f"--video-episodes must be >= 0, got {args.video_episodes}")
    check_planner_flags(args)
    args = replace(args, env=args.env or eval_env(args.policy))  # (main resolved it already)
    size = args.image_size
    if args.policy.startswith(("mpc:", "bc:")):
        _, path = checkpoint_spec(args.policy)
        seen = world_model_image_size(path)
        if size is not None and size != seen:
            raise ValueError(f"--image-size {size}: the world model of {args.policy} sees {seen} px frames")
        size = seen
    elif args.policy.startswith("sb3:") and size is None:
        from robobrain.policies.sb3 import frame_size

        size = frame_size(args.policy[4:])
    run = train_run_config(args.policy)  # (read once; after the size's clearer errors on the path)
    steps = checked_episode_steps(
        args.episode_steps if args.episode_steps is not None else run.get("episode_steps")
    )
    # (no more envs than episodes: a slot that never starts an episode has no observation)
    envs = [
        make_env(args.env, 64 if size is None else size, max_episode_steps=steps)
        for _ in range(min(args.num_envs, args.episodes))
    ]
    planner = planner_settings(args)
    bounds = uniform_bounds(envs[0].action_space)  # e.g. [-3, 3]: the bounds `train --mpc.optim.low` set
    # The search's noise defaults are set for [-1, 1]: they widen with the range (Pendulum's [-2, 2]).
    scale = (bounds["high"] - bounds["low"]) / 2 if bounds else 1.0
    optim = OptimizerConfig(
        num_samples=planner["samples"],
        num_elites=planner["elites"],
        iterations=planner["iterations"],
        temperature=planner["temperature"],
        time_budget=args.time_budget,
        init_std=OptimizerConfig.init_std * scale,
        min_std=OptimizerConfig.min_std * scale,
        **bounds,
    )
    mpc = MPCConfig(
        horizon=planner["horizon"],
        optimizer=planner["optimizer"],
        optim=optim,
        seed=args.seed,
        disagreement_penalty=run_planner_setting(args, run, "disagreement_penalty", 0.0),
        success_bonus=run_planner_setting(args, run, "success_bonus", 1.0),
        discount=run_planner_setting(args, run, "discount", 1.0),
    )
    try:
        policy = load_policy(
            args.policy,
            args.env,
            envs[0].action_space,
            seed=args.seed,
            envs=envs,
            mpc=mpc,
            device=args.device,
            guide=args.guide,
            num_prior=args.prior_samples,
            prior_std=planner["prior_std"],
            compile=args.compile_mode if args.compile else False,
            fused=args.fused,
        )
        if args.prior_samples and not getattr(getattr(policy, "guide", None), "num_prior", 0):
            raise ValueError(  # (auto guides as the run's planner did: a run that drew none, with none)
                f"--prior-samples {args.prior_samples}: the planner's guide "
                f"({describe_guide(getattr(policy, 'guide', None))}) draws no prior samples; ask for them "
                "with --guide both or prior"
            )
        # An SB3 guide's prior samples use torch's global generator, which SB3's load reseeds with
        # the training run's seed: seeded after it, or every --seed drew the same samples.
        torch.manual_seed(args.seed)
        meta: dict[str, Any] = {"env_id": args.env, "policy": args.policy, "episode_steps": steps}
        if args.policy.startswith(("mpc:", "oracle")):
            meta["guide"] = args.guide
            guide_used = getattr(policy, "guide", None)
            meta["planner"] = dict(planner, prior_samples=getattr(guide_used, "num_prior", None),
                                   prior_std=planner["prior_std"] if args.guide == "bc" else None,
                                   temperature=planner["temperature"] if planner["optimizer"] == "mppi"
                                   else None,
                                   low=optim.low, high=optim.high, init_std=optim.init_std,
                                   min_std=optim.min_std, discount=mpc.discount,
                                   success_bonus=mpc.success_bonus,
                                   disagreement_penalty=mpc.disagreement_penalty,
                                   time_budget=args.time_budget,
                                   compile=args.compile_mode if args.compile else False,
                                   fused=args.fused)  # fmt: skip
            meta["guide_resolved"] = describe_guide(guide_used)
        report = evaluate_policy(
            policy, envs, args.episodes, args.seed, args.out, args.video_episodes, args.progress, meta
        )
    finally:
        for env in envs:
            env.close()
    print(json.dumps(report["summary"], indent=1))
    print(f"report: {args.out / 'eval_info.json'}")
    return report


def eval_env(policy: str) -> str:
    """``eval``'s env when ``--env`` is left out: the one an mpc:/bc: checkpoint's world model was
    trained on (a Reach model was refused on the default Push), else robobrain/Push-v0."""
    from robobrain.checkpoint import CheckpointError, read_config, trained_env

    kind, _, path = policy.partition(":")
    if kind in ("mpc", "bc") and path:
        try:
            return trained_env(read_config(path)) or "robobrain/Push-v0"
        except (CheckpointError, FileNotFoundError, NotADirectoryError):
            pass  # (load_policy says what is wrong with it)
    return "robobrain/Push-v0"


def world_model_image_size(path: str) -> int:
    """The frame size of the world model at ``path`` (a checkpoint or run); a folder that holds no
    world model (e.g. the behaviour_prior folder train-prior prints) is a clear error."""
    from robobrain.checkpoint import read_config, resolve_checkpoint
    from robobrain.training.wm_trainer import model_config_from_checkpoint

    if Path(path).name == "behaviour_prior":
        raise ValueError(
            f"{path}: a behaviour prior; pass the world-model checkpoint above it, {Path(path).parent}"
        )
    return model_config_from_checkpoint(read_config(path), resolve_checkpoint(path)).image_size


def describe_guide(guide: object) -> str:
    """What a planner's guide does, as ``--guide`` names it: what ``auto`` resolved to."""
    from robobrain.rl import BehaviourPriorGuide

    if guide is None:
        return "none"
    if isinstance(guide, BehaviourPriorGuide):
        return "bc"
    from robobrain.policies import guide_mode

    return guide_mode(getattr(guide, "num_prior", 0) > 0, bool(guide.use_value))


def run_train_wm(args: TrainWM) -> dict:
    import dataclasses

    from robobrain.config import get_preset
    from robobrain.training.wm_trainer import train_world_model

    # (refused by the flags' names, before the data is read: the library's errors name its fields)
    minutes = args.max_minutes
    checks = (("--steps", args.steps, args.steps >= 1, ">= 1"),
              ("--keypoints", args.keypoints, args.keypoints >= 0, ">= 0"),
              ("--max-minutes", minutes, minutes is None or minutes > 0, "> 0"))  # fmt: skip
    for flag, value, ok, need in checks:
        if not ok:
            raise ValueError(f"{flag} must be {need}, got {value}")
    overrides: dict = {} if args.open_loop_horizon is None else {"open_loop_horizon": args.open_loop_horizon}
    if args.proprio:
        overrides["use_proprio"] = True
    if args.keypoints:
        overrides["keypoints"] = args.keypoints
    if not args.termination:
        overrides["use_termination"] = False
    preset = get_preset(args.preset, **overrides)
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, seed=args.seed))
    most = preset.train.seq_len - 1  # (a window of L frames rolls L - 1 steps open loop: more was cut)
    if args.open_loop_horizon is not None and args.open_loop_horizon > most:
        raise ValueError(
            f"--open-loop-horizon {args.open_loop_horizon}: the {args.preset} preset's windows of "
            f"{preset.train.seq_len} frames roll at most {most} steps open loop"
        )
    metrics = train_world_model(
        args.data, args.run_dir, preset, args.steps, args.device, args.progress, args.max_minutes, args.preset
    )
    print(f"world model in {args.run_dir}: {json.dumps(metrics)}")
    return metrics


def eval_wm_out(checkpoint: Path, data: Path, split: str) -> Path:
    """Where ``eval-wm`` reports by default: one folder per checkpoint, data and split (evaluating the
    held-out episodes and then all of them kept only the last report), under <run>/eval_wm for a run's
    checkpoint, else under <checkpoint>/eval_wm."""
    measured = f"{Path(data).resolve().name}_{split}"
    checkpoint = checkpoint.resolve()  # (given as ".", a symlink or ../step_N: still the run's)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval_wm" / f"{checkpoint.name}_{measured}"
    return checkpoint / "eval_wm" / measured


def run_eval_wm(args: EvalWM) -> dict:
    from robobrain.checkpoint import check_trained_env, load_checkpoint
    from robobrain.data import EpisodeStore
    from robobrain.data.store import atomic_write_json
    from robobrain.envs import get_state_layout
    from robobrain.training.wm_eval import evaluate_world_model
    from robobrain.training.wm_trainer import (
        split_episodes,
        train_config_from_checkpoint,
        world_model_from_checkpoint,
    )

    ckpt = load_checkpoint(args.checkpoint, with_training_state=False)  # (read once: a run beside it
    model = world_model_from_checkpoint(ckpt, args.device)  # may move its `latest` between two reads)
    if args.split == "holdout" and "online" in ckpt.config:  # (its train config names the preset's 0.1)
        raise ValueError(
            f"{ckpt.path}: the world model of a `robobrain train` run trains on every episode of its "
            "--seed-data and its own, none held out: pass --split all, with a store it never saw"
        )
    store = EpisodeStore(args.data, create=False)
    if args.split == "holdout":
        holdout = train_config_from_checkpoint(ckpt.config, ckpt.path).holdout_fraction
        _, episodes = split_episodes(store, holdout)
        if not episodes:
            raise ValueError(f"{args.data}: no held-out episodes; pass --split all")
    else:
        episodes, _ = split_episodes(store, 0.0)  # (raises on a store with no readable episode)
    check_trained_env(ckpt.config, episodes[0].meta.get("env_id"), ckpt.path)
    check_frame_size(episodes, args.data, model.cfg.image_size, ckpt.path)
    out = args.out or eval_wm_out(ckpt.path, args.data, args.split)
    data = str(Path(args.data).resolve())
    if args.out is None and (out / "report.json").is_file():  # (the default names the store's folder)
        try:
            before = json.loads((out / "report.json").read_text()).get("data")
        except (ValueError, AttributeError):  # (unreadable: replaced like any report of its own)
            before = None
        if before is not None and before != data:
            raise ValueError(
                f"{out} holds the report on {before}, another store of the same name as {args.data}: "
                "pass --out"
            )
    with no_empty_dirs_on_failure(out):
        out.mkdir(parents=True, exist_ok=True)
        report = evaluate_world_model(
            model,
            episodes,
            args.context,
            args.horizon,
            args.max_windows,
            video_path=out / "prediction.mp4",
            state_layout=get_state_layout(episodes[0].meta.get("env_id")),
        )
    report.update(checkpoint=str(ckpt.path.resolve()), data=data, split=args.split)
    atomic_write_json(out / "report.json", report)
    print(json.dumps(report["summary"], indent=1))
    print(f"report: {out / 'report.json'}\nvideo: {out / 'prediction.mp4'}")
    return report


def collect_out(args: Collect) -> Path:
    """``--out``, else data/<task>, e.g. data/push for robobrain/Push-v0 (and for my_envs:Push-v0:
    the module that registers an env is no part of the folder's name)."""
    name = args.env.rpartition(":")[2].split("/")[-1].split("-v")[0].lower()
    return args.out or Path("data") / name


def run_collect(args: Collect) -> list[str]:
    import robobrain.envs as envs
    from robobrain.data import EpisodeStore, reports_success
    from robobrain.data.collect import check_storable_actions, collect_episodes
    from robobrain.policies import load_policy

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if (args.decoy_goal_prob or args.noise) and args.policy != "scripted":
        raise ValueError("--noise and --decoy-goal-prob apply to --policy scripted only")
    if not 0 <= args.noise < float("inf"):  # (NaN too; the policy's own error named its noise_std)
        raise ValueError(f"--noise must be finite and >= 0, got {args.noise}")
    out = collect_out(args)
    # (The store is created only once the env and the policy are built: a mistyped --env or
    # --policy leaves no empty directory behind.)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory (an episode store is one)")
    existing = EpisodeStore(out, create=False) if out.is_dir() else None
    layout = existing.layout if existing is not None else None
    if layout is not None and (layout[0], layout[1][0]) != (args.env, args.image_size):
        raise ValueError(  # (before any env is made: the first add would refuse it)
            f"--out {out} holds {layout[0]} episodes of {layout[1][0]} px: pass --env {layout[0]} "
            f"--image-size {layout[1][0]} to add to it, or another --out"
        )
    old = existing.manifest.values() if existing is not None else []
    # Env i of a collection is first reset with seed + i: earlier collections' [seed, seed + num_envs).
    # (Episodes from before num_envs was recorded: 2, collect's default then.)
    used = {(s, m["meta"].get("num_envs", 2)) for m in old if isinstance(s := m["meta"].get("seed"), int)}
    seed = args.seed if args.seed is not None else max(s for s, _ in used) + 10_000 if used else 0
    # (a default seed walked into evaluation's starts after 100 collections, and past 2**32: skipped,
    # refused with what to pass)
    avoid = range(EVAL_SEEDS.start - args.num_envs + 1, EVAL_SEEDS.stop)
    if args.seed is None and seed in avoid:
        seed = avoid.stop
    if args.seed is None and seed >= SEED_LIMIT:
        raise ValueError(f"--out {out}: its largest stored seed is {max(s for s, _ in used)}; no default "
                         "--seed is left below 2**32: pass --seed")  # fmt: skip
    overlap = sorted((s, s + n) for s, n in used if s < seed + args.num_envs and seed < s + n)
    if args.seed is not None and overlap:
        log.warning(
            "%s already holds episodes whose envs were seeded in %s; this collection's are seeded in "
            "[%d, %d): their starts repeat", out, ", ".join(f"[{a}, {b})" for a, b in overlap), seed,
            seed + args.num_envs,
        )  # fmt: skip
    steps = checked_episode_steps(args.episode_steps)  # (None: the env's own time limit)
    vec = envs.make_vector_env(
        args.env, args.num_envs, image_size=args.image_size, mode=args.vector_mode, max_episode_steps=steps
    )
    try:
        from robobrain.world_model.networks import num_conv_layers

        try:  # (once the envs took the size: a size no env takes is their error alone)
            num_conv_layers(args.image_size)
        except ValueError as e:
            log.warning("--image-size: no world model can train on these episodes (%s)", e)
        kwargs = (
            {"noise_std": args.noise, "decoy_goal_prob": args.decoy_goal_prob}
            if args.policy == "scripted"
            else {}
        )
        check_storable_actions(vec.single_action_space)  # (random and sb3: drive Discrete ones)
        policy = load_policy(args.policy, args.env, vec.single_action_space, seed=seed, **kwargs)
        vec.reset(seed=seed)  # (an env that cannot render, e.g. without pygame, fails before the store)
        store = EpisodeStore(out)
        if args.seed is None and (claimed := store.claim_seed(seed, 10_000, avoid, SEED_LIMIT)) != seed:
            log.info("seed %d is claimed (by a collection running beside this one, or one that stored "
                     "nothing): seed %d", seed, claimed)  # fmt: skip
            seed = claimed
            policy = load_policy(args.policy, args.env, vec.single_action_space, seed=seed, **kwargs)
        meta = {"env_id": args.env, "policy": args.policy, "noise": args.noise, "seed": seed,
                "num_envs": args.num_envs, "decoy_goal_prob": args.decoy_goal_prob,
                "episode_steps": args.episode_steps}  # fmt: skip
        try:
            names = collect_episodes(
                vec, policy, store, args.episodes, seed=seed, meta=meta, progress=args.progress
            ).names
        except BaseException:
            # A claim of nothing stored is given back (so a failed first collection leaves no folder).
            stored = any(e["meta"].get("seed") == seed for e in store.manifest.values())
            if args.seed is None and not stored:
                store.release_seed(seed)
            raise
    finally:
        vec.close()
    entries = [store.manifest[n] for n in names]
    reported = [e["success"] for e in entries if reports_success(e["meta"])]
    success = f"success {np.mean(reported):.2f}" if reported else "the env reports no success"
    readable = f"{len(store.manifest)} readable episodes in the store"
    print(f"stored {len(names)} episodes (seed {seed}) in {out} ({success}; {readable})")
    return names


@dataclass(frozen=True)
class Demo(Train):
    """The main job on the default task, sized to finish inside 15 minutes on 2 CPU cores (9 min 55 s
    measured, README): `robobrain train` from random seed data (no scripted episodes), then the final
    evaluation; prints where the report, the videos (real | imagined) and the learning curve are.
    Re-running resumes / finishes the run."""

    env_steps: int = 1500
    """Budget of real env steps (seed data included). Raising it and re-running extends the run, e.g.
    `robobrain demo --env-steps 20000`; one below the steps it already holds is refused, but for its
    own (whole iterations may end past it)."""
    # (3,000 took 13 min on the first sessions' 2-core machine and 22 min on the ~2x slower one of the
    # twelfth session, bench/RESULTS.md; 1,500 keeps the demo inside 15 minutes there)
    seed_episodes: int = 10
    pretrain_steps: int = 300
    eval_every: int = 1000
    run_dir: Path = Path("runs/demo")


def checked_episode_steps(episode_steps: int | None) -> int | None:
    """``--episode-steps``, refused unless an int >= 1 or None (``make_env``'s ``max_episode_steps``:
    None keeps the env's own time limit)."""
    if episode_steps is not None and (not is_int(episode_steps) or episode_steps < 1):
        raise ValueError(f"--episode-steps must be an int >= 1, got {episode_steps!r}")
    return episode_steps


def train_run_config(policy: str) -> dict[str, Any]:
    """The ``online`` config of the ``robobrain train`` run behind ``mpc:`` or ``bc:`` ({} for
    anything else, or a checkpoint of ``train-wm``)."""
    from robobrain.checkpoint import read_config
    from robobrain.policies import checkpoint_spec

    if not policy.startswith(("mpc:", "bc:")):
        return {}
    return read_config(checkpoint_spec(policy)[1]).get("online", {})


def run_planner_setting(args: Eval, run: dict[str, Any], name: str, default: float) -> float:
    """The flag ``name`` (discount, success_bonus, disagreement_penalty), else the ``--mpc.<name>`` of
    the ``robobrain train`` run behind ``mpc:`` (``run``: its config's ``online`` part, read once; what
    its planner scored and its critic learned), else ``default``."""
    if getattr(args, name) is not None:
        return float(getattr(args, name))
    return float(run.get("mpc", {}).get(name, default))


def check_frame_size(episodes: list, store: Path | str, image_size: int, checkpoint: Path) -> None:
    """Refuse a store whose frames are not the world model's size (it failed deep inside, naming
    neither the store nor the sizes)."""
    sizes = sorted({ep.pixels.shape[1] for ep in episodes})
    if sizes != [image_size]:
        raise ValueError(
            f"{store}: episodes of {sizes} px, the world model of {checkpoint} sees {image_size} px"
        )


def run_train_prior(args: TrainPrior) -> dict:
    from robobrain.checkpoint import check_trained_env, load_checkpoint
    from robobrain.data import EpisodeStore
    from robobrain.rl.behaviour_prior import BehaviourPriorConfig, fit_behaviour_prior, save_behaviour_prior
    from robobrain.training.wm_trainer import (
        split_episodes,
        train_config_from_checkpoint,
        world_model_from_checkpoint,
    )

    if not args.data:  # (it said "no training episodes (0 held out by their numbers)")
        raise ValueError("--data: name at least one episode store")
    resolved = [Path(root).resolve() for root in args.data]
    if len(set(resolved)) < len(resolved):  # (each of its episodes was cloned twice, counted twice)
        twice = sorted({str(r) for r in resolved if resolved.count(r) > 1})
        raise ValueError(f"--data names a store more than once: {', '.join(twice)}")
    ckpt = load_checkpoint(args.checkpoint, with_training_state=False)  # (read once: a run beside it
    model = world_model_from_checkpoint(ckpt, args.device)  # may move its `latest` between two reads)
    holdout = train_config_from_checkpoint(ckpt.config, ckpt.path).holdout_fraction
    train, val = [], []
    for root in args.data:
        t, v = split_episodes(EpisodeStore(root, create=False), holdout)
        # (checked before the prior is replaced; a store of held-out episodes only is checked too)
        check_trained_env(ckpt.config, (t or v)[0].meta.get("env_id"), ckpt.path)
        check_frame_size(t + v, root, model.cfg.image_size, ckpt.path)
        train, val = train + t, val + v
    if not train:  # (an IndexError)
        raise ValueError(f"--data: no training episodes ({len(val)} held out by their numbers)")
    cfg = BehaviourPriorConfig(steps=args.steps, successful_only=not args.all_episodes, seed=args.seed)
    prior, report = fit_behaviour_prior(model, train, val, cfg, args.device)
    path = save_behaviour_prior(prior, ckpt.path, cfg, report)
    print(json.dumps(report, indent=1))
    print(f"behaviour prior: {path}")
    return report


def run_demo(args: Demo) -> dict:
    return run_train(args)


COMMANDS = {
    "collect": (Collect, run_collect),
    "train": (Train, run_train),
    "train-wm": (TrainWM, run_train_wm),
    "eval-wm": (EvalWM, run_eval_wm),
    "train-prior": (TrainPrior, run_train_prior),
    "eval": (Eval, run_eval),
    "demo": (Demo, run_demo),
}


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` (SB3's convention) is ``cuda`` when torch sees a GPU, else ``cpu``;
    any other name is checked with :func:`check_device`."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    return name


def check_device(name: str) -> None:
    """Refuse a ``--device`` this machine's torch cannot use, before any work (torch itself would
    fail later, e.g. a CUDA device on a CPU-only build with an AssertionError)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name!r}: expected cpu, cuda, cuda:N or auto (or another torch device type)"
        ) from None
    if device.type == "meta":
        raise ValueError(f"--device {name}: a meta device holds no data to train or plan with")
    if device.type not in ("cpu", "cuda"):  # (mps, xpu, ...: torch fails at the first tensor otherwise)
        try:
            torch.empty(0, device=device)
        except Exception as e:  # (RuntimeError, AssertionError, NotImplementedError, ModuleNotFoundError)
            why = str(e).split(". ")[0].splitlines()[0][:200] if str(e) else type(e).__name__  # (its first
            # sentence: torch's own lists every backend and the operator's registrations)
            raise ValueError(f"--device {name}: this torch ({torch.__version__}) cannot use it: {why}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: this torch ({torch.__version__}) sees no CUDA device; "
                "install a CUDA build of torch or pass --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# tyro reports a config's ValueError (raised when the flags are read) in a box of its own; where
# this tyro has its (private, experimental) parse-error hook, the error propagates instead, as every
# other user error does, and `robobrain` ends it in one line.
_TYRO_HOOKS = getattr(tyro, "_errors", None)
VALUE_ERRORS_PROPAGATE = all(hasattr(_TYRO_HOOKS, n) for n in ("on_parse_error", "InstantiationFailure"))


def _parse(argv: list[str]) -> Any:
    def parse() -> Any:
        return tyro.extras.subcommand_cli_from_dict(
            {name: cls for name, (cls, _) in COMMANDS.items()},
            args=argv,
            prog="robobrain",
            description="robobrain: a robot brain backed by a learned video world model.",
        )

    if not VALUE_ERRORS_PROPAGATE:
        return parse()

    def propagate(event: Any) -> None:
        if isinstance(event, _TYRO_HOOKS.InstantiationFailure):
            # The flag, when tyro names one (a value it could not convert); a config's own check
            # names its fields in its message.
            flags = getattr(getattr(getattr(event, "argument", None), "lowered", None), "name_or_flags", None)
            where = f"{'/'.join(flags)}: " if flags and all(isinstance(f, str) for f in flags) else ""
            first = next((line for line in str(event.message).splitlines() if line.strip()), "")
            raise ValueError(f"{where}{first}")

    with _TYRO_HOOKS.on_parse_error(propagate):
        return parse()


def check_output_dir(path: Path | None, flag: str) -> None:
    """Refuse an output directory that a file stands in the way of (it, or a folder above it)."""
    if path is None:
        return
    for q in (path, *path.parents):
        if q.is_symlink() and not q.exists():
            raise ValueError(f"{flag} {path}: {q} is a symlink to nothing ({os.readlink(q)})")
        if q.exists():
            if not q.is_dir():
                where = "is a file" if q == path else f"cannot be made: {q} is a file"
                raise ValueError(f"{flag} {path} {where}, not a directory")
            return


def _train_runs_store(path: Path) -> bool:
    """Whether ``path`` (named episodes) is a train run's own store: its folder holds the run's
    checkpoints, or its episodes name the loop's iteration (a run killed before its first checkpoint).
    A project folder with a config.json of its own is none."""
    if (path.parent / "checkpoints").is_dir():
        return True
    try:
        return any(
            "iteration" in entry["meta"] for entry in EpisodeStore(path, create=False).manifest.values()
        )
    except (OSError, ValueError):
        return False


def check_output_kind(path: Path | None, flag: str, store: bool) -> None:
    """Refuse an episode store as the output of a command that writes a run or a report, and a run
    as the output of ``collect`` (``store``): each wrote its files into the other, silently."""
    if path is None or not path.is_dir():
        return
    if store and (path / "checkpoints").is_dir():
        raise ValueError(f"{flag} {path} is a run directory (it holds checkpoints/), not an episode store")
    if store and path.name == "episodes" and _train_runs_store(path):
        raise ValueError(
            f"{flag} {path} is the own store of the train run in {path.parent}, which keeps only its own "
            f"episodes there: collect into another store and pass it to train as --seed-data"
        )
    if not store and (path / MANIFEST).exists():
        raise ValueError(f"{flag} {path} is an episode store (it holds {MANIFEST}): pass another {flag}")


def main(argv: list[str] | None = None) -> None:
    """Run a command; errors propagate (tests and callers from Python see them as they are)."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(args, Eval) and args.env is None:  # (resolved before the command line is echoed)
        args = replace(args, env=eval_env(args.policy))
    for cls, run in COMMANDS.values():
        if type(args) is cls:  # not isinstance: Demo is a Train
            print(json.dumps({type(args).__name__: asdict(args)}, default=str))
            seed = getattr(args, "seed", None)
            if seed is not None:  # (numpy's and torch's own errors name no flag)
                check_seed(seed, "--seed")
            if getattr(args, "device", None) is not None:
                args = replace(args, device=resolve_device(args.device))
            # (a refused or failed command leaves no empty output folder behind)
            out = collect_out(args) if isinstance(args, Collect) else getattr(args, "out", None)
            for flag, path in (("--out", out), ("--run-dir", getattr(args, "run_dir", None))):
                check_output_dir(path, flag)
                check_output_kind(path, flag, store=isinstance(args, Collect))
            with no_empty_dirs_on_failure(out, getattr(args, "run_dir", None)):
                run(args)
            return
    raise AssertionError(f"unhandled command {args!r}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (it may have been replaced since)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def _show_logs() -> None:
    """The command shows robobrain's own log messages from INFO up (that a run resumed, and from
    where; what it dropped); Python's default shows only warnings, and only their text. Not where
    the caller set up logging already (its root logger has handlers): its setup decides."""
    logger = logging.getLogger("robobrain")
    if logging.getLogger().handlers or any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("robobrain %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def entry(argv: list[str] | None = None) -> None:
    """The ``robobrain`` command: a user's error (a bad flag value, a missing or mismatched checkpoint
    or store, an env's missing extra such as pygame) or a training that diverged (its message says
    what was kept) ends in one line on stderr and exit status 2; ``ROBOBRAIN_DEBUG=1`` shows the
    traceback. Ctrl-C ends in one line too, then the KeyboardInterrupt goes on: the ``robobrain``
    command (``argv`` None) then ends as Python does, killed by SIGINT after its shutdown (so a calling
    shell's loop stops too) without the traceback; a Python caller gets the KeyboardInterrupt."""
    from gymnasium.error import DependencyNotInstalled

    from robobrain.checkpoint import CheckpointError, RunInUseError
    from robobrain.training.wm_trainer import NonFiniteLossError

    # (and the file system's refusals: a folder without write permission, a full or read-only disk;
    # the last two are plain OSErrors, told apart by their errno)
    expected = (ValueError, FileNotFoundError, CheckpointError, DependencyNotInstalled, NonFiniteLossError,
                FloatingPointError, PermissionError, FileExistsError, NotADirectoryError,
                IsADirectoryError, RunInUseError)  # fmt: skip
    disk_errnos = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
    _show_logs()
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args[:1] if a in COMMANDS), None)
    prog = " ".join(["robobrain", *([command] if command else [])])
    try:
        main(argv)
    except BrokenPipeError:  # (`robobrain train --help | head`: the reader left before the end)
        try:  # (Python's recipe: no second error when the interpreter flushes stdout at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # (a stdout without a file descriptor: a caller's buffer)
            pass
        raise SystemExit(1) from None
    except Exception as e:
        users = isinstance(e, expected) or (isinstance(e, OSError) and e.errno in disk_errnos)
        if not users or os.environ.get("ROBOBRAIN_DEBUG"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # (Ctrl-C: one line, not the traceback of wherever the loop was)
        if os.environ.get("ROBOBRAIN_DEBUG"):
            raise
        resumes = command in ("train", "train-wm", "demo")
        hint = (
            "; the same command resumes the run from its last checkpoint, if it wrote one" if resumes else ""
        )
        print(f"\n{prog}: interrupted{hint}", file=sys.stderr)
        if argv is None:  # the command itself: no traceback when Python ends on it
            sys.excepthook = _quiet_on_interrupt(sys.excepthook)
        raise


def _quiet_on_interrupt(hook: Any) -> Any:
    """``sys.excepthook`` that prints nothing for a KeyboardInterrupt (its line was printed)."""

    def quiet(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            hook(kind, value, tb)

    return quiet


if __name__ == "__main__":
    entry()
