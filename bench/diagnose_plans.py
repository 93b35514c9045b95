"""Model error or optimizer error? Where a learned-model planner falls short of the oracle, score both
planners' chosen plans with both the world model and the true simulator.

    python bench/diagnose_plans.py --checkpoint R [--env robobrain/Push-v0] [--episodes 4] [--every 10]

The learned planner (``mpc:R``, unguided, the ``robobrain train`` budget: CEM 256 x 32 x 4, H=12)
acts for whole episodes. Every ``--every`` steps the oracle planner (the same controller planning in
copies of the simulator) plans from the same state -- from scratch, as its warm start, shifted once
per plan, would hold a plan ``--every`` steps old (with ``--every 1`` it plans every step, warm as the
learned one) -- and each of the two plans is scored twice: by
the world model from the learned planner's filtered latent (imagined return, as the planner scores
it) and by the simulator (true return of those actions from the true state, success bonus 1). Both
planners plan and both scores discount as the learned one plans (0.99, train's), so that a plan
better only undiscounted is not counted an optimizer error. Then, per check:

- **model error**: the model ranks its own plan above the oracle's, the simulator the other way;
- **optimizer error**: the model itself ranks the oracle's plan higher -- the optimizer missed it;
- agree: both rank the learned plan at least as high.

Also printed: the median error of the gripper and block positions decoded from the filtered latent
(the model's state head) at each check, and the mean imagined-minus-true return of each plan.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from machine import checked_device  # bench/machine.py (the script's folder is on sys.path)

from robobrain.envs import make_env
from robobrain.planning import MPCConfig, OptimizerConfig
from robobrain.planning.mpc import world_model_score_fn
from robobrain.planning.oracle import OracleModel
from robobrain.policies.mpc import OracleMPCPolicy, WorldModelMPCPolicy
from robobrain.training.wm_trainer import load_world_model


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--checkpoint", required=True, help="a world-model checkpoint or run directory")
    parser.add_argument("--env", default="robobrain/Push-v0")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--every", type=int, default=10, help="check every this many steps")
    parser.add_argument("--seed", type=int, default=5000, help="episode i starts from seed + i")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = checked_device(parser, args.device)

    torch.manual_seed(0)
    model = load_world_model(args.checkpoint, device)
    optim = OptimizerConfig(num_samples=256, num_elites=32, iterations=4)
    cfg = MPCConfig(horizon=12, discount=0.99, optim=optim)
    env = make_env(args.env, image_size=model.cfg.image_size)
    learned = WorldModelMPCPolicy(model, cfg, device)
    oracle = OracleMPCPolicy([env], model.cfg.action_dim, cfg)
    truth = OracleModel(success_bonus=cfg.success_bonus, discount=cfg.discount)
    layout = getattr(env.unwrapped, "state_layout", {})
    parts = [p for p in ("gripper_pos", "block_pos") if p in layout and model.state_head is not None]

    rows, errors = [], {p: [] for p in parts}
    for ep in range(args.episodes):
        obs, _ = env.reset(seed=args.seed + ep)
        learned.reset(1)
        oracle.reset(1)
        done = False
        t = 0
        while not done:
            batch = {k: v[None] for k, v in obs.items()}
            action = learned.act(batch)
            if t % args.every == 0:
                if args.every > 1:  # (a cold start, not a plan made --every steps ago shifted once)
                    oracle.reset(1)
                oracle.act(batch)
                mine = torch.from_numpy(learned.planned_actions())[0]
                plans = torch.stack([mine, oracle.mpc.last.best.cpu()[0]])
                with torch.no_grad():
                    score = world_model_score_fn(model, learned.plan_state, cfg)
                    imagined = score(plans[None].to(device))[0].cpu()
                    decoded = model.decode_state(learned.plan_state.feat)[0].cpu().numpy()
                true = truth.score_fn([env])(plans[None])[0]
                rows.append([*imagined.tolist(), *true.tolist()])
                for p in parts:
                    errors[p].append(np.linalg.norm(decoded[layout[p]] - obs["state"][layout[p]]))
            obs, _, terminated, truncated, _ = env.step(action[0])
            done = terminated or truncated
            t += 1

    r = np.array(rows)  # [checks, 4]: imagined mine / oracle's, true mine / oracle's
    model_prefers_mine = r[:, 0] >= r[:, 1]
    truth_prefers_oracle = r[:, 3] > r[:, 2]
    n = len(r)
    print(
        f"# {args.checkpoint} on {args.env}: {n} checks ({args.episodes} episodes, every {args.every} steps)"
    )
    print("| verdict | checks | share |")
    print("|---|---|---|")
    for name, mask in (
        (
            "model error (model prefers its plan, simulator the oracle's)",
            model_prefers_mine & truth_prefers_oracle,
        ),
        ("optimizer error (the model prefers the oracle's plan)", ~model_prefers_mine),
        ("agree (both prefer the learned plan)", model_prefers_mine & ~truth_prefers_oracle),
    ):
        print(f"| {name} | {int(mask.sum())} | {mask.mean():.2f} |")
    print(f"true return, oracle's plan - learned plan (mean): {np.mean(r[:, 3] - r[:, 2]):+.3f}")
    print(f"imagined return, oracle's plan - learned plan (mean): {np.mean(r[:, 1] - r[:, 0]):+.3f}")
    bias = np.mean(r[:, :2] - r[:, 2:], axis=0)
    print(f"imagined - true return: learned plan {bias[0]:+.3f}, oracle's {bias[1]:+.3f}")
    for p in parts:
        print(f"decoded {p} error at the checks (median): {100 * np.median(errors[p]):.1f} cm")


if __name__ == "__main__":
    main()
