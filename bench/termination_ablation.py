"""Termination-head ablation on an env whose episodes end in falls (e.g. InvertedPendulum-v5, which
pays 1 a step while the pole is up and ends the episode when it falls).

    python bench/termination_ablation.py --data DIR [--steps 2000] [--episodes 20] [--seq-len 4]
        [--episode-steps 200]

Two world models are trained on the same stored episodes with the same seed and steps -- one with the
termination head (``use_termination``, what ``train-wm`` does on such data), one without -- and each
is evaluated by ``robobrain eval --policy mpc:RUN`` on the same env seeds, beside the random policy.
Windows are ``--seq-len`` observations: random InvertedPendulum episodes last ~6 steps, shorter than
the presets' windows. Prints mean return, mean length and the decision latency of each row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

from robobrain.cli import main as robobrain
from robobrain.config import get_preset
from robobrain.data import EpisodeStore
from robobrain.training.wm_trainer import train_world_model


def evaluate(policy: str, env_id: str, episodes: int, steps: int, out: Path) -> dict[str, float]:
    robobrain(["eval", "--policy", policy, "--env", env_id, "--episodes", str(episodes), "--num-envs", "4",
               "--episode-steps", str(steps), "--seed", "1000", "--out", str(out),
               "--no-progress"])  # fmt: skip
    return json.loads((out / "eval_info.json").read_text())["summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/termination_ablation"))
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seq-len", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--episode-steps", type=int, default=200, help="time limit of the evaluation episodes")
    args = ap.parse_args()

    first = next(iter(EpisodeStore(args.data, create=False).episodes()))[1]
    env_id = first.meta["env_id"]
    preset = get_preset(args.preset)
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, seq_len=args.seq_len))

    def run_eval(policy: str, name: str) -> dict[str, float]:
        return evaluate(policy, env_id, args.episodes, args.episode_steps, args.out / f"eval_{name}")

    rows = [("random", run_eval("random", "random"), float("nan"))]
    for name, use in (("mpc, termination head", True), ("mpc, no termination head", False)):
        run = args.out / ("head" if use else "no_head")
        wm = dataclasses.replace(preset.world_model, use_termination=use)
        variant = dataclasses.replace(preset, world_model=wm)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (an env without a state layout: no goal)
            train_world_model(args.data, run, variant, args.steps, progress=False, preset_name=args.preset)
        train_s = time.perf_counter() - t0
        rows.append((name, run_eval(f"mpc:{run}", run.name), train_s))

    print(f"\n{env_id}: {args.episodes} episodes (seeds 1000+), {args.steps} world-model steps, "
          f"windows of {args.seq_len}, preset {args.preset}, time limit {args.episode_steps}")  # fmt: skip
    print(f"{'policy':<26} {'mean return':>12} {'mean length':>12} {'p50 ms':>8} {'train s':>8}")
    for name, s, train_s in rows:
        p50 = s.get("latency_ms_p50", float("nan"))
        print(f"{name:<26} {s['mean_return']:>12.1f} {s['mean_length']:>12.1f} {p50:>8.1f} {train_s:>8.0f}")


if __name__ == "__main__":
    main()
