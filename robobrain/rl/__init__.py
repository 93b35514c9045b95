"""The stable-baselines3 bridge: train SB3 algorithms inside the world model, expose its latent state
to SB3 policies, and let a fine-tuned actor-critic guide the planner."""

from robobrain.rl.behaviour_prior import (
    BehaviourPrior,
    BehaviourPriorConfig,
    BehaviourPriorGuide,
    fit_behaviour_prior,
    load_behaviour_prior,
    save_behaviour_prior,
)
from robobrain.rl.features import WorldModelFeatures
from robobrain.rl.finetune import (
    NonFiniteSB3Error,
    SB3Config,
    finetune,
    imagination_env,
    is_off_policy,
    load_sb3,
    make_sb3_model,
    save_sb3,
)
from robobrain.rl.guide import ActorCriticGuide, PlannerGuide
from robobrain.rl.imagination_env import (
    ImaginationVecEnv,
    LatentModel,
    WorldModelDynamics,
    encode_start_states,
)
from robobrain.rl.sac import RewardValueSAC

__all__ = [
    "ActorCriticGuide",
    "BehaviourPrior",
    "BehaviourPriorConfig",
    "BehaviourPriorGuide",
    "ImaginationVecEnv",
    "LatentModel",
    "NonFiniteSB3Error",
    "PlannerGuide",
    "RewardValueSAC",
    "SB3Config",
    "WorldModelDynamics",
    "WorldModelFeatures",
    "encode_start_states",
    "finetune",
    "fit_behaviour_prior",
    "imagination_env",
    "is_off_policy",
    "load_behaviour_prior",
    "load_sb3",
    "make_sb3_model",
    "save_behaviour_prior",
    "save_sb3",
]
