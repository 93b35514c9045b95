"""Where a planning-sized imagination spends its time on CUDA, and what cheaper precisions give.

    python bench/profile_imagine.py [--preset cpu] [--batch 16384] [--horizon 12]

Times CUDA-graph replays of one [B, H] rollout of a random-weight goal-conditioned model:
``GraphedImagine`` under bf16 autocast (the per-rollout planner path), with a pure-bf16 copy of the
weights, in fp32 and fp32 with TF32 matmuls; :class:`Bf16Imagine` plain and ``torch.compile``-d (the
whole-plan graph's rollout); :class:`FusedImagine`, one Triton kernel per rollout, autotuned and with
each of its block configurations pinned. Then torch.profiler's tables of the CUDA kernels of three
eager bf16-autocast rollouts and of three calls of the compiled twin.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from robobrain.config import get_preset
from robobrain.world_model import Bf16Imagine, FusedImagine, GraphedImagine, WorldModel, fused_unsupported
from robobrain.world_model.fused import _BLOCKS, block_fits, load_kernel


def ms_per_call(fn: Callable[[], object], n: int = 30) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3


def recorded(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` recorded as a CUDA graph (after two warm-up calls on a side stream); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--horizon", type=int, default=12)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this profile needs a CUDA GPU")
    dev = torch.device("cuda")
    cfg = get_preset(args.preset, state_dim=10, goal_start=7, goal_dim=3).world_model
    model = WorldModel(cfg).to(dev).eval()
    b, h = args.batch, args.horizon
    state = model.rssm.initial(b, dev, torch.zeros(b, cfg.goal_dim, device=dev))
    actions = torch.rand(b, h, cfg.action_dim, device=dev) * 2 - 1

    name = torch.cuda.get_device_name(dev)
    print(f"# {name}, torch {torch.__version__}, preset {args.preset}, B={b} H={h}")
    graphed = GraphedImagine(model)
    print(f"graph, bf16 autocast: {ms_per_call(lambda: graphed(state, actions)):.2f} ms")
    pure = GraphedImagine(copy.deepcopy(model).to(torch.bfloat16), amp=False)
    pure_state = state._replace(
        deter=state.deter.bfloat16(), stoch=state.stoch.bfloat16(), goal=state.goal.bfloat16()
    )
    pure_actions = actions.bfloat16()
    print(f"graph, pure bf16 weights: {ms_per_call(lambda: pure(pure_state, pure_actions)):.2f} ms")
    for compiled in (False, True):
        twin = Bf16Imagine(model, compile=compiled)
        replay = recorded(lambda twin=twin: twin(state, actions))
        label = "compiled bf16 twin" if compiled else "bf16 twin (Bf16Imagine)"
        print(f"graph, {label}: {ms_per_call(replay):.2f} ms")
    why = fused_unsupported(cfg)
    if why is None:
        fused = FusedImagine(model)
        replay = recorded(lambda: fused(state, actions))
        ms = ms_per_call(replay)
        print(
            f"graph, fused Triton rollout (FusedImagine): {ms:.2f} ms, block {load_kernel(False).best_config}"
        )
        with torch.no_grad():  # random weights: the two-hot reward head starts at 0, the success head not
            err = (fused(state, actions).success_logit - model.imagine(state, actions).success_logit).abs()
        print(
            f"  its success logits vs the fp32 model: max |error| {err.max():.4f}, median {err.median():.4f}"
        )
        for block in _BLOCKS:  # each configuration the autotuner chose among, pinned
            if block_fits(block[1], cfg.deter, cfg.hidden, cfg.stoch * cfg.classes):
                pinned = FusedImagine(model, block=block)
                replay = recorded(lambda pinned=pinned: pinned(state, actions))
                print(f"  block (BM, BK, warps, stages) {block}: {ms_per_call(replay):.2f} ms")
    else:
        print(f"# no fused Triton rollout: {why}")
    fp32 = GraphedImagine(model, amp=False)
    print(f"graph, fp32: {ms_per_call(lambda: fp32(state, actions)):.2f} ms")
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32 = GraphedImagine(model, amp=False)
    print(f"graph, fp32 + tf32 matmuls: {ms_per_call(lambda: tf32(state, actions)):.2f} ms")
    torch.backends.cuda.matmul.allow_tf32 = False

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                model.imagine(state, actions)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            twin(state, actions)  # the compiled twin
        torch.cuda.synchronize()
    print("# the compiled bf16 twin, three eager calls")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
