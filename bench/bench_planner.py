"""Decision latency of world-model MPC, for 1 and 16 envs planned in one batched call.

    python bench/bench_planner.py [--preset cpu] [--device cpu] [--samples 128] [--iterations 3]
                                  [--stoch S --classes C] [--optimizer mppi --guide bc]

Peer measured in the same run: the bare ``imagine`` calls the planner makes (iterations x one
[B*N, H] rollout, eager float32), so the table shows what the optimizer and the latent filter (the
encoder and a posterior step per decision: ~2 of 44 ms for 1 env at 128 x 3, 2 CPU cores, measured
once on 2026-12-08) add (its ratio
is printed for the eager float32 rows alone: the others also change the rollout's precision and
launches). On CUDA each
env count is planned up to five ways: eager float32 (``fast=False``); bf16 autocast with one CUDA
graph per rollout (:class:`robobrain.world_model.GraphedImagine`, ``whole_plan=False``); the whole
planning call as one CUDA graph over a bf16 twin of the model (:class:`robobrain.planning.GraphedPlan`),
its rollout plain or ``torch.compile``-d (``compile=True``), or one Triton kernel per rollout
(:class:`robobrain.world_model.FusedImagine`, ``fused=True``; when Triton is installed). A
random-weight model of the preset's size is used (goal-conditioned like the robobrain tasks'
models: 10-D state, goal at [7:10]): latency does not depend on the weights. ``--guide bc`` adds a
random-weight behaviour prior whose ``--prior-samples`` imagined rollouts join the candidates
(``eval --guide bc``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from machine import checked_device, describe  # bench/machine.py (the script's folder is on sys.path)

from robobrain.config import get_preset
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.policies import WorldModelMPCPolicy
from robobrain.rl import BehaviourPrior, BehaviourPriorGuide
from robobrain.world_model import State, WorldModel, fused_unsupported


def timed(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument(
        "--elites", type=int, default=None, help="default: robobrain eval's (32 of 128, a quarter of fewer)"
    )
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--optimizer", choices=("cem", "mppi"), default="cem")
    parser.add_argument("--guide", choices=("none", "bc"), default="none")
    parser.add_argument(
        "--prior-samples", type=int, default=None,
        help="--guide bc: behaviour-prior rollouts among the candidates (default: all but one, as eval's)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 16], help="env counts to plan for")
    parser.add_argument("--stoch", type=int, default=None, help="override the preset's latent variables")
    parser.add_argument("--classes", type=int, default=None, help="override the preset's classes")
    parser.add_argument(
        "--compile-modes", nargs="+", default=["default"],
        help="torch.compile modes of the compiled whole-plan rows (CUDA), e.g. max-autotune-no-cudagraphs",
    )  # fmt: skip
    parser.add_argument(
        "--only", nargs="+", default=None,
        help="run only the variants whose name contains one of these words (e.g. compiled fused)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.guide == "bc":
        if args.prior_samples is None:
            args.prior_samples = max(1, args.samples - 1)
        if not 1 <= args.prior_samples <= args.samples - 1:  # the optimizer keeps at most that many
            parser.error(f"--prior-samples must be in [1, --samples - 1 = {args.samples - 1}]")
    if args.elites is None:  # (a fixed 32 failed below 32 samples)
        from robobrain.cli import Eval, planner_settings

        args.elites = planner_settings(Eval(policy="mpc:-", samples=args.samples))["elites"]
    if not 1 <= args.elites <= args.samples:
        parser.error(f"--elites must be in [1, --samples = {args.samples}]")
    device = checked_device(parser, args.device)
    sizes = {k: v for k, v in (("stoch", args.stoch), ("classes", args.classes)) if v is not None}
    cfg = get_preset(args.preset, state_dim=10, goal_start=7, goal_dim=3, **sizes).world_model
    model = WorldModel(cfg).to(device).eval()
    optim = OptimizerConfig(num_samples=args.samples, num_elites=args.elites, iterations=args.iterations)
    mpc = MPCConfig(horizon=args.horizon, optimizer=args.optimizer, optim=optim)
    prior = BehaviourPrior(cfg.feat_dim, cfg.action_dim).to(device) if args.guide == "bc" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # (name, WorldModelMPCPolicy keywords); a guided plan is never recorded whole, so those two
    # variants would repeat the per-rollout graphs' row.
    variants: list[tuple[str, dict]] = [("eager fp32", {"fast": False})]
    if device.type == "cuda":
        variants.append(("bf16 autocast, a graph per rollout", {"whole_plan": False}))
        if prior is None:
            variants.append(("whole-plan graph, bf16 twin", {"whole_plan": True}))
            for mode in args.compile_modes:
                name = "whole-plan graph, compiled bf16 twin" + ("" if mode == "default" else f" ({mode})")
                variants.append((name, {"whole_plan": True, "compile": True if mode == "default" else mode}))
            why = fused_unsupported(cfg)
            if why is None:
                variants.append(
                    ("whole-plan graph, fused Triton rollout", {"whole_plan": True, "fused": True})
                )
            else:
                print(f"# no fused Triton row: {why}")
    if args.only:
        variants = [(name, kw) for name, kw in variants if any(word in name for word in args.only)]
    rows = []
    for n_envs in args.envs:
        rng = np.random.default_rng(0)
        obs = {
            "pixels": rng.integers(0, 256, (n_envs, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
            "state": rng.uniform(-0.2, 0.2, (n_envs, 10)).astype(np.float32),
        }
        # The peer: the imagination the plan needs, bare. A guided plan imagines its N - P other
        # candidates per iteration and rolls the P prior ones out once (the prior's own rollout).
        imagined = args.samples - (args.prior_samples if prior is not None else 0)
        goal = torch.zeros(n_envs * imagined, cfg.goal_dim, device=device)
        state = model.rssm.initial(n_envs * imagined, device, goal)
        actions = torch.rand(n_envs * imagined, args.horizon, cfg.action_dim, device=device) * 2 - 1
        starts = model.rssm.initial(n_envs, device, torch.zeros(n_envs, cfg.goal_dim, device=device))
        peer_guide = None if prior is None else BehaviourPriorGuide(prior, args.prior_samples)

        def bare(
            state: State = state, actions: torch.Tensor = actions, starts: State = starts, guide=peer_guide
        ) -> None:
            with torch.no_grad():
                if guide is not None:
                    guide.prior_rollout(model, starts, args.horizon, disagreement=False)
                for _ in range(args.iterations):
                    model.imagine(state, actions, disagreement=False)
            sync()

        peer_times = timed(bare, args.repeats)  # timed again after the variants (a shared machine drifts)
        measured = []
        for name, kw in variants:
            guide = None if prior is None else BehaviourPriorGuide(prior, args.prior_samples)
            policy = WorldModelMPCPolicy(model, mpc, device, guide=guide, **kw)
            policy.reset(n_envs)

            def decide(policy: WorldModelMPCPolicy = policy, obs: dict = obs) -> None:
                policy.act(obs)
                sync()

            try:
                lat = np.array(timed(decide, args.repeats)) * 1e3
            except Exception as e:  # e.g. torch.compile without a working compiler on this machine
                print(f"# {name}, {n_envs} envs: failed: {type(e).__name__}: {str(e)[:400]}", flush=True)
                continue
            tail = np.percentile(lat, 95) if args.repeats >= 20 else lat.max()
            measured.append((name, np.median(lat), tail))
        peer = np.median(peer_times + timed(bare, args.repeats)) * 1e3
        rows += [(n_envs, name, p50, tail, peer) for name, p50, tail in measured]
    guided = "" if prior is None else f", + {args.prior_samples} behaviour-prior samples"
    print(f"# MPC decision latency, preset '{args.preset}' (latent {cfg.stoch}x{cfg.classes}), {device}, "
          f"{args.optimizer} {args.samples} samples ({args.elites} elites) x "
          f"{args.iterations} iterations, H={args.horizon}{guided}")  # fmt: skip
    print(f"# {describe(device)}")
    tail = "p95 ms" if args.repeats >= 20 else f"max ms (of {args.repeats})"
    print(f"| envs | imagine | p50 ms | {tail} | bare imagine ms (fp32) | planner / bare | vs fewest envs |")
    print("|---|---|---|---|---|---|---|")
    first = {name: p50 for _, name, p50, _, _ in sorted(rows, key=lambda r: -r[0])}  # each variant's fewest
    for n_envs, name, p50, p95, peer in rows:
        ratio = f"{p50 / peer:.2f}" if name == "eager fp32" else "-"  # (the others imagine in bf16 graphs)
        print(
            f"| {n_envs} | {name} | {p50:.2f} | {p95:.2f} | {peer:.2f} | {ratio} | {p50 / first[name]:.1f}x |"
        )
    if any(name != "eager fp32" for _, name, *_ in rows):
        print("# planner / bare only for eager fp32: the other rows imagine in bf16 through CUDA graphs, "
              "the bare peer in fp32 eagerly (their speed-up would read as the optimizer's)")  # fmt: skip


if __name__ == "__main__":
    main()
