"""Episode storage and sequence sampling."""

from robobrain.data.sampler import SequenceBatch, SequenceSampler
from robobrain.data.store import CorruptEpisodeError, Episode, EpisodeStore, reports_success

__all__ = [
    "CorruptEpisodeError",
    "Episode",
    "EpisodeStore",
    "SequenceBatch",
    "SequenceSampler",
    "reports_success",
]
