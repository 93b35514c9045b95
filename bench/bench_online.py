"""robobrain's online loop against SB3 SAC at the same env-step budget, measured by the same evaluation
code, plus the guide ablation (MPC alone / + actor prior / + critic value / both).

    # 1. the robobrain run (resumable; its wall clock is in <run>/train.csv, column wall_s)
    robobrain train --env robobrain/Push-v0 --env-steps 20000 --run-dir runs/push_20k
    # 2. the peers and the table
    python bench/bench_online.py --run runs/push_20k --env-steps 20000 --episodes 20

The peers are trained here with SB3's defaults except the replay buffer size (the budget): SAC with an
MLP on ``obs["state"]`` (privileged: block and goal positions), and SAC with SB3's CnnPolicy on
``obs["pixels"]``. Skip either with ``--skip``. Every policy is evaluated by ``robobrain.evaluation``
on the same seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import robobrain.envs as envs
from robobrain.evaluation import evaluate_policy
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.policies import SB3Policy, load_policy


class SelectKey(gym.ObservationWrapper):
    """One entry of the robobrain observation dict as the observation."""

    def __init__(self, env: gym.Env, key: str) -> None:
        super().__init__(env)
        self.key = key
        self.observation_space = env.observation_space[key]

    def observation(self, observation: dict) -> np.ndarray:
        return observation[self.key]


def train_sac(env_id: str, key: str, steps: int, image_size: int, seed: int, out: Path) -> tuple[Path, float]:
    from stable_baselines3 import SAC

    path = out / f"sac_{key}.zip"
    if path.exists():
        return path, float("nan")
    env = SelectKey(envs.make_env(env_id, image_size=image_size), key)
    policy = "CnnPolicy" if key == "pixels" else "MlpPolicy"
    extra = {"optimize_memory_usage": True, "replay_buffer_kwargs": {"handle_timeout_termination": False}}
    model = SAC(policy, env, buffer_size=steps, seed=seed, verbose=0, **(extra if key == "pixels" else {}))
    t = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - t
    model.save(path)
    (out / f"sac_{key}.wall_s").write_text(str(wall))
    env.close()
    return path, wall


def evaluate(policy, env_id: str, episodes: int, image_size: int, num_envs: int, seed: int) -> dict:
    eval_envs = [envs.make_env(env_id, image_size=image_size) for _ in range(num_envs)]
    try:
        return evaluate_policy(policy, eval_envs, episodes, seed=seed, video_episodes=0, progress=False)[
            "summary"
        ]
    finally:
        for e in eval_envs:
            e.close()


def run_wall_clock(run: Path) -> float:
    """Seconds the run spent in the loop (``wall_s`` of its last row; evaluations included)."""
    with open(run / "train.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["wall_s"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="a finished `robobrain train` run directory")
    parser.add_argument("--env", default="robobrain/Push-v0")
    parser.add_argument("--env-steps", type=int, default=20_000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1_000_000, help="first evaluation episode seed")
    parser.add_argument("--out", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["state", "pixels", "ablation"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.run is not None:
        from robobrain.checkpoint import load_checkpoint

        cfg = load_checkpoint(args.run, with_training_state=False).config
        size = cfg["world_model"]["image_size"]
        mpc_cfg = cfg["online"]["mpc"]
        optim = OptimizerConfig(**mpc_cfg["optim"])
        mpc = MPCConfig(**{**mpc_cfg, "optim": optim, "exploration_std": 0.0})
        guides = ["both"] if "ablation" in args.skip else ["none", "prior", "value", "both"]
        space = envs.make_env(args.env, image_size=size).action_space
        for guide in guides:
            policy = load_policy(f"mpc:{args.run}", args.env, space, mpc=mpc, guide=guide)
            t = time.perf_counter()
            summary = evaluate(policy, args.env, args.episodes, size, 2, args.seed)
            rows.append(
                (f"robobrain MPC, guide={guide}", summary, run_wall_clock(args.run), time.perf_counter() - t)
            )
            print(rows[-1], flush=True)
    for key in ("state", "pixels"):
        if key in args.skip:
            continue
        path, wall = train_sac(args.env, key, args.env_steps, 64, 0, args.out)
        if np.isnan(wall) and (args.out / f"sac_{key}.wall_s").exists():
            wall = float((args.out / f"sac_{key}.wall_s").read_text())
        policy = SB3Policy.load(str(path))
        t = time.perf_counter()
        summary = evaluate(policy, args.env, args.episodes, 64, 2, args.seed)
        rows.append((f"SB3 SAC from {key}", summary, wall, time.perf_counter() - t))
        print(rows[-1], flush=True)

    print(
        f"\n{args.env}, {args.env_steps} env steps, {args.episodes} evaluation episodes (seeds {args.seed}+)"
    )
    print("| agent | success (95 % Wilson) | mean return | train wall clock | eval wall clock |")
    print("|---|---|---|---|---|")
    for name, s, wall, ev in rows:
        lo, hi = s["success_ci95"]
        print(f"| {name} | {100 * s['success_rate']:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}] | "
              f"{s['mean_return']:.1f} | {wall / 60:.1f} min | {ev / 60:.1f} min |")  # fmt: skip
    (args.out / "table.json").write_text(json.dumps([(n, s, w, e) for n, s, w, e in rows], indent=1))


if __name__ == "__main__":
    main()
