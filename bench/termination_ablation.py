"""Termination-head ablation on an env whose episodes end in falls (e.g. InvertedPendulum-v5, which
pays 1 a step while the pole is up and ends the episode when it falls).

    python bench/termination_ablation.py --data DIR [--steps 2000] [--episodes 20] [--seq-len 4]
        [--episode-steps 200] [--model-seeds 0 1] [--device cpu]

Two world models are trained on the same stored episodes with the same seed and steps -- one with the
termination head (``use_termination``, what ``train-wm`` does on such data), one without -- and each
is evaluated by ``robobrain eval --policy mpc:RUN`` on the same env seeds, beside the random policy.
Windows are ``--seq-len`` observations (4 by default, what the RESULTS runs used when episodes shorter
than a window were left out; random InvertedPendulum ones last ~6 steps; now they are padded and
masked, so the preset's own ``--seq-len`` works too). Prints mean return (± its standard error over
the episodes), mean length and the decision latency of each row, then per world-model seed
(``--model-seeds``: both variants are trained with each) the return of head minus no head, paired on
the same env seeds. A run directory that already holds ``--steps`` steps is evaluated as it is
(train_world_model resumes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
from machine import checked_device, describe  # bench/machine.py (the script's folder is on sys.path)

from robobrain.cli import main as robobrain
from robobrain.config import get_preset
from robobrain.data import EpisodeStore
from robobrain.training.wm_trainer import train_world_model


def evaluate(policy: str, env_id: str, episodes: int, steps: int, out: Path, device: str) -> dict:
    """The eval report of ``policy`` on ``episodes`` episodes, seeds 1000+, planning on ``device``."""
    robobrain(["eval", "--policy", policy, "--env", env_id, "--episodes", str(episodes), "--num-envs", "4",
               "--episode-steps", str(steps), "--seed", "1000", "--out", str(out), "--device", device,
               "--no-progress"])  # fmt: skip
    return json.loads((out / "eval_info.json").read_text())


def returns(report: dict) -> np.ndarray:
    """The return of each episode of an eval report, in episode (env seed) order."""
    return np.array([e["return"] for e in sorted(report["episodes"], key=lambda e: e["episode"])])


def mean_se(x: np.ndarray) -> str:
    return f"{x.mean():.1f} ± {x.std(ddof=1) / np.sqrt(len(x)):.1f}" if len(x) > 1 else f"{x.mean():.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/termination_ablation"))
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seq-len", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--episode-steps", type=int, default=200, help="time limit of the evaluation episodes")
    ap.add_argument("--model-seeds", type=int, nargs="+", default=[0], help="world-model training seeds")
    ap.add_argument("--device", default="cpu", help="where the world models train and plan")
    args = ap.parse_args()
    device = checked_device(ap, args.device)

    first = next(iter(EpisodeStore(args.data, create=False).episodes()))[1]
    env_id = first.meta["env_id"]
    preset = get_preset(args.preset)

    def run_eval(policy: str, name: str) -> dict:
        out = args.out / f"eval_{name}"
        return evaluate(policy, env_id, args.episodes, args.episode_steps, out, str(device))

    rows = [("random", run_eval("random", "random"), float("nan"))]
    paired = []
    for seed in args.model_seeds:
        train = dataclasses.replace(preset.train, seq_len=args.seq_len, seed=seed)
        got = {}
        for label, use in (("head", True), ("no_head", False)):
            run = args.out / f"{label}_seed{seed}"
            variant = dataclasses.replace(
                preset, train=train, world_model=dataclasses.replace(preset.world_model, use_termination=use)
            )
            resumed = (run / "checkpoints").exists()  # (its time is not this call's: printed as -)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (an env without a state layout: no goal)
                train_world_model(
                    args.data, run, variant, args.steps, device, progress=False, preset_name=args.preset
                )
            train_s = float("nan") if resumed else time.perf_counter() - t0
            got[label] = run_eval(f"mpc:{run}", run.name)
            name = f"mpc, {'termination head' if use else 'no termination head'}, seed {seed}"
            rows.append((name, got[label], train_s))
        paired.append((seed, returns(got["head"]) - returns(got["no_head"])))

    print(f"\n{env_id}: {args.episodes} episodes (seeds 1000+), {args.steps} world-model steps, "
          f"windows of {args.seq_len}, preset {args.preset}, time limit {args.episode_steps}")  # fmt: skip
    print(f"machine: {describe(device)}")
    print(f"{'policy':<38} {'return ± s.e.':>14} {'mean length':>12} {'p50 ms':>8} {'train s':>8}")
    for name, report, train_s in rows:
        s = report["summary"]
        p50 = s.get("latency_ms_p50", float("nan"))
        print(
            f"{name:<38} {mean_se(returns(report)):>14} {s['mean_length']:>12.1f} {p50:>8.1f} {train_s:>8.0f}"
        )
    print("(train s: nan for the random policy, and for a run directory that already held a checkpoint: "
          "its training was not timed here)")  # fmt: skip
    print("\nhead minus no head, paired on the env seeds:")
    for seed, d in paired:
        print(
            f"  world-model seed {seed}: {mean_se(d)} (head ahead on {(d > 0).sum()} of {len(d)}, "
            f"behind on {(d < 0).sum()})"
        )


if __name__ == "__main__":
    main()
