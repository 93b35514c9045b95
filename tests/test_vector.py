"""Vector envs: gymnasium.make_vec works for every id; vector == single env; seeding."""

import gymnasium as gym
import numpy as np
import pytest

import robobrain.envs as envs


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec_seeded(task_id, mode):
    def first_obs(seed):
        vec = gym.make_vec(task_id, num_envs=2, vectorization_mode=mode, image_size=16)
        obs, _ = vec.reset(seed=seed)
        for _ in range(3):
            obs, *_ = vec.step(np.zeros(vec.action_space.shape, np.float32))
        vec.close()
        return obs

    a, b, c = first_obs(5), first_obs(5), first_obs(6)
    np.testing.assert_array_equal(a["pixels"], b["pixels"])
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.array_equal(a["state"], c["state"])
    assert not np.array_equal(a["state"][0], a["state"][1])


def test_vector_env_equals_single_envs(task_id):
    vec = envs.make_vector_env(task_id, 2, image_size=16)
    singles = [gym.make(task_id, image_size=16) for _ in range(2)]
    vobs, _ = vec.reset(seed=10)
    for i, env in enumerate(singles):
        obs, _ = env.reset(seed=10 + i)
        np.testing.assert_array_equal(vobs["pixels"][i], obs["pixels"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, vec.action_space.shape).astype(np.float32)
        vobs, vrew, *_ = vec.step(action)
        for i, env in enumerate(singles):
            obs, rew, *_ = env.step(action[i])
            np.testing.assert_array_equal(vobs["pixels"][i], obs["pixels"])
            np.testing.assert_array_equal(vobs["state"][i], obs["state"])
            assert vrew[i] == pytest.approx(rew)
    vec.close()
