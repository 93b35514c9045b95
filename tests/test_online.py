"""The online loop (`robobrain train`): runs end to end, learns, survives a kill, never stores a
transition across an episode boundary, refuses non-finite data."""

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.save_util import load_from_zip_file

from robobrain.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from robobrain.cli import VALUE_ERRORS_PROPAGATE, main, run_image_size
from robobrain.data import EpisodeStore
from robobrain.data.collect import collect_episodes
from robobrain.envs import make_vector_env
from robobrain.policies import RandomPolicy
from robobrain.rl.finetune import SB3Config
from robobrain.training.online import LoopState, OnlineConfig
from robobrain.training.resume import check_config, rng_state, set_rng_state

TINY = (
    "train --preset debug --env robobrain/Push-v0 --num-envs 2 --episode-steps 10 --seed-episodes 2 "
    "--pretrain-steps 10 --train-ratio 0.5 --mpc.horizon 4 --mpc.optim.num-samples 16 "
    "--mpc.optim.num-elites 4 --mpc.optim.iterations 2 --sb3.steps-per-iteration 32 --sb3.num-envs 8 "
    "--sb3.horizon 5 --sb3.start-states 64 --sb3.batch-size 32 --sb3.buffer-size 256 "
    "--sb3.learning-starts 16 --sb3.net-arch 32 32 --sb3.gradient-steps 1 --prior-samples 4 "
    "--eval-every 60 --eval-episodes 1 --checkpoint-every 20 --no-progress"
).split()


def run_args(run_dir: Path, env_steps: int) -> list[str]:
    return [*TINY, "--env-steps", str(env_steps), "--run-dir", str(run_dir)]


def episodes_by_iteration(run_dir: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, ep in EpisodeStore(run_dir / "episodes").episodes():
        counts[ep.meta["iteration"]] = counts.get(ep.meta["iteration"], 0) + 1
    return counts


def test_demo_trains_learns_and_writes_its_outputs(tmp_path):
    """`make demo` runs `robobrain demo`: the `train` loop with demo defaults (here shrunk)."""
    main(["demo", *run_args(tmp_path, 120)[1:]])
    rows = [line.split(",") for line in (tmp_path / "train.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    col = {k: i for i, k in enumerate(header)}
    steps = [int(r[col["env_steps"]]) for r in rows]
    assert steps == [20, 40, 60, 80, 100, 120]  # 2 seed episodes, then 2 envs x 10 steps per iteration
    wm_loss = [float(r[col["wm_loss"]]) for r in rows]
    assert wm_loss[-1] < 0.5 * wm_loss[0], wm_loss  # the world model learns from the loop's data
    assert [int(float(r[col["wm_episodes"]])) for r in rows] == [2, 4, 6, 8, 10, 12]  # all of it
    assert all(float(r[col["sb3_n_updates"]]) > 0 for r in rows[1:])  # SB3 fine-tunes every iteration
    assert rows[0][col["eval_success"]] != ""  # evaluated after the seed data and every 60 steps
    # The evaluations' seconds, inside wall_s (bench_online takes them out: the SAC peers have none).
    evals = [float(r[col["eval_s"]]) for r in rows if r[col["eval_s"]]]
    assert len(evals) == sum(r[col["eval_success"]] != "" for r in rows) and 0 < sum(evals) < float(
        rows[-1][col["wall_s"]]
    )
    # The collected episodes' mean return: what the exploring agent gets while success is still 0.
    returns = [float(r[col["train_return"]]) for r in rows]
    assert all(np.isfinite(returns)) and all(r < 0 for r in returns), returns  # Push rewards are distances
    assert episodes_by_iteration(tmp_path) == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2}
    for name in ("learning_curve.png", "final_eval.json", "eval/final/eval_info.json", "config.json"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "eval/final/videos").glob("*.mp4"))
    # Evaluated once at the budget: the final evaluation is the last row's.
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["final", "step_0000020", "step_0000080"]
    final = json.loads((tmp_path / "final_eval.json").read_text())
    assert final["mean_return"] == pytest.approx(float(rows[-1][col["eval_return"]]))
    ckpt = latest_checkpoint(tmp_path)
    assert (ckpt / "sb3/model.zip").exists() and (ckpt / "sb3/replay_buffer.npz").exists()
    # The run's checkpoint is a policy for the evaluation script, guided by its SB3 actor-critic; its
    # episodes are as long as the run's own evaluations' (--episode-steps 10), unless told.
    for guide, resolved, length in (("auto", "both", []), ("none", "none", ["--episode-steps", "3"])):
        out = tmp_path / f"eval_{guide}"
        main(["eval", "--policy", f"mpc:{tmp_path}", "--env", "robobrain/Push-v0", "--episodes", "1",
              "--num-envs", "1", "--samples", "32", "--elites", "4", "--iterations", "1", "--horizon", "4",
              "--guide", guide, "--video-episodes", "0", "--out", str(out), "--no-progress",
              "--seed", "7", *length])  # fmt: skip
        info = json.loads((out / "eval_info.json").read_text())
        assert (info["guide"], info["guide_resolved"]) == (guide, resolved)
        steps = 3 if length else 10
        assert info["episode_steps"] == steps and [e["length"] for e in info["episodes"]] == [steps]
        assert info["planner"]["prior_samples"] == (16 if guide == "auto" else None)  # load_policy's
        # The guide's prior samples draw from torch's generator: seeded with --seed after SB3's load,
        # which seeds it with the run's own seed (every --seed drew the same samples).
        assert torch.initial_seed() == 7
    out = tmp_path / "eval_few"  # fewer samples than the default 16 prior ones leave room for: all but one
    main(["eval", "--policy", f"mpc:{tmp_path}", "--episodes", "1", "--num-envs", "1", "--samples", "8",
          "--elites", "2", "--iterations", "1", "--horizon", "4", "--video-episodes", "0", "--out", str(out),
          "--no-progress"])  # fmt: skip
    assert json.loads((out / "eval_info.json").read_text())["planner"]["prior_samples"] == 7
    # Its world model trained on every episode: eval-wm's held-out split (recomputed with the preset's
    # fraction) would have reported trained-on episodes as held out.
    with pytest.raises(ValueError, match="none held out: pass --split all"):
        main(["eval-wm", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "episodes")])
    main(["eval-wm", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "episodes"), "--split", "all",
          "--context", "2", "--horizon", "2", "--max-windows", "4"])  # fmt: skip


def test_evaluating_changes_neither_the_training_nor_the_final_evaluation(tmp_path):
    """Each evaluation forks torch's global generator and seeds it (an SB3 guide's prior samples draw
    from it): evaluating every iteration or twice as rarely trains the same weights, and the final
    evaluation of those weights gives the same numbers."""
    often, rarely = tmp_path / "often", tmp_path / "rarely"
    main([*run_args(often, 80), "--eval-every", "0", "--eval-episodes", "2"])
    main([*run_args(rarely, 80), "--eval-every", "40", "--eval-episodes", "2"])
    assert len(list((often / "eval").iterdir())) == 4 and len(list((rarely / "eval").iterdir())) == 3
    a, b = (load_checkpoint(d, with_training_state=False) for d in (often, rarely))
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    zips = [latest_checkpoint(d) / "sb3" / "model.zip" for d in (often, rarely)]
    sb3 = [load_from_zip_file(z)[1]["policy"] for z in zips]
    for k, v in sb3[0].items():
        assert torch.equal(v, sb3[1][k]), k  # (SB3 samples its batches and actions from the global RNGs)
    finals = [json.loads((d / "final_eval.json").read_text()) for d in (often, rarely)]
    assert {k: v for k, v in finals[0].items() if "latency" not in k} == {
        k: v for k, v in finals[1].items() if "latency" not in k
    }


def _run_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    return subprocess.Popen(
        [sys.executable, "-m", "robobrain.cli", *args], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_killed_run_resumes_without_losing_or_repeating_episodes(tmp_path):
    """SIGKILL a run after its second checkpoint, mid-iteration; re-running the same command finishes
    it with every iteration's episodes stored exactly once, and with the same world model, SB3 model
    and data as a run that was never interrupted."""
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = _run_cli(run_args(killed, 100))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        ckpt = latest_checkpoint(killed) if (killed / "checkpoints" / "latest").exists() else None
        if ckpt is not None and load_checkpoint(ckpt).state["loop"]["env_steps"] >= 40:
            time.sleep(0.3)  # into the next iteration
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = load_checkpoint(latest_checkpoint(killed)).state["loop"]["env_steps"]
    assert before < 100

    main(run_args(killed, 100))  # the same command again: resumes
    main(run_args(straight, 100))
    assert episodes_by_iteration(killed) == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2}
    a, b = load_checkpoint(latest_checkpoint(killed)), load_checkpoint(latest_checkpoint(straight))
    assert {**a.state["loop"], "wall_s": 0} == {**b.state["loop"], "wall_s": 0}
    for name, tensor in b.model_state.items():
        torch.testing.assert_close(a.model_state[name], tensor, msg=name)
    from stable_baselines3.common.save_util import load_from_zip_file  # the SB3 model and its buffer too

    sb3_a, sb3_b = (load_from_zip_file(c.path / "sb3" / "model.zip")[1] for c in (a, b))
    assert len(sb3_b["policy"]) > 10  # actor and critics' weights
    for name, tensor in sb3_b["policy"].items():
        torch.testing.assert_close(sb3_a["policy"][name], tensor, msg=name)
    with (
        np.load(a.path / "sb3" / "replay_buffer.npz") as buf_a,
        np.load(b.path / "sb3" / "replay_buffer.npz") as buf_b,
    ):
        assert sorted(buf_a) == sorted(buf_b)
        for name in buf_b:
            np.testing.assert_array_equal(buf_a[name], buf_b[name], err_msg=name)
    eps_a = EpisodeStore(killed / "episodes").load_all()
    eps_b = EpisodeStore(straight / "episodes").load_all()
    for x, y in zip(eps_a, eps_b, strict=True):
        np.testing.assert_array_equal(x.action, y.action)
    steps = [int(line.split(",")[0]) for line in (killed / "train.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) == [20, 40, 60, 80, 100]  # no row logged twice


def test_resume_during_sb3_warm_up_equals_an_uninterrupted_run(tmp_path):
    """While SB3 is still in its warm-up (fewer steps than learning_starts, so it acts by sampling its
    action space), a resumed run fills the replay buffer with the same actions as a run never
    stopped: loading SB3 reseeds its action space, so the checkpoint carries that stream."""
    warm = ["--sb3.learning-starts", "1000"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    main([*run_args(resumed, 40), *warm])
    main([*run_args(resumed, 80), *warm])  # a larger budget resumes the run
    main([*run_args(straight, 80), *warm])
    buffers = [np.load(latest_checkpoint(d) / "sb3" / "replay_buffer.npz") for d in (resumed, straight)]
    assert int(buffers[1]["pos"]) == 12  # 3 rounds of 32 imagined steps over 8 envs, all in warm-up
    for name in ("actions", "observations", "rewards"):
        np.testing.assert_array_equal(buffers[0][name], buffers[1][name], err_msg=name)


def test_loop_state_loads_checkpoints_older_than_a_counter():
    """A counter added later keeps its initial value when an older checkpoint lacks it; any other
    missing counter is an error."""
    state = LoopState()
    saved = {**state.to_dict(), "env_steps": 300}
    del saved["last_return"]
    state.load(saved)
    assert state.env_steps == 300 and np.isnan(state.last_return)
    del saved["episodes"]
    with pytest.raises(KeyError, match="episodes"):
        LoopState().load(saved)
    # Each counter of its type: "episodes": true truncated the store to one episode, a null or a
    # string failed later in a traceback. A float counter may come as an int (JSON's 3 for 3.0).
    for bad in ({"episodes": True}, {"episodes": None}, {"iteration": "4"}, {"wall_s": "x"}):
        with pytest.raises(TypeError, match=f"loop state '{next(iter(bad))}' is"):
            LoopState().load({**state.to_dict(), **bad})
    state.load({**state.to_dict(), "wall_s": 3})
    assert state.wall_s == 3


def test_resume_refuses_a_changed_config_but_its_budget_or_device(tmp_path, caplog):
    main(run_args(tmp_path, 20))
    with pytest.raises(Exception, match="another config"):
        main([*run_args(tmp_path, 40), "--mpc.horizon", "5"])
    # A larger budget and another device are allowed (tests/test_cuda.py moves a run to CUDA and back).
    with caplog.at_level("INFO", logger="robobrain.training.online"):
        main([*run_args(tmp_path, 40), "--device", "cpu:0"])
    assert "resumed from" in caplog.text and "seeded afresh" not in caplog.text  # same kind of device
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt.state["loop"]["env_steps"] == 40 and ckpt.config["online"]["device"] == "cpu:0"
    # A run started before an option existed resumes with a warning; one whose option is gone too.
    cfg_file = latest_checkpoint(tmp_path) / "config.json"
    old = json.loads(cfg_file.read_text())
    del old["online"]["sb3"]["action_noise"]
    old["online"]["retired_option"] = 1
    cfg_file.write_text(json.dumps(old))
    with caplog.at_level("WARNING", logger="robobrain.training.online"):
        main(run_args(tmp_path, 60))
    assert "predates the options {'sb3.action_noise': 0.1}" in caplog.text
    assert "no longer knows, ignored: ['retired_option']" in caplog.text
    assert load_checkpoint(latest_checkpoint(tmp_path)).state["loop"]["env_steps"] == 60
    # InvertedPendulum acts in [-3, 3]: the planner may, but not the SB3 guide fine-tuned in imagination.
    with pytest.raises(ValueError, match=r"SB3 actor-critic .* acts in \[-1, 1\]"):
        main([*run_args(tmp_path / "wide", 20), "--env", "InvertedPendulum-v5", "--mpc.optim.low", "-3",
              "--mpc.optim.high", "3"])  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"RescaleAction, or plan in the env's range: --mpc\.optim\.low -3 "
        r"--mpc\.optim\.high 3 --mpc\.optim\.init-std 1\.5 --mpc\.optim\.min-std 0\.15 "
        r"--mpc\.exploration-std 0\.9 --prior-samples 0 --no-use-value$",
    ):  # (CLI flags)
        main([*run_args(tmp_path / "wide", 20), "--env", "InvertedPendulum-v5"])
    with pytest.raises(ValueError, match=r"acts in \[-1, 1\]: leave --mpc.optim.low/high \(-0.5, 1.0\)"):
        main([*run_args(tmp_path / "wide", 20), "--mpc.optim.low", "-0.5"])  # (not a wrapper, nor SB3 flags)
    with pytest.raises(ValueError if VALUE_ERRORS_PROPAGATE else SystemExit):  # before any work
        main([*run_args(tmp_path / "foo", 20), "--sb3.algo", "FOO"])
    assert not (tmp_path / "foo").exists()
    with pytest.raises(ValueError, match="unknown stable-baselines3 algorithm 'FOO'"):
        SB3Config(algo="FOO")
    with caplog.at_level("WARNING", logger="robobrain.training.online"):
        main([*run_args(tmp_path / "seedonly", 10), "--seed-episodes", "3"])
    assert "the planner never acts" in caplog.text
    # 3 seed episodes over 2 envs: the fourth, simulated alongside the third, is kept, not discarded.
    seeded = EpisodeStore(tmp_path / "seedonly" / "episodes").load_all()
    state = load_checkpoint(latest_checkpoint(tmp_path / "seedonly")).state["loop"]
    assert len(seeded) == state["episodes"] == 4 and state["env_steps"] == sum(len(e.action) for e in seeded)
    with caplog.at_level("WARNING", logger="robobrain.training.online"):  # (refused before padding)
        main([*run_args(tmp_path / "short", 20), "--episode-steps", "6"])
    assert "windows of 8 observations, but robobrain/Push-v0 episodes have 6 steps" in caplog.text
    assert load_checkpoint(latest_checkpoint(tmp_path / "short")).state["trainer"]["step"] > 0
    state_file = latest_checkpoint(tmp_path) / "training_state" / "state.json"
    state = json.loads(state_file.read_text())
    rng, iteration = state["rng"], state["loop"]["iteration"]
    del state["loop"]["iteration"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"training state does not fit \(KeyError: .loop state has no"):
        main(run_args(tmp_path, 60))
    state = json.loads(state_file.read_text())
    state["loop"]["iteration"] = iteration
    state["rng"] = {k: v for k, v in rng.items() if k != "torch"}  # (a KeyError traceback, once set)
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"its training state does not fit \(KeyError: 'torch'\)"):
        main(run_args(tmp_path, 60))


def test_path_options_are_recorded_absolute_whatever_type_they_come_as():
    """A Path from the Python API failed config.json's write, after the seed episodes were collected."""
    from robobrain.training.resume import resolved_paths

    for given in ("rel", Path("rel")):
        assert resolved_paths({"seed_data": given, "env": "x"}) == {
            "seed_data": str(Path("rel").resolve()),
            "env": "x",
        }


def test_resume_compares_elites_left_out_as_the_number_they_stand_for(tmp_path):
    """num_elites left out is an eighth of num_samples; runs made before that stored the number."""

    def online(elites):
        return {"online": {"mpc": {"optim": {"num_samples": 256, "num_elites": elites}}}}

    check_config(online(32), online(None), tmp_path)  # the same planner: resumes
    check_config(online(None), online(32), tmp_path)
    with pytest.raises(CheckpointError, match="another config"):
        check_config(online(None), online(16), tmp_path)


def test_a_sac_run_from_before_soft_value_resumes_only_with_its_soft_critic(tmp_path):
    """A SAC run checkpointed before ``sb3.soft_value`` existed trained SB3's soft Q: taken for a new
    option, it went on with the reward-only critic under a warning that said it had had none."""

    def online(algo, **sb3):
        return {"online": {"sb3": {"algo": algo, **sb3}}}

    with pytest.raises(CheckpointError, match=r"'sb3.soft_value': \(True, False\).*\(--sb3.soft-value: it"):
        check_config(online("SAC"), online("SAC", soft_value=False), tmp_path)
    check_config(online("SAC"), online("SAC", soft_value=True), tmp_path)
    check_config(online("TD3"), online("TD3", soft_value=False), tmp_path)  # (no soft Q to keep)
    unguided = {"prior_samples": 0, "use_value": False}  # (no SB3 model at all: nothing to keep)
    check_config(
        {"online": {**online("SAC")["online"], **unguided}},
        {"online": {**online("SAC", soft_value=False)["online"], **unguided}},
        tmp_path,
    )
    with pytest.raises(CheckpointError, match=r"'sb3.soft_value': \(True, False\)"):  # (prior only)
        check_config(
            {"online": {**online("SAC")["online"], "use_value": False}},
            {"online": {**online("SAC", soft_value=False)["online"], "use_value": False}},
            tmp_path,
        )
    check_config(online("SAC", soft_value=False), online("SAC", soft_value=False), tmp_path)


def test_resume_trains_with_the_runs_own_settings_and_size(tmp_path, caplog):
    """The training settings come from the checkpoint (a preset changed since would have changed a
    resumed run silently); --image-size may be left out on resume, another one is refused."""
    main([*run_args(tmp_path, 20), "--image-size", "16"])
    cfg_file = latest_checkpoint(tmp_path) / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["train"]["batch_size"] = 3  # as if the debug preset's had been 3 when the run started
    cfg_file.write_text(json.dumps(cfg))
    with caplog.at_level("WARNING", logger="robobrain.training.online"):
        main(run_args(tmp_path, 40))  # (no --image-size: the run's own)
    assert "trains with the settings it started with" in caplog.text and "'batch_size': (3, " in caplog.text
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt.config["train"]["batch_size"] == 3 and ckpt.state["loop"]["env_steps"] == 40
    # Killed after its last row but before the drawing: the same command again redraws the curve.
    png = tmp_path / "learning_curve.png"
    os.utime(png, (0, 0))
    main(run_args(tmp_path, 40))
    assert png.stat().st_mtime > 0
    with pytest.raises(CheckpointError, match="sees 16 px frames, the run's envs render 32 px"):
        main([*run_args(tmp_path, 60), "--image-size", "32"])


def test_the_first_rows_training_figures_cover_every_seed_episode(tmp_path):
    """With scripted and random seed episodes, the first row's train_return was the random ones' alone."""
    main([*run_args(tmp_path, 40), "--scripted-fraction", "0.5"])
    episodes = EpisodeStore(tmp_path / "episodes").load_all()
    assert sorted(ep.meta["policy"] for ep in episodes) == ["random", "random", "scripted", "scripted"]
    header, first = (line.split(",") for line in (tmp_path / "train.csv").read_text().splitlines()[:2])
    row = dict(zip(header, first, strict=True))
    assert float(row["train_return"]) == pytest.approx(np.mean([ep.reward.sum() for ep in episodes]))
    assert float(row["train_success"]) == pytest.approx(np.mean([ep.success[-1] for ep in episodes]))


def test_run_with_proprioception(tmp_path):
    """--proprio: the world model reads the gripper's state beside the pixels through the whole loop
    (fitting, SAC in imagination from encoded real states, planning, evaluation)."""
    main([*run_args(tmp_path, 40), "--proprio"])
    ckpt = load_checkpoint(tmp_path, with_training_state=False)
    wm = ckpt.config["world_model"]
    assert (wm["use_proprio"], wm["proprio_start"], wm["proprio_dim"]) == (True, 0, 7)
    report = json.loads((tmp_path / "eval" / "final" / "eval_info.json").read_text())
    assert report["summary"]["episodes"] == 1


def test_run_starts_from_offline_data_and_an_offline_world_model(tmp_path, caplog, monkeypatch):
    """--seed-data trains on an offline store beside the run's own episodes (never copied into the
    run, never counted as the run's env steps); --init-world-model starts from an offline checkpoint."""
    offline, wm, run = tmp_path / "offline", tmp_path / "wm", tmp_path / "run"
    vec = make_vector_env("robobrain/Push-v0", 2, image_size=32, max_episode_steps=10)
    meta = {"env_id": "robobrain/Push-v0", "policy": "random"}
    collect_episodes(vec, RandomPolicy(3, seed=0), EpisodeStore(offline), 4, seed=0, meta=meta,
                     progress=False)  # fmt: skip
    vec.close()
    main(["train-wm", "--data", str(offline), "--run-dir", str(wm), "--preset", "debug", "--steps", "5",
          "--no-progress"])  # fmt: skip
    seeded = [*run_args(run, 0), "--seed-data", str(offline), "--init-world-model", str(wm),
              "--seed-episodes", "0", "--pretrain-steps", "0", "--own-data-repeat", "3"]  # fmt: skip
    main(seeded)  # no env step, no update: the run's first checkpoint is the offline model
    # A run killed before its first checkpoint starts over, and none of its rows stay (step 0's did).
    shutil.rmtree(run / "checkpoints")
    main(seeded)
    assert [line.split(",")[0] for line in (run / "train.csv").read_text().splitlines()[1:]] == ["0"]
    init, first = load_checkpoint(latest_checkpoint(wm)), load_checkpoint(latest_checkpoint(run))
    assert first.config["world_model"] == init.config["world_model"]
    for name, tensor in init.model_state.items():
        torch.testing.assert_close(first.model_state[name], tensor, msg=name)
    assert len(EpisodeStore(run / "episodes")) == 0

    seeded[seeded.index("--env-steps") + 1] = "40"
    vec = make_vector_env("robobrain/Push-v0", 1, image_size=32, max_episode_steps=10)
    collect_episodes(vec, RandomPolicy(3, seed=1), EpisodeStore(offline), 1, seed=50, meta=meta,
                     progress=False)  # fmt: skip
    vec.close()
    # The same store spelled relative to another directory is the same store (it was "another config").
    monkeypatch.chdir(tmp_path)
    seeded[seeded.index("--seed-data") + 1] = "offline"
    with caplog.at_level("WARNING", logger="robobrain.training.online"):
        main(seeded)  # extends (resumes) the run: the offline data is read again, not copied
    assert "holds other episodes than when" in caplog.text and "(4 then, 5 now)" in caplog.text
    assert episodes_by_iteration(run) == {1: 2, 2: 2}
    rows = [line.split(",") for line in (run / "train.csv").read_text().splitlines()]
    walls = [float(r[rows[0].index("wall_s")]) for r in rows[1:]]
    # The checkpoint holds the wall clock of the row it ends, so the resumed run loses no time.
    assert first.state["loop"]["wall_s"] == pytest.approx(walls[0]) and walls == sorted(walls)
    assert load_checkpoint(latest_checkpoint(run)).state["loop"]["env_steps"] == 40
    assert len(EpisodeStore(offline)) == 5
    with pytest.raises(ValueError, match="no such directory"):
        main([*run_args(tmp_path / "other", 20), "--seed-data", str(tmp_path / "missing")])
    assert not (tmp_path / "other").exists()  # (a refused run leaves no empty run directory behind)
    # A train-wm run is not a train run: refused in one line (all its options were "new" options),
    # with nothing written into it.
    with pytest.raises(CheckpointError, match=r"is not a `robobrain train` run .* --init-world-model"):
        main(run_args(wm, 20))
    assert not (wm / "episodes").exists()
    before = latest_checkpoint(run)  # and the other way round (it failed at the trainer's state, after a
    with pytest.raises(CheckpointError, match="is a `robobrain train` run, not a train-wm one"):  # warning)
        main(["train-wm", "--data", str(offline), "--preset", "debug", "--steps", "1", "--run-dir", str(run)])
    assert latest_checkpoint(run) == before
    with pytest.raises(ValueError if VALUE_ERRORS_PROPAGATE else SystemExit):  # (when the flags are read)
        main([*run_args(tmp_path / "other", 20), "--seed-episodes", "0"])
    # Sizes are checked before the seed episodes: they were collected, then the run failed.
    with pytest.raises(CheckpointError, match="sees 32 px frames, the run's envs render 16 px"):
        main([*run_args(tmp_path / "small", 20), "--image-size", "16", "--init-world-model", str(wm)])
    assert not (tmp_path / "small").exists()  # (nor an empty store)
    # What the run asks of its world model, the init model must have (it was dropped without a word;
    # --explore-bonus failed after the seed episodes and pretraining).
    for flags, match in (
        (["--proprio"], "has proprio False, not the True --proprio"),
        (["--ensemble", "4"], "has ensemble 0, not the 4 --ensemble"),
        (["--explore-bonus", "1"], "has no ensemble, which --explore-bonus needs"),
    ):
        with pytest.raises(CheckpointError, match=match):
            main([*run_args(tmp_path / "asks", 20), "--init-world-model", str(wm), *flags])
        assert not (tmp_path / "asks").exists()
    with pytest.raises(ValueError, match=r"episodes of \[32\] px, the run's envs render 16 px"):
        main([*run_args(tmp_path / "small", 20), "--image-size", "16", "--seed-data", str(offline)])
    # Without --image-size the envs render what the offline model or data sees (the preset's 64 px did).
    assert run_image_size(OnlineConfig(preset="cpu", init_world_model=str(wm))) == 32
    assert run_image_size(OnlineConfig(preset="cpu", seed_data=str(offline))) == 32
    assert run_image_size(OnlineConfig(preset="cpu")) == 64
    # A resumed run takes the size from its own checkpoint: the offline model may be gone by then.
    wm.rename(tmp_path / "wm-moved")
    resumed = OnlineConfig(preset="cpu", init_world_model=str(wm))
    assert run_image_size(resumed, run) == 32
    with pytest.raises(CheckpointError, match="does not exist"):
        run_image_size(resumed, tmp_path / "fresh-run")


def test_flags_out_of_range_are_refused_when_read(tmp_path):
    # (a disagreement penalty without an ensemble was refused when the planner was built: after the
    # seed episodes and pretraining, which it left behind)
    with pytest.raises(ValueError, match=r"mpc\.disagreement_penalty needs a world model with an ensemble"):
        main([*run_args(tmp_path / "dp", 40), "--mpc.disagreement-penalty", "0.5"])
    assert not (tmp_path / "dp").exists()
    # (an infinite train_ratio owed inf updates: an OverflowError after a checkpoint that kept it)
    for name, value in (("env_steps", -5), ("eval_episodes", 0), ("eval_every", -1), ("train_ratio", -1.0),
                        ("pretrain_steps", -5), ("num_envs", 0), ("train_ratio", float("nan")),
                        ("episode_steps", 0), ("train_ratio", float("inf")),
                        ("explore_bonus", float("inf"))):  # fmt: skip
        flag = "--" + name.replace("_", "-")
        need = "finite, got inf" if value == float("inf") else ">= .*"
        with pytest.raises(ValueError, match=f"{name} must be {need} \\({flag}\\)"):  # the flag named too
            OnlineConfig(**{name: value})
    with pytest.raises(ValueError, match=r"scripted_fraction must be in \[0, 1\], got 1.5 \(--scripted"):
        OnlineConfig(scripted_fraction=1.5)
    with pytest.raises(ValueError, match=r"power of two >= 16, got 24 \(--image-size\)"):  # (it failed
        OnlineConfig(image_size=24)  # after the seed episodes, when the world model was built)
    # The critic's value continues the planner's discounted sum only if both discount alike.
    with pytest.raises(
        ValueError, match=r"gamma 0.9, .* discounts by 0.99: .*--sb3.gamma\) or pass --no-use-value"
    ):
        OnlineConfig(sb3=SB3Config(gamma=0.9))
    OnlineConfig(sb3=SB3Config(gamma=0.9), use_value=False)  # (the actor's prior alone)
    # The planner keeps num_samples - 1 prior samples; more were rolled out and thrown away.
    with pytest.raises(
        ValueError, match=r"prior_samples 256 must be below num_samples 256 \(--prior-samples"
    ):
        OnlineConfig(prior_samples=256)
    # SB3's sizes failed at the first fine-tuning round, after a checkpoint that then refused the fix.
    for name, value, match in (("start_states", 0, ">= 1"), ("num_envs", 0, ">= 1"), ("gamma", 1.5, "in"),
                               ("buffer_size", 8, ">= 16"), ("learning_rate", float("nan"), "> 0"),
                               ("net_arch", (), "layer widths")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must be {match}.*--sb3.{name.replace('_', '-')}"):
            SB3Config(**{name: value})
    from robobrain.rl.behaviour_prior import BehaviourPriorConfig

    with pytest.raises(ValueError, match="steps must be >= 1"):  # (an AssertionError after fitting nothing)
        BehaviourPriorConfig(steps=0)


class CountdownEnv(gym.Env):
    """Terminates at step k; the state carries the step count, so a transition across a reset would
    show as a count that does not go up by one. Returns a NaN reward at step ``nan_at``."""

    def __init__(self, k: int = 3, nan_at: int | None = None) -> None:
        self.k, self.nan_at, self.t = k, nan_at, 0
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        })  # fmt: skip
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pixels": np.full((8, 8, 3), self.t, np.uint8), "state": np.array([self.t], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = float("nan") if self.t == self.nan_at else 1.0
        return self._obs(), reward, self.t >= self.k, False, {"success": False}


def test_autoreset_never_stores_a_transition_across_episodes(tmp_path):
    vec = gym.vector.SyncVectorEnv(
        [lambda k=k: CountdownEnv(k) for k in (3, 4)], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
    )
    store = EpisodeStore(tmp_path)
    result = collect_episodes(vec, RandomPolicy(1, seed=0), store, 6, seed=0, progress=False)
    assert len(result.names) == 6
    for _, ep in store.episodes():
        assert len(ep) in (3, 4) and ep.terminated
        np.testing.assert_array_equal(ep.state[:, 0], np.arange(len(ep) + 1))  # 0, 1, ..., k: no jump
    assert result.env_steps >= sum(len(ep) for ep in store.load_all())


def test_non_finite_env_output_stops_with_a_clear_error(tmp_path):
    vec = gym.vector.SyncVectorEnv(
        [lambda: CountdownEnv(5, nan_at=2)], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
    )
    with pytest.raises(FloatingPointError, match="env 0 returned a non-finite reward"):
        collect_episodes(vec, RandomPolicy(1, seed=0), EpisodeStore(tmp_path), 2, progress=False)
    assert len(EpisodeStore(tmp_path)) == 0


class NaNResetEnv(CountdownEnv):
    """A CountdownEnv whose ``bad_reset``-th reset (0: the first) returns a NaN state."""

    def __init__(self, k: int, bad_reset: int) -> None:
        super().__init__(k)
        self.resets, self.bad_reset = 0, bad_reset

    def _obs(self) -> dict[str, np.ndarray]:
        obs = super()._obs()
        if self.t == 0 and self.resets - 1 == self.bad_reset:
            obs["state"][:] = np.nan
        return obs

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        return super().reset(seed=seed, options=options)


@pytest.mark.parametrize("bad_reset, stored", [(0, 0), (1, 1)])
def test_a_non_finite_reset_observation_is_named_as_one(tmp_path, bad_reset, stored):
    """The NaN is the next episode's first state: the error says so and names no step of the episode
    before it, which was stored whole (it blamed that episode, and said nothing of it was stored)."""
    vec = gym.vector.SyncVectorEnv(
        [lambda: NaNResetEnv(3, bad_reset)], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
    )
    with pytest.raises(FloatingPointError, match=r"env 0 returned a non-finite state on reset"):
        collect_episodes(vec, RandomPolicy(1, seed=0), EpisodeStore(tmp_path), 3, progress=False)
    assert [len(ep) for ep in EpisodeStore(tmp_path).load_all()] == [3] * stored


def test_every_preset_trains_on_the_tasks_episodes():
    from robobrain.config import PRESETS
    from robobrain.envs import EPISODE_STEPS

    for name, preset in PRESETS.items():  # windows of seq_len observations; episodes have steps + 1
        assert preset.train.seq_len <= EPISODE_STEPS + 1, name


def test_exploration_bonus_plans_for_disagreement_while_collecting_only(tmp_path):
    """--explore-bonus: the collecting planner adds the ensemble's disagreement to its score, the
    evaluating one does not; with neither an SB3 prior nor its value the loop trains no SB3 model."""
    from robobrain.planning import MPCConfig, OptimizerConfig
    from robobrain.policies.online import online_factories
    from robobrain.training.online import OnlineConfig, OnlineLoop

    mpc = MPCConfig(
        horizon=3, exploration_std=0.3, exploration_plan_std=0.5,
        optim=OptimizerConfig(num_samples=8, num_elites=2, iterations=1),
    )  # fmt: skip
    cfg = OnlineConfig(
        preset="debug", env_steps=20, num_envs=2, episode_steps=10, seed_episodes=2, pretrain_steps=5,
        mpc=mpc, prior_samples=0, use_value=False, ensemble=2, explore_bonus=0.5, eval_every=1000,
        eval_episodes=1, seed=3,
    )  # fmt: skip
    loop = OnlineLoop(cfg, tmp_path, online_factories(cfg.env, 32, "cpu", 10), progress=False)
    try:
        loop.run()
        assert loop.model is not None and loop.model.cfg.ensemble == 2
        assert loop.planner.cfg.disagreement_penalty == -0.5 and loop.planner.cfg.exploration_std == 0.3
        evaluating = loop._make_planner(explore=False)
        assert evaluating.cfg.disagreement_penalty == 0.0 and evaluating.cfg.exploration_std == 0.0
        assert loop.planner.cfg.exploration_plan_std == 0.5 and evaluating.cfg.exploration_plan_std == 0.0
        assert (loop.planner.cfg.seed, evaluating.cfg.seed) == (3, 4)  # --seed reaches the planner
        assert loop.sb3 is None
        # The critic learns what the evaluating planner scores: its disagreement penalty, not the bonus.
        assert loop._imagination_env(0).dynamics.disagreement_penalty == 0.0
        loop.cfg = dataclasses.replace(cfg, mpc=dataclasses.replace(mpc, disagreement_penalty=0.2))
        assert loop._imagination_env(0).dynamics.disagreement_penalty == 0.2
    finally:
        loop.envs.close()
    assert not (latest_checkpoint(tmp_path) / "sb3").exists()
    with pytest.raises(ValueError, match="needs a world model with an ensemble"):
        main([*run_args(tmp_path / "b", 20), "--explore-bonus", "0.5"])
    with pytest.raises(ValueError, match="explore_bonus must be >= 0"):
        OnlineConfig(explore_bonus=-1.0)


def test_rng_state_round_trips_every_global_stream_through_json():
    """SB3's load reseeds Python's, numpy's and torch's global RNGs; the loop's checkpoint restores all."""
    state = json.loads(json.dumps(rng_state()))
    first = (random.random(), np.random.rand(), torch.rand(()).item())  # noqa: NPY002
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # noqa: NPY002
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == first  # noqa: NPY002


def test_the_guide_waits_for_sb3s_first_gradient_step():
    """Before SB3's first update its actor and critic are the random initial ones: an off-policy model
    at exactly learning_starts guided the planner for a whole iteration; PPO and A2C waited for 500
    steps of a setting they ignore. Readiness is SB3's own update count."""
    from types import SimpleNamespace

    from robobrain.training.online import OnlineLoop

    cfg = OnlineConfig()
    space = gym.spaces.Box(-1.0, 1.0, (3,))
    sac_policy = SimpleNamespace(actor=None, critic=None)  # (what ActorCriticGuide reads of a SAC)
    ppo_policy = SimpleNamespace(predict_values=None)  # (and of a PPO)
    for policy, updates, ready in ((sac_policy, 0, False), (sac_policy, 4, True), (ppo_policy, 0, False),
                                   (ppo_policy, 1, True)):  # fmt: skip
        sb3 = SimpleNamespace(_n_updates=updates, policy=policy, action_space=space, replay_buffer=None)
        loop = SimpleNamespace(cfg=cfg, sb3=sb3, _uses_sb3=lambda: True)
        assert (OnlineLoop._guide(loop) is not None) == ready  # type: ignore[arg-type]


def test_the_learning_curve_draws_what_train_csv_holds(tmp_path, monkeypatch):
    """Each series against env steps, blank and NaN cells skipped, success and return in their own
    panel (only the PNG's existence was checked: a figure with nothing plotted passed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robobrain.training.curves import plot_learning_curve

    (tmp_path / "train.csv").write_text(
        "env_steps,train_success,train_return,eval_success,eval_return,wm_loss\n"
        "20,0.0,-5.0,0.25,-4.0,1.0\n40,0.5,-3.0,,,0.5\n60,nan,-2.0,0.75,-1.5,0.2\n"
    )
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)  # keep the figure to read its lines back
    out = plot_learning_curve(tmp_path / "train.csv", tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = closed
    series = {
        (ax.get_title(), line.get_label()): (list(line.get_xdata()), list(line.get_ydata()))
        for ax in fig.axes
        for line in ax.get_lines()
    }
    assert series == {
        ("success", "evaluation"): ([20.0, 60.0], [0.25, 0.75]),
        ("success", "training episodes"): ([20.0, 40.0], [0.0, 0.5]),
        ("return", "evaluation"): ([20.0, 60.0], [-4.0, -1.5]),
        ("return", "training episodes"): ([20.0, 40.0, 60.0], [-5.0, -3.0, -2.0]),
    }
    assert fig.axes[0].get_ylim() == (-0.05, 1.05)
    image = plt.imread(out)
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 10  # not a blank canvas
    # An env that reports no success (Pendulum): its panel says so, and matplotlib warns of nothing.
    (tmp_path / "train.csv").write_text(
        "env_steps,train_success,train_return,eval_success,eval_return\n20,nan,-5.0,nan,-4.0\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_learning_curve(tmp_path / "train.csv", tmp_path / "curve.png")
    success_panel = closed[-1].axes[0]
    assert not success_panel.lines and [t.get_text() for t in success_panel.texts] == ["no success reported"]


def test_a_run_directory_in_use_is_refused_before_anything_is_written(tmp_path):
    """The same command started again while the first still ran resumed from the first's checkpoint
    and truncated the episodes it had written since. (A killed holder releases it: the killed-run
    test above restarts in its directory.)"""
    from robobrain.checkpoint import RunInUseError, exclusive_run
    from robobrain.config import get_preset
    from robobrain.training.wm_trainer import train_world_model

    run = tmp_path / "run"
    with exclusive_run(run, "train"):  # (another process; a second open of the directory conflicts too)
        with pytest.raises(RunInUseError, match="another process is training in this run directory"):
            main(run_args(run, 20))
        with pytest.raises(RunInUseError):
            train_world_model(tmp_path / "no-data", run, get_preset("debug"), steps=1, progress=False)
        assert list(run.iterdir()) == []
    main(run_args(run, 20))  # released
    assert load_checkpoint(latest_checkpoint(run)).state["loop"]["env_steps"] == 20


def test_train_success_is_nan_for_an_env_that_reports_none():
    """As eval's null success_rate (train.csv had train_success 0.0 beside eval_success NaN)."""
    from types import SimpleNamespace

    from robobrain.training.online import OnlineLoop
    from tests.test_store import make_episode

    quiet, succeeded, failed = make_episode(3), make_episode(3), make_episode(3)
    quiet.meta["reports_success"] = False
    failed.success[:] = False
    loop = SimpleNamespace(state=LoopState())
    OnlineLoop._record_training_episodes(loop, [quiet])
    assert np.isnan(loop.state.last_success)
    OnlineLoop._record_training_episodes(loop, [quiet, succeeded, failed])  # (older episodes: reported)
    assert loop.state.last_success == 0.5


def test_a_diverging_world_model_says_what_the_run_kept(tmp_path, monkeypatch):
    from robobrain.policies.online import online_factories
    from robobrain.training.online import OnlineConfig, OnlineLoop
    from robobrain.training.wm_trainer import NonFiniteLossError
    from robobrain.world_model import WorldModel

    real = WorldModel.loss
    monkeypatch.setattr(WorldModel, "loss", lambda self, batch: (real(self, batch)[0] * float("nan"), {}))
    cfg = OnlineConfig(
        preset="debug", env_steps=20, num_envs=2, episode_steps=10, seed_episodes=2, pretrain_steps=40,
        prior_samples=0, use_value=False, eval_every=1000, eval_episodes=1,
    )  # fmt: skip
    loop = OnlineLoop(cfg, tmp_path, online_factories(cfg.env, 32, "cpu", 10), progress=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite .*\. Kept: no checkpoint of the run"):
        loop.run()
