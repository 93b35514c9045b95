"""WorldModel: observe, imagine, decode, loss. The planner lives elsewhere and composes these verbs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robobrain.config import WorldModelConfig
from robobrain.world_model.networks import (
    MLP,
    Decoder,
    Encoder,
    ReferenceRefiner,
    ScalarHead,
    float_to_pixels,
    pixels_to_float,
)
from robobrain.world_model.rssm import RSSM, State, categorical_kl, stack_states

STATE_STD_FLOOR = 0.05
"""Smallest std the state targets are divided by (state units: m, m/s, quaternion components)."""
REFINED_FRAMES = 4
"""Frames per training window the reference refiner learns on (``cfg.reference_frame``)."""


class Rollout(NamedTuple):
    """An imagined future of H steps for B action sequences.

    feat: [B, H, F] -- latent features after each action
    reward: [B, H] -- predicted reward of each action
    success_logit: [B, H] -- predicted success (logit) after each action
    disagreement: [B, H] or None -- ensemble variance (uncertainty), when the model has an ensemble
    pixels: uint8[B, H, S, S, 3] or None -- decoded frames, when asked for
    terminal_logit: [B, H] or None -- predicted end of the episode (logit) after each action, when
        the model has a termination head (``cfg.termination``)
    """

    feat: torch.Tensor
    reward: torch.Tensor
    success_logit: torch.Tensor
    disagreement: torch.Tensor | None
    pixels: torch.Tensor | None
    terminal_logit: torch.Tensor | None = None


def still_running(terminal_logit: torch.Tensor) -> torch.Tensor:
    """[B, H + 1]: the probability that an imagined episode is still running before each of H steps
    (1 before the first) and after the last, from the termination head's logits [B, H]."""
    alive = torch.sigmoid(-terminal_logit.float())
    return torch.cat([torch.ones_like(alive[:, :1]), alive], 1).cumprod(1)


def masked_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the entries where ``weight`` [same shape] is 1 (0 where none is)."""
    return (x * weight).sum() / weight.sum().clamp(min=1)


def step_score(reward: torch.Tensor, success_logit: torch.Tensor, success_bonus: float) -> torch.Tensor:
    """What one imagined step is worth: predicted reward + ``success_bonus`` x predicted success
    probability, elementwise (any shape). The MPC planner sums it over its horizon and the SB3 critic
    learns it in imagination, so the critic's value continues the planner's sum past the horizon."""
    if not success_bonus:
        return reward
    return reward + success_bonus * torch.sigmoid(success_logit)


def _taken_as_is(x: object, param: torch.Tensor) -> bool:
    """Whether :meth:`WorldModel.as_input` would return ``x`` unchanged (``param``: one of the model's)."""
    return x is None or (
        isinstance(x, torch.Tensor)
        and x.device == param.device
        and (x.dtype == param.dtype or not x.is_floating_point())
    )


class WorldModel(nn.Module):
    """Action-conditioned video world model: conv encoder, RSSM dynamics, conv decoder, reward and
    success heads. The device follows the module (``.to(device)``). It trains in float32; for
    imagination it also runs under bf16 autocast or as a whole-bf16 copy (``.to(torch.bfloat16)``,
    as :class:`~robobrain.world_model.graphs.Bf16Imagine` makes), and its inputs take the dtype of
    its weights (:meth:`as_input`). A whole-bf16 copy imagines (and decodes) latents only: its
    ``observe``, and decoding with a reference frame, feed float32 pixels to bf16 convolutions (a dtype
    error; nothing makes it do so)."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        if cfg.decoded_frames < 0:
            raise ValueError(f"decoded_frames must be >= 0 (0 = every frame), got {cfg.decoded_frames}")
        if not cfg.ensemble >= 0:
            raise ValueError(f"ensemble must be >= 0 (0: no ensemble), got {cfg.ensemble}")
        if not cfg.open_loop_horizon >= 0:
            raise ValueError(f"open_loop_horizon must be >= 0 (0: off), got {cfg.open_loop_horizon}")
        if not 0 <= cfg.unimix < 1:  # (1 is a uniform latent: it holds nothing)
            raise ValueError(f"unimix must be in [0, 1), got {cfg.unimix}")
        self.cfg = cfg
        self.encoder = Encoder(cfg.image_size, cfg.cnn_depth, cfg.keypoints)
        self.rssm = RSSM(cfg, self.encoder.embed_dim + cfg.proprio_dim)
        self.decoder = Decoder(cfg.feat_dim, cfg.image_size, cfg.cnn_depth)
        self.refiner = ReferenceRefiner(cfg.cnn_depth, cfg.refiner_layers) if cfg.reference_frame else None
        self.reward_head = ScalarHead(cfg.feat_dim, cfg.hidden, cfg.reward_bins, cfg.reward_limit)
        self.success_head = MLP(cfg.feat_dim, 1, cfg.hidden, layers=2)
        self.state_head = MLP(cfg.feat_dim, cfg.state_dim, cfg.hidden, layers=2) if cfg.state_dim else None
        self.termination_head = MLP(cfg.feat_dim, 1, cfg.hidden, layers=2) if cfg.termination else None
        # Standardisation of the decoded state, set from the training data (set_state_stats), saved
        # with the weights.
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.register_buffer("goal_mean", torch.zeros(cfg.goal_dim))
        self.register_buffer("goal_std", torch.ones(cfg.goal_dim))
        if cfg.proprio_dim:  # (only then: pixel-only checkpoints written before it still load)
            self.register_buffer("proprio_mean", torch.zeros(cfg.proprio_dim))
            self.register_buffer("proprio_std", torch.ones(cfg.proprio_dim))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def uses_state_stats(self) -> bool:
        """Whether :meth:`set_state_stats` matters: the model decodes the state, or reads its goal or
        proprioception."""
        return bool(self.cfg.state_dim or self.cfg.goal_dim or self.cfg.proprio_dim)

    def set_state_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension mean / std [n] of the env's state vectors in the training data; they
        standardise the state targets (when ``state_dim``), the goal input (when ``goal_dim``) and the
        proprioception (when ``proprio_dim``).
        The std is floored at ``STATE_STD_FLOOR`` so that dimensions that barely vary in the data
        the stats came from (a block's velocity in random seed data) do not dominate the loss once
        they start to vary."""
        cfg = self.cfg
        n = mean.shape[-1] if mean.ndim == 1 else -1
        if mean.shape != std.shape or n < 0 or (cfg.state_dim and n != cfg.state_dim):
            raise ValueError(
                f"state stats must be two [{cfg.state_dim or 'n'}] vectors, got "
                f"{list(mean.shape)}, {list(std.shape)}"
            )
        if n < cfg.goal_start + cfg.goal_dim:
            raise ValueError(f"state stats of size {n} hold no goal at [{cfg.goal_start}:+{cfg.goal_dim}]")
        if n < cfg.proprio_start + cfg.proprio_dim:  # (every check before the first write)
            raise ValueError(
                f"state stats of size {n} hold no proprioception at [{cfg.proprio_start}:+{cfg.proprio_dim}]"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std >= 0).all()):
            raise ValueError("state stats must be finite, with std >= 0")
        std = std.clamp(min=STATE_STD_FLOOR)
        if cfg.state_dim:
            self.state_mean.copy_(mean)
            self.state_std.copy_(std)
        goal = slice(cfg.goal_start, cfg.goal_start + cfg.goal_dim)
        self.goal_mean.copy_(mean[goal])
        self.goal_std.copy_(std[goal])
        if cfg.proprio_dim:
            proprio = slice(cfg.proprio_start, cfg.proprio_start + cfg.proprio_dim)
            self.proprio_mean.copy_(mean[proprio])
            self.proprio_std.copy_(std[proprio])

    def goal(self, env_state: torch.Tensor | None) -> torch.Tensor | None:
        """The standardised goal [..., G] from env state vectors [..., n] (``obs["state"]``); None
        for a model without a goal."""
        cfg = self.cfg
        if not cfg.goal_dim:
            return None
        if env_state is None:
            raise ValueError(
                "this world model is goal-conditioned: pass the env state vectors (obs['state']), "
                f"whose [{cfg.goal_start}:{cfg.goal_start + cfg.goal_dim}] is the goal"
            )
        if env_state.shape[-1] < cfg.goal_start + cfg.goal_dim:
            raise ValueError(
                f"env state of size {env_state.shape[-1]} holds no goal at "
                f"[{cfg.goal_start}:{cfg.goal_start + cfg.goal_dim}]"
            )
        g = env_state[..., cfg.goal_start : cfg.goal_start + cfg.goal_dim].float()
        return (g - self.goal_mean) / self.goal_std

    def proprio(self, env_state: torch.Tensor | None) -> torch.Tensor | None:
        """The standardised proprioceptive input [..., P] from env state vectors [..., n]
        (``obs["state"]``); None for a pixels-only model."""
        cfg = self.cfg
        if not cfg.proprio_dim:
            return None
        end = cfg.proprio_start + cfg.proprio_dim
        if env_state is None or env_state.shape[-1] < end:
            got = "none" if env_state is None else f"size {env_state.shape[-1]}"
            raise ValueError(
                f"this world model reads proprioception at state[{cfg.proprio_start}:{end}] of the env "
                f"state vectors (obs['state']); got {got}"
            )
        return (env_state[..., cfg.proprio_start : end].float() - self.proprio_mean) / self.proprio_std

    def embed(self, pixels: torch.Tensor, env_state: torch.Tensor | None = None) -> torch.Tensor:
        """Observation embedding [..., E] of frames uint8[..., S, S, 3]: the conv encoder's, followed
        by the standardised proprioception of ``env_state`` [..., n] for a model with ``proprio_dim``."""
        self._check_pixels(pixels, "...")
        x = pixels_to_float(pixels)
        out = self.encoder(x.reshape(-1, *x.shape[-3:])).reshape(*pixels.shape[:-3], -1)
        proprio = self.proprio(env_state)
        return out if proprio is None else torch.cat([out, proprio], -1)

    def decode_state(self, feat: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Latent features [..., F] -> predicted env state [..., state_dim] (needs ``state_dim``; numpy
        features are moved to the model's device)."""
        if self.state_head is None:
            raise ValueError("this world model has no state head (state_dim=0)")
        feat = self.as_input(feat)
        self._check_feat(feat)
        return self.state_head(feat) * self.state_std + self.state_mean

    # --- verbs -------------------------------------------------------------------------------
    def observe(
        self,
        pixels: torch.Tensor,
        actions: torch.Tensor,
        env_state: torch.Tensor | None = None,
        sample: bool = False,
    ) -> State:
        """Filter a context window into the latent state at its last frame.

        pixels: uint8[B, T, S, S, 3]; actions: [B, T, A] where ``actions[:, t]`` is the action taken
        *before* frame t (``actions[:, 0]`` is ignored at the start of an episode; pass zeros);
        env_state: [B, T, n] or [B, n], the env's state vectors -- read only for the goal of a
        goal-conditioned model (``cfg.goal_dim``) and, [B, T, n], for the robot's own state of a model
        with proprioception (``cfg.proprio_dim``), never for anything else.
        Torch tensors or numpy arrays (as the envs return them; moved to the model's device).
        Returns the posterior State at frame T-1 ([B, ...]).
        """
        pixels, actions, env_state = (self.as_input(x) for x in (pixels, actions, env_state))
        proprio = None
        if self.cfg.proprio_dim:
            if env_state is None or env_state.ndim != 3:
                raise ValueError("this world model reads proprioception: pass env_state [B, T, n]")
            proprio = self.proprio(env_state)
        if env_state is not None and env_state.ndim == 3:
            if env_state.shape[:2] != pixels.shape[:2]:
                raise ValueError(
                    f"env_state [B, T, n] must have the pixels' B, T = {list(pixels.shape[:2])}, got "
                    f"{list(env_state.shape)}"
                )
            env_state = env_state[:, -1]
        goal = self.goal(env_state)
        for name, x in (("goal", goal), ("proprioception", proprio)):
            if x is not None and not torch.isfinite(x).all():
                raise ValueError(f"env_state: the {name} it holds contains NaN or inf")
        posts, _, _ = self._filter(pixels, actions, sample=sample, goal=goal, proprio=proprio)
        return posts.index((slice(None), -1))

    def imagine(
        self,
        state: State,
        actions: torch.Tensor,
        sample: bool = False,
        decode: bool = False,
        reference: torch.Tensor | None = None,
        disagreement: bool = True,
    ) -> Rollout:
        """Roll the dynamics forward from ``state`` under ``actions`` [B, H, A], batched over B.

        ``sample=False`` follows the most likely latent (deterministic, for planning). ``decode``
        adds the frames; a model with ``cfg.reference_frame`` composes them from ``reference``
        uint8[B, S, S, 3], the last real frame each state observed (see :meth:`decode`).
        ``disagreement=False`` skips the ensemble's disagreement (``Rollout.disagreement`` is None; on
        2 CPU cores it costs about twice the rest of a K=4 ensemble model's rollout).
        ``actions`` and ``reference`` may be numpy arrays (moved to the model's device).
        """
        state, actions = self.imagine_inputs(state, actions, finite=True)
        reference = self.as_input(reference)
        return self.imagine_unchecked(state, actions, sample, decode, reference, disagreement)

    def as_input(self, x: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
        """An input as the model takes it: a tensor on the model's device (a numpy array, or a tensor
        elsewhere, e.g. CPU candidates for a CUDA model, is moved there), floats in the dtype of the
        model's weights (float32; bf16 for a bf16 copy): a bf16 state given to a float32 model outside
        autocast failed inside torch's matmul, as float64 did."""
        if x is None:
            return None
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        param = self._input_param()
        return t.to(param.device, param.dtype if t.is_floating_point() else None)

    def _input_param(self) -> torch.Tensor:
        """A weight of the dynamics, whose dtype the inputs take (the RSSM reads states and actions;
        the encoder's first weight is what ``self.parameters()`` yields first)."""
        return next(self.rssm.parameters())

    def imagine_inputs(
        self, state: State, actions: torch.Tensor | np.ndarray, finite: bool = False
    ) -> tuple[State, torch.Tensor]:
        """``state`` and ``actions`` as :meth:`imagine` takes them (:meth:`as_input`: numpy, another
        float dtype, or on another device), checked by :meth:`check_imagine_inputs`."""
        param = self._input_param()
        if not all(_taken_as_is(x, param) for x in (*state, actions)):  # (the usual case: nothing to move)
            state = State(*(self.as_input(x) for x in state))
            actions = self.as_input(actions)
        self.check_imagine_inputs(state, actions, finite=finite)
        return state, actions

    def check_imagine_inputs(self, state: State, actions: torch.Tensor, finite: bool = False) -> None:
        """The checks of :meth:`imagine`: shapes, and with ``finite`` that no action, start state or
        goal is NaN or inf (the checks that wait for the device)."""
        if actions.ndim != 3:
            raise ValueError(f"actions must be [B, H, A={self.cfg.action_dim}], got {list(actions.shape)}")
        self._check_actions(actions, actions.shape[0], finite=finite)
        if actions.shape[1] < 1:
            raise ValueError("actions must hold at least one step, got T=0")
        b, cfg = actions.shape[0], self.cfg
        if state.deter.shape[0] != b:
            raise ValueError(f"state has batch {state.deter.shape[0]} but actions have {b}")
        for name, got, want in (("deter", state.deter.shape, (b, cfg.deter)),
                                ("stoch", state.stoch.shape, (b, cfg.stoch, cfg.classes))):  # fmt: skip
            if tuple(got) != want:
                raise ValueError(f"state.{name} must be {list(want)}, got {list(got)}")
        self._check_goal(state.goal, b)
        if finite and state.goal is not None and not torch.isfinite(state.goal).all():
            raise ValueError("state.goal contains NaN or inf")
        if finite and not (torch.isfinite(state.deter).all() and torch.isfinite(state.stoch).all()):
            raise ValueError("state (deter or stoch) contains NaN or inf")

    def imagine_unchecked(
        self,
        state: State,
        actions: torch.Tensor,
        sample: bool = False,
        decode: bool = False,
        reference: torch.Tensor | None = None,
        disagreement: bool = True,
    ) -> Rollout:
        """:meth:`imagine` without its input checks: nothing in it waits for the device, so a CUDA
        graph can record it (:class:`robobrain.world_model.GraphedImagine`). A non-finite action
        gives non-finite outputs for its row, which the planner's optimizers never pick."""
        h = actions.shape[1]
        goal = state.goal
        deters, stochs = [], []
        for t in range(h):
            if sample:
                state, _ = self.rssm.img_step(state, actions[:, t], sample=True)
            else:
                state = self.rssm.img_step_mode(state, actions[:, t])
            deters.append(state.deter)
            stochs.append(state.stoch)
        goals = None if goal is None else goal.unsqueeze(1).expand(-1, h, -1)
        states = State(torch.stack(deters, 1), torch.stack(stochs, 1), goals)
        return self.heads(states, decode, reference, disagreement)

    def heads(
        self,
        states: State,
        decode: bool = False,
        reference: torch.Tensor | None = None,
        disagreement: bool = True,
    ) -> Rollout:
        """Read rewards, success logits, termination logits (with a termination head; and ensemble
        disagreement unless ``disagreement=False``, frames) off imagined states [B, H, ...], e.g.
        ones a policy prior rolled out itself; :meth:`imagine` ends with this."""
        feat = states.feat
        spread = None
        if self.cfg.ensemble and disagreement:
            spread = self.rssm.ensemble_disagreement(states.deter)
        return Rollout(
            feat=feat,
            reward=self.reward_head(feat).squeeze(-1),
            success_logit=self.success_head(feat).squeeze(-1),
            disagreement=spread,
            pixels=self.decode(feat, reference) if decode else None,
            terminal_logit=None if self.termination_head is None else self.termination_head(feat).squeeze(-1),
        )

    def decode(
        self, feat: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        """Latent features [B, ..., F] -> predicted frames uint8[B, ..., S, S, 3].

        reference: uint8[B, S, S, 3], a real frame of each feature's episode (the last one observed),
        needed by -- and only read by -- a model with ``cfg.reference_frame``; a numpy array is
        moved to the model's device, as are numpy features."""
        feat, reference = self.as_input(feat), self.as_input(reference)
        self._check_feat(feat, least_dims=2)  # ([F] failed inside unflatten)
        if self.refiner is None:
            return float_to_pixels(self._decode_float(feat))
        lead = feat.shape[:-1]
        hidden = self.decoder.hidden(feat.reshape(-1, feat.shape[-1]))
        return float_to_pixels(self._refine(hidden.unflatten(0, lead), reference))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch of windows (see ``robobrain.data.SequenceBatch``).

        batch: pixels uint8[B, L, S, S, 3], action [B, L, A] (taken *after* each frame),
        reward [B, L], success [B, L], terminal [B, L] (read with a termination head), and optionally
        state [B, L, n] (decoded when ``state_dim``) and valid bool[B, L] (False: padding past an
        episode's end, which no loss term reads; default all True). Frame t+1 is predicted from frame
        t and action t; the reward, success and termination heads on the state of frame t+1 predict
        reward[t], success[t] and terminal[t].
        """
        pixels, action = batch["pixels"], batch["action"].float()
        b, seq = pixels.shape[:2]
        if seq < 2:  # the reward and success heads learn from the transitions between frames
            raise ValueError(f"training windows need at least 2 frames, got {seq}")
        if self.termination_head is not None and "terminal" not in batch:
            raise ValueError("this world model predicts terminations: the batch needs 'terminal' [B, L]")
        keys = ("reward", "success", "terminal")[: 2 + (self.termination_head is not None)]
        for key in (*keys, "valid") if "valid" in batch else keys:
            if list(batch[key].shape) != [b, seq]:
                raise ValueError(f"batch[{key!r}] must be [B, L] = {[b, seq]}, got {list(batch[key].shape)}")
        valid = batch["valid"].float() if "valid" in batch else pixels.new_ones((b, seq), dtype=torch.float32)
        if not valid[:, 0].all() or (valid[:, 1:] > valid[:, :-1]).any():
            raise ValueError(
                "batch['valid'] must be True from each window's first frame up to its episode's end, then "
                "False (padding)"
            )
        moved = valid[:, 1:]  # [B, L-1]: the transition into frame t+1 is one of the episode's
        posts, post_lp, prior_lp = self._filter_batch(batch, sample=True)
        cfg = self.cfg
        feat = posts.feat
        frames = None  # decode every frame
        if 0 < cfg.decoded_frames < seq - 1:
            # (a short episode's real frames first: padding is decoded only where too few are real)
            draw = torch.rand(b, seq - 1, device=pixels.device) + 2 * (1 - valid[:, 1:])
            frames = 1 + draw.argsort(-1)[:, : cfg.decoded_frames]
            rows = torch.arange(b, device=pixels.device)[:, None]
            dec_feat, dec_pixels, dec_valid = feat[rows, frames], pixels[rows, frames], valid[rows, frames]
        else:
            dec_feat, dec_pixels, dec_valid = feat, pixels, valid
        lead = dec_feat.shape[:2]
        hidden = self.decoder.hidden(dec_feat.flatten(0, 1))
        recon = self.decoder.to_image(hidden).unflatten(0, lead)
        recon_loss = masked_mean((recon - pixels_to_float(dec_pixels)).square().sum((-3, -2, -1)), dec_valid)
        refined_loss = None
        if self.refiner is not None and seq > 1:
            refined_loss = self.refiner_loss(hidden.unflatten(0, lead).detach(), pixels, frames, valid)

        reward_loss = masked_mean(self.reward_head.loss(feat[:, 1:], batch["reward"][:, :-1]), moved)
        success_logit = self.success_head(feat[:, 1:]).squeeze(-1)
        success_target = batch["success"][:, :-1].float()
        success_bce = F.binary_cross_entropy_with_logits(success_logit, success_target, reduction="none")
        success_loss = masked_mean(success_bce, moved)
        terminal_loss = None
        if self.termination_head is not None:
            terminal_logit = self.termination_head(feat[:, 1:]).squeeze(-1)
            terminal_target = batch["terminal"][:, :-1].float()
            bce = F.binary_cross_entropy_with_logits(terminal_logit, terminal_target, reduction="none")
            terminal_loss = masked_mean(bce, moved)

        state_loss = None
        if self.state_head is not None and "state" in batch:
            target_state = (batch["state"].float() - self.state_mean) / self.state_std
            state_loss = masked_mean((self.state_head(feat) - target_state).square().mean(-1), valid)

        kl_dyn = categorical_kl(post_lp.detach(), prior_lp)  # [B, L]
        kl_rep = categorical_kl(post_lp, prior_lp.detach())
        dyn_loss = masked_mean(kl_dyn.clamp(min=cfg.free_nats), valid)
        rep_loss = masked_mean(kl_rep.clamp(min=cfg.free_nats), valid)
        total = (
            cfg.recon_weight * recon_loss
            + cfg.reward_weight * reward_loss
            + cfg.success_weight * success_loss
            + cfg.kl_dyn * dyn_loss
            + cfg.kl_rep * rep_loss
        )
        if state_loss is not None:
            total = total + cfg.state_weight * state_loss
        if terminal_loss is not None:
            total = total + cfg.termination_weight * terminal_loss
        if refined_loss is not None:
            total = total + cfg.recon_weight * refined_loss
        metrics = {
            "recon": recon_loss.item(),
            "reward": reward_loss.item(),
            "success": success_loss.item(),
            "kl": masked_mean(kl_dyn, valid).item(),
        }
        if state_loss is not None:
            metrics["state"] = state_loss.item()
        if terminal_loss is not None:
            metrics["terminal"] = terminal_loss.item()
        if refined_loss is not None:
            metrics["recon_refined"] = refined_loss.item()
        if cfg.open_loop_horizon > 0 and pixels.shape[1] > 1:
            ol_loss, ol_metrics = self._open_loop_loss(posts, post_lp, batch, action, valid)
            total = total + cfg.open_loop_weight * ol_loss
            metrics.update(ol_metrics)
        if cfg.ensemble:
            # On stopped features, as Plan2Explore trains its ensemble: the heads measure what the
            # latent does not predict, rather than shaping the latent to agree with them.
            ens_lp = self.rssm.ensemble_log_probs(posts.deter.detach())
            ens_kl = categorical_kl(post_lp.detach().unsqueeze(0), ens_lp)
            ens_loss = masked_mean(ens_kl.clamp(min=cfg.ensemble_free_nats), valid.expand_as(ens_kl))
            total = total + cfg.kl_dyn * ens_loss
            metrics["ensemble_kl"] = ens_loss.item()
        metrics["loss"] = total.item()
        return total, metrics

    def posteriors(self, batch: dict[str, torch.Tensor], sample: bool = True) -> State:
        """Posterior states [B, L, ...] of every frame of training windows, filtered as :meth:`loss`
        filters them (a batch as there: pixels, action taken *after* each frame, and state for a
        goal-conditioned model). ``sample=True`` draws the stochastic part, as training does."""
        return self._filter_batch(batch, sample)[0]

    # --- internals ---------------------------------------------------------------------------
    def _filter_batch(
        self, batch: dict[str, torch.Tensor], sample: bool
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """:meth:`_filter` on a training batch, whose actions are taken after each frame."""
        pixels, action = batch["pixels"], batch["action"].float()
        self._check_actions(action, pixels.shape[0])
        if (self.cfg.goal_dim or self.cfg.proprio_dim) and "state" not in batch:
            raise ValueError("this world model reads the goal or proprioception: the batch needs 'state'")
        if "state" in batch:
            self._check_batch_state(batch["state"], pixels.shape[:2])
        prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
        # Windows never cross an episode boundary, so the first frame's goal is the window's goal.
        goal = self.goal(batch["state"][:, 0]) if self.cfg.goal_dim else None
        proprio = self.proprio(batch["state"]) if self.cfg.proprio_dim else None
        return self._filter(pixels, prev_action, sample=sample, goal=goal, proprio=proprio)

    def _check_batch_state(self, state: torch.Tensor, lead: torch.Size) -> None:
        """A batch's env state vectors must be [B, L, n]: n = ``state_dim`` for a model that predicts
        them, else wide enough to hold the goal and proprioception it reads."""
        cfg = self.cfg
        need = max(cfg.goal_start + cfg.goal_dim if cfg.goal_dim else 0,
                   cfg.proprio_start + cfg.proprio_dim if cfg.proprio_dim else 0)  # fmt: skip
        n = state.shape[-1] if state.ndim == 3 else -1
        if state.shape[:2] != lead or n < need or (cfg.state_dim and n != cfg.state_dim):
            want = cfg.state_dim or (f">={need}" if need else "n")
            raise ValueError(f"batch['state'] must be [B, L, {want}] = [{lead[0]}, {lead[1]}, {want}], "
                             f"got {list(state.shape)}")  # fmt: skip

    def _open_loop_loss(
        self,
        posts: State,
        post_lp: torch.Tensor,
        batch: dict[str, torch.Tensor],
        action: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Multi-step loss of the prior rolled forward from every frame of the window.

        posts: posterior states [B, L, ...]; post_lp: [B, L, S, C]; action: [B, L, A]. From the
        posterior at frame s (s < L-1) the prior imagines frames s+1 .. s+K under the real actions,
        following its mode as the planner does (straight-through gradients). The heads on frame s+j
        are trained on reward[s+j-1], success[s+j-1], terminal[s+j-1] (with a termination head) and
        state[s+j]; the prior on s+j by KL to the
        (stopped) posterior there. Steps past the window's last frame, or onto padding past the
        episode's end (``valid`` [B, L] 0), are masked out.
        """
        cfg = self.cfg
        b, seq = action.shape[:2]
        starts = seq - 1
        k = min(cfg.open_loop_horizon, starts)
        device = action.device

        # The posterior at every start frame, flattened: [B * starts, ...].
        state = State(*(None if x is None else x[:, :starts].flatten(0, 1) for x in posts))
        s_idx = torch.arange(starts, device=device)
        feats, priors = [], []
        for j in range(1, k + 1):
            a = action[:, (s_idx + j - 1).clamp(max=seq - 1)].flatten(0, 1)
            state, prior = self.rssm.img_step(state, a, sample=False)
            feats.append(state.feat)
            priors.append(prior)
        feat = torch.stack(feats, 1).unflatten(0, (b, starts))  # [B, starts, K, F]
        prior_lp = torch.stack(priors, 1).unflatten(0, (b, starts))  # [B, starts, K, S, C]
        frame = s_idx[:, None] + torch.arange(1, k + 1, device=device)[None]  # [starts, K]
        inside = (frame <= seq - 1).to(feat.dtype)  # [starts, K]
        frame = frame.clamp(max=seq - 1)
        mask = inside * valid[:, frame].to(feat.dtype)  # [B, starts, K]

        def masked(x: torch.Tensor) -> torch.Tensor:
            return masked_mean(x, mask)

        reward = masked(self.reward_head.loss(feat, batch["reward"][:, frame - 1]))
        success = masked(
            F.binary_cross_entropy_with_logits(
                self.success_head(feat).squeeze(-1), batch["success"][:, frame - 1].float(), reduction="none"
            )
        )
        kl = categorical_kl(post_lp[:, frame].detach(), prior_lp)
        kl_loss = masked(kl.clamp(min=cfg.free_nats))
        total = cfg.reward_weight * reward + cfg.success_weight * success + cfg.kl_dyn * kl_loss
        metrics = {"ol_reward": reward.item(), "ol_kl": masked(kl).item()}
        if self.termination_head is not None:
            terminal_logit = self.termination_head(feat).squeeze(-1)
            target = batch["terminal"][:, frame - 1].float()
            bce = F.binary_cross_entropy_with_logits(terminal_logit, target, reduction="none")
            terminal = masked(bce)
            total = total + cfg.termination_weight * terminal
            metrics["ol_terminal"] = terminal.item()
        if self.state_head is not None and "state" in batch:
            target = (batch["state"][:, frame].float() - self.state_mean) / self.state_std
            state_loss = masked((self.state_head(feat) - target).square().mean(-1))
            total = total + cfg.state_weight * state_loss
            metrics["ol_state"] = state_loss.item()
        return total, metrics

    def _filter(
        self,
        pixels: torch.Tensor,
        prev_actions: torch.Tensor,
        sample: bool,
        goal: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Posterior states [B, T, ...] and post / prior log-probs [B, T, S, C]; ``goal``:
        standardised [B, G] (see :meth:`goal`) for a goal-conditioned model; ``proprio``: standardised
        [B, T, P] (see :meth:`proprio`) for a model with proprioception."""
        self._check_pixels(pixels, "B, T", ndim=5)
        b, t = pixels.shape[:2]
        if t < 1:
            raise ValueError("pixels must hold at least one frame, got T=0")
        self._check_actions(prev_actions, b, t)
        self._check_goal(goal, b)
        embed = self.encoder(pixels_to_float(pixels).flatten(0, 1)).unflatten(0, (b, t))
        if (proprio is None) != (not self.cfg.proprio_dim) or (
            proprio is not None and proprio.shape != (b, t, self.cfg.proprio_dim)
        ):
            got = None if proprio is None else list(proprio.shape)
            raise ValueError(
                f"proprio must be [B, T, P] = {[b, t, self.cfg.proprio_dim]} for this model, got {got}"
            )
        if proprio is not None:
            embed = torch.cat([embed, proprio], -1)
        state = self.rssm.initial(b, pixels.device, goal)
        states, posts, priors = [], [], []
        prev_actions = prev_actions.float()
        for i in range(t):
            action = prev_actions[:, i] if i > 0 else torch.zeros_like(prev_actions[:, 0])
            state, post, prior = self.rssm.obs_step(state, action, embed[:, i], sample=sample)
            states.append(state)
            posts.append(post)
            priors.append(prior)
        return stack_states(states), torch.stack(posts, 1), torch.stack(priors, 1)

    def refiner_loss(
        self,
        hidden: torch.Tensor,
        pixels: torch.Tensor,
        frames: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reference refiner's loss on training windows: ``REFINED_FRAMES`` random later frames of
        each window refined from its first frame, squared error summed per frame, averaged.

        hidden: the decoder's feature maps [B, K, depth, S/2, S/2] of the window's posterior states
        (detached by the caller, so that only the refiner learns from it); pixels: uint8[B, L, S, S, 3];
        frames: long[B, K], the (already random, all >= 1) window frames ``hidden`` belongs to, whose
        first ``REFINED_FRAMES`` are refined; None when ``hidden`` holds all L frames (K = L), from
        which ``REFINED_FRAMES`` are drawn; valid: [B, L], 0 on padding past an episode's end (not
        counted; default: every frame counts). Refining all L frames would cost ~35 % more per
        training step at 64 px.
        """
        if self.refiner is None:
            raise ValueError("this world model has no reference refiner (cfg.reference_frame=False)")
        b, length = pixels.shape[:2]
        rows = torch.arange(b, device=pixels.device)[:, None]
        if frames is None:
            t = torch.randint(1, length, (b, REFINED_FRAMES), device=pixels.device)
            picked = hidden[rows, t]
        else:
            if frames.shape != hidden.shape[:2]:
                raise ValueError(f"frames {list(frames.shape)} do not index hidden {list(hidden.shape[:2])}")
            t, picked = frames[:, :REFINED_FRAMES], hidden[:, :REFINED_FRAMES]
        refined = self._refine(picked, pixels[:, 0])
        error = (refined - pixels_to_float(pixels[rows, t])).square().sum((-3, -2, -1))  # [B, REFINED_FRAMES]
        return error.mean() if valid is None else masked_mean(error, valid[rows, t].to(error.dtype))

    def _decode_float(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        return self.decoder(feat.reshape(-1, feat.shape[-1])).unflatten(0, lead)

    def _refine(self, hidden: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """hidden: the decoder's feature maps [B, ..., depth, S/2, S/2]; reference: uint8[B, S, S, 3]
        (one frame per leading index) -> frames float[B, ..., 3, S, S]."""
        s, lead = self.cfg.image_size, hidden.shape[:-3]
        b = lead[0] if lead else 1
        if reference is None or reference.dtype != torch.uint8 or tuple(reference.shape) != (b, s, s, 3):
            got = None if reference is None else f"{reference.dtype}{list(reference.shape)}"
            raise ValueError(
                f"this world model refines its frames with a reference frame (cfg.reference_frame): pass "
                f"the last real frame of each episode, uint8[B={b}, {s}, {s}, 3]; got {got}"
            )
        ref = pixels_to_float(reference).unsqueeze(1).expand(-1, lead[1:].numel(), -1, -1, -1)
        out = self.refiner(hidden.reshape(-1, *hidden.shape[-3:]), ref.reshape(-1, 3, s, s))
        return out.view(*lead, 3, s, s)

    def _check_pixels(self, pixels: torch.Tensor, lead: str, ndim: int | None = None) -> None:
        """Frames uint8[*lead, S, S, 3] at the model's size S (``ndim``: their number of dims, if fixed)."""
        s = self.cfg.image_size
        wrong_ndim = ndim is not None and pixels.ndim != ndim
        if pixels.dtype != torch.uint8 or wrong_ndim or pixels.shape[-3:] != (s, s, 3):
            got = f"{pixels.dtype}{list(pixels.shape)}"
            raise ValueError(f"pixels must be uint8[{lead}, {s}, {s}, 3], got {got}")

    def _check_feat(self, feat: torch.Tensor, least_dims: int = 1) -> None:
        if feat.ndim < least_dims or feat.shape[-1] != self.cfg.feat_dim:
            lead = "B, ..." if least_dims > 1 else "..."
            raise ValueError(f"features must be [{lead}, F={self.cfg.feat_dim}], got {list(feat.shape)}")

    def _check_goal(self, goal: torch.Tensor | None, batch: int) -> None:
        g = self.cfg.goal_dim
        if g and (goal is None or tuple(goal.shape) != (batch, g)):
            got = None if goal is None else list(goal.shape)
            raise ValueError(f"this goal-conditioned world model needs a goal [B={batch}, G={g}], got {got}")
        if not g and goal is not None:
            raise ValueError("this world model has no goal input (goal_dim=0), but a goal was given")

    def _check_actions(
        self, actions: torch.Tensor, batch: int, steps: int | None = None, finite: bool = True
    ) -> None:
        a = self.cfg.action_dim
        if actions.ndim != 3 or actions.shape[0] != batch or actions.shape[2] != a:
            raise ValueError(f"actions must be [B={batch}, T, A={a}], got {list(actions.shape)}")
        if steps is not None and actions.shape[1] != steps:
            raise ValueError(f"actions must have T={steps} steps like the pixels, got {actions.shape[1]}")
        if not actions.is_floating_point():
            raise ValueError(f"actions must be a floating-point tensor, got {actions.dtype}")
        if finite and not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
