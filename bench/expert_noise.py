"""How well do the scripted experts solve their tasks under the action noise of the data they collect?

    python bench/expert_noise.py [--seeds 150] [--noise 0 0.1 0.3]

Seed episodes of `robobrain train --scripted-fraction` act with noise 0.3 (``policies/online.py``),
`robobrain collect --noise` with what it is given. Per noise level and task: the share of seeds
0..N-1 whose last step is a success, and the mean first step of success (--steps where none). Pixels are
not rendered (the experts read only the state).
"""

from __future__ import annotations

import argparse

import numpy as np
from machine import cpu_name  # bench/machine.py (the script's folder is on sys.path)

from robobrain.envs.pick_place import PickPlaceEnv
from robobrain.envs.push import PushEnv
from robobrain.envs.reach import ReachEnv
from robobrain.policies.simple import ScriptedPolicy


def rates(cls: type, noise: float, seeds: int, steps: int) -> tuple[float, float]:
    env = cls(image_size=8)
    env._render_pixels = lambda: np.zeros((8, 8, 3), np.uint8)  # not looked at
    policy = ScriptedPolicy(cls.expert, noise_std=noise, seed=0)
    success, first = [], []
    for seed in range(seeds):
        obs, _ = env.reset(seed=seed)
        hit = None
        for step in range(steps):
            obs, _, _, _, info = env.step(policy.act({"state": obs["state"][None]})[0])
            hit = step if hit is None and info["success"] else hit
        success.append(info["success"])
        first.append(steps if hit is None else hit)
    return float(np.mean(success)), float(np.mean(first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=150)
    parser.add_argument("--steps", type=int, default=50, help="per episode (the tasks' time limit)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    args = parser.parse_args()
    print(f"{cpu_name()}; seeds 0-{args.seeds - 1}; success at the last step (mean first success step)")
    tasks = (ReachEnv, PushEnv, PickPlaceEnv)
    print("| noise | " + " | ".join(t.__name__ for t in tasks) + " |")
    print("|---" * (len(tasks) + 1) + "|")
    for noise in args.noise:
        measured = (rates(t, noise, args.seeds, args.steps) for t in tasks)
        cells = [f"{100 * s:.1f} % ({f:.1f})" for s, f in measured]
        print(f"| {noise} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
