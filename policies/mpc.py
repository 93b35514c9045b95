"""MPC policies: planning with a learned world model, or with the true simulator (oracle)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from robobrain.planning import MPC, GraphedPlan, MPCConfig, world_model_score_fn
from robobrain.planning.oracle import OracleModel
from robobrain.policies.base import Observation, batch_size
from robobrain.rl.behaviour_prior import BehaviourPrior
from robobrain.rl.guide import PlannerGuide
from robobrain.world_model import (
    Bf16Imagine,
    FusedImagine,
    GraphedImagine,
    Rollout,
    State,
    WorldModel,
    fused_unsupported,
)


class LatentFilter:
    """Filters each env's pixels (and goal) into the world model's latent state, one RSSM update per
    step with the posterior's mode, the way the model was trained and the planner reads it."""

    def __init__(self, model: WorldModel, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.state: State | None = None
        self.prev_action: torch.Tensor | None = None

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        """Start new episodes in all envs, or only where ``mask`` [N] is True."""
        if mask is not None and np.shape(mask) != (num_envs,):  # (torch's broadcasting error, as MPC's)
            raise ValueError(f"mask must be a bool [{num_envs}] array, got shape {list(np.shape(mask))}")
        init = self.model.rssm.initial(num_envs, self.device)
        zeros = torch.zeros(num_envs, self.model.cfg.action_dim, device=self.device)
        if mask is None or self.state is None or self.state.deter.shape[0] != num_envs:
            self.state, self.prev_action = init, zeros
            return
        m = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        # The goal is re-read from every observation, so the reset state needs none.
        self.state = State(self.state.deter, self.state.stoch).where(m, init)
        self.prev_action = torch.where(m[:, None], zeros, self.prev_action)

    @torch.no_grad()
    def update(self, obs: Observation) -> tuple[State, torch.Tensor]:
        """Fold the observations of N envs into their states; returns (states [N], pixels uint8[N, S, S, 3]).
        Call :meth:`acted` with the actions taken next."""
        n = batch_size(obs)
        size = self.model.cfg.image_size
        pixels = np.asarray(obs["pixels"])
        if pixels.shape[1:] != (size, size, 3) or pixels.dtype != np.uint8:
            raise ValueError(
                f"this world model sees uint8[N, {size}, {size}, 3] pixels, got {pixels.dtype}{pixels.shape}"
            )
        if self.state is None or self.state.deter.shape[0] != n:
            self.reset(n)
        assert self.state is not None and self.prev_action is not None
        env_state = obs.get("state") if isinstance(obs, dict) else None
        env_state = None if env_state is None else torch.as_tensor(env_state, device=self.device)
        goal = self.model.goal(env_state)
        reads_proprio = self.model.cfg.proprio_dim and env_state is not None
        proprio = self.model.proprio(env_state) if reads_proprio else None
        for name, x in (("goal", goal), ("proprioception", proprio)):  # (as observe refuses them: a NaN
            if x is not None and not torch.isfinite(x).all():  # goal scored every plan -inf, acting 0)
                raise ValueError(f"obs['state']: the {name} it holds contains NaN or inf")
        frames = torch.from_numpy(pixels).to(self.device)
        embed = self.model.embed(frames, env_state)
        self.state = self.state._replace(goal=goal)
        self.state, _, _ = self.model.rssm.obs_step(self.state, self.prev_action, embed, sample=False)
        return self.state, frames

    def acted(self, action: torch.Tensor) -> None:
        """The actions [N, A] taken after the last update (the next update's previous action)."""
        self.prev_action = action.to(self.device)


class WorldModelMPCPolicy:
    """Filters each env's pixels into a latent state (:class:`LatentFilter`) and plans over
    ``WorldModel.imagine`` for all envs in one batched call."""

    def __init__(
        self,
        model: WorldModel,
        cfg: MPCConfig | None = None,
        device: torch.device | str = "cpu",
        guide: PlannerGuide | None = None,
        fast: bool = True,
        whole_plan: bool = True,
        compile: bool | str = False,
        fused: bool = False,
    ) -> None:
        """``guide``: proposes prior samples and may value the end of each imagined plan -- an SB3
        actor-critic (:class:`robobrain.rl.ActorCriticGuide`) or a behaviour-cloned prior
        (:class:`robobrain.rl.BehaviourPriorGuide`). ``fast``: on CUDA, imagine the candidates under
        bf16 autocast, replayed from CUDA graphs (:class:`GraphedImagine`); no effect on the CPU.
        ``whole_plan`` (with ``fast``, on CUDA, unguided plans without a time budget): record each
        whole planning call -- all iterations -- as one CUDA graph (:class:`GraphedPlan`) over a bf16
        twin of the model (:class:`Bf16Imagine`), ``torch.compile``-d when ``compile`` (a string:
        ``torch.compile``'s mode). ``fused`` (instead of ``compile``): imagine in that graph with one
        Triton kernel per rollout (:class:`FusedImagine`); ValueError where it cannot run."""
        self.cfg = cfg or MPCConfig()
        if self.cfg.disagreement_penalty and not model.cfg.ensemble:
            raise ValueError(
                "disagreement_penalty needs a world model trained with an ensemble (ensemble > 0); "
                "this one has none"
            )
        num_prior = getattr(guide, "num_prior", 0)
        if num_prior > self.cfg.optim.num_samples - 1:  # (the rest were rolled out for nothing)
            raise ValueError(
                f"the guide proposes {num_prior} prior samples per iteration; the planner keeps at most "
                f"num_samples - 1 = {self.cfg.optim.num_samples - 1} (its mean is the other candidate): "
                "lower the prior samples or raise the samples"
            )
        self.filter = LatentFilter(model, device)
        self.model = self.filter.model
        self.guide = guide
        self.device = self.filter.device
        self.mpc = MPC(self.cfg, model.cfg.action_dim, self.device)
        # The ensemble's disagreement costs about twice the rest of a rollout on 2 CPU cores: only
        # when the score uses it.
        self.wants_disagreement = wants = bool(self.cfg.disagreement_penalty)
        self.imagine = (
            GraphedImagine(self.model, disagreement=wants)
            if fast
            else functools.partial(self.model.imagine, disagreement=wants)
        )
        self.graphed_plan: GraphedPlan | None = None
        budget = self.cfg.optim.time_budget is not None  # (0.0 is a budget: one iteration)
        if fused:  # (where it runs first: on a CPU, "Triton is not installed" sent users to install it)
            why = None
            if self.device.type != "cuda" or not (fast and whole_plan) or budget:
                why = "it runs in the whole-plan CUDA graph (CUDA, fast, whole_plan, no time budget)"
            elif guide is not None:
                why = "guided plans are not recorded whole"
            elif compile:
                why = "it replaces the compiled twin (compile)"
            why = why or fused_unsupported(model.cfg, wants)
            if why is not None:
                raise ValueError(f"fused imagination cannot be used here: {why}")
        # (a guided plan is scored outside the graph: its bf16 twin, a copy of the whole model, was
        # built and never used, afresh at each of the online loop's iterations)
        whole = fast and whole_plan and self.device.type == "cuda" and not budget and guide is None
        if compile and not whole:  # (it was silently unused)
            why = "CUDA, fast, whole_plan, unguided, no time budget"
            raise ValueError(
                f"compile applies to the whole-plan CUDA graph only ({why}: robobrain eval --device cuda, "
                "--guide none, no --time-budget)"
            )
        if whole:
            twin: Bf16Imagine | FusedImagine = (
                FusedImagine(self.model)
                if fused
                else Bf16Imagine(self.model, compile=compile, disagreement=wants)
            )
            model, cfg = self.model, self.cfg  # (not self: a lambda holding it made a reference cycle)
            self.graphed_plan = GraphedPlan(
                self.mpc.optimizer,
                lambda state: world_model_score_fn(model, state, cfg, imagine=twin),
                before=twin.sync,
            )
        self.plan_state: State | None = None
        self.plan_frame: torch.Tensor | None = None

    @property
    def state(self) -> State | None:
        """The latent state of each env after its last observation."""
        return self.filter.state

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        """Start new episodes in all envs, or only where ``mask`` [N] is True."""
        state = self.filter.state
        partial = mask is not None and state is not None and state.deter.shape[0] == num_envs
        self.filter.reset(num_envs, mask)
        m = torch.as_tensor(mask, dtype=torch.bool, device=self.device) if partial else None
        self.mpc.reset(num_envs, m)

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        n = batch_size(obs)
        if self.mpc.plan is None or self.mpc.plan.shape[0] != n:
            self.reset(n)
        state, frames = self.filter.update(obs)
        self.plan_state, self.plan_frame = state, frames
        if self.guide is None and self.graphed_plan is not None:
            graphed = self.graphed_plan
            action = self.mpc.act_with(lambda init: graphed(state, init))
            self.filter.acted(action)
            return action.cpu().numpy().astype(np.float32)
        value_fn = prior = None
        if self.guide is not None:
            value_fn = self.guide.value if self.guide.use_value else None
            prior = self.guide.prior_rollout(self.model, state, self.cfg.horizon, self.wants_disagreement)
        score_fn = world_model_score_fn(self.model, state, self.cfg, value_fn, prior, self.imagine)
        action = self.mpc.act(score_fn, prior_samples=None if prior is None else prior.actions)
        self.filter.acted(action)
        return action.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def imagine_plan(self, steps: int | None = None) -> Rollout:
        """The imagined future (frames decoded) of the plan chosen at the last ``act``: [N, H, ...],
        or of its first ``steps`` steps only (the same ones: the planner's imagination is
        deterministic and a step depends on no later action)."""
        if self.mpc.last is None or self.plan_state is None:
            raise RuntimeError("no plan yet")
        plan = self.mpc.last.best if steps is None else self.mpc.last.best[:, :steps]
        return self.model.imagine(self.plan_state, plan, decode=True, reference=self.plan_frame)

    def imagined_frames(self, steps: int | None = None) -> np.ndarray:
        """Decoded frames of the last chosen plan: uint8[N, H, S, S, 3] (``steps`` of them: the
        evaluation's video shows the first; all 12 of the cpu preset cost 12-13 ms a call, one 3-4 ms, on
        2 CPU cores)."""
        return self.imagine_plan(steps).pixels.cpu().numpy()

    def planned_actions(self) -> np.ndarray:
        """The last chosen plan (before exploration noise): [N, H, A]."""
        if self.mpc.last is None:
            raise RuntimeError("no plan yet")
        return self.mpc.last.best.cpu().numpy()


class BehaviourPriorPolicy:
    """Acts with a behaviour prior's mean action on the filtered latent state, without planning:
    the baseline that the prior-guided planner (``mpc:CKPT --guide bc``) has to beat."""

    def __init__(self, model: WorldModel, prior: BehaviourPrior, device: torch.device | str = "cpu") -> None:
        self.filter = LatentFilter(model, device)
        self.prior = prior.to(device).eval()

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        self.filter.reset(num_envs, mask)

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        state, _ = self.filter.update(obs)
        action = self.prior(state.feat)
        self.filter.acted(action)
        return action.cpu().numpy().astype(np.float32)


class OracleMPCPolicy:
    """MPC whose model is the true MuJoCo simulator of the given envs (their current physics state is
    copied at every step). The upper bound the learned world model is measured against.

    It acts for the first ``num_envs`` of them (``reset(num_envs)``): observation i is env i's, as in
    :func:`robobrain.evaluation.evaluate_policy`, which leaves envs beyond its episodes idle."""

    def __init__(self, envs: Sequence[Any], action_dim: int, cfg: MPCConfig | None = None) -> None:
        self.envs = list(envs)
        self.cfg = cfg or MPCConfig()
        self.oracle = OracleModel(success_bonus=self.cfg.success_bonus, discount=self.cfg.discount)
        self.mpc = MPC(self.cfg, action_dim, "cpu")
        self.num_envs = len(self.envs)

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        if not 1 <= num_envs <= len(self.envs):
            raise ValueError(f"the oracle holds {len(self.envs)} envs, asked to act for {num_envs}")
        self.num_envs = num_envs
        self.mpc.reset(num_envs, None if mask is None else torch.as_tensor(mask, dtype=torch.bool))

    def act(self, obs: Observation) -> np.ndarray:
        if self.mpc.plan is None:
            self.reset(batch_size(obs))
        if batch_size(obs) != self.num_envs:
            raise ValueError(f"the oracle acts for {self.num_envs} envs, got {batch_size(obs)} observations")
        envs = self.envs[: self.num_envs]
        return self.mpc.act(self.oracle.score_fn(envs)).numpy().astype(np.float32)
