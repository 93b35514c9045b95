"""The action-conditioned video world model."""

from robobrain.world_model.graphs import GraphedImagine
from robobrain.world_model.model import Rollout, WorldModel
from robobrain.world_model.rssm import RSSM, State

__all__ = ["RSSM", "GraphedImagine", "Rollout", "State", "WorldModel"]
