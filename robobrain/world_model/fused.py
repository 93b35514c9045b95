"""One fused kernel per imagined rollout for the planner on a GPU (Triton).

The compiled bf16 twin (:class:`robobrain.world_model.Bf16Imagine`) still runs ~10 kernels per
imagined step (the fifteenth session's profile) and writes every step's features to memory for the
heads to read back: on an H200 a [16384, 12] rollout took 2.1 ms (bench/RESULTS.md), six of them
most of a 16-env decision. Here one Triton program rolls a block of rows through all steps -- GRU,
prior mode, the reward and success heads -- with the GRU state in registers; the weights (~0.6 MB
in bf16 for the ``cpu`` preset) come from L2 at every step. The heads' first layers are split by
input when the weights are packed: the GRU-state and one-hot-latent parts are read from the same
staged inputs as the prior and the next step's input layer, the goal part is computed once per row
by torch.

Triton is optional: :func:`fused_unsupported` says why this path cannot run (no Triton, a model
shape the kernel does not cover). On CPU tensors the kernel runs in Triton's interpreter (float32;
slow, for tests).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robobrain.config import WorldModelConfig
from robobrain.world_model.model import Rollout, WorldModel
from robobrain.world_model.rssm import State

_BLOCKS = (
    (16, 16, 8, 1),
    (16, 32, 8, 1),
    (16, 64, 8, 1),
    (32, 32, 8, 1),
    (32, 64, 8, 1),
    (16, 16, 8, 2),
    (16, 32, 8, 2),
    (32, 16, 8, 2),
    (32, 32, 8, 2),
    (64, 16, 8, 1),
    (64, 32, 8, 1),
    (64, 32, 8, 2),
    (64, 64, 8, 1),
    (128, 32, 8, 1),
)
"""(rows per program BM, weight rows per load BK, warps, software-pipeline stages) tried by Triton's
autotuner on the first call with each shape (M, T and the model's sizes); configurations whose BK
exceeds a matmul's inner size are dropped. BM >= 64 gets Hopper's warpgroup MMA at the price of
more spills; 2 stages load the next BK weight rows while the current ones are multiplied, and for
BM <= 32 with BK <= 32 spilled nothing in the offline compile (bench/fused_kernel_resources.py,
bench/RESULTS.md)."""
_MAX_BM = max(block[0] for block in _BLOCKS)
NS = 16
"""Columns of the success head's padded output layer (tl.dot's smallest width; the logit is column 0)."""
_KERNEL_WEIGHTS = (
    "w_ih b_ih w_hh b_hh ln_in_w ln_in_b w_p1 b_p1 ln_p_w ln_p_b w_p2 b_p2 w_z w_hd "
    "r_ln1_w r_ln1_b r_w2 r_b2 r_ln2_w r_ln2_b r_w3 r_b3 s_ln1_w s_ln1_b s_w2 s_b2 s_ln2_w s_ln2_b s_w3 s_b3"
).split()
"""The packed weights the kernel takes, in its argument order (see fused_kernel.rollout_kernel)."""


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def padded_bins(bins: int) -> int:
    """Columns of the reward head's padded output layer: a power of two >= 16 (tl.dot's smallest)."""
    return max(16, 1 << max(bins - 1, 0).bit_length())


def block_fits(bk: int, deter: int, hidden: int, stoch_classes: int) -> bool:
    """Whether BK weight rows per load fit every matmul's inner size (the kernel asserts it)."""
    return bk <= min(deter, hidden, stoch_classes)


def fused_unsupported(cfg: WorldModelConfig, disagreement: bool = False) -> str | None:
    """Why :class:`FusedImagine` cannot roll out this model (None when it can)."""
    if cfg.termination:
        return "the fused kernel does not compute the termination head"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if disagreement and cfg.ensemble:
        return "the fused kernel does not compute the ensemble's disagreement"
    sizes = {"deter": cfg.deter, "hidden": cfg.hidden, "stoch * classes": cfg.stoch * cfg.classes}
    for name, n in sizes.items():
        if not _pow2(n) or not 16 <= n <= 256:
            return f"{name} = {n}: the fused kernel needs a power of two in [16, 256]"
    if not _pow2(cfg.classes):
        return f"classes = {cfg.classes}: the fused kernel needs a power of two"
    return None


def load_kernel(interpret: bool, autotuned: bool = True) -> Any:
    """The rollout kernel: compiled for the GPU and, with ``autotuned``, tuned over ``_BLOCKS``
    (otherwise the launch names BM, BK, num_warps and num_stages), or with ``interpret`` run by
    Triton's CPU interpreter, which Triton decides when it is first imported (``TRITON_INTERPRET=1``
    in the environment then; ValueError otherwise). The autotuned kernel is one object per process:
    its ``best_config`` is the pick of the last shape it was called with."""
    import triton

    knobs = getattr(triton, "knobs", None)  # (Triton >= 3.4; earlier ones read the variable directly)
    interpreting = knobs.runtime.interpret if knobs is not None else os.environ.get("TRITON_INTERPRET") == "1"
    if interpret != interpreting:
        raise ValueError(
            "FusedImagine on CPU tensors runs in Triton's interpreter: set TRITON_INTERPRET=1 before "
            "the process imports triton"
            if interpret
            else "FusedImagine on CUDA needs Triton's compiler, but TRITON_INTERPRET=1 is set"
        )
    from robobrain.world_model.fused_kernel import rollout_kernel

    return rollout_kernel if interpret or not autotuned else _autotuned(rollout_kernel)


@functools.cache
def _autotuned(kernel: Any) -> Any:
    import triton

    configs = [triton.Config({"BM": bm, "BK": bk}, num_warps=w, num_stages=st) for bm, bk, w, st in _BLOCKS]

    def fitting(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
        sizes = kwargs["D"], kwargs["HD"], kwargs["S"] * kwargs["C"]
        return [c for c in configs if block_fits(c.kwargs["BK"], *sizes)]  # (BK = 16 always fits)

    # The model's sizes are part of the key: a block chosen for one model may not fit another's (BK).
    key = ["M", "T", "D", "HD", "S", "C"]
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": fitting})(kernel)


class FusedImagine:
    """``imagine(state [B], actions [B, H, A]) -> Rollout`` (latent only, the mode of each step) as
    one Triton kernel per call, for the planner's hot path.

    The kernel reads packed copies of the weights in ``dtype`` (default bfloat16 on CUDA, float32
    elsewhere): :meth:`sync` refreshes them from the model (:class:`robobrain.planning.GraphedPlan`
    records it at the start of every planning call). Rewards and success logits are float32
    [B, H]; ``feat`` holds only the last step's features, [B, 1, F] (what a terminal value reads);
    ``disagreement`` and ``pixels`` are None. Nothing waits for the device, so a CUDA graph can
    record a call. Raises ValueError for a model :func:`fused_unsupported` rejects.
    """

    def __init__(
        self,
        model: WorldModel,
        dtype: torch.dtype | None = None,
        block: tuple[int, int, int, int] | None = None,
    ) -> None:
        """``block``: (BM, BK, warps, stages), e.g. one of ``_BLOCKS``, instead of the autotuner's pick
        among them on CUDA (Triton's interpreter has no autotuner: (16, 16, 8, 1) there by default;
        it ignores warps and stages)."""
        cfg = model.cfg
        why = fused_unsupported(cfg)
        if why is not None:
            raise ValueError(f"FusedImagine cannot run this model: {why}")
        self.model = model
        device = model.device
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.interpret = device.type != "cuda"
        if block is not None and not block_fits(block[1], cfg.deter, cfg.hidden, cfg.stoch * cfg.classes):
            raise ValueError(f"block {block}: BK = {block[1]} exceeds an inner size of this model")
        self.block = (16, 16, 8, 1) if block is None and self.interpret else block
        if self.interpret and self.dtype != torch.float32:
            raise ValueError("Triton's interpreter (CPU tensors) runs float32 only")
        self.bins = cfg.reward_bins
        self.nb = padded_bins(self.bins)
        self.pad_action = -cfg.action_dim % 8  # odd inner dimensions got a slow cuBLAS kernel (RESULTS)
        self.pad_goal = -cfg.goal_dim % 8
        # The layer structure the kernel hard-codes (networks.MLP), checked rather than assumed.
        dense, norm, act = nn.Linear, nn.LayerNorm, nn.SiLU
        expected = [(model.rssm.inp, (dense, norm, act)), (model.rssm.prior, (dense, norm, act, dense))]
        expected += [(head, (dense, norm, act, dense, norm, act, dense)) for head in self._heads]
        norms = [m for seq, _ in expected for m in seq if isinstance(m, norm)]
        if any(tuple(map(type, seq)) != kinds for seq, kinds in expected) or len({m.eps for m in norms}) != 1:
            raise ValueError("FusedImagine expects the layer structure of networks.MLP, one LayerNorm eps")
        self.eps = norms[0].eps
        self._w = {k: v.to(self.dtype).clone() for k, v in self._pack().items()}

    @property
    def _heads(self) -> tuple[nn.Sequential, nn.Sequential]:
        return self.model.reward_head, self.model.success_head

    @torch.no_grad()
    def _pack(self) -> dict[str, torch.Tensor]:
        """The kernel's weights from the model's: matmul weights as [K, N] (input x output), the
        layers that read the same input side by side, the output layers padded to the kernel's widths."""
        cfg, r = self.model.cfg, self.model.rssm
        d, sc = cfg.deter, cfg.stoch * cfg.classes
        rh, sh = self._heads
        inp, prior, gru = r.inp[0].weight, r.prior, r.gru
        w = {
            "w_ih": gru.weight_ih.t(), "b_ih": gru.bias_ih, "w_hh": gru.weight_hh.t(), "b_hh": gru.bias_hh,
            "ln_in_w": r.inp[1].weight, "ln_in_b": r.inp[1].bias,
            "w_p1": prior[0].weight.t(), "b_p1": prior[0].bias, "ln_p_w": prior[1].weight,
            "ln_p_b": prior[1].bias, "w_p2": prior[3].weight.t(), "b_p2": prior[3].bias,
            # the stochastic state's columns of the input layer | reward head | success head
            "w_z": torch.cat([inp[:, :sc], rh[0].weight[:, d : d + sc], sh[0].weight[:, d : d + sc]]).t(),
            # the GRU state's columns of the reward head | success head
            "w_hd": torch.cat([rh[0].weight[:, :d], sh[0].weight[:, :d]]).t(),
            # torch's, per call (as [N, K]): the input layer's action term, the heads' goal term
            "w_act": F.pad(inp[:, sc:], (0, self.pad_action)), "b_act": r.inp[0].bias,
            "w_goal": F.pad(torch.cat([h[0].weight[:, d + sc :] for h in (rh, sh)]), (0, self.pad_goal)),
            "b_goal": torch.cat([rh[0].bias, sh[0].bias]),
        }  # fmt: skip
        for prefix, head, width in (("r", rh, self.nb), ("s", sh, NS)):
            out = head[6]
            # extra bins of a two-hot head get a bias of -inf: the softmax gives them nothing
            fill = -math.inf if getattr(head, "num_bins", 0) else 0.0
            w |= {
                f"{prefix}_ln1_w": head[1].weight, f"{prefix}_ln1_b": head[1].bias,
                f"{prefix}_w2": head[3].weight.t(), f"{prefix}_b2": head[3].bias,
                f"{prefix}_ln2_w": head[4].weight, f"{prefix}_ln2_b": head[4].bias,
                f"{prefix}_w3": F.pad(out.weight.t(), (0, width - out.out_features)),
                f"{prefix}_b3": F.pad(out.bias, (0, width - out.out_features), value=fill),
            }  # fmt: skip
        return {k: v.detach().contiguous() for k, v in w.items()}

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the model's current weights into the packed buffers (nothing here waits for the device)."""
        for name, value in self._pack().items():
            self._w[name].copy_(value)

    @torch.no_grad()
    def __call__(self, state: State, actions: torch.Tensor) -> Rollout:
        model, cfg = self.model, self.model.cfg
        state, actions = model.imagine_inputs(state, actions)
        m, t, _ = actions.shape
        d, hd, sc = cfg.deter, cfg.hidden, cfg.stoch * cfg.classes
        dt, dev = self.dtype, actions.device
        w = self._w
        stoch = state.stoch.flatten(-2).to(dt).contiguous()
        act = F.linear(F.pad(actions.to(dt), (0, self.pad_action)), w["w_act"], w["b_act"]).contiguous()
        if state.goal is None:
            goal = w["b_goal"].float().expand(m, -1).contiguous()
        else:
            goal = F.linear(F.pad(state.goal.to(dt), (0, self.pad_goal)), w["w_goal"], w["b_goal"]).float()
        deter = state.deter.float().contiguous()
        reward = torch.empty(m, t, device=dev)
        success = torch.empty(m, t, device=dev)
        deter_out = torch.empty(m, d, device=dev, dtype=state.deter.dtype)
        stoch_out = torch.empty(m, sc, device=dev, dtype=state.stoch.dtype)
        limit = float(model.reward_head.limit)
        step = 2 * limit / (self.bins - 1) if self.bins else 0.0
        kernel, extra = load_kernel(self.interpret, autotuned=self.block is None), {}
        if self.block is not None:
            bm, bk, warps, stages = self.block
            extra = {"BM": bm, "BK": bk, "num_warps": warps, "num_stages": stages}
        rows = self.block[0] if self.block else _MAX_BM  # (the last program's block runs past m)
        scratch = torch.empty(m + rows, sc + hd + d, device=dev, dtype=dt)

        def grid(meta: dict[str, Any]) -> tuple[int]:
            return (-(-m // meta["BM"]),)

        # (Triton launches on the current CUDA device: make it the tensors' one, e.g. cuda:1)
        with torch.cuda.device(dev) if dev.type == "cuda" else nullcontext():
            kernel[grid](
                deter, stoch, act, goal, reward, success, deter_out, stoch_out, scratch,
                *(w[n] for n in _KERNEL_WEIGHTS),
                m, self.eps, -limit, step, 0,
                T=t, D=d, HD=hd, S=cfg.stoch, C=cfg.classes, NB=self.nb, BINS=self.bins, NS=NS, **extra,
            )  # fmt: skip
        last = State(deter_out, stoch_out.view(m, cfg.stoch, cfg.classes), state.goal)
        return Rollout(last.feat.unsqueeze(1), reward, success, None, None)
