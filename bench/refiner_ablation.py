"""Reference-refiner ablation on a trained world model: how much of the held-out video-prediction
quality is the refiner's own capacity, with everything else fixed.

    python bench/refiner_ablation.py --checkpoint R --data DIR [--layers 0 1 2] [--updates 1500]

For each ``--layers`` value a fresh ``ReferenceRefiner`` replaces the checkpoint's and is trained
alone (Adam, the checkpoint's learning rate and its ``lr_decay`` schedule over the updates) on
the frozen model's posterior feature maps of training windows -- exactly the signal it gets inside a
``train-wm`` run, where it also sees only detached features. Then open-loop prediction on the same
held-out windows as ``robobrain eval-wm``: PSNR@k, and the mean squared error on the pixels that did
not change since the last context frame (static) and on those that did (moving). The checkpoint's own
refiner is the first row. Every variant starts from the same torch seed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from machine import checked_device, describe  # bench/machine.py (the script's folder is on sys.path)

from robobrain.checkpoint import load_checkpoint
from robobrain.config import WMTrainConfig, from_dict
from robobrain.data import EpisodeStore, SequenceSampler
from robobrain.training.wm_eval import make_windows, predict, psnr
from robobrain.training.wm_trainer import (
    batch_to_torch,
    lr_schedule,
    split_episodes,
    world_model_from_checkpoint,
)
from robobrain.world_model import WorldModel
from robobrain.world_model.networks import ReferenceRefiner


def train_refiner(model: WorldModel, sampler: SequenceSampler, tcfg: WMTrainConfig, updates: int) -> float:
    """Train ``model.refiner`` alone for ``updates`` steps; returns the last loss."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.refiner.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=tcfg.lr, eps=tcfg.adam_eps)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(updates):
        for group in opt.param_groups:
            group["lr"] = lr_schedule(tcfg, step, updates)
        batch = batch_to_torch(sampler.sample(tcfg.batch_size), model.device)
        pixels = batch["pixels"]
        with torch.no_grad():
            posts = model.posteriors(batch, sample=True)
            lead = posts.feat.shape[:2]
            hidden = model.decoder.hidden(posts.feat.flatten(0, 1)).unflatten(0, lead)
        loss = model.refiner_loss(hidden, pixels, valid=batch["valid"])  # (not on short episodes' padding)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def held_out_errors(model: WorldModel, windows: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """(PSNR at the last horizon step, static-pixel MSE, moving-pixel MSE) there, pixels in [0, 1]."""
    future = torch.from_numpy(windows["future"][:, -1]).float()
    pred = predict(model, windows, windows["actions"])["pixels"][:, -1].float()
    last = torch.from_numpy(windows["ctx_pixels"][:, -1]).float()
    static = ((future - last).abs().amax(-1, keepdim=True) <= 2).float().expand_as(future)
    se = ((pred - future) / 255).square()
    return (
        float(psnr(pred, future).mean()),
        float((se * static).sum() / static.sum()),
        float((se * (1 - static)).sum() / (1 - static).sum()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = checked_device(parser, args.device)

    ckpt = load_checkpoint(args.checkpoint, with_training_state=False)
    if "online" in ckpt.config:  # (as eval-wm: its "held-out" episodes would be trained-on ones)
        parser.error(f"{ckpt.path}: a `robobrain train` run's world model holds no episode out")
    tcfg = from_dict(WMTrainConfig, ckpt.config.get("train", {}))
    train_eps, held = split_episodes(EpisodeStore(args.data), tcfg.holdout_fraction)
    windows = make_windows(held, context=5, horizon=10, max_windows=256)
    model = world_model_from_checkpoint(ckpt, device)  # (the checkpoint read above, once)
    if model.refiner is None:
        raise SystemExit(f"{args.checkpoint}: this world model has no reference refiner")

    print(
        f"# refiner ablation on {ckpt.path} ({len(held)} held-out episodes, {len(windows['actions'])} "
        f"windows, PSNR at step 10); {args.updates} refiner-only updates per row, torch seed {args.seed}"
    )
    print(f"# machine: {describe(device)}")
    print("| refiner | updates | PSNR@10 | static-pixel MSE | moving-pixel MSE | minutes |")
    print("|---|---|---|---|---|---|")
    p, st, mv = held_out_errors(model, windows)
    print(
        f"| the checkpoint's own ({model.cfg.refiner_layers} extra layers) | its run | {p:.2f} dB "
        f"| {st:.5f} | {mv:.5f} | - |"
    )
    for layers in args.layers:
        torch.manual_seed(args.seed)
        model.refiner = ReferenceRefiner(model.cfg.cnn_depth, layers).to(model.device)
        sampler = SequenceSampler(train_eps, tcfg.seq_len, seed=args.seed)
        start = time.perf_counter()
        train_refiner(model, sampler, tcfg, args.updates)
        minutes = (time.perf_counter() - start) / 60
        p, st, mv = held_out_errors(model, windows)
        print(
            f"| fresh, {layers} extra layers | {args.updates} | {p:.2f} dB | {st:.5f} | {mv:.5f} "
            f"| {minutes:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
