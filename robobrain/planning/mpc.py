"""Model-predictive control: re-plan every step over any score function, execute the first action.

The controller knows nothing about models either: the caller hands it a ``ScoreFn`` for the current
step (from the world model's ``imagine``, or the oracle simulator). It keeps the previous plan and
warm-starts from it shifted by one step (mbrl-lib style), mixes in policy-prior samples when given,
and adds exploration noise for data collection.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from robobrain.planning.noise import powerlaw_noise
from robobrain.planning.optimizers import CEM, MPPI, OptimizerConfig, PlanResult, ScoreFn
from robobrain.world_model import Rollout, State, WorldModel, step_score, still_running


@dataclass(frozen=True)
class MPCConfig:
    horizon: int = 12
    """Planning horizon H (steps)."""
    optimizer: Literal["cem", "mppi"] = "cem"
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    exploration_std: float = 0.0
    """Gaussian noise added to the executed action (data collection); 0 for evaluation."""
    exploration_plan_std: float = 0.0
    """Noise of this many times the planner's own final sampling std of the first action [B, A]
    (TD-MPC2 explores with 1: wide where the planner is still unsure, down to ``optim.min_std`` where
    it converged), drawn with the ``exploration_std`` noise as one Gaussian of their combined std
    (``sqrt(exploration_std^2 + (exploration_plan_std * std)^2)``); 0 for evaluation."""
    exploration_beta: float = 0.0
    """Colour of that noise along each env's episode: 0 white (independent steps), 1 pink, 2 red
    (power spectrum ~ 1 / f^beta; :func:`robobrain.planning.noise.powerlaw_noise`). Each env draws a
    sequence of ``exploration_length`` steps at its reset (and a new one when it runs out)."""
    exploration_length: int = 50
    """Steps per coloured-noise sequence (the robobrain tasks' episode length)."""
    success_bonus: float = 1.0
    """Scoring (world model and oracle): bonus per step times the predicted success probability (the
    oracle's true success flag)."""
    disagreement_penalty: float = 0.0
    """World-model scoring: penalty times the ensemble disagreement (needs an ensemble); negative,
    a bonus for it (exploration, as ``robobrain train --explore-bonus`` uses while collecting)."""
    discount: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:  # when the flags are read, not after a run's seed episodes
        if not 0 <= self.seed < 2**63:  # (torch's generators take up to 2**64 - 1: seed + 1 and the
            # like fit; not the 32 bits of --seed, which a run adds to --mpc.seed and + 1 for evaluation)
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.horizon < 1:
            raise ValueError(f"the planning horizon must be >= 1, got {self.horizon}")
        for name in ("exploration_std", "exploration_plan_std"):
            if not 0 <= getattr(self, name) < math.inf:  # (NaN too)
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if not 0 <= self.exploration_beta < math.inf:  # (NaN coloured noise became NaN actions)
            raise ValueError(f"exploration_beta must be finite and >= 0, got {self.exploration_beta}")
        if self.exploration_length < 2:  # (read only with exploration_beta > 0: checked anyway)
            raise ValueError(f"coloured noise needs exploration_length >= 2, got {self.exploration_length}")
        for name in ("success_bonus", "disagreement_penalty"):  # (NaN scored every plan -inf: zeros)
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")


def without_exploration(cfg: MPCConfig) -> MPCConfig:
    """``cfg`` with every exploration noise off (evaluation plans without them)."""
    return dataclasses.replace(cfg, exploration_std=0.0, exploration_plan_std=0.0)


def check_action_bounds(low: Any, high: Any, cfg: MPCConfig) -> None:
    """The planner samples actions in [cfg.optim.low, cfg.optim.high]; an env whose Box differs
    (e.g. Pendulum's [-2, 2]) would silently get only part of its range -- refuse it instead."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if not (np.all(low == cfg.optim.low) and np.all(high == cfg.optim.high)):
        uniform = np.all(low == low.flat[0]) and np.all(high == high.flat[0])
        env = (
            f"[{low.flat[0]}, {high.flat[0]}]"
            if uniform
            else f"low {low.tolist()}, high {high.tolist()} (not one range for every dimension)"
        )
        raise ValueError(
            f"the planner acts in [{cfg.optim.low}, {cfg.optim.high}] but the env's actions are in "
            f"{env}; wrap the env in gymnasium.wrappers.RescaleAction"
        )


def uniform_bounds(space: Any) -> dict[str, float]:
    """``{"low", "high"}`` of a Box action space whose dimensions all share one range (e.g.
    InvertedPendulum's [-3, 3]), for :class:`OptimizerConfig`; ``{}`` (the planner's default [-1, 1])
    for any other space, which :func:`check_action_bounds` then refuses with its hint."""
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None or np.size(low) == 0:
        return {}
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if not (np.all(low == low.flat[0]) and np.all(high == high.flat[0])):
        return {}
    if not (np.isfinite(low.flat[0]) and np.isfinite(high.flat[0])):
        return {}
    return {"low": float(low.flat[0]), "high": float(high.flat[0])}


def check_unit_bounds(cfg: MPCConfig, who: str) -> None:
    """SB3's actors, the imagination env and the behaviour prior act in [-1, 1] (tanh-squashed):
    with other planner bounds their proposals would cover only part of the env's range."""
    if (cfg.optim.low, cfg.optim.high) != (-1.0, 1.0):
        raise ValueError(
            f"{who} acts in [-1, 1], but the planner's bounds are [{cfg.optim.low}, {cfg.optim.high}]; "
            "wrap the env in gymnasium.wrappers.RescaleAction(env, -1, 1) and keep the default bounds"
        )


def make_optimizer(cfg: MPCConfig, device: torch.device | str = "cpu") -> CEM | MPPI:
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    cls = {"cem": CEM, "mppi": MPPI}[cfg.optimizer]
    return cls(cfg.optim, generator=gen)


class MPC:
    """Receding-horizon controller for B envs at once."""

    def __init__(self, cfg: MPCConfig, action_dim: int, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.action_dim = action_dim
        self.device = torch.device(device)
        self.optimizer = make_optimizer(cfg, self.device)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self._noise: torch.Tensor | None = None
        """Coloured exploration noise [B, L, A] and each env's position in it [B] (beta > 0)."""
        self._noise_t: torch.Tensor | None = None
        self.plan: torch.Tensor | None = None
        self.last: PlanResult | None = None

    def reset(self, num_envs: int, mask: torch.Tensor | np.ndarray | None = None) -> None:
        """Forget the plans of all envs, or only of those where the bool ``mask`` [B] is True."""
        if mask is not None:
            mask = torch.as_tensor(mask, device=self.device)
            if mask.dtype != torch.bool or mask.shape != (num_envs,):
                got = f"{mask.dtype} {list(mask.shape)}"
                raise ValueError(f"mask must be a bool [{num_envs}] array, got {got}")
        # A forgotten plan is the middle of the action range (0 was the lower bound of [0, 2], where half
        # the first samples then piled up).
        centre = (self.cfg.optim.low + self.cfg.optim.high) / 2
        if self.plan is None or mask is None or self.plan.shape[0] != num_envs:
            self.plan = torch.full((num_envs, self.cfg.horizon, self.action_dim), centre, device=self.device)
            self._noise = self._noise_t = None  # drawn at the first noisy action
        else:
            self.plan[mask] = centre
            if self._noise_t is not None:
                self._noise_t[mask] = self.cfg.exploration_length  # redraw at next use

    def act(self, score_fn: ScoreFn, prior_samples: torch.Tensor | None = None) -> torch.Tensor:
        """Plan with ``score_fn`` and return the first actions [B, A] (plus exploration noise)."""
        return self.act_with(lambda init: self.optimizer.plan(score_fn, init, prior_samples=prior_samples))

    def act_with(self, plan: Callable[[torch.Tensor], PlanResult]) -> torch.Tensor:
        """:meth:`act` with the planning call given: ``plan(init_mean [B, H, A]) -> PlanResult``
        (e.g. a :class:`robobrain.planning.GraphedPlan` of this controller's optimizer)."""
        if self.plan is None:
            raise RuntimeError("call reset(num_envs) before act()")
        result = plan(self.plan)
        self.last = result
        action = result.best[:, 0]
        # Warm start: shift the plan one step and repeat its last action at the tail.
        self.plan = torch.cat([result.best[:, 1:], result.best[:, -1:]], 1)
        if self.cfg.exploration_std > 0 or self.cfg.exploration_plan_std > 0:
            std: torch.Tensor | float = self.cfg.exploration_std
            if self.cfg.exploration_plan_std > 0:
                plan_std = self.cfg.exploration_plan_std * result.std[:, 0].to(action.dtype)
                std = (self.cfg.exploration_std**2 + plan_std**2).sqrt()
            action = action + std * self._exploration_noise(action.shape)
        return action.clamp(self.cfg.optim.low, self.cfg.optim.high)

    def _exploration_noise(self, shape: torch.Size) -> torch.Tensor:
        """Unit-variance noise [B, A] for this step: white, or the next step of each env's sequence."""
        if self.cfg.exploration_beta <= 0:
            return torch.randn(shape, generator=self.noise_gen, device=self.device)
        b, length = shape[0], self.cfg.exploration_length
        if self._noise is None or self._noise_t is None or self._noise.shape[0] != b:
            self._noise = torch.zeros(b, length, shape[1], device=self.device)
            self._noise_t = torch.full((b,), length, dtype=torch.long, device=self.device)
        spent = self._noise_t >= length
        if spent.any():
            fresh = powerlaw_noise(
                self.cfg.exploration_beta, int(spent.sum()), length, shape[1], self.noise_gen, self.device
            )
            self._noise[spent] = fresh
            self._noise_t[spent] = 0
        noise = self._noise[torch.arange(b, device=self.device), self._noise_t]
        self._noise_t += 1
        return noise


class PriorRollout(NamedTuple):
    """Prior action sequences and the imagined future they were sampled along (a planner guide's).

    actions: [B, P, H, A]; rollout: the world model's heads on those imagined states, [B*P, H, ...]
    (row b*P + p follows actions[b, p]). :func:`world_model_score_fn` scores them from here instead
    of imagining them a second time."""

    actions: torch.Tensor
    rollout: Rollout


def world_model_score_fn(
    model: WorldModel,
    state: State,
    cfg: MPCConfig,
    value_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prior: PriorRollout | None = None,
    imagine: Callable[[State, torch.Tensor], Rollout] | None = None,
) -> ScoreFn:
    """Score candidates [B, N, H, A] from latent ``state`` [B] by imagination: discounted predicted
    reward + success bonus, minus the ensemble-disagreement penalty, plus ``discount^H`` times
    ``value_fn(feat [M, F]) -> [M]`` of the last imagined state when given; with a termination head,
    each step's score and the value are weighted by the probability that the episode is still running
    there (:func:`~robobrain.world_model.still_running`). Returns [B, N].

    ``prior``: when candidates 1..P are exactly ``prior.actions`` (where the optimizers put prior
    samples), their scores come from ``prior.rollout`` and only the other candidates are imagined.

    ``imagine(state [M], actions [M, H, A]) -> Rollout``: ``model.imagine`` unless given, e.g. a
    :class:`robobrain.world_model.GraphedImagine` of the model (bf16 and CUDA graphs on a GPU)."""

    def returns(out: Rollout) -> torch.Tensor:
        r = step_score(out.reward.float(), out.success_logit.float(), cfg.success_bonus)
        if cfg.disagreement_penalty:
            if out.disagreement is None:
                raise ValueError("disagreement_penalty needs a world model trained with an ensemble")
            r = r - cfg.disagreement_penalty * out.disagreement.float()
        h = r.shape[1]
        running = None if out.terminal_logit is None else still_running(out.terminal_logit)  # [M, H + 1]
        if running is not None:  # (a step after a predicted end of the episode is worth nothing)
            r = r * running[:, :-1]
        if cfg.discount != 1.0:
            r = r * cfg.discount ** torch.arange(h, device=r.device, dtype=r.dtype)
        total = r.sum(-1)
        if value_fn is not None:
            value = value_fn(out.feat[:, -1])
            if value.shape != total.shape:
                raise ValueError(f"value_fn must return [M={total.shape[0]}] values, got {list(value.shape)}")
            total = total + cfg.discount**h * value.float() * (1.0 if running is None else running[:, -1])
        return total

    roll = model.imagine if imagine is None else imagine
    repeated: dict[int, State] = {}  # the start states of N candidates, built once per call of the planner

    def imagined(actions: torch.Tensor) -> torch.Tensor:
        b, n, h, a = actions.shape
        if n not in repeated:
            repeated[n] = state.repeat_interleave(n)
        with torch.no_grad():
            out = roll(repeated[n], actions.reshape(b * n, h, a))
        return returns(out).view(b, n)

    known = None if prior is None else returns(prior.rollout).view(prior.actions.shape[:2])

    def score(actions: torch.Tensor) -> torch.Tensor:
        if prior is None or known is None:  # (known is None exactly when prior is)
            return imagined(actions)
        p = prior.actions.shape[1]
        if actions.shape[1] <= p or not torch.equal(actions[:, 1 : 1 + p], prior.actions.to(actions.dtype)):
            return imagined(actions)
        rest = torch.cat([actions[:, :1], actions[:, 1 + p :]], 1)
        rest_scores = imagined(rest)
        return torch.cat([rest_scores[:, :1], known, rest_scores[:, 1:]], 1)

    return score
