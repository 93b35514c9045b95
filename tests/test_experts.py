"""The scripted experts solve their tasks; a random policy does not."""

import numpy as np
import pytest

import robobrain.envs as envs
from robobrain.data import EpisodeStore
from robobrain.data.collect import collect_episodes
from robobrain.policies import load_policy


def success_rate(env_id: str, policy_spec: str, episodes: int, tmp_path, seed: int = 0) -> float:
    vec = envs.make_vector_env(env_id, num_envs=5, image_size=8)
    policy = load_policy(policy_spec, env_id, vec.single_action_space, seed=seed)
    store = EpisodeStore(tmp_path / policy_spec)
    names = collect_episodes(vec, policy, store, episodes, seed=seed, progress=False).names
    vec.close()
    return float(np.mean([store.manifest[n]["success"] for n in names]))


def test_expert_succeeds_on_50_seeds(task_id, tmp_path):
    assert success_rate(task_id, "scripted", 50, tmp_path) >= 0.9


@pytest.mark.parametrize("env_id", ["robobrain/Push-v0", "robobrain/PickPlace-v0"])
def test_random_policy_rarely_succeeds(env_id, tmp_path):
    assert success_rate(env_id, "random", 50, tmp_path, seed=1) <= 0.05
