"""An SB3 actor-critic guiding the planner: the actor proposes action sequences (rolled out in
imagination) that join the optimizer's candidates, the critic gives the value of the state an imagined
plan ends in (TD-MPC2 style: score = sum of rewards + discount^H * V(s_H))."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from robobrain.planning.mpc import PriorRollout, uniform_bounds
from robobrain.world_model import State, WorldModel
from robobrain.world_model.rssm import stack_states


def roll_out_prior(
    model: WorldModel,
    state: State,
    num_prior: int,
    horizon: int,
    act: Callable[[State], torch.Tensor],
    disagreement: bool = True,
) -> PriorRollout:
    """Roll ``act(state [M]) -> actions [M, A]`` forward ``horizon`` steps from each of the B
    states, ``num_prior`` times each, along the model's most likely latent (as ``imagine`` does).
    ``disagreement=False`` skips the ensemble's disagreement, as ``WorldModel.imagine`` does."""
    b = state.deter.shape[0]
    s = state.repeat_interleave(num_prior)
    actions, states = [], []
    for _ in range(horizon):
        a = act(s)
        actions.append(a)
        s = model.rssm.img_step_mode(s, a)
        states.append(s)
    rollout = model.heads(stack_states(states, 1), disagreement=disagreement)
    return PriorRollout(torch.stack(actions, 1).view(b, num_prior, horizon, -1), rollout)


class PlannerGuide(Protocol):
    """What the world-model MPC policy asks of a guide: prior action sequences to join the
    optimizer's candidates, and (when ``use_value``) a terminal value. Implemented by
    :class:`ActorCriticGuide` and :class:`robobrain.rl.BehaviourPriorGuide`."""

    use_value: bool

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        """V(s) [M] for latent features [M, F]."""
        ...

    def prior_rollout(
        self, model: WorldModel, state: State, horizon: int, disagreement: bool = True
    ) -> PriorRollout | None:
        """P action sequences per env from ``state`` [B] with their imagined future, or None.
        ``disagreement=False``: the planner will not read the ensemble's disagreement; skip it."""
        ...


class ActorCriticGuide:
    """Wraps a stable-baselines3 model trained on the world model's latent features.

    Works with SAC / TD3 / DDPG (twin Q critics: V(s) = min_i Q_i(s, pi(s))) and with PPO / A2C
    (V(s) from the value head). ``num_prior = 0`` turns the prior off, ``use_value = False`` the value.
    """

    def __init__(
        self, sb3_model: Any, num_prior: int = 16, use_value: bool = True, noise_std: float = 0.2
    ) -> None:
        """``noise_std``: noise on a deterministic actor's prior samples (SAC / PPO sample their own)."""
        if num_prior < 0 or not 0 <= noise_std < float("inf"):  # (NaN fails both)
            raise ValueError(f"need num_prior >= 0 and a finite noise_std >= 0, got {num_prior}, {noise_std}")
        space = sb3_model.action_space
        if uniform_bounds(space) != {"low": -1.0, "high": 1.0}:  # (SAC's tanh is not rescaled here)
            raise ValueError(
                f"ActorCriticGuide: the SB3 model acts in {space}, the guide in [-1, 1]: train it in an "
                "ImaginationVecEnv of the default action space, on episodes of an env wrapped in "
                "gymnasium.wrappers.RescaleAction(env, -1, 1)"
            )
        self.sb3 = sb3_model
        self.noise_std = noise_std
        self.num_prior = num_prior
        self.use_value = use_value
        policy = sb3_model.policy
        self._q_critic = hasattr(policy, "critic") and hasattr(policy, "actor")
        if not self._q_critic and not hasattr(policy, "predict_values"):
            raise TypeError(f"{type(sb3_model).__name__}: no actor-critic this guide knows how to read")

    def _obs(self, feat: torch.Tensor) -> torch.Tensor:
        return feat.float().to(self.sb3.device)

    @torch.no_grad()
    def act(self, feat: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions [M, A] in [-1, 1] for latent features [M, F] (on their device and in their dtype)."""
        return self._act(self._obs(feat), deterministic).to(feat.device, feat.dtype)

    def _act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actions [M, A] in [-1, 1] on SB3's device, in float32, for float32 observations there."""
        policy = self.sb3.policy
        if self._q_critic:
            if hasattr(policy.actor, "action_log_prob"):  # SAC: its forward samples unless told not to
                action = policy.actor(obs, deterministic=deterministic)
            else:
                action = policy.actor(obs)
                if not deterministic:  # a deterministic actor (TD3, DDPG): Gaussian exploration noise
                    action = action + self.noise_std * torch.randn_like(action)
        else:
            action = policy.get_distribution(obs).get_actions(deterministic=deterministic)
        return action.clamp(-1.0, 1.0)

    @torch.no_grad()
    def value(self, feat: torch.Tensor) -> torch.Tensor:
        """V(s) [M] (float32, on the features' device) for latent features [M, F]: not rounded to
        bf16 features' precision before it joins the float32 returns it is added to."""
        policy = self.sb3.policy
        obs = self._obs(feat)
        if self._q_critic:
            qs = policy.critic(obs, self._act(obs, deterministic=True))
            value = torch.cat(qs, dim=1).min(1).values
        else:
            value = policy.predict_values(obs).squeeze(-1)
        return value.to(feat.device, torch.float32)

    @torch.no_grad()
    def prior_rollout(
        self, model: WorldModel, state: State, horizon: int, disagreement: bool = True
    ) -> PriorRollout | None:
        """``num_prior`` action sequences per env, sampled from the actor along its own imagined
        rollout from ``state`` [B] (None when the prior is off)."""
        if self.num_prior <= 0:
            return None
        return roll_out_prior(model, state, self.num_prior, horizon, lambda s: self.act(s.feat), disagreement)
