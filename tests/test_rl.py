"""The SB3 bridge beyond the imagination env: the features extractor, the planner guide, fine-tuning
with a pickle-free replay buffer, and the small pieces the online loop relies on."""

import dataclasses
import os
import tempfile
import types
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.logger import Logger

from robobrain.checkpoint import CheckpointError
from robobrain.config import get_preset
from robobrain.data import EpisodeStore
from robobrain.planning import MPCConfig, OptimizerConfig, world_model_score_fn
from robobrain.policies import WorldModelMPCPolicy
from robobrain.rl import (
    ActorCriticGuide,
    BehaviourPrior,
    BehaviourPriorGuide,
    ImaginationVecEnv,
    NonFiniteSB3Error,
    RewardValueSAC,
    SB3Config,
    WorldModelFeatures,
    encode_start_states,
    finetune,
    imagination_env,
    load_sb3,
    make_sb3_model,
    save_sb3,
)
from robobrain.training.logging import MetricLogger
from robobrain.world_model import WorldModel
from tests.test_imagination_env import PointLatent, point_starts
from tests.test_store import make_episode

SB3 = SB3Config(steps_per_iteration=64, num_envs=8, horizon=5, start_states=32, batch_size=16,
                buffer_size=128, learning_starts=16, net_arch=(16,), gradient_steps=1)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(get_preset("debug", action_dim=3).world_model).eval()


def episodes(n=2, t=12):
    return [make_episode(t, tag=i, size=32) for i in range(n)]


def test_features_extractor_gives_the_single_frame_latent(model):
    import gymnasium as gym

    pixel_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    ext = WorldModelFeatures(pixel_space, model)
    frames = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    expected = model.observe(frames[:, None], torch.zeros(5, 1, 3)).feat
    torch.testing.assert_close(ext(frames), expected)
    torch.testing.assert_close(ext(frames.permute(0, 3, 1, 2).float() / 255.0), expected)  # as SB3 does
    raw = WorldModelFeatures(pixel_space, model, normalized_images=False)
    torch.testing.assert_close(raw(frames.permute(0, 3, 1, 2).float()), expected)
    # A policy with normalize_images=False hands over [0, 255] floats: they all read as white before.
    with pytest.raises(ValueError, match=r"not divided by 255 .* normalized_images=False"):
        WorldModelFeatures(pixel_space, model)(frames.permute(0, 3, 1, 2).float())
    assert not list(ext.parameters())  # frozen by default: SB3 sees no world-model weights
    own = WorldModel(model.cfg)
    WorldModelFeatures(pixel_space, own).to("meta")  # as SB3 moves its policy to its device
    assert own.device.type == "meta"  # (it stayed behind: a CPU model under a CUDA policy)
    assert own.as_input(torch.zeros(2)).device.type == "meta"  # a CPU tensor goes to the model's device
    latent = WorldModelFeatures(gym.spaces.Box(-np.inf, np.inf, (model.cfg.feat_dim,), np.float32), model)
    x = torch.randn(3, model.cfg.feat_dim)
    assert torch.equal(latent(x), x)
    with pytest.raises(ValueError, match="neither latents"):
        WorldModelFeatures(gym.spaces.Box(0, 255, (16, 16, 3), np.uint8), model)


@pytest.mark.parametrize("algo", ["SAC", "TD3", "PPO"])
def test_guide_prior_and_value(model, algo):
    env = imagination_env(model, episodes(), SB3, seed=0)
    sb3 = make_sb3_model(SB3Config(**{**SB3.__dict__, "algo": algo}), env, seed=0, device="cpu")
    guide = ActorCriticGuide(sb3, num_prior=5)
    state = model.observe(torch.zeros(3, 1, 32, 32, 3, dtype=torch.uint8), torch.zeros(3, 1, 3))
    prior = guide.prior_rollout(model, state, horizon=4).actions
    assert prior.shape == (3, 5, 4, 3) and prior.abs().max() <= 1.0
    assert prior[0].std(0).mean() > 0  # distinct samples, also from a deterministic actor
    value = guide.value(state.feat)
    assert value.shape == (3,) and torch.isfinite(value).all()
    assert guide.value(state.feat.bfloat16()).dtype == torch.float32  # (bf16 features on CUDA)
    torch.testing.assert_close(guide.value(state.feat), value)  # V(s) of the mean action, not a sample
    assert ActorCriticGuide(sb3, num_prior=0).prior_rollout(model, state, 4) is None
    for bad in ({"num_prior": -1}, {"noise_std": float("nan")}):
        with pytest.raises(ValueError, match="need num_prior >= 0 and a finite noise_std"):
            ActorCriticGuide(sb3, **bad)
    # An SB3 model of another action range: its tanh output was read as [-1, 1] actions, unscaled.
    wide = imagination_env(model, episodes(), SB3, seed=0)
    wide.action_space = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)
    with pytest.raises(ValueError, match=r"acts in Box\(-2\.0, 2\.0.*the guide in \[-1, 1\]"):
        ActorCriticGuide(make_sb3_model(SB3Config(**{**SB3.__dict__, "algo": algo}), wide, 0, "cpu"))
    with pytest.raises(ValueError, match=r"acts in Discrete\(3\)"):  # (an AttributeError on .low)
        ActorCriticGuide(types.SimpleNamespace(action_space=gym.spaces.Discrete(3), policy=sb3.policy))


def test_auto_guides_the_planner_as_the_run_did(model, tmp_path, monkeypatch, caplog):
    """A run trained with --no-use-value (prior samples only) may train its critic with another
    --sb3.gamma than its planner's discount; `auto` added that critic's value to eval's plans all the
    same. It now uses the actor-critic as the run's planner did."""
    import robobrain.checkpoint
    from robobrain.policies import load_guide

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # (SB3's default log folder)
    env = imagination_env(model, episodes(), SB3, seed=0)
    (tmp_path / "sb3").mkdir()
    sb3 = make_sb3_model(SB3, env, seed=0, device="cpu")
    sb3._n_updates = 1  # (as after its first gradient step)
    sb3.save(tmp_path / "sb3" / "model.zip")
    monkeypatch.setattr(robobrain.checkpoint, "resolve_checkpoint", lambda path: tmp_path)
    runs = {(4, False): (16, False), (0, True): (0, True), (4, True): (16, True), None: (16, True)}
    for run, used in runs.items():  # (None: a train-wm checkpoint's config, no online part)
        online = {} if run is None else {"online": {"prior_samples": run[0], "use_value": run[1]}}
        monkeypatch.setattr(robobrain.checkpoint, "read_config", lambda path, c=online: c)
        guide = load_guide("run", "auto")
        assert (guide.num_prior, guide.use_value) == used, run
        assert load_guide("run", "both").use_value  # (asked for, as before)
    # Saved before its first gradient step (a round shorter than learning_starts), the run's planner had
    # no guide: `auto` gave eval the random initial actor's samples and critic's value.
    sb3._n_updates = 0
    sb3.save(tmp_path / "sb3" / "model.zip")
    assert load_guide("run", "auto") is None
    with caplog.at_level("WARNING", logger="robobrain.policies"):
        assert load_guide("run", "both").use_value  # (asked for: given, with a warning)
    assert "its SB3 actor-critic has not trained yet" in caplog.text


def test_score_adds_the_discounted_terminal_value(model):
    state = model.observe(torch.zeros(2, 1, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, 1, 3))
    cfg = MPCConfig(horizon=3, discount=0.9)
    actions = torch.rand(2, 4, 3, 3) * 2 - 1
    plain = world_model_score_fn(model, state, cfg)(actions)
    value = world_model_score_fn(model, state, cfg, value_fn=lambda f: f[:, 0] * 0 + 10.0)(actions)
    torch.testing.assert_close(value - plain, torch.full_like(plain, 10.0 * 0.9**3))
    column = world_model_score_fn(model, state, cfg, value_fn=lambda f: f[:, :1])  # [M, 1] broadcasts
    with pytest.raises(ValueError, match=r"\[M=8\] values, got \[8, 1\]"):
        column(actions)


def test_score_reuses_the_prior_rollout_and_matches_imagining_it(model):
    """Candidates 1..P that are the guide's prior samples are scored from the rollout they were
    sampled along (no second imagination), and score as imagining them would."""
    state = model.observe(torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8), torch.zeros(2, 1, 3))
    cfg = MPCConfig(horizon=4, discount=0.95)
    torch.manual_seed(0)
    prior = BehaviourPriorGuide(BehaviourPrior(model.cfg.feat_dim, 3, hidden=16), 5, 0.3).prior_rollout(
        model, state, 4
    )
    actions = torch.rand(2, 8, 4, 3) * 2 - 1
    actions[:, 1:6] = prior.actions
    value_fn = lambda f: f[:, 0]  # noqa: E731
    full = world_model_score_fn(model, state, cfg, value_fn)(actions)
    calls = []
    imagine = model.imagine
    model.imagine = lambda s, a, **kw: calls.append(a.shape[0]) or imagine(s, a, **kw)
    try:
        reused = world_model_score_fn(model, state, cfg, value_fn, prior)(actions)
        other = actions.clone()
        other[:, 3] = 0.0  # no longer the prior's samples: everything is imagined
        fallback = world_model_score_fn(model, state, cfg, value_fn, prior)(other)
    finally:
        del model.imagine
    assert calls == [2 * 3, 2 * 8]  # 3 non-prior candidates per env, then all 8
    torch.testing.assert_close(reused, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fallback, world_model_score_fn(model, state, cfg, value_fn)(other))


def test_guided_mpc_policy_acts(model):
    env = imagination_env(model, episodes(), SB3, seed=0)
    sb3 = make_sb3_model(SB3, env, seed=0, device="cpu")
    cfg = MPCConfig(horizon=3, optim=OptimizerConfig(num_samples=16, num_elites=4, iterations=2))
    policy = WorldModelMPCPolicy(model, cfg, guide=ActorCriticGuide(sb3, num_prior=4))
    policy.reset(2)
    actions = policy.act(
        {"pixels": np.zeros((2, 32, 32, 3), np.uint8), "state": np.zeros((2, 20), np.float32)}
    )
    assert actions.shape == (2, 3) and np.all(np.abs(actions) <= 1)


def test_finetune_save_load_keeps_model_and_replay_buffer(model, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # SB3's default log folder goes there
    (tmp_path / "tmp").mkdir()
    env = imagination_env(model, episodes(), SB3, seed=0)
    assert not env.success_terminates  # the tasks never terminate: the critic bootstraps past success
    assert imagination_env(
        model, episodes(), dataclasses.replace(SB3, success_terminates=True), 0
    ).success_terminates
    sb3 = make_sb3_model(SB3, env, seed=0, device="cpu")
    finetune(sb3, env, 64)
    # no empty SB3-<date> folder per learn() call (torch's inductor cache may land there when this
    # test runs alone, seen 2026-11-28)
    assert [p for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor")] == []
    assert sb3.num_timesteps == 64 and sb3.replay_buffer.pos > 0
    save_sb3(sb3, tmp_path / "sb3")
    again = load_sb3(SB3, tmp_path / "sb3", env, "cpu")
    assert type(again) is type(sb3) is RewardValueSAC and again.num_timesteps == 64  # (not SB3's soft Q)
    assert sb3.replay_buffer.timeouts.any()  # horizon cut-offs: bootstrapped, after a resume too
    np.testing.assert_array_equal(again.replay_buffer.timeouts, sb3.replay_buffer.timeouts)
    assert again.replay_buffer.pos == sb3.replay_buffer.pos
    # SB3's load reseeds the action space (its warm-up actions): the saved stream goes on instead.
    np.testing.assert_array_equal(again.action_space.sample(), sb3.action_space.sample())
    np.testing.assert_array_equal(again.replay_buffer.observations, sb3.replay_buffer.observations)
    for (name, p), q in zip(sb3.policy.named_parameters(), again.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    rng = tmp_path / "sb3" / "action_space_rng.json"
    for bad in ("{", "{}", '{"bit_generator": "MT19937"}'):
        rng.write_text(bad)
        with pytest.raises(CheckpointError, match=r"action_space_rng\.json"):
            load_sb3(SB3, tmp_path / "sb3", env, "cpu")
    rng.unlink()  # (older checkpoints lack it)
    buffer = tmp_path / "sb3" / "replay_buffer.npz"
    data = bytearray(buffer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a compressed member: a CRC or deflate error, not OSError
    buffer.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"replay_buffer\.npz"):
        load_sb3(SB3, tmp_path / "sb3", env, "cpu")
    buffer.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"replay_buffer\.npz"):
        load_sb3(SB3, tmp_path / "sb3", env, "cpu")
    # A buffer that reads but cannot be right: its position past the end (an IndexError at the first
    # add, a run later), a NaN reward (blamed on the learning rate after the first update).
    fields = {k: getattr(sb3.replay_buffer, k) for k in ("observations", "actions", "rewards", "dones",
                                                          "timeouts", "next_observations")}  # fmt: skip
    pos = sb3.replay_buffer.pos
    for extra, said in (({"pos": np.array(10**9)}, "pos 1000000000 outside"),
                        ({"rewards": np.where(np.arange(len(fields["rewards"]))[:, None] == pos - 1, np.nan,
                                              fields["rewards"])}, "rewards holds NaN")):  # fmt: skip
        np.savez(buffer, **{"pos": np.array(pos), "full": np.array(False), **fields, **extra})
        with pytest.raises(CheckpointError, match=f"replay_buffer\\.npz: unreadable replay buffer .*{said}"):
            load_sb3(SB3, tmp_path / "sb3", env, "cpu")
    (tmp_path / "sb3" / "model.zip").unlink()  # (SB3's own error named model.zip.zip)
    with pytest.raises(CheckpointError, match=r"model\.zip: missing$"):
        load_sb3(SB3, tmp_path / "sb3", env, "cpu")
    ppo = make_sb3_model(SB3Config(**{**SB3.__dict__, "algo": "PPO"}), env, 0, "cpu")
    assert isinstance(ppo, PPO)
    for round_ in (1, 2):  # one rollout per round (it ran 2.5x the budget)
        finetune(ppo, env, 64)
        assert ppo.num_timesteps == 64 * round_
    with pytest.raises(ValueError, match="unknown stable-baselines3 algorithm"):
        make_sb3_model(SB3Config(algo="NOPE"), env, 0, "cpu")


def test_finetune_trains_in_the_env_it_is_given_and_checks_the_weights_after(model, monkeypatch):
    """The loop builds a new imagination env from the newest episodes each round: SB3 must step it,
    not the first round's; weights that became NaN during a round are caught after it."""
    first, second = (imagination_env(model, episodes(), SB3, seed=s) for s in (0, 1))
    assert first.dynamics.sample  # (stochastic imagination, as the world model was trained)
    sb3 = make_sb3_model(SB3, first, seed=0, device="cpu")
    finetune(sb3, first, 16)
    finetune(sb3, second, 16)
    assert sb3.get_env() is second and sb3.num_timesteps == 32
    learn = sb3.learn

    def learn_then_diverge(*args, **kwargs):
        out = learn(*args, **kwargs)
        with torch.no_grad():
            next(sb3.policy.critic.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(sb3, "learn", learn_then_diverge)
    with pytest.raises(NonFiniteSB3Error, match=r"parameter critic.*non-finite after fine-tuning"):
        finetune(sb3, second, 16)


@pytest.mark.parametrize("algo", ["SAC", "TD3"])
def test_make_sb3_model_takes_every_setting(algo):
    cfg = SB3Config(algo=algo, num_envs=2, gradient_steps=3, learning_starts=7, batch_size=5, gamma=0.8,
                    net_arch=(7,), buffer_size=64, learning_rate=1e-3, action_noise=0.3)  # fmt: skip
    sb3 = make_sb3_model(cfg, toy_env(2), seed=0, device="cpu")
    got = (sb3.gradient_steps, sb3.learning_starts, sb3.batch_size, sb3.gamma, sb3.replay_buffer.buffer_size)
    assert got == (3, 7, 5, 0.8, 32)  # (SB3 keeps buffer_size // num_envs rows of num_envs transitions)
    assert sb3.learning_rate == 1e-3 and sb3.train_freq.frequency == 1
    widths = [m.out_features for m in sb3.policy.actor.modules() if isinstance(m, torch.nn.Linear)]
    assert widths[0] == 7, widths
    if algo == "TD3":
        np.testing.assert_allclose(sb3.action_noise._sigma, [0.3])
    else:
        assert sb3.action_noise is None


def test_finetune_reports_non_finite_weights(model):
    env = imagination_env(model, episodes(), SB3, seed=0)
    sb3 = make_sb3_model(SB3, env, seed=0, device="cpu")
    with torch.no_grad():
        next(sb3.policy.actor.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteSB3Error, match=r"parameter actor.*non-finite before fine-tuning"):
        finetune(sb3, env, 32)


def test_metric_logger_widens_and_truncates(tmp_path):
    log = MetricLogger(tmp_path, "m", tensorboard=False, step_key="env_steps")
    log.log(1, {"a": 1.0})
    log.log(2, {"a": 2.0, "b": 5.0})  # a new column
    log.log(3, {"a": 3.0})
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines == ["env_steps,a,b", "1,1.0,", "2,2.0,5.0", "3,3.0,"]
    MetricLogger(tmp_path, "m", tensorboard=False, step_key="env_steps").truncate_after(2)
    assert (tmp_path / "m.csv").read_text().splitlines() == lines[:3]
    with open(tmp_path / "m.csv", "a") as f:
        f.write("3,3.")  # a row cut short by a kill: dropped when the log is reopened
    again = MetricLogger(tmp_path, "m", tensorboard=False, step_key="env_steps")
    again.log(3, {"a": 3.5})
    assert (tmp_path / "m.csv").read_text().splitlines() == [*lines[:3], "3,3.5,"]


def test_metric_logger_purges_tensorboard_past_a_resumed_step(tmp_path, monkeypatch):
    """TensorBoard kept the killed run's rows that the CSV dropped (a fake writer: no tensorboard here)."""
    import sys

    writers = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
            writers.append(self)

        def add_scalar(self, name, value, step):
            self.scalars.append((name, value, step))

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = MetricLogger(tmp_path, "m", tensorboard=True, step_key="env_steps")
    log.log(10, {"a": 1.0})
    log.truncate_after(5)
    assert writers[0].closed and writers[1].purge_step == 6 and writers[1].log_dir == writers[0].log_dir
    log.log(10, {"a": 2.0})
    assert writers[1].scalars == [("a", 2.0, 10)]


def test_store_truncate_drops_later_episodes_and_temp_files(tmp_path):
    store = EpisodeStore(tmp_path)
    names = [store.add(make_episode(3, tag=i)) for i in range(4)]
    (tmp_path / ".tmp-123-episode_000004.npz").write_bytes(b"half")
    (tmp_path / f".tmp-{os.getpid()}-0123456789ab-episode_000005.npz").write_bytes(b"fresh")  # (however
    assert store.truncate(2) == names[2:]  # fresh: the run owns its store, so no other writer's is there)
    assert store.names() == names[:2] and not list(tmp_path.glob(".tmp-*"))
    assert sorted(EpisodeStore(tmp_path).manifest) == names[:2]


def pixels_only_push(image_size: int = 32):
    """robobrain/Push-v0 observing its frames alone (a Box, for SB3's CnnPolicy)."""
    import gymnasium as gym

    import robobrain.envs as envs

    class Pixels(gym.ObservationWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.observation_space = env.observation_space["pixels"]

        def observation(self, observation):
            return observation["pixels"]

    return Pixels(envs.make_env("robobrain/Push-v0", image_size=image_size, max_episode_steps=8))


def test_sb3_trains_on_pixels_through_the_world_model_features(model):
    env = pixels_only_push()
    kwargs = {
        "features_extractor_class": WorldModelFeatures,
        "features_extractor_kwargs": {"world_model": model},
    }
    sac = SAC("CnnPolicy", env, buffer_size=64, batch_size=8, learning_starts=8, policy_kwargs=kwargs, seed=0)
    sac.set_logger(Logger(folder=None, output_formats=[]))
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    sac.learn(24)
    assert sac.num_timesteps == 24
    for k, v in model.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # the world model stays frozen under SB3's updates
    assert all(p.grad is None for p in model.parameters())  # (no backward pass through it at all)
    # Unfrozen: each extractor trains its own copy (one shared module failed SAC's first update).
    kwargs["features_extractor_kwargs"] = {"world_model": model, "freeze": False}
    sac = SAC("CnnPolicy", env, buffer_size=64, batch_size=8, learning_starts=8, policy_kwargs=kwargs, seed=0)
    sac.set_logger(Logger(folder=None, output_formats=[]))
    sac.learn(24)
    copies = [m.features_extractor.world_model for m in (sac.actor, sac.critic, sac.critic_target)]
    assert len({id(m) for m in copies}) == 3 and all(m is not model for m in copies)
    learned = copies[1].state_dict()  # the critic's copy learned
    assert any(not torch.equal(learned[k], frozen[k]) for k in frozen if k.startswith("encoder."))
    for k, v in model.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    env.close()


def test_features_from_a_checkpoint_path_keep_the_model_out_of_the_sb3_zip(model, tmp_path):
    """A path in ``features_extractor_kwargs`` is pickled into the zip as a path (a model object is
    pickled whole, on its device); loading the zip reads the checkpoint again."""
    from robobrain.checkpoint import save_checkpoint
    from robobrain.config import to_dict

    save_checkpoint(tmp_path / "wm", 1, model, {"world_model": to_dict(model.cfg)})
    env = pixels_only_push()
    zips = {}
    with pytest.raises(
        ValueError, match=r"is a run directory: pass its checkpoint itself, e\.g\. .*step_0000001"
    ):
        WorldModelFeatures(pixels_only_push().observation_space, str(tmp_path / "wm"))  # (it moves on)
    checkpoint = str(tmp_path / "wm" / "checkpoints" / "step_0000001")
    for name, wm in (("object", model), ("path", checkpoint)):
        kwargs = {
            "features_extractor_class": WorldModelFeatures,
            "features_extractor_kwargs": {"world_model": wm},
        }
        sac = SAC(
            "CnnPolicy", env, buffer_size=64, batch_size=8, learning_starts=4, policy_kwargs=kwargs, seed=0
        )
        sac.set_logger(Logger(folder=None, output_formats=[]))
        sac.learn(8)
        sac.save(tmp_path / f"{name}.zip")
        zips[name] = (tmp_path / f"{name}.zip").stat().st_size
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert zips["object"] - zips["path"] > weights / 2  # the weights (zip-compressed, random floats)
    obs = env.reset(seed=0)[0]
    loaded = SAC.load(tmp_path / "path.zip", device="cpu")
    np.testing.assert_array_equal(
        loaded.predict(obs, deterministic=True)[0], sac.predict(obs, deterministic=True)[0]
    )
    assert torch.equal(loaded.actor.features_extractor.wm.encoder.net[0].weight, model.encoder.net[0].weight)
    (tmp_path / "wm").rename(tmp_path / "moved")  # (the checkpoint it names is gone)
    with pytest.raises(CheckpointError):
        SAC.load(tmp_path / "path.zip", device="cpu")
    env.close()


def test_goal_conditioned_features_and_imagination_env_carry_the_goal():
    import dataclasses

    import gymnasium as gym

    torch.manual_seed(0)
    cfg = get_preset("debug", action_dim=3, state_dim=10, goal_start=7, goal_dim=3).world_model
    wm = WorldModel(cfg).eval()
    wm.set_state_stats(torch.zeros(10), torch.ones(10))
    space = gym.spaces.Dict(
        {"pixels": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8), "state": gym.spaces.Box(-1, 1, (10,))}
    )
    ext = WorldModelFeatures(space, wm)
    frames = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    state = torch.rand(4, 10)
    expected = wm.observe(frames[:, None], torch.zeros(4, 1, 3), env_state=state).feat
    torch.testing.assert_close(ext({"pixels": frames, "state": state}), expected)
    with pytest.raises(ValueError, match=r"its goal from .*'state' key"):
        WorldModelFeatures(gym.spaces.Dict({"pixels": space["pixels"]}), wm)
    proprio = get_preset("debug", action_dim=3, state_dim=10, use_proprio=True, proprio_dim=3).world_model
    with pytest.raises(ValueError, match=r"its proprioception from .*'state' key"):  # not at forward
        WorldModelFeatures(space["pixels"], WorldModel(proprio))

    eps = []
    for i in range(2):
        ep = make_episode(12, tag=i, size=32)
        goal_state = np.zeros((13, 10), np.float32)
        goal_state[:, 7:10] = i + 1  # each episode's own goal
        eps.append(dataclasses.replace(ep, state=goal_state))
    env = imagination_env(wm, eps, SB3, seed=0)
    obs = env.reset()
    goals = set()
    for _ in range(12):  # past the horizon: envs restart from other start states
        assert np.all(obs[:, -3:] == obs[:, -3:-2])  # the goal stays whole through steps and resets
        goals |= set(obs[:, -1].tolist())
        obs, *_ = env.step(np.random.default_rng(0).uniform(-1, 1, (SB3.num_envs, 3)))
    assert goals == {1.0, 2.0}


def test_imagined_reward_is_the_planners_step_score(model):
    """The critic's reward includes the success bonus the planner adds per imagined step, so that its
    value past the horizon counts the same score (not the reward head alone)."""
    plain = imagination_env(model, episodes(), SB3, seed=0, success_bonus=0.0)
    bonus = imagination_env(model, episodes(), SB3, seed=0, success_bonus=2.0)
    plain.reset()
    bonus.reset()
    state = plain.state
    action = np.full((SB3.num_envs, 3), 0.5, np.float32)
    plain.dynamics.sample = bonus.dynamics.sample = False  # the same transition in both
    _, r_plain, _, _ = plain.step(action)
    _, r_bonus, _, _ = bonus.step(action)
    with torch.no_grad():
        nxt, _ = model.rssm.img_step(state, torch.as_tensor(action), sample=False)
        p = torch.sigmoid(model.success_head(nxt.feat).squeeze(-1)).numpy()
    np.testing.assert_allclose(r_bonus - r_plain, 2.0 * p, rtol=1e-5, atol=1e-6)
    assert (r_bonus > r_plain).all()


def test_imagined_reward_takes_the_planners_disagreement_penalty_too():
    """The planner subtracts --mpc.disagreement-penalty x the ensemble's disagreement from each imagined
    step; the critic, whose value continues that sum past the horizon, learned the sum without it."""
    torch.manual_seed(0)
    ensemble = WorldModel(get_preset("debug", action_dim=3, ensemble=3).world_model).eval()
    plain = imagination_env(ensemble, episodes(), SB3, seed=0)
    penalised = imagination_env(ensemble, episodes(), SB3, seed=0, disagreement_penalty=0.5)
    plain.reset()
    penalised.reset()
    state = plain.state
    action = np.full((SB3.num_envs, 3), 0.5, np.float32)
    plain.dynamics.sample = penalised.dynamics.sample = False
    _, r_plain, _, _ = plain.step(action)
    _, r_penalised, _, _ = penalised.step(action)
    with torch.no_grad():
        out = ensemble.imagine(state, torch.as_tensor(action)[:, None])
    cfg = MPCConfig(horizon=1, disagreement_penalty=0.5, discount=1.0)
    np.testing.assert_allclose(
        r_plain - r_penalised, 0.5 * out.disagreement[:, 0].numpy(), rtol=1e-5, atol=1e-6
    )
    planner = world_model_score_fn(ensemble, state, cfg)(torch.as_tensor(action)[:, None, None])[:, 0]
    np.testing.assert_allclose(r_penalised, planner.numpy(), rtol=1e-5, atol=1e-6)
    single = WorldModel(get_preset("debug", action_dim=3, ensemble=0).world_model)
    with pytest.raises(ValueError, match="disagreement_penalty needs a world model trained with an ensemble"):
        imagination_env(single, episodes(), SB3, seed=0, disagreement_penalty=0.5)


@pytest.mark.parametrize("algo", ["TD3", "DDPG"])
def test_deterministic_actors_keep_exploring(model, algo):
    """SB3 gives TD3/DDPG no action noise by default: after learning_starts they would collect the
    actor's deterministic actions only."""
    env = imagination_env(model, episodes(), SB3, seed=0)
    sb3 = make_sb3_model(SB3Config(**{**SB3.__dict__, "algo": algo}), env, seed=0, device="cpu")
    assert sb3.action_noise is not None
    obs = env.reset()
    sb3._last_obs, sb3.num_timesteps, sb3.learning_starts = obs, 10**6, 0
    a1, _ = sb3._sample_action(0, sb3.action_noise, env.num_envs)
    a2, _ = sb3._sample_action(0, sb3.action_noise, env.num_envs)
    greedy, _ = sb3.predict(obs, deterministic=True)
    assert not np.allclose(a1, a2) and not np.allclose(a1, greedy)
    quiet = make_sb3_model(SB3Config(**{**SB3.__dict__, "algo": algo, "action_noise": 0.0}), env, 0, "cpu")
    assert quiet.action_noise is not None and np.all(quiet.action_noise() == 0)
    for noise in (-1.0, float("inf")):  # (inf: TD3's every action clipped to the bounds)
        with pytest.raises(ValueError, match="action_noise must be finite and >= 0"):
            SB3Config(action_noise=noise)


def test_a_wrapped_replay_buffer_comes_back_whole(model, tmp_path):
    """pos, full and every field (a buffer restored as not full sampled only [0, pos); rewards and
    dones left at zero passed the test above, whose buffer never wraps)."""
    from robobrain.rl.finetune import BUFFER_FIELDS

    env = imagination_env(model, episodes(), SB3, seed=0)
    sb3 = make_sb3_model(SB3, env, seed=0, device="cpu")
    finetune(sb3, env, 160)  # 20 rows of 8 envs in a 16-row buffer: it wraps
    assert sb3.replay_buffer.full
    save_sb3(sb3, tmp_path / "sb3")
    again = load_sb3(SB3, tmp_path / "sb3", env, "cpu").replay_buffer
    assert (again.pos, again.full) == (sb3.replay_buffer.pos, True)
    for name in BUFFER_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(sb3.replay_buffer, name), err_msg=name)


def test_the_guides_value_is_the_smaller_twin_q_of_the_mean_action(model):
    """The min over the twin critics (the max, optimistic, passed every other guide test)."""
    env = imagination_env(model, episodes(), SB3, seed=0)
    sac = make_sb3_model(SB3, env, seed=0, device="cpu")
    with torch.no_grad():  # the twins disagree, in both directions
        sac.policy.critic.q_networks[0][-1].bias.fill_(1.0)
        sac.policy.critic.q_networks[1][-1].bias.fill_(-1.0)
        feat = torch.randn(6, model.cfg.feat_dim)
        q1, q2 = sac.policy.critic(feat, sac.policy.actor(feat, deterministic=True))
    torch.testing.assert_close(ActorCriticGuide(sac).value(feat), torch.minimum(q1, q2).squeeze(1))


# --- from a mutation audit (session 30): properties a broken implementation passed -----------------
def toy_env(num_envs=8):
    return ImaginationVecEnv(PointLatent(), point_starts(), num_envs=num_envs, horizon=5)


def test_ppo_rollout_is_rounded_up_to_whole_env_steps():
    """steps_per_iteration 65 over 8 envs: 9 steps of the VecEnv (72 transitions), not 8 (64 < 65)."""
    cfg = SB3Config(algo="PPO", steps_per_iteration=65, num_envs=8, batch_size=8, net_arch=(8,))
    ppo = make_sb3_model(cfg, toy_env(), seed=0, device="cpu")
    assert ppo.n_steps == 9
    # Minibatches or rollouts of one transition: SB3's AssertionError at the first fine-tuning round
    # (after a checkpoint whose config then refused the corrected flag); refused with the flags now.
    for bad in ({"batch_size": 1}, {"steps_per_iteration": 1, "num_envs": 1, "buffer_size": 1}):
        with pytest.raises(ValueError, match="PPO needs minibatches and rollouts of >= 2"):
            SB3Config(**{"algo": "PPO", **bad})
    assert SB3Config(algo="SAC", batch_size=1).batch_size == 1
    two = SB3Config(algo="PPO", steps_per_iteration=1, num_envs=2, net_arch=(8,))  # (a rollout of 2: built)
    assert make_sb3_model(two, toy_env(2), 0, "cpu").batch_size == 2


class ZeroRewardLatent(PointLatent):
    """Every imagined step scores 0 and success never fires: the true value is 0 in every state."""

    action_dim = 4

    def step(self, state, action):
        return state, torch.zeros(len(action)), torch.full((len(action),), -20.0)


@pytest.mark.parametrize("soft", [False, True])
def test_the_sac_guides_value_is_the_return_of_rewards_alone(soft):
    """The planner adds the critic's value to sums of imagined rewards; SB3's soft Q also pays the
    policy's future entropy (here about 2 where every reward is 0), so the default critic learns
    rewards only. ``soft_value`` keeps SB3's target: the check that this test sees the difference."""
    env = ImaginationVecEnv(ZeroRewardLatent(), point_starts(), num_envs=8, horizon=5, seed=0)
    cfg = SB3Config(
        num_envs=8, horizon=5, gamma=0.9, batch_size=64, buffer_size=2000, learning_starts=64,
        net_arch=(32,), gradient_steps=1, learning_rate=3e-3, soft_value=soft,
    )  # fmt: skip
    torch.manual_seed(0)
    sb3 = make_sb3_model(cfg, env, seed=0, device="cpu")
    assert isinstance(sb3, SAC) and (type(sb3) is SAC) == soft
    finetune(sb3, env, 2000)
    value = ActorCriticGuide(sb3, num_prior=0).value(torch.linspace(-1, 1, 5)[:, None])
    if soft:
        assert value.min() > 0.5, value
    else:
        assert value.abs().max() < 0.25, value
    with pytest.raises(ValueError, match="only SAC learns a soft Q"):
        SB3Config(algo="TD3", soft_value=True)


@pytest.mark.parametrize("gamma, ent_coef", [(0.0, "auto"), (0.9, 0.0)])
def test_reward_value_sac_is_sb3s_sac_where_the_entropy_bonus_is_nothing(gamma, ent_coef):
    """Where SB3's soft target gets no entropy term -- gamma 0 (the target is the reward; the actor's
    loss and the temperature's tuning still read the entropy) or a temperature of 0 (the target's
    whole bootstrap, with terminations) -- RewardValueSAC trains the same weights as SB3's SAC."""

    def trained(cls: type) -> Any:
        env = ImaginationVecEnv(PointLatent(), point_starts(64), 4, 6, success_terminates=True, seed=0)
        torch.manual_seed(0)
        model = cls("MlpPolicy", env, gamma=gamma, ent_coef=ent_coef, learning_starts=16, batch_size=16,
                    gradient_steps=2, target_update_interval=2, policy_kwargs={"net_arch": [16]},
                    buffer_size=500, seed=0, device="cpu", verbose=0)  # fmt: skip
        model.learn(240)
        assert env.success_terminates and model.replay_buffer.dones.any()  # (terminal targets too)
        return model

    ours, theirs = trained(RewardValueSAC), trained(SAC)
    assert ours._n_updates == theirs._n_updates > 100
    for (name, p), q in zip(
        ours.policy.state_dict().items(), theirs.policy.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    if ent_coef == "auto":
        assert torch.equal(ours.log_ent_coef, theirs.log_ent_coef) and ours.log_ent_coef.item() != 0.0


def test_gamma_one_is_accepted():
    assert SB3Config(gamma=1.0).gamma == 1.0
    with pytest.raises(ValueError, match="gamma"):
        SB3Config(gamma=1.01)


@pytest.mark.parametrize("algo", ["SAC", "PPO"])
def test_the_seed_fixes_the_initial_weights(algo):
    cfg = SB3Config(
        algo=algo, steps_per_iteration=16, num_envs=8, batch_size=8, buffer_size=64, net_arch=(8,)
    )
    torch.manual_seed(1)
    a = make_sb3_model(cfg, toy_env(), seed=3, device="cpu")
    torch.manual_seed(2)
    b = make_sb3_model(cfg, toy_env(), seed=3, device="cpu")
    for (name, p), q in zip(a.policy.named_parameters(), b.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_imagination_starts_from_the_newest_episodes():
    """``episodes`` oldest first: a bank smaller than them all is filled from the newest."""
    torch.manual_seed(0)
    model = WorldModel(get_preset("debug", action_dim=3).world_model).eval()
    old, new = make_episode(6, tag=10, size=32), make_episode(6, tag=200, size=32)
    env = imagination_env(model, [old, new], SB3Config(start_states=4, num_envs=2, buffer_size=2), seed=0)
    expected = encode_start_states(model, [new], max_states=4)
    torch.testing.assert_close(env.bank.deter, expected.deter)


# --- from a second mutation audit (session 30) ------------------------------------------------------
def test_a_black_first_batch_does_not_end_the_range_check(model):
    """All-black float frames tell nothing about the scale: the check must still catch the first
    [0, 255] batch that follows (marking the range checked after a black batch let it through)."""
    ext = WorldModelFeatures(gym.spaces.Box(0, 255, (32, 32, 3), np.uint8), model)
    ext(torch.zeros(2, 3, 32, 32))  # black: nothing to tell
    frames = torch.randint(1, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="not divided by 255"):
        ext(frames.permute(0, 3, 1, 2).float())
