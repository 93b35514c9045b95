"""The fused Triton rollout (FusedImagine) on the CPU, in Triton's interpreter: the same numbers as
``WorldModel.imagine`` for goal-conditioned and goal-free models, both reward heads, a row count that
is not a multiple of the block, after the weights change, and as the planner's rollout. Its speed is
a GPU matter (bench/profile_imagine.py, bench/bench_planner.py); the CUDA tests are in test_cuda.py."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from robobrain.config import get_preset
from robobrain.planning import MPCConfig
from robobrain.policies import WorldModelMPCPolicy
from robobrain.world_model import FusedImagine, WorldModel, fused_unsupported

# Where the subprocesses find Triton: this environment's, or the copy `make setup` puts in the venv,
# off its path (importing triton 3.9 after Mesa's EGL has loaded segfaults, and torch imports any
# triton it finds).
TRITON_DIR = Path(sys.prefix) / "interpreter-triton"
HAS_TRITON = importlib.util.find_spec("triton") is not None or (TRITON_DIR / "triton").is_dir()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (make setup installs it)")


def run_with_triton(script: str, interpret: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TRITON_DIR), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240
    )


# Triton picks its interpreter when it is first imported, so the comparison runs in a fresh process.
SCRIPT = textwrap.dedent(
    """
    import dataclasses, torch
    from robobrain.config import get_preset
    from robobrain.world_model import FusedImagine, State, WorldModel

    torch.manual_seed(0)
    for preset, goal_dim, bins in (("debug", 3, 41), ("debug", 0, 0), ("cpu", 3, 41)):
        cfg = dataclasses.replace(get_preset(preset).world_model, goal_dim=goal_dim, reward_bins=bins)
        model = WorldModel(cfg).eval().requires_grad_(False)
        for p in model.parameters():  # every weight random (the two-hot reward head starts at 0)
            p.normal_(0, 0.3)
        fused = FusedImagine(model)
        for round_ in range(2):
            m, h = 37, 4
            stoch = torch.nn.functional.one_hot(torch.randint(0, cfg.classes, (m, cfg.stoch)), cfg.classes)
            goal = torch.randn(m, goal_dim) if goal_dim else None
            state = State(torch.randn(m, cfg.deter), stoch.float(), goal)
            actions = torch.rand(m, h, cfg.action_dim) * 2 - 1
            ref, got = model.imagine(state, actions), fused(state, actions)
            assert got.reward.shape == got.success_logit.shape == (m, h)
            assert got.feat.shape == (m, 1, cfg.feat_dim)
            assert ref.reward.abs().mean() > 0.02 and ref.success_logit.abs().mean() > 0.02  # not trivial
            torch.testing.assert_close(got.reward, ref.reward, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.success_logit, ref.success_logit, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.feat[:, 0], ref.feat[:, -1], rtol=1e-4, atol=1e-4)
            for p in model.parameters():  # new weights reach the kernel through sync()
                p.mul_(0.8)
            fused.sync()
        print("ok", preset, goal_dim, bins)

    # Every block the autotuner may pick on a GPU (the interpreter has no autotuner): 37 rows are one
    # partly masked program for BM >= 64, several for BM <= 32.
    from robobrain.world_model.fused import _BLOCKS

    ref = model.imagine(state, actions)
    blocks = {block[:2]: block for block in _BLOCKS}.values()  # the interpreter ignores warps and
    for block in blocks:  # stages (tests/test_cuda.py runs each configuration)
        got = FusedImagine(model, block=block)(state, actions)
        torch.testing.assert_close(got.reward, ref.reward, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.success_logit, ref.success_logit, rtol=1e-4, atol=1e-4)
    print("ok blocks", len(blocks))

    # In the planner: the same plan from the same noise as with WorldModel.imagine, a terminal value
    # read off the fused rollout's last features included.
    from robobrain.planning import GraphedPlan, MPCConfig, OptimizerConfig, world_model_score_fn
    from robobrain.planning.mpc import make_optimizer

    mpc = MPCConfig(horizon=4, optim=OptimizerConfig(num_samples=16, num_elites=4, iterations=2))
    start, plans = state.index(slice(0, 2)), []
    for imagine in (model.imagine_unchecked, FusedImagine(model)):
        score = lambda s, im=imagine: world_model_score_fn(model, s, mpc, lambda f: f.sum(-1), imagine=im)
        plans.append(GraphedPlan(make_optimizer(mpc), score)(start, torch.zeros(2, 4, cfg.action_dim)))
    torch.testing.assert_close(plans[1].best, plans[0].best, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plans[1].score, plans[0].score, rtol=1e-4, atol=1e-4)
    print("ok plan")
    """
)


@needs_triton
def test_fused_rollout_equals_imagine_in_the_triton_interpreter():
    done = run_with_triton(SCRIPT, interpret=True)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.count("ok") == 5, done.stdout


def test_fused_rollout_says_what_it_cannot_run():
    cfg = get_preset("debug", goal_dim=3).world_model
    if importlib.util.find_spec("triton") is not None:  # (this process's; a GPU build's)
        assert fused_unsupported(cfg) is None
        assert fused_unsupported(replace(cfg, ensemble=2)) is None  # unless the score needs the spread
        assert "disagreement" in fused_unsupported(replace(cfg, ensemble=2), disagreement=True)
    else:
        assert "Triton" in fused_unsupported(cfg)
    odd = replace(cfg, hidden=48)
    assert fused_unsupported(odd) is not None
    with pytest.raises(ValueError, match="FusedImagine cannot run this model"):
        FusedImagine(WorldModel(odd))


@needs_triton
def test_fused_rollout_refuses_cpu_tensors_outside_the_interpreter_and_other_layouts():
    script = textwrap.dedent(
        """
        import torch
        from robobrain.config import get_preset
        from robobrain.world_model import FusedImagine, WorldModel
        from robobrain.world_model.networks import MLP

        model = WorldModel(get_preset("debug", goal_dim=3).world_model)
        state = model.rssm.initial(2, "cpu", torch.zeros(2, 3))
        try:
            FusedImagine(model)(state, torch.zeros(2, 3, model.cfg.action_dim))
        except ValueError as e:
            print(e)
        try:  # BK = 64 rows per load, but the debug preset's GRU state has 32
            FusedImagine(model, block=(16, 64, 8, 1))
        except ValueError as e:
            print(e)
        model.success_head = MLP(model.cfg.feat_dim, 1, model.cfg.hidden, layers=1)  # not its layout
        try:
            FusedImagine(model)
        except ValueError as e:
            print(e)

        # one autotuner per process, whichever way it is asked for (its best_config is reported)
        from robobrain.world_model.fused import load_kernel
        from robobrain.world_model.fused_kernel import rollout_kernel

        assert load_kernel(False) is load_kernel(False, autotuned=True) is load_kernel(False, True)
        assert load_kernel(False).fn is rollout_kernel is load_kernel(False, autotuned=False)
        print("one autotuner")
        """
    )
    done = run_with_triton(script, interpret=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TRITON_INTERPRET=1" in done.stdout and "layer structure" in done.stdout, done.stdout
    assert "BK = 64 exceeds" in done.stdout and "one autotuner" in done.stdout, done.stdout


def test_fused_planning_is_refused_where_it_cannot_run():
    """The planner's fused rollout lives in the whole-plan CUDA graph: on the CPU, with a guide, a
    time budget or --compile, asking for it is an error, not a silent fallback."""
    model = WorldModel(get_preset("debug", goal_dim=3).world_model)
    with pytest.raises(ValueError, match="cannot be used here: it runs in the whole-plan CUDA graph"):
        WorldModelMPCPolicy(model, MPCConfig(), "cpu", fused=True)  # (it said "Triton is not installed")
    with pytest.raises(ValueError, match="fused imagination cannot be used here"):
        WorldModelMPCPolicy(model, MPCConfig(), "cpu", fused=True, compile=True)
    # --compile alike: on the CPU (or guided, or with a time budget) it compiled nothing, silently.
    with pytest.raises(ValueError, match="compile applies to the whole-plan CUDA graph only"):
        WorldModelMPCPolicy(model, MPCConfig(), "cpu", compile=True)
