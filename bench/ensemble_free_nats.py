"""Does the ensemble's disagreement tell unfamiliar futures from familiar ones, with and without free
nats on the heads' KL?

World models with a 4-head ensemble are trained on Push episodes of one policy (``--train-policy``:
random actions, where the block seldom moves, by default; or the scripted expert with noise 0.3),
once per ``ensemble_free_nats`` value, same data, seed and steps. Each then imagines, from 5
filtered context frames, 10 steps along the true actions of held-out episodes of two kinds: more of
the same policy's (familiar) and the other policy's (unfamiliar: pushes the model never saw, or for
a model of the expert, a gripper wandering where the expert never goes). Printed per value: mean
disagreement per window on each kind, their ratio, and the AUROC of window disagreement separating
unfamiliar from familiar (0.5: no signal).

    MUJOCO_GL=egl python bench/ensemble_free_nats.py --steps 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import checked_device, describe  # bench/machine.py (the script's folder is on sys.path)

from robobrain.config import get_preset
from robobrain.data import EpisodeStore
from robobrain.data.collect import collect_episodes
from robobrain.envs import make_vector_env
from robobrain.policies import load_policy
from robobrain.training.wm_eval import make_windows
from robobrain.training.wm_trainer import load_world_model, train_world_model

ENV = "robobrain/Push-v0"


def collect(root: Path, policy: str, episodes: int, seed: int, size: int) -> list:
    vec = make_vector_env(ENV, 2, image_size=size)
    kw = {"noise_std": 0.3} if policy == "scripted" else {}
    pol = load_policy(policy, ENV, vec.single_action_space, seed=seed, **kw)
    store = EpisodeStore(root)
    collect_episodes(
        vec, pol, store, episodes, seed=seed, meta={"env_id": ENV, "policy": policy}, progress=False
    )
    vec.close()
    return store.load_all()


@torch.no_grad()
def disagreement(model, episodes: list, max_windows: int = 256) -> np.ndarray:
    """Mean ensemble disagreement over 10 imagined steps, per window: [N]."""
    w = make_windows(episodes, 5, 10, max_windows)
    out = []
    for i in range(0, len(w["actions"]), 64):
        sl = slice(i, i + 64)
        state = model.observe(w["ctx_pixels"][sl], w["ctx_actions"][sl], env_state=w["ctx_states"][sl])
        roll = model.imagine(state, torch.from_numpy(w["actions"][sl]).float(), disagreement=True)
        out.append(roll.disagreement.float().mean(1).cpu().numpy())
    return np.concatenate(out)


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train-episodes", type=int, default=60)
    ap.add_argument("--preset", default="debug")
    ap.add_argument("--values", type=float, nargs="+", default=[1.0, 0.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-policy", choices=["scripted", "random"], default="random")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = checked_device(ap, args.device)
    base = get_preset(args.preset)
    size = base.world_model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        other = "random" if args.train_policy == "scripted" else "scripted"
        collect(root / "train", args.train_policy, args.train_episodes, 0, size)
        familiar = collect(root / "familiar", args.train_policy, 12, 50_000, size)
        unfamiliar = collect(root / "unfamiliar", other, 12, 60_000, size)
        rows = []
        for value in args.values:
            preset = get_preset(args.preset, ensemble=4, ensemble_free_nats=value)
            preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, seed=args.seed))
            t0 = time.perf_counter()
            train_world_model(root / "train", root / f"wm{value}", preset, args.steps, device, progress=False)
            minutes = (time.perf_counter() - t0) / 60
            model = load_world_model(root / f"wm{value}", device)
            d_in, d_out = disagreement(model, familiar), disagreement(model, unfamiliar)
            rows.append(
                (value, d_in.mean(), d_out.mean(), d_out.mean() / d_in.mean(), auroc(d_in, d_out), minutes)
            )
    what = f"{args.steps} steps, {args.train_episodes} {args.train_policy} Push episodes, seed {args.seed}"
    print(f"{args.preset} preset, {what}; {describe(device)}")
    print("| free nats | disagreement familiar | unfamiliar | unfamiliar / familiar | AUROC | train min |")
    print("|---|---|---|---|---|---|")
    for value, a, b, r, auc, m in rows:
        print(f"| {value} | {a:.4f} | {b:.4f} | {r:.2f} | {auc:.3f} | {m:.1f} |")


if __name__ == "__main__":
    main()
