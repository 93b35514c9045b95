"""The behaviour-cloned planner prior: it learns the data's actions from the latent state, its guide
samples around it in imagination, and it is saved beside (and only loads with) its world model."""

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from robobrain.checkpoint import CheckpointError, save_checkpoint
from robobrain.cli import main
from robobrain.config import get_preset, to_dict
from robobrain.data import Episode, EpisodeStore
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.policies import BehaviourPriorPolicy, WorldModelMPCPolicy, load_policy
from robobrain.rl import (
    BehaviourPrior,
    BehaviourPriorConfig,
    BehaviourPriorGuide,
    fit_behaviour_prior,
    load_behaviour_prior,
    save_behaviour_prior,
)
from robobrain.rl.behaviour_prior import latent_dataset, select_episodes
from robobrain.world_model import WorldModel

STEPS = 10


def bar_episode(column: int, success: bool = True, steps: int = STEPS) -> Episode:
    """A white bar at ``column`` of a 32 px frame; the action (the same at every step) is a
    function of the column, so it can be read off the latent state."""
    pixels = np.zeros((steps + 1, 32, 32, 3), np.uint8)
    pixels[:, :, column : column + 8] = 255
    a = (column / 28 - 0.5) * 1.6
    action = np.tile(np.array([a, -a, 0.3], np.float32), (steps, 1))
    outcome = np.zeros(steps, bool)
    outcome[-1] = success
    return Episode(pixels, np.zeros((steps + 1, 2), np.float32), action, np.zeros(steps, np.float32), outcome)


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(get_preset("debug", action_dim=3).world_model).eval()


def test_latent_dataset_pairs_each_frame_with_the_action_after_it(model):
    eps = [bar_episode(0), bar_episode(8, steps=6), bar_episode(16)]
    feat, action = latent_dataset(model, eps, chunk=2)
    assert feat.shape == (STEPS + 6 + STEPS, model.cfg.feat_dim) and action.shape == (26, 3)
    # Same-length episodes are filtered together, in arrival order within their length.
    np.testing.assert_allclose(action[:STEPS].numpy(), eps[0].action)
    np.testing.assert_allclose(action[STEPS : 2 * STEPS].numpy(), eps[2].action)
    # The planner's filter: observe() takes the action *before* each frame; its last state is the
    # posterior of eps[1]'s last observed frame (o_5, before a_5).
    act = torch.from_numpy(eps[1].action)
    prev = torch.cat([torch.zeros(1, 3), act[:-1]])[None]
    last = model.observe(torch.from_numpy(eps[1].pixels[None, :-1]), prev)
    torch.testing.assert_close(feat[2 * STEPS + 5], last.feat[0])


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_behaviour_prior_learns_the_actions_of_successful_episodes(model, device):
    held = (3, 11, 19, 27)
    train = [bar_episode(c) for c in range(29) if c not in held] + [bar_episode(5, success=False)]
    val = [bar_episode(c) for c in held]
    assert len(select_episodes(train, successful_only=True)) == 25
    cfg = BehaviourPriorConfig(hidden=64, steps=400, eval_every=50, batch_size=128)
    on_device = model if device == "cpu" else copy.deepcopy(model).to(device)
    prior, report = fit_behaviour_prior(on_device, train, val, cfg, device)
    assert next(prior.parameters()).device.type == "cpu"  # (fitted on ``device``)
    assert report["train_episodes"] == 25 and report["val_episodes"] == 4
    assert report["nll_last"] < report["nll_first"] - 1.0
    # Held-out columns: well below the constant mean action's error (1.0x for a prior that learned
    # nothing; ~0.2x here, from random-weight features of a bar between two training positions).
    assert report["val_mse"] < 0.4 * report["val_mse_mean_action"]
    # ... and the prior returned is the one reported (not only the report's own numbers).
    vx, vy = latent_dataset(model, val, "cpu")
    with torch.no_grad():
        assert (prior(vx) - vy).square().mean().item() == pytest.approx(report["val_mse"], rel=1e-3)
    with pytest.raises(ValueError, match="ended in success"):
        fit_behaviour_prior(model, [bar_episode(0, success=False)], val, cfg)


def test_guide_samples_around_the_prior_in_imagination(model):
    torch.manual_seed(1)
    prior = BehaviourPrior(model.cfg.feat_dim, 3, hidden=16).eval()
    state = model.observe(torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8), torch.zeros(2, 1, 3))

    def guide() -> BehaviourPriorGuide:
        return BehaviourPriorGuide(prior, num_prior=6, noise_std=0.3, seed=4)

    samples = guide().prior_rollout(model, state, 5).actions
    assert samples.shape == (2, 6, 5, 3) and samples.abs().max() <= 1
    again = guide().prior_rollout(model, state, 5).actions
    assert torch.equal(samples, again)  # seeded through its own generator
    assert not torch.allclose(samples[:, 1], samples[:, 2])
    # The first sample of each env is the prior's own noiseless rollout.
    s, mean_rollout = state, []
    for _ in range(5):
        a = prior(s.feat)
        mean_rollout.append(a)
        s = model.rssm.img_step_mode(s, a)
    torch.testing.assert_close(samples[:, 0], torch.stack(mean_rollout, 1))
    noiseless = BehaviourPriorGuide(prior, num_prior=3, noise_std=0.0).prior_rollout(model, state, 5).actions
    torch.testing.assert_close(noiseless[:, 1], noiseless[:, 0])
    with pytest.raises(ValueError, match="num_prior"):
        BehaviourPriorGuide(prior, num_prior=0)
    for std in (float("nan"), float("inf")):  # (NaN prior actions were blamed on a diverged prior)
        with pytest.raises(ValueError, match="finite noise_std"):
            BehaviourPriorGuide(prior, noise_std=std)


def test_saved_prior_loads_only_with_its_world_model(model, tmp_path, monkeypatch):
    cfg = model.cfg
    save_checkpoint(tmp_path / "wm", 1, model, {"world_model": to_dict(cfg)})
    ckpt = tmp_path / "wm" / "checkpoints" / "step_0000001"
    with pytest.raises(CheckpointError, match="train-prior"):
        load_behaviour_prior(tmp_path / "wm")
    prior = BehaviourPrior(cfg.feat_dim, 3, hidden=16).eval()
    path = save_behaviour_prior(prior, tmp_path / "wm", BehaviourPriorConfig(hidden=16), {"val_mse": 0.1})
    assert path == ckpt / "behaviour_prior" and not list(ckpt.glob(".tmp-*"))
    back = load_behaviour_prior(tmp_path / "wm")
    x = torch.randn(4, cfg.feat_dim)
    assert torch.equal(back(x), prior(x)) and torch.equal(back.std, prior.std)
    assert json.loads((path / "config.json").read_text())["fit"] == {"val_mse": 0.1}
    # Re-saving: a process killed between setting the old copy aside and renaming the new one into
    # place leaves the old copy, which loading puts back; a rename that fails keeps it in place.
    os.replace(path, ckpt / ".old-behaviour_prior-123")
    assert torch.equal(load_behaviour_prior(tmp_path / "wm")(x), prior(x)) and path.is_dir()
    # A copy a killed process was deleting (same pid: containers reuse them) does not block re-saves.
    stale = ckpt / f".old-behaviour_prior-{os.getpid()}"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    save_behaviour_prior(prior, tmp_path / "wm", BehaviourPriorConfig(hidden=16), {"val_mse": 0.1})
    assert not stale.exists()
    real_replace = os.replace

    def fail_into_place(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_into_place)
    with pytest.raises(OSError, match="disk full"):
        save_behaviour_prior(prior, tmp_path / "wm", BehaviourPriorConfig(hidden=16), {"val_mse": 0.2})
    monkeypatch.undo()
    assert json.loads((path / "config.json").read_text())["fit"] == {"val_mse": 0.1}
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith(".")) == []
    # A corrupt weights file names itself; other world-model weights are refused.
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_behaviour_prior(tmp_path / "wm")
    save_behaviour_prior(prior, tmp_path / "wm", BehaviourPriorConfig(hidden=16), {})
    torch.manual_seed(5)
    save_file(WorldModel(cfg).state_dict(), str(ckpt / "model.safetensors"))  # the model was retrained
    with pytest.raises(CheckpointError, match="other world-model weights"):
        load_behaviour_prior(tmp_path / "wm")
    (ckpt / "model.safetensors").unlink()  # (a raw FileNotFoundError from the fingerprint before)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_behaviour_prior(tmp_path / "wm")


def test_train_prior_cli_and_guided_eval_policy(model, tmp_path):
    cfg = model.cfg
    save_checkpoint(tmp_path / "wm", 1, model, {"world_model": to_dict(cfg)})
    store = EpisodeStore(tmp_path / "data")
    for c in range(0, 20):  # episode 9 and 19 are the held-out ones (holdout_fraction 0.1)
        store.add(bar_episode(c, success=c != 4))
    more = EpisodeStore(tmp_path / "more")  # further demonstrations the world model never saw
    for c in range(10):
        more.add(bar_episode(c))
    main(["train-prior", "--checkpoint", str(tmp_path / "wm"), "--data", str(tmp_path / "data"),
          "--steps", "20"])  # fmt: skip
    saved = json.loads(next((tmp_path / "wm").rglob("behaviour_prior/config.json")).read_text())
    assert saved["fit"]["train_episodes"] == 17 and saved["fit"]["val_episodes"] == 2
    main(["train-prior", "--checkpoint", str(tmp_path / "wm"), "--data", str(tmp_path / "data"),
          str(tmp_path / "more"), "--steps", "20"])  # fmt: skip
    saved = json.loads(next((tmp_path / "wm").rglob("behaviour_prior/config.json")).read_text())
    assert saved["fit"]["train_episodes"] == 17 + 9 and saved["fit"]["val_episodes"] == 2 + 1
    with pytest.raises(ValueError, match="--data names a store more than once"):  # (cloned twice)
        main(["train-prior", "--checkpoint", str(tmp_path / "wm"), "--data", str(tmp_path / "data"),
              str(tmp_path / "data" / "."), "--steps", "2"])  # fmt: skip
    held = tmp_path / "held"  # a store of held-out numbers only (an IndexError)
    held.mkdir()
    for k in (9, 19):
        shutil.copy(tmp_path / "data" / f"episode_{k:06d}.npz", held / f"episode_{k:06d}.npz")
    with pytest.raises(ValueError, match=r"--data: no training episodes \(2 held out"):
        main(["train-prior", "--checkpoint", str(tmp_path / "wm"), "--data", str(held), "--steps", "2"])
    space = __import__("gymnasium").spaces.Box(-1, 1, (3,), np.float32)
    mpc = MPCConfig(
        horizon=3, optimizer="mppi", optim=OptimizerConfig(num_samples=8, num_elites=4, iterations=1)
    )
    with pytest.raises(ValueError, match=r"proposes 8 prior samples .* at most num_samples - 1 = 7"):
        load_policy(f"mpc:{tmp_path / 'wm'}", "robobrain/Push-v0", space, mpc=mpc, guide="bc", num_prior=8)
    policy = load_policy(f"mpc:{tmp_path / 'wm'}", "robobrain/Push-v0", space, mpc=mpc, guide="bc")
    assert isinstance(policy, WorldModelMPCPolicy) and isinstance(policy.guide, BehaviourPriorGuide)
    assert policy.guide.num_prior == 8 - 1 and policy.guide.noise_std == 0.1  # all candidates but the mean
    actions = policy.act({"pixels": np.zeros((2, 32, 32, 3), np.uint8)})
    assert actions.shape == (2, 3) and np.all(np.abs(actions) <= 1)
    # `eval --guide bc` fills the planner settings it is not given from the Push recipe.
    main(["eval", "--policy", f"mpc:{tmp_path / 'wm'}", "--guide", "bc", "--env", "robobrain/Reach-v0",
          "--episodes", "1", "--num-envs", "1", "--samples", "8", "--prior-samples", "7", "--iterations", "2",
          "--video-episodes", "0", "--out", str(tmp_path / "ev"), "--no-progress"])  # fmt: skip
    info = json.loads((tmp_path / "ev" / "eval_info.json").read_text())
    planner = info["planner"]
    assert info["guide_resolved"] == "bc"
    assert planner == {"optimizer": "mppi", "horizon": 14, "elites": 4, "iterations": 2,
                       "temperature": 4.0, "prior_std": 0.1, "samples": 8, "prior_samples": 7,
                       "low": -1.0, "high": 1.0, "init_std": 0.5, "min_std": 0.05,
                       "discount": 1.0, "success_bonus": 1.0, "disagreement_penalty": 0.0,
                       "time_budget": None, "compile": False, "fused": False}  # fmt: skip
    # The prior alone (no planning): its mean action on the filtered state.
    alone = load_policy(f"bc:{tmp_path / 'wm'}", "robobrain/Push-v0", space)
    assert isinstance(alone, BehaviourPriorPolicy)
    frames = np.stack([bar_episode(0).pixels[0], bar_episode(20).pixels[0]])
    alone.reset(2)
    first = alone.act({"pixels": frames})
    expected = alone.prior(model.observe(torch.from_numpy(frames[:, None]), torch.zeros(2, 1, 3)).feat)
    np.testing.assert_allclose(first, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    save_checkpoint(tmp_path / "bare", 1, model, {"world_model": to_dict(cfg)})
    for spec in ("bc", "mpc"):
        with pytest.raises(CheckpointError, match="train-prior"):
            load_policy(f"{spec}:{tmp_path / 'bare'}", "robobrain/Push-v0", space, guide="bc")


# --- from a mutation audit (session 30): properties a broken implementation passed -----------------
def test_nll_is_the_gaussian_one_its_std_minimises():
    """The learned std is the maximum-likelihood one: at std = RMS residual the NLL's gradient in
    log_std is zero (without the log-std term the NLL would push the std up for ever)."""
    torch.manual_seed(0)
    prior = BehaviourPrior(5, 2, hidden=8, layers=1)
    feat, action = torch.randn(64, 5), torch.rand(64, 2) * 2 - 1
    with torch.no_grad():
        rms = (action - prior(feat)).square().mean(0).sqrt()
        prior.log_std.copy_(rms.log())
    prior.nll(feat, action).backward()
    torch.testing.assert_close(prior.log_std.grad, torch.zeros(2), atol=1e-5, rtol=0)


def test_only_episodes_that_end_in_success_are_cloned():
    """Success at the last step, not anywhere: an episode that reached the goal and left it is not
    cloned."""
    left = bar_episode(4)
    left.success[:] = False
    left.success[3] = True
    kept = bar_episode(8)
    assert select_episodes([left, kept], successful_only=True) == [kept]


def test_fit_is_seeded_reports_the_training_mean_baseline_and_evaluates_its_last_step(model):
    """Two fits with one seed give the same prior (whatever torch's global RNG did in between); the
    mean-action baseline is the *training* set's mean action; a run shorter than eval_every still
    evaluates (its last step) and returns a prior."""
    train = [bar_episode(c) for c in (0, 4, 8)]
    val = [bar_episode(24)]
    cfg = BehaviourPriorConfig(hidden=16, layers=1, steps=7, eval_every=100, batch_size=8)
    a, report = fit_behaviour_prior(model, train, val, cfg)
    torch.rand(3)  # move the global RNG on
    b, _ = fit_behaviour_prior(model, train, val, cfg)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    assert report["best_step"] == 7
    train_mean = np.concatenate([ep.action for ep in train]).mean(0)
    expected = float(((train_mean - val[0].action) ** 2).mean())
    assert report["val_mse_mean_action"] == pytest.approx(expected, rel=1e-5)


def test_the_fit_refuses_data_it_would_clone_wrongly(model):
    """Pendulum's [-2, 2] torques were cloned by a tanh prior in [-1, 1], unsaid (its planner then
    refused it); an env that reports no success had its "no episode ended in success" error."""
    cfg = BehaviourPriorConfig(hidden=16, layers=1, steps=2, batch_size=8)
    wide = [bar_episode(c) for c in (0, 8)]
    wide[0].action[:] *= 2.0
    with pytest.raises(ValueError, match=r"acts in \[-1, 1\], but these episodes' actions reach \[-1\.6"):
        fit_behaviour_prior(model, wide[:1], wide[1:], cfg)
    silent = [bar_episode(c) for c in (0, 8)]
    for ep in silent:
        ep.meta["reports_success"] = False
    with pytest.raises(ValueError, match=r"env reports no success .* pass --all-episodes"):
        fit_behaviour_prior(model, silent[:1], silent[1:], cfg)
    fit_behaviour_prior(model, silent[:1], silent[1:], BehaviourPriorConfig(hidden=16, layers=1, steps=2,
                        batch_size=8, successful_only=False))  # fmt: skip
