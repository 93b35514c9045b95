"""Collection through vector envs and the CLI: complete episodes, no transition across a reset."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import robobrain.data.collect
import robobrain.envs as envs
from robobrain.cli import main
from robobrain.data import EpisodeStore
from robobrain.data.collect import collect_episodes
from robobrain.envs.base import ACTION_STEP
from robobrain.policies import RandomPolicy


def test_collect_cli(tmp_path):
    out = tmp_path / "data"
    args = ["collect", "--env", "robobrain/Push-v0", "--policy", "scripted", "--episodes", "3"]
    main([*args, "--num-envs", "2", "--image-size", "16", "--out", str(out), "--no-progress"])
    store = EpisodeStore(out)
    assert len(store) == 3
    for _, ep in store.episodes():
        assert len(ep) == envs.EPISODE_STEPS
        assert ep.pixels.shape == (envs.EPISODE_STEPS + 1, 16, 16, 3)
        assert ep.meta["env_id"] == "robobrain/Push-v0" and ep.meta["policy"] == "scripted"
    main([*args, "--num-envs", "1", "--image-size", "16", "--out", str(out), "--no-progress"])
    store = EpisodeStore(out)
    assert len(store) == 6  # appended, not copied: the same command again starts from other seeds
    eps = store.load_all()
    assert [ep.meta["seed"] for ep in eps] == [0, 0, 0, 10_000, 10_000, 10_000]
    assert not any(np.array_equal(eps[i].state[0], eps[j].state[0]) for i in range(3) for j in range(3, 6))
    random_args = ["collect", "--env", "robobrain/Push-v0", "--policy", "random", "--noise", "0.1"]
    with pytest.raises(ValueError, match="scripted only"):  # would be silently ignored
        main([*random_args, "--out", str(out), "--no-progress"])
    with pytest.raises(ValueError, match="episodes of 16 px"):  # 32 px frames into a store of 16 px ones
        main([*args, "--episodes", "1", "--image-size", "32", "--out", str(out), "--no-progress"])
    with pytest.raises(ValueError, match="did you mean robobrain/Push-v0"):  # and leaves no store behind
        main(["collect", "--env", "robobrain/Psh-v0", "--out", str(tmp_path / "typo"), "--no-progress"])
    assert not (tmp_path / "typo").exists()


def test_the_command_shows_robobrains_logs_on_the_stderr_of_the_moment(monkeypatch):
    import io
    import logging
    import sys

    import robobrain.cli as cli

    logger = logging.getLogger("robobrain")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # a plain command: no logging set up
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    cli._show_logs()
    cli._show_logs()  # (once)
    for _ in range(2):  # a stream replaced after the handler was made (pytest, an embedding app)
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        logging.getLogger("robobrain.training.online").info("resumed from %s", "X")
        assert sys.stderr.getvalue() == "robobrain INFO: resumed from X\n"
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])  # the caller's setup
    cli._show_logs()
    assert logger.handlers == []


def test_the_command_reports_a_users_error_in_one_line(capsys, tmp_path, monkeypatch):
    """`robobrain` (cli.entry) ends a user's error with one line and status 2; main() raises it."""
    from robobrain.cli import entry

    with pytest.raises(SystemExit) as exit_:
        entry(["eval", "--policy", "banana", "--image-size", "16", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["robobrain eval: error: unknown policy spec 'banana'; expected one of random, scripted, "
                   "oracle, mpc:CHECKPOINT, bc:CHECKPOINT, sb3:ZIP"]  # fmt: skip
    with pytest.raises(ValueError, match="image_size must be an int in"):  # was silently 64
        main(["eval", "--policy", "random", "--image-size", "0", "--out", str(tmp_path)])
    import robobrain.cli as cli

    if cli.VALUE_ERRORS_PROPAGATE:  # a config's check when the flags are read: one line, not tyro's box
        for flags, line in ((["--mpc.optim.num-samples", "16", "--mpc.optim.num-elites", "32"],
                             "the optimizer needs 0 < num_elites <= "),
                            (["--num-envs", "abc"], "--num-envs: invalid literal for int()")):  # fmt: skip
            with pytest.raises(SystemExit) as exit_:
                entry(["train", "--run-dir", str(tmp_path / "run"), *flags])
            assert exit_.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"robobrain train: error: {line}"), err
        assert not (tmp_path / "run").exists()
    # A device this torch cannot use is refused up front (a CPU-only torch raised an AssertionError).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["eval", "--policy", "random"], ["train-wm", "--data", str(tmp_path)]):
        with pytest.raises(ValueError, match="sees no CUDA device"):
            main([*command, "--device", "cuda", "--out" if command[0] == "eval" else "--run-dir",
                  str(tmp_path / "out")])  # fmt: skip
    with pytest.raises(ValueError, match="--device 'banana'"):
        main(["eval", "--policy", "random", "--device", "banana", "--out", str(tmp_path / "out")])
    # Device types torch parses but cannot use here (a traceback at the first tensor, or from .item()).
    refusals = (("mps", "cannot use it: Could not run"), ("hpu", "cannot use it: No module named"),
                ("meta", "holds no data"))  # fmt: skip
    for device, why in refusals:
        with pytest.raises(ValueError, match=f"--device {device}: .*{why}") as refused:
            main(["train-wm", "--data", str(tmp_path), "--device", device, "--run-dir", str(tmp_path / "o")])
        assert len(str(refused.value)) < 300  # (one sentence of torch's, not its list of every backend)
    assert not (tmp_path / "out").exists()
    # auto (SB3's convention): cuda when torch sees one, else cpu
    main(["eval", "--policy", "random", "--device", "auto", "--episodes", "1", "--num-envs", "1",
          "--image-size", "16", "--video-episodes", "0", "--out", str(tmp_path / "auto"),
          "--no-progress"])  # fmt: skip
    assert (tmp_path / "auto" / "eval_info.json").exists()


def test_collect_cli_default_directory_is_per_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["collect", "--env", "robobrain/Reach-v0", "--episodes", "1", "--num-envs", "1",
          "--image-size", "16", "--no-progress"])  # fmt: skip
    assert len(EpisodeStore(tmp_path / "data" / "reach")) == 1
    from robobrain.cli import Collect, collect_out

    assert collect_out(Collect(env="my_pkg.envs:Pendulum-v1")) == Path("data/pendulum")  # (not "my_pkg...")


def test_no_transition_crosses_a_reset(tmp_path):
    """With autoreset, the step after an episode ends returns a fresh start; it must open a new
    episode, never be stored as a (teleporting) transition of the old one."""
    vec = envs.make_vector_env("robobrain/Reach-v0", 3, image_size=8)
    store = EpisodeStore(tmp_path)
    collect_episodes(vec, RandomPolicy(3, seed=0), store, 7, seed=0, progress=False)
    vec.close()
    starts = set()
    for _, ep in store.episodes():
        grip = ep.state[:, :3]
        jumps = np.abs(np.diff(grip, axis=0)).max()
        assert jumps <= ACTION_STEP * 1.5, f"gripper teleported by {jumps:.3f} m inside an episode"
        starts.add(ep.state[0].tobytes())
    assert len(starts) == 7
    # Reach never terminates: every episode ended at its time limit, none is stored as terminated (each
    # would have marked its last action terminal and grown the world model a termination head).
    assert all(len(ep) == 50 and not ep.terminated for _, ep in store.episodes())
    # Each episode names its env and reset: its start can be found again.
    env = gym.make("robobrain/Reach-v0", image_size=8)
    for _, ep in store.episodes():
        obs, _ = env.reset(seed=ep.meta["env_index"])  # (collected with seed 0: env i got seed i)
        for _ in range(ep.meta["reset_index"]):
            obs, _ = env.reset()
        np.testing.assert_array_equal(obs["state"], ep.state[0])
    assert {ep.meta["reset_index"] for _, ep in store.episodes()} == {0, 1, 2}  # (7 over 3 envs)
    # Collected without meta, they still name their env (a world model reads its goal layout from it).
    assert {ep.meta["env_id"] for _, ep in store.episodes()} == {"robobrain/Reach-v0"}
    env.close()


def test_collect_is_reproducible(tmp_path):
    def run(path):
        vec = envs.make_vector_env("robobrain/Push-v0", 2, image_size=8)
        store = EpisodeStore(path)
        collect_episodes(vec, RandomPolicy(3, seed=4), store, 3, seed=4, progress=False)
        vec.close()
        return store.load_all()

    for a, b in zip(run(tmp_path / "a"), run(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.action, b.action)


def test_the_stored_actions_are_those_the_env_ran(tmp_path):
    """A policy asking for more than the action space (the env clips): the store holds the clipped
    actions (it held 2.98 where 1.0 ran, a wrong action-to-motion pairing for a world model)."""
    vec = envs.make_vector_env("robobrain/Reach-v0", 2, image_size=8, max_episode_steps=5)
    store = EpisodeStore(tmp_path)
    wide = RandomPolicy(3, seed=0, low=np.full(3, -3.0), high=np.full(3, 3.0))
    collect_episodes(vec, wide, store, 2, seed=0, progress=False)
    vec.close()
    actions = np.concatenate([ep.action for ep in store.load_all()])
    assert np.abs(actions).max() == 1.0 and (np.abs(actions) == 1.0).mean() > 0.3


def test_episodes_say_whether_their_env_reports_success(tmp_path, capsys):
    """Pendulum has no info["success"]: its flags are False by default, so summaries must leave them
    out (collect printed "success 0.00", train.csv's train_success 0.0 beside eval's null)."""
    base = ["--episodes", "1", "--num-envs", "1", "--image-size", "8", "--no-progress"]
    main(["collect", "--env", "Pendulum-v1", "--policy", "random", *base, "--out", str(tmp_path / "p")])
    assert "(the env reports no success;" in capsys.readouterr().out
    reach = ["collect", "--env", "robobrain/Reach-v0", "--policy", "scripted"]
    main([*reach, *base, "--out", str(tmp_path / "r")])
    assert "(success 1.00;" in capsys.readouterr().out
    reports = [EpisodeStore(tmp_path / d).load_all()[0].meta["reports_success"] for d in "pr"]
    assert reports == [False, True]


def test_whole_step_keeps_the_episodes_that_end_with_the_last_one(tmp_path):
    """3 episodes over 2 envs: the fourth env episode is simulated either way; whole_step keeps it, so
    the steps counted are those of the stored episodes."""
    for whole_step, kept in ((False, 3), (True, 4)):
        vec = envs.make_vector_env("robobrain/Reach-v0", 2, image_size=8, max_episode_steps=5)
        store = EpisodeStore(tmp_path / str(whole_step))
        result = collect_episodes(vec, RandomPolicy(3, seed=0), store, 3, seed=0, progress=False,
                                  whole_step=whole_step)  # fmt: skip
        vec.close()
        assert len(result.names) == kept and result.env_steps == 20
        assert sum(len(ep.action) for ep in store.load_all()) == 5 * kept


def test_collect_refuses_same_step_autoreset(tmp_path):
    vec = gym.vector.SyncVectorEnv(
        [lambda: envs.make_env("robobrain/Reach-v0", 8)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    with pytest.raises(ValueError, match="NEXT_STEP"):
        collect_episodes(vec, RandomPolicy(3), EpisodeStore(tmp_path), 1, progress=False)
    vec.close()


class FirstObservations(RandomPolicy):
    """Records the observation each env shows the policy first after ``reset``."""

    def __init__(self, action_dim: int) -> None:
        super().__init__(action_dim, seed=0)
        self.pending: np.ndarray | None = None
        self.first: list[bytes] = []

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        self.pending = np.ones(num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)

    def act(self, obs):
        if self.pending is not None:
            self.first += [obs["state"][i].tobytes() for i in np.flatnonzero(self.pending)]
            self.pending = None
        return super().act(obs)


def test_policy_resets_when_the_reset_observation_arrives(tmp_path):
    """A stateful policy (the world-model MPC) must start its new latent on the new episode's first
    frame -- not on the old episode's last one, which the env shows once more before it resets."""
    vec = envs.make_vector_env("robobrain/Reach-v0", 2, image_size=8, max_episode_steps=4)
    store = EpisodeStore(tmp_path)
    policy = FirstObservations(3)
    collect_episodes(vec, policy, store, 5, seed=0, progress=False)
    vec.close()
    starts = {ep.state[0].tobytes() for _, ep in store.episodes()}
    assert len(starts) == 5 and len(policy.first) == 6  # 2 at the start, 2 after each of 2 rounds
    assert starts <= set(policy.first)


class FixedLength(gym.Wrapper):
    """Episodes of ``length`` steps (truncated), whatever the env's time limit."""

    def __init__(self, env: gym.Env, length: int) -> None:
        super().__init__(env)
        self.length, self.left = length, 0

    def reset(self, **kwargs):
        self.left = self.length
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, _, info = self.env.step(action)
        self.left -= 1
        return obs, reward, terminated, self.left <= 0, info


def test_only_the_envs_that_restart_reset_their_slot_of_the_policy(tmp_path):
    """Envs whose episodes end on different steps (2 and 3 steps long): each restart resets that env's
    slot only (a full reset, which ending both on one step could not tell apart, passed)."""

    class Masks(RandomPolicy):
        def __init__(self) -> None:
            super().__init__(3, seed=0)
            self.masks: list = []

        def reset(self, num_envs, mask=None):
            self.masks.append(None if mask is None else np.asarray(mask).tolist())

    fns = [lambda n=n: FixedLength(gym.make("robobrain/Reach-v0", image_size=8), n) for n in (2, 3)]
    vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    policy = Masks()
    collect_episodes(vec, policy, EpisodeStore(tmp_path), 4, seed=0, progress=False)
    vec.close()
    assert policy.masks == [None, [True, False], [False, True], [True, False]]


def test_collect_refuses_bad_flags_up_front_and_warns_of_repeated_starts(tmp_path, caplog):
    out = tmp_path / "data"
    base = ["collect", "--env", "robobrain/Reach-v0", "--image-size", "16", "--no-progress"]
    for noise in ("nan", "inf", "-0.5"):  # nan > 0 is False: it collected noiseless data recorded as NaN
        with pytest.raises(ValueError, match=r"^--noise must be finite and >= 0"):  # (as the flag)
            main([*base, "--noise", noise, "--out", str(out)])
    for seed in ("-5", str(2**64 - 1)):  # (numpy's error named no flag; 2**64 - 1 overflowed torch)
        with pytest.raises(ValueError, match=r"--seed must be in \[0, 2\*\*32\), got"):
            main([*base, "--seed", seed, "--out", str(out)])
    with pytest.raises(ValueError, match="--episode-steps must be an int >= 1, got 0"):
        main([*base, "--episode-steps", "0", "--out", str(out)])
    assert not out.exists()
    short = tmp_path / "short"  # episodes of another length than the env's time limit
    main([*base, "--episodes", "2", "--num-envs", "2", "--episode-steps", "7", "--out", str(short)])
    assert [(len(ep), ep.meta["episode_steps"]) for ep in EpisodeStore(short).load_all()] == [(7, 7)] * 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        main([*base, "--out", str(tmp_path / "file")])
    main([*base, "--episodes", "2", "--num-envs", "2", "--seed", "5", "--out", str(out)])
    with caplog.at_level("WARNING", logger="robobrain.cli"):  # env 1 of this one replays env 0 of that
        main([*base, "--episodes", "2", "--num-envs", "2", "--seed", "4", "--out", str(out)])
    assert "seeded in [5, 7); this collection's are seeded in [4, 6)" in caplog.text
    with caplog.at_level("WARNING", logger="robobrain.cli"):  # stored, but no world model trains on it
        small = ["collect", "--env", "robobrain/Reach-v0", "--image-size", "20", "--no-progress"]
        main([*small, "--episodes", "1", "--num-envs", "1", "--out", str(tmp_path / "d20")])
    assert (
        "no world model can train on these episodes (image_size must be a power of two >= 16, got 20)"
        in caplog.text
    )
    # ... and what would train on it is refused naming where the 20 px came from, a run before it
    # collected its seed episodes (it stored them, then failed at "image_size ... got 20")
    d20, run = tmp_path / "d20", tmp_path / "run20"
    with pytest.raises(ValueError, match=rf"--data {d20}: its frames are 20 px: a world model needs"):
        main(["train-wm", "--data", str(d20), "--run-dir", str(run), "--preset", "debug", "--steps", "1"])
    with pytest.raises(ValueError, match=rf"--seed-data {d20}: its frames are 20 px"):
        main(["train", "--env", "robobrain/Reach-v0", "--preset", "debug", "--seed-data", str(d20),
              "--run-dir", str(run), "--no-progress"])  # fmt: skip
    assert not run.exists()
    eps = EpisodeStore(out).load_all()
    assert eps[0].meta["num_envs"] == 2
    before = EpisodeStore(out).names()
    for flags in (["--image-size", "32"], ["--env", "robobrain/Push-v0"]):  # (the store's first add refused)
        with pytest.raises(ValueError, match="holds robobrain/Reach-v0 episodes of 16 px: pass --env"):
            main([*base, *flags, "--out", str(out)])
    assert EpisodeStore(out).names() == before
    np.testing.assert_array_equal(eps[0].state[0], eps[3].state[0])  # what the warning was about


def test_a_diverged_training_or_a_missing_render_extra_ends_in_one_line(capsys, monkeypatch):
    import errno

    from gymnasium.error import DependencyNotInstalled

    import robobrain.cli as cli
    from robobrain.training.wm_trainer import NonFiniteLossError

    for error in (NonFiniteLossError("the loss is NaN; the last checkpoint is kept"),
                  DependencyNotInstalled("pygame is not installed"),
                  OSError(errno.ENOSPC, "No space left on device", "runs/x"),  # (a traceback before)
                  OSError(errno.EROFS, "Read-only file system", "runs/x")):  # fmt: skip

        def fail(argv=None, error=error):
            raise error

        monkeypatch.setattr(cli, "main", fail)
        with pytest.raises(SystemExit) as exit_:
            cli.entry(["train-wm"])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"robobrain train-wm: error: {error}"]
    monkeypatch.setattr(cli, "main", lambda argv=None: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):  # (not a user's to mend: its traceback)
        cli.entry(["train-wm"])

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)  # Ctrl-C: one line (a traceback of ~50 before)
    hint = "; the same command resumes the run from its last checkpoint, if it wrote one"
    for command, said in (("train-wm", hint), ("eval", "")):
        with pytest.raises(KeyboardInterrupt):  # (a Python caller gets it, as from any function)
            cli.entry([command])
        assert capsys.readouterr().err.strip().splitlines() == [f"robobrain {command}: interrupted{said}"]
    # The command ends as Python does on Ctrl-C, killed by SIGINT after its shutdown (stdout flushed,
    # atexit run): a shell loop around it stops (an exit status of 130 let it go on), without the
    # traceback.
    import os
    import signal
    import subprocess
    import sys

    code = "\n".join(["import sys, atexit", "import robobrain.cli as c", "atexit.register(print, 'atexit')",
                      "def m(argv=None): print('out'); raise KeyboardInterrupt", "c.main = m",
                      "sys.argv = ['robobrain', 'eval']", "sys.exit(c.entry())"])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == -signal.SIGINT and done.stderr.strip() == "robobrain eval: interrupted"
    assert done.stdout.split() == ["out", "atexit"]


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`robobrain train --help | head` ended in two BrokenPipeError tracebacks once head had read its
    lines. Here stdout is a pipe whose reader has gone before the help is written."""
    import subprocess
    import sys

    code = "\n".join(["import os, sys", "r, w = os.pipe()", "os.close(r)", "os.dup2(w, 1)",
                      "import robobrain.cli as c", "sys.argv = ['robobrain', 'train', '--help']",
                      "c.entry()"])  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (1, "")


def test_an_output_folder_that_a_file_stands_in_the_way_of_is_a_clear_error(tmp_path):
    """train-wm, train, demo and eval-wm once ended in a raw FileExistsError traceback."""
    (tmp_path / "afile").write_text("x")
    for command, flag, path in [
        ("train-wm", "--run-dir", "afile"),
        ("train", "--run-dir", "afile"),
        ("demo", "--run-dir", "afile/sub"),
        ("eval-wm", "--out", "afile/sub"),
        ("eval", "--out", "afile"),
    ]:
        with pytest.raises(
            ValueError, match=f"^{flag} {tmp_path / path} (is a file|cannot be made: .*afile is a file)"
        ):
            main([command, flag, str(tmp_path / path)])
    assert (tmp_path / "afile").read_text() == "x"
    (tmp_path / "gone").symlink_to(tmp_path / "unmounted")  # e.g. a scratch disk not mounted
    with pytest.raises(ValueError, match="gone is a symlink to nothing"):
        main(["train-wm", "--run-dir", str(tmp_path / "gone" / "wm")])


def test_every_stored_episode_replays_exactly_in_its_env(tmp_path):
    """Frames, states, rewards and success flags belong to the step they are stored with (frames a
    step late passed every other collection test): replayed from its env_index / reset_index."""
    vec = envs.make_vector_env("robobrain/Push-v0", 2, image_size=8, max_episode_steps=5)
    store = EpisodeStore(tmp_path)
    collect_episodes(vec, RandomPolicy(3, seed=0), store, 5, seed=0, progress=False)
    vec.close()
    env = gym.make("robobrain/Push-v0", image_size=8)
    for _, ep in store.episodes():
        obs, _ = env.reset(seed=ep.meta["env_index"])
        for _ in range(ep.meta["reset_index"]):
            obs, _ = env.reset()
        np.testing.assert_array_equal(obs["pixels"], ep.pixels[0])
        for t, action in enumerate(ep.action):
            obs, reward, _, _, info = env.step(action)
            np.testing.assert_array_equal(obs["pixels"], ep.pixels[t + 1])
            np.testing.assert_array_equal(obs["state"], ep.state[t + 1])
            assert (np.float32(reward), bool(info["success"])) == (ep.reward[t], ep.success[t])
    env.close()


def test_collections_started_at_once_take_different_seeds(tmp_path, monkeypatch):
    """Two collections into one store without --seed both read the same largest seed from its
    manifest and stored identical episodes; a seed is now claimed in the store (``.seed-N``), so the
    second moves on by 10,000. A collection that stores nothing gives its claim back (no folder is
    left behind)."""
    out = tmp_path / "data"
    args = ["collect", "--env", "robobrain/Reach-v0", "--policy", "random", "--episodes", "1",
            "--episode-steps", "3", "--image-size", "8", "--out", str(out), "--no-progress"]  # fmt: skip
    out.mkdir()
    (out / ".seed-0").touch()  # a collection started beside this one, nothing stored yet
    main(args)
    main(args)
    assert [ep.meta["seed"] for ep in EpisodeStore(out).load_all()] == [10_000, 20_000]

    def fails(*args, **kwargs):
        raise RuntimeError("the env broke")

    with monkeypatch.context() as m:  # after the store and the claim: a claim of nothing is given back
        m.setattr(robobrain.data.collect, "collect_episodes", fails)
        for where in (out, tmp_path / "new"):
            with pytest.raises(RuntimeError, match="the env broke"):
                main([*args[:-3], "--out", str(where), "--no-progress"])
    assert not (tmp_path / "new").exists()  # (no folder left behind either)
    main(args)
    assert [ep.meta["seed"] for ep in EpisodeStore(out).load_all()] == [10_000, 20_000, 30_000]
    with pytest.raises(ValueError, match=r"Discrete\(2\)"):  # (before any store is made)
        main(["collect", "--env", "CartPole-v1", "--policy", "random", "--episodes", "1", "--image-size", "8",
              "--out", str(tmp_path / "cp"), "--no-progress"])  # fmt: skip
    assert not (tmp_path / "cp").exists()


def test_stores_and_runs_are_not_written_into_each_other(tmp_path):
    """collect into a run directory, train-wm/train with a store as --run-dir, eval/eval-wm into a
    store: each wrote its files into the other, silently."""
    store, run = tmp_path / "store", tmp_path / "run"
    main(["collect", "--env", "robobrain/Reach-v0", "--policy", "random", "--episodes", "1",
          "--num-envs", "1", "--episode-steps", "2", "--image-size", "16", "--out", str(store),
          "--no-progress"])  # fmt: skip
    (run / "checkpoints").mkdir(parents=True)
    before = sorted(p.name for p in store.iterdir())
    with pytest.raises(ValueError, match=r"--out .*run is a run directory \(it holds checkpoints/\)"):
        main(
            ["collect", "--env", "robobrain/Reach-v0", "--episodes", "1", "--out", str(run), "--no-progress"]
        )
    (run / "episodes").mkdir()  # a train run's own store: the run deletes episodes it did not write
    with pytest.raises(ValueError, match=r"--out .*run/episodes is the own store of the train run in"):
        main(["collect", "--env", "robobrain/Reach-v0", "--episodes", "1", "--out", str(run / "episodes"),
              "--no-progress"])  # fmt: skip
    project = tmp_path / "project"  # a folder of episodes beside a config.json of the user's own: no run
    (project / "config.json").parent.mkdir()
    (project / "config.json").write_text("{}")
    for _ in range(2):
        main(["collect", "--env", "robobrain/Reach-v0", "--episodes", "1", "--num-envs", "1",
              "--episode-steps", "2", "--image-size", "16", "--out", str(project / "episodes"),
              "--no-progress"])  # fmt: skip
    assert len(EpisodeStore(project / "episodes")) == 2
    for command in (["train-wm", "--data", str(store), "--run-dir", str(store)],
                    ["train", "--run-dir", str(store)],
                    ["eval", "--policy", "random", "--out", str(store)]):  # fmt: skip
        with pytest.raises(ValueError, match=r"store is an episode store \(it holds manifest.json\)"):
            main([*command, "--no-progress"])
    assert sorted(p.name for p in store.iterdir()) == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "episodes"]
    assert not any((run / "episodes").iterdir())


def test_default_seeds_skip_evaluations_starts_and_stop_below_2_to_the_32(tmp_path):
    """After 100 default collections into a store the seeds walked into 1,000,000 +, evaluation's
    starts (its held-out episodes collected as training data); past 2**32 the planner's seed check
    refused a seed the user never passed."""
    out = tmp_path / "data"
    args = ["collect", "--env", "robobrain/Reach-v0", "--policy", "random", "--episodes", "2",
            "--num-envs", "2", "--episode-steps", "2", "--image-size", "8", "--out", str(out),
            "--no-progress"]  # fmt: skip
    main([*args, "--seed", "990000"])
    (out / ".seed-1100000").touch()  # (claimed by a collection beside this one: the walk goes on)
    main(args)
    assert sorted({ep.meta["seed"] for ep in EpisodeStore(out).load_all()}) == [990_000, 1_110_000]
    main([*args, "--seed", str(2**32 - 5_000)])
    with pytest.raises(ValueError, match=r"largest stored seed is 4294962296; no default --seed is left"):
        main(args)
    store = EpisodeStore(tmp_path / "claims")  # (the store method's walk)
    assert store.claim_seed(990_000, 10_000, avoid=range(999_999, 1_100_000)) == 990_000
    assert store.claim_seed(990_000, 10_000, avoid=range(999_999, 1_100_000)) == 1_100_000
    assert store.claim_seed(2**32 - 7_296, 10_000, limit=2**32) == 2**32 - 7_296
    with pytest.raises(ValueError, match="no unclaimed seed from 4294960000 below 4294967296"):
        store.claim_seed(2**32 - 7_296, 10_000, limit=2**32)


def test_collect_refuses_an_action_space_episodes_cannot_hold(tmp_path):
    """CartPole's Discrete(2): a policy's actions went in as float32 and gymnasium's own assertion
    came out of the env's step; now refused before the first reset."""
    vec = envs.make_vector_env("CartPole-v1", 1, image_size=8)
    with pytest.raises(ValueError, match=r"stores 1-D Box actions \[T, A\], got Discrete\(2\)"):
        collect_episodes(vec, RandomPolicy(1, seed=0), EpisodeStore(tmp_path / "s"), 1, progress=False)
    vec.close()
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


class FlagsAtStep(gym.Env):
    """Four-step episodes: success at step 2 only; the second episode ends unstable (as a robobrain
    task reports a simulation that blew up: truncated, ``info["sim_unstable"]``)."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        })  # fmt: skip
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.episode = -1

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pixels": np.full((8, 8, 3), self.t, np.uint8), "state": np.array([self.t], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        unstable = self.episode == 1 and self.t == 4
        info = {"success": self.t == 2, "sim_unstable": unstable}
        return self._obs(), float(self.t), False, self.t >= 4, info


def test_flags_are_stored_with_their_step_and_an_unstable_end_is_recorded(tmp_path):
    """A success flag one step late passed every other test (success held to the end of their
    episodes); an episode whose simulation blew up must say so in its meta."""
    vec = gym.vector.SyncVectorEnv([FlagsAtStep], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    store = EpisodeStore(tmp_path)
    collect_episodes(vec, RandomPolicy(1, seed=0), store, 3, seed=0, progress=False)
    episodes = store.load_all()
    for ep in episodes:
        assert ep.success.tolist() == [False, True, False, False]
        assert ep.reward.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert [ep.meta["sim_unstable"] for ep in episodes] == [False, True, False]
