"""Policies behind one protocol: random, scripted experts, MPC (world model or oracle), SB3."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, get_args

import gymnasium as gym
import numpy as np

from robobrain.planning import MPCConfig
from robobrain.policies.base import Observation, Policy, batch_size
from robobrain.policies.mpc import BehaviourPriorPolicy, OracleMPCPolicy, WorldModelMPCPolicy
from robobrain.policies.sb3 import SB3Policy
from robobrain.policies.simple import DiscreteRandomPolicy, RandomPolicy, ScriptedPolicy
from robobrain.rl.behaviour_prior import BehaviourPriorGuide
from robobrain.rl.guide import ActorCriticGuide

log = logging.getLogger(__name__)

POLICY_SPECS = ("random", "scripted", "oracle", "mpc:CHECKPOINT", "bc:CHECKPOINT", "sb3:ZIP")
GuideMode = Literal["auto", "both", "prior", "value", "bc", "none"]


def guide_mode(prior: bool, value: bool) -> str:
    """The ``--guide`` name of an actor-critic guide that draws prior samples and/or adds the value."""
    return {(True, True): "both", (True, False): "prior", (False, True): "value"}.get((prior, value), "none")


def load_guide(
    checkpoint: str,
    mode: GuideMode = "auto",
    device: str = "cpu",
    num_prior: int | None = None,
    prior_std: float = 0.1,
    seed: int = 0,
) -> ActorCriticGuide | BehaviourPriorGuide | None:
    """A planner guide saved beside a world model: the SB3 actor-critic of a ``robobrain train`` run
    (``<ckpt>/sb3/model.zip``; modes ``auto``, ``both``, ``prior``, ``value``) or the behaviour prior
    of ``robobrain train-prior`` (``<ckpt>/behaviour_prior/``; mode ``bc``). None when there is none
    (``auto``) or ``mode`` is ``none``. ``auto`` uses the parts of the actor-critic the run's planner
    used (none while the actor-critic has not trained: a round shorter than ``learning_starts`` saves
    the random initial nets, which the run never planned with): prior samples if it drew any
    (``--prior-samples`` > 0; ``num_prior`` of them, not the run's count), the critic's value if it
    planned with it (``--use-value``; a run without it may have trained its critic with another
    ``--sb3.gamma`` than the planner's discount, which the value would then be weighed with).
    ``num_prior``: prior samples per env (default 16 for the actor, 255 for the behaviour prior);
    ``prior_std`` and ``seed``: the behaviour prior's noise."""
    from robobrain.checkpoint import read_config, resolve_checkpoint

    if mode not in get_args(GuideMode):
        raise ValueError(f"unknown guide mode {mode!r}; expected one of {', '.join(get_args(GuideMode))}")
    if mode == "bc":
        from robobrain.rl.behaviour_prior import load_behaviour_prior

        prior = load_behaviour_prior(checkpoint, device)
        return BehaviourPriorGuide(prior, 255 if num_prior is None else num_prior, prior_std, seed)
    zip_path = resolve_checkpoint(checkpoint) / "sb3" / "model.zip"
    if mode == "none" or not zip_path.exists():
        if mode in ("both", "prior", "value"):
            raise ValueError(f"{checkpoint}: no SB3 actor-critic to guide the planner ({zip_path} missing)")
        return None
    auto = mode == "auto"
    if auto:
        run = read_config(checkpoint).get("online", {})
        mode = guide_mode(run.get("prior_samples", 1) > 0, bool(run.get("use_value", True)))
        if mode == "none":
            return None
    sb3 = SB3Policy.load(str(zip_path), device=device).model
    if sb3._n_updates == 0:  # (a round shorter than learning_starts saves the untrained nets)
        if auto:  # ("the parts the run's planner used": the run's planner had none)
            log.info("%s: its SB3 actor-critic has not trained yet: no guide", zip_path)
            return None
        log.warning("%s: its SB3 actor-critic has not trained yet (the random initial nets)", zip_path)
    prior = 16 if num_prior is None else num_prior
    return ActorCriticGuide(sb3, num_prior=0 if mode == "value" else prior, use_value=mode != "prior")


def checkpoint_spec(spec: str) -> tuple[str, str]:
    """``mpc:PATH`` / ``bc:PATH`` -> (kind, PATH); an empty PATH is refused (it read the current
    directory: ".: no checkpoint there")."""
    kind, _, path = spec.partition(":")
    if not path:
        raise ValueError(
            f"{spec} needs a checkpoint's path ({kind}:CHECKPOINT, a checkpoint or a run directory)"
        )
    return kind, path


def load_policy(
    spec: str,
    env_id: str,
    action_space: gym.spaces.Box | gym.spaces.Discrete,
    seed: int | None = None,
    envs: Sequence[gym.Env] | None = None,
    mpc: MPCConfig | None = None,
    device: str = "cpu",
    guide: GuideMode = "auto",
    num_prior: int | None = None,
    prior_std: float = 0.1,
    compile: bool | str = False,
    fused: bool = False,
    **kwargs: float,
) -> Policy:
    """Build a policy from a spec string for an env.

    spec: ``random`` | ``scripted`` | ``oracle`` (MPC planning in copies of ``envs``' simulators) |
    ``mpc:CHECKPOINT`` (MPC over a trained world model) | ``bc:CHECKPOINT`` (the behaviour prior of
    ``robobrain train-prior`` acting alone on the world model's filtered state, no planning) |
    ``sb3:ZIP`` (a stable-baselines3 model). All drive 1-D Box action spaces; ``random`` and
    ``sb3:`` drive ``Discrete`` ones too (their actions are then int64 [N]).
    kwargs go to the scripted policy (``noise_std``, ``decoy_goal_prob``). ``guide`` (``mpc:`` of a
    ``robobrain train`` run only): how the run's SB3 actor-critic helps the planner --
    ``both`` (prior samples and terminal value), ``prior``, ``value``, ``auto`` (the parts the run's
    planner used, :func:`load_guide`) or ``none``; ``bc``: the
    behaviour prior fitted by ``robobrain train-prior`` (see :func:`load_guide` for ``num_prior`` and
    ``prior_std``; here ``num_prior`` for ``bc`` defaults to all of ``mpc``'s candidates but one, for
    an SB3 actor to 16 or all but one of fewer).
    ``compile`` (``mpc:`` on CUDA, unguided): ``torch.compile`` the bf16 imagination of the planner's
    whole-plan CUDA graph (a string: ``torch.compile``'s mode; see :class:`WorldModelMPCPolicy`; needs
    Triton and a C compiler). ``fused`` (``mpc:`` on CUDA, unguided): imagine in that graph with one
    Triton kernel per rollout instead (:class:`robobrain.world_model.FusedImagine`).
    """
    if isinstance(action_space, gym.spaces.Discrete):
        if spec == "random":
            return DiscreteRandomPolicy(int(action_space.n), seed=seed, start=int(action_space.start))
        if spec.startswith("sb3:"):
            return _sb3_policy(spec[4:], action_space, device)
        if spec not in ("scripted", "oracle") and not spec.startswith(("mpc:", "bc:")):
            raise _unknown_spec(spec)
        raise ValueError(
            f"--policy {spec} drives 1-D Box action spaces, got {action_space} (random and sb3: drive "
            "Discrete ones too)"
        )
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(
            "robobrain policies drive 1-D Box action spaces (random and sb3: Discrete ones too), "
            f"got {action_space}"
        )
    action_dim = action_space.shape[0]
    mpc = mpc or MPCConfig(seed=seed or 0)
    if spec == "random":
        return RandomPolicy(action_dim, seed=seed, low=action_space.low, high=action_space.high)
    if spec == "scripted":
        from robobrain.envs import get_expert, get_state_layout

        goal = (get_state_layout(env_id) or {}).get("goal")
        return ScriptedPolicy(get_expert(env_id), seed=seed, goal_slice=goal, **kwargs)
    if spec == "oracle" or spec.startswith(("mpc:", "bc:")):
        from robobrain.planning.mpc import check_action_bounds, check_unit_bounds

        check_action_bounds(action_space.low, action_space.high, mpc)
    if spec == "oracle":
        if not envs or not all(hasattr(getattr(e, "unwrapped", e), "action_to_ctrl") for e in envs):
            raise ValueError("the oracle plans in the true simulator: it needs robobrain task envs")
        return OracleMPCPolicy(envs, action_dim, mpc)
    if spec.startswith(("mpc:", "bc:")):
        from robobrain.checkpoint import check_trained_env, read_config
        from robobrain.training.wm_trainer import load_world_model

        kind, path = checkpoint_spec(spec)
        check_trained_env(read_config(path), env_id, path)
        model = load_world_model(path, device)
        if model.cfg.action_dim != action_dim:
            raise ValueError(
                f"{path}: the world model was trained with {model.cfg.action_dim}-D actions, "
                f"{env_id} takes {action_dim}-D actions"
            )
        if kind == "bc":
            from robobrain.rl.behaviour_prior import load_behaviour_prior

            check_unit_bounds(mpc, "the behaviour prior")
            return BehaviourPriorPolicy(model, load_behaviour_prior(path, device), device)
        if guide == "bc" and num_prior is None:  # all candidates but the mean are prior rollouts
            num_prior = max(1, mpc.optim.num_samples - 1)
        elif num_prior is None:  # an SB3 actor's 16, or as many as fewer samples leave (16 of 16 failed)
            num_prior = min(16, mpc.optim.num_samples - 1)
        planner_guide = load_guide(path, guide, device, num_prior, prior_std, mpc.seed)
        if planner_guide is not None:
            check_unit_bounds(mpc, f"the planner's guide ({type(planner_guide).__name__})")
        return WorldModelMPCPolicy(model, mpc, device, guide=planner_guide, compile=compile, fused=fused)
    if spec.startswith("sb3:"):
        return _sb3_policy(spec[4:], action_space, device)
    raise _unknown_spec(spec)


def _unknown_spec(spec: str) -> ValueError:
    return ValueError(f"unknown policy spec {spec!r}; expected one of {', '.join(POLICY_SPECS)}")


def _sb3_policy(path: str, action_space: gym.spaces.Box | gym.spaces.Discrete, device: str) -> SB3Policy:
    """An SB3 model whose action space is the env's (a Box's shape and bounds; a Discrete's n, start)."""
    policy = SB3Policy.load(path, device=device)
    trained = policy.model.action_space
    if isinstance(action_space, gym.spaces.Discrete) or isinstance(trained, gym.spaces.Discrete):
        both = isinstance(trained, gym.spaces.Discrete) and isinstance(action_space, gym.spaces.Discrete)
        if not (both and (trained.n, trained.start) == (action_space.n, action_space.start)):  # (any dtype)
            raise ValueError(f"{path}: the SB3 model acts in {trained}, the env in {action_space}")
        return policy
    if not isinstance(trained, gym.spaces.Box):  # (MultiDiscrete, MultiBinary: no bounds to compare)
        raise ValueError(f"{path}: the SB3 model acts in {trained}, the env in {action_space}")
    if trained.shape != action_space.shape:
        raise ValueError(f"{path}: SB3 actions {trained.shape} vs env {action_space.shape}")
    low, high = action_space.low, action_space.high
    if not (np.array_equal(trained.low, low) and np.array_equal(trained.high, high)):
        raise ValueError(
            f"{path}: the SB3 model acts in [{trained.low.min()}, {trained.high.max()}], the env's "
            f"actions are in [{low.min()}, {high.max()}]"
        )
    return policy


__all__ = [
    "POLICY_SPECS",
    "BehaviourPriorPolicy",
    "DiscreteRandomPolicy",
    "GuideMode",
    "Observation",
    "OracleMPCPolicy",
    "Policy",
    "RandomPolicy",
    "SB3Policy",
    "ScriptedPolicy",
    "WorldModelMPCPolicy",
    "batch_size",
    "checkpoint_spec",
    "guide_mode",
    "load_guide",
    "load_policy",
]
