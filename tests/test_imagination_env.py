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
    env.seed(124)  # (another seed draws other states: the value is used, not only the call)
    assert not np.array_equal(env.reset(), first)
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
    # The bank is capped (the online loop's --sb3.start-states; episodes pile up), from the newest first
    capped = encode_start_states(model, episodes * 3, max_states=8)
    assert capped.deter.shape == (8, cfg.deter)
    torch.testing.assert_close(capped.deter, starts.deter[:8])
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
    with pytest.raises(ValueError, match=r"\(and termination logit\) \[N=2\], got \[2, 1\], \[2, 1\]"):
        env.step(np.zeros((2, 1), np.float32))
    model = WorldModel(get_preset("debug").world_model)
    empty = make_episode(0, size=32)
    with pytest.raises(ValueError, match="no episode with a step"):  # (an IndexError; torch.cat of [])
        encode_start_states(model, [empty])
    starts = encode_start_states(model, [empty, make_episode(5, size=32)])  # the empty one is skipped
    assert len(starts.deter) == 5


# --- from a mutation audit (session 30): properties a broken implementation passed -----------------
def bank(*xs: float) -> State:
    x = torch.tensor(xs, dtype=torch.float32)[:, None]
    return State(x, torch.zeros(len(xs), 1, 1))


def test_every_episode_lasts_horizon_steps_and_restarts_from_the_bank():
    """Episodes go on after the first auto-reset: its clock restarts (done every horizon steps, not
    every step after the first horizon) and the finished envs' states are fresh draws."""
    env = ImaginationVecEnv(PointLatent(), bank(-1.0), num_envs=2, horizon=3)
    obs = env.reset()
    np.testing.assert_allclose(obs, -1.0)
    dones, firsts, terminal = [], [], []
    for _ in range(9):
        obs, _, done, infos = env.step(np.ones((2, 1), np.float32))
        dones.append(done.tolist())
        firsts.append(obs[:, 0].tolist())
        terminal.append([info.get("terminal_observation") for info in infos])
    assert [d[0] for d in dones] == [False, False, True] * 3
    for t in (2, 5, 8):  # a done step returns the fresh start and keeps the last state in the infos
        np.testing.assert_allclose(firsts[t], [-1.0, -1.0])
        np.testing.assert_allclose([o[0] for o in terminal[t]], [-0.7, -0.7], atol=1e-6)
    np.testing.assert_allclose(firsts[0], [-0.9, -0.9], atol=1e-6)


def test_envs_finishing_together_restart_from_draws_of_their_own_and_reset_restarts_the_clock():
    """All envs end together at the horizon: each takes its own fresh draw (one draw for all cut the
    variety of start states by num_envs); a reset mid-episode gives a whole horizon again."""
    env = ImaginationVecEnv(PointLatent(), point_starts(64), num_envs=8, horizon=1, seed=0)
    env.reset()
    obs, _, done, _ = env.step(np.zeros((8, 1), np.float32))
    assert done.all() and len(np.unique(obs[:, 0])) > 4, obs[:, 0]
    env = ImaginationVecEnv(PointLatent(), point_starts(64), num_envs=2, horizon=3, seed=0)
    env.reset()
    env.step(np.zeros((2, 1), np.float32))
    env.step(np.zeros((2, 1), np.float32))
    env.reset()
    dones = [env.step(np.zeros((2, 1), np.float32))[2].any() for _ in range(3)]
    assert dones == [False, False, True]


def test_a_finished_env_restarts_alone():
    """Only the envs that are done get a fresh start; the others go on from where they were."""
    env = ImaginationVecEnv(PointLatent(), bank(0.48), num_envs=2, horizon=50, success_terminates=True)
    env.reset()
    # Env 0 stays on the goal (success: terminates), env 1 moves away from it (no success).
    obs, _, done, infos = env.step(np.array([[0.0], [-1.0]], np.float32))
    assert done.tolist() == [True, False]
    np.testing.assert_allclose(obs[:, 0], [0.48, 0.38], atol=1e-6)
    assert infos[0]["success"] and not infos[1]["success"]
    assert infos[0]["TimeLimit.truncated"] is False
    # ... and only its clock restarts: env 1's episode still ends at its horizon (resetting every clock
    # whenever one env finished gave SB3 episodes longer than the horizon).
    env = ImaginationVecEnv(PointLatent(), bank(0.48), num_envs=2, horizon=3, success_terminates=True)
    env.reset()
    dones = [env.step(np.array([[0.0], [-1.0]], np.float32))[2].tolist() for _ in range(3)]
    assert dones == [[True, False], [True, False], [True, True]]


def test_termination_at_the_horizon_is_not_a_time_limit():
    """Success on the last step of the horizon: the episode terminated (SB3 must not bootstrap), so
    TimeLimit.truncated is False although the clock also ran out."""
    env = ImaginationVecEnv(PointLatent(), bank(0.3), num_envs=1, horizon=2, success_terminates=True)
    env.reset()
    _, _, done, _ = env.step(np.ones((1, 1), np.float32))  # 0.4: not yet within 5 cm of 0.5
    assert not done[0]
    _, _, done, infos = env.step(np.ones((1, 1), np.float32))  # 0.5: success on the horizon's step
    assert done[0] and infos[0]["success"] and infos[0]["TimeLimit.truncated"] is False


def test_out_of_range_actions_are_clipped_before_the_model_sees_them():
    a = ImaginationVecEnv(PointLatent(), bank(-1.0), num_envs=1, horizon=5)
    b = ImaginationVecEnv(PointLatent(), bank(-1.0), num_envs=1, horizon=5)
    a.reset(), b.reset()
    big, _, _, _ = a.step(np.full((1, 1), 5.0, np.float32))
    one, _, _, _ = b.step(np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(big, one)


def test_sb3_acts_in_the_action_space_of_the_models_data():
    """A model trained on Pendulum's [-2, 2] torques: SB3 acted in [-1, 1] (half the range), unsaid."""
    import gymnasium as gym

    space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    env = ImaginationVecEnv(PointLatent(), bank(-1.0), num_envs=1, horizon=5, action_space=space)
    assert env.action_space == space
    env.reset()
    x, _, _, _ = env.step(np.full((1, 1), 5.0, np.float32))  # clipped to 2, not 1: x = -1 + 0.1 * 2
    np.testing.assert_allclose(x, [[-0.8]], rtol=1e-6)
    wrong = gym.spaces.Box(-2.0, 2.0, (2,)), gym.spaces.Box(-np.inf, np.inf, (1,)), gym.spaces.Discrete(3)
    for bad in wrong:
        with pytest.raises(ValueError, match="action_space must be a bounded Box of shape"):
            ImaginationVecEnv(PointLatent(), bank(-1.0), num_envs=1, horizon=5, action_space=bad)


def test_start_states_are_the_posteriors_the_planner_filters():
    """The bank holds the posterior after each frame, filtered with the action *before* it (zero at
    the start), as ``WorldModel.observe`` does."""
    torch.manual_seed(0)
    model = WorldModel(get_preset("debug", action_dim=3).world_model).eval()
    ep = make_episode(6, tag=3, size=32)
    ep.action[:] = np.random.default_rng(0).uniform(-1, 1, ep.action.shape).astype(np.float32)
    starts = encode_start_states(model, [ep])
    prev = np.concatenate([np.zeros((1, 3), np.float32), ep.action[:-1]])
    with torch.no_grad():
        for t in (0, 3, 5):
            s = model.observe(
                torch.from_numpy(ep.pixels[None, : t + 1]), torch.from_numpy(prev[None, : t + 1])
            )
            torch.testing.assert_close(starts.feat[t], s.feat[0], rtol=1e-4, atol=1e-5)
