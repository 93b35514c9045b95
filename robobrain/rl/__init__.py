"""The stable-baselines3 bridge: train SB3 algorithms inside the world model, expose its latent state
to SB3 policies, and let a fine-tuned actor-critic guide the planner."""

from robobrain.rl.features import WorldModelFeatures
from robobrain.rl.finetune import (
    NonFiniteSB3Error,
    SB3Config,
    finetune,
    imagination_env,
    load_sb3,
    make_sb3_model,
    save_sb3,
)
from robobrain.rl.guide import ActorCriticGuide
from robobrain.rl.imagination_env import (
    ImaginationVecEnv,
    LatentModel,
    WorldModelDynamics,
    encode_start_states,
)

__all__ = [
    "ActorCriticGuide",
    "ImaginationVecEnv",
    "LatentModel",
    "NonFiniteSB3Error",
    "SB3Config",
    "WorldModelDynamics",
    "WorldModelFeatures",
    "encode_start_states",
    "finetune",
    "imagination_env",
    "load_sb3",
    "make_sb3_model",
    "save_sb3",
]
