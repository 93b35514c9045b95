"""The online loop's bookkeeping, on a stub loop (no env, no model)."""

import time
from types import SimpleNamespace

from robobrain.training.online import LoopState, OnlineLoop


class _Logger:
    def __init__(self):
        self.rows = []

    def log(self, step, row):
        self.rows.append((step, dict(row)))


def _stub(eval_every, checkpoint_every, env_steps):
    calls = {"eval": [], "ckpt": []}
    st = LoopState()
    cfg = SimpleNamespace(eval_every=eval_every, checkpoint_every=checkpoint_every, env_steps=env_steps)
    loop = SimpleNamespace(cfg=cfg, state=st, callbacks=[], _clock=time.perf_counter(), _final_report=None)

    def evaluate(final=False):
        calls["eval"].append((st.env_steps, final))
        return {"summary": {"success_rate": 0.5, "mean_return": 1.0}}

    def checkpoint():
        st.last_checkpoint = st.env_steps
        calls["ckpt"].append(st.env_steps)

    loop.evaluate, loop.checkpoint = evaluate, checkpoint
    return loop, calls


def test_evaluations_and_checkpoints_follow_their_cadence():
    loop, calls = _stub(eval_every=40, checkpoint_every=30, env_steps=100)
    logger = _Logger()
    for steps in (20, 40, 60, 80, 100, 100):  # the first row: the seed episodes
        loop.state.env_steps = steps
        OnlineLoop._after_iteration(loop, {}, logger)
    assert calls["eval"] == [(20, False), (60, False), (100, True), (100, True)]
    assert calls["ckpt"] == [40, 80, 100, 100]
    assert [s for s, r in logger.rows if "eval_success" in r] == [20, 60, 100, 100]
    assert loop.state.iteration == 6


def test_eval_every_is_reached_exactly_not_passed():
    loop, calls = _stub(eval_every=20, checkpoint_every=20, env_steps=1000)
    for steps in (20, 40, 60):
        loop.state.env_steps = steps
        OnlineLoop._after_iteration(loop, {}, _Logger())
    assert [s for s, _ in calls["eval"]] == [20, 40, 60]
    assert calls["ckpt"] == [20, 40, 60]


def test_own_data_repeat_repeats_only_the_runs_own_episodes():
    a, b, c = object(), object(), object()
    loop = SimpleNamespace(_offline=[a], _episodes=[b, c], cfg=SimpleNamespace(own_data_repeat=3))
    assert OnlineLoop._train_episodes(loop) == [a, b, c, b, c, b, c]


def test_two_collections_of_one_iteration_start_from_different_seeds(monkeypatch):
    from robobrain.training import online

    seeds = []

    def fake_collect(envs, policy, store, episodes, seed, **kw):
        seeds.append(seed)
        return SimpleNamespace(env_steps=10 * episodes, names=[])

    monkeypatch.setattr(online, "collect_episodes", fake_collect)
    st = LoopState()
    st.iteration = 2
    loop = SimpleNamespace(cfg=SimpleNamespace(seed=5, env="robobrain/Push-v0", num_envs=2), state=st,
                           envs=None, store=SimpleNamespace(load=lambda n: n), _episodes=[],
                           _offline_seeds=[])  # fmt: skip
    OnlineLoop._collect(loop, None, 2, "scripted", seed_offset=7_919)
    OnlineLoop._collect(loop, None, 2, "random")
    assert seeds == [5 + 2 * 10_007 + 7_919, 5 + 2 * 10_007]
    assert st.env_steps == 40 and st.episodes == 0
    st.iteration = 100  # (5 + 1,000,700: evaluation's starts, EVAL_SEEDS; moved past them)
    OnlineLoop._collect(loop, None, 2, "random")
    assert seeds[-1] == 5 + 100 * 10_007 + 100_000 + 2


def test_world_model_updates_owed_are_paid_not_kept(tmp_path):
    """Each iteration trains train_ratio x its env steps; only the fraction left over is carried."""
    from robobrain.checkpoint import latest_checkpoint, load_checkpoint
    from robobrain.cli import main
    from tests.test_online import run_args

    main([*run_args(tmp_path, 60), "--train-ratio", "0.25", "--prior-samples", "0", "--no-use-value"])
    state = load_checkpoint(latest_checkpoint(tmp_path)).state["loop"]
    assert state["env_steps"] == 60 and 0 <= state["wm_updates_owed"] < 1


def test_wm_episodes_counts_each_repeated_episode_once():
    a, b = object(), object()
    sampler = SimpleNamespace(episodes=[])
    sampler.set_episodes = lambda eps: setattr(sampler, "episodes", list(eps))
    steps = iter([{"loss": 1.0}, None, {"loss": 3.0}])
    loop = SimpleNamespace(trainer=SimpleNamespace(sampler=sampler, train_step=lambda: next(steps)))
    loop._train_episodes = lambda: [a, b, b, b]
    metrics = OnlineLoop._fit_world_model(loop, 3)
    assert metrics == {"wm_loss": 2.0, "wm_episodes": 2}
