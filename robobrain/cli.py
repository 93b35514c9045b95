"""The ``robobrain`` command. Each sub-command is a frozen dataclass; tyro turns it into flags.

robobrain collect --env robobrain/Push-v0 --policy scripted --episodes 20 --out data/push
robobrain demo
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro


@dataclass(frozen=True)
class Collect:
    """Roll a policy out in vector envs and store the episodes in an EpisodeStore directory."""

    env: str = "robobrain/Push-v0"
    """Gymnasium id: a robobrain task, or any env that renders rgb_array."""
    policy: Literal["random", "scripted"] = "scripted"
    """Which policy acts."""
    episodes: int = 10
    """Number of episodes to store."""
    out: Path = Path("data/push")
    """EpisodeStore directory (created; episodes are appended)."""
    num_envs: int = 2
    """Environments stepped in parallel."""
    vector_mode: Literal["sync", "async"] = "sync"
    """Gymnasium vector env: in-process or one subprocess per env."""
    image_size: int = 64
    """Side of the square pixel observation."""
    noise: float = 0.0
    """Std of Gaussian noise added to scripted actions."""
    seed: int = 0
    """Seed of the envs (env i gets seed + i) and of the policy."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class Demo:
    """Collect a few scripted episodes on a task and write a video of them."""

    env: str = "robobrain/Push-v0"
    """Gymnasium id of the task."""
    episodes: int = 4
    """Episodes to collect."""
    out: Path = Path("runs/demo")
    """Output directory (data/ and demo.mp4 inside)."""
    image_size: int = 64
    """Side of the square pixel observation."""
    seed: int = 0
    """Seed of the envs and the policy."""


def run_collect(args: Collect) -> list[str]:
    import robobrain.envs as envs
    from robobrain.data import EpisodeStore
    from robobrain.data.collect import collect_episodes
    from robobrain.policies import load_policy

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    vec = envs.make_vector_env(args.env, args.num_envs, image_size=args.image_size, mode=args.vector_mode)
    try:
        kwargs = {"noise_std": args.noise} if args.policy == "scripted" else {}
        policy = load_policy(args.policy, args.env, vec.single_action_space, seed=args.seed, **kwargs)
        store = EpisodeStore(args.out)
        meta = {"env_id": args.env, "policy": args.policy, "noise": args.noise, "seed": args.seed}
        names = collect_episodes(
            vec, policy, store, args.episodes, seed=args.seed, meta=meta, progress=args.progress
        )
    finally:
        vec.close()
    success = np.mean([store.manifest[n]["success"] for n in names])
    print(f"stored {len(names)} episodes in {args.out} (success {success:.2f}; {len(store)} in the store)")
    return names


def run_demo(args: Demo) -> Path:
    from robobrain.data import EpisodeStore
    from robobrain.video import write_video

    data_dir = args.out / "data"
    names = run_collect(
        Collect(
            env=args.env, policy="scripted", episodes=args.episodes, out=data_dir,
            image_size=args.image_size, seed=args.seed, noise=0.1,
        )
    )  # fmt: skip
    store = EpisodeStore(data_dir)
    frames = np.concatenate([store.load(n).pixels for n in names])
    video = write_video(args.out / "demo.mp4", frames)
    summary = {"env": args.env, "episodes": names, "video": str(video), "data": str(data_dir)}
    (args.out / "demo.json").write_text(json.dumps(summary, indent=1))
    print(f"video: {video}\ndata: {data_dir}")
    return video


COMMANDS = {"collect": (Collect, run_collect), "demo": (Demo, run_demo)}


def main(argv: list[str] | None = None) -> None:
    args = tyro.extras.subcommand_cli_from_dict(
        {name: cls for name, (cls, _) in COMMANDS.items()},
        args=sys.argv[1:] if argv is None else argv,
        prog="robobrain",
        description="robobrain: a robot brain backed by a learned video world model.",
    )
    for cls, run in COMMANDS.values():
        if isinstance(args, cls):
            print(json.dumps({type(args).__name__: asdict(args)}, default=str))
            run(args)
            return
    raise AssertionError(f"unhandled command {args!r}")


if __name__ == "__main__":
    main()
