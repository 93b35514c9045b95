"""From a hand mutation audit of evaluation, hallucination, video, the online factories, the learning
curve and the eval / collect commands: each test here failed on a mutant the suite let through."""

import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from robobrain.cli import main
from robobrain.data import EpisodeStore
from robobrain.evaluation import evaluate_policy
from robobrain.policies import RandomPolicy
from tests.test_evaluation import EndsBySeed


# --- evaluation --------------------------------------------------------------------------------------
def test_an_episode_the_env_terminates_ends_there():
    """terminated (not only truncated) ends an episode: InvertedPendulum-like envs end on failure."""

    class TerminatesAfterTwo(gym.Wrapper):
        def reset(self, **kw):
            self.t = 0
            return self.env.reset(**kw)

        def step(self, action):
            obs, reward, _, truncated, info = self.env.step(action)
            self.t += 1
            return obs, reward, self.t >= 2, truncated, info

    env = TerminatesAfterTwo(gym.make("robobrain/Reach-v0", image_size=8))
    report = evaluate_policy(RandomPolicy(3, seed=0), [env], 2, progress=False)
    assert [ep["length"] for ep in report["episodes"]] == [2, 2]


def test_mean_length_is_the_mean_of_the_episode_lengths():
    envs = [EndsBySeed(gym.make("robobrain/Reach-v0", image_size=8), {0: 4, 1: 1, 2: 1}) for _ in range(2)]
    report = evaluate_policy(RandomPolicy(3, seed=0), envs, 3, progress=False)
    assert report["summary"]["mean_length"] == pytest.approx(2.0)


def test_p95_latency_is_not_a_lower_percentile():
    """4 slow decisions of 40 (10 %): the 95th percentile is a slow one, the 90th a fast one (the
    existing test's 25 % slow decisions made p90 pass for p95). Sleeps only lengthen calls."""

    class RarelySlow(RandomPolicy):
        calls = 0

        def act(self, obs):
            self.calls += 1
            if self.calls % 10 == 0:
                time.sleep(0.06)
            return super().act(obs)

    env = gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=40)
    report = evaluate_policy(RarelySlow(3, seed=0), [env], 1, progress=False)
    assert report["summary"]["latency_ms_p95"] >= 55, report["summary"]


def _imagining(shades, size):
    class Imagining(RandomPolicy):
        def imagined_frames(self, steps=None):
            return np.stack([np.full((1, size, size, 3), s, np.uint8) for s in shades])

    return Imagining(3, seed=0)


def test_without_an_out_dir_nothing_is_recorded_or_decoded():
    """video_episodes (2 by default) still decoded an imagined frame per step, and wrote nothing."""
    policy = _imagining((60,), 8)
    calls = []
    frames = policy.imagined_frames
    policy.imagined_frames = lambda steps=None: calls.append(steps) or frames(steps)
    evaluate_policy(
        policy, [gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=3)], 1, progress=False
    )
    assert calls == []


def test_a_recorded_episode_keeps_its_imagination_while_env_0_plays_an_unrecorded_one(tmp_path):
    """Env 0 finishes episode 0 at once and plays episode 2 (not recorded) while env 1 still records
    episode 1: its frames still need the imagined half (asking only env 0 lost it and the video's
    frames no longer stacked)."""
    import imageio.v2 as imageio

    envs = [EndsBySeed(gym.make("robobrain/Reach-v0", image_size=8), {0: 1, 1: 4, 2: 3}) for _ in range(2)]
    evaluate_policy(_imagining((60, 180), 8), envs, 3, out_dir=tmp_path, video_episodes=2, progress=False)
    frames = np.stack(imageio.mimread(tmp_path / "videos" / "episode_001_seed1.mp4"))
    assert frames.shape == (5, 32, 64, 3)  # reset frame + 4 steps, real | imagined
    assert np.abs(frames[1:, :, 32:].astype(int) - 180).mean() < 8


def test_imagined_frames_of_another_size_leave_the_imagined_half_black(tmp_path):
    import imageio.v2 as imageio

    env = gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=3)
    evaluate_policy(_imagining((200,), 4), [env], 1, out_dir=tmp_path, video_episodes=1, progress=False)
    frames = np.stack(imageio.mimread(tmp_path / "videos" / "episode_000_seed0.mp4"))
    assert frames.shape == (4, 32, 64, 3) and frames[:, :, 32:].max() < 16


class _ReplayingPlanner(RandomPolicy):
    """A fake world-model planner for env 0 whose imagination is the real replay of its plan, its
    rewards off by ``offsets[check]``; counts the checks."""

    def __init__(self, envs, offsets=(0.0,) * 100, horizon=2, invert=()):
        super().__init__(3, seed=0)
        self.envs, self.offsets, self.invert, self.checks = envs, offsets, invert, 0
        self.plan = np.zeros((len(envs), horizon, 3), np.float32)
        self.psnr: list[list[float]] = []  # what each check should find

    def planned_actions(self):
        return self.plan

    def imagine_plan(self):
        from robobrain.hallucination import replay_in_simulator
        from robobrain.training.wm_eval import psnr

        real = replay_in_simulator(self.envs[0], self.plan[0])
        frames = 255 - real.frames if self.checks in self.invert else real.frames
        self.psnr.append(psnr(torch.from_numpy(frames), torch.from_numpy(real.frames)).tolist())
        offset = self.offsets[self.checks]
        self.checks += 1
        n = len(self.envs)
        return SimpleNamespace(
            pixels=torch.from_numpy(np.stack([frames] * n)),
            reward=torch.from_numpy(np.stack([real.reward + offset] * n)),
        )


def test_hallucination_figures_are_averaged_over_the_checks():
    env = gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=2)
    policy = _ReplayingPlanner([env], offsets=(1.0, -3.0), invert=(1,))
    report = evaluate_policy(policy, [env], 1, progress=False, hallucination_every=1)
    drift = report["hallucination"]
    assert drift["checks"] == 2
    assert max(policy.psnr[1]) < 50  # (the second check's frames were imagined badly)
    assert drift["psnr_per_step"] == pytest.approx(np.mean(policy.psnr, axis=0).tolist(), abs=1e-4)
    assert drift["reward_bias_per_step"] == pytest.approx([-1.0, -1.0], abs=1e-5)  # mean of +1 and -3
    assert drift["reward_abs_error_per_step"] == pytest.approx([2.0, 2.0], abs=1e-5)


def test_no_hallucination_check_on_env_0_once_its_episodes_are_over():
    """Env 1 plays on after env 0's last episode: env 0's stale plan is not replayed."""
    envs = [EndsBySeed(gym.make("robobrain/Reach-v0", image_size=8), {0: 1, 1: 5}) for _ in range(2)]
    policy = _ReplayingPlanner(envs)
    report = evaluate_policy(policy, envs, 2, progress=False, hallucination_every=1)
    assert policy.checks == 1 and report["hallucination"]["checks"] == 1


# --- hallucination -----------------------------------------------------------------------------------
def _fake_planner(rollout, plan):
    return SimpleNamespace(imagine_plan=lambda: rollout, planned_actions=lambda: plan)


def test_hallucination_check_refuses_frames_of_another_size():
    from robobrain.hallucination import hallucination_check

    env = gym.make("robobrain/Reach-v0", image_size=16)
    env.reset(seed=0)
    plan = np.zeros((1, 2, 3), np.float32)
    rollout = SimpleNamespace(pixels=torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8), reward=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="differ in size"):
        hallucination_check(_fake_planner(rollout, plan), [env], 0)


def test_hallucination_check_of_env_1_compares_env_1s_imagination():
    from robobrain.hallucination import hallucination_check, replay_in_simulator

    envs = [gym.make("robobrain/Reach-v0", image_size=16) for _ in range(2)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    plan = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3)).astype(np.float32)
    real = replay_in_simulator(envs[1], plan[1])
    pixels = np.stack([255 - real.frames, real.frames])  # env 0's imagination: all wrong
    rewards = np.stack([real.reward + 5.0, real.reward + 0.5])
    rollout = SimpleNamespace(pixels=torch.from_numpy(pixels), reward=torch.from_numpy(rewards))
    out = hallucination_check(_fake_planner(rollout, plan), envs, 1)
    assert out["psnr"] == pytest.approx([100.0] * 3, abs=1e-3)
    assert out["reward_bias"] == pytest.approx([0.5] * 3, abs=1e-5)


# --- video -------------------------------------------------------------------------------------------
def test_video_scale_below_one_is_refused(tmp_path):
    from robobrain.video import write_video

    with pytest.raises(ValueError, match="scale must be >= 1"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.uint8), scale=0)
    assert not (tmp_path / "v.mp4").exists()


def test_video_pads_each_odd_side_by_one_row_or_column_from_the_edge(tmp_path):
    """Non-square frames: the odd height gets a row, the even width nothing; the added row repeats
    the edge (a black one once would be a visible stripe)."""
    import imageio.v2 as imageio

    from robobrain.video import write_video

    frames = np.full((3, 9, 8, 3), 200, np.uint8)
    path = write_video(tmp_path / "v.mp4", frames, scale=1)
    with imageio.get_reader(path) as reader:
        read = [f for f in reader]
    assert len(read) == 3 and read[0].shape == (10, 8, 3)
    assert np.abs(read[0][-1].astype(int) - 200).mean() < 20  # the padded row: the edge, not black


def test_video_fps_is_the_one_asked_for(tmp_path):
    import imageio.v2 as imageio

    from robobrain.video import write_video

    path = write_video(tmp_path / "v.mp4", np.zeros((4, 8, 8, 3), np.uint8), fps=10)
    with imageio.get_reader(path) as reader:
        assert reader.get_meta_data()["fps"] == pytest.approx(10)


def test_a_video_ffmpeg_failed_midway_is_an_error_and_replaces_nothing(tmp_path, monkeypatch):
    """imageio-ffmpeg does not check how ffmpeg exited: an empty file, or a partial one without its
    index (ffmpeg out of disk midway, which replaced a good video silently), is refused, the video
    already there is kept, and no temporary file is left behind."""
    import imageio.v2 as imageio

    from robobrain.video import write_video

    good = write_video(tmp_path / "good" / "v.mp4", np.zeros((20, 8, 8, 3), np.uint8)).read_bytes()
    for left in (b"", good[: len(good) // 2]):

        class FailedWriter:  # (what a failed ffmpeg leaves, with no error)
            def __init__(self, path, **kwargs):
                with open(path, "wb") as f:
                    f.write(left)  # noqa: B023 (used in this iteration)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def append_data(self, frame):
                pass

        (tmp_path / "v.mp4").write_bytes(b"old video")
        with monkeypatch.context() as m:
            m.setattr(imageio, "get_writer", FailedWriter)
            with pytest.raises(
                OSError, match=r"ffmpeg wrote a broken video for .*v.mp4 \((0|none readable).* of 20 frames"
            ):
                write_video(tmp_path / "v.mp4", np.zeros((20, 8, 8, 3), np.uint8))
        assert (tmp_path / "v.mp4").read_bytes() == b"old video"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "v.mp4"]


# --- learning curve ----------------------------------------------------------------------------------
def test_the_learning_curve_callback_redraws_after_evaluations_only(tmp_path):
    from robobrain.training.curves import LearningCurveCallback

    (tmp_path / "train.csv").write_text("env_steps,eval_success,eval_return\n20,0.5,-3.0\n")
    callback, png = LearningCurveCallback(), tmp_path / "learning_curve.png"
    callback.on_iteration(None, {"wm_loss": 1.0}, tmp_path)  # an iteration without an evaluation
    assert not png.exists()
    callback.on_iteration(None, {"eval_success": 0.5, "eval_return": -3.0}, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the online loop's factories ---------------------------------------------------------------------
def test_online_factories_envs_end_episodes_at_episode_steps():
    from robobrain.policies.online import online_factories

    f = online_factories("robobrain/Reach-v0", 8, "cpu", episode_steps=3)
    (env,) = f.make_eval_envs(1)
    env.reset(seed=0)
    ends = [env.step(np.zeros(3, np.float32))[3] for _ in range(3)]
    assert ends == [False, False, True]
    vec = f.make_envs(2)
    try:
        vec.reset(seed=0)
        ends = [bool(vec.step(np.zeros((2, 3), np.float32))[3].all()) for _ in range(3)]
        assert ends == [False, False, True]
    finally:
        vec.close()


def test_online_seed_policies_are_a_noisy_expert_and_random_actions_in_the_envs_bounds():
    from robobrain.envs import get_expert
    from robobrain.policies.online import online_factories
    from robobrain.policies.simple import ScriptedPolicy

    f = online_factories("robobrain/Reach-v0", 8, "cpu")
    env = gym.make("robobrain/Reach-v0", image_size=8)
    obs, _ = env.reset(seed=0)
    batch = {k: v[None] for k, v in obs.items()}
    scripted = f.make_seed_policy("scripted", env.action_space, 0)
    assert isinstance(scripted, ScriptedPolicy)
    noisy = np.concatenate([scripted.act(batch) for _ in range(20)])
    clean = ScriptedPolicy(get_expert("robobrain/Reach-v0")).act(batch)
    assert not np.allclose(noisy, clean)  # exploring seed data: the expert's actions with noise
    assert np.abs(noisy.mean(0) - clean[0]).max() < 0.3  # (around the expert's)
    wide = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    random = f.make_seed_policy("random", wide, 0)
    actions = random.act({"state": np.zeros((200, 1), np.float32)})
    assert np.abs(actions).max() > 1.5 and np.abs(actions).max() <= 2.0


# --- the eval command --------------------------------------------------------------------------------
def test_planner_settings_keep_at_least_one_elite():
    from robobrain.cli import Eval, check_planner_flags, planner_settings

    assert planner_settings(Eval(policy="mpc:runs/wm", samples=2))["elites"] == 1  # (a quarter of 2: 0)
    assert planner_settings(Eval(policy="mpc:runs/wm", guide="bc", samples=2))["elites"] == 1  # (half of 2)
    with pytest.raises(ValueError, match="--samples must be >= 2, got 1"):  # (one is the warm start alone)
        check_planner_flags(Eval(policy="mpc:runs/wm", samples=1))
    with pytest.raises(ValueError, match="--prior-std: only --guide bc reads it, not --guide auto"):
        check_planner_flags(Eval(policy="mpc:runs/wm", prior_std=0.3))  # (ignored, yet recorded)
    check_planner_flags(Eval(policy="mpc:runs/wm", guide="bc", prior_std=0.3))
    # (the guides' errors named no flag, and a noise_std never set; a prior guide of 0 samples ran unguided)
    for flags, said in (
        ({"guide": "bc", "prior_std": -1.0}, "--prior-std must be finite and >= 0"),
        ({"guide": "bc", "prior_samples": 0}, "--prior-samples must be >= 1 with --guide bc"),
        ({"guide": "prior", "prior_samples": 0}, "must be >= 1 with --guide prior, got 0; --guide value"),
        ({"prior_samples": -1}, "--prior-samples must be >= 0 with --guide auto"),
    ):
        with pytest.raises(ValueError, match=said):
            check_planner_flags(Eval(policy="mpc:runs/wm", **flags))
    check_planner_flags(Eval(policy="mpc:runs/wm", guide="value", prior_samples=0))
    with pytest.raises(ValueError, match="--temperature: only --optimizer mppi reads it"):
        check_planner_flags(Eval(policy="oracle", temperature=2.0))  # (CEM by default: ignored, yet recorded)
    check_planner_flags(Eval(policy="oracle", optimizer="mppi", temperature=2.0))
    check_planner_flags(Eval(policy="mpc:runs/wm", guide="bc", temperature=2.0))  # (bc plans with MPPI)
    # (the optimizer config's error named num_elites and num_samples, which eval has not)
    with pytest.raises(ValueError, match=r"--elites must be in \[1, --samples 16\], got 100"):
        check_planner_flags(Eval(policy="oracle", samples=16, elites=100))


def test_compile_mode_is_accepted_with_compile():
    from robobrain.cli import Eval, check_planner_flags

    check_planner_flags(Eval(policy="mpc:runs/wm", compile=True, compile_mode="max-autotune-no-cudagraphs"))
    with pytest.raises(ValueError, match="only with --compile"):
        check_planner_flags(Eval(policy="mpc:runs/wm", compile_mode="max-autotune-no-cudagraphs"))


def test_a_planner_flag_of_zero_overrides_the_runs_value():
    """--disagreement-penalty 0 on a run that planned with 0.5: 0 (a falsy flag fell back to the run's)."""
    from robobrain.cli import Eval, run_planner_setting

    run = {"mpc": {"disagreement_penalty": 0.5, "success_bonus": 5.0}}
    args = Eval(policy="mpc:runs/push", disagreement_penalty=0.0, success_bonus=0.0)
    assert run_planner_setting(args, run, "disagreement_penalty", 0.0) == 0.0
    assert run_planner_setting(args, run, "success_bonus", 1.0) == 0.0


def test_episode_steps_must_be_an_int():
    from robobrain.cli import checked_episode_steps

    assert checked_episode_steps(None) is None and checked_episode_steps(np.int64(3)) == 3
    for bad in (2.5, True, "3"):
        with pytest.raises(ValueError, match="--episode-steps must be an int >= 1"):
            checked_episode_steps(bad)


def test_eval_refuses_zero_envs(tmp_path):
    with pytest.raises(ValueError, match="--num-envs must be >= 1, got 10, 0"):
        main(["eval", "--policy", "random", "--num-envs", "0", "--out", str(tmp_path / "e"), "--no-progress"])


def test_eval_builds_no_more_envs_than_episodes(tmp_path, monkeypatch):
    import robobrain.envs

    made = []
    make_env = robobrain.envs.make_env
    monkeypatch.setattr(robobrain.envs, "make_env", lambda *a, **kw: made.append(a) or make_env(*a, **kw))
    main(["eval", "--policy", "random", "--env", "robobrain/Reach-v0", "--episodes", "1", "--num-envs", "3",
          "--image-size", "8", "--video-episodes", "0", "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert len(made) == 1


class _Built(Exception):
    pass


def _capture_load_policy(monkeypatch):
    import robobrain.policies

    seen = {}

    def load_policy(spec, env_id, space, **kwargs):
        seen.update(kwargs)
        raise _Built

    monkeypatch.setattr(robobrain.policies, "load_policy", load_policy)
    return seen


def test_eval_plans_with_its_time_budget_and_seed(tmp_path, monkeypatch):
    seen = _capture_load_policy(monkeypatch)
    with pytest.raises(_Built):
        main(["eval", "--policy", "oracle", "--env", "robobrain/Reach-v0", "--episodes", "1",
              "--num-envs", "1", "--image-size", "8", "--time-budget", "0.05", "--seed", "7",
              "--out", str(tmp_path / "e"), "--no-progress"])  # fmt: skip
    assert seen["mpc"].optim.time_budget == 0.05 and seen["mpc"].seed == 7 and seen["seed"] == 7


def test_eval_passes_prior_samples_only_when_told(tmp_path, monkeypatch):
    """Left out, --prior-samples is load_policy's per-guide default (16 from an SB3 actor, all the
    candidates but one from a behaviour prior), not a train run's own: a run of 200 prior samples
    made a plain eval (128 samples) fail, and one of 0 turned `--guide prior` into no guide."""
    import robobrain.checkpoint
    import robobrain.cli as cli

    monkeypatch.setattr(robobrain.checkpoint, "read_config", lambda path: {"online": {"prior_samples": 4}})
    monkeypatch.setattr(cli, "world_model_image_size", lambda path: 8)
    seen = _capture_load_policy(monkeypatch)
    base = dict(policy="mpc:runs/push", env="robobrain/Reach-v0", episodes=1, num_envs=1,
                out=tmp_path / "e", progress=False)  # fmt: skip
    cases = (({"guide": "auto"}, None), ({"guide": "bc"}, None), ({"guide": "bc", "prior_samples": 5}, 5))
    for extra, expected in cases:
        seen.clear()
        with pytest.raises(_Built):
            cli.run_eval(cli.Eval(**base, **extra))
        assert seen["num_prior"] == expected, extra


def test_eval_refuses_prior_samples_its_guide_does_not_draw(tmp_path, monkeypatch):
    """`--guide auto` of a run that drew no prior samples (value only) guides with the value alone:
    an asked-for --prior-samples was dropped without a word (as with --guide value or none)."""
    import robobrain.checkpoint
    import robobrain.cli as cli
    import robobrain.policies
    from robobrain.rl import ActorCriticGuide

    monkeypatch.setattr(robobrain.checkpoint, "read_config", lambda path: {"online": {"prior_samples": 0}})
    monkeypatch.setattr(cli, "world_model_image_size", lambda path: 8)
    value_only = ActorCriticGuide.__new__(ActorCriticGuide)
    value_only.num_prior, value_only.use_value = 0, True
    built = SimpleNamespace(guide=value_only)
    monkeypatch.setattr(robobrain.policies, "load_policy", lambda *a, **kw: built)
    base = dict(policy="mpc:runs/push", env="robobrain/Reach-v0", episodes=1, num_envs=1,
                out=tmp_path / "e", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"--prior-samples 4: the planner's guide \(value\) draws no prior"):
        cli.run_eval(cli.Eval(**base, prior_samples=4))
    built.guide = None
    with pytest.raises(ValueError, match=r"--prior-samples 4: the planner's guide \(none\) draws no prior"):
        cli.run_eval(cli.Eval(**base, guide="none", prior_samples=4))


# --- the collect command -----------------------------------------------------------------------------
_COLLECT = ["collect", "--env", "robobrain/Reach-v0", "--image-size", "16", "--episodes", "1",
            "--num-envs", "1", "--episode-steps", "5", "--no-progress"]  # fmt: skip


def _actions(out):
    return np.concatenate([ep.action for ep in EpisodeStore(out).load_all()])


def test_collect_refuses_decoy_goals_for_a_random_policy(tmp_path):
    with pytest.raises(ValueError, match="scripted only"):  # would be silently ignored
        main([*_COLLECT, "--policy", "random", "--decoy-goal-prob", "0.5", "--out", str(tmp_path / "d")])


def test_collect_noise_and_decoy_goals_reach_the_scripted_policy(tmp_path):
    runs = {"plain": [], "noise": ["--noise", "0.5"], "decoy": ["--decoy-goal-prob", "1.0"]}
    for name, flags in runs.items():
        main([*_COLLECT, "--policy", "scripted", "--seed", "0", *flags, "--out", str(tmp_path / name)])
    plain = _actions(tmp_path / "plain")
    assert not np.allclose(plain, _actions(tmp_path / "noise"))
    assert not np.allclose(plain, _actions(tmp_path / "decoy"))


def test_collect_seeds_the_policy_with_the_collections_seed(tmp_path):
    """Random episodes of another --seed (or of the next collection into a store) act differently."""
    for seed in ("0", "1"):
        main([*_COLLECT, "--policy", "random", "--seed", seed, "--out", str(tmp_path / seed)])
    assert not np.allclose(_actions(tmp_path / "0"), _actions(tmp_path / "1"))


def test_collect_warns_of_overlapping_seeds_only(tmp_path, caplog):
    """Stored envs seeded in [5, 7): a collection seeded in [7, 9) repeats no start, one in [6, 8) does."""
    base = [*_COLLECT[:5], "--episodes", "2", "--num-envs", "2", "--episode-steps", "2", "--no-progress"]
    out = str(tmp_path / "d")
    main([*base, "--seed", "5", "--out", out])
    with caplog.at_level("WARNING", logger="robobrain.cli"):
        main([*base, "--seed", "7", "--out", out])
    assert "already holds episodes" not in caplog.text
    with caplog.at_level("WARNING", logger="robobrain.cli"):
        main([*base, "--seed", "6", "--out", out])
    assert "seeded in [5, 7), [7, 9); this collection's are seeded in [6, 8)" in caplog.text


def test_eval_of_a_train_run_plays_episodes_of_the_runs_length(tmp_path, monkeypatch):
    """mpc: and bc: of a `robobrain train` run of --episode-steps 7 evaluate 7-step episodes (bc:
    played the env's 50), unless --episode-steps says otherwise; other policies keep the env's."""
    import robobrain.checkpoint
    import robobrain.cli as cli

    monkeypatch.setattr(robobrain.checkpoint, "read_config", lambda path: {"online": {"episode_steps": 7}})
    monkeypatch.setattr(cli, "world_model_image_size", lambda path: 8)
    seen = _capture_load_policy(monkeypatch)
    base = dict(env="robobrain/Reach-v0", episodes=1, num_envs=1, out=tmp_path / "e", progress=False)
    cases = (({"policy": "mpc:runs/reach"}, 7), ({"policy": "bc:runs/reach"}, 7),
             ({"policy": "bc:runs/reach", "episode_steps": 3}, 3), ({"policy": "random"}, 50))  # fmt: skip
    for extra, expected in cases:
        seen.clear()
        with pytest.raises(_Built):
            cli.run_eval(cli.Eval(**base, **extra))
        assert seen["envs"][0].spec.max_episode_steps == expected, extra


# --- from a mutation audit (session 39) -------------------------------------------------------------
def test_a_success_rate_needs_every_episode_to_report_success():
    """An env that says info["success"] at only some episode ends has no success rate (the others
    counted as failures)."""

    class SaysSuccessOnOddSeeds(gym.Wrapper):
        def reset(self, *, seed=None, options=None):
            self.says = seed is not None and seed % 2 == 1
            return self.env.reset(seed=seed, options=options)

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            info = dict(info)
            if not self.says:
                info.pop("success", None)
            return obs, reward, terminated, truncated, info

    env = SaysSuccessOnOddSeeds(gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=3))
    report = evaluate_policy(RandomPolicy(3, seed=0), [env], 4, progress=False)
    assert [ep["success"] is None for ep in report["episodes"]] == [True, False, True, False]
    assert report["summary"]["success_rate"] is None and report["summary"]["success_ci95"] is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_actions_are_refused_before_the_env_steps(bad):
    class Diverged(RandomPolicy):
        def act(self, obs):
            return np.full((1, 3), bad, np.float32)

    env = gym.make("robobrain/Reach-v0", image_size=8, max_episode_steps=3)
    with pytest.raises(ValueError, match="policy returned NaN or inf actions"):
        evaluate_policy(Diverged(3, seed=0), [env], 1, progress=False)


def test_sb3_zips_refuse_statistics_and_action_spaces_that_are_not_theirs(tmp_path):
    """A plain PPO beside another run's VecNormalize statistics (SB3's log folder) acted on them; a
    Box observation's statistics passed for a Dict model (a TypeError at the first act); a
    MultiDiscrete model on a Box env was an AttributeError."""
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from robobrain.policies import load_policy

    class Tiny(gym.Env):
        def __init__(self, action_space, dict_obs=False):
            box = gym.spaces.Box(-1, 1, (4,), np.float32)
            self.observation_space = gym.spaces.Dict({"state": box}) if dict_obs else box
            self.action_space = action_space

        def _obs(self):
            return self.observation_space.sample()

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self._obs(), {}

        def step(self, action):
            return self._obs(), 0.0, False, False, {}

    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    VecNormalize(DummyVecEnv([lambda: Tiny(box)])).save(tmp_path / "vec_normalize.pkl")  # another run's
    PPO("MlpPolicy", Tiny(box), n_steps=16, batch_size=16, device="cpu").learn(16).save(tmp_path / "plain")
    with pytest.raises(
        ValueError, match=r"vec_normalize.pkl: VecNormalize statistics beside .*plain.zip, wh"
    ):
        load_policy(f"sb3:{tmp_path / 'plain.zip'}", "X-v0", box)
    SAC("MultiInputPolicy", Tiny(box, dict_obs=True), buffer_size=10, device="cpu").save(tmp_path / "dict")
    with pytest.raises(ValueError, match=r"statistics of other observations than .*dict.zip's Dict"):
        load_policy(f"sb3:{tmp_path / 'dict.zip'}", "X-v0", box)
    (tmp_path / "vec_normalize.pkl").unlink()
    multi = gym.spaces.MultiDiscrete([3, 3, 3])
    PPO("MlpPolicy", Tiny(multi), n_steps=16, batch_size=16, device="cpu").save(tmp_path / "multi")
    with pytest.raises(
        ValueError, match=r"multi.zip: the SB3 model acts in MultiDiscrete\(\[3 3 3\]\), the env in Box"
    ):
        load_policy(f"sb3:{tmp_path / 'multi.zip'}", "X-v0", box)
