"""robobrain's online loop against SB3 SAC at the same env-step budget, measured by the same evaluation
code, plus the guide ablation (MPC alone / + actor prior / + critic value / both).

    # 1. the robobrain run (resumable; its wall clock is in <run>/train.csv, column wall_s, and the
    #    seconds of its evaluations in eval_s: the table's train wall clock leaves them out)
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
import os
import shutil
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from machine import checked_device, describe  # bench/machine.py (the script's folder is on sys.path)

import robobrain.envs as envs
from robobrain.data.store import atomic_write_json
from robobrain.evaluation import evaluate_policy
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.planning.mpc import without_exploration
from robobrain.policies import SB3Policy, load_policy


class SelectKey(gym.ObservationWrapper):
    """One entry of the robobrain observation dict as the observation."""

    def __init__(self, env: gym.Env, key: str) -> None:
        super().__init__(env)
        self.key = key
        self.observation_space = env.observation_space[key]

    def observation(self, observation: dict) -> np.ndarray:
        return observation[self.key]


def train_sac(
    env_id: str,
    key: str,
    steps: int,
    image_size: int,
    seed: int,
    out: Path,
    device: str = "auto",
    checkpoint_every: int = 5000,
    episode_steps: int | None = None,
) -> tuple[Path, float, str, str | None]:
    """Trains (or finishes) one SAC peer; returns its zip, training wall clock, where that clock was
    measured and the kind of device it trained on (None where not recorded); all read back when a
    finished peer of the same env, observation key, steps, image size, seed and episode length is
    found in ``out`` (trained earlier, maybe on another machine, which ``sac_TAG.wall_s`` records with
    the date and the device). ``episode_steps``: the env's time limit (None: its own).

    Every ``checkpoint_every`` steps the model, its replay buffer and the wall clock so far go to
    ``out/sac_TAG.ckpt/`` (written beside it, then renamed), so a killed run re-started with the same
    command goes on from there. The episode in flight at the kill is cut short (its stored transitions
    keep their true next observations); the RNG streams are not restored.
    """
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    tag = f"{key}_{env_id.split('/')[-1]}_{steps}steps_{image_size}px_seed{seed}"  # what the peer was
    if episode_steps is not None:
        tag += f"_{episode_steps}stepepisodes"
    path = out / f"sac_{tag}.zip"
    if path.exists():
        print(f"sac_{tag}: trained before, reused", flush=True)
        saved = json.loads((out / f"sac_{tag}.wall_s").read_text())
        if not isinstance(saved, dict):  # (a bare number: written before the machine was recorded)
            return path, float(saved), "reused, trained earlier (machine not recorded)", None
        origin = f"reused, trained {saved['date']} on {saved['machine']}"
        return path, float(saved["wall_s"]), origin, saved.get("device")
    ckpt, tmp, old = (out / f"sac_{tag}.{s}" for s in ("ckpt", "ckpt.tmp", "ckpt.old"))
    if not ckpt.exists() and old.exists():  # killed between the two renames below
        old.rename(ckpt)
    env = SelectKey(envs.make_env(env_id, image_size=image_size, max_episode_steps=episode_steps), key)
    policy = "CnnPolicy" if key == "pixels" else "MlpPolicy"
    if ckpt.exists():
        model = SAC.load(ckpt / "model.zip", env=env, device=device)
        model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        done_wall = float((ckpt / "wall_s").read_text())
        print(f"sac_{tag}: resuming at {model.num_timesteps} steps", flush=True)
    else:
        # Pixels: 2 x 12 KB per stored 64 px transition, 0.5 GB at 20k steps, so SB3's
        # optimize_memory_usage (which bootstraps time-limit ends from the next episode's first frame)
        # is not needed.
        model = SAC(policy, env, buffer_size=steps, seed=seed, device=device, verbose=0)
        done_wall = 0.0
    t = time.perf_counter()

    class Progress(BaseCallback):
        """Prints env steps and wall clock every 1,000 steps; checkpoints every ``checkpoint_every``."""

        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n % 1000 == 0:
                print(f"sac_{tag}: {n} steps, {done_wall + time.perf_counter() - t:.0f} s", flush=True)
            if n % checkpoint_every == 0 and n < steps:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                model.save(tmp / "model.zip")
                model.save_replay_buffer(tmp / "replay_buffer.pkl")
                (tmp / "wall_s").write_text(str(done_wall + time.perf_counter() - t))
                if ckpt.exists():
                    ckpt.rename(old)
                tmp.rename(ckpt)
                shutil.rmtree(old, ignore_errors=True)
            return True

    model.learn(steps - model.num_timesteps, callback=Progress(), reset_num_timesteps=False)
    wall = done_wall + time.perf_counter() - t
    model.save(out / f"sac_{tag}.tmp.zip")
    machine = describe(model.device)
    origin = f"trained in this run on {machine}" + (
        " (resumed: earlier processes' time included)" if done_wall else ""
    )
    record = {
        "wall_s": wall,
        "machine": machine,
        "device": model.device.type,
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(out / f"sac_{tag}.wall_s", record)  # before the model: a model on disk has its time
    os.replace(out / f"sac_{tag}.tmp.zip", path)
    shutil.rmtree(ckpt, ignore_errors=True)
    env.close()
    return path, wall, origin, model.device.type


def evaluate(
    policy, env_id: str, episodes: int, image_size: int, num_envs: int, seed: int, episode_steps: int | None
) -> dict:
    """``policy``'s evaluation summary, ``episode_steps`` long episodes (None: the env's own)."""
    eval_envs = [
        envs.make_env(env_id, image_size=image_size, max_episode_steps=episode_steps) for _ in range(num_envs)
    ]
    try:
        return evaluate_policy(policy, eval_envs, episodes, seed=seed, video_episodes=0, progress=False)[
            "summary"
        ]
    finally:
        for e in eval_envs:
            e.close()


def success_text(summary: dict) -> str:
    """The success rate and its 95 % Wilson interval; n/a for an env that reports no success."""
    if summary["success_rate"] is None:
        return "n/a"
    lo, hi = summary["success_ci95"]
    return f"{100 * summary['success_rate']:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def progress(name: str, summary: dict, train_wall: float, eval_wall: float) -> None:
    """One row's line, as it is measured (the table comes at the end)."""
    print(f"{name}: success {success_text(summary)}, mean return {summary['mean_return']:.1f}, "
          f"evaluated in {eval_wall:.0f} s", flush=True)  # fmt: skip


def _last_row(run: Path) -> dict[str, str]:
    with open(run / "train.csv", newline="") as f:
        return list(csv.DictReader(f))[-1]


def run_wall_clock(run: Path) -> tuple[float, bool]:
    """Seconds the run spent in the loop, less its evaluations (the SAC peers' clock has none), and
    whether they could be taken out: ``wall_s`` of its last row less the sum of its ``eval_s`` column;
    a run logged before that column existed keeps them in (False). Checkpoints stay in (seconds)."""
    with open(run / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    wall = float(rows[-1]["wall_s"])
    if "eval_s" not in rows[-1]:
        return wall, False
    return wall - sum(float(r["eval_s"]) for r in rows if r.get("eval_s")), True


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
    parser.add_argument("--sac-seed", type=int, default=0, help="seed of the SAC peers' training")
    parser.add_argument("--device", default="auto", help="SAC peers' torch device ('auto': cuda if any)")
    parser.add_argument("--checkpoint-every", type=int, default=5000, help="SAC: steps per checkpoint")
    parser.add_argument("--skip", nargs="*", default=[], choices=["state", "pixels", "ablation"])
    parser.add_argument(
        "--image-size", type=int, default=None, help="SAC peers' (default: the run's, else 64)"
    )
    args = parser.parse_args()
    if args.device != "auto":
        checked_device(parser, args.device)
    rows = []
    episode_steps = None  # (the env's own time limit, unless the run set another)
    if args.run is not None:
        from robobrain.checkpoint import load_checkpoint

        cfg = load_checkpoint(args.run, with_training_state=False).config
        size = cfg["world_model"]["image_size"]
        episode_steps = cfg["online"].get("episode_steps")  # (its evaluations' and the peers' length)
    sac_size = args.image_size or (size if args.run is not None else 64)
    if "pixels" not in args.skip and sac_size < 36:  # (before any work)
        parser.error(
            f"SAC from pixels at {sac_size} px: SB3's CnnPolicy (NatureCNN) needs frames of 36 px or "
            "more; pass --image-size 64 or --skip pixels"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run is not None:
        # (The loop collects whole episodes, so a finished run may end past its budget.)
        ran = int(float(_last_row(args.run)["env_steps"]))
        budget = int(cfg["online"]["env_steps"])
        if budget != args.env_steps or ran < budget or cfg["online"]["env"] != args.env:
            parser.error(
                f"{args.run} is a run of {budget} env steps on {cfg['online']['env']} (it ran {ran}), "
                f"not a finished one of {args.env_steps} on {args.env}"
            )
        mpc_cfg = cfg["online"]["mpc"]
        optim = OptimizerConfig(**mpc_cfg["optim"])
        # The planner and the guide seeded as `robobrain eval --seed S` seeds them.
        mpc = without_exploration(MPCConfig(**{**mpc_cfg, "optim": optim, "seed": args.seed}))
        guides = ["both"] if "ablation" in args.skip else ["none", "prior", "value", "both"]
        if not (cfg["online"].get("prior_samples", 16) or cfg["online"].get("use_value", True)):
            guides = ["none"]  # (a run with neither trained no SB3 model: MPC alone is all it has)
        space = envs.make_env(args.env, image_size=size).action_space
        for guide in guides:
            torch.manual_seed(args.seed)  # an SB3 guide's prior samples use torch's global generator
            # (the run's own prior-sample count; load_policy's default, 16, for a run of none, whose
            # "prior" row would otherwise plan unguided)
            num_prior = cfg["online"].get("prior_samples") or None
            policy = load_policy(f"mpc:{args.run}", args.env, space, mpc=mpc, guide=guide,
                                 num_prior=num_prior)  # fmt: skip
            t = time.perf_counter()
            summary = evaluate(policy, args.env, args.episodes, size, 2, args.seed, episode_steps)
            wall, without_evals = run_wall_clock(args.run)
            mark = "" if without_evals else "*"  # (its periodic evaluations included: see the note)
            rows.append((f"robobrain MPC, guide={guide}{mark}", summary, wall, time.perf_counter() - t))
            progress(*rows[-1])
    origins: list[str] = []
    sac_devices: set[str | None] = set()
    for key in ("state", "pixels"):
        if key in args.skip:
            continue
        path, wall, origin, sac_device = train_sac(
            args.env,
            key,
            args.env_steps,
            sac_size,
            args.sac_seed,
            args.out,
            args.device,
            args.checkpoint_every,
            episode_steps,
        )
        policy = SB3Policy.load(str(path))
        t = time.perf_counter()
        summary = evaluate(policy, args.env, args.episodes, sac_size, 2, args.seed, episode_steps)
        rows.append((f"SB3 SAC from {key}", summary, wall, time.perf_counter() - t))
        origins.append(f"SAC from {key} ({sac_size} px frames rendered): {origin}")
        sac_devices.add(sac_device)
        progress(*rows[-1])

    length = "" if episode_steps is None else f" of {episode_steps} steps (the run's --episode-steps)"
    print(
        f"\n{args.env}, {args.env_steps} env steps, {args.episodes} evaluation episodes{length} "
        f"(seeds {args.seed}+)"
    )
    print("\n".join([*origins, f"evaluations here, on cpu: {describe('cpu')}"]))
    if args.run is not None:  # (trained earlier, in another process: its wall clock is not this run's)
        run_device = str(cfg["online"].get("device", "cpu")).split(":")[0]
        print(f"robobrain's run {args.run} trained earlier, on {run_device} (machine not recorded)")
        if sac_devices - {run_device}:  # (a peer's own device, as recorded with it; None: not recorded)
            print("WARNING: the SAC peers may have trained on another kind of device (theirs: "
                  f"{sorted(str(d) for d in sac_devices)}): compare wall clocks with care")  # fmt: skip
        if any(name.endswith("*") for name, *_ in rows):
            print("* train.csv without an eval_s column (an older run): its wall clock includes the "
                  "periodic evaluations, which the SAC peers' does not")  # fmt: skip
    print("| agent | success (95 % Wilson) | mean return | train wall clock | eval wall clock |")
    print("|---|---|---|---|---|")
    for name, s, wall, ev in rows:
        print(f"| {name} | {success_text(s)} | {s['mean_return']:.1f} | {wall / 60:.1f} min | "
              f"{ev / 60:.1f} min |")  # fmt: skip
    atomic_write_json(args.out / "table.json", [(n, s, w, e) for n, s, w, e in rows])


if __name__ == "__main__":
    main()
