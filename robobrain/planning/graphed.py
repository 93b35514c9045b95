"""A whole planning call -- every iteration's sampling, imagination, scoring and refit -- recorded as
one CUDA graph.

:class:`robobrain.world_model.GraphedImagine` takes the host out of each imagined rollout, but the
optimizer between rollouts is still a few dozen small kernels per iteration launched from Python: on
an H200 with 16 envs x 1024 candidates x 6 iterations, ~6 of the 37.7 ms a decision took
(bench/RESULTS.md). Here the whole ``optimizer.plan`` call is captured once per input shape and
replayed as one launch; only the candidates' noise is drawn outside (from the optimizer's own
generator, into a buffer the graph reads), so the seeded stream stays the optimizer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from robobrain.planning.optimizers import CEM, MPPI, PlanResult, ScoreFn, check_finite_mean
from robobrain.world_model import State
from robobrain.world_model.graphs import GraphCache, clone_state, copy_state_


class _Entry(NamedTuple):
    graph: torch.cuda.CUDAGraph
    state: State
    mean: torch.Tensor
    noise: torch.Tensor
    out: PlanResult


class GraphedPlan:
    """``plan(state [B], init_mean [B, H, A]) -> PlanResult`` with ``optimizer`` over the score
    function ``make_score_fn(state)`` builds, e.g. ``lambda s: world_model_score_fn(model, s, cfg)``.

    On CUDA the call is recorded as a CUDA graph the first time each shape is seen (at most
    ``max_graphs`` kept) and replayed afterwards: ``state`` and ``init_mean`` are copied into the
    graph's buffers, the candidates' noise for all iterations is drawn from ``optimizer.generator``
    into another, and the returned tensors are the graph's own outputs -- overwritten by the next
    call (of any shape: the graphs share one memory pool), so read (or clone) them first.
    ``before()`` runs inside the recorded call, first (e.g.
    :meth:`robobrain.world_model.Bf16Imagine.sync`, so weight updates are seen). The
    optimizer's wall-clock budget cannot be recorded: with ``time_budget`` set, use its ``plan``.
    Elsewhere (CPU) the same steps run eagerly, with the same noise handling.
    """

    def __init__(
        self,
        optimizer: CEM | MPPI,
        make_score_fn: Callable[[State], ScoreFn],
        before: Callable[[], None] | None = None,
        max_graphs: int = 4,
    ) -> None:
        if optimizer.cfg.time_budget is not None:
            raise ValueError("a recorded plan runs a fixed number of iterations; time_budget must be None")
        self.optimizer = optimizer
        self.make_score_fn = make_score_fn
        self.before = before
        self._cache: GraphCache[_Entry] = GraphCache(max_graphs)

    def _run(self, state: State, mean: torch.Tensor, noise: torch.Tensor) -> PlanResult:
        if self.before is not None:
            self.before()
        return self.optimizer.plan(self.make_score_fn(state), mean, noise=noise)

    def _noise_shape(self, init_mean: torch.Tensor) -> tuple[int, ...]:
        cfg = self.optimizer.cfg
        return (cfg.iterations, init_mean.shape[0], cfg.num_samples, *init_mean.shape[1:])

    @torch.no_grad()
    def __call__(self, state: State, init_mean: torch.Tensor) -> PlanResult:
        if init_mean.ndim != 3 or state.deter.shape[0] != init_mean.shape[0]:
            raise ValueError(
                f"need state [B] and init_mean [B, H, A], got {state.deter.shape[0]} and "
                f"{list(init_mean.shape)}"
            )
        gen = self.optimizer.generator
        if init_mean.device.type != "cuda":  # (the optimizer checks init_mean itself)
            noise = torch.randn(self._noise_shape(init_mean), generator=gen, device=init_mean.device)
            return self._run(state, init_mean, noise)
        check_finite_mean(init_mean)  # (the recorded graph cannot: it would read back to the host)
        key = (
            init_mean.device,
            tuple(init_mean.shape),
            tuple(state.deter.shape),
            tuple(state.stoch.shape),
            None if state.goal is None else tuple(state.goal.shape),
        )
        entry = self._cache.get(key, lambda: self._capture(state, init_mean))
        copy_state_(entry.state, state)
        entry.mean.copy_(init_mean)
        torch.randn(entry.noise.shape, generator=gen, device=entry.noise.device, out=entry.noise)
        entry.graph.replay()
        return entry.out

    def _capture(self, state: State, init_mean: torch.Tensor) -> _Entry:
        static, mean = clone_state(state), init_mean.float().clone()
        noise = torch.zeros(self._noise_shape(init_mean), device=init_mean.device)
        graph, out = self._cache.record(lambda: self._run(static, mean, noise), init_mean.device)
        return _Entry(graph, static, mean, noise, out)
