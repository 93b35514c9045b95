"""Planning: trajectory optimizers (CEM, MPPI), the MPC controller, the oracle simulator model."""

from robobrain.planning.graphed import GraphedPlan
from robobrain.planning.mpc import MPC, MPCConfig, PriorRollout, world_model_score_fn
from robobrain.planning.optimizers import CEM, MPPI, OptimizerConfig, PlanResult

__all__ = [
    "CEM",
    "MPC",
    "MPPI",
    "GraphedPlan",
    "MPCConfig",
    "OptimizerConfig",
    "PlanResult",
    "PriorRollout",
    "world_model_score_fn",
]
