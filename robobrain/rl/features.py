"""A features extractor that hands SB3 policies the world model's latent state."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from robobrain.world_model import WorldModel

log = logging.getLogger(__name__)


class WorldModelFeatures(BaseFeaturesExtractor):
    """Observations -> world-model latent features [N, F].

    - Latent observations (``ImaginationVecEnv``: Box of shape [F]) pass through unchanged.
    - Pixel observations (uint8 [S, S, 3]; SB3 hands them over channels-first [3, S, S] and, by
      default, as floats divided by 255), alone or under the ``"pixels"`` key of a Dict space, are encoded and
      filtered by one posterior step from the initial state: the single-frame latent a planner
      would start from. A goal-conditioned world model also reads the goal from the Dict's
      ``"state"`` key.

    The world model is frozen by default. ``freeze=False`` registers a copy of it in each extractor
    SB3 builds, so SB3 trains it too: the passed model is left as it is, and an off-policy
    algorithm's actor, critic and target networks each fine-tune (or, for the target, Polyak-average)
    their own copy, as they do their other weights (one shared module made SAC's first update fail
    and had each Polyak update shrink the weights).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        world_model: WorldModel | str | os.PathLike[str],
        freeze: bool = True,
        normalized_images: bool = True,
    ) -> None:
        """``world_model``: the model, or the path of its checkpoint, loaded on the CPU and moved with
        the policy. SB3 pickles ``policy_kwargs`` into its zip, so a model object is stored there
        whole, its weights on the device they were on (a CUDA-trained zip then needs CUDA to load); a
        path is stored as a path and read again when the zip is loaded -- so a checkpoint, never a run
        directory, whose latest checkpoint moves on as the run trains (refused).
        ``normalized_images``: float frames arrive divided by 255 (SB3's ``normalize_images``
        default; with ``normalize_images=False`` pass False); uint8 frames are taken as they are
        either way. The first float frames that are not black are checked against it."""
        if not isinstance(world_model, WorldModel):
            from robobrain.checkpoint import resolve_checkpoint
            from robobrain.training.wm_trainer import load_world_model  # (the loop imports robobrain.rl)

            checkpoint = resolve_checkpoint(world_model)
            if checkpoint.resolve() != Path(world_model).resolve():
                raise ValueError(
                    f"world_model={str(world_model)!r} is a run directory: pass its checkpoint itself, "
                    f"e.g. {checkpoint} (SB3 stores the path in its zip and reads it again at load; a "
                    "run's latest checkpoint changes as the run trains on)"
                )
            world_model = load_world_model(checkpoint, "cpu")
        super().__init__(observation_space, world_model.cfg.feat_dim)
        self.normalized_images = normalized_images
        self._range_checked = False
        if freeze:
            # Not registered as a submodule: SB3's optimizers, target-network (Polyak) updates and
            # state dicts never see the world model's weights; _apply moves it with the policy.
            self._frozen = [world_model.eval()]
        else:
            self.world_model = copy.deepcopy(world_model)
        space = observation_space
        self.key = None
        if isinstance(space, gym.spaces.Dict):
            if "pixels" not in space.spaces:
                raise ValueError(f"a Dict observation space needs a 'pixels' key, got {list(space.spaces)}")
            self.key, space = "pixels", space.spaces["pixels"]
        size = world_model.cfg.image_size
        shape = tuple(space.shape or ())
        if shape == (world_model.cfg.feat_dim,):
            self.kind = "latent"
        elif shape in ((size, size, 3), (3, size, size)):
            self.kind = "pixels"
        else:
            raise ValueError(
                f"observations of shape {shape} are neither latents [{world_model.cfg.feat_dim}] nor "
                f"{size}x{size} RGB frames this world model can encode"
            )
        has_state = isinstance(observation_space, gym.spaces.Dict) and "state" in observation_space.spaces
        cfg = world_model.cfg
        reads = [w for w, n in (("goal", cfg.goal_dim), ("proprioception", cfg.proprio_dim)) if n]
        if self.kind == "pixels" and reads and not has_state:
            raise ValueError(
                f"this world model reads its {' and '.join(reads)} from the Dict observation's 'state' key: "
                "pass a Dict observation space with 'pixels' and 'state'"
            )

    def forward(self, observations: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, ...] observations -> [N, F] latent features."""
        obs = observations[self.key] if self.key is not None else observations
        env_state = observations["state"] if self.key is not None and "state" in observations else None
        if self.kind == "latent":
            return obs.float()
        if obs.shape[-1] != 3:  # SB3's VecTransposeImage makes frames channels-first
            obs = obs.movedim(-3, -1)
        if obs.dtype != torch.uint8:
            if not self._range_checked:
                self._check_range(obs)
            scale = 255.0 if self.normalized_images else 1.0
            obs = (obs.float() * scale).round().clamp(0, 255).to(torch.uint8)
        wm = self.wm
        with torch.set_grad_enabled(torch.is_grad_enabled() and not hasattr(self, "_frozen")):
            return self._latent(wm, obs, env_state)

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any
    ) -> WorldModelFeatures:
        """``.to(device)`` and the like (SB3 moves its policy so) also move the frozen world model,
        which is the caller's object: it follows the policy to its device."""
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_frozen"):
            self._frozen[0]._apply(fn, *args, **kwargs)
        return self

    def _check_range(self, obs: torch.Tensor) -> None:
        """Float frames in [0, 255] read as [0, 1] all saturated to white (SB3 skips its division by
        255 with ``normalize_images=False`` and says so to its own extractors only)."""
        top = float(obs.max())  # (once: a policy preprocesses every batch alike)
        if self.normalized_images and top > 1.0 + 1e-6:
            raise ValueError(
                f"WorldModelFeatures: float frames up to {top:g} arrive, not divided by 255 (the policy's "
                "normalize_images=False?): pass features_extractor_kwargs normalized_images=False"
            )
        if not self.normalized_images and 0 < top <= 1.0:
            log.warning(
                "WorldModelFeatures: float frames all within [0, 1] arrive, read as pixel values 0-1 of "
                "255 (normalized_images=False): divided by 255 already? Then pass normalized_images=True"
            )
        self._range_checked = top > 0  # (a black batch tells nothing)

    @property
    def wm(self) -> WorldModel:
        return self._frozen[0] if hasattr(self, "_frozen") else self.world_model

    @staticmethod
    def _latent(wm: WorldModel, obs: torch.Tensor, env_state: torch.Tensor | None) -> torch.Tensor:
        embed = wm.embed(obs, env_state)
        init = wm.rssm.initial(obs.shape[0], obs.device, wm.goal(env_state))
        zero_action = torch.zeros(obs.shape[0], wm.cfg.action_dim, device=obs.device)
        state, _, _ = wm.rssm.obs_step(init, zero_action, embed, sample=False)
        return state.feat
