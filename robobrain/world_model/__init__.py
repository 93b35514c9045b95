"""The action-conditioned video world model."""

from robobrain.world_model.fused import FusedImagine, fused_unsupported
from robobrain.world_model.graphs import Bf16Imagine, GraphedImagine
from robobrain.world_model.model import Rollout, WorldModel, step_score, still_running
from robobrain.world_model.rssm import RSSM, State

__all__ = [
    "RSSM",
    "Bf16Imagine",
    "FusedImagine",
    "GraphedImagine",
    "Rollout",
    "State",
    "WorldModel",
    "fused_unsupported",
    "step_score",
    "still_running",
]
