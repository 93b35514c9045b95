"""The stable-baselines3 bridge: train SB3 algorithms inside the world model."""

from robobrain.rl.imagination_env import (
    ImaginationVecEnv,
    LatentModel,
    WorldModelDynamics,
    encode_start_states,
)

__all__ = ["ImaginationVecEnv", "LatentModel", "WorldModelDynamics", "encode_start_states"]
