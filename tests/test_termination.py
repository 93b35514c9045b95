"""The termination head: episodes that end in a terminal state (a fall) are learned, planned with
and imagined with (DreamerV3's continue head)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from robobrain.config import get_preset
from robobrain.data import Episode, SequenceSampler
from robobrain.planning import MPCConfig
from robobrain.planning.mpc import world_model_score_fn
from robobrain.rl import ImaginationVecEnv
from robobrain.rl.imagination_env import WorldModelDynamics
from robobrain.training.wm_eval import evaluate_world_model
from robobrain.training.wm_trainer import WorldModelTrainer, batch_to_torch, sized_config
from robobrain.world_model import Rollout, State, WorldModel, fused_unsupported, still_running
from tests.test_store import make_episode

DEBUG = get_preset("debug")


def falling_episode(rng: np.random.Generator, size: int = 32, steps: int = 16) -> Episode:
    """A bar rises with the actions' push (x += 0.07 (a_0 + 1)); the episode ends, terminated, on the
    step it reaches the top (x >= 1), else after ``steps`` (truncated). The frames show the bar."""
    x = [rng.uniform(0.0, 0.3)]
    actions = []
    for _ in range(steps):
        a = rng.uniform(-1, 1, 3).astype(np.float32)
        actions.append(a)
        x.append(min(x[-1] + 0.07 * (a[0] + 1), 1.0))
        if x[-1] >= 1.0:
            break
    x = np.clip(np.array(x, np.float32), 0, 1)
    rows = np.arange(size)[None, :, None, None]
    pixels = np.where(rows >= size * (1 - x[:, None, None, None]), 255, 0).astype(np.uint8)
    pixels = np.broadcast_to(pixels, (len(x), size, size, 3)).copy()
    t = len(actions)
    return Episode(
        pixels=pixels,
        state=x[:, None].copy(),
        action=np.stack(actions),
        reward=np.ones(t, np.float32),  # (alive: the same reward at every step, as InvertedPendulum's)
        success=np.zeros(t, bool),
        terminated=bool(x[-1] >= 1.0),
        meta={"env_id": "falling"},
    )


def test_windows_flag_the_last_action_of_a_terminated_episode_only():
    ended, cut = dataclasses.replace(make_episode(10), terminated=True), make_episode(10)
    sampler = SequenceSampler([ended, cut], seq_len=4)
    starts = np.arange(8)  # (windows of 4 observations start in [0, 7] of 10 steps)
    flags = sampler.gather(np.zeros(8, int), starts).terminal
    assert flags.dtype == bool and flags.shape == (8, 4)
    # The last action (index 9) is at 9 - start in the window, when that is inside it.
    want = np.zeros((8, 4), bool)
    for i, s in enumerate(starts):
        if 9 - s < 4:
            want[i, 9 - s] = True
    np.testing.assert_array_equal(flags, want)
    assert not sampler.gather(np.ones(8, int), starts).terminal.any()  # (a time limit is no end)
    # One-observation windows: the one starting at the final observation holds no action of the
    # episode (its action is padding), so no flag (it flagged the padded step).
    single = SequenceSampler([ended], seq_len=1).gather(np.zeros(11, int), np.arange(11)).terminal[:, 0]
    np.testing.assert_array_equal(single, np.arange(11) == 9)


def test_the_data_decides_whether_the_model_learns_terminations():
    rng = np.random.default_rng(0)
    eps = [falling_episode(rng, steps=steps) for steps in (16, 16, 3, 3)]  # (3 steps never reach the top)
    assert any(ep.terminated for ep in eps) and not all(ep.terminated for ep in eps)
    assert sized_config(DEBUG.world_model, eps).termination
    cut = [ep for ep in eps if not ep.terminated]
    assert not sized_config(DEBUG.world_model, cut).termination
    off = dataclasses.replace(DEBUG.world_model, use_termination=False)
    assert not sized_config(off, eps).termination
    assert WorldModel(DEBUG.world_model).termination_head is None
    with pytest.raises(ValueError, match="no episodes"):
        sized_config(DEBUG.world_model, [])


def test_the_termination_head_learns_where_episodes_end():
    """Trained on the falling bar, the head tells the step that reaches the top from the others on
    held-out episodes (a rate fitted to the data's share of terminal steps scores both alike)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = [falling_episode(rng) for _ in range(48)]
    held = [falling_episode(rng) for _ in range(16)]
    cfg = dataclasses.replace(DEBUG.world_model, action_dim=3, state_dim=0, termination=True)
    tcfg = dataclasses.replace(DEBUG.train, batch_size=16)
    model = WorldModel(cfg)
    trainer = WorldModelTrainer(model, tcfg, SequenceSampler(train, tcfg.seq_len, seed=0), "cpu")
    losses = [trainer.train_step()["terminal"] for _ in range(150)]
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:5])

    sampler = SequenceSampler(held, tcfg.seq_len, seed=1)
    batch = batch_to_torch(sampler.sample(512), "cpu")
    model.eval()
    with torch.no_grad():
        feat = model.posteriors(batch, sample=False).feat
        prob = torch.sigmoid(model.termination_head(feat[:, 1:]).squeeze(-1))
    target = batch["terminal"][:, :-1]
    assert target.sum() >= 20  # (enough terminal steps among the held-out windows)
    at_end, elsewhere = prob[target].mean().item(), prob[~target].mean().item()
    assert at_end > 0.5 and elsewhere < 0.1, (at_end, elsewhere)


@pytest.mark.parametrize("decoded_frames", [0, 3])
def test_no_loss_term_reads_the_padding_past_a_short_episodes_end(decoded_frames):
    """Windows of 8 on episodes of 3 steps: what fills the padding changes no loss term."""
    eps = [dataclasses.replace(make_episode(3, tag=i, size=32), terminated=bool(i % 2)) for i in range(4)]
    eps = [dataclasses.replace(ep, state=np.zeros((4, 10), np.float32) + ep.state[:, 1:]) for ep in eps]
    # (free nats 0: an untrained model's KL is below them, so every frame, padding too, cost exactly
    # free_nats and an unmasked KL term went unseen)
    cfg = dataclasses.replace(DEBUG.world_model, action_dim=3, state_dim=10, termination=True,
                              open_loop_horizon=3, reference_frame=True, ensemble=2, free_nats=0.0,
                              ensemble_free_nats=0.0, decoded_frames=decoded_frames)  # fmt: skip
    model = WorldModel(cfg)
    batch = batch_to_torch(SequenceSampler(eps, 8).gather(np.arange(4), np.zeros(4, int)), "cpu")
    assert batch["valid"][:, :4].all() and not batch["valid"][:, 4:].any()
    junk = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["valid"]
    junk["pixels"][pad] = 200
    junk["state"][pad] = 5.0
    for key in ("reward", "success", "terminal"):  # (read for the transition after a frame: from 3 on)
        junk[key][:, 3:] = 1
    losses, grads = [], []
    for b in (batch, junk, {**batch, "valid": torch.ones_like(batch["valid"])}):
        torch.manual_seed(0)
        model.zero_grad()
        total, metrics = model.loss(b)
        total.backward()
        losses.append(metrics)
        grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
    assert losses[0] == losses[1]
    assert all(
        (g is None and h is None) or torch.equal(g, h) for g, h in zip(grads[0], grads[1], strict=True)
    )
    assert losses[0]["recon"] != losses[2]["recon"] and losses[0]["kl"] != losses[2]["kl"]
    gap = batch["valid"].clone()
    gap[:, 5] = True  # (a real frame after padding)
    for bad in (torch.zeros_like(batch["valid"]), gap):
        with pytest.raises(ValueError, match=r"batch\['valid'\] must be True from each window's first frame"):
            model.loss({**batch, "valid": bad})
    with pytest.raises(ValueError, match=r"batch\['valid'\] must be \[B, L\]"):
        model.loss({**batch, "valid": batch["valid"][:, :-1]})


def test_the_head_learns_ends_from_episodes_all_shorter_than_a_window():
    """Windows of 18 observations, longer than every falling-bar episode (16 steps at most): they were
    all left out ("no episode has 18 observations"); padded and masked, the terminated ones teach
    the head the step that reaches the top."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train, held = [falling_episode(rng) for _ in range(48)], [falling_episode(rng) for _ in range(16)]
    cfg = dataclasses.replace(DEBUG.world_model, action_dim=3, state_dim=0, termination=True)
    tcfg = dataclasses.replace(DEBUG.train, batch_size=16, seq_len=18)
    sampler = SequenceSampler(train, tcfg.seq_len, seed=0)
    assert sampler.num_padded == len(train) and sum(ep.terminated for ep in train) >= 24
    model = WorldModel(cfg)
    trainer = WorldModelTrainer(model, tcfg, sampler, "cpu")
    losses = [trainer.train_step()["terminal"] for _ in range(100)]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])

    ended = [ep for ep in held if ep.terminated]
    windows = SequenceSampler(ended, tcfg.seq_len).gather(np.arange(len(ended)), np.zeros(len(ended), int))
    batch = batch_to_torch(windows, "cpu")
    model.eval()
    with torch.no_grad():
        feat = model.posteriors(batch, sample=False).feat
        prob = torch.sigmoid(model.termination_head(feat[:, 1:]).squeeze(-1))
    last = [len(ep) - 1 for ep in ended]  # (the last action's index: the one that reached the top)
    at_end = torch.stack([prob[i, t] for i, t in enumerate(last)])
    before = torch.cat([prob[i, :t] for i, t in enumerate(last)])
    assert at_end.mean() > 0.5 and before.mean() < 0.1, (at_end.mean(), before.mean())
    # eval-wm imagines these episodes open loop from 3 frames up to their ends (padded past them) and
    # scores the predicted ends: before training every step looks like one (0.96 false alarms).
    report = evaluate_world_model(model, held, context=3, horizon=16)["termination"]
    assert report["true_ends"] == len(ended)
    assert report["recall"] - report["false_alarms"] > 0.4, report


def test_a_batch_without_terminal_flags_is_refused_by_a_model_that_predicts_them():
    model = WorldModel(dataclasses.replace(DEBUG.world_model, termination=True))
    batch = batch_to_torch(SequenceSampler([make_episode(10, size=32)], 8, seed=0).sample(2), "cpu")
    loss, metrics = model.loss(batch)
    assert torch.isfinite(loss) and "terminal" in metrics
    with pytest.raises(ValueError, match="needs 'terminal'"):
        model.loss({k: v for k, v in batch.items() if k != "terminal"})
    with pytest.raises(ValueError, match=r"batch\['terminal'\] must be \[B, L\]"):
        model.loss({**batch, "terminal": batch["terminal"][:, :-1]})
    open_loop = WorldModel(dataclasses.replace(DEBUG.world_model, termination=True, open_loop_horizon=3))
    assert "ol_terminal" in open_loop.loss(batch)[1]


def test_the_planner_counts_no_score_after_a_predicted_end():
    """Candidate 0 earns 1 a step but ends after its second action; candidate 1 earns 0.6 a step and
    runs on. Without the head the first wins (4 vs 2.4); with it, the second, and only the second
    gets the value of its last state."""
    h = 4
    reward = torch.tensor([[1.0] * h, [0.6] * h])
    ends = torch.tensor([[-20.0, 20.0, 20.0, 20.0], [-20.0] * h])

    def imagine(head: bool):
        def rollout(state: State, actions: torch.Tensor) -> Rollout:
            assert actions.shape == (2, h, 3)
            logit = torch.full((2, h), -10.0)
            return Rollout(torch.zeros(2, h, 5), reward, logit, None, None, ends if head else None)

        return rollout

    state = State(torch.zeros(1, 4), torch.zeros(1, 2, 2))
    cfg = MPCConfig(horizon=h, success_bonus=0.0)
    actions = torch.zeros(1, 2, h, 3)
    for head, want in ((False, [4.0, 2.4]), (True, [2.0, 2.4])):
        score = world_model_score_fn(None, state, cfg, imagine=imagine(head))  # type: ignore[arg-type]
        torch.testing.assert_close(score(actions), torch.tensor([want]), atol=1e-4, rtol=0)
    valued = world_model_score_fn(None, state, cfg, lambda f: torch.full((2,), 10.0), imagine=imagine(True))  # type: ignore[arg-type]
    torch.testing.assert_close(valued(actions), torch.tensor([[2.0, 12.4]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(still_running(torch.zeros(1, 2)), torch.tensor([[1.0, 0.5, 0.25]]))


class Falling:
    """Latent x rises with the action; the episode ends past 1 (termination logit 10 (x - 1))."""

    feat_dim = 1
    action_dim = 1

    def features(self, state: State) -> torch.Tensor:
        return state.deter

    def step(self, state, action):
        x = state.deter + 0.5 * action
        return State(x, state.stoch), torch.ones(len(x)), torch.full((len(x),), -5.0), 10 * (x[:, 0] - 1)


def test_imagined_episodes_end_where_the_model_predicts_their_end():
    starts = State(torch.zeros(4, 1), torch.zeros(4, 1, 1))
    env = ImaginationVecEnv(Falling(), starts, num_envs=2, horizon=10)
    env.reset()
    _, _, dones, _ = env.step(np.array([[1.0], [-1.0]], np.float32))  # x = 0.5, -0.5
    assert not dones.any()
    _, _, dones, infos = env.step(np.array([[1.0], [-1.0]], np.float32))  # x = 1.0 (logit 0), -1
    assert not dones.any()
    _, _, dones, infos = env.step(np.array([[1.0], [1.0]], np.float32))  # x = 1.5: the end
    assert dones.tolist() == [True, False] and infos[0]["TimeLimit.truncated"] is False

    for termination in (False, True):
        model = WorldModel(dataclasses.replace(DEBUG.world_model, termination=termination))
        state = model.rssm.initial(3, "cpu")
        out = WorldModelDynamics(model, sample=False).step(state, torch.zeros(3, 3))
        assert len(out) == 4 and (out[3] is None) != termination
        assert (model.imagine(state, torch.zeros(3, 5, 3)).terminal_logit is None) != termination


def test_the_bf16_twin_predicts_terminations_as_the_model_does():
    from tests.test_mpc import bf16_twin_and_rollouts

    model, twin, state, actions, ref, got = bf16_twin_and_rollouts(termination=True)
    assert twin.pad_goal == 5 and got.terminal_logit.dtype == torch.bfloat16
    first = (got.terminal_logit[:, 0].float() - ref.terminal_logit[:, 0]).abs().median()
    assert first < 0.05 * ref.terminal_logit[:, 0].abs().median()
    with torch.no_grad():
        model.termination_head[-1].bias += 3.0
    twin.sync()  # (the head's weights are the twin's after a sync)
    moved = twin(state, actions).terminal_logit[:, 0].float() - got.terminal_logit[:, 0].float()
    assert (moved - 3.0).abs().max() < 0.1


def test_the_fused_kernel_refuses_a_model_with_a_termination_head():
    cfg = dataclasses.replace(get_preset("cpu").world_model, termination=True)
    assert fused_unsupported(cfg) == "the fused kernel does not compute the termination head"
    assert "termination" not in str(fused_unsupported(get_preset("cpu").world_model))
