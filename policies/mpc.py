"""MPC policies: planning with a learned world model, or with the true simulator (oracle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from robobrain.planning import MPC, MPCConfig, world_model_score_fn
from robobrain.planning.oracle import OracleModel
from robobrain.policies.base import Observation, batch_size
from robobrain.rl.guide import ActorCriticGuide
from robobrain.world_model import Rollout, State, WorldModel
from robobrain.world_model.networks import pixels_to_float


class WorldModelMPCPolicy:
    """Filters each env's pixels into a latent state (one RSSM update per step, the way the model was
    trained) and plans over ``WorldModel.imagine`` for all envs in one batched call."""

    def __init__(
        self,
        model: WorldModel,
        cfg: MPCConfig | None = None,
        device: torch.device | str = "cpu",
        guide: ActorCriticGuide | None = None,
    ) -> None:
        """``guide``: an SB3 actor-critic whose actor proposes prior samples and whose critic values
        the end of each imagined plan (see :class:`robobrain.rl.ActorCriticGuide`)."""
        self.cfg = cfg or MPCConfig()
        if self.cfg.disagreement_penalty and not model.cfg.ensemble:
            raise ValueError(
                "disagreement_penalty needs a world model trained with an ensemble (ensemble > 0); "
                "this one has none"
            )
        self.model = model.to(device).eval()
        self.guide = guide
        self.device = torch.device(device)
        self.mpc = MPC(self.cfg, model.cfg.action_dim, self.device)
        self.state: State | None = None
        self.plan_state: State | None = None
        self.plan_frame: torch.Tensor | None = None
        self.prev_action: torch.Tensor | None = None

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        """Start new episodes in all envs, or only where ``mask`` [N] is True."""
        init = self.model.rssm.initial(num_envs, self.device)
        zeros = torch.zeros(num_envs, self.model.cfg.action_dim, device=self.device)
        if mask is None or self.state is None or self.state.deter.shape[0] != num_envs:
            self.state, self.prev_action = init, zeros
            self.mpc.reset(num_envs)
            return
        m = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        # The goal is re-read from every observation, so the reset state needs none.
        self.state = State(self.state.deter, self.state.stoch).where(m, init)
        self.prev_action = torch.where(m[:, None], zeros, self.prev_action)
        self.mpc.reset(num_envs, m)

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        n = batch_size(obs)
        size = self.model.cfg.image_size
        pixels = np.asarray(obs["pixels"])
        if pixels.shape[1:] != (size, size, 3) or pixels.dtype != np.uint8:
            raise ValueError(
                f"this world model sees uint8[N, {size}, {size}, 3] pixels, got {pixels.dtype}{pixels.shape}"
            )
        if self.state is None or self.state.deter.shape[0] != n:
            self.reset(n)
        env_state = obs.get("state") if isinstance(obs, dict) else None
        goal = self.model.goal(None if env_state is None else torch.as_tensor(env_state, device=self.device))
        embed = self.model.encoder(pixels_to_float(torch.from_numpy(pixels).to(self.device)))
        self.state = self.state._replace(goal=goal)
        self.state, _, _ = self.model.rssm.obs_step(self.state, self.prev_action, embed, sample=False)
        self.plan_state = self.state
        self.plan_frame = torch.from_numpy(pixels).to(self.device)
        value_fn = prior = None
        if self.guide is not None:
            value_fn = self.guide.value if self.guide.use_value else None
            prior = self.guide.prior_samples(self.model, self.state, self.cfg.horizon)
        score_fn = world_model_score_fn(self.model, self.state, self.cfg, value_fn)
        action = self.mpc.act(score_fn, prior_samples=prior)
        self.prev_action = action
        return action.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def imagine_plan(self) -> Rollout:
        """The imagined future (frames decoded) of the plan chosen at the last ``act``: [N, H, ...]."""
        if self.mpc.last is None or self.plan_state is None:
            raise RuntimeError("no plan yet")
        return self.model.imagine(self.plan_state, self.mpc.last.best, decode=True, reference=self.plan_frame)

    def imagined_frames(self) -> np.ndarray:
        """Decoded frames of the last chosen plan: uint8[N, H, S, S, 3]."""
        return self.imagine_plan().pixels.cpu().numpy()

    def planned_actions(self) -> np.ndarray:
        """The last chosen plan (before exploration noise): [N, H, A]."""
        if self.mpc.last is None:
            raise RuntimeError("no plan yet")
        return self.mpc.last.best.cpu().numpy()


class OracleMPCPolicy:
    """MPC whose model is the true MuJoCo simulator of the given envs (their current physics state is
    copied at every step). The upper bound the learned world model is measured against."""

    def __init__(self, envs: Sequence[Any], action_dim: int, cfg: MPCConfig | None = None) -> None:
        self.envs = list(envs)
        self.cfg = cfg or MPCConfig()
        self.oracle = OracleModel(success_bonus=self.cfg.success_bonus)
        self.mpc = MPC(self.cfg, action_dim, "cpu")

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        if num_envs != len(self.envs):
            raise ValueError(f"the oracle holds {len(self.envs)} envs, asked to act for {num_envs}")
        self.mpc.reset(num_envs, None if mask is None else torch.as_tensor(mask, dtype=torch.bool))

    def act(self, obs: Observation) -> np.ndarray:
        if batch_size(obs) != len(self.envs):
            raise ValueError(f"the oracle holds {len(self.envs)} envs, got {batch_size(obs)} observations")
        if self.mpc.plan is None:
            self.reset(len(self.envs))
        return self.mpc.act(self.oracle.score_fn(self.envs)).numpy().astype(np.float32)
