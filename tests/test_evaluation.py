"""The evaluation script: reproducible reports, Wilson intervals, videos, clear errors."""

import json
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from robobrain.checkpoint import CheckpointError, save_checkpoint
from robobrain.cli import main
from robobrain.config import get_preset, to_dict
from robobrain.evaluation import evaluate_policy, wilson_interval
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.policies import RandomPolicy, SB3Policy, load_guide, load_policy
from robobrain.training.wm_trainer import load_world_model
from robobrain.world_model import WorldModel


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for n in range(1, 300):  # exact at the edges (they were off by rounding: 2.8e-17, 0.9999999999999999)
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def strip_latency(report):
    report = json.loads(json.dumps(report))
    for key in ("latency_ms_p50", "latency_ms_p95"):
        report["summary"].pop(key)
    for ep in report["episodes"]:
        ep.pop("latency_ms")
    return report


def test_eval_cli_is_reproducible_with_per_episode_seeds(tmp_path):
    args = ["eval", "--policy", "random", "--env", "robobrain/Reach-v0", "--episodes", "5", "--num-envs", "2",
            "--seed", "7", "--image-size", "16", "--no-progress"]  # fmt: skip
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    a = json.loads((tmp_path / "a" / "eval_info.json").read_text())
    b = json.loads((tmp_path / "b" / "eval_info.json").read_text())
    assert strip_latency(a) == strip_latency(b)
    assert [ep["seed"] for ep in a["episodes"]] == [7, 8, 9, 10, 11]
    assert all(ep["length"] == 50 for ep in a["episodes"])
    s = a["summary"]
    assert s["episodes"] == 5 and 0 <= s["success_ci95"][0] <= s["success_rate"] <= s["success_ci95"][1]
    assert s["latency_ms_p95"] >= s["latency_ms_p50"] > 0
    assert len(list((tmp_path / "a" / "videos").glob("*.mp4"))) == 2
    main([*args[:5], "--episodes", "1", "--seed", "20", "--image-size", "16", "--no-progress",
          "--out", str(tmp_path / "a")])  # fmt: skip
    assert [p.name for p in (tmp_path / "a" / "videos").glob("*.mp4")] == ["episode_000_seed20.mp4"]


def test_episode_seed_fixes_the_episode():
    """Episode i gets seed + i whatever the number of parallel envs."""

    def run(k, seed=3, episodes=4):
        envs = [gym.make("robobrain/Reach-v0", image_size=8) for _ in range(k)]
        report = evaluate_policy(load_policy("scripted", "robobrain/Reach-v0", envs[0].action_space), envs,
                                 episodes, seed=seed, progress=False)  # fmt: skip
        return [(ep["seed"], round(ep["return"], 5)) for ep in report["episodes"]]

    one = run(1)
    assert one == run(3) == run(6)  # more envs than episodes: the spare ones stay idle
    # The env is reset with the seed the report names (every episode from seed 3 passed too).
    assert len({r for _, r in one}) == 4 and run(1, seed=5, episodes=1) == [one[2]]


def test_eval_on_a_wrapped_gymnasium_env(tmp_path):
    from robobrain.envs import make_env

    envs = [make_env("Reacher-v5", 16, width=32, height=32) for _ in range(2)]
    report = evaluate_policy(RandomPolicy(2, seed=0), envs, 2, out_dir=tmp_path, progress=False)
    s = report["summary"]
    # Reacher has no info["success"]: no success rate (null in the json), not a rate of 0.
    assert s["episodes"] == 2 and s["success_rate"] is None and s["success_ci95"] is None
    assert [ep["success"] for ep in report["episodes"]] == [None, None]


def test_mpc_eval_writes_real_and_imagined_video(tmp_path):
    cfg = get_preset("debug", state_dim=20).world_model  # Push's state: decoded-state drift is reported
    save_checkpoint(tmp_path / "wm", 1, WorldModel(cfg), {"world_model": to_dict(cfg)})
    main(["eval", "--policy", f"mpc:{tmp_path / 'wm'}", "--env", "robobrain/Push-v0", "--episodes", "1",
          "--num-envs", "1", "--samples", "16", "--elites", "4", "--iterations", "1", "--horizon", "3",
          "--out", str(tmp_path / "ev"), "--no-progress"])  # fmt: skip
    import imageio.v2 as imageio

    frames = imageio.mimread(next((tmp_path / "ev" / "videos").glob("*.mp4")))
    assert frames[0].shape[1] == 2 * frames[0].shape[0]  # real | imagined, side by side
    info = json.loads((tmp_path / "ev" / "eval_info.json").read_text())
    assert len(frames) == info["episodes"][0]["length"] + 1  # from the reset frame on
    side = frames[0].shape[0]
    assert frames[0][:, side:].max() < 16 < frames[0][:, :side].max()  # nothing imagined before acting
    drift = info["hallucination"]
    assert (
        drift["checks"] == 5 and len(drift["psnr_per_step"]) == len(drift["reward_abs_error_per_step"]) == 3
    )
    assert len(drift["reward_bias_per_step"]) == 3
    state_error = drift["state_error_per_step"]
    assert {"gripper_pos", "block_pos", "goal"} <= set(state_error)
    assert all(len(v) == 3 and all(np.isfinite(v)) and min(v) >= 0 for v in state_error.values())


def test_eval_runs_an_mpc_checkpoint_on_the_env_its_world_model_was_trained_on(tmp_path, capsys):
    """Without --env: the checkpoint's env (a Reach model was refused on the default Push), Push for
    other policies and for checkpoints that record none."""
    from robobrain.cli import eval_env

    cfg = get_preset("debug", action_dim=3).world_model
    config = {"world_model": to_dict(cfg), "env_id": "robobrain/Reach-v0"}
    save_checkpoint(tmp_path / "reach", 1, WorldModel(cfg), config)
    main(["eval", "--policy", f"mpc:{tmp_path / 'reach'}", "--episodes", "1", "--num-envs", "1", "--samples",
          "16", "--elites", "4", "--iterations", "1", "--horizon", "2", "--video-episodes", "0", "--out",
          str(tmp_path / "ev"), "--no-progress"])  # fmt: skip
    assert json.loads((tmp_path / "ev" / "eval_info.json").read_text())["env_id"] == "robobrain/Reach-v0"
    echoed = json.loads(capsys.readouterr().out.splitlines()[0])  # (the command line as run: it said null)
    assert echoed["Eval"]["env"] == "robobrain/Reach-v0"
    save_checkpoint(tmp_path / "old", 1, WorldModel(cfg), {"world_model": to_dict(cfg)})
    for spec in (f"mpc:{tmp_path / 'old'}", f"mpc:{tmp_path / 'missing'}", "scripted", f"sb3:{tmp_path}"):
        assert eval_env(spec) == "robobrain/Push-v0"
    assert eval_env(f"bc:{tmp_path / 'reach'}") == "robobrain/Reach-v0"


def test_clear_errors_for_bad_specs(tmp_path, caplog):
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    with pytest.raises(ValueError, match="unknown policy spec"):
        load_policy("mpc", "robobrain/Push-v0", space)
    # What a user mistypes says what to pass (these said ".: no checkpoint there", listed torch's
    # twenty device types, or warned of a "math domain error" before the real error).
    for spec in ("mpc:", "bc:"):
        with pytest.raises(ValueError, match=f"^{spec} needs a checkpoint's path"):
            load_policy(spec, "robobrain/Push-v0", space)
        with pytest.raises(ValueError, match=f"^{spec} needs a checkpoint's path"):
            main(["eval", "--policy", spec, "--out", str(tmp_path / "v")])
    with pytest.raises(ValueError, match=r"ships no scripted expert .* --policy random acts on any env"):
        load_policy("scripted", "Pendulum-v1", gym.spaces.Box(-2, 2, (1,), np.float32))
    with pytest.raises(ValueError, match=r"^--device 'cud': expected cpu, cuda, cuda:N or auto"):
        main(["eval", "--policy", "random", "--device", "cud", "--out", str(tmp_path / "v")])
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match=r"image_size must be an int in \[8"):
        main(["collect", "--image-size", "0", "--out", str(tmp_path / "v")])
    assert "math domain error" not in caplog.text and not (tmp_path / "v").exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(f"mpc:{tmp_path / 'nothing'}", "robobrain/Push-v0", space)
    cfg = get_preset("debug", action_dim=4).world_model
    save_checkpoint(tmp_path / "wm4", 1, WorldModel(cfg), {"world_model": to_dict(cfg)})
    weights = next((tmp_path / "wm4").rglob("model.safetensors"))  # (it said "expected model.safetensors")
    with pytest.raises(
        CheckpointError, match=f"a file of a checkpoint; pass its directory, {weights.parent}$"
    ):
        load_policy(f"mpc:{weights}", "robobrain/Push-v0", space)
    with pytest.raises(ValueError, match="4-D actions"):
        load_policy(f"mpc:{tmp_path / 'wm4'}", "robobrain/Push-v0", space)
    for bad in ("scripted", "oracle", f"mpc:{tmp_path / 'wm4'}"):  # (random and sb3: drive it)
        with pytest.raises(ValueError, match=r"drives 1-D Box action spaces, got Discrete\(2\)"):
            load_policy(bad, "CartPole-v1", gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="unknown policy spec 'nope'"):
        load_policy("nope", "CartPole-v1", gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"1-D Box action spaces .* got MultiDiscrete"):
        load_policy("random", "X-v0", gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ValueError, match=r"train plans 1-D Box actions .* got Discrete"):
        main(["train", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "cp"), "--no-progress"])
    with pytest.raises(ValueError, match=">= 1"):
        main(["eval", "--policy", "random", "--episodes", "0", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(ValueError, match="--video-episodes must be >= 0"):
        main(["eval", "--policy", "random", "--video-episodes", "-1", "--out", str(tmp_path / "v")])
    with pytest.raises(ValueError, match=r"--image-size 16: the world model of mpc:\S+ sees 32 px frames"):
        main(["eval", "--policy", f"mpc:{tmp_path / 'wm4'}", "--image-size", "16", "--out",
              str(tmp_path / "v")])  # fmt: skip
    with pytest.raises(ValueError, match="RescaleAction"):  # the planner would use half of [-2, 2]
        load_policy(f"mpc:{tmp_path / 'wm4'}", "Pendulum-v1", gym.spaces.Box(-2, 2, (1,), np.float32))
    with pytest.raises(ValueError, match="robobrain task"):
        load_policy("oracle", "Reacher-v5", gym.spaces.Box(-1, 1, (2,)), envs=[gym.make("Reacher-v5")])
    (tmp_path / "bad.zip").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a stable-baselines3"):
        load_policy(f"sb3:{tmp_path / 'bad.zip'}", "robobrain/Push-v0", space)
    with pytest.raises(ValueError, match="cannot load it as an SB3 SAC"):
        load_policy(f"sb3:SAC:{tmp_path / 'bad.zip'}", "robobrain/Push-v0", space)
    for path in (tmp_path / "none.zip", tmp_path, f"SAC:{tmp_path / 'none.zip'}"):  # (SB3: PATH.zip)
        with pytest.raises(ValueError, match="no such SB3 model zip"):
            load_policy(f"sb3:{path}", "robobrain/Push-v0", space)
    with pytest.raises(ValueError, match="needs the path"):
        load_policy("sb3:", "robobrain/Push-v0", space)
    if not torch.cuda.is_available():  # (a bare AssertionError, after reading the checkpoint)
        with pytest.raises(ValueError, match=r"device cuda: this torch .* sees no CUDA device"):
            load_world_model(tmp_path / "wm4", "cuda")
    with pytest.raises(ValueError, match="unknown guide mode 'vaule'"):
        load_guide(str(tmp_path / "wm4"), "vaule")  # type: ignore[arg-type]
    # The behaviour prior and SB3 guides act in [-1, 1]: other planner bounds are refused.
    cfg1 = get_preset("debug", action_dim=1).world_model
    save_checkpoint(tmp_path / "wm1", 1, WorldModel(cfg1), {"world_model": to_dict(cfg1)})
    wide = MPCConfig(optim=OptimizerConfig(low=-2.0, high=2.0))
    with pytest.raises(ValueError, match=r"the behaviour prior acts in \[-1, 1\].*RescaleAction"):
        load_policy(f"bc:{tmp_path / 'wm1'}", "Pendulum-v1", gym.spaces.Box(-2, 2, (1,)), mpc=wide)


def test_eval_with_fewer_episodes_than_envs_builds_only_what_it_uses(tmp_path):
    """The oracle holds its envs: asking for 2 envs and 1 episode once refused to act for 1."""
    main(["eval", "--policy", "oracle", "--env", "robobrain/Reach-v0", "--episodes", "1", "--num-envs", "2",
          "--samples", "8", "--elites", "2", "--iterations", "1", "--horizon", "2", "--image-size", "32",
          "--video-episodes", "0", "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    report = json.loads((tmp_path / "eval_info.json").read_text())
    assert len(report["episodes"]) == 1


def test_sb3_policy_round_trip(tmp_path):
    from stable_baselines3 import PPO

    env = gym.make("robobrain/Reach-v0", image_size=8)
    state_env = gym.wrappers.TransformObservation(env, lambda o: o["state"], env.observation_space["state"])
    model = PPO("MlpPolicy", state_env, n_steps=16, batch_size=16, seed=0, device="cpu")
    model.save(tmp_path / "ppo.zip")
    policy = load_policy(f"sb3:{tmp_path / 'ppo.zip'}", "robobrain/Reach-v0", env.action_space)
    assert isinstance(policy, SB3Policy)
    for spec in (tmp_path / "ppo", f"PPO:{tmp_path / 'ppo'}"):  # SB3 itself appends .zip
        assert isinstance(load_policy(f"sb3:{spec}", "robobrain/Reach-v0", env.action_space), SB3Policy)
    obs = {"pixels": np.zeros((3, 8, 8, 3), np.uint8), "state": np.zeros((3, 10), np.float32)}
    actions = policy.act(obs)
    assert actions.shape == (3, 3)
    expected, _ = model.predict(obs["state"], deterministic=True)
    np.testing.assert_allclose(actions, expected, atol=1e-6)
    obs["state"][1, 2] = np.nan
    with pytest.raises(ValueError, match="SB3Policy: its observation holds NaN"):
        policy.act(obs)
    with pytest.raises(ValueError, match=r"acts in \[-1.0, 1.0\], the env's actions are in \[-2.0, 2.0\]"):
        load_policy(f"sb3:{tmp_path / 'ppo.zip'}", "robobrain/Reach-v0", gym.spaces.Box(-2, 2, (3,)))


def test_random_and_sb3_policies_drive_a_discrete_env(tmp_path):
    """CartPole: ``random`` and an SB3 model trained on it drive Discrete actions (they were refused
    with every other policy); an SB3 model of another Discrete space is refused."""
    from stable_baselines3 import PPO

    from robobrain.envs import make_env

    PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=16, batch_size=16, seed=0, device="cpu").save(
        tmp_path / "ppo.zip"
    )
    for spec in ("random", f"sb3:{tmp_path / 'ppo.zip'}"):
        envs = [make_env("CartPole-v1", 8, max_episode_steps=10) for _ in range(2)]
        policy = load_policy(spec, "CartPole-v1", envs[0].action_space, seed=0)
        report = evaluate_policy(policy, envs, 3, progress=False)
        assert len(report["episodes"]) == 3 and all(1 <= ep["length"] <= 10 for ep in report["episodes"])
        assert all(ep["return"] == ep["length"] for ep in report["episodes"])  # (CartPole: 1 per step)
        actions = policy.act(
            {"pixels": np.zeros((5, 8, 8, 3), np.uint8), "state": np.zeros((5, 4), np.float32)}
        )
        assert actions.shape == (5,) and actions.dtype == np.int64 and set(actions.tolist()) <= {0, 1}
    envs = [make_env("CartPole-v1", 8) for _ in range(2)]
    for wrong, said in (
        (np.array([0.5, 1.0]), r"float64\[2\], expected int\[2\]"),
        (np.array([0, 2]), "outside"),
    ):
        policy.act = lambda obs, wrong=wrong: (
            wrong
        )  # (a float or out-of-range index reached CartPole's assert)
        with pytest.raises(ValueError, match=said):
            evaluate_policy(policy, envs, 2, progress=False)
    assert isinstance(
        load_policy(f"sb3:{tmp_path / 'ppo.zip'}", "X-v0", gym.spaces.Discrete(2, dtype=np.int32)), SB3Policy
    )
    with pytest.raises(ValueError, match=r"acts in Discrete\(2\), the env in Discrete\(3\)"):
        load_policy(f"sb3:{tmp_path / 'ppo.zip'}", "X-v0", gym.spaces.Discrete(3))


def test_sb3_dqn_and_vecnormalize_models_load_and_frame_stacks_are_refused_clearly(tmp_path):
    """DQN (the usual SB3 algorithm for Discrete actions) was refused, and sb3:DQN:PATH then read
    "DQN:PATH" as the path; a model trained under VecNormalize was fed raw observations silently; a
    frame-stacked one was told to pass the --image-size it had (or its channel count as the size)."""
    from stable_baselines3 import DQN, PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecNormalize

    from robobrain.policies.sb3 import frame_size

    DQN("MlpPolicy", gym.make("CartPole-v1"), buffer_size=10, seed=0, device="cpu").save(tmp_path / "dqn.zip")
    obs = {"pixels": np.zeros((2, 8, 8, 3), np.uint8), "state": np.zeros((2, 4), np.float32)}
    for spec in (f"sb3:{tmp_path / 'dqn.zip'}", f"sb3:DQN:{tmp_path / 'dqn'}"):
        policy = load_policy(spec, "CartPole-v1", gym.spaces.Discrete(2))
        assert policy.act(obs).dtype == np.int64
    with pytest.raises(ValueError, match=r"unknown SB3 algorithm 'FOO'; expected one of SAC, .*, DQN"):
        load_policy(f"sb3:FOO:{tmp_path / 'dqn.zip'}", "CartPole-v1", gym.spaces.Discrete(2))

    def state_env():
        env = gym.make("robobrain/Reach-v0", image_size=8)
        return gym.wrappers.TransformObservation(env, lambda o: o["state"], env.observation_space["state"])

    normalized = VecNormalize(DummyVecEnv([state_env]))
    model = PPO("MlpPolicy", normalized, n_steps=16, batch_size=16, seed=0, device="cpu").learn(32)
    model.save(tmp_path / "norm.zip")
    spec, space = f"sb3:{tmp_path / 'norm.zip'}", gym.spaces.Box(-1, 1, (3,))
    with pytest.raises(ValueError, match=r"trained under VecNormalize, whose .*rewards only: save VecNorm"):
        load_policy(spec, "robobrain/Reach-v0", space)
    state = np.random.default_rng(0).uniform(-0.3, 0.3, (3, 10)).astype(np.float32)
    obs = {"pixels": np.zeros((3, 8, 8, 3), np.uint8), "state": state}
    # (rl-zoo's folder named as the zip, or beside it; SB3's docs' name too)
    for where in (tmp_path / "norm" / "vecnormalize.pkl", tmp_path / "vec_normalize.pkl"):
        where.parent.mkdir(exist_ok=True)
        normalized.save(where)
        normalized.training = False
        expected, _ = model.predict(normalized.normalize_obs(state), deterministic=True)
        np.testing.assert_allclose(
            load_policy(spec, "robobrain/Reach-v0", space).act(obs), expected, atol=1e-6
        )
        where.unlink()
    (tmp_path / "vecnormalize.pkl").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot load it as SB3 VecNormalize statistics"):
        load_policy(spec, "robobrain/Reach-v0", space)
    # Another model's statistics (3-D observations): refused at load, not a broadcasting error later.
    VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")])).save(tmp_path / "vecnormalize.pkl")
    with pytest.raises(ValueError, match=r"statistics of other observations than .*norm.zip's Box"):
        load_policy(spec, "robobrain/Reach-v0", space)
    # Rewards alone normalised: statistics that leave observations as they are make it loadable.
    VecNormalize(DummyVecEnv([state_env]), norm_obs=False).save(tmp_path / "vecnormalize.pkl")
    expected, _ = model.predict(state, deterministic=True)
    np.testing.assert_allclose(load_policy(spec, "robobrain/Reach-v0", space).act(obs), expected, atol=1e-6)
    (tmp_path / "vecnormalize.pkl").unlink()
    # An off-policy zip records the raw observation with or without VecNormalize: loaded as it is.
    (tmp_path / "sac").mkdir()
    SAC("MlpPolicy", state_env(), buffer_size=64, learning_starts=4, seed=0, device="cpu").learn(8).save(
        tmp_path / "sac" / "sac.zip"
    )
    assert isinstance(
        load_policy(f"sb3:{tmp_path / 'sac' / 'sac.zip'}", "robobrain/Reach-v0", space), SB3Policy
    )

    def pixel_env():
        env = gym.make("robobrain/Reach-v0", image_size=36)  # (NatureCNN needs >= 36 px)
        return gym.wrappers.TransformObservation(env, lambda o: o["pixels"], env.observation_space["pixels"])

    stacked = VecFrameStack(DummyVecEnv([pixel_env]), 2)
    PPO("CnnPolicy", stacked, n_steps=16, batch_size=16, device="cpu").save(tmp_path / "stack.zip")
    assert frame_size(str(tmp_path / "stack.zip")) == 36
    with pytest.raises(ValueError, match=r"trained on 2 stacked frames \(\(6, 36, 36\): VecFrameStack\)"):
        load_policy(f"sb3:{tmp_path / 'stack.zip'}", "robobrain/Reach-v0", space)


def test_sb3_zips_name_their_algorithm_without_unpickling(tmp_path):
    from stable_baselines3 import DDPG, TD3

    from robobrain.policies.sb3 import _algorithm_of

    env = gym.make("Pendulum-v1")
    for cls in (TD3, DDPG):
        cls("MlpPolicy", env, buffer_size=10, device="cpu").save(tmp_path / f"{cls.__name__}.zip")
        assert _algorithm_of(tmp_path / f"{cls.__name__}.zip") == cls.__name__


def test_sb3_pixel_policy_takes_channel_last_frames(tmp_path):
    """SB3 trains CnnPolicy channel-first (VecTransposeImage); the env gives [N, H, W, 3] frames."""
    from stable_baselines3 import PPO, SAC

    from robobrain.policies.sb3 import frame_size

    env = gym.make("robobrain/Reach-v0", image_size=36)  # NatureCNN needs >= 36 px
    pixel_env = gym.wrappers.TransformObservation(env, lambda o: o["pixels"], env.observation_space["pixels"])
    model = SAC("CnnPolicy", pixel_env, buffer_size=10, seed=0, device="cpu")
    assert model.observation_space.shape == (3, 36, 36)
    model.save(tmp_path / "sac.zip")
    policy = load_policy(f"sb3:{tmp_path / 'sac.zip'}", "robobrain/Reach-v0", env.action_space)
    frames = np.random.default_rng(0).integers(0, 256, (2, 36, 36, 3), dtype=np.uint8)
    actions = policy.act({"pixels": frames, "state": np.zeros((2, 10), np.float32)})
    expected, _ = model.predict(frames.transpose(0, 3, 1, 2), deterministic=True)
    np.testing.assert_allclose(actions, expected, atol=1e-6)
    # Frames of another size: which size the model sees (SB3 named a channel-first shape).
    with pytest.raises(
        ValueError, match="the SB3 model sees 36 px frames, the env gives 32 px: pass --image-size 36"
    ):
        policy.act({"pixels": frames[:, :32, :32], "state": np.zeros((2, 10), np.float32)})
    with pytest.raises(ValueError, match="observes"):  # (no pixels to give it at all)
        policy.act({"state": np.zeros((2, 10), np.float32)})
    SAC("MultiInputPolicy", env, buffer_size=10, seed=0, device="cpu").save(tmp_path / "dict.zip")
    on_dict = load_policy(f"sb3:{tmp_path / 'dict.zip'}", "robobrain/Reach-v0", env.action_space)
    with pytest.raises(ValueError, match="sees 36 px frames, the env gives 32 px"):
        on_dict.act({"pixels": frames[:, :32, :32], "state": np.zeros((2, 10), np.float32)})
    with pytest.raises(ValueError, match=r"observes obs\['state'\] of shape \(10,\), the env gives \(20,\)"):
        on_dict.act({"pixels": frames, "state": np.zeros((2, 20), np.float32)})  # (Push: a reshape error)
    # `robobrain eval` renders the frames the model was trained on unless --image-size says otherwise.
    state_only = gym.wrappers.TransformObservation(env, lambda o: o["state"], env.observation_space["state"])
    PPO("MlpPolicy", state_only, n_steps=16, batch_size=16, device="cpu").save(tmp_path / "ppo.zip")
    assert [frame_size(str(tmp_path / z)) for z in ("sac.zip", "dict", "ppo.zip")] == [36, 36, None]
    main(
        [
            "eval",
            "--policy",
            f"sb3:{tmp_path / 'sac'}",
            "--env",
            "robobrain/Reach-v0",
            "--episodes",
            "1",
            "--video-episodes",
            "0",
            "--out",
            str(tmp_path / "e"),
            "--no-progress",
        ]
    )
    assert json.loads((tmp_path / "e" / "eval_info.json").read_text())["summary"]["episodes"] == 1
    (tmp_path / "bad.zip").write_bytes(b"nope")
    with pytest.raises(ValueError, match="cannot read the SB3 model's observation space"):
        frame_size(str(tmp_path / "bad.zip"))


def test_eval_planner_defaults_fill_only_the_unset_flags():
    from robobrain.cli import Eval, planner_settings

    search = planner_settings(Eval(policy="mpc:runs/wm"))
    keys = ("optimizer", "samples", "elites", "iterations", "horizon")
    assert tuple(search[k] for k in keys) == ("cem", 128, 32, 3, 12)
    guided = planner_settings(Eval(policy="mpc:runs/wm", guide="bc"))
    assert tuple(guided[k] for k in keys) == ("mppi", 64, 32, 1, 14)
    bc = planner_settings(Eval(policy="mpc:runs/wm", guide="bc", samples=256, horizon=10))
    assert tuple(bc[k] for k in keys) == ("mppi", 256, 128, 1, 10)
    few = planner_settings(Eval(policy="mpc:runs/wm", samples=16))  # 32 elites of 16 were refused
    assert (few["samples"], few["elites"]) == (16, 4)
    assert planner_settings(Eval(policy="mpc:runs/wm", samples=16, elites=8))["elites"] == 8


def test_eval_plans_with_the_discount_its_run_planned_and_its_critic_learned_with(monkeypatch):
    """The SB3 critic of a `robobrain train` run is trained with the run's discount and success bonus;
    `eval` of that run weighs it (and the imagined rewards) the same way, not with MPCConfig's defaults
    (the bonus stayed 1 whatever the run's)."""
    import robobrain.checkpoint
    from robobrain.cli import Eval, run_planner_setting, train_run_config

    def setting(args, name, default):  # (as run_eval reads it: the run's config once)
        return run_planner_setting(args, train_run_config(args.policy), name, default)

    run = {"discount": 0.97, "success_bonus": 5.0, "disagreement_penalty": 0.5}
    configs = {"runs/push": {"online": {"mpc": run}}, "runs/wm": {"world_model": {}}}
    monkeypatch.setattr(robobrain.checkpoint, "read_config", lambda path: configs[str(path)])
    for name, default in (("discount", 1.0), ("success_bonus", 1.0), ("disagreement_penalty", 0.0)):
        assert setting(Eval(policy="mpc:runs/push"), name, default) == run[name]
        flag = Eval(policy="mpc:runs/push", **{name: 0.25})
        assert setting(flag, name, default) == 0.25
        assert setting(Eval(policy="mpc:runs/wm"), name, default) == default  # (train-wm)
    assert setting(Eval(policy="oracle"), "discount", 1.0) == 1.0


def test_eval_on_a_classic_control_env_plans_in_its_action_bounds(tmp_path):
    """Pendulum-v1 renders through pygame and acts in [-2, 2]: `eval` plans in the env's bounds (a
    run `train --mpc.optim.low -2 --mpc.optim.high 2` made could not be evaluated)."""
    pytest.importorskip("pygame", reason="the classic-control extra renders Pendulum-v1")
    base = ["eval", "--env", "Pendulum-v1", "--episodes", "1", "--video-episodes", "0", "--no-progress"]
    main([*base, "--policy", "random", "--image-size", "16", "--out", str(tmp_path / "random")])
    cfg = get_preset("debug", action_dim=1).world_model
    save_checkpoint(tmp_path / "wm1", 1, WorldModel(cfg), {"world_model": to_dict(cfg)})
    main([*base, "--policy", f"mpc:{tmp_path / 'wm1'}", "--samples", "8", "--iterations", "1",
          "--horizon", "2", "--out", str(tmp_path / "mpc")])  # fmt: skip
    report = json.loads((tmp_path / "mpc" / "eval_info.json").read_text())
    assert (report["planner"]["low"], report["planner"]["high"]) == (-2.0, 2.0)
    # The search's noise widens with the range (the defaults', set for [-1, 1], were half as wide here).
    assert (report["planner"]["init_std"], report["planner"]["min_std"]) == (1.0, 0.1)
    assert report["summary"]["episodes"] == 1 and report["episodes"][0]["length"] == 200


class CountingPolicy(RandomPolicy):
    """A random policy that says it imagines frames, and counts how often they are asked for."""

    decoded = 0

    def imagined_frames(self, steps: int | None = None) -> np.ndarray:
        self.decoded += 1
        assert steps == 1  # (the video shows the first: decoding all H cost ~4x as much)
        return np.zeros((1, 1, 8, 8, 3), np.uint8)


def test_evaluate_policy_checks_its_arguments_before_any_episode(tmp_path):
    envs = [gym.make("robobrain/Reach-v0", image_size=8)]
    policy = CountingPolicy(3, seed=0)
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate_policy(policy, envs, 0, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write the evaluation"):  # not after the episodes ran
        evaluate_policy(policy, envs, 1, out_dir=tmp_path / "file" / "sub", progress=False)
    assert policy.decoded == 0
    # The imagined frames are decoded for the recorded episode only (it was every step of every one).
    report = evaluate_policy(policy, envs, 3, out_dir=tmp_path / "ev", video_episodes=1, progress=False)
    assert policy.decoded == report["episodes"][0]["length"]
    for seed in (-1, 2**64 - 1):  # (the oracle's planner seeded torch with seed + 1: an OverflowError)
        with pytest.raises(ValueError, match=r"--seed must be in \[0, 2\*\*32\)"):
            main(["eval", "--policy", "oracle", "--seed", str(seed), "--out", str(tmp_path / "neg")])
    # A vector env, or an env observing no pixel dict: what to pass instead (a TypeError, an IndexError).
    from robobrain.envs import make_vector_env

    vec = make_vector_env("robobrain/Reach-v0", 2, image_size=8)
    with pytest.raises(ValueError, match=r"a list of single envs .* not a vector env"):
        evaluate_policy(policy, vec, 1, progress=False)
    vec.close()
    with pytest.raises(ValueError, match=r"observes a ndarray, not robobrain.s dict .*make_env"):
        evaluate_policy(RandomPolicy(1, seed=0), [gym.make("Pendulum-v1")], 1, progress=False)


def test_eval_refuses_planner_flags_a_policy_would_ignore(tmp_path):
    """--guide bc with the oracle once switched its planner to MPPI 64 x 1 without any prior; with
    scripted, the unused guide was recorded in eval_info.json."""
    base = ["eval", "--env", "robobrain/Reach-v0", "--episodes", "1", "--image-size", "16", "--no-progress"]
    for policy, flags, named in [
        ("oracle", ["--guide", "bc"], "--guide"),
        ("oracle", ["--prior-samples", "4", "--fused"], "--prior-samples, --fused"),
        ("scripted", ["--samples", "64", "--success-bonus", "2"], "--samples, --success-bonus"),
        ("random", ["--guide", "none"], "--guide"),
    ]:
        with pytest.raises(ValueError, match=f"^{named}: only a .*planner.* not --policy {policy}$"):
            main([*base, "--policy", policy, *flags, "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match=r"^--prior-std: only a world-model planner \(mpc:\) reads it"):
        main([*base, "--policy", "scripted", "--prior-std", "0.2", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match=r"--compile-mode max-autotune-no-cudagraphs: only with --compile"):
        main(
            [
                *base,
                "--policy",
                "random",
                "--compile-mode",
                "max-autotune-no-cudagraphs",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    # What a planner reads is accepted; the oracle's unguided planning may be asked for by name.
    main([*base, "--policy", "oracle", "--guide", "none", "--samples", "16", "--iterations", "1",
          "--horizon", "3", "--out", str(tmp_path / "oracle")])  # fmt: skip
    info = json.loads((tmp_path / "oracle" / "eval_info.json").read_text())
    assert (info["guide"], info["planner"]["samples"]) == ("none", 16)
    assert (info["planner"]["discount"], info["planner"]["success_bonus"]) == (1.0, 1.0)  # (as resolved)
    main([*base, "--policy", "scripted", "--out", str(tmp_path / "scripted")])
    assert "guide" not in json.loads((tmp_path / "scripted" / "eval_info.json").read_text())


def test_the_oracle_acts_for_the_envs_an_evaluation_runs():
    """evaluate_policy leaves envs beyond its episodes idle; the oracle holding them refused to act."""
    envs = [gym.make("robobrain/Reach-v0", image_size=8) for _ in range(3)]
    mpc = MPCConfig(horizon=2, optim=OptimizerConfig(num_samples=8, num_elites=2, iterations=1))
    policy = load_policy("oracle", "robobrain/Reach-v0", envs[0].action_space, envs=envs, mpc=mpc)
    report = evaluate_policy(policy, envs, 2, progress=False)
    assert report["num_envs"] == 2 and report["summary"]["episodes"] == 2


def test_videos_of_odd_sized_frames_are_written_and_empty_ones_refused(tmp_path):
    """ffmpeg refuses odd sides for H.264 and once left a 0-byte mp4 that no error reported."""
    import imageio.v2 as imageio

    from robobrain.video import write_video

    frames = np.random.default_rng(0).integers(0, 255, (5, 9, 9, 3), dtype=np.uint8)
    for scale in (1, 3):
        path = write_video(tmp_path / f"odd{scale}.mp4", frames, scale=scale)
        with imageio.get_reader(path) as reader:
            read = [f for f in reader]
        side = 9 * scale + 1  # one more row and column, repeated from the edge
        assert len(read) == 5 and read[0].shape == (side, side, 3)
    with pytest.raises(ValueError, match="T >= 1"):
        write_video(tmp_path / "empty.mp4", np.zeros((0, 16, 16, 3), np.uint8))
    assert not (tmp_path / "empty.mp4").exists()


class BlowUpPolicy(RandomPolicy):
    """Random actions; before its third action the physics of its env blows up."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(3, seed=0)
        self.env, self.calls = env, 0

    def act(self, obs):
        self.calls += 1
        if self.calls == 3:
            self.env.unwrapped.data.qvel[:] = 1e30
        return super().act(obs)


def test_an_episode_whose_physics_blew_up_is_marked_in_the_report():
    """It was scored as an ordinary short failure, skewing mean return and length unseen."""
    env = gym.make("robobrain/Reach-v0", image_size=8)
    report = evaluate_policy(BlowUpPolicy(env), [env], 2, progress=False)
    first, second = report["episodes"]
    assert (first["sim_unstable"], first["length"]) == (True, 3) and second["sim_unstable"] is False
    assert report["summary"]["sim_unstable_episodes"] == 1


class ReportsIsSuccess(gym.Wrapper):
    """Pendulum reporting success as Gymnasium-Robotics does: ``info["is_success"]``, a float (here
    1.0 from the episode's third step on)."""

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        return obs, reward, terminated, truncated, {**info, "is_success": float(self.t >= 3)}


def test_an_env_reporting_is_success_gets_a_success_rate():
    """Gymnasium-Robotics' envs (and SB3) say ``info["is_success"]``: their evaluations had no
    success rate (null) and their collected episodes no success flags."""
    from robobrain.envs import make_env

    gym.register("IsSuccessPendulum-v0", entry_point=lambda render_mode=None: ReportsIsSuccess(
        gym.make("Pendulum-v1", render_mode=render_mode)), max_episode_steps=4)  # fmt: skip
    try:
        envs = [make_env("IsSuccessPendulum-v0", 8) for _ in range(2)]
        _, info = envs[0].reset(seed=0)
        assert "success" not in info  # (nothing reported: nothing made up)
        steps = [envs[0].step(np.zeros(1, np.float32))[-1] for _ in range(3)]
        assert [info["success"] for info in steps] == [False, False, True]
        report = evaluate_policy(RandomPolicy(1, seed=0), envs, 3, progress=False)
        assert [ep["success"] for ep in report["episodes"]] == [True] * 3
        assert report["summary"]["success_rate"] == 1.0
    finally:
        del gym.registry["IsSuccessPendulum-v0"]


def test_success_rate_counts_the_successful_episodes():
    """The expert's episodes all succeed, a motionless policy's none, and the interval is Wilson's of
    those counts (a report that always said 0 % passed: random policies succeed 0 % on Reach too)."""

    class Still(RandomPolicy):
        def act(self, obs):
            return np.zeros((len(obs["state"]), self.action_dim), np.float32)

    envs = [gym.make("robobrain/Reach-v0", image_size=8) for _ in range(2)]
    expert = load_policy("scripted", "robobrain/Reach-v0", envs[0].action_space, seed=0)
    for policy, succeeded in ((expert, True), (Still(3, seed=0), False)):
        report = evaluate_policy(policy, envs, 4, seed=0, progress=False)
        assert [ep["success"] for ep in report["episodes"]] == [succeeded] * 4
        summary = report["summary"]
        assert summary["success_rate"] == float(succeeded)
        assert summary["success_ci95"] == pytest.approx(list(wilson_interval(4 * succeeded, 4)))


def test_hallucination_figures_have_known_values_and_signs():
    """Against a fake planner whose imagination is the real replay with known errors: PSNR per step,
    reward bias (imagined minus real: a flipped sign hid an optimistic model), decoded-state error."""
    from types import SimpleNamespace

    from robobrain.hallucination import hallucination_check, replay_in_simulator

    env = gym.make("robobrain/Push-v0", image_size=16)
    env.reset(seed=2)
    plan = np.random.default_rng(0).uniform(-1, 1, (3, 3)).astype(np.float32)
    real = replay_in_simulator(env, plan)  # (leaves the env as it was)
    frames = real.frames.copy()
    frames[1] = 255 - frames[1]  # step 1 imagined badly, steps 0 and 2 exactly
    offset = np.array([0.5, -0.25, 1.0], np.float32)  # optimistic, pessimistic, optimistic
    decoded = real.state.copy()
    block = env.unwrapped.state_layout["block_pos"]
    decoded[:, block.start : block.start + 2] += [0.03, 0.04]  # 5 cm off
    rollout = SimpleNamespace(pixels=torch.from_numpy(frames)[None],
                              reward=torch.from_numpy(real.reward + offset)[None],
                              feat=torch.from_numpy(decoded)[None])  # fmt: skip
    model = SimpleNamespace(state_head=object(), decode_state=lambda feat: feat)
    policy = SimpleNamespace(imagine_plan=lambda: rollout, planned_actions=lambda: plan[None], model=model)
    out = hallucination_check(policy, [env], 0)
    mse = np.mean((real.frames[1] / 255 - frames[1] / 255) ** 2)
    assert out["psnr"] == pytest.approx([100.0, 10 * np.log10(1 / mse), 100.0], abs=1e-3)
    assert out["reward_bias"] == pytest.approx(offset.tolist(), abs=1e-5)
    assert out["reward_abs_error"] == pytest.approx(np.abs(offset).tolist(), abs=1e-5)
    assert out["state_error"]["block_pos"] == pytest.approx([0.05] * 3, abs=1e-6)
    assert out["state_error"]["gripper_pos"] == pytest.approx([0.0] * 3, abs=1e-6)
    env.close()


def test_videos_pair_each_episode_with_its_own_imagination(tmp_path):
    """Real frames of the seed the file names, beside that env's imagined frames (every episode was
    shown env 0's, which a one-env test cannot tell)."""
    import imageio.v2 as imageio

    shades = (60, 180)  # what env 0 and env 1 "imagine"

    class Imagining(RandomPolicy):
        def imagined_frames(self, steps=None):
            return np.stack([np.full((1, 8, 8, 3), s, np.uint8) for s in shades])

    envs = [gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=5) for _ in range(2)]
    evaluate_policy(Imagining(3, seed=0), envs, 2, seed=4, out_dir=tmp_path, video_episodes=2, progress=False)
    for ep in (0, 1):
        frames = np.stack(imageio.mimread(tmp_path / "videos" / f"episode_{ep:03d}_seed{4 + ep}.mp4"))
        assert frames.shape == (6, 32, 64, 3)  # reset frame + 5 steps, x4, real | imagined
        first, _ = gym.make("robobrain/Reach-v0", image_size=8).reset(seed=4 + ep)
        real = first["pixels"].repeat(4, 0).repeat(4, 1).astype(int)
        assert np.abs(frames[0, :, :32].astype(int) - real).mean() < 8
        assert frames[0, :, 32:].max() < 16  # nothing imagined before the first action
        assert np.abs(frames[1:, :, 32:].astype(int) - shades[ep]).mean() < 8, ep  # (H.264 bleeds a little)


def test_latency_times_the_policy_alone_and_its_percentiles_are_those():
    """p95 is a 95th percentile (p50 in its place passed) and the env's step time is not counted.
    Sleeps only lengthen calls: the bounds hold on a loaded machine."""
    import time

    class SometimesSlow(RandomPolicy):  # every 4th decision takes 60 ms, the others next to nothing
        calls = 0

        def act(self, obs):
            self.calls += 1
            if self.calls % 4 == 0:
                time.sleep(0.06)
            return super().act(obs)

    class SlowStep(gym.Wrapper):
        def step(self, action):
            time.sleep(0.1)  # the simulator's time, not the policy's
            return super().step(action)

    env = SlowStep(gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=40))
    report = evaluate_policy(SometimesSlow(3, seed=0), [env], 1, progress=False)
    summary, mean = report["summary"], report["episodes"][0]["latency_ms"]
    assert summary["latency_ms_p95"] >= 60 and summary["latency_ms_p50"] < 50, summary
    assert 15 <= mean < 60, mean  # 10 of 40 decisions at 60 ms; with the env's 100 ms it was > 100
    assert summary["latency_ms_p50"] < 0.5 * mean, summary  # the median, not the mean


# --- from a second mutation audit (session 30) ------------------------------------------------------
def test_on_policy_zips_name_ppo_and_a2c(tmp_path):
    from stable_baselines3 import A2C, PPO

    from robobrain.policies.sb3 import _algorithm_of

    env = gym.make("Pendulum-v1")
    PPO("MlpPolicy", env, n_steps=16, batch_size=16, device="cpu").save(tmp_path / "ppo.zip")
    A2C("MlpPolicy", env, n_steps=4, device="cpu").save(tmp_path / "a2c.zip")
    assert _algorithm_of(tmp_path / "ppo.zip") == "PPO"
    assert _algorithm_of(tmp_path / "a2c.zip") == "A2C"


def test_a_td3_without_policy_delay_is_still_td3(tmp_path):
    """DDPG is TD3 with policy_delay 1 *and* no target noise: one of them alone is a TD3."""
    from stable_baselines3 import TD3

    from robobrain.policies.sb3 import _algorithm_of

    env = gym.make("Pendulum-v1")
    TD3("MlpPolicy", env, buffer_size=10, policy_delay=1, device="cpu").save(tmp_path / "td3.zip")
    assert _algorithm_of(tmp_path / "td3.zip") == "TD3"


class _WideFrames(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (36, 48, 3), np.uint8)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_frame_size_of_non_square_frames_is_none(tmp_path):
    """A model trained on 36x48 frames has no single side to render at."""
    from stable_baselines3 import PPO

    from robobrain.policies.sb3 import frame_size

    model = PPO("MlpPolicy", _WideFrames(), n_steps=16, batch_size=16, device="cpu")
    assert tuple(model.observation_space.shape) == (3, 36, 48)  # (SB3 stores it channel-first)
    model.save(tmp_path / "wide.zip")
    assert frame_size(str(tmp_path / "wide.zip")) is None


# --- from a second mutation audit (session 30) ------------------------------------------------------
def test_each_episodes_latency_is_its_own_decisions():
    """Episode records time their own decisions, not the evaluation's mean over all of them."""

    class SlowLater(RandomPolicy):
        calls = 0

        def act(self, obs):
            self.calls += 1
            if self.calls > 3:  # the second episode's decisions
                time.sleep(0.05)
            return super().act(obs)

    env = gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=3)
    report = evaluate_policy(SlowLater(3, seed=0), [env], 2, progress=False)
    first, second = (ep["latency_ms"] for ep in report["episodes"])
    assert first < 20 and second >= 50, (first, second)


class EndsBySeed(gym.Wrapper):
    """Episode of ``lengths[seed]`` steps (truncated), so episodes run side by side end out of order."""

    def __init__(self, env, lengths):
        super().__init__(env)
        self.lengths, self.left = lengths, 0

    def reset(self, *, seed=None, options=None):
        self.left = self.lengths[seed]
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, _, info = self.env.step(action)
        self.left -= 1
        return obs, reward, terminated, self.left <= 0, info


def test_episodes_are_reported_in_episode_order_however_they_finish():
    envs = [EndsBySeed(gym.make("robobrain/Reach-v0", image_size=8), {0: 4, 1: 1, 2: 1}) for _ in range(2)]
    report = evaluate_policy(RandomPolicy(3, seed=0), envs, 3, progress=False)
    assert [ep["episode"] for ep in report["episodes"]] == [0, 1, 2]
    assert [ep["length"] for ep in report["episodes"]] == [4, 1, 1]
    assert [ep["seed"] for ep in report["episodes"]] == [0, 1, 2]


def test_a_restarted_env_resets_only_its_own_slot_of_the_policy():
    """When env 1 starts its next episode, env 0 is mid-episode: its plan/latent must be kept."""

    class Recording(RandomPolicy):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.resets = []

        def reset(self, num_envs, mask=None):
            self.resets.append(None if mask is None else [bool(m) for m in mask])
            return super().reset(num_envs, mask)

    envs = [EndsBySeed(gym.make("robobrain/Reach-v0", image_size=8), {0: 3, 1: 1, 2: 1}) for _ in range(2)]
    policy = Recording(3, seed=0)
    evaluate_policy(policy, envs, 3, progress=False)
    assert policy.resets == [None, [False, True]]


def test_hallucination_checks_start_at_the_first_decision():
    """Every ``hallucination_every`` decisions, from the first one (an episode shorter than the
    period is still checked once)."""
    from types import SimpleNamespace

    class Planner(RandomPolicy):
        calls = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.checked: list[int] = []

        def act(self, obs):
            self.calls += 1
            return super().act(obs)

        def imagine_plan(self):
            self.checked.append(self.calls)
            return SimpleNamespace(
                pixels=torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8), reward=torch.zeros(1, 2)
            )

        def planned_actions(self):
            return np.zeros((1, 2, 3), np.float32)

    env = gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=7)
    policy = Planner(3, seed=0)
    report = evaluate_policy(policy, [env], 1, progress=False, hallucination_every=3)
    assert policy.checked == [1, 4, 7]
    assert report["hallucination"]["checks"] == 3


def test_an_evaluation_removes_what_a_killed_one_left_half_written(tmp_path):
    """A killed write_video left its .tmp-PID-*.mp4 in videos/ for good. Those of a dead writer that
    nothing touched for ten minutes go; a fresh one, or a live process's, stays."""
    import os

    videos = tmp_path / "videos"
    videos.mkdir()
    dead = 2**22 + 12345  # (above Linux's pid_max default: no process has it)
    old = videos / f".tmp-{dead}-episode_000_seed0.mp4"
    fresh = tmp_path / f".tmp-{dead}-x-eval_info.json"
    alive = videos / ".tmp-1-episode_001_seed1.mp4"  # (pid 1: init)
    for path in (old, fresh, alive):
        path.write_bytes(b"half")
    hour_ago = time.time() - 3600
    for path in (old, alive):
        os.utime(path, (hour_ago, hour_ago))
    envs = [gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=3)]
    evaluate_policy(RandomPolicy(3, seed=0), envs, 1, out_dir=tmp_path, video_episodes=1, progress=False)
    assert not old.exists() and fresh.exists() and alive.exists()
    assert [p.name for p in videos.iterdir() if not p.name.startswith(".")] == ["episode_000_seed0.mp4"]
