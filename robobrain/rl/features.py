"""A features extractor that hands SB3 policies the world model's latent state."""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from robobrain.world_model import WorldModel
from robobrain.world_model.networks import pixels_to_float


class WorldModelFeatures(BaseFeaturesExtractor):
    """Observations -> world-model latent features [N, F].

    - Latent observations (``ImaginationVecEnv``: Box of shape [F]) pass through unchanged.
    - Pixel observations (uint8 [S, S, 3], SB3 may hand them over as channels-first [3, S, S] floats
      in [0, 255] or [0, 1]), alone or under the ``"pixels"`` key of a Dict space, are encoded and
      filtered by one posterior step from the initial state: the single-frame latent a planner
      would start from.

    The world model is frozen by default (its weights are not in the SB3 optimizer's way: SB3 trains
    only what it sees as parameters, and a frozen model has ``requires_grad=False``).
    """

    def __init__(self, observation_space: gym.Space, world_model: WorldModel, freeze: bool = True) -> None:
        super().__init__(observation_space, world_model.cfg.feat_dim)
        self.world_model = world_model
        if freeze:
            for p in world_model.parameters():
                p.requires_grad_(False)
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

    def forward(self, observations: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        obs = observations[self.key] if self.key is not None else observations
        if self.kind == "latent":
            return obs.float()
        if obs.shape[-1] != 3:  # SB3's VecTransposeImage makes frames channels-first
            obs = obs.movedim(-3, -1)
        if obs.dtype != torch.uint8:
            scale = 255.0 if float(obs.max()) <= 1.0 + 1e-6 else 1.0
            obs = (obs.float() * scale).round().clamp(0, 255).to(torch.uint8)
        wm = self.world_model
        embed = wm.encoder(pixels_to_float(obs))
        init = wm.rssm.initial(obs.shape[0], obs.device)
        zero_action = torch.zeros(obs.shape[0], wm.cfg.action_dim, device=obs.device)
        state, _, _ = wm.rssm.obs_step(init, zero_action, embed, sample=False)
        return state.feat
