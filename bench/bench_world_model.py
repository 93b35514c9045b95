"""World-model speed: imagination throughput and training frames/s, each against the matmul peak
measured in the same run.

    python bench/bench_world_model.py [--preset cpu] [--device cpu] [--batch 1024] [--horizon 12]

Imagination: B candidate action sequences of H steps from one latent state, latent only (no
decoding), the way the planner calls it. FLOPs are counted by ``torch.utils.flop_counter`` on one
call; "of peak" divides the achieved FLOP/s by a plain square matmul's on the same device, in the
same precision (2048² on the CPU, 8192² on CUDA). On CUDA imagination is timed three ways: eager
float32, eager under bf16 autocast, and bf16 replayed from a CUDA graph per rollout
(``GraphedImagine``, the planner's path with ``whole_plan=False``; its default, the whole plan as one
graph over a bf16 twin, is timed by bench_planner.py and profile_imagine.py); training runs under
bf16 autocast, as ``train-wm`` does there. The model is goal-conditioned like the robobrain tasks'
(10-D state, goal at [7:10], a state head; the training batch carries the states); ``--no-goal``
gives the pixels-only model of the rows recorded before the twenty-second session.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from machine import checked_device, describe  # bench/machine.py (the script's folder is on sys.path)
from torch.utils.flop_counter import FlopCounterMode

from robobrain.config import get_preset
from robobrain.world_model import GraphedImagine, WorldModel


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, seconds: float) -> float:
    """Seconds per call of fn(), averaged over ~``seconds`` after a warm-up call."""
    fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - start) / n


def matmul_peak(device: torch.device, seconds: float, dtype: torch.dtype = torch.float32) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--stoch", type=int, default=None, help="override the preset's latent variables")
    parser.add_argument("--classes", type=int, default=None, help="override the preset's classes")
    parser.add_argument("--reward-bins", type=int, default=None, help="override (0 = squared-error head)")
    parser.add_argument(
        "--goal", action=argparse.BooleanOptionalAction, default=True,
        help="goal-conditioned with a state head, as the tasks' models (--no-goal: pixels only)",
    )  # fmt: skip
    args = parser.parse_args()
    device = checked_device(parser, args.device)
    overrides = {
        k: v
        for k, v in (("stoch", args.stoch), ("classes", args.classes), ("reward_bins", args.reward_bins))
        if v is not None
    }
    if args.goal:
        overrides |= {"state_dim": 10, "goal_start": 7, "goal_dim": 3}
    cfg = get_preset(args.preset, **overrides).world_model
    model = WorldModel(cfg).to(device).eval()
    b, h = args.batch, args.horizon
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    goal = torch.zeros(1, cfg.goal_dim, device=device) if cfg.goal_dim else None
    state = model.rssm.initial(1, device, goal).repeat_interleave(b)
    actions = torch.rand(b, h, cfg.action_dim, device=device) * 2 - 1

    def eager(amp: bool) -> Callable[[], object]:
        def run() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                model.imagine(state, actions)

        return run

    with FlopCounterMode(display=False) as counter:
        eager(False)()
    flops = counter.get_total_flops()
    peak = matmul_peak(device, args.seconds)
    variants = [("fp32", eager(False), peak)]
    if device.type == "cuda":
        graphed = GraphedImagine(model)
        peak_bf16 = matmul_peak(device, args.seconds, torch.bfloat16)
        variants += [
            ("bf16 autocast", eager(True), peak_bf16),
            ("bf16 + CUDA graph", lambda: graphed(state, actions), peak_bf16),
        ]
    times = [(name, timed(fn, device, args.seconds), p) for name, fn, p in variants]

    tb, tl = get_preset(args.preset).train.batch_size, get_preset(args.preset).train.seq_len
    batch = {
        "pixels": torch.randint(
            0, 256, (tb, tl, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, device=device
        ),
        "action": torch.rand(tb, tl, cfg.action_dim, device=device) * 2 - 1,
        "reward": torch.randn(tb, tl, device=device),
        "success": torch.rand(tb, tl, device=device) > 0.5,
    }
    if cfg.state_dim:
        batch["state"] = torch.rand(tb, tl, cfg.state_dim, device=device) * 0.4 - 0.2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        with autocast:
            loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    with FlopCounterMode(display=False) as counter:  # (forward and backward; the optimizer's are few)
        train_step()
    train_flops = counter.get_total_flops()
    t_train = timed(train_step, device, args.seconds)
    train_peak = peak_bf16 if device.type == "cuda" else peak

    params = sum(p.numel() for p in model.parameters())
    kind = "goal-conditioned, state head" if cfg.goal_dim else "pixels only"
    print(
        f"# world model '{args.preset}' (latent {cfg.stoch}x{cfg.classes}, reward bins {cfg.reward_bins}, "
        f"{kind}; {params / 1e6:.2f} M params) on {device}"
    )
    print(f"# {describe(device)}")
    n = 8192 if device.type == "cuda" else 2048
    step = f"train step B={tb}×L={tl} @ {cfg.image_size}px" + (" (bf16)" if device.type == "cuda" else "")
    print("| what | value |")
    print("|---|---|")
    print(f"| plain matmul peak ({n}², fp32) | {peak / 1e9:.1f} GFLOP/s |")
    if device.type == "cuda":
        print(f"| plain matmul peak ({n}², bf16) | {peak_bf16 / 1e9:.1f} GFLOP/s |")
    print(f"| imagine FLOPs per call, B={b} H={h} (counted) | {flops / 1e9:.3f} GFLOP |")
    for name, t, p in times:
        achieved = flops / t
        print(
            f"| imagine B={b} H={h} {name}: per call; transitions/s; achieved | {t * 1e3:.2f} ms; "
            f"{b * h / t:,.0f}/s; {achieved / 1e9:.1f} GFLOP/s = {achieved / p:.1%} of the {name[:4]} peak |"
        )
    print(f"| {step} FLOPs (counted, forward + backward) | {train_flops / 1e9:.2f} GFLOP |")
    achieved = train_flops / t_train
    print(
        f"| {step} | {t_train * 1e3:.0f} ms = {tb * tl / t_train:.0f} frames/s; {achieved / 1e9:.1f} "
        f"GFLOP/s = {achieved / train_peak:.1%} of the {'bf16' if device.type == 'cuda' else 'fp32'} peak |"
    )


if __name__ == "__main__":
    main()
