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


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bad_action_batch_is_refused_before_any_env_steps(mode):
    """A NaN in env 1's row used to step env 0 first (sync) or shut the worker down (async)."""

    def after_one_step(refuse_first: bool) -> np.ndarray:
        vec = envs.make_vector_env("robobrain/Reach-v0", 2, image_size=8, mode=mode)
        vec.reset(seed=0)
        if refuse_first:
            with pytest.raises(ValueError, match=r"finite; envs \[1\]"):
                vec.step(np.array([[1.0, 1.0, 1.0], [np.nan, 0.0, 0.0]]))
            with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
                vec.step(np.zeros((2, 4)))
            for bad in (np.full((2, 3), "1"), np.full((2, 3), 1 + 5j)):
                with pytest.raises(ValueError, match="actions must be numbers, got an array of dtype"):
                    vec.step(bad)
        obs, *_ = vec.step(np.full((2, 3), 0.5))
        vec.close()
        return obs["state"]

    np.testing.assert_array_equal(after_one_step(True), after_one_step(False))


@pytest.mark.parametrize("num_envs", [True, 2.0, "2", 0])
def test_num_envs_that_is_not_a_positive_int_is_refused(num_envs):
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        envs.make_vector_env("robobrain/Reach-v0", num_envs, image_size=8)


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


def test_async_workers_leave_ctrl_c_to_the_parent():
    """Ctrl-C reaches every process of the group: each worker died printing its traceback (Gymnasium's
    "Received the following error from Worker-N"); the parent alone handles it now."""
    import os
    import signal
    import time

    vec = envs.make_vector_env("robobrain/Reach-v0", 2, image_size=8, mode="async")
    vec.reset(seed=0)
    for process in vec.processes:
        os.kill(process.pid, signal.SIGINT)
    time.sleep(0.2)
    obs, *_ = vec.step(np.zeros((2, 3)))  # (a worker that had died: "Received the following error")
    assert all(p.is_alive() for p in vec.processes) and obs["state"].shape[0] == 2
    vec.close()
