"""Details of the online loop (robobrain/training/online.py) and its resume (robobrain/training/
resume.py) that a mutation audit found unpinned: each test fails on a small code change that the rest
of the suite let through (named in its docstring: M.. in online.py, R.. in resume.py)."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from robobrain.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from robobrain.cli import main
from robobrain.config import get_preset, to_dict
from robobrain.data import EpisodeStore
from robobrain.training import online
from robobrain.training.online import LoopState, OnlineConfig, OnlineLoop
from robobrain.training.resume import (
    check_config,
    fingerprint,
    flatten,
    generator_states,
    set_generator_states,
)
from tests.test_online import run_args
from tests.test_online_bookkeeping import _Logger, _stub
from tests.test_store import make_episode


# --- config and counters (cheap) ----------------------------------------------------------------
def test_negative_seed_settings_are_refused_with_seed_data_too():
    """M01 (`seed_episodes < 0` weakened), M02 (lower bound of scripted_fraction dropped: -0.5 of 20
    made 30 random seed episodes)."""
    with pytest.raises(ValueError, match="seed_episodes must be > 0"):
        OnlineConfig(seed_episodes=-1, seed_data="offline")
    with pytest.raises(ValueError, match=r"scripted_fraction must be in \[0, 1\], got -0.5"):
        OnlineConfig(scripted_fraction=-0.5)
    for seed in (-1, 2**32):  # (SB3's np.random.seed takes no more than 32 bits)
        with pytest.raises(ValueError, match=r"seed \(--seed\) must be in \[0, 2\*\*32\)"):
            OnlineConfig(seed=seed)


def test_settings_nothing_reads_are_refused_when_a_run_starts(tmp_path):
    """--mpc.optim.temperature with CEM, --own-data-repeat without --seed-data, no SB3 gradient step
    (the run planned with random nets throughout): accepted, recorded (so a resume had to repeat them),
    and read by nothing. Refused when a run starts, not on resume: a run an older robobrain started
    with one could neither go on (refused) nor change it (another config)."""
    from robobrain.training.online import check_read_settings

    cem = OnlineConfig().mpc
    hot = dataclasses.replace(cem, optim=dataclasses.replace(cem.optim, temperature=7.0))
    ppo = dataclasses.replace(OnlineConfig().sb3, algo="PPO", gradient_steps=0)
    sac = dataclasses.replace(ppo, algo="SAC")
    for cfg, said in ((OnlineConfig(mpc=hot), r"temperature 7.0: only --mpc.optimizer mppi reads it"),
                      (OnlineConfig(own_data_repeat=3), "without --seed-data it changes nothing"),
                      (OnlineConfig(sb3=sac), "SAC would never train")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            check_read_settings(cfg)
    for cfg in (OnlineConfig(mpc=dataclasses.replace(hot, optimizer="mppi")), OnlineConfig(sb3=ppo),
                OnlineConfig(own_data_repeat=3, seed_data="offline")):  # fmt: skip
        check_read_settings(cfg)  # (MPPI reads a temperature; PPO takes no gradient_steps)
    with pytest.raises(ValueError, match="without --seed-data it changes nothing"):
        main([*run_args(tmp_path, 20), "--own-data-repeat", "2"])
    main(run_args(tmp_path, 20))  # a run started (as an older robobrain let it) with --own-data-repeat 2:
    config = latest_checkpoint(tmp_path) / "config.json"
    config.write_text(config.read_text().replace('"own_data_repeat": 1', '"own_data_repeat": 2'))
    main([*run_args(tmp_path, 40), "--own-data-repeat", "2"])  # it goes on
    assert load_checkpoint(tmp_path).state["loop"]["env_steps"] == 40


def test_loop_state_int_counters_refuse_floats():
    """M03: "episodes": 4.0 loaded, then store.truncate(4.0) failed in a slicing traceback."""
    for key in ("iteration", "env_steps", "episodes", "last_eval", "last_checkpoint"):
        with pytest.raises(TypeError, match=f"loop state '{key}' is 4.0, not an int"):
            LoopState().load({**LoopState().to_dict(), key: 4.0})


def test_resume_refuses_any_changed_option_but_budget_and_device(tmp_path):
    """R03 (seed made resumable), R07 (sb3.* changes ignored): every other option must match."""
    saved = json.loads(json.dumps({"online": to_dict(OnlineConfig())}))
    check_config(saved, {"online": {**saved["online"], "env_steps": 7, "device": "cuda"}}, tmp_path)
    for key, value in flatten(saved["online"]).items():
        if key in ("env_steps", "device", "image_size"):  # (image_size None: the run's own)
            continue
        other = (
            not value
            if isinstance(value, bool)
            else 1
            if value is None
            else value + 1
            if isinstance(value, int | float)
            else [*value, 1]
            if isinstance(value, list)
            else value + "x"
        )
        now = json.loads(json.dumps(saved))
        *parents, leaf = key.split(".")
        node = now["online"]
        for p in parents:
            node = node[p]
        node[leaf] = other
        with pytest.raises(CheckpointError, match="another config"):
            check_config(saved, now, tmp_path)


def test_offline_fingerprint_tells_other_episodes_of_the_same_number():
    """R02 (the hash dropped): a --seed-data store whose episodes were replaced resumed silently."""
    assert fingerprint(["a.npz", "b.npz"]) != fingerprint(["a.npz", "c.npz"])


def test_reseeded_planner_generators_draw_different_streams():
    """R01: on a device change the noise generator was seeded like the optimizer's (MPC seeds them
    with seed and seed + 1), so the exploration noise repeated the candidates' draws."""
    mpc = SimpleNamespace(optimizer=SimpleNamespace(generator=torch.Generator()), noise_gen=torch.Generator())
    set_generator_states(SimpleNamespace(mpc=mpc), {}, reseed=5)
    assert not torch.equal(
        torch.randn(8, generator=mpc.optimizer.generator), torch.randn(8, generator=mpc.noise_gen)
    )


# --- the loop's phases, on stub loops (cheap) ----------------------------------------------------
def test_seed_data_rounds_the_scripted_share_and_offsets_its_seeds():
    """M04 (scripted episodes started from the random ones' initial states), M05 (int() for round())."""
    calls = []
    loop = SimpleNamespace(
        cfg=SimpleNamespace(seed_episodes=10, scripted_fraction=0.29, seed=0),
        f=SimpleNamespace(make_seed_policy=lambda kind, space, seed: kind),
        envs=SimpleNamespace(single_action_space=None),
        _collect=lambda policy, n, kind, seed_offset=0: calls.append((kind, n, seed_offset)) or [],
        _record_training_episodes=lambda eps: None,
    )
    OnlineLoop._seed_data(loop)
    assert calls == [("scripted", 3, 7_919), ("random", 7, 0)]


def test_train_success_is_the_final_steps_as_evaluation_counts_it():
    """M06 (success anywhere in the episode): eval counts the last step's info["success"] only."""
    ep = make_episode(3)
    ep.success[:] = [True, False, False]  # passed through the goal, ended off it
    loop = SimpleNamespace(state=LoopState())
    OnlineLoop._record_training_episodes(loop, [ep])
    assert loop.state.last_success == 0.0


def test_imagination_starts_from_the_newest_episodes():
    """M07 (`[:n]`): SB3 imagined from the oldest episodes (the offline ones) for the whole run."""
    a, b, c, d = (object() for _ in range(4))
    loop = SimpleNamespace(_offline=[a], _episodes=[b, c, d])
    assert OnlineLoop._recent_episodes(loop, 2) == [c, d]
    assert OnlineLoop._recent_episodes(loop, 10) == [a, b, c, d]


def test_world_model_weights_and_batches_follow_the_runs_seed(monkeypatch):
    """M08 (sampler seeded 0 whatever --seed), M21 (initial weights from torch's current stream)."""
    seen = {}

    class FakeModel:
        uses_state_stats = False

        def __init__(self, cfg):
            seen["torch_seed"] = torch.initial_seed()

        def to(self, device):
            return self

    monkeypatch.setattr(online, "sized_config", lambda cfg, ep: cfg)
    monkeypatch.setattr(online, "WorldModel", FakeModel)
    monkeypatch.setattr(
        online, "SequenceSampler", lambda eps, seq_len, seed: seen.setdefault("sampler", seed)
    )
    monkeypatch.setattr(online, "WorldModelTrainer", lambda *a: None)
    monkeypatch.setattr(online, "to_dict", lambda c: {})
    loop = SimpleNamespace(
        _train_episodes=lambda: [object()],
        wm_cfg=None,
        cfg=SimpleNamespace(seed=7),
        device="cpu",
        tcfg=SimpleNamespace(seq_len=8),
        config={},
    )
    torch.manual_seed(123)
    OnlineLoop._build_model(loop)
    assert seen == {"torch_seed": 7, "sampler": 7}


def test_finetune_seeds_each_iterations_imagination_and_sb3_from_the_run_seed(monkeypatch):
    """M09 (every iteration's imagination env seeded alike), M26 (SB3 seeded 0 whatever --seed)."""
    made, envs = [], []
    monkeypatch.setattr(online, "make_sb3_model", lambda c, env, seed, device: made.append(seed) or "sb3")
    monkeypatch.setattr(online, "finetune", lambda sb3, env, steps: {})
    st = LoopState()
    loop = SimpleNamespace(
        model=object(),
        cfg=SimpleNamespace(seed=5, sb3=SimpleNamespace(steps_per_iteration=1)),
        state=st,
        sb3=None,
        device="cpu",
        _uses_sb3=lambda: True,
        _imagination_env=lambda seed: envs.append(seed) or seed,
    )
    for it in (1, 2):
        st.iteration = it
        OnlineLoop._finetune(loop)
    assert envs == [6, 7] and made == [5]


def test_a_checkpoint_records_itself_as_the_last_checkpoint(monkeypatch, tmp_path):
    """M10: a stale last_checkpoint in the checkpoint made a resumed run checkpoint off its cadence."""
    saved = {}
    monkeypatch.setattr(online, "save_wm_checkpoint", lambda *a, extra: saved.update(a[5]))
    st = LoopState()
    st.env_steps, st.last_checkpoint = 60, 20
    loop = SimpleNamespace(
        model=object(),
        trainer=SimpleNamespace(training_state=dict, step=3, optimizer=None),
        state=st,
        planner=None,
        _offline_names=[],
        sb3=None,
        run_dir=tmp_path,
        config={},
    )
    OnlineLoop.checkpoint(loop)
    assert saved["loop"]["last_checkpoint"] == 60


def test_wall_s_counts_each_second_once():
    """M18 (the clock not moved on): every row added all the time since the loop started again."""
    loop, _ = _stub(eval_every=1000, checkpoint_every=1000, env_steps=1000)
    loop._clock -= 10.0  # ten seconds spent in the first iteration
    for steps in (20, 40):
        loop.state.env_steps = steps
        OnlineLoop._after_iteration(loop, {}, _Logger())
    assert 10.0 <= loop.state.wall_s < 15.0


def test_episodes_exactly_one_window_long_are_accepted(caplog):
    """M20 (`steps < seq_len`): 7-step episodes have the 8 observations a debug window needs; shorter
    ones are padded (a warning: the padding is wasted work)."""
    loop = SimpleNamespace(
        cfg=SimpleNamespace(episode_steps=7, env="robobrain/Push-v0", preset="debug"),
        tcfg=SimpleNamespace(seq_len=8),
    )
    with caplog.at_level("WARNING", logger="robobrain.training.online"):
        OnlineLoop._check_episode_length(loop)
        assert not caplog.text
        loop.cfg.episode_steps = 6
        OnlineLoop._check_episode_length(loop)
    assert (
        "windows of 8 observations, but robobrain/Push-v0 episodes have 6 steps (7 observations)"
        in caplog.text
    )


def test_offline_episodes_of_another_task_are_refused(tmp_path):
    """M23: --seed-data of another task trained the world model on it without a word."""
    store = EpisodeStore(tmp_path / "offline")
    ep = make_episode(10, size=32)
    ep.meta["env_id"] = "robobrain/Reach-v0"
    store.add(ep)
    loop = SimpleNamespace(
        cfg=SimpleNamespace(seed_data=str(tmp_path / "offline"), env="robobrain/Push-v0"),
        envs=SimpleNamespace(single_observation_space={"pixels": SimpleNamespace(shape=(32, 32, 3))}),
        store=EpisodeStore(tmp_path / "run" / "episodes"),
    )
    with pytest.raises(ValueError, match=r"episodes of \['robobrain/Reach-v0'\], not of robobrain/Push-v0"):
        OnlineLoop._load_offline(loop)


def test_an_init_world_model_without_the_keypoints_asked_for_is_refused(monkeypatch):
    """M24: --keypoints with an --init-world-model that has none was dropped silently."""
    monkeypatch.setattr(
        online, "model_config_from_checkpoint", lambda config, path: get_preset("debug").world_model
    )
    loop = SimpleNamespace(cfg=OnlineConfig(preset="debug", keypoints=4))
    with pytest.raises(CheckpointError, match="has keypoints 0, not the 4 --keypoints"):
        OnlineLoop._adopt_world_model_sizes(
            loop, SimpleNamespace(config={}, path=Path("wm")), "the world model"
        )


def test_an_init_world_model_with_a_termination_head_is_refused_by_no_termination(monkeypatch):
    wm = dataclasses.replace(get_preset("debug").world_model, termination=True)
    monkeypatch.setattr(online, "model_config_from_checkpoint", lambda config, path: wm)
    loop = SimpleNamespace(cfg=OnlineConfig(preset="debug", termination=False))
    with pytest.raises(
        CheckpointError, match="has termination True, not the False --no-termination asks for"
    ):
        OnlineLoop._adopt_world_model_sizes(
            loop, SimpleNamespace(config={}, path=Path("wm")), "the world model"
        )


# --- tiny end-to-end runs (a few seconds each) ----------------------------------------------------
def test_fractional_world_model_updates_add_up_across_iterations(tmp_path):
    """M16 (each iteration's int(steps x ratio), the carry never paid), M25 (the carry reset to 0):
    train_ratio 0.03 x 20 steps an iteration never trained the world model."""
    main([*run_args(tmp_path, 80), "--train-ratio", "0.03", "--prior-samples", "0", "--no-use-value"])
    state = load_checkpoint(latest_checkpoint(tmp_path)).state
    assert state["trainer"]["step"] == 10 + 1  # the pretraining, then int(3 x 0.6)
    assert state["loop"]["wm_updates_owed"] == pytest.approx(0.8)


def test_a_run_killed_before_its_first_checkpoint_starts_its_store_over(tmp_path):
    """M15: the killed run's seed episodes stayed beside the new ones (and a later resume kept the
    old ones, not those the model trained on)."""
    main(run_args(tmp_path, 20))
    shutil.rmtree(tmp_path / "checkpoints")  # as if killed before its first checkpoint
    main(run_args(tmp_path, 20))
    state = load_checkpoint(latest_checkpoint(tmp_path)).state["loop"]
    assert len(EpisodeStore(tmp_path / "episodes")) == state["episodes"] == 2


def test_seed_episodes_that_spend_the_whole_budget_are_warned_of(tmp_path, caplog):
    """M19 (`>`): 2 seed episodes x 10 steps = --env-steps 20: the planner never acts, silently."""
    with caplog.at_level("WARNING", logger="robobrain.training.online"):
        main(run_args(tmp_path, 20))
    assert "the planner never acts" in caplog.text


def test_the_planners_random_streams_run_on_across_iterations(tmp_path):
    """M17: the planner rebuilt after each iteration restarted its generators from the seed, so
    every iteration explored with the same noise."""
    from robobrain.planning import MPCConfig, OptimizerConfig
    from robobrain.policies.online import online_factories

    mpc = MPCConfig(
        horizon=3, exploration_std=0.3, optim=OptimizerConfig(num_samples=8, num_elites=2, iterations=1)
    )
    cfg = OnlineConfig(
        preset="debug",
        env_steps=40,
        num_envs=2,
        episode_steps=10,
        seed_episodes=2,
        pretrain_steps=5,
        mpc=mpc,
        prior_samples=0,
        use_value=False,
        eval_every=1000,
        eval_episodes=1,
    )
    loop = OnlineLoop(cfg, tmp_path, online_factories(cfg.env, 32, "cpu", 10), progress=False)
    try:
        loop.run()
        carried, fresh = generator_states(loop.planner), generator_states(loop._make_planner(explore=True))
        assert carried["noise"] != fresh["noise"] and carried["optimizer"] != fresh["optimizer"]
    finally:
        loop.envs.close()


def test_resume_refuses_a_store_missing_an_episode(tmp_path):
    """M13: a resumed run went on with fewer episodes than its checkpoint counted."""
    main(run_args(tmp_path, 20))
    store = EpisodeStore(tmp_path / "episodes")
    (store.root / store.names()[0]).unlink()
    with pytest.raises(CheckpointError, match="1 readable episodes, the checkpoint expects 2"):
        main(run_args(tmp_path, 40))


def test_the_run_deletes_no_episode_it_did_not_write(tmp_path):
    """Episodes collected into RUN/episodes (robobrain collect's, their meta naming no iteration) were
    deleted without a word by a fresh start, and by a resume as written after its last checkpoint; the
    run's own store as --seed-data was read, then emptied."""
    store = EpisodeStore(tmp_path / "episodes")
    theirs = store.add(make_episode(4))
    with pytest.raises(ValueError, match=r"holds 1 episodes this run did not write \(episode_000000.npz "):
        main(run_args(tmp_path, 20))
    assert EpisodeStore(tmp_path / "episodes").names() == [theirs]
    with pytest.raises(ValueError, match=r"--seed-data .* is this run's own store"):
        main([*run_args(tmp_path, 20), "--seed-data", str(tmp_path / "episodes")])
    assert EpisodeStore(tmp_path / "episodes").names() == [theirs]
    store.truncate(0)
    main(run_args(tmp_path, 20))
    store = EpisodeStore(tmp_path / "episodes")
    own = store.load(store.names()[0])
    theirs = store.add(dataclasses.replace(own, meta={"env_id": own.meta["env_id"], "policy": "random"}))
    with pytest.raises(ValueError, match="which resuming the run would delete"):
        main(run_args(tmp_path, 40))
    assert EpisodeStore(tmp_path / "episodes").names()[-1] == theirs


def test_the_runs_episodes_start_where_none_of_its_offline_ones_did(tmp_path):
    """collect's default seed (0) is train's --seed 0 seed-episode seed: the run's random seed
    episodes were copies of the offline ones, trained on twice. The run's episodes record their seeds."""
    offline, run = tmp_path / "offline", tmp_path / "run"
    main(["collect", "--env", "robobrain/Push-v0", "--policy", "random", "--episodes", "2", "--image-size",
          "32", "--episode-steps", "10", "--out", str(offline), "--no-progress"])  # fmt: skip
    main([*run_args(run, 20), "--seed-data", str(offline)])
    firsts = [ep.pixels[0].tobytes() for ep in EpisodeStore(offline).load_all()]
    ours = EpisodeStore(run / "episodes").load_all()
    assert len(ours) == 2 and not {ep.pixels[0].tobytes() for ep in ours} & set(firsts)
    assert {(ep.meta["seed"], ep.meta["num_envs"]) for ep in ours} == {(0 + 2 + 2, 2)}


def test_a_damaged_latest_checkpoint_says_how_to_go_on_from_another(tmp_path):
    """A checkpoint missing the sb3/ of a run that had fine-tuned resumed with a fresh actor-critic
    and replay buffer, silently; a corrupt config.json was said without the way back to an older
    checkpoint (read first for the run's frame size, not by the resume that adds it)."""
    main(run_args(tmp_path, 40))  # (checkpoints at 20, after pretraining, and 40, after a fine-tuning)
    latest = latest_checkpoint(tmp_path)
    shutil.rmtree(latest / "sb3")
    with pytest.raises(
        CheckpointError, match=r"sb3: missing, yet the run fine-tuned .* checkpoints: step_0000020"
    ):
        main(run_args(tmp_path, 60))
    (latest / "config.json").write_text("{garbage")
    with pytest.raises(CheckpointError, match=r"config\.json: .*other checkpoints: step_0000020"):
        main(run_args(tmp_path, 60))


def test_extending_a_finished_run_keeps_its_old_final_evaluation(tmp_path):
    """The final evaluation at the old budget, which train.csv's row there reports, was overwritten
    by the new final one (`robobrain demo --env-steps 20000` after the demo): it moves to step_N."""
    main(run_args(tmp_path, 40))
    old = json.loads((tmp_path / "eval/final/eval_info.json").read_text())
    main(run_args(tmp_path, 60))
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["final", "step_0000020", "step_0000040"]
    assert json.loads((tmp_path / "eval/step_0000040/eval_info.json").read_text()) == old
    assert json.loads((tmp_path / "eval/final/eval_info.json").read_text())["env_steps"] == 60
    # Killed while saving its last checkpoint: the final evaluation is newer than the latest checkpoint
    # (step_0000060 gone, latest back at step_0000040); the redone iteration redoes it, nothing moves.
    shutil.rmtree(latest_checkpoint(tmp_path))
    (tmp_path / "checkpoints" / "latest").write_text(json.dumps({"checkpoint": "step_0000040"}))
    main(run_args(tmp_path, 60))
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["final", "step_0000020", "step_0000040"]
    # A budget below what the run holds undoes nothing: refused (it re-ran the final evaluation and
    # wrote the lower budget to config.json, which train.csv and the checkpoints contradicted).
    config = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"holds 60 env steps \(its --env-steps was 60\); --env-steps 20 "
                       r"undoes none of them: pass --env-steps 60 or more"):  # fmt: skip
        main(run_args(tmp_path, 20))
    assert (tmp_path / "config.json").read_text() == config


def test_a_budget_lowered_to_the_steps_a_run_holds_logs_its_final_evaluation(tmp_path):
    """A run killed past its last evaluation and re-run with --env-steps at the steps it held wrote
    eval/final and final_eval.json, but its last train.csv row, and the learning curve, had none."""
    main(run_args(tmp_path, 80))  # rows at 20 (evaluated), 40, 60, 80 (final); checkpoints 60 and 80
    shutil.rmtree(latest_checkpoint(tmp_path))  # killed before the checkpoint at 80
    (tmp_path / "checkpoints" / "latest").write_text(json.dumps({"checkpoint": "step_0000060"}))
    main(run_args(tmp_path, 60))
    rows = list(csv.DictReader((tmp_path / "train.csv").open()))
    assert [r["env_steps"] for r in rows] == ["20", "40", "60"]
    final = json.loads((tmp_path / "final_eval.json").read_text())
    assert (
        float(rows[-1]["eval_return"]) == pytest.approx(final["mean_return"]) and rows[1]["eval_return"] == ""
    )
    main(run_args(tmp_path, 60))  # (a re-run of the finished run: the same row)
    assert list(csv.DictReader((tmp_path / "train.csv").open())) == rows
    # Between its own budget and the steps it holds (whole iterations took a 50-step run to 60): refused
    # (it wrote 55 to config.json, which the checkpoint and train.csv contradicted).
    main(run_args(tmp_path / "b", 50))
    with pytest.raises(
        ValueError, match=r"holds 60 env steps .*pass --env-steps 50, the run's own, or 60 or more"
    ):
        main(run_args(tmp_path / "b", 55))
    main(run_args(tmp_path / "b", 50))


def test_evaluation_numbers_do_not_depend_on_the_rng_history():
    """M27 (the fork kept, its seed dropped): the same weights scored differently after another
    history of torch draws (SB3 guide prior samples come from torch's global generator)."""
    loop = SimpleNamespace(
        device=torch.device("cpu"),
        cfg=SimpleNamespace(seed=0),
        _evaluate=lambda final: torch.rand(3).tolist(),
    )
    torch.manual_seed(1)
    first = OnlineLoop.evaluate(loop)
    after = torch.rand(()).item()
    torch.manual_seed(2)
    assert OnlineLoop.evaluate(loop) == first
    torch.manual_seed(1)
    OnlineLoop.evaluate(loop)
    assert torch.rand(()).item() == after  # (nor does evaluating move the training stream on)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rng_state_round_trips_the_cuda_generators():
    """R06: a resumed CUDA run's global CUDA generators (SB3's and the world model's draws on the
    GPU) started from wherever the new process left them."""
    from robobrain.training.resume import rng_state, set_rng_state

    torch.rand((), device="cuda")  # (initializes CUDA)
    state = json.loads(json.dumps(rng_state()))
    assert "cuda" in state
    first = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(0)
    set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), first)


def test_negative_keypoints_are_refused_when_read():
    """--keypoints -1 was accepted, and failed in SpatialSoftmax after the seed episodes were collected."""
    with pytest.raises(ValueError, match=r"keypoints must be >= 0, got -1 \(--keypoints\)"):
        OnlineConfig(keypoints=-1)


def test_no_termination_trains_no_head_on_episodes_that_end_in_falls(tmp_path):
    """InvertedPendulum's random episodes end when the pole falls: a head unless --no-termination."""
    args = run_args(tmp_path, 30)
    args[args.index("--env") + 1] = "InvertedPendulum-v5"
    main([*args, "--image-size", "16", "--mpc.optim.low", "-3", "--mpc.optim.high", "3",
          "--prior-samples", "0", "--no-use-value", "--no-termination"])  # fmt: skip
    assert any(ep.terminated for _, ep in EpisodeStore(tmp_path / "episodes").episodes())
    assert not load_checkpoint(latest_checkpoint(tmp_path)).config["world_model"]["termination"]
