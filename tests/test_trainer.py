"""WorldModelTrainer's lr per update, non-finite bookkeeping, gradient clipping."""

import copy
import dataclasses

import pytest
import torch

from robobrain.config import get_preset
from robobrain.data import SequenceSampler
from robobrain.training.wm_trainer import NonFiniteLossError, WorldModelTrainer
from robobrain.world_model import WorldModel
from tests.test_store import make_episode

DEBUG = get_preset("debug")


def _trainer(total_steps=None, **train):
    torch.manual_seed(0)
    cfg = dataclasses.replace(DEBUG.train, batch_size=2, seq_len=4, **train)
    model = WorldModel(DEBUG.world_model)
    sampler = SequenceSampler([make_episode(8, tag=i, size=32) for i in range(2)], cfg.seq_len, seed=0)
    return WorldModelTrainer(model, cfg, sampler, "cpu", total_steps=total_steps)


def test_each_update_runs_at_the_rate_scheduled_for_its_start_step():
    trainer = _trainer(total_steps=4, lr=1.0, lr_decay=0.5)
    lrs = [trainer.train_step()["lr"] for _ in range(4)]
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def _poison(model):
    bias = model.reward_head[-1].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(float("nan"))
    return lambda: bias.data.copy_(saved)


def test_a_finite_step_resets_the_consecutive_non_finite_count():
    trainer = _trainer(max_nonfinite=2)
    heal = _poison(trainer.model)
    assert trainer.train_step() is None
    heal()
    assert trainer.train_step() is not None
    _poison(trainer.model)
    assert trainer.train_step() is None  # one in a row again, not two: no error
    assert trainer.nonfinite_total == 2
    with pytest.raises(NonFiniteLossError):
        trainer.train_step()


def test_restore_carries_the_consecutive_non_finite_count():
    trainer = _trainer(max_nonfinite=2)
    _poison(trainer.model)
    assert trainer.train_step() is None
    state = trainer.training_state()
    other = _trainer(max_nonfinite=2)
    other.restore(trainer.step, state, trainer.optimizer.state_dict())
    assert other.training_state()["nonfinite_run"] == 1 and other.nonfinite_total == 1
    _poison(other.model)
    with pytest.raises(NonFiniteLossError):  # the second in a row across the resume
        other.train_step()


def test_restore_refuses_optimizer_moments_no_run_writes():
    """A NaN second moment made the first step's weights NaN, and the run saved them as its latest."""
    trainer = _trainer()
    trainer.train_step()
    state = trainer.training_state()
    for name, value in (("exp_avg_sq", float("nan")), ("exp_avg", float("inf")), ("exp_avg_sq", -1.0)):
        saved = copy.deepcopy(trainer.optimizer.state_dict())  # (its inner dicts are the optimizer's)
        next(iter(saved["state"].values()))[name].view(-1)[0] = value
        with pytest.raises(ValueError, match=f"optimizer {name} holds NaN, inf or"):
            _trainer().restore(trainer.step, state, saved)
    _trainer().restore(trainer.step, state, trainer.optimizer.state_dict())


def test_a_finite_loss_with_non_finite_gradients_is_skipped():
    trainer = _trainer()
    assert trainer.train_step() is not None
    p = trainer.model.reward_head[-1].weight
    p.register_hook(lambda g: g * float("nan"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.train_step() is None and trainer.nonfinite_total == 1
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_gradients_are_clipped_to_grad_clip():
    trainer = _trainer(grad_clip=1e-3)
    metrics = trainer.train_step()
    assert metrics["grad_norm"] > 1e-2  # (the norm before clipping)
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-3 * 1.01


@pytest.mark.parametrize(("n", "fraction", "held"), [(4, 0.5, [1, 3]), (14, 0.15, [6, 13]), (10, 0.1, [9])])
def test_the_holdout_is_the_last_of_every_period_of_round_one_over_f(tmp_path, n, fraction, held):
    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import split_episodes

    store = EpisodeStore(tmp_path)
    for i in range(n):
        store.add(make_episode(3, tag=i))
    train, test = split_episodes(store, fraction)
    assert [int(ep.state[0, 0]) for ep in test] == held
    assert sorted(int(ep.state[0, 0]) for ep in train + test) == list(range(n))


def test_the_last_step_is_logged_when_it_is_no_multiple_of_log_every(tmp_path):
    import csv
    import warnings

    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import train_world_model

    store = EpisodeStore(tmp_path / "data")
    for i in range(3):
        store.add(make_episode(10, tag=i, size=32))
    train = dataclasses.replace(
        DEBUG.train, batch_size=2, log_every=5, checkpoint_every=50, holdout_fraction=0.0
    )
    preset = dataclasses.replace(DEBUG, train=train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_world_model(tmp_path / "data", tmp_path / "run", preset, steps=7, progress=False)
    with open(tmp_path / "run" / "train_wm.csv") as f:
        assert [int(float(r["step"])) for r in csv.DictReader(f)] == [5, 7]


def test_a_resume_trains_on_the_runs_own_holdout_split(tmp_path):
    """Resumed with --preset whose holdout_fraction has changed since, the run goes on with its own
    (recorded) fraction -- and with the training episodes that fraction leaves, as if never stopped."""
    import warnings

    from robobrain.checkpoint import load_checkpoint
    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import train_world_model

    store = EpisodeStore(tmp_path / "data")
    for i in range(4):
        store.add(make_episode(10, tag=i, size=32))
    train = dataclasses.replace(DEBUG.train, batch_size=2, lr_decay=0.0, holdout_fraction=0.5,
                                checkpoint_every=2, log_every=1)  # fmt: skip
    run_preset = dataclasses.replace(DEBUG, train=train)
    drifted = dataclasses.replace(DEBUG, train=dataclasses.replace(train, holdout_fraction=0.25))
    kw = {"progress": False, "preset_name": "debug"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_world_model(tmp_path / "data", tmp_path / "straight", run_preset, steps=4, **kw)
        train_world_model(tmp_path / "data", tmp_path / "split", run_preset, steps=2, **kw)
        train_world_model(tmp_path / "data", tmp_path / "split", drifted, steps=4, **kw)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert b.config["train"]["holdout_fraction"] == 0.5
    for k, v in a.model_state.items():
        torch.testing.assert_close(v, b.model_state[k], rtol=0, atol=0, msg=k)


def test_episodes_shorter_than_a_window_are_trained_on_padded_and_said_so(tmp_path, caplog):
    """Episodes of an env that ends early (InvertedPendulum's falls): left out, train-wm trained on 1
    of 5, unsaid; now each is one padded window, masked, and the log says how many."""
    import warnings

    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import train_world_model

    store = EpisodeStore(tmp_path / "data")
    for i, steps in enumerate((10, 10, 3)):
        store.add(make_episode(steps, tag=i, size=32))
    train = dataclasses.replace(DEBUG.train, batch_size=2, seq_len=6, holdout_fraction=0.0)
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="robobrain.training.wm_trainer"):
        warnings.simplefilter("ignore")
        train_world_model(tmp_path / "data", tmp_path / "run", dataclasses.replace(DEBUG, train=train),
                          steps=1, progress=False)  # fmt: skip
    assert "1 of the 3 training episodes are shorter than a training window (6 observations)" in caplog.text
    assert SequenceSampler([make_episode(10), make_episode(3)], 6).num_padded == 1
    with pytest.raises(ValueError, match="no episodes to sample windows from"):
        SequenceSampler([], 6)


def test_a_divergence_logs_no_losses_for_its_skipped_steps_and_names_what_was_kept(tmp_path, monkeypatch):
    """A log row whose steps were all skipped repeated the row before it (a plausible loss for steps
    that never trained); the error said nothing of the checkpoint left."""
    import csv
    import math
    import warnings

    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import train_world_model

    store = EpisodeStore(tmp_path / "data")
    for i in range(3):
        store.add(make_episode(10, tag=i, size=32))
    train = dataclasses.replace(DEBUG.train, batch_size=2, log_every=2, checkpoint_every=4, max_nonfinite=3,
                                holdout_fraction=0.0)  # fmt: skip
    real, calls = WorldModel.loss, []

    def diverging(self, batch):
        calls.append(1)
        loss, metrics = real(self, batch)
        return (loss * float("nan"), metrics) if len(calls) > 5 else (loss, metrics)

    monkeypatch.setattr(WorldModel, "loss", diverging)
    with warnings.catch_warnings(), pytest.raises(NonFiniteLossError) as e:
        warnings.simplefilter("ignore")
        train_world_model(tmp_path / "data", tmp_path / "run", dataclasses.replace(DEBUG, train=train),
                          steps=20, progress=False)  # fmt: skip
    assert str(e.value).endswith(
        f"Kept: the run's checkpoint before it, {tmp_path / 'run' / 'checkpoints' / 'step_0000004'} "
        "(a resume repeats the same steps)"
    )
    with open(tmp_path / "run" / "train_wm.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["step"])) for r in rows] == [2, 4, 6]  # (step 6: one trained, one skipped)
    assert math.isfinite(float(rows[2]["loss"])) and rows[2]["nonfinite_total"] == "1"
    with pytest.raises(ValueError, match="max_minutes must be > 0, got nan"):
        train_world_model(tmp_path / "data", tmp_path / "other", DEBUG, steps=5, max_minutes=float("nan"))
    with pytest.raises(ValueError, match="max_minutes must be > 0, got -1"):
        train_world_model(tmp_path / "data", tmp_path / "other", DEBUG, steps=5, max_minutes=-1)
    with pytest.raises(ValueError, match="max_minutes must be > 0, got 0"):  # (it saved the untrained model)
        train_world_model(tmp_path / "data", tmp_path / "other", DEBUG, steps=5, max_minutes=0)
    assert not (tmp_path / "other").exists()


def test_a_window_of_only_skipped_steps_logs_nan_losses(tmp_path, monkeypatch):
    import csv
    import math
    import warnings

    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import train_world_model

    store = EpisodeStore(tmp_path / "data")
    for i in range(3):
        store.add(make_episode(10, tag=i, size=32))
    train = dataclasses.replace(DEBUG.train, batch_size=2, log_every=2, max_nonfinite=5, holdout_fraction=0.0)
    real, calls = WorldModel.loss, []

    def sick(self, batch):  # (steps 3 and 4 non-finite, then well again)
        calls.append(1)
        loss, metrics = real(self, batch)
        return (loss * float("nan"), metrics) if len(calls) in (3, 4) else (loss, metrics)

    monkeypatch.setattr(WorldModel, "loss", sick)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_world_model(tmp_path / "data", tmp_path / "run", dataclasses.replace(DEBUG, train=train),
                          steps=6, progress=False)  # fmt: skip
    with open(tmp_path / "run" / "train_wm.csv") as f:
        rows = {int(float(r["step"])): r for r in csv.DictReader(f)}
    assert math.isnan(float(rows[4]["loss"])) and math.isnan(float(rows[4]["recon"]))
    assert math.isfinite(float(rows[2]["loss"])) and math.isfinite(float(rows[6]["loss"]))
    assert rows[4]["nonfinite_total"] == "2"


def test_a_resume_on_data_of_another_kind_is_refused_before_the_run_is_touched(tmp_path):
    """Frames of another size were taken for the preset's drift: a warning blaming the preset, the
    run's config.json rewritten, then a pixel-shape error at the first step."""
    import warnings

    from robobrain.checkpoint import CheckpointError, load_checkpoint
    from robobrain.data import EpisodeStore
    from robobrain.training.wm_trainer import train_world_model

    for name, size in (("data", 32), ("small", 16)):
        store = EpisodeStore(tmp_path / name)
        for i in range(3):
            store.add(make_episode(10, tag=i, size=size))
    train = dataclasses.replace(DEBUG.train, batch_size=2, checkpoint_every=2, holdout_fraction=0.0)
    preset = dataclasses.replace(DEBUG, train=train)
    kw = {"progress": False, "preset_name": "debug"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_world_model(tmp_path / "data", tmp_path / "run", preset, steps=2, **kw)
        config = (tmp_path / "run" / "config.json").read_text()
        kind = r"small: its episodes are not of the kind .* \{'image_size': \(32, 16\)\}"
        with pytest.raises(CheckpointError, match=kind):
            train_world_model(tmp_path / "small", tmp_path / "run", preset, steps=4, **kw)
        assert (tmp_path / "run" / "config.json").read_text() == config
        # Episodes that end in a fall, added since: the run goes on without the head it started without.
        fall = dataclasses.replace(make_episode(10, tag=9, size=32), terminated=True)
        EpisodeStore(tmp_path / "data").add(fall)
        train_world_model(tmp_path / "data", tmp_path / "run", preset, steps=4, **kw)
        train_world_model(tmp_path / "data", tmp_path / "fresh", preset, steps=2, **kw)
    assert load_checkpoint(tmp_path / "run").state["step"] == 4
    assert not load_checkpoint(tmp_path / "run").config["world_model"]["termination"]
    assert load_checkpoint(tmp_path / "fresh").config["world_model"]["termination"]


def test_an_older_run_resumes_on_its_data_and_data_with_another_state_size_is_refused(tmp_path):
    """A run whose config.json predates goal conditioning (no goal fields: goal_dim 0 by default)
    sized the same data with a goal today: only what the data decides refuses a resume."""
    import json
    import warnings

    import numpy as np

    from robobrain.checkpoint import CheckpointError, load_checkpoint
    from robobrain.data import EpisodeStore
    from robobrain.envs import get_state_layout
    from robobrain.training.wm_trainer import train_world_model

    n = max(part.stop for part in get_state_layout("robobrain/Reach-v0").values())
    for name, dim in (("data", n), ("wide", n + 2)):
        store = EpisodeStore(tmp_path / name)
        for i in range(3):
            ep = make_episode(10, tag=i, size=32)
            state = np.zeros((11, dim), np.float32) + ep.state[:, :1]
            store.add(dataclasses.replace(ep, state=state, meta={"env_id": "robobrain/Reach-v0"}))
    train = dataclasses.replace(DEBUG.train, batch_size=2, checkpoint_every=2, holdout_fraction=0.0)
    old = dataclasses.replace(
        DEBUG, train=train, world_model=dataclasses.replace(DEBUG.world_model, use_goal=False)
    )
    kw = {"progress": False, "preset_name": "debug"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_world_model(tmp_path / "data", tmp_path / "run", old, steps=2, **kw)
        for path in [
            tmp_path / "run" / "config.json",
            *(tmp_path / "run").glob("checkpoints/step_*/config.json"),
        ]:
            config = json.loads(path.read_text())
            for key in ("use_goal", "goal_start", "goal_dim"):
                del config["world_model"][key]
            path.write_text(json.dumps(config))
        today = dataclasses.replace(DEBUG, train=train)
        with pytest.raises(
            CheckpointError, match=rf"wide: its episodes are not of the kind .*'state_dim': \({n}, {n + 2}\)"
        ):
            train_world_model(tmp_path / "wide", tmp_path / "run", today, steps=4, **kw)
        train_world_model(tmp_path / "data", tmp_path / "run", today, steps=4, **kw)
    resumed = load_checkpoint(tmp_path / "run")
    assert resumed.state["step"] == 4 and resumed.config["world_model"]["goal_dim"] == 0
