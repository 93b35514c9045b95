"""What did a Push / PickPlace run's data collection do? Reads the episodes a ``robobrain train`` run
stored (or any EpisodeStore of those tasks) and prints, per block of consecutive episodes:

    python bench/exploration_stats.py R [--block 80]

- mean gripper-to-block distance over all steps, and its mean minimum per episode (closest approach);
- the share of episodes in which the block moved more than 1 cm (from its first to its last step);
- among those, the mean change of the block's distance to the goal over the episode (negative: the
  block was pushed toward the goal);
- episodes with at least one success step (and the cumulative count).

The seed episodes (``meta["policy"]`` "random" / "scripted") are counted in their own rows; the
rows of the others are labelled by store index assuming the seed episodes come first (as in a run). Distances
come from the stored true states (``Episode.state``, the task's state layout), never from the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from robobrain.data import EpisodeStore
from robobrain.envs.physics import STATE_BLOCK, block_to_goal, gripper_to_block

MOVED = 0.01
"""Block displacement (m) above which an episode counts as having moved it."""


def episode_stats(state: np.ndarray, success: np.ndarray) -> dict[str, float]:
    """state [T+1, n] (the task's layout), success bool[T] -> per-episode figures."""
    reach = gripper_to_block(state)
    block = state[:, STATE_BLOCK["block_pos"]]
    to_goal = block_to_goal(state)
    return {
        "reach_mean": float(reach.mean()),
        "reach_min": float(reach.min()),
        "moved": float(np.linalg.norm(block[-1] - block[0]) > MOVED),
        "goal_change": float(to_goal[-1] - to_goal[0]),
        "success": float(success.any()),
    }


def table(rows: list[tuple[str, list[dict[str, float]]]]) -> str:
    """(label, per-episode stats) per block -> a markdown table (distances in cm)."""
    lines = [
        "| episodes | n | gripper-block (cm) | closest approach (cm) | block moved > 1 cm | "
        "its goal distance, mean change (cm) | with a success step (cumulative) |",
        "|---|---|---|---|---|---|---|",
    ]
    total = 0
    for label, stats in rows:
        col = {k: np.array([s[k] for s in stats]) for k in stats[0]}
        moved = col["moved"] > 0
        change = f"{100 * col['goal_change'][moved].mean():+.2f}" if moved.any() else "-"
        wins = int(col["success"].sum())
        total += wins
        lines.append(
            f"| {label} | {len(stats)} | {100 * col['reach_mean'].mean():.1f} | "
            f"{100 * col['reach_min'].mean():.1f} | {100 * moved.mean():.0f} % | {change} | "
            f"{wins} ({total}) |"
        )
    return "\n".join(lines)


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("path", type=Path, help="a run directory (its episodes/) or an EpisodeStore")
    parser.add_argument("--block", type=int, default=80, help="episodes per row")
    args = parser.parse_args()
    root = args.path / "episodes" if (args.path / "episodes").is_dir() else args.path
    store = EpisodeStore(root)
    if not len(store):
        raise SystemExit(f"no episodes under {root}")
    seed: dict[str, list[dict[str, float]]] = {}
    own: list[dict[str, float]] = []
    for _, ep in store.episodes():
        stats = episode_stats(ep.state, ep.success)
        kind = str(ep.meta.get("policy", "mpc"))
        (seed.setdefault(kind, []) if kind in ("random", "scripted") else own).append(stats)
    rows = [(f"seed ({kind})", stats) for kind, stats in seed.items()]
    first = sum(len(s) for s in seed.values())
    for i in range(0, len(own), args.block):
        chunk = own[i : i + args.block]
        rows.append((f"{first + i}-{first + i + len(chunk) - 1}", chunk))
    print(f"# {root}: {len(store)} episodes")
    print(table(rows))


if __name__ == "__main__":
    main()
