"""Fast imagination for planning on CUDA: bf16 autocast and one CUDA graph per shape.

The planner calls ``imagine`` with the same shapes at every decision (B envs x N candidates, H steps).
On a GPU that loop of a few hundred small kernels is bound by the host launching them, not by the
arithmetic; PyTorch's whole-network capture (``torch.cuda.graph``) records it once per shape and
replays it as one launch. On the CPU this is plain :meth:`WorldModel.imagine`, less its finiteness
check (as on CUDA).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from typing import Any, Generic, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from robobrain.world_model.model import Rollout, WorldModel
from robobrain.world_model.rssm import State

T = TypeVar("T")
R = TypeVar("R")


class GraphCache(Generic[T]):
    """Recorded CUDA graphs (with their static buffers) by input shape: at most ``max_graphs`` kept,
    the least recently used dropped, all sharing one memory pool. Used by :class:`GraphedImagine` and
    :class:`robobrain.planning.GraphedPlan`."""

    def __init__(self, max_graphs: int) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self._pool: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The entry for ``key``, made with ``make()`` (which records) on its first use."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = make()
            while len(self._entries) > self.max_graphs:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def record(
        self, fn: Callable[[], R], device: torch.device, context: Callable[[], Any] = nullcontext
    ) -> tuple[torch.cuda.CUDAGraph, R]:
        """Record ``fn()`` (under ``context()``) as a CUDA graph, after two warm-up calls on a side
        stream (cuBLAS handles, autotuning, torch.compile), as PyTorch's CUDA-graph notes do. Returns
        the graph and ``fn``'s outputs, which are the graph's static outputs."""
        with torch.cuda.device(device):  # (torch.cuda.graph captures on the current device's stream)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), context():
                for _ in range(2):
                    fn()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool), context():
                out = fn()
        self._pool = graph.pool()
        return graph, out


def copy_state_(dst: State, src: State) -> None:
    """Copy ``src`` into the (static) buffers of ``dst`` in place."""
    dst.deter.copy_(src.deter)
    dst.stoch.copy_(src.stoch)
    if src.goal is not None:
        assert dst.goal is not None
        dst.goal.copy_(src.goal)


def clone_state(state: State) -> State:
    return State(state.deter.clone(), state.stoch.clone(), None if state.goal is None else state.goal.clone())


class _Graph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    state: State
    actions: torch.Tensor
    out: Rollout


class GraphedImagine:
    """``imagine(state [B], actions [B, H, A]) -> Rollout`` (latent only, the mode of each step) for
    the planner's hot path.

    On CUDA: under bf16 autocast when ``amp``, and replayed from a CUDA graph recorded on the first
    call with each (B, H) shape when ``graphs`` (at most ``max_graphs`` shapes are kept, the least
    recently used dropped). The returned tensors live in the graph's static buffers: they are
    overwritten by the next call (of any shape: the graphs share one memory pool, so one replayed may
    reuse another's output memory as scratch), so read (or clone) them before that. The graph
    reads the model's parameters where they are, so in-place weight updates (an optimizer step,
    ``load_state_dict``) are seen; moving the model to another device is not: make a new one.

    Inputs get :meth:`WorldModel.check_imagine_inputs`' shape checks but no finiteness check (it
    would wait for the GPU at every call): a non-finite action makes its row's outputs non-finite,
    which the optimizers score -inf.
    """

    def __init__(
        self,
        model: WorldModel,
        amp: bool = True,
        graphs: bool = True,
        max_graphs: int = 8,
        disagreement: bool = True,
    ) -> None:
        """``disagreement=False``: skip the ensemble's disagreement (see :meth:`WorldModel.imagine`)."""
        self.model = model
        self.disagreement = disagreement
        self.amp = amp
        self.graphs = graphs
        self._cache: GraphCache[_Graph] = GraphCache(max_graphs)

    def __call__(self, state: State, actions: torch.Tensor) -> Rollout:
        state, actions = self.model.imagine_inputs(state, actions)  # (numpy, float64, another device)
        if actions.device.type != "cuda" or not (self.amp or self.graphs):
            return self.model.imagine_unchecked(state, actions, disagreement=self.disagreement)
        if not self.graphs:
            with self._autocast():
                return self.model.imagine_unchecked(state, actions, disagreement=self.disagreement)
        key = (
            actions.device,
            tuple(actions.shape),
            actions.dtype,
            tuple(state.deter.shape[1:]),
            state.deter.dtype,
            None if state.goal is None else (tuple(state.goal.shape), state.goal.dtype),
        )
        entry = self._cache.get(key, lambda: self._capture(state, actions))
        copy_state_(entry.state, state)
        entry.actions.copy_(actions)
        entry.graph.replay()
        return entry.out

    def _autocast(self) -> torch.autocast:
        # Autocast's weight-cast cache must be off while a graph records (PyTorch's CUDA-graph notes).
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False)

    @torch.no_grad()
    def _capture(self, state: State, actions: torch.Tensor) -> _Graph:
        static_state, static_actions = clone_state(state), actions.clone()
        spread = self.disagreement
        graph, out = self._cache.record(
            lambda: self.model.imagine_unchecked(static_state, static_actions, disagreement=spread),
            actions.device,
            self._autocast,
        )
        return _Graph(graph, static_state, static_actions, out)


class Bf16Imagine:
    """``imagine(state [B], actions [B, H, A]) -> Rollout`` (latent only, the mode of each step) on a
    bfloat16 twin of the model: no autocast casts between the kernels, LayerNorm and the GRU in bf16
    (autocast keeps LayerNorm in float32 -- a third of a CUDA rollout's time, bench/RESULTS.md).

    The twin holds its own bf16 copies of the weights: :meth:`sync` refreshes them from the model
    (call it after the model's weights changed; :class:`robobrain.planning.GraphedPlan` records it at
    the start of every planning call). ``compile``: run the rollout through ``torch.compile``, which
    fuses the LayerNorms, activations and the mode's max/one-hot into few kernels (one compilation
    per input shape, at the first call with it); a string is ``torch.compile``'s ``mode`` (e.g.
    ``"max-autotune-no-cudagraphs"``: inductor benchmarks GEMM kernels for these shapes, slower to
    compile). Outputs are bf16 (``feat``, ``success_logit``, ``terminal_logit``, and ``reward``
    unless a two-hot head decodes it in float32); callers cast what they sum. Works on any device;
    meant for CUDA.
    """

    def __init__(self, model: WorldModel, compile: bool | str = False, disagreement: bool = True) -> None:
        self.model = model
        self.disagreement = disagreement
        cfg = model.cfg
        self.twin = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
        # Zero-padded inputs so the two odd-sized matmuls get a multiple-of-8 inner dimension: with
        # [stoch + 3 actions] = 259 and [features + 3 goal] = 387, cuBLAS fell back to a slow
        # pre-Hopper bf16 kernel on an H200 (28 % of a compiled decision's kernel time). The padded
        # weight columns stay zero, so the outputs are those of the unpadded model.
        self.pad_action = -(cfg.stoch * cfg.classes + cfg.action_dim) % 8
        self.pad_goal = -cfg.feat_dim % 8 if cfg.goal_dim else 0
        if self.pad_action:
            self.twin.rssm.inp[0] = _widened(self.twin.rssm.inp[0], self.pad_action)
        heads = ("reward_head", "success_head") + (("termination_head",) if cfg.termination else ())
        if self.pad_goal:
            for name in heads:
                getattr(self.twin, name)[0] = _widened(getattr(self.twin, name)[0], self.pad_goal)
        self._pairs = [
            (dst, src)
            for name in ("rssm", *heads)
            for dst, src in zip(
                getattr(self.twin, name).parameters(), getattr(model, name).parameters(), strict=True
            )
        ]
        self._rollout = self._run
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._rollout = torch.compile(self._run, fullgraph=True, dynamic=False, mode=mode)

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the model's current weights into the bf16 twin (nothing here waits for the device)."""
        for dst, src in self._pairs:
            dst[tuple(slice(0, n) for n in src.shape)].copy_(src)

    def _run(
        self, deter: torch.Tensor, stoch: torch.Tensor, goal: torch.Tensor | None, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        bf = torch.bfloat16
        actions = F.pad(actions.to(bf), (0, self.pad_action))
        goal = None if goal is None else F.pad(goal.to(bf), (0, self.pad_goal))
        out = self.twin.imagine_unchecked(
            State(deter.to(bf), stoch.to(bf), goal), actions, disagreement=self.disagreement
        )
        feat = out.feat[..., : self.model.cfg.feat_dim]
        return feat, out.reward, out.success_logit, out.disagreement, out.terminal_logit

    def __call__(self, state: State, actions: torch.Tensor) -> Rollout:
        state, actions = self.model.imagine_inputs(state, actions)
        with torch.no_grad():
            feat, reward, success, disagreement, terminal = self._rollout(
                state.deter, state.stoch, state.goal, actions
            )
        return Rollout(feat, reward, success, disagreement, pixels=None, terminal_logit=terminal)


def _widened(linear: nn.Linear, extra: int) -> nn.Linear:
    """``linear`` with ``extra`` more input features whose weights are zero."""
    out = nn.Linear(linear.in_features + extra, linear.out_features).to(linear.weight)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:, : linear.in_features].copy_(linear.weight)
        out.bias.copy_(linear.bias)
    return out.requires_grad_(False)
