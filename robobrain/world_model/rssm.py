"""Recurrent state-space model with a categorical stochastic state (PlaNet / DreamerV3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from robobrain.config import WorldModelConfig
from robobrain.world_model.networks import MLP


class State(NamedTuple):
    """Latent state of B sequences.

    deter: [B, D] -- GRU state
    stoch: [B, S, C] -- one-hot categorical (a sample or the mode; straight-through gradients in training)
    goal: [B, G] or None -- the episode's goal (standardised), for goal-conditioned models. It is
        given, not predicted: every step carries it unchanged, so imagination cannot drift it.
    """

    deter: torch.Tensor
    stoch: torch.Tensor
    goal: torch.Tensor | None = None

    @property
    def feat(self) -> torch.Tensor:
        """[B, D + S*C (+ G)] features read by the decoder and the heads."""
        parts = [self.deter, self.stoch.flatten(-2)]
        if self.goal is not None:
            parts.append(self.goal.to(self.deter.dtype))
        return torch.cat(parts, dim=-1)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> State:
        return State(fn(self.deter), fn(self.stoch), None if self.goal is None else fn(self.goal))

    def repeat_interleave(self, n: int) -> State:
        """[B, ...] -> [B*n, ...], each state repeated n times in a row (for N candidates).
        (``repeat_interleave(n, 0)`` as an expand + copy, which a CUDA graph can record.)"""
        return self._map(lambda x: x.unsqueeze(1).expand(-1, n, *x.shape[1:]).reshape(-1, *x.shape[1:]))

    def index(self, idx: torch.Tensor | slice | tuple) -> State:
        return self._map(lambda x: x[idx])

    def detach(self) -> State:
        return self._map(torch.Tensor.detach)

    def where(self, mask: torch.Tensor, other: State) -> State:
        """Per batch row: ``other`` where ``mask`` [B] is True, else this state."""

        def pick(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
            if x is None or y is None:
                if x is not None or y is not None:
                    raise ValueError("cannot mix states with and without a goal")
                return None
            return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), y, x)

        deter, stoch = pick(self.deter, other.deter), pick(self.stoch, other.stoch)
        return State(deter, stoch, pick(self.goal, other.goal))


def _join(states: list[State], fn: Callable[[list[torch.Tensor]], torch.Tensor]) -> State:
    goals = [s.goal for s in states]
    if any((g is None) != (goals[0] is None) for g in goals):
        raise ValueError("cannot join states with and without a goal")
    return State(
        fn([s.deter for s in states]),
        fn([s.stoch for s in states]),
        None if goals[0] is None else fn(goals),  # type: ignore[arg-type]
    )


def stack_states(states: list[State], dim: int = 1) -> State:
    """Stack states along a new time dimension ``dim``."""
    return _join(states, lambda xs: torch.stack(xs, dim))


def cat_states(states: list[State]) -> State:
    """Concatenate states along the batch dimension."""
    return _join(states, torch.cat)


class RSSM(nn.Module):
    """h_t = GRU(h_{t-1}, f(z_{t-1}, a_{t-1})); prior p(z_t | h_t); posterior q(z_t | h_t, e_t)."""

    def __init__(self, cfg: WorldModelConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        s, c = cfg.stoch, cfg.classes
        self.inp = nn.Sequential(
            nn.Linear(s * c + cfg.action_dim, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.SiLU()
        )
        self.gru = nn.GRUCell(cfg.hidden, cfg.deter)
        self.prior = MLP(cfg.deter, s * c, cfg.hidden)
        self.ensemble = nn.ModuleList([MLP(cfg.deter, s * c, cfg.hidden) for _ in range(cfg.ensemble)])
        self.post = MLP(cfg.deter + embed_dim, s * c, cfg.hidden)

    def initial(self, batch: int, device: torch.device | str, goal: torch.Tensor | None = None) -> State:
        """The state before the first observation; ``goal`` [B, G] for goal-conditioned models."""
        cfg = self.cfg
        return State(
            torch.zeros(batch, cfg.deter, device=device),
            torch.zeros(batch, cfg.stoch, cfg.classes, device=device),
            goal,
        )

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw head output [..., S*C] -> log-probabilities [..., S, C] mixed with 1 % uniform."""
        logits = logits.unflatten(-1, (self.cfg.stoch, self.cfg.classes)).float()
        u = self.cfg.unimix
        if u <= 0:  # log of an underflowed softmax would be -inf, and the KL's 0 * -inf NaN
            return torch.log_softmax(logits, -1)
        probs = (1 - u) * torch.softmax(logits, -1) + u / self.cfg.classes
        return probs.log()

    def draw(self, log_probs: torch.Tensor, sample: bool) -> torch.Tensor:
        """One-hot [..., S, C]: a Gumbel-max sample, or the mode; straight-through gradients when
        ``log_probs`` needs them."""
        if sample:
            u = torch.rand_like(log_probs).clamp_(1e-10, 1.0)
            idx = (log_probs - torch.log(-torch.log(u))).argmax(-1)
        else:
            idx = log_probs.argmax(-1)
        one_hot = F.one_hot(idx, self.cfg.classes).to(log_probs.dtype)
        if log_probs.requires_grad:
            probs = log_probs.exp()
            one_hot = one_hot + probs - probs.detach()
        return one_hot

    def deter_step(self, state: State, action: torch.Tensor) -> torch.Tensor:
        """Next GRU state [B, D] from state and the action taken in it, action: [B, A]."""
        x = self.inp(torch.cat([state.stoch.flatten(-2), action], -1))
        if torch.compiler.is_compiling():  # inductor fuses written-out gates; GRUCell stays an ATen kernel
            return gru_cell(self.gru, x, state.deter)
        return self.gru(x, state.deter)

    def img_step(self, state: State, action: torch.Tensor, sample: bool = True) -> tuple[State, torch.Tensor]:
        """Predict the next state without an observation. Returns (state, prior log-probs [B, S, C])."""
        deter = self.deter_step(state, action)
        prior = self.log_probs(self.prior(deter))
        return State(deter, self.draw(prior, sample), state.goal), prior

    def img_step_mode(self, state: State, action: torch.Tensor) -> State:
        """``img_step(sample=False)`` without the log-probabilities: the most likely next state.

        The mode of the unimix categorical is the argmax of the raw logits, so the softmax, the mix
        and the log are skipped (the planner's hot path). ``max(-1).indices`` is the same index as
        ``argmax`` (the first maximal one, both documented so) but faster over 8 classes on CPU: mode
        and one-hot of a [1024, 32, 8] tensor 0.81 vs 1.28 ms on 2 cores (3-4 % of an ``imagine``)."""
        deter = self.deter_step(state, action)
        logits = self.prior(deter).unflatten(-1, (self.cfg.stoch, self.cfg.classes))
        idx = logits.max(-1, keepdim=True).indices
        # The ones as a tensor, not the scalar 1.0: torch 2.11's inductor gave the scalar form's
        # result float32 inside a bf16 graph (a dtype error at the next matmul; bench/RESULTS.md).
        stoch = torch.zeros_like(logits).scatter_(-1, idx, torch.ones_like(idx, dtype=logits.dtype))
        return State(deter, stoch, state.goal)

    def obs_step(
        self, state: State, action: torch.Tensor, embed: torch.Tensor, sample: bool = True
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Update with an observation embedding [B, E]. Returns (posterior state, post, prior log-probs)."""
        deter = self.deter_step(state, action)
        prior = self.log_probs(self.prior(deter))
        post = self.log_probs(self.post(torch.cat([deter, embed], -1)))
        return State(deter, self.draw(post, sample), state.goal), post, prior

    def ensemble_log_probs(self, deter: torch.Tensor) -> torch.Tensor:
        """[K, ..., S, C] log-probabilities of the K ensemble prior heads."""
        return torch.stack([self.log_probs(head(deter)) for head in self.ensemble])

    def ensemble_disagreement(self, deter: torch.Tensor) -> torch.Tensor:
        """deter [..., D] -> [...]: the variance over the K ensemble heads of each class probability
        (unbiased, 0 for K = 1), summed over the latent's S x C entries (Plan2Explore's disagreement).

        Written out, on 2 CPU cores for [K=4, 512, 12] states of the `cpu` preset: ``Tensor.var``
        over the leading dim (a strided reduction) took 126 ms and ``torch.softmax`` over 8 classes
        44-58 ms, together ~75 % of a planning call's profiled time; this whole call, the K heads
        included, ~57 ms."""
        logits = torch.stack([head(deter) for head in self.ensemble])  # [K, ..., S*C]
        logits = logits.unflatten(-1, (self.cfg.stoch, self.cfg.classes)).float()
        e = (logits - logits.amax(-1, keepdim=True)).exp()
        u = max(self.cfg.unimix, 0.0)
        probs = (1 - u) * e / e.sum(-1, keepdim=True) + u / self.cfg.classes  # exp of log_probs
        centred = probs - probs.mean(0)
        return centred.square().sum(0).sum((-2, -1)) / max(probs.shape[0] - 1, 1)


def gru_cell(cell: nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``cell(x [B, I], h [B, D]) -> [B, D]`` written out (PyTorch's GRUCell equations, same weights)."""
    gi = F.linear(x, cell.weight_ih, cell.bias_ih)
    gh = F.linear(h, cell.weight_hh, cell.bias_hh)
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def categorical_kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the S categorical variables: [..., S, C] -> [...]."""
    return (lp.exp() * (lp - lq)).sum((-2, -1))
