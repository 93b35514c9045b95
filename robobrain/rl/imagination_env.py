"""ImaginationVecEnv: stable-baselines3 trains any algorithm inside the world model.

``reset`` draws start states from a bank of latent states encoded from real episodes; ``step`` runs one
batched imagination step for all envs; rewards are the planner's step score (reward head +
``success_bonus`` x predicted success probability), episodes end on predicted
success (optional), where a model with a termination head predicts the episode's end, or after
``horizon`` steps. Observations are the latent features [N, F].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from robobrain.data import Episode
from robobrain.world_model import State, WorldModel, step_score
from robobrain.world_model.rssm import cat_states


class LatentModel(Protocol):
    """What the env needs from a model: a feature map, one imagined step, reward and success heads
    (and optionally a termination head)."""

    feat_dim: int
    action_dim: int

    def features(self, state: State) -> torch.Tensor: ...

    def step(self, state: State, action: torch.Tensor) -> tuple[torch.Tensor | State | None, ...]:
        """(next state, reward [N], success logit [N]), and optionally a fourth: the logit [N] that
        the episode ended after the action (None or left out: imagined episodes end at the horizon)."""
        ...


class WorldModelDynamics:
    """The WorldModel as a ``LatentModel`` (mode or sampled latent transitions). The reward is the
    reward head's plus ``success_bonus`` times the predicted success probability: what the MPC
    planner sums per imagined step (``MPCConfig.success_bonus``, whose default 1 is this one's too:
    it was 0, so a critic trained as the README shows valued another sum than the default planner's),
    so that a critic trained here values the same score past the planner's horizon; with
    ``disagreement_penalty`` (``MPCConfig.disagreement_penalty``: a model with an ensemble), minus that
    times the ensemble's disagreement about the step, as the planner scores it too. ``sample=True``
    draws the latents from torch's global generator (SB3's ``seed`` seeds it; seed it yourself to
    repeat rollouts outside SB3)."""

    def __init__(
        self,
        model: WorldModel,
        sample: bool = True,
        success_bonus: float = 1.0,
        disagreement_penalty: float = 0.0,
    ) -> None:
        if disagreement_penalty and not model.cfg.ensemble:
            raise ValueError("disagreement_penalty needs a world model trained with an ensemble")
        self.model = model.eval()
        self.sample = sample
        self.success_bonus = success_bonus
        self.disagreement_penalty = disagreement_penalty
        self.feat_dim = model.cfg.feat_dim
        self.action_dim = model.cfg.action_dim

    def features(self, state: State) -> torch.Tensor:
        return state.feat

    @torch.no_grad()
    def step(
        self, state: State, action: torch.Tensor
    ) -> tuple[State, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        state, _ = self.model.rssm.img_step(state, action, sample=self.sample)
        feat = state.feat
        success_logit = self.model.success_head(feat).squeeze(-1)
        reward = step_score(self.model.reward_head(feat).squeeze(-1), success_logit, self.success_bonus)
        if self.disagreement_penalty:
            reward = reward - self.disagreement_penalty * self.model.rssm.ensemble_disagreement(state.deter)
        head = self.model.termination_head
        return state, reward, success_logit, None if head is None else head(feat).squeeze(-1)


@torch.no_grad()
def encode_start_states(model: WorldModel, episodes: Sequence[Episode], max_states: int = 4096) -> State:
    """Posterior latent states at every step of real episodes (the reset distribution): [M, ...].
    Episodes without a step are skipped; none with one is an error."""
    dev = model.device
    states: list[State] = []
    for ep in (ep for ep in episodes if len(ep.action)):
        pixels = torch.from_numpy(ep.pixels[:-1][None]).to(dev)
        prev = np.concatenate([np.zeros_like(ep.action[:1]), ep.action[:-1]])
        env_state = torch.from_numpy(ep.state[:-1][None]).to(dev)
        goal = model.goal(env_state[:, 0])
        posts, _, _ = model._filter(
            pixels,
            torch.from_numpy(prev[None]).to(dev),
            sample=False,
            goal=goal,
            proprio=model.proprio(env_state),
        )
        states.append(posts.index(0))
        if sum(len(s.deter) for s in states) >= max_states:
            break
    if not states:
        raise ValueError("encode_start_states: no episode with a step to start imagination from")
    return cat_states(states).index(slice(0, max_states))


class ImaginationVecEnv(VecEnv):
    """N imagined environments stepped together. See the module docstring."""

    render_mode = None

    def __init__(
        self,
        dynamics: LatentModel,
        start_states: State,
        num_envs: int = 16,
        horizon: int = 15,
        success_terminates: bool = False,
        seed: int = 0,
        action_space: gym.spaces.Box | None = None,
    ) -> None:
        """``action_space``: the actions of the env whose data the model was trained on, which SB3
        then acts in (default ``Box(-1, 1, (A,))``; Pendulum's is ``Box(-2, 2, (1,))``)."""
        if num_envs < 1 or horizon < 1:
            raise ValueError(
                f"ImaginationVecEnv: need num_envs >= 1 and horizon >= 1, got {num_envs}, {horizon}"
            )
        if len(start_states.deter) < 1:
            raise ValueError("ImaginationVecEnv: the bank of start states is empty")
        if not all(torch.isfinite(x).all() for x in start_states if x is not None):
            raise ValueError("ImaginationVecEnv: the start states hold NaN or inf")
        obs_space = gym.spaces.Box(-np.inf, np.inf, (dynamics.feat_dim,), np.float32)
        act_space = gym.spaces.Box(-1.0, 1.0, (dynamics.action_dim,), np.float32)
        if action_space is not None:
            ok = isinstance(action_space, gym.spaces.Box) and action_space.shape == act_space.shape
            if not ok or not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
                raise ValueError(
                    f"ImaginationVecEnv: action_space must be a bounded Box of shape {act_space.shape} "
                    f"(the model's actions), got {action_space}"
                )
            act_space = gym.spaces.Box(action_space.low, action_space.high, act_space.shape, np.float32)
        super().__init__(num_envs, obs_space, act_space)
        self.dynamics = dynamics
        self.bank = start_states
        self.horizon = horizon
        self.success_terminates = success_terminates
        self.rng = np.random.default_rng(seed)
        self.device = start_states.deter.device
        self.state = self._draw(num_envs)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self._actions: np.ndarray | None = None

    def _draw(self, n: int) -> State:
        idx = torch.as_tensor(self.rng.integers(0, len(self.bank.deter), n), device=self.device)
        return self.bank.index(idx)

    def _obs(self) -> np.ndarray:
        return self.dynamics.features(self.state).float().cpu().numpy()

    def reset(self) -> np.ndarray:
        """Fresh start states for all envs; a seed set by :meth:`seed` (SB3's ``set_random_seed``)
        re-seeds the start-state draws first, as SB3's contract says."""
        if self._seeds[0] is not None:
            self.rng = np.random.default_rng(self._seeds[0])
            self._reset_seeds()
        self.state = self._draw(self.num_envs)
        self.t[:] = 0
        return self._obs()

    def step_async(self, actions: np.ndarray) -> None:
        """``actions``: [N, A] (or [N * A], flat)."""
        actions = np.asarray(actions, dtype=np.float32)
        want = (self.num_envs, self.dynamics.action_dim)
        if actions.shape not in (want, (want[0] * want[1],)):
            raise ValueError(f"ImaginationVecEnv: actions must have shape {want}, got {actions.shape}")
        actions = actions.reshape(want)
        if not np.all(np.isfinite(actions)):
            raise ValueError("ImaginationVecEnv: actions contain NaN or inf")
        self._actions = np.clip(actions, self.action_space.low, self.action_space.high)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise RuntimeError("step_async must be called before step_wait")
        action = torch.from_numpy(self._actions).to(self.device)
        self.state, reward, success_logit, *rest = self.dynamics.step(self.state, action)
        terminal_logit = rest[0] if rest else None
        self.t += 1
        obs = self._obs()
        n = self.num_envs
        shapes = [tuple(x.shape) for x in (reward, success_logit, terminal_logit) if x is not None]
        if any(shape != (n,) for shape in shapes):  # ([N, 1] broadcast dones)
            raise ValueError(
                f"ImaginationVecEnv: the dynamics' step must return reward, success logit (and termination "
                f"logit) [N={n}], got {', '.join(str(list(shape)) for shape in shapes)}"
            )
        reward_np = reward.float().cpu().numpy()
        if not np.all(np.isfinite(reward_np)) or not np.all(np.isfinite(obs)):
            raise FloatingPointError("ImaginationVecEnv: the model produced non-finite rewards or latents")
        success = (success_logit > 0).cpu().numpy()
        truncated = self.t >= self.horizon
        terminated = success & self.success_terminates
        if terminal_logit is not None:  # (the episode ends where the model predicts its end)
            terminated = terminated | (terminal_logit > 0).cpu().numpy()
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{"success": bool(s)} for s in success]
        if dones.any():
            idx = np.flatnonzero(dones)
            for i in idx:
                infos[i]["terminal_observation"] = obs[i].copy()
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            fresh = self._draw(len(idx))
            sel = torch.as_tensor(idx, device=self.device)
            mask = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
            mask[sel] = True
            rows = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
            rows[sel] = torch.arange(len(idx), device=self.device)  # finished env -> its fresh draw
            self.state = self.state.where(mask, fresh.index(rows))
            self.t[idx] = 0
            obs = self._obs()
        self._actions = None
        return obs, reward_np.astype(np.float32), dones, infos

    def close(self) -> None:
        pass

    # The N imagined envs are one batched model, not N env objects: an attribute or a method belongs
    # to all of them, so setting or calling one for only some envs is refused.
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self._all_envs(indices, f"set_attr({attr_name!r})")
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        """Calls the method once (the envs share it) and returns its result for each env."""
        self._all_envs(indices, f"env_method({method_name!r})")
        return [getattr(self, method_name)(*args, **kwargs)] * self.num_envs

    def _all_envs(self, indices: Any, what: str) -> None:
        if sorted(set(self._indices(indices))) != list(range(self.num_envs)):
            raise NotImplementedError(
                f"ImaginationVecEnv: {what} acts on all {self.num_envs} imagined envs at once, "
                f"not on envs {indices}"
            )

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
