"""The online loop: act with the planner -> store episodes -> refit the world model -> fine-tune the
SB3 actor-critic in imagination -> evaluate -> checkpoint; repeat until the env-step budget is spent.

Built from factories and callbacks (danijar/embodied style), so a user swaps the env, the policy, the
optimizer (``MPCConfig.optimizer``) or the SB3 algorithm (``SB3Config.algo``) by configuration.

Resume: every iteration collects whole episodes (all envs reset at its start, with seeds derived from
the iteration), so a checkpoint always falls on an episode boundary. The checkpoint holds the world
model and its optimizer, the SB3 model and its replay buffer, every RNG state, the counters and the
planner's generators; on resume, episodes written after the checkpoint by the interrupted run are
deleted and their iteration is re-run, so no episode is lost or stored twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from robobrain.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_trained_env,
    exclusive_run,
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    load_weights,
    read_config,
    recovery_hint,
    restoring,
)
from robobrain.checkpoint import save_checkpoint as save_wm_checkpoint
from robobrain.config import EVAL_SEEDS, check_seed, get_preset, is_int, past_eval_seeds, to_dict
from robobrain.data import Episode, EpisodeStore, SequenceSampler, reports_success
from robobrain.data.collect import collect_episodes
from robobrain.data.store import atomic_write_json
from robobrain.envs.factory import registered_id
from robobrain.evaluation import evaluate_policy
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.planning.mpc import check_action_bounds, check_unit_bounds, uniform_bounds, without_exploration
from robobrain.rl import (
    ActorCriticGuide,
    ImaginationVecEnv,
    SB3Config,
    finetune,
    imagination_env,
    load_sb3,
    make_sb3_model,
    save_sb3,
)
from robobrain.training.logging import MetricLogger
from robobrain.training.resume import (
    check_config,
    fingerprint,
    generator_states,
    resolved_paths,
    rng_state,
    set_generator_states,
    set_rng_state,
)
from robobrain.training.wm_trainer import (
    NonFiniteLossError,
    WorldModelTrainer,
    check_frame_side,
    model_config_from_checkpoint,
    sized_config,
    state_stats,
    train_config_from_checkpoint,
    with_kept_checkpoint,
)
from robobrain.world_model import WorldModel
from robobrain.world_model.networks import num_conv_layers

if TYPE_CHECKING:
    from robobrain.policies import Policy

log = logging.getLogger(__name__)

SB3_DIR = "sb3"


@dataclass(frozen=True)
class OnlineConfig:
    """Everything ``robobrain train`` does, in one frozen config (written to ``<run>/config.json``)."""

    env: str = "robobrain/Push-v0"
    """Gymnasium id of the task (a robobrain task, or any env the pixel wrapper supports)."""
    preset: Literal["debug", "cpu", "gpu"] = "cpu"
    """World-model size and training preset."""
    env_steps: int = 20_000
    """Budget of real env steps (seed data included). Raising it and re-running extends a run; one
    below the steps a run already holds is refused, but for its own (whole iterations may end past it)."""
    num_envs: int = 2
    """Envs stepped together; the planner plans for all of them in one batched call."""
    image_size: int | None = None
    """Side of the pixel observations (default: a resumed run's own, else that of the
    ``init_world_model``, else of the ``seed_data`` episodes, else the preset's; ``robobrain train``
    resolves it)."""
    episode_steps: int | None = None
    """Override the env's time limit (default: the registered one)."""
    seed_episodes: int = 20
    """Episodes collected before the first world-model fit (may be 0 with ``seed_data``); each
    collection (scripted, random) is rounded up to whole rounds of ``num_envs`` episodes, since every
    env steps until the last needed episode ends (the extra ones are kept, not thrown away)."""
    seed_data: str | None = None
    """An EpisodeStore of offline episodes of the same task (e.g. from ``robobrain collect``) that
    the world model trains on beside the run's own. Read, never copied into the run; its steps do
    not count toward ``env_steps``."""
    init_world_model: str | None = None
    """A world-model checkpoint (or run directory) to start from instead of a fresh model; its
    sizes replace the preset's (the training settings -- batch, windows, learning rate -- stay the
    preset's). With ``seed_data``, the loop fine-tunes an offline model on the
    states its own planner visits -- where the offline model's errors are (bench/RESULTS.md, Push)."""
    own_data_repeat: int = 1
    """Each of the run's own episodes is sampled this many times as often as an offline one: a few
    dozen on-policy episodes would otherwise be lost among thousands of offline ones."""
    proprio: bool = False
    """Feed the robot's own state (gripper position, velocity, finger opening from ``obs["state"]``)
    to the world model beside the pixels (``WorldModelConfig.use_proprio``); objects stay pixels-only."""
    keypoints: int = 0
    """Spatial-softmax keypoints added to the world model's image encoder (``WorldModelConfig.keypoints``;
    0 = none)."""
    scripted_fraction: float = 0.0
    """Share of the seed episodes from the task's scripted expert (the rest are random); 0 for
    benchmarks."""
    pretrain_steps: int = 500
    """World-model gradient steps on the seed data."""
    train_ratio: float = 0.25
    """World-model gradient steps per real env step in the loop."""
    mpc: MPCConfig = field(
        default_factory=lambda: MPCConfig(
            horizon=12,
            exploration_std=0.3,
            discount=0.99,
            optim=OptimizerConfig(num_samples=256, iterations=4),
        )
    )
    """The planner acting in the env (exploration noise included; evaluation runs it without)."""
    sb3: SB3Config = field(default_factory=SB3Config)
    """The actor-critic fine-tuned in imagination."""
    prior_samples: int = 16
    """Candidates per planning iteration proposed by the SB3 actor (0: no prior)."""
    use_value: bool = True
    """Add the SB3 critic's value of the last imagined state to each plan's score. With neither a
    prior nor the value the loop trains no SB3 model at all (nothing would use it)."""
    ensemble: int | None = None
    """Prior heads of the world model's ensemble (default: the preset's; an ``init_world_model``
    keeps its own); ``explore_bonus`` needs some."""
    termination: bool = True
    """Learn a termination head when episodes of the data end in a terminal state (a fall, not a time
    limit; ``WorldModelConfig.use_termination``); an ``init_world_model`` or a resumed run keeps the
    head it has."""
    explore_bonus: float = 0.0
    """While collecting data only, the planner adds this times the ensemble's disagreement about each
    imagined step to a plan's score (Plan2Explore-style optimism: seek what the model cannot predict
    yet). Evaluation plans with the task's reward alone."""
    eval_every: int = 2000
    """Evaluate (no exploration noise) after the first iteration (the baseline: the seed data and
    the pretrained model), at the first iteration end after this many env steps since the last
    evaluation (0: every iteration), and at the end (re-running a finished run evaluates it again)."""
    eval_episodes: int = 4
    checkpoint_every: int = 500
    """Checkpoint at the first iteration end after this many env steps since the last one (0: every
    iteration), and at the end."""
    seed: int = 0
    device: str = "cpu"
    """torch device of the world model and SB3, e.g. cpu, cuda, or auto on the command line (a
    resumed run may change it)."""

    def __post_init__(self) -> None:
        def flag(name: str) -> str:  # (the field as `robobrain train` spells it)
            return f"--{name.replace('_', '-')}"

        if self.seed_episodes < 0 or (self.seed_episodes == 0 and self.seed_data is None):
            raise ValueError(
                f"seed_episodes must be > 0 without seed_data, got {self.seed_episodes} "
                f"({flag('seed_episodes')}, {flag('seed_data')})"
            )
        check_seed(self.seed, f"seed ({flag('seed')})")
        if self.ensemble is not None and self.ensemble < 0:
            raise ValueError(f"ensemble must be >= 0, got {self.ensemble} ({flag('ensemble')})")
        counts = {"env_steps": (self.env_steps, 0), "eval_episodes": (self.eval_episodes, 1),
                  "eval_every": (self.eval_every, 0), "checkpoint_every": (self.checkpoint_every, 0),
                  "pretrain_steps": (self.pretrain_steps, 0), "own_data_repeat": (self.own_data_repeat, 1),
                  "explore_bonus": (self.explore_bonus, 0),
                  "train_ratio": (self.train_ratio, 0), "prior_samples": (self.prior_samples, 0),
                  "num_envs": (self.num_envs, 1), "keypoints": (self.keypoints, 0),
                  "episode_steps": (1 if self.episode_steps is None else self.episode_steps, 1)}  # fmt: skip
        for name, (value, least) in counts.items():
            # (NaN fails too; an infinite train_ratio owed inf updates: an OverflowError, checkpointed)
            if not least <= value < math.inf:
                need = f">= {least}" if not value >= least else "finite"
                raise ValueError(f"{name} must be {need}, got {value} ({flag(name)})")
        if self.image_size is not None:  # (refused when the world model was built, after the seed data)
            try:
                num_conv_layers(self.image_size)
            except ValueError as e:
                raise ValueError(f"{e} ({flag('image_size')})") from None
        if self.prior_samples > self.mpc.optim.num_samples - 1:  # (its mean is the other candidate)
            raise ValueError(
                f"prior_samples {self.prior_samples} must be below num_samples {self.mpc.optim.num_samples} "
                f"({flag('prior_samples')}, --mpc.optim.num-samples)"
            )
        if self.use_value and self.mpc.discount != self.sb3.gamma:  # (the critic's sum is the planner's)
            raise ValueError(
                f"the planner adds the SB3 critic's value, learned with gamma {self.sb3.gamma}, to imagined "
                f"rewards it discounts by {self.mpc.discount}: make them equal (--mpc.discount, "
                "--sb3.gamma) or pass --no-use-value"
            )
        if not 0 <= self.scripted_fraction <= 1:
            raise ValueError(f"scripted_fraction must be in [0, 1], got {self.scripted_fraction} "
                             f"({flag('scripted_fraction')})")  # fmt: skip


def check_read_settings(cfg: OnlineConfig) -> None:
    """Refuse, when a run starts, settings nothing would read (recorded all the same, so a resume has
    to repeat them), as eval does: a temperature for CEM, --own-data-repeat without --seed-data, no
    gradient step for an off-policy SB3 algorithm (it never trained: the planner was guided by random
    nets). Not on resume: a run an older robobrain started with them could neither go on nor change."""
    if cfg.mpc.optimizer != "mppi" and cfg.mpc.optim.temperature != OptimizerConfig.temperature:
        raise ValueError(
            f"--mpc.optim.temperature {cfg.mpc.optim.temperature}: only --mpc.optimizer mppi reads it "
            "(CEM weighs its elites equally)"
        )
    if cfg.own_data_repeat != 1 and cfg.seed_data is None:
        raise ValueError(
            f"--own-data-repeat {cfg.own_data_repeat} weighs the run's own episodes against --seed-data's: "
            "without --seed-data it changes nothing"
        )
    if cfg.sb3.gradient_steps == 0 and cfg.sb3.algo.upper() in ("SAC", "TD3", "DDPG"):
        raise ValueError(f"--sb3.gradient-steps 0: {cfg.sb3.algo} would never train")


class LoopState:
    """The counters the loop carries from iteration to iteration (all saved in checkpoints)."""

    def __init__(self) -> None:
        self.iteration = 0
        self.env_steps = 0
        self.episodes = 0
        self.wm_updates_owed = 0.0
        self.last_eval = -1
        self.last_checkpoint = 0
        self.last_success = float("nan")
        self.last_return = float("nan")
        """Mean return of the last collected episodes (exploration noise on)."""
        self.wall_s = 0.0
        """Wall-clock seconds spent in the loop so far (summed over resumed runs)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    ADDED_LATER = frozenset({"last_return"})
    """Counters a checkpoint written before they existed lacks; they keep their initial value."""

    def load(self, d: dict[str, Any]) -> None:
        """Counters from a checkpoint's ``d``, each of its initial value's type (JSON's null, a string
        or a bool there failed later, in a traceback; ``"episodes": true`` truncated the store to one
        episode); a float counter may come as an int."""
        for k, initial in vars(self).items():
            if k not in d:
                if k not in self.ADDED_LATER:
                    raise KeyError(f"loop state has no {k!r}")
                continue
            value = d[k]
            kinds = (int, float) if isinstance(initial, float) else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise TypeError(
                    f"loop state {k!r} is {value!r}, not {'a number' if len(kinds) > 1 else 'an int'}"
                )
            setattr(self, k, value)


class Callback(Protocol):
    """Called after every iteration with the loop state and that iteration's metrics."""

    def on_iteration(self, state: LoopState, metrics: dict[str, float], run_dir: Path) -> None: ...


@dataclass(frozen=True)
class LoopFactories:
    """How the loop gets its envs and policies (see ``robobrain.policies.online_factories``)."""

    make_envs: Callable[[int], gym.vector.VectorEnv]
    """num_envs -> a NEXT_STEP auto-resetting vector env of the task."""
    make_eval_envs: Callable[[int], list[gym.Env]]
    """n -> n single envs for the evaluator."""
    make_seed_policy: Callable[[str, gym.spaces.Box, int], Policy]
    """("random" | "scripted", action space, seed) -> policy for the seed data."""
    make_planner: Callable[[WorldModel, MPCConfig, ActorCriticGuide | None], Policy]
    """(world model, MPC config, guide or None) -> the world-model MPC policy."""


class OnlineLoop:
    """Holds the loop's parts; :meth:`run` drives them. Prefer :func:`train_online`."""

    def __init__(
        self,
        cfg: OnlineConfig,
        run_dir: str | os.PathLike[str],
        factories: LoopFactories,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.f = factories
        self.callbacks = list(callbacks)
        self.progress = progress
        self.device = torch.device(cfg.device)
        self._refuse_another_kind_of_run()
        self.store = EpisodeStore(self.run_dir / "episodes")
        self.state = LoopState()
        self._final_report: dict[str, Any] | None = None
        preset = get_preset(cfg.preset)
        self.tcfg = preset.train
        self.wm_cfg = preset.world_model
        if cfg.image_size is not None:
            self.wm_cfg = dataclasses.replace(self.wm_cfg, image_size=cfg.image_size)
        if cfg.proprio:
            self.wm_cfg = dataclasses.replace(self.wm_cfg, use_proprio=True)
        if cfg.keypoints:
            self.wm_cfg = dataclasses.replace(self.wm_cfg, keypoints=cfg.keypoints)
        if cfg.ensemble is not None:
            self.wm_cfg = dataclasses.replace(self.wm_cfg, ensemble=cfg.ensemble)
        if not cfg.termination:
            self.wm_cfg = dataclasses.replace(self.wm_cfg, use_termination=False)
        # (the penalty was refused only when the planner was built: after the seed data and pretraining)
        for name, value in (
            ("explore_bonus", cfg.explore_bonus),
            ("mpc.disagreement_penalty", cfg.mpc.disagreement_penalty),
        ):
            if value and not self.wm_cfg.ensemble and cfg.init_world_model is None:
                raise ValueError(
                    f"{name} needs a world model with an ensemble: the {cfg.preset} preset has none, "
                    "set ensemble (e.g. 4)"
                )
        self.envs = factories.make_envs(cfg.num_envs)
        space = self.envs.single_action_space
        try:
            if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):  # (an AttributeError)
                raise ValueError(
                    f"robobrain train plans 1-D Box actions (its world model learns them), got {space}"
                )
            try:
                check_action_bounds(space.low, space.high, cfg.mpc)
            except ValueError as e:
                bounds = uniform_bounds(space)
                if not bounds:
                    raise
                if (bounds["low"], bounds["high"]) == (-1.0, 1.0):  # (no wrapper or SB3 flags to suggest)
                    raise ValueError(
                        f"the env acts in [-1, 1]: leave --mpc.optim.low/high ({cfg.mpc.optim.low}, "
                        f"{cfg.mpc.optim.high}) at their defaults"
                    ) from None
                sb3 = cfg.prior_samples > 0 or cfg.use_value  # (the SB3 actor-critic acts in [-1, 1])
                # The noise settings are in action units, set for [-1, 1]: widened with the range, as
                # `robobrain eval` widens its own defaults, or the search covers a fraction of it.
                scale = (bounds["high"] - bounds["low"]) / (cfg.mpc.optim.high - cfg.mpc.optim.low)
                noise = (
                    f" --mpc.optim.init-std {cfg.mpc.optim.init_std * scale:g} --mpc.optim.min-std "
                    f"{cfg.mpc.optim.min_std * scale:g}"
                ) + (
                    f" --mpc.exploration-std {cfg.mpc.exploration_std * scale:g}"
                    if cfg.mpc.exploration_std
                    else ""
                )
                raise ValueError(
                    f"{e}, or plan in the env's range: --mpc.optim.low {bounds['low']:g} --mpc.optim.high "
                    f"{bounds['high']:g}{noise}" + (" --prior-samples 0 --no-use-value" if sb3 else "")
                ) from None
            if cfg.prior_samples > 0 or cfg.use_value:  # (see _uses_sb3)
                check_unit_bounds(cfg.mpc, "the SB3 actor-critic fine-tuned in the world model")
            self._check_episode_length()
        except ValueError:
            self.envs.close()
            raise
        self.model: WorldModel | None = None
        self.trainer: WorldModelTrainer | None = None
        self.sb3: Any = None
        self.planner: Any = None
        self.config: dict[str, Any] = {"online": resolved_paths(to_dict(cfg))}

    def _refuse_another_kind_of_run(self) -> None:
        """A run directory whose checkpoints are not an online run's (a ``train-wm`` run: both default
        under runs/) is refused before anything is written into it."""
        try:
            latest = latest_checkpoint(self.run_dir)
            config = read_config(latest) if latest is not None else None
        except CheckpointError:
            return  # (a corrupt latest checkpoint: resuming says what to do about it)
        if config is not None and "online" not in config:
            raise CheckpointError(
                f"{self.run_dir} is not a `robobrain train` run (its checkpoints hold no online config: "
                "a train-wm run?); to start from its world model, pass it as --init-world-model with "
                "another --run-dir"
            )

    def _check_episode_length(self) -> None:
        """Warn, before collecting anything, of a preset whose training windows (``seq_len``
        observations) are longer than the env's episodes: each is one window, padded and masked
        (they were refused before short episodes were padded)."""
        steps = self.cfg.episode_steps
        env_id = registered_id(self.cfg.env)  # ("module:Env-v0" imports its module)
        if steps is None and env_id in gym.registry:
            steps = gym.spec(env_id).max_episode_steps
        if steps is not None and steps + 1 < self.tcfg.seq_len:
            log.warning(
                "the %s preset trains on windows of %d observations, but %s episodes have %d steps (%d "
                "observations): each is one window, its last %d padding that the loss skips (a preset of "
                "shorter windows, or a longer --episode-steps, wastes less)",
                self.cfg.preset, self.tcfg.seq_len, self.cfg.env, steps, steps + 1,
                self.tcfg.seq_len - steps - 1,
            )  # fmt: skip

    # --- phases -----------------------------------------------------------------------------------
    def _seed_data(self) -> None:
        cfg = self.cfg
        n_scripted = round(cfg.seed_episodes * cfg.scripted_fraction)
        episodes: list[Episode] = []
        for kind, n in (("scripted", n_scripted), ("random", cfg.seed_episodes - n_scripted)):
            if n <= 0:
                continue
            policy = self.f.make_seed_policy(kind, self.envs.single_action_space, cfg.seed)
            episodes += self._collect(policy, n, kind, seed_offset=7_919 if kind == "scripted" else 0)
        if episodes:  # (the first row's train_success / train_return: over the scripted ones too)
            self._record_training_episodes(episodes)

    def _collect(self, policy: Policy, episodes: int, kind: str, seed_offset: int = 0) -> list[Episode]:
        """``seed_offset`` keeps two collections of one iteration (scripted and random seed
        episodes) from starting at the same initial states."""
        seed = self.cfg.seed + 10_007 * self.state.iteration + seed_offset
        # (iterations 100-109 of --seed 0 collected from evaluation's starts: moved past them)
        # (and past the offline episodes' seeds: collect's default 0 made the random seed episodes of
        # --seed 0 copies of the offline ones)
        seed = past_eval_seeds(seed, self.cfg.num_envs, self._offline_seeds)
        meta = {"env_id": self.cfg.env, "policy": kind, "iteration": self.state.iteration, "seed": seed,
                "num_envs": self.cfg.num_envs}  # fmt: skip
        result = collect_episodes(
            self.envs, policy, self.store, episodes, seed=seed, meta=meta, progress=False, whole_step=True
        )
        self.state.env_steps += result.env_steps
        self.state.episodes += len(result.names)
        eps = [self.store.load(n) for n in result.names]
        self._episodes.extend(eps)
        return eps

    def _record_training_episodes(self, eps: list[Episode]) -> None:
        reported = [ep.success[-1] for ep in eps if reports_success(ep.meta)]
        self.state.last_success = float(np.mean(reported)) if reported else float("nan")  # (as eval's)
        self.state.last_return = float(np.mean([ep.reward.sum() for ep in eps]))

    def _train_episodes(self) -> list[Episode]:
        """What the world model trains on: the offline episodes, then the run's own (repeated)."""
        return self._offline + self._episodes * self.cfg.own_data_repeat

    def _refuse_foreign_episodes(self, keep: int) -> None:
        """Raise ``ValueError``, deleting nothing, when the run's store holds, after its first ``keep``
        episodes (those the loop drops on a fresh start or a resume), one the loop did not write: its
        episodes' meta names their iteration, ``robobrain collect``'s do not (collected into
        RUN/episodes, they were deleted without a word)."""
        readable = self.store.manifest  # (an unreadable file is dropped as before: it holds nothing)
        foreign = [
            n for n in self.store.names()[keep:] if n in readable and "iteration" not in readable[n]["meta"]
        ]
        if foreign:
            raise ValueError(
                f"{self.store.root} holds {len(foreign)} episodes this run did not write ({foreign[0]} "
                f"first; their meta names no iteration, as robobrain collect's), which "
                f"{'resuming' if keep else 'starting'} the run would delete: move them to a store of "
                f"their own (--seed-data takes it) or pass another --run-dir"
            )

    def _load_offline(self) -> None:
        """The ``seed_data`` episodes (none without it); they must come from the run's env."""
        self._offline = []
        self._offline_names: list[str] = []
        self._offline_seeds: list[range] = []
        if self.cfg.seed_data is None:
            return
        where = f"--seed-data {self.cfg.seed_data}"
        if not Path(self.cfg.seed_data).is_dir():
            raise ValueError(f"{where}: no such directory")
        if Path(self.cfg.seed_data).resolve() == self.store.root.resolve():
            raise ValueError(f"{where} is this run's own store, where it keeps the episodes it collects")
        store = EpisodeStore(self.cfg.seed_data)
        self._offline = store.load_all()
        self._offline_names = sorted(store.manifest)
        if not self._offline:
            raise ValueError(f"{where}: no readable episodes there")
        envs = sorted({str(ep.meta.get("env_id")) for ep in self._offline})
        if envs != [self.cfg.env]:
            raise ValueError(f"{where}: episodes of {envs}, not of {self.cfg.env}")
        sizes = sorted({ep.pixels.shape[1] for ep in self._offline})
        rendered = self.envs.single_observation_space["pixels"].shape[0]
        if sizes != [rendered]:
            raise ValueError(f"{where}: episodes of {sizes} px, the run's envs render {rendered} px")
        check_frame_side(rendered, f"{where}: its frames")  # (before the seed episodes are collected)
        # Env i of a collection is first reset with seed + i (collect's meta; 2 envs before it said)
        metas = [ep.meta for ep in self._offline]
        pairs = [(m.get("seed"), m.get("num_envs", 2)) for m in metas]  # (hand-written meta: any JSON)
        seeds = {(int(s), int(n)) for s, n in pairs if is_int(s) and is_int(n) and n > 0}
        self._offline_seeds = [range(s, s + n) for s, n in sorted(seeds)]
        log.info("%d offline episodes from %s", len(self._offline), self.cfg.seed_data)

    def _recent_episodes(self, n: int) -> list[Episode]:
        """The newest ``n`` episodes (the SB3 imagination env's start states come from them)."""
        return (self._offline + self._episodes)[-n:]

    def _build_model(self, weights: Checkpoint | None = None) -> None:
        """A world model of ``self.wm_cfg`` sized to the data: fresh, or with the ``weights`` of a
        checkpoint whose config ``self.wm_cfg`` is (their state statistics come with them)."""
        episodes = self._train_episodes()
        cfg = sized_config(self.wm_cfg, episodes)
        if weights is not None:  # (its episodes came to end in falls after it was sized: it goes on without)
            cfg = dataclasses.replace(cfg, termination=self.wm_cfg.termination)
        if weights is not None and cfg != self.wm_cfg:
            differ = {
                f.name: (getattr(self.wm_cfg, f.name), getattr(cfg, f.name))
                for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(self.wm_cfg, f.name)
            }
            raise CheckpointError(
                f"{weights.path}: the world model was trained on other data than {self.cfg.env}'s "
                f"episodes here ((its, the data's): {differ})"
            )
        torch.manual_seed(self.cfg.seed)
        self.model = WorldModel(cfg).to(self.device)
        if weights is not None:
            load_weights(self.model, weights)
        elif self.model.uses_state_stats:
            self.model.set_state_stats(*state_stats(episodes, self.device))
        sampler = SequenceSampler(episodes, self.tcfg.seq_len, seed=self.cfg.seed)
        self.trainer = WorldModelTrainer(self.model, self.tcfg, sampler, self.device)
        self.config["world_model"] = to_dict(cfg)
        self.config["train"] = to_dict(self.tcfg)

    def _fit_world_model(self, updates: int) -> dict[str, float]:
        assert self.trainer is not None
        self.trainer.sampler.set_episodes(self._train_episodes())
        try:
            window = [m for m in (self.trainer.train_step() for _ in range(updates)) if m is not None]
        except NonFiniteLossError as e:
            raise with_kept_checkpoint(e, self.run_dir) from None
        if not window:
            return {}
        metrics = {f"wm_{k}": float(np.mean([m[k] for m in window])) for k in window[-1]}
        # The distinct episodes the world model draws its windows from (offline and the run's own).
        metrics["wm_episodes"] = len({id(ep) for ep in self.trainer.sampler.episodes})
        return metrics

    def _uses_sb3(self) -> bool:
        return self.cfg.prior_samples > 0 or self.cfg.use_value

    def _imagination_env(self, seed: int) -> ImaginationVecEnv:
        """The SB3 model's env: imagination from the newest episodes, rewarded as the planner scores
        (its evaluation: the exploring one's ``explore_bonus`` is collection's alone)."""
        assert self.model is not None
        mpc = self.cfg.mpc
        return imagination_env(self.model, self._recent_episodes(64), self.cfg.sb3, seed, mpc.success_bonus,
                               mpc.disagreement_penalty)  # fmt: skip

    def _finetune(self) -> dict[str, float]:
        assert self.model is not None
        if not self._uses_sb3():
            return {}
        seed = self.cfg.seed + self.state.iteration
        env = self._imagination_env(seed)
        if self.sb3 is None:
            self.sb3 = make_sb3_model(self.cfg.sb3, env, self.cfg.seed, self.device)
        return finetune(self.sb3, env, self.cfg.sb3.steps_per_iteration)

    def _guide(self) -> ActorCriticGuide | None:
        cfg = self.cfg
        # Once SB3 has taken a gradient step (an off-policy model once num_timesteps > learning_starts,
        # PPO and A2C at the end of each rollout): before, its actor and critic are the random initial ones
        ready = self.sb3 is not None and self.sb3._n_updates > 0
        if not ready or not self._uses_sb3():
            return None
        return ActorCriticGuide(self.sb3, num_prior=cfg.prior_samples, use_value=cfg.use_value)

    def _make_planner(self, explore: bool) -> Policy:
        assert self.model is not None
        mpc = dataclasses.replace(self.cfg.mpc, seed=self.cfg.mpc.seed + self.cfg.seed)  # (--seed)
        if not explore:
            mpc = dataclasses.replace(without_exploration(mpc), seed=mpc.seed + 1)
        elif self.cfg.explore_bonus:
            bonus = self.cfg.explore_bonus
            mpc = dataclasses.replace(mpc, disagreement_penalty=mpc.disagreement_penalty - bonus)
        return self.f.make_planner(self.model, mpc, self._guide())

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        """The planner without noise on fixed seeds (``final``: into ``eval/final``, one video).

        Under a forked, seeded torch generator: an SB3 guide's prior samples draw from torch's
        global one, so without this the same weights scored differently with each RNG history, and
        evaluating moved the training stream on.
        """
        cuda = []
        if self.device.type == "cuda":
            cuda = [torch.cuda.current_device() if self.device.index is None else self.device.index]
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.cfg.seed + 1_000_000)
            return self._evaluate(final)

    def _evaluate(self, final: bool) -> dict[str, Any]:
        envs = self.f.make_eval_envs(min(self.cfg.num_envs, self.cfg.eval_episodes))
        try:
            out = self.run_dir / "eval" / ("final" if final else f"step_{self.state.env_steps:07d}")
            report = evaluate_policy(
                self._make_planner(explore=False), envs, self.cfg.eval_episodes, seed=EVAL_SEEDS.start,
                out_dir=out, video_episodes=1 if final else 0, progress=False,
                meta={"env_id": self.cfg.env, "env_steps": self.state.env_steps},  # (as eval names it)
            )  # fmt: skip
        finally:
            for e in envs:
                e.close()
        return report

    def _keep_old_final_evaluation(self) -> None:
        """A finished run given a larger ``env_steps``: its final evaluation, which the train.csv row
        at its old budget reports, moves to ``eval/step_N`` (N: its env steps) instead of being
        overwritten by the new final one."""
        final = self.run_dir / "eval" / "final"
        try:
            steps = json.loads((final / "eval_info.json").read_text())["env_steps"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # (none, or not one of ours: left as it is)
        # Only the final evaluation of the checkpointed weights: one written after them (a run killed
        # while saving its last checkpoint) belongs to the iteration that is redone, and is redone.
        if is_int(steps) and steps == self.state.env_steps:
            target = final.parent / f"step_{steps:07d}"
            if not target.exists():
                final.rename(target)

    def checkpoint(self) -> None:
        assert self.model is not None and self.trainer is not None
        self.state.last_checkpoint = self.state.env_steps
        state = {
            "loop": self.state.to_dict(),
            "trainer": {**self.trainer.training_state(), "step": self.trainer.step},
            "rng": rng_state(),
            "planner": generator_states(self.planner),
            "offline": fingerprint(self._offline_names),
        }

        def write_sb3(tmp: Path) -> None:
            if self.sb3 is not None:
                save_sb3(self.sb3, tmp / SB3_DIR)

        save_wm_checkpoint(
            self.run_dir, self.state.env_steps, self.model, self.config, self.trainer.optimizer, state,
            extra=write_sb3,
        )  # fmt: skip

    def _adopt_world_model_sizes(self, ckpt: Checkpoint, what: str, hint: str = "") -> None:
        """Take the world-model config of ``ckpt``, whose frames must be those the envs render and
        whose inputs and ensemble are those the run's flags ask for (they were silently dropped)."""
        self.wm_cfg = model_config_from_checkpoint(ckpt.config, ckpt.path)
        cfg, wm = self.cfg, self.wm_cfg
        asked = {"--proprio": (cfg.proprio, wm.use_proprio or wm.proprio_dim > 0, cfg.proprio),
                 "--keypoints": (cfg.keypoints, wm.keypoints, bool(cfg.keypoints)),
                 "--ensemble": (cfg.ensemble, wm.ensemble, cfg.ensemble is not None),
                 "--no-termination": (False, wm.termination, not cfg.termination)}  # fmt: skip
        for flag, (want, has, given) in asked.items():
            if given and want != has:
                raise CheckpointError(
                    f"{ckpt.path}: {what} has {flag.lstrip('-').removeprefix('no-')} {has}, not the {want} "
                    f"{flag} asks for; leave {flag} out to take its own"
                )
        if cfg.explore_bonus and not wm.ensemble:
            raise CheckpointError(f"{ckpt.path}: {what} has no ensemble, which --explore-bonus needs")
        rendered = self.envs.single_observation_space["pixels"].shape[0]
        if self.wm_cfg.image_size != rendered:
            raise CheckpointError(
                f"{ckpt.path}: {what} sees {self.wm_cfg.image_size} px frames, the run's envs render "
                f"{rendered} px (--image-size{hint})"
            )

    def _resume(self) -> bool:
        ckpt = load_latest(self.run_dir)
        if ckpt is None:
            return False
        latest = ckpt.path
        check_config(ckpt.config, self.config, latest / "config.json")
        ckpt.require("loop", "trainer", "rng")  # before the store is truncated to the checkpoint
        with restoring(latest):
            self.state.load(ckpt.state["loop"])
            trainer_step = int(ckpt.state["trainer"]["step"])
        budget, done = ckpt.config.get("online", {}).get("env_steps"), self.state.env_steps
        # (Its own budget re-runs a finished run, which whole iterations may have taken past it.)
        if is_int(budget) and self.cfg.env_steps < done and self.cfg.env_steps != budget:
            # (before the store is truncated; it ran the final evaluation again and wrote the lower
            # budget to config.json)
            own = f"{budget}, the run's own, or " if budget < done else ""
            raise ValueError(
                f"{latest}: the run holds {done} env steps (its --env-steps was {budget}); --env-steps "
                f"{self.cfg.env_steps} undoes none of them: pass --env-steps {own}{done} or more"
            )
        self._refuse_foreign_episodes(self.state.episodes)
        dropped = self.store.truncate(self.state.episodes)
        if dropped:
            log.info("dropped %d episodes written after the last checkpoint", len(dropped))
        self._episodes = self.store.load_all()
        if len(self._episodes) != self.state.episodes:
            raise CheckpointError(
                f"{self.store.root}: {len(self._episodes)} readable episodes, the checkpoint expects "
                f"{self.state.episodes} (skipped: {self.store.skipped})"
            )
        self._adopt_world_model_sizes(ckpt, "the run's world model", "; leave it out to resume")
        # The run goes on with the training settings it started with (the world model's sizes too),
        # whatever the preset's are in this robobrain.
        if "train" in ckpt.config:
            saved = train_config_from_checkpoint(ckpt.config, latest)
            now = to_dict(self.tcfg)
            diff = {k: (v, now.get(k)) for k, v in to_dict(saved).items() if now.get(k) != v}
            if diff:
                log.warning(
                    "%s trains with the settings it started with; the %s preset's now differ "
                    "(the run's vs the preset's): %s", latest, self.cfg.preset, diff,
                )  # fmt: skip
            self.tcfg = saved
        self._build_model(ckpt)
        assert self.model is not None and self.trainer is not None
        with restoring(latest):
            self.trainer.restore(trainer_step, ckpt.state["trainer"], ckpt.optimizer_state)
        if (latest / SB3_DIR).is_dir():
            env = self._imagination_env(self.cfg.seed)
            self.sb3 = load_sb3(self.cfg.sb3, latest / SB3_DIR, env, self.device)
        elif self._uses_sb3() and self.state.iteration > 1:  # (fine-tuned since pretraining's iteration)
            raise CheckpointError(  # (a fresh actor-critic and replay buffer would go on silently)
                f"{latest / SB3_DIR}: missing, yet the run fine-tuned its SB3 model{recovery_hint(latest)}"
            )
        self.planner = self._make_planner(explore=True)
        saved_device = torch.device(ckpt.config["online"].get("device", self.cfg.device))
        reseed = None
        if saved_device.type != self.device.type:
            reseed = self.cfg.mpc.seed + self.cfg.seed + self.state.env_steps
            log.warning(
                "resuming on %s a run checkpointed on %s: the planner's random streams are seeded "
                "afresh, so the run goes on differently from one that never changed device",
                self.device, saved_device,
            )  # fmt: skip
        with restoring(latest):
            set_generator_states(self.planner, ckpt.state.get("planner", {}), reseed=reseed)
            set_rng_state(ckpt.state["rng"])
        saved_offline = ckpt.state.get("offline")  # (older checkpoints lack it)
        if saved_offline is not None and saved_offline != fingerprint(self._offline_names):
            log.warning(
                "--seed-data %s holds other episodes than when %s was written (%d then, %d now): the "
                "world model goes on training on today's", self.cfg.seed_data, latest,
                saved_offline.get("episodes", -1), len(self._offline_names),
            )  # fmt: skip
        log.info("resumed from %s at %d env steps", latest, self.state.env_steps)
        return True

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._episodes: list[Episode] = []
        self._load_offline()
        self._clock = time.perf_counter()
        resumed = self._resume()
        if not resumed:  # (before anything is written: the store is emptied below)
            check_read_settings(cfg)
            self._refuse_foreign_episodes(0)
        if resumed and self.state.env_steps < cfg.env_steps:
            self._keep_old_final_evaluation()
        init = None
        if not resumed and cfg.init_world_model is not None:
            # (checked before the seed episodes are collected, and before the logs are opened)
            init = load_checkpoint(cfg.init_world_model, with_training_state=False)
            check_trained_env(init.config, cfg.env, init.path)
            self._adopt_world_model_sizes(init, "the world model")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logger = MetricLogger(self.run_dir, "train", step_key="env_steps")
        # (a run killed before its first checkpoint starts over: none of its rows stay, step 0's neither)
        logger.truncate_after(self.state.env_steps if resumed else -1)
        if not resumed:  # (a run killed before its first checkpoint starts over)
            self.store.truncate(0)
            self._seed_data()
            if self.state.env_steps >= cfg.env_steps:
                log.warning(
                    "the seed episodes took %d env steps, --env-steps is %d: the planner never acts "
                    "(raise --env-steps or lower --seed-episodes)", self.state.env_steps, cfg.env_steps,
                )  # fmt: skip
            self._build_model(init)
        # The resolved config, world-model sizes included.
        atomic_write_json(self.run_dir / "config.json", self.config)
        if not resumed:
            metrics = self._fit_world_model(cfg.pretrain_steps)
            self.planner = self._make_planner(explore=True)
            self._after_iteration(metrics, logger)
        bar = tqdm(total=cfg.env_steps, initial=min(self.state.env_steps, cfg.env_steps), desc="train",
                   unit="step", disable=not self.progress)  # fmt: skip
        try:
            while self.state.env_steps < cfg.env_steps:
                t0 = time.perf_counter()
                before = self.state.env_steps
                self.planner = self._make_planner(explore=True) if self.planner is None else self.planner
                self._record_training_episodes(self._collect(self.planner, cfg.num_envs, "mpc"))
                collect_s = time.perf_counter() - t0
                self.state.wm_updates_owed += (self.state.env_steps - before) * cfg.train_ratio
                updates = int(self.state.wm_updates_owed)
                self.state.wm_updates_owed -= updates
                metrics = self._fit_world_model(updates)
                metrics.update(self._finetune())
                metrics["collect_s"] = collect_s
                metrics["iteration_s"] = time.perf_counter() - t0
                # A new planner sees the refitted model and the fine-tuned guide; its generators
                # carry over so the run stays one seeded stream.
                gens = generator_states(self.planner)
                self.planner = self._make_planner(explore=True)
                set_generator_states(self.planner, gens)
                self._after_iteration(metrics, logger)
                bar.update(self.state.env_steps - before)
                bar.set_postfix(
                    success=f"{self.state.last_success:.2f}", wm=f"{metrics.get('wm_loss', 0):.1f}"
                )
        finally:
            bar.close()
            logger.close()
        report = self._final_report
        if report is None:  # (a run resumed at its budget has not evaluated in this call: it re-runs it)
            report = self.evaluate(final=True)
            if self.state.last_eval != self.state.env_steps:
                # Its budget lowered to the steps it held: its last row had no evaluation, the curve no
                # final point. (Not checkpointed: a later re-run amends the row again, with the same.)
                columns = eval_columns(report)
                logger = MetricLogger(self.run_dir, "train", step_key="env_steps")
                try:
                    logger.amend(self.state.env_steps, columns)
                finally:
                    logger.close()
                for cb in self.callbacks:
                    cb.on_iteration(self.state, columns, self.run_dir)
        atomic_write_json(self.run_dir / "final_eval.json", report["summary"])
        return report

    def _after_iteration(self, metrics: dict[str, float], logger: MetricLogger) -> None:
        cfg, st = self.cfg, self.state
        st.iteration += 1
        row = {
            "iteration": st.iteration,
            "episodes": st.episodes,
            "train_success": st.last_success,
            "train_return": st.last_return,
            **metrics,
        }
        if st.last_eval < 0 or st.env_steps - st.last_eval >= cfg.eval_every or st.env_steps >= cfg.env_steps:
            # At the budget this is the final evaluation (eval/final, its video, final_eval.json):
            # the same weights are not evaluated twice.
            t0 = time.perf_counter()
            report = self.evaluate(final=st.env_steps >= cfg.env_steps)
            row["eval_s"] = time.perf_counter() - t0  # (in wall_s: what the loop spent not training)
            if st.env_steps >= cfg.env_steps:
                self._final_report = report
            row.update(eval_columns(report))
            st.last_eval = st.env_steps
        # wall_s before the checkpoint, so a resumed run keeps this iteration's time (writing the
        # checkpoint counts toward the next row's).
        now = time.perf_counter()
        st.wall_s += now - self._clock
        self._clock = now
        row["wall_s"] = st.wall_s
        # The row before the checkpoint: a crash between the two re-runs this iteration on resume
        # (whose truncate_after drops the row); the other order would lose the row for good.
        logger.log(st.env_steps, row)
        if st.env_steps - st.last_checkpoint >= cfg.checkpoint_every or st.env_steps >= cfg.env_steps:
            self.checkpoint()
        for cb in self.callbacks:
            cb.on_iteration(st, row, self.run_dir)


def eval_columns(report: dict[str, Any]) -> dict[str, float]:
    """train.csv's columns of an evaluation report (success NaN for an env without info["success"])."""
    success = report["summary"]["success_rate"]
    return {"eval_success": float("nan") if success is None else success,
            "eval_return": report["summary"]["mean_return"]}  # fmt: skip


def train_online(
    cfg: OnlineConfig,
    run_dir: str | os.PathLike[str],
    factories: LoopFactories,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the online loop in ``run_dir``; returns the final evaluation report."""
    with exclusive_run(run_dir, "train") as held:
        loop = OnlineLoop(cfg, held, factories, callbacks, progress)
        try:
            return loop.run()
        finally:
            loop.envs.close()
