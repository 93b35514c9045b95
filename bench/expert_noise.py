"""How well do the scripted experts solve their tasks under the action noise of the data they collect?

    python bench/expert_noise.py [--seeds 150] [--noise 0 0.1 0.3]

Seed episodes of `robobrain train --scripted-fraction` act with noise 0.3 (``policies/online.py``),
`robobrain collect --noise` with what it is given. Each row collects seeds 0..N-1 as `robobrain
collect --policy scripted --noise X` does (8 px frames, into a temporary store) and gives, per task,
the share whose last step is a success and the mean first step of success (the episode length
where none).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
from machine import cpu_name  # bench/machine.py (the script's folder is on sys.path)

from robobrain.data import EpisodeStore
from robobrain.data.collect import collect_episodes
from robobrain.envs import make_vector_env
from robobrain.policies import load_policy

TASKS = ("robobrain/Reach-v0", "robobrain/Push-v0", "robobrain/PickPlace-v0")


def rates(env_id: str, noise: float, seeds: int) -> tuple[float, float]:
    """(success share at the last step, mean first success step) over seeds 0..seeds-1."""
    envs = make_vector_env(env_id, num_envs=2, image_size=8)
    policy = load_policy("scripted", env_id, envs.single_action_space, seed=0, noise_std=noise)
    with tempfile.TemporaryDirectory() as root:
        store = EpisodeStore(root)
        names = collect_episodes(envs, policy, store, seeds, seed=0, progress=False).names
        episodes = [store.load(n) for n in names]
    envs.close()
    last = [bool(ep.success[-1]) for ep in episodes]
    first = [int(np.argmax(ep.success)) if ep.success.any() else len(ep.success) for ep in episodes]
    return float(np.mean(last)), float(np.mean(first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=150)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    args = parser.parse_args()
    print(f"{cpu_name()}; seeds 0-{args.seeds - 1}; success at the last step (mean first success step)")
    print("| noise | " + " | ".join(t.split("/")[1] for t in TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for noise in args.noise:
        cells = [f"{100 * s:.1f} % ({f:.1f})" for s, f in (rates(t, noise, args.seeds) for t in TASKS)]
        print(f"| {noise} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
