"""ImaginationVecEnv: SB3 trains inside a latent model."""

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecCheckNan

from robobrain.config import get_preset
from robobrain.planning import MPCConfig
from robobrain.rl import ImaginationVecEnv, WorldModelDynamics, encode_start_states
from robobrain.world_model import State, WorldModel
from tests.test_store import make_episode


class PointLatent:
    """Toy latent model with a known optimum: x' = clip(x + 0.1 a), reward -|x' - 0.5|."""

    feat_dim = 1
    action_dim = 1

    def features(self, state: State) -> torch.Tensor:
        return state.deter

    def step(self, state, action):
        x = (state.deter + 0.1 * action).clamp(-1, 1)
        dist = (x[:, 0] - 0.5).abs()
        return State(x, state.stoch), -dist, 10 * (0.05 - dist)


def point_starts(n=256):
    x = torch.linspace(-1, 1, n)[:, None]
    return State(x, torch.zeros(n, 1, 1))


def test_vec_env_contract_and_auto_reset():
    env = ImaginationVecEnv(PointLatent(), point_starts(), num_envs=4, horizon=5, success_terminates=False)
    obs = env.reset()
    assert obs.shape == (4, 1) and obs.dtype == np.float32
    for _ in range(5):
        obs, reward, done, infos = env.step(np.ones((4, 1), np.float32))
        assert reward.shape == (4,) and done.shape == (4,)
    assert done.all() and all(info["TimeLimit.truncated"] for info in infos)
    assert all("terminal_observation" in info for info in infos)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full((4, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"shape \(4, 1\)"):
        env.step(np.ones((2, 2), np.float32))
    # SB3's set_random_seed calls seed(); the next reset draws the same start states for the same seed.
    env.seed(123)
    first = env.reset()
    env.step(np.ones((4, 1), np.float32))
    env.seed(123)
    np.testing.assert_array_equal(env.reset(), first)
    assert not np.array_equal(env.reset(), first)  # unseeded resets go on drawing
    # One batched model, not N env objects: an attribute or a method is all envs' or refused.
    assert env.get_attr("horizon", indices=[1]) == [5]
    env.set_attr("horizon", 7)
    assert env.get_attr("horizon") == [7] * 4
    with pytest.raises(NotImplementedError, match="all 4"):
        env.set_attr("horizon", 9, indices=[0])
    with pytest.raises(NotImplementedError, match="all 4"):
        env.env_method("reset", indices=0)
    assert len(env.env_method("reset")) == 4


def test_ppo_reaches_the_toy_optimum():
    env = VecCheckNan(ImaginationVecEnv(PointLatent(), point_starts(), num_envs=16, horizon=20, seed=0))
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=256, learning_rate=3e-3, seed=0, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))  # no SB3-<date> folder in the temp directory

    def final_distance(policy):
        x = torch.linspace(-1, 1, 21)[:, None]
        for _ in range(20):
            a = torch.as_tensor(policy(x.numpy()), dtype=torch.float32)
            x = (x + 0.1 * a.clamp(-1, 1)).clamp(-1, 1)
        return float((x - 0.5).abs().mean())

    rng = np.random.default_rng(0)
    before = final_distance(lambda o: rng.uniform(-1, 1, (len(o), 1)))
    model.learn(12_000)
    after = final_distance(lambda o: model.predict(o, deterministic=True)[0])
    assert after < 0.1 < before


def test_world_model_start_states_and_step():
    cfg = get_preset("debug").world_model
    model = WorldModel(cfg)
    episodes = [make_episode(6, tag=i, size=32) for i in range(2)]
    starts = encode_start_states(model, episodes)
    assert starts.deter.shape == (12, cfg.deter)
    # Rewarded by default as the default planner scores a step (the bonus was 0 here, 1 there).
    assert WorldModelDynamics(model).success_bonus == MPCConfig().success_bonus
    env = ImaginationVecEnv(WorldModelDynamics(model), starts, num_envs=3, horizon=4)
    obs = env.reset()
    assert obs.shape == (3, cfg.feat_dim)
    obs, reward, _, _ = env.step(np.zeros((3, cfg.action_dim), np.float32))
    assert obs.shape == (3, cfg.feat_dim) and np.isfinite(reward).all()


def test_bad_banks_sizes_and_dynamics_are_refused_up_front():
    """Each of these used to pass and fail later (NaN observations at reset, a numpy 'high <= 0', an
    IndexError) or not at all (a horizon of 0 ended every step; [N, 1] rewards broadcast dones to [N, N])."""
    nan_bank = point_starts(4)
    nan_bank.deter[1] = float("nan")
    for bank, kw, match in ((nan_bank, {}, "NaN or inf"), (point_starts(0), {}, "empty"),
                            (point_starts(), {"horizon": 0}, "horizon >= 1"),
                            (point_starts(), {"num_envs": 0}, "num_envs >= 1")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ImaginationVecEnv(PointLatent(), bank, **kw)

    class ColumnRewards(PointLatent):
        def step(self, state, action):
            state, reward, success = super().step(state, action)
            return state, reward[:, None], success[:, None]

    env = ImaginationVecEnv(ColumnRewards(), point_starts(), num_envs=2)
    env.reset()
    with pytest.raises(ValueError, match=r"reward and success logit \[N=2\], got \[2, 1\]"):
        env.step(np.zeros((2, 1), np.float32))
    model = WorldModel(get_preset("debug").world_model)
    empty = make_episode(0, size=32)
    with pytest.raises(ValueError, match="no episode with a step"):  # (an IndexError; torch.cat of [])
        encode_start_states(model, [empty])
    starts = encode_start_states(model, [empty, make_episode(5, size=32)])  # the empty one is skipped
    assert len(starts.deter) == 5
