"""RSSM sampling and gradients, two-hot head, pixel round trip, loss alignment and
weights (debug sizes, CPU, seconds)."""

import dataclasses

import pytest
import torch

from robobrain.config import get_preset
from robobrain.world_model import WorldModel
from robobrain.world_model.networks import (
    ScalarHead,
    float_to_pixels,
    num_conv_layers,
    pixels_to_float,
)
from tests.test_world_model import fake_batch

DEBUG = get_preset("debug")


def test_unimix_log_probs_are_a_normalised_mixture():
    cfg = dataclasses.replace(DEBUG.world_model, unimix=0.1)
    rssm = WorldModel(cfg).rssm
    logits = torch.randn(5, cfg.stoch * cfg.classes, generator=torch.Generator().manual_seed(0)) * 5
    probs = rssm.log_probs(logits).exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, cfg.stoch))
    assert probs.min() >= 0.1 / cfg.classes - 1e-6


def test_gumbel_samples_follow_the_categorical():
    rssm = WorldModel(DEBUG.world_model).rssm
    p = torch.tensor([0.6, 0.25, 0.1, 0.05])
    lp = p.log().expand(20000, DEBUG.world_model.stoch, 4)
    torch.manual_seed(0)
    freq = rssm.draw(lp, sample=True).mean((0, 1))
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)


def test_straight_through_gradients_are_those_of_the_probabilities():
    rssm = WorldModel(DEBUG.world_model).rssm
    logits = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    (rssm.draw(logits.log_softmax(-1), sample=False) * w).sum().backward()
    got = logits.grad.clone()
    logits.grad = None
    (logits.softmax(-1) * w).sum().backward()
    torch.testing.assert_close(got, logits.grad)


@pytest.mark.parametrize("unimix", [0.0, 0.2])
def test_ensemble_disagreement_is_the_unbiased_variance_of_the_head_probabilities(unimix):
    cfg = dataclasses.replace(DEBUG.world_model, ensemble=3, unimix=unimix)
    torch.manual_seed(0)
    rssm = WorldModel(cfg).rssm
    deter = torch.randn(5, cfg.deter)
    with torch.no_grad():
        probs = rssm.ensemble_log_probs(deter).exp()  # [K, 5, S, C]
        want = probs.var(0, unbiased=True).sum((-2, -1))
        torch.testing.assert_close(rssm.ensemble_disagreement(deter), want, rtol=1e-4, atol=1e-7)


def _head():
    head = ScalarHead(4, 8, bins=5, limit=2.0)  # bins at symlog -2, -1, 0, 1, 2
    return head


def test_two_hot_targets_and_the_prediction_they_decode_to():
    head = _head()
    bias = head[-1].bias
    target = torch.expm1(torch.tensor([0.25]))  # symlog 0.25: 3/4 on bin 0, 1/4 on bin 1
    head.loss(torch.zeros(1, 4), target).sum().backward()
    two_hot = 1 / 5 - bias.grad  # d CE / d logits = softmax (uniform) - two-hot
    torch.testing.assert_close(two_hot, torch.tensor([0.0, 0.0, 0.75, 0.25, 0.0]), atol=1e-6, rtol=0)
    with torch.no_grad():
        bias.copy_(torch.tensor([1e-12, 1e-12, 0.75, 0.25, 1e-12]).log())
    torch.testing.assert_close(head(torch.zeros(1, 4)).squeeze(), target.squeeze(), rtol=1e-4, atol=1e-4)


def test_two_hot_targets_beyond_the_limit_count_as_the_last_bin():
    head = _head()
    with torch.no_grad():
        head[-1].bias.copy_(torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))
    feat = torch.zeros(2, 4)
    far = head.loss(feat, torch.tensor([1e6, -1e6]))
    edge = head.loss(feat, torch.expm1(torch.tensor([2.0, 2.0])) * torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(far, edge)
    assert (far > 0).all()


def test_every_uint8_value_survives_the_float_round_trip():
    px = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous()
    assert torch.equal(float_to_pixels(pixels_to_float(px)), px)


def test_image_sizes_below_16_are_refused():
    for size in (4, 8, 0, -8):  # (0 and -8: "math domain error")
        with pytest.raises(ValueError, match="power of two >= 16"):
            num_conv_layers(size)
    assert num_conv_layers(16) == 2


def _loss(model, batch, seed=1):
    torch.manual_seed(seed)
    return model.loss(batch)


@pytest.mark.parametrize("horizon", [0, 1, 3])
def test_the_last_steps_reward_success_and_action_are_never_targets(horizon):
    """reward[t], success[t] belong to the frame after action t, and action t leads to frame t+1:
    the window's last ones have no frame in it, so changing them changes no term of the loss."""
    cfg = dataclasses.replace(DEBUG.world_model, open_loop_horizon=horizon, reward_bins=0)
    torch.manual_seed(0)
    model = WorldModel(cfg)
    batch = fake_batch(cfg)
    batch["success"] = batch["success"].float()
    _, base = _loss(model, batch)
    for key, value in (("reward", 50.0), ("success", 1.0 - batch["success"][:, -1]), ("action", -0.9)):
        changed = {**batch, key: batch[key].clone()}
        changed[key][:, -1] = value
        _, m = _loss(model, changed)
        for k in base:
            assert m[k] == pytest.approx(base[k], rel=1e-6, abs=1e-7), (key, k)


def test_kl_terms_below_free_nats_cost_exactly_free_nats_and_weights_apply():
    """With every weight 0 but kl_rep, the loss is kl_rep x the clamped KL: at free_nats far above the
    KL, exactly kl_rep x free_nats (the refiner's pixel loss weighs recon_weight, here 0)."""
    cfg = dataclasses.replace(DEBUG.world_model, recon_weight=0.0, reward_weight=0.0, success_weight=0.0,
                              kl_dyn=0.0, kl_rep=0.5, free_nats=100.0, state_weight=0.0)  # fmt: skip
    torch.manual_seed(0)
    loss, _ = WorldModel(cfg).loss(fake_batch(cfg))
    assert loss.item() == pytest.approx(50.0)


@pytest.mark.parametrize(("kl_dyn", "kl_rep"), [(0.0, 1.0), (1.0, 0.0)])
def test_only_the_dynamics_kl_trains_the_prior(kl_dyn, kl_rep):
    """KL balancing: kl_dyn's term KL(sg(post) || prior) trains the prior; kl_rep's stops its gradient."""
    cfg = dataclasses.replace(DEBUG.world_model, kl_dyn=kl_dyn, kl_rep=kl_rep, free_nats=0.0)
    torch.manual_seed(0)
    model = WorldModel(cfg)
    loss, _ = model.loss(fake_batch(cfg))
    loss.backward()
    trained = any(p.grad is not None and p.grad.any() for p in model.rssm.prior.parameters())
    assert trained == (kl_dyn > 0)


def test_the_open_loop_reward_loss_averages_only_the_steps_inside_the_window():
    """Recomputed by hand: from the posterior at frame s the prior imagines s+1..s+K under the real
    actions, and only frames inside the window (s+j <= L-1) count."""
    from robobrain.world_model.rssm import State, categorical_kl

    cfg = dataclasses.replace(DEBUG.world_model, open_loop_horizon=3, reward_bins=0, state_dim=2)
    torch.manual_seed(0)
    model = WorldModel(cfg)
    batch = fake_batch(cfg, b=2, t=4)
    batch["state"] = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    _, metrics = model.loss(batch)
    torch.manual_seed(1)
    with torch.no_grad():
        posts, post_lp, _ = model._filter_batch(batch, sample=True)
        losses, kls, states = [], [], []
        seq = 4
        for s in range(seq - 1):
            state = State(*(None if x is None else x[:, s] for x in posts))
            for j in range(1, 4):
                if s + j > seq - 1:
                    break
                state, prior = model.rssm.img_step(state, batch["action"][:, s + j - 1].float(), sample=False)
                losses.append(model.reward_head.loss(state.feat, batch["reward"][:, s + j - 1]))
                kls.append(categorical_kl(post_lp[:, s + j], prior))
                target = (batch["state"][:, s + j] - model.state_mean) / model.state_std  # (frame s+j's)
                states.append((model.state_head(state.feat) - target).square().mean(-1))
    assert metrics["ol_reward"] == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
    assert metrics["ol_state"] == pytest.approx(torch.stack(states).mean().item(), rel=1e-5)
    assert metrics["ol_kl"] == pytest.approx(torch.stack(kls).mean().item(), rel=1e-5)


# --- from a mutation audit (session 39) --------------------------------------------------------------
def test_the_one_step_heads_read_the_state_after_each_action():
    """Recomputed by hand: reward[t], success[t] and terminal[t] are predicted from frame t+1's state
    (a head trained on frame t's passed the last-step test: that step is never a target either way)."""
    import torch.nn.functional as F

    cfg = dataclasses.replace(DEBUG.world_model, reward_bins=0, termination=True, open_loop_horizon=0)
    torch.manual_seed(0)
    model = WorldModel(cfg)
    batch = fake_batch(cfg, b=2, t=5)
    batch["success"] = batch["success"].float()
    batch["terminal"] = (torch.rand(2, 5, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    _, metrics = _loss(model, batch)
    torch.manual_seed(1)
    with torch.no_grad():
        feat = model._filter_batch(batch, sample=True)[0].feat[:, 1:]
        want = {
            "reward": model.reward_head.loss(feat, batch["reward"][:, :-1]).mean(),
            "success": F.binary_cross_entropy_with_logits(
                model.success_head(feat).squeeze(-1), batch["success"][:, :-1]
            ),
            "terminal": F.binary_cross_entropy_with_logits(
                model.termination_head(feat).squeeze(-1), batch["terminal"][:, :-1]
            ),
        }
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value.item(), rel=1e-5), key


def test_dynamics_and_representation_kls_are_clamped_per_step():
    """Free nats bound each step's KL (DreamerV3), not the batch mean: at the per-step KL's median,
    half the steps cost free_nats and half their own KL."""
    from robobrain.world_model.rssm import categorical_kl

    for kl_dyn, kl_rep in ((1.0, 0.0), (0.0, 1.0)):
        zero = dict.fromkeys(("recon_weight", "reward_weight", "success_weight", "state_weight"), 0.0)
        base = dataclasses.replace(
            DEBUG.world_model, **zero, open_loop_horizon=0, kl_dyn=kl_dyn, kl_rep=kl_rep
        )
        torch.manual_seed(0)
        model = WorldModel(base)
        batch = fake_batch(base, b=2, t=5)
        torch.manual_seed(1)
        with torch.no_grad():
            _, post_lp, prior_lp = model._filter_batch(batch, sample=True)
            kl = categorical_kl(post_lp, prior_lp)  # [B, L]
        free = kl.median().item()
        model.cfg = dataclasses.replace(base, free_nats=free)
        loss, _ = _loss(model, batch)
        assert loss.item() == pytest.approx(kl.clamp(min=free).mean().item(), rel=1e-5), (kl_dyn, kl_rep)


def test_sampled_imagination_samples_and_observe_ignores_the_first_action():
    cfg = DEBUG.world_model
    torch.manual_seed(0)
    model = WorldModel(cfg).eval()
    batch = fake_batch(cfg, b=2, t=4)
    with torch.no_grad():
        state = model.observe(batch["pixels"], batch["action"])
        other_first = batch["action"].clone()
        other_first[:, 0] = -batch["action"][:, 0]  # (the action before the window: ignored)
        again = model.observe(batch["pixels"], other_first)
        torch.testing.assert_close(again.deter, state.deter, rtol=0, atol=0)
        actions = torch.zeros(2, 8, cfg.action_dim)
        mode = model.imagine(state, actions).feat
        torch.manual_seed(1)
        one = model.imagine(state, actions, sample=True)
        torch.manual_seed(2)
        two = model.imagine(state, actions, sample=True).feat
    assert not torch.equal(one.feat, two) and not torch.equal(one.feat, mode)
    stoch = one.feat[..., cfg.deter :].unflatten(-1, (cfg.stoch, cfg.classes))
    assert ((stoch == 0) | (stoch == 1)).all() and (stoch.sum(-1) == 1).all()  # one-hot draws


def test_decoded_states_undo_the_standardisation_and_the_success_bonus_is_a_probability():
    from robobrain.world_model.model import step_score

    cfg = dataclasses.replace(DEBUG.world_model, state_dim=3)
    model = WorldModel(cfg)
    model.set_state_stats(torch.arange(3.0) + 10, torch.full((3,), 2.0))
    with torch.no_grad():
        last = [m for m in model.state_head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
        got = model.decode_state(torch.zeros(2, cfg.feat_dim))
    torch.testing.assert_close(got, torch.tensor([[11.0, 9.0, 12.0]] * 2))
    score = step_score(torch.zeros(3), torch.tensor([-50.0, 0.0, 50.0]), 2.0)
    torch.testing.assert_close(score, torch.tensor([0.0, 1.0, 2.0]))
