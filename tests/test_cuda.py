"""The CUDA path, from the same source as the CPU one: skipped without a GPU (CI has none; run on a
lent GPU with `pytest tests/test_cuda.py`). Planning imagination replayed from CUDA graphs equals
eager imagination; bf16 autocast training learns; checkpoints move between devices; the planner,
the world-model trainer and the online loop run end to end on CUDA."""

import json

import numpy as np
import pytest
import torch

from robobrain.checkpoint import save_checkpoint
from robobrain.config import get_preset, to_dict
from robobrain.planning import CEM, GraphedPlan, MPCConfig, OptimizerConfig, world_model_score_fn
from robobrain.planning.mpc import make_optimizer
from robobrain.policies import WorldModelMPCPolicy
from robobrain.rl import BehaviourPrior, BehaviourPriorGuide
from robobrain.training.wm_trainer import load_world_model
from robobrain.world_model import (
    Bf16Imagine,
    FusedImagine,
    GraphedImagine,
    State,
    WorldModel,
    fused_unsupported,
)
from robobrain.world_model.fused import _BLOCKS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
GOAL_CFG = get_preset("debug", state_dim=10, goal_start=7, goal_dim=3).world_model


def random_inputs(cfg, b: int, h: int, seed: int) -> tuple[State, torch.Tensor]:
    g = torch.Generator(device=CUDA).manual_seed(seed)
    stoch = torch.nn.functional.one_hot(
        torch.randint(0, cfg.classes, (b, cfg.stoch), generator=g, device=CUDA), cfg.classes
    ).float()
    state = State(
        torch.randn(b, cfg.deter, generator=g, device=CUDA),
        stoch,
        torch.randn(b, cfg.goal_dim, generator=g, device=CUDA) if cfg.goal_dim else None,
    )
    return state, torch.rand(b, h, cfg.action_dim, generator=g, device=CUDA) * 2 - 1


@torch.no_grad()
def test_graph_replay_equals_eager_imagination_for_new_inputs_and_shapes():
    torch.manual_seed(0)
    model = WorldModel(GOAL_CFG).to(CUDA).eval()
    fast = GraphedImagine(model, amp=False)
    for b, h, seed in ((64, 5, 0), (64, 5, 1), (32, 7, 2), (64, 5, 3)):
        state, actions = random_inputs(GOAL_CFG, b, h, seed)
        got, ref = fast(state, actions), model.imagine(state, actions)
        for name in ("feat", "reward", "success_logit"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-5, atol=1e-5)
    assert len(fast._cache) == 2  # one graph per shape, replayed for new inputs


@torch.no_grad()
def test_bf16_graphs_follow_the_float32_model():
    torch.manual_seed(0)
    model = WorldModel(GOAL_CFG).to(CUDA).eval()
    state, actions = random_inputs(GOAL_CFG, 256, 6, 0)
    ref = model.imagine(state, actions)
    got = GraphedImagine(model, amp=True)(state, actions)
    eager = GraphedImagine(model, amp=True, graphs=False)(state, actions)
    torch.testing.assert_close(got.reward.float(), eager.reward.float(), rtol=1e-3, atol=1e-3)
    # bf16 can flip a near-tie of the categorical's mode; nearly all steps keep it.
    stoch = GOAL_CFG.deter
    same = (got.feat[..., stoch:-3].float() == ref.feat[..., stoch:-3]).float().mean()
    assert same > 0.9, same
    err = (got.reward.float() - ref.reward).abs().median() / ref.reward.abs().median().clamp(min=1e-6)
    assert err < 0.05, err


@torch.no_grad()
@pytest.mark.parametrize("compile", [False, True, "max-autotune-no-cudagraphs"])
def test_bf16_twin_follows_the_float32_model_on_cuda(compile):
    torch.manual_seed(0)
    model = WorldModel(GOAL_CFG).to(CUDA).eval()
    state, actions = random_inputs(GOAL_CFG, 256, 6, 0)
    ref, got = model.imagine(state, actions), Bf16Imagine(model, compile=compile)(state, actions)
    stoch = slice(GOAL_CFG.deter, -3)
    assert (got.feat[..., stoch].float() == ref.feat[..., stoch]).float().mean() > 0.9
    first = (got.success_logit[:, 0].float() - ref.success_logit[:, 0]).abs().median()
    assert first < 0.05 * ref.success_logit[:, 0].abs().median()


needs_fused = pytest.mark.skipif(fused_unsupported(GOAL_CFG) is not None, reason="needs Triton")


@torch.no_grad()
@needs_fused
@pytest.mark.parametrize("block", [None, *_BLOCKS], ids=lambda b: "x".join(map(str, b)) if b else "autotuned")
def test_fused_triton_rollout_follows_the_float32_model_on_cuda(block):
    """FusedImagine (bf16 weights, float32 accumulation and state) against the fp32 model, with every
    weight random (the two-hot reward head starts at 0), then again after the weights change: with
    the autotuner's pick (None; the debug preset's sizes) and with each configuration it may pick
    (the ``cpu`` preset's sizes, which every one fits; software-pipelined ones among them)."""
    torch.manual_seed(0)
    cfg = GOAL_CFG if block is None else get_preset("cpu", state_dim=10, goal_start=7, goal_dim=3).world_model
    model = WorldModel(cfg).to(CUDA).eval()
    for p in model.parameters():
        p.normal_(0, 0.3)
    fused = FusedImagine(model, block=block)
    # 1000 rows: not a multiple of any block. With a pinned block 1008 rows x 12 steps instead: the
    # benchmarks' shape as Triton specializes it (T, and M a multiple of 16), so bench_planner.py and
    # profile_imagine.py reuse these compiles from Triton's cache (the tail of a block is covered by
    # the interpreter test, tests/test_fused.py).
    m, h = (1000, 6) if block is None else (1008, 12)
    for round_ in range(2):
        state, actions = random_inputs(cfg, m, h, round_)
        ref, got = model.imagine(state, actions), fused(state, actions)
        assert got.feat.shape == (m, 1, cfg.feat_dim)
        stoch = slice(cfg.deter, -3)
        assert (got.feat[:, 0, stoch] == ref.feat[:, -1, stoch]).float().mean() > 0.9
        for name in ("reward", "success_logit"):
            err = (getattr(got, name)[:, 0] - getattr(ref, name)[:, 0]).abs().median()
            assert err < 0.05 * getattr(ref, name)[:, 0].abs().median(), name
        for p in model.parameters():
            p.mul_(0.8)
        fused.sync()


@torch.no_grad()
def test_whole_plan_graph_replays_the_eager_plan_for_new_inputs():
    """GraphedPlan on CUDA == the optimizer's eager plan with the same noise, for new states and
    starting plans replayed through one recorded graph per shape."""
    torch.manual_seed(0)
    model = WorldModel(GOAL_CFG).to(CUDA).eval()
    cfg = MPCConfig(horizon=5, optim=OptimizerConfig(num_samples=64, num_elites=8, iterations=3))

    def score_fn(s: State):
        return world_model_score_fn(model, s, cfg, imagine=model.imagine_unchecked)

    graphed = GraphedPlan(make_optimizer(cfg, CUDA), score_fn)
    eager_opt, noise_gen = make_optimizer(cfg, CUDA), torch.Generator(CUDA).manual_seed(cfg.seed)
    for b, seed in ((4, 0), (4, 1), (2, 2), (4, 3)):
        state, actions = random_inputs(GOAL_CFG, b, 5, seed)
        got = graphed(state, actions)
        noise = torch.randn(3, b, 64, 5, GOAL_CFG.action_dim, generator=noise_gen, device=CUDA)
        ref = eager_opt.plan(score_fn(state), actions, noise=noise)
        torch.testing.assert_close(got.best, ref.best, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.score, ref.score, rtol=1e-4, atol=1e-4)
    assert len(graphed._cache) == 2


def test_non_finite_candidates_never_win_on_cuda():
    torch.manual_seed(0)
    model = WorldModel(GOAL_CFG).to(CUDA).eval()
    fast = GraphedImagine(model)
    state, _ = random_inputs(GOAL_CFG, 1, 4, 0)
    cem = CEM(
        OptimizerConfig(num_samples=32, num_elites=4, iterations=2), torch.Generator(CUDA).manual_seed(0)
    )

    def score(actions: torch.Tensor) -> torch.Tensor:
        actions = actions.clone()
        actions[:, 1] = float("nan")
        b, n, h, a = actions.shape
        return (
            fast(state.repeat_interleave(n), actions.reshape(b * n, h, a)).reward.float().sum(-1).view(b, n)
        )

    result = cem.plan(score, torch.zeros(1, 4, GOAL_CFG.action_dim, device=CUDA))
    assert torch.isfinite(result.best).all() and torch.isfinite(result.score).all()


def test_cem_finds_a_quadratic_optimum_on_cuda():
    target = torch.tensor([0.3, -0.5], device=CUDA)
    cem = CEM(
        OptimizerConfig(num_samples=256, num_elites=16, iterations=8), torch.Generator(CUDA).manual_seed(0)
    )
    best = cem.optimize(lambda a: -((a - target) ** 2).sum((-2, -1)), torch.zeros(4, 3, 2, device=CUDA))
    assert best.device.type == "cuda"
    torch.testing.assert_close(best, target.expand(4, 3, 2), atol=0.05, rtol=0)


@torch.no_grad()
def test_the_time_budget_counts_the_gpus_work_not_its_kernel_launches():
    """Nothing in an unguided CUDA iteration waits for the GPU: the budget once read the clock after the
    kernels were only launched, and every iteration ran."""
    w = torch.randn(2048, 2048, device=CUDA)

    def heavy(a: torch.Tensor) -> torch.Tensor:  # ~20 large matmuls per call, no host read-back
        x = w
        for _ in range(20):
            x = torch.tanh(x @ w)
        return -((a - x[0, 0]) ** 2).sum((-2, -1))

    heavy(torch.zeros(1, 8, 3, 2, device=CUDA))
    per_call = _cuda_seconds(lambda: heavy(torch.zeros(1, 8, 3, 2, device=CUDA)))
    cem = CEM(OptimizerConfig(num_samples=8, num_elites=2, iterations=50, time_budget=5 * per_call))
    result = cem.plan(heavy, torch.zeros(1, 3, 2, device=CUDA))
    assert result.iterations <= 10  # (about 5 fit the budget; launches alone fill the queue ~3x later)


def _cuda_seconds(fn) -> float:
    import time

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


@pytest.mark.parametrize(
    "kw",
    [
        {"fast": False},
        {"whole_plan": False},
        {},
        {"compile": True},
        pytest.param({"fused": True}, marks=needs_fused),
    ],
    ids=["eager", "rollout-graphs", "plan-graph", "compiled", "fused"],
)
def test_mpc_policy_plans_on_cuda(kw):
    torch.manual_seed(0)
    model = WorldModel(GOAL_CFG)
    cfg = MPCConfig(horizon=5, optim=OptimizerConfig(num_samples=64, num_elites=8, iterations=3))
    policy = WorldModelMPCPolicy(model, cfg, CUDA, **kw)
    assert (policy.graphed_plan is not None) == (kw.get("fast", True) and kw.get("whole_plan", True))
    rng = np.random.default_rng(0)
    size = GOAL_CFG.image_size
    for _ in range(3):
        obs = {
            "pixels": rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8),
            "state": rng.uniform(-0.2, 0.2, (4, 10)).astype(np.float32),
        }
        action = policy.act(obs)
        assert action.shape == (4, GOAL_CFG.action_dim) and action.dtype == np.float32
        assert np.all(np.abs(action) <= 1.0)
    assert policy.imagined_frames().shape == (4, 5, size, size, 3)
    if not kw:  # A guided plan is scored outside the graph: no bf16 twin is built for it.
        guide = BehaviourPriorGuide(BehaviourPrior(GOAL_CFG.feat_dim, GOAL_CFG.action_dim), num_prior=8)
        assert WorldModelMPCPolicy(model, cfg, CUDA, guide=guide).graphed_plan is None


def test_bf16_autocast_training_halves_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = get_preset("debug").world_model
    model = WorldModel(cfg).to(CUDA)
    g = torch.Generator().manual_seed(0)
    # Smooth frames (a few blobs), so there is something to learn beyond the mean.
    base = torch.rand(4, 1, 3, 4, 4, generator=g)
    frames = torch.nn.functional.interpolate(base.flatten(0, 1), size=cfg.image_size, mode="bilinear")
    frames = frames.unflatten(0, (4, 1)).expand(4, 8, 3, cfg.image_size, cfg.image_size)
    batch = {
        "pixels": (frames.permute(0, 1, 3, 4, 2) * 255).to(torch.uint8).to(CUDA),
        "action": (torch.rand(4, 8, cfg.action_dim, generator=g) * 2 - 1).to(CUDA),
        "reward": torch.randn(4, 8, generator=g).to(CUDA),
        "success": (torch.rand(4, 8, generator=g) > 0.5).to(CUDA),
    }
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = model.loss(batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses[::10]


def test_checkpoint_written_on_cuda_loads_on_the_cpu(tmp_path):
    torch.manual_seed(1)
    cfg = GOAL_CFG
    model = WorldModel(cfg).to(CUDA).eval()
    save_checkpoint(tmp_path, 1, model, {"world_model": to_dict(cfg)})
    loaded = load_world_model(tmp_path, "cpu")
    assert next(loaded.parameters()).device.type == "cpu"
    state, actions = random_inputs(cfg, 8, 4, 0)
    with torch.no_grad():
        a = model.imagine(state, actions)
        b = loaded.imagine(State(*(None if x is None else x.cpu() for x in state)), actions.cpu())
    torch.testing.assert_close(a.reward.cpu(), b.reward, rtol=1e-4, atol=1e-4)


def test_train_wm_and_eval_clis_on_cuda(tmp_path):
    from robobrain.cli import main
    from robobrain.data import EpisodeStore
    from robobrain.data.collect import collect_episodes
    from robobrain.envs import make_vector_env
    from robobrain.policies import load_policy

    data = tmp_path / "data"
    vec = make_vector_env("robobrain/Push-v0", 2, image_size=32)
    policy = load_policy("scripted", "robobrain/Push-v0", vec.single_action_space, seed=0, noise_std=0.3)
    collect_episodes(vec, policy, EpisodeStore(data), 4, seed=0, progress=False,
                     meta={"env_id": "robobrain/Push-v0"})  # fmt: skip
    vec.close()
    run = tmp_path / "run"
    main(["train-wm", "--data", str(data), "--run-dir", str(run), "--preset", "debug", "--steps", "10",
          "--device", "cuda", "--no-progress"])  # fmt: skip
    out = tmp_path / "eval"
    main(["eval", "--policy", f"mpc:{run}", "--env", "robobrain/Push-v0", "--episodes", "2",
          "--num-envs", "2", "--samples", "32", "--elites", "4", "--iterations", "2", "--horizon", "4",
          "--device", "cuda", "--video-episodes", "0", "--out", str(out), "--no-progress"])  # fmt: skip
    info = json.loads((out / "eval_info.json").read_text())
    assert len(info["episodes"]) == 2
    # The behaviour prior fits and guides on CUDA; eval-wm runs there (never run on a GPU before).
    main(["train-prior", "--checkpoint", str(run), "--data", str(data), "--steps", "20", "--all-episodes",
          "--device", "cuda"])  # fmt: skip
    bc = tmp_path / "eval-bc"
    main(["eval", "--policy", f"mpc:{run}", "--guide", "bc", "--env", "robobrain/Push-v0", "--episodes", "2",
          "--num-envs", "2", "--samples", "16", "--horizon", "4", "--device", "cuda", "--video-episodes", "0",
          "--out", str(bc), "--no-progress"])  # fmt: skip
    assert len(json.loads((bc / "eval_info.json").read_text())["episodes"]) == 2
    main(["eval-wm", "--checkpoint", str(run), "--data", str(data), "--context", "2", "--horizon", "4",
          "--max-windows", "2", "--device", "cuda", "--out", str(tmp_path / "eval-wm")])  # fmt: skip
    assert (tmp_path / "eval-wm" / "report.json").exists()


@torch.no_grad()
def test_a_cuda_model_takes_cpu_and_numpy_inputs():
    """README-style calls: CPU frames and candidates for a model on CUDA are moved there."""
    model = WorldModel(GOAL_CFG).to(CUDA).eval()
    size = GOAL_CFG.image_size
    state = model.observe(torch.zeros(2, 1, size, size, 3, dtype=torch.uint8), torch.zeros(2, 1, 3),
                          torch.zeros(2, 10))  # fmt: skip
    for actions in (torch.rand(2, 4, 3), np.random.default_rng(0).uniform(-1, 1, (2, 4, 3))):
        out = model.imagine(state, actions)
        assert out.reward.device.type == "cuda" and out.reward.shape == (2, 4)


def test_sb3_on_cuda_trains_through_a_world_model_loaded_on_the_cpu():
    """SB3 moves its policy to CUDA: the frozen world model inside the features extractor follows."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    import robobrain.envs as envs
    from robobrain.rl import WorldModelFeatures

    model = WorldModel(get_preset("debug", action_dim=3).world_model).eval()  # on the CPU
    env = envs.make_env("robobrain/Push-v0", image_size=model.cfg.image_size, max_episode_steps=8)
    kwargs = {"features_extractor_class": WorldModelFeatures,
              "features_extractor_kwargs": {"world_model": model}}  # fmt: skip
    sac = SAC("MultiInputPolicy", env, buffer_size=64, batch_size=8, learning_starts=4, policy_kwargs=kwargs,
              seed=0, device="cuda")  # fmt: skip
    sac.set_logger(Logger(folder=None, output_formats=[]))
    sac.learn(12)  # (updates from step 4: the extractor runs on CUDA observations)
    assert sac.num_timesteps == 12 and model.device.type == "cuda"
    env.close()


def test_online_loop_runs_on_cuda(tmp_path, monkeypatch):
    import robobrain.video
    from robobrain.cli import main

    # The lent GPU machines lack ffmpeg; the loop's final video is not what this checks.
    monkeypatch.setattr(robobrain.video, "write_video", lambda path, frames, **kw: path)
    tiny = (
        "train --preset debug --env robobrain/Push-v0 --num-envs 2 --episode-steps 10 --seed-episodes 2 "
        "--pretrain-steps 10 --train-ratio 0.5 --mpc.horizon 4 --mpc.optim.num-samples 16 "
        "--mpc.optim.num-elites 4 --mpc.optim.iterations 2 --sb3.steps-per-iteration 32 --sb3.num-envs 8 "
        "--sb3.horizon 5 --sb3.start-states 64 --sb3.batch-size 32 --sb3.buffer-size 256 "
        "--sb3.learning-starts 16 --sb3.net-arch 32 32 --sb3.gradient-steps 1 --prior-samples 4 "
        "--eval-every 40 --eval-episodes 1 --checkpoint-every 20 --no-progress --env-steps 60 --device cuda"
    ).split()
    main([*tiny, "--run-dir", str(tmp_path)])
    rows = (tmp_path / "train.csv").read_text().splitlines()
    assert len(rows) > 1
    assert (tmp_path / "final_eval.json").exists()


def test_online_run_moves_between_cpu_and_cuda_on_resume(tmp_path, monkeypatch):
    """Started on the CPU, resumed on CUDA, finished on the CPU: each resume goes on from the
    checkpoint (the planner's generators are seeded afresh, a CPU state does not fit a CUDA one)."""
    import robobrain.video
    from robobrain.checkpoint import latest_checkpoint, load_checkpoint
    from robobrain.cli import main

    monkeypatch.setattr(robobrain.video, "write_video", lambda path, frames, **kw: path)
    tiny = (
        "train --preset debug --env robobrain/Push-v0 --num-envs 2 --episode-steps 10 --seed-episodes 2 "
        "--pretrain-steps 10 --train-ratio 0.5 --mpc.horizon 4 --mpc.optim.num-samples 16 "
        "--mpc.optim.num-elites 4 --mpc.optim.iterations 2 --sb3.steps-per-iteration 32 --sb3.num-envs 8 "
        "--sb3.horizon 5 --sb3.start-states 64 --sb3.batch-size 32 --sb3.buffer-size 256 "
        "--sb3.learning-starts 16 --sb3.net-arch 32 32 --sb3.gradient-steps 1 --prior-samples 4 "
        "--eval-every 100 --eval-episodes 1 --checkpoint-every 20 --no-progress"
    ).split()
    for steps, device in ((20, "cpu"), (40, "cuda"), (60, "cpu")):
        main([*tiny, "--env-steps", str(steps), "--device", device, "--run-dir", str(tmp_path)])
        ckpt = load_checkpoint(latest_checkpoint(tmp_path))
        assert ckpt.state["loop"]["env_steps"] == steps and ckpt.config["online"]["device"] == device
        assert all(torch.isfinite(t).all() for t in ckpt.model_state.values())
    rows = (tmp_path / "train.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [20, 40, 60]


def test_presets_train_a_step_on_cuda():
    for name in ("cpu", "gpu"):
        cfg = get_preset(name).world_model
        model = WorldModel(cfg).to(CUDA)
        b, t = 2, 4
        batch = {
            "pixels": torch.randint(
                0, 256, (b, t, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, device=CUDA
            ),
            "action": torch.rand(b, t, cfg.action_dim, device=CUDA) * 2 - 1,
            "reward": torch.randn(b, t, device=CUDA),
            "success": torch.rand(b, t, device=CUDA) > 0.5,
        }
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, metrics = model.loss(batch)
        loss.backward()
        assert torch.isfinite(loss), (name, metrics)
