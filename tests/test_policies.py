import gymnasium as gym
import numpy as np
import pytest

from robobrain.policies import Policy, RandomPolicy, ScriptedPolicy, load_policy


def obs_batch(n: int, state_dim: int = 20) -> dict[str, np.ndarray]:
    return {"pixels": np.zeros((n, 8, 8, 3), np.uint8), "state": np.zeros((n, state_dim), np.float32)}


def test_random_policy_is_seeded_and_bounded():
    a, b = RandomPolicy(4, seed=1), RandomPolicy(4, seed=1)
    x, y = a.act(obs_batch(5)), b.act(obs_batch(5))
    assert x.shape == (5, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x, y)
    assert np.all(np.abs(x) <= 1)
    assert isinstance(a, Policy)


def test_scripted_policy_noise_stays_in_bounds():
    policy = ScriptedPolicy(lambda s: np.ones((len(s), 3)), noise_std=2.0, seed=0)
    act = policy.act(obs_batch(100))
    assert act.shape == (100, 3) and np.all(np.abs(act) <= 1)
    assert act.min() < 0.5  # noise did something
    assert isinstance(policy, Policy)
    with pytest.raises(ValueError):
        ScriptedPolicy(lambda s: s, noise_std=-1)


def test_load_policy_errors():
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    with pytest.raises(ValueError, match="unknown policy spec"):
        load_policy("banana", "robobrain/Push-v0", space)
    with pytest.raises(ValueError, match="Box"):
        load_policy("random", "robobrain/Push-v0", gym.spaces.Discrete(3))
    with pytest.raises(ValueError, match="unknown env id"):
        load_policy("scripted", "NoSuchEnv-v0", space)
    assert load_policy("scripted", "robobrain/Push-v0", space).act(obs_batch(2)).shape == (2, 3)
