import gymnasium as gym
import numpy as np
import pytest

from robobrain.envs import make_env
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
    for low, high in ((-np.inf, 1.0), (0.0, np.nan), (1.0, 1.0)):  # (inf overflowed at the first act)
        with pytest.raises(ValueError, match="finite bounds with low < high"):
            RandomPolicy(2, low=low, high=high)


def test_a_policy_seeded_as_env_0_does_not_draw_its_numbers():
    """``default_rng(seed)`` is the stream of an env reset with ``seed``, as env 0 of a collection is:
    InvertedPendulum's first random actions were 300x its initial joint offsets, and Push's first
    decoy goal 1.2x the block's start, in every collection."""
    env = make_env("InvertedPendulum-v5", 16)
    push = make_env("robobrain/Push-v0", 16)
    for seed in (0, 5, 10_000):
        obs, _ = env.reset(seed=seed)
        action = RandomPolicy(1, seed=seed, low=-3.0, high=3.0).act(obs_batch(1, 4))[0, 0]
        assert not np.isclose(action, 300 * obs["state"][0], rtol=1e-3)
        obs, _ = push.reset(seed=seed)
        scripted = load_policy(
            "scripted", "robobrain/Push-v0", push.action_space, seed=seed, decoy_goal_prob=1.0
        )
        scripted.reset(1)
        block = obs["state"][10:12]  # (Push's state layout: block x, y)
        assert not np.allclose(scripted.decoy[0] / block, 1.2, rtol=1e-3)
    env.close()
    push.close()


def test_scripted_policy_noise_stays_in_bounds():
    policy = ScriptedPolicy(lambda s: np.ones((len(s), 3)), noise_std=2.0, seed=0)
    act = policy.act(obs_batch(100))
    assert act.shape == (100, 3) and np.all(np.abs(act) <= 1)
    assert act.min() < 0.5  # noise did something
    assert isinstance(policy, Policy)
    with pytest.raises(ValueError):
        ScriptedPolicy(lambda s: s, noise_std=-1)


def test_scripted_policy_decoy_goals_per_episode():
    """The expert sees a decoy goal (fixed for the episode, redrawn at reset) in the given share of
    episodes; the other coordinates of the goal and the rest of the state are untouched."""
    goal = slice(7, 10)
    seen_goal = lambda s: s[:, goal].copy()  # noqa: E731 -- an "expert" that heads for the goal it sees
    obs = obs_batch(400)
    obs["state"][:, goal] = [0.5, 0.5, 0.025]  # outside the decoy range
    policy = ScriptedPolicy(seen_goal, seed=0, decoy_goal_prob=0.5, goal_slice=goal)
    policy.reset(400)
    first = policy.act(obs)
    decoy = first[:, 0] != 0.5
    assert 0.4 < decoy.mean() < 0.6
    assert np.all(np.abs(first[decoy, :2]) <= 0.18) and np.all(first[:, 2] == np.float32(0.025))
    np.testing.assert_array_equal(policy.act(obs), first)  # fixed within an episode
    assert np.all(obs["state"][:, 7] == 0.5)  # the caller's observation is not modified
    mask = np.zeros(400, bool)
    mask[:200] = True
    policy.reset(400, mask=mask)
    after = policy.act(obs)
    np.testing.assert_array_equal(after[200:], first[200:])
    assert not np.array_equal(after[:200], first[:200])
    # A 0/1 mask is a mask, not row indices ([0, 0, ..., 1] redrew envs 0 and 1); a wrong size is refused.
    again = policy.act(obs)
    policy.reset(400, mask=mask[::-1].astype(int))
    np.testing.assert_array_equal(policy.act(obs)[:200], again[:200])
    with pytest.raises(ValueError, match=r"mask must be a bool \[400\] array, got shape \[3\]"):
        policy.reset(400, mask=np.ones(3, bool))
    plain = ScriptedPolicy(seen_goal, seed=0)
    np.testing.assert_array_equal(plain.act(obs)[:, :2], 0.5)
    with pytest.raises(ValueError, match="goal_slice"):
        ScriptedPolicy(seen_goal, decoy_goal_prob=0.5)
    with pytest.raises(ValueError, match="decoy_goal_prob"):
        ScriptedPolicy(seen_goal, decoy_goal_prob=1.5, goal_slice=goal)


def test_scripted_decoy_goals_move_the_block_elsewhere():
    """On Push, an expert chasing decoy goals still moves the block, but rarely onto the true goal."""
    from robobrain.envs import make_vector_env

    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    envs = make_vector_env("robobrain/Push-v0", 4, image_size=16)
    try:
        result = {}
        for prob in (0.0, 1.0):
            policy = load_policy("scripted", "robobrain/Push-v0", space, seed=0, decoy_goal_prob=prob)
            obs, _ = envs.reset(seed=0)
            policy.reset(4)
            start = obs["state"][:, 10:12].copy()
            success = np.zeros(4, bool)
            for _ in range(50):
                obs, _, _, _, info = envs.step(policy.act(obs))
                success |= info["success"]
            result[prob] = (success.mean(), np.linalg.norm(obs["state"][:, 10:12] - start, axis=1))
    finally:
        envs.close()
    assert result[0.0][0] >= 0.75 and result[1.0][0] <= 0.25
    assert np.median(result[1.0][1]) > 0.03  # the block was pushed somewhere


def test_load_policy_errors():
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    with pytest.raises(ValueError, match="unknown policy spec"):
        load_policy("banana", "robobrain/Push-v0", space)
    with pytest.raises(ValueError, match="Box"):  # (a Discrete one: random and sb3: drive it)
        load_policy("random", "robobrain/Push-v0", gym.spaces.Box(-1, 1, (2, 3), np.float32))
    with pytest.raises(ValueError, match="unknown env id"):
        load_policy("scripted", "NoSuchEnv-v0", space)
    with pytest.raises(ValueError, match=r"render_mode='human'.*rgb_array"):
        make_env("robobrain/Push-v0", render_mode="human")
    assert make_env("robobrain/Reach-v0", 8, render_mode="rgb_array").render_mode == "rgb_array"
    assert load_policy("scripted", "robobrain/Push-v0", space).act(obs_batch(2)).shape == (2, 3)


def test_the_random_policy_spans_the_envs_action_box():
    """Per dimension (Pendulum acts in [-2, 2]: a [-1, 1] baseline used half its torque range)."""
    obs = {"pixels": np.zeros((2000, 8, 8, 3), np.uint8), "state": np.zeros((2000, 3), np.float32)}
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 0.5], np.float32))
    actions = load_policy("random", "Pendulum-v1", space, seed=0).act(obs)
    assert np.all(actions >= space.low) and np.all(actions <= space.high)
    np.testing.assert_allclose(actions.min(axis=0), space.low, atol=0.02)
    np.testing.assert_allclose(actions.max(axis=0), space.high, atol=0.02)


def test_scripted_noise_is_seeded_and_has_the_std_asked_for():
    """Collected data is reproducible (unseeded noise, or half of it, passed the other tests)."""
    obs = {"pixels": np.zeros((4000, 8, 8, 3), np.uint8), "state": np.zeros((4000, 20), np.float32)}

    def still(state):
        return np.zeros((len(state), 3))

    a, b, c = (ScriptedPolicy(still, noise_std=0.2, seed=s).act(obs) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert abs(a.mean()) < 0.01 and abs(a.std() - 0.2) < 0.01  # (at 0.2 the clip at 1 never bites)


def test_one_envs_unbatched_observation_is_refused_by_every_policy(tmp_path):
    """The likeliest mistake: ``env.reset()[0]`` (pixels [S, S, 3], state [n]) given to ``act``. Random
    read the image height as N, scripted failed inside its expert, sb3 named a frame size mismatch of
    16 vs 16 px; a world-model policy's wrong-length reset mask failed inside torch."""
    from stable_baselines3 import PPO

    from robobrain.checkpoint import save_checkpoint
    from robobrain.config import get_preset, to_dict
    from robobrain.world_model import WorldModel

    env = make_env("robobrain/Reach-v0", image_size=16)
    obs, _ = env.reset(seed=0)
    state_only = gym.wrappers.TransformObservation(env, lambda o: o["state"], env.observation_space["state"])
    PPO("MlpPolicy", state_only, n_steps=16, batch_size=16, device="cpu").save(tmp_path / "ppo.zip")
    cfg = get_preset("debug", action_dim=3, image_size=16).world_model
    save_checkpoint(tmp_path / "wm", 1, WorldModel(cfg), {"world_model": to_dict(cfg)})
    for spec in ("random", "scripted", f"sb3:{tmp_path / 'ppo.zip'}", f"mpc:{tmp_path / 'wm'}"):
        policy = load_policy(spec, "robobrain/Reach-v0", env.action_space, seed=0, envs=[env])
        with pytest.raises(ValueError, match=r"observations, got obs\['pixels'\] of shape \(16, 16, "):
            policy.act(obs)
        assert policy.act({k: v[None] for k, v in obs.items()}).shape == (1, 3)
    with pytest.raises(ValueError, match=r"share their first dim N, got \{'pixels': 2, 'state': 1\}"):
        RandomPolicy(3).act({"pixels": np.zeros((2, 16, 16, 3), np.uint8), "state": np.zeros((1, 10))})
    with pytest.raises(ValueError, match=r"mask must be a bool \[1\] array, got shape \[3\]"):
        policy.reset(1, np.ones(3, bool))
    env.close()
