"""MPC controller, oracle simulator model and MPC policies."""

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from robobrain.config import get_preset
from robobrain.planning import MPC, GraphedPlan, MPCConfig, OptimizerConfig, world_model_score_fn
from robobrain.planning.mpc import check_action_bounds, make_optimizer
from robobrain.planning.oracle import OracleModel
from robobrain.policies import OracleMPCPolicy, WorldModelMPCPolicy
from robobrain.rl import BehaviourPrior, BehaviourPriorGuide
from robobrain.world_model import Bf16Imagine, Rollout, State, WorldModel

SMALL = MPCConfig(horizon=5, optim=OptimizerConfig(num_samples=32, num_elites=4, iterations=2))


def test_oracle_scores_equal_stepping_the_env(task_id):
    envs = [gym.make(task_id, image_size=8) for _ in range(2)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.step(env.action_space.sample())
    a = envs[0].action_space.shape[0]
    actions = torch.rand(2, 6, 4, a, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = OracleModel(success_bonus=0.5, discount=0.9).score_fn(envs)(actions)
    for b, env in enumerate(envs):
        raw = env.unwrapped
        saved = (raw.data.qpos.copy(), raw.data.qvel.copy(), raw.data.act.copy(), raw.data.time)
        for n in (0, 5):
            raw.data.qpos[:], raw.data.qvel[:], raw.data.act[:], raw.data.time = saved
            total = 0.0
            for t in range(4):
                _, r, _, _, info = env.step(actions[b, n, t].numpy())
                total += 0.9**t * (r + 0.5 * info["success"])  # (discounted as imagined steps are)
            assert scores[b, n].item() == pytest.approx(total, abs=1e-4)


def test_mpc_config_refuses_what_would_plan_nan_or_nothing():
    """NaN coloured noise became NaN actions; a NaN success bonus scored every plan -inf, so the planner
    returned its zero warm start forever; too short a coloured sequence failed after the seed data."""
    for bad, match in [
        ({"exploration_beta": float("nan")}, "exploration_beta must be finite and >= 0"),
        ({"exploration_beta": float("inf")}, "exploration_beta"),
        ({"exploration_beta": -1.0}, "exploration_beta"),
        ({"exploration_beta": 1.0, "exploration_length": 1}, "exploration_length >= 2"),
        ({"exploration_length": -5}, "exploration_length >= 2"),  # (unread at beta 0: accepted, silently)
        ({"success_bonus": float("nan")}, "success_bonus must be finite"),
        ({"disagreement_penalty": float("-inf")}, "disagreement_penalty must be finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            MPCConfig(**bad)
    MPCConfig(exploration_beta=1.0, exploration_length=2, disagreement_penalty=-0.5)  # (a bonus is fine)


def test_oracle_refuses_what_env_step_refuses():
    """A NaN action would be zeroed by MuJoCo and score as standing still; it scores -inf instead.
    Actions of the wrong size raise, as env.step does."""
    env = gym.make("robobrain/Reach-v0", image_size=8)
    env.reset(seed=0)
    score = OracleModel().score_fn([env])
    actions = torch.zeros(1, 3, 4, 3)
    actions[0, 1, 2, 0] = float("nan")
    actions[0, 2, 0, 1] = float("inf")
    scores = score(actions)[0]
    assert torch.isfinite(scores[0]) and scores[1:].tolist() == [float("-inf")] * 2
    with pytest.raises(ValueError, match="4 dims, env 0 takes 3"):
        score(torch.zeros(1, 2, 4, 4))


def test_oracle_mpc_solves_reach():
    envs = [gym.make("robobrain/Reach-v0", image_size=8) for _ in range(2)]
    obs = [env.reset(seed=s)[0] for s, env in enumerate(envs)]
    policy = OracleMPCPolicy(envs, 3, SMALL)
    policy.reset(2)
    for _ in range(30):
        batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        actions = policy.act(batch)
        assert actions.shape == (2, 3) and np.abs(actions).max() <= 1
        steps = [env.step(a) for env, a in zip(envs, actions, strict=True)]
        obs = [s[0] for s in steps]
    assert all(s[4]["success"] for s in steps)
    plan = policy.mpc.plan.clone()
    policy.reset(2, mask=np.array([True, False]))  # env 0 starts a new episode; env 1 keeps its plan
    assert torch.all(policy.mpc.plan[0] == 0) and torch.equal(policy.mpc.plan[1], plan[1])


def test_mpc_warm_start_and_masked_reset():
    mpc = MPC(SMALL, action_dim=2)
    mpc.reset(3)
    target = torch.tensor([0.5, -0.5])
    action = mpc.act(lambda a: -((a - target) ** 2).sum((-2, -1)))
    assert action.shape == (3, 2)
    best = mpc.last.best
    torch.testing.assert_close(mpc.plan[:, :-1], best[:, 1:])
    torch.testing.assert_close(mpc.plan[:, -1], best[:, -1])
    before = mpc.plan.clone()
    mpc.reset(3, torch.tensor([False, True, False]))
    assert torch.all(mpc.plan[1] == 0)
    torch.testing.assert_close(mpc.plan[[0, 2]], before[[0, 2]])
    mpc.reset(3, np.array([False, False, True]))  # numpy, as the policies get it
    assert torch.all(mpc.plan[2] == 0) and torch.equal(mpc.plan[0], before[0])
    for bad in (torch.tensor([0, 1, 0]), np.array([True, False])):  # indices, not a mask; wrong size
        with pytest.raises(ValueError, match=r"bool \[3\]"):
            mpc.reset(3, bad)
    torch.testing.assert_close(mpc.plan[0], before[0])
    with pytest.raises(ValueError, match="horizon must be >= 1"):  # (when the flags are read)
        dataclasses.replace(SMALL, horizon=0)
    bad = [("exploration_std", float("nan")), ("exploration_std", -0.1), ("exploration_plan_std", -1.0),
           ("exploration_plan_std", float("inf")), ("discount", 0.0), ("seed", -1),
           ("seed", 2**63)]  # fmt: skip
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            dataclasses.replace(SMALL, **{name: value})


def test_a_fresh_or_reset_plan_starts_in_the_middle_of_the_action_range():
    """It started at 0, the lower bound of a [0, 2] range: half the first samples piled up there, and
    the first action of every episode was the [-1, 1] search's, shifted, no more."""
    shifted = dataclasses.replace(SMALL, optim=dataclasses.replace(SMALL.optim, low=0.0, high=2.0))
    target = torch.tensor([1.3, 0.4])
    mpc, centred = MPC(shifted, action_dim=2), MPC(SMALL, action_dim=2)
    for m in (mpc, centred):
        m.reset(2)
    assert torch.all(mpc.plan == 1.0) and torch.all(centred.plan == 0.0)
    action = mpc.act(lambda a: -((a - target) ** 2).sum((-2, -1)))
    same = centred.act(lambda a: -((a + 1 - target) ** 2).sum((-2, -1)))  # the same problem, moved
    torch.testing.assert_close(action, same + 1)
    mpc.reset(2, np.array([True, False]))
    assert torch.all(mpc.plan[0] == 1.0) and not torch.all(mpc.plan[1] == 1.0)


def test_exploration_noise_is_bounded_and_seeded():
    cfg = dataclasses.replace(SMALL, exploration_std=5.0)
    acts = []
    for _ in range(2):
        mpc = MPC(cfg, action_dim=2)
        mpc.reset(4)
        acts.append(mpc.act(lambda a: -(a**2).sum((-2, -1))))
    torch.testing.assert_close(acts[0], acts[1])
    assert acts[0].abs().max() <= 1 and (acts[0].abs() > 0.5).any()


def test_exploration_from_the_plan_std_follows_the_planners_uncertainty():
    """exploration_plan_std: noise of the plan's own final std per env and action dimension (TD-MPC2),
    drawn with exploration_std's as one Gaussian: where the optimizer converged (an env whose score
    pins the first action) the executed action stays near the plan, where every candidate scores the
    same it spreads as widely as the sampling distribution."""
    optim = OptimizerConfig(num_samples=64, num_elites=8, iterations=3, init_std=0.5, min_std=0.01)
    cfg = MPCConfig(horizon=3, optim=optim, exploration_plan_std=1.0, seed=0)

    def score(a: torch.Tensor) -> torch.Tensor:  # env 0: a sharp optimum of its first action at 0,
        return torch.stack([-100 * (a[0, :, 0] ** 2).sum(-1), torch.zeros(a.shape[1])])  # env 1: none

    def deviations(cfg: MPCConfig, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
        """Executed minus planned first actions [n, 2], and the plans' final stds [n, 2]."""
        mpc, dev, stds = MPC(cfg, action_dim=1), [], []
        for _ in range(n):
            mpc.reset(2)
            dev.append(mpc.act(score)[:, 0] - mpc.last.best[:, 0, 0])
            stds.append(mpc.last.std[:, 0, 0])
        return torch.stack(dev), torch.stack(stds)

    dev, stds = deviations(cfg)
    assert stds[:, 0].mean() < 0.1 and stds[:, 1].mean() > 0.3
    mpc = MPC(cfg, action_dim=1)
    mpc.reset(2)
    mpc.act(score)
    assert mpc.last.std[0, 1:].min() > 0.3  # (env 0's later steps are as unsure as env 1's: the
    # noise must follow the first action's std)
    ratio = dev[:, 0].std() / stds[:, 0].mean()  # (env 0's actions stay near 0: no clamping)
    assert 0.8 < ratio < 1.2, ratio
    assert dev[:, 1].abs().mean() > 3 * dev[:, 0].abs().mean()
    assert torch.all(deviations(dataclasses.replace(cfg, exploration_plan_std=0.0), 5)[0] == 0)
    both, both_stds = deviations(dataclasses.replace(cfg, exploration_std=0.2))
    ratio = both[:, 0].std() / (0.2**2 + both_stds[:, 0] ** 2).sqrt().mean()
    assert 0.8 < ratio < 1.2, ratio
    torch.testing.assert_close(both, deviations(dataclasses.replace(cfg, exploration_std=0.2))[0])  # seeded
    # Exactly the documented std, sqrt(exploration_std^2 + (k * plan std)^2) (the ratio above cannot
    # tell it from exploration_std + k * plan std), on the noise generator's first draw.
    wide = dataclasses.replace(cfg, exploration_std=0.2, exploration_plan_std=0.5)
    mpc = MPC(wide, action_dim=1)
    mpc.reset(2)
    action = mpc.act(score)
    std = (0.2**2 + (0.5 * mpc.last.std[:, 0]) ** 2).sqrt()
    eps = torch.randn((2, 1), generator=torch.Generator().manual_seed(wide.seed + 1))
    torch.testing.assert_close(action, (mpc.last.best[:, 0] + std * eps).clamp(-1, 1))


def test_world_model_score_fn_matches_imagination():
    torch.manual_seed(0)
    # A squared-error reward head: the two-hot one starts at exactly 0, and a score without the
    # predicted rewards matched.
    cfg = dataclasses.replace(get_preset("debug").world_model, ensemble=2, reward_bins=0)
    model = WorldModel(cfg).eval()
    state = model.rssm.initial(2, "cpu")
    mpc_cfg = dataclasses.replace(SMALL, success_bonus=0.7, disagreement_penalty=0.3, discount=0.9)
    actions = torch.rand(2, 3, 5, cfg.action_dim) * 2 - 1
    scores = world_model_score_fn(model, state, mpc_cfg)(actions)
    with torch.no_grad():
        out = model.imagine(state.index(slice(1, 2)), actions[1, 2:3])
    assert out.reward.abs().mean() > 0.02
    r = out.reward + 0.7 * torch.sigmoid(out.success_logit) - 0.3 * out.disagreement
    expected = (r * 0.9 ** torch.arange(5)).sum()
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores[1, 2], expected, rtol=1e-5, atol=1e-5)


def test_disagreement_penalty_needs_an_ensemble():
    cfg = get_preset("debug").world_model
    penalised = dataclasses.replace(SMALL, disagreement_penalty=1.0)
    with pytest.raises(ValueError, match="ensemble"):
        WorldModelMPCPolicy(WorldModel(cfg), penalised)
    WorldModelMPCPolicy(WorldModel(dataclasses.replace(cfg, ensemble=2)), penalised)  # accepted
    model = WorldModel(cfg)  # the score function used directly refuses it too, instead of ignoring it
    state = model.rssm.initial(1, "cpu")
    with pytest.raises(ValueError, match="ensemble"):
        world_model_score_fn(model, state, penalised)(torch.zeros(1, 2, 3, cfg.action_dim))


def test_disagreement_is_the_ensembles_variance_and_computed_only_when_scored():
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("debug").world_model, ensemble=3)
    model = WorldModel(cfg).eval()
    state = model.rssm.initial(4, "cpu")
    actions = torch.rand(4, 5, cfg.action_dim) * 2 - 1
    with torch.no_grad():
        out = model.imagine(state, actions)
        expected = model.rssm.ensemble_log_probs(out.feat[..., : cfg.deter]).exp().var(0).sum((-2, -1))
        torch.testing.assert_close(out.disagreement, expected, rtol=1e-5, atol=1e-7)
        assert (out.disagreement > 0).all()
        lean = model.imagine(state, actions, disagreement=False)
    assert lean.disagreement is None
    torch.testing.assert_close(lean.reward, out.reward)
    # The policy's rollout skips it unless the score uses it (it costs as much as the rest on a CPU).
    assert WorldModelMPCPolicy(model, SMALL).imagine(state, actions).disagreement is None
    bonus = dataclasses.replace(SMALL, disagreement_penalty=-1.0)
    for fast in (True, False):
        policy = WorldModelMPCPolicy(model, bonus, fast=fast)
        torch.testing.assert_close(policy.imagine(state, actions).disagreement, expected)
    # So do a guide's prior rollouts, and the policy asks for it exactly when the score uses it.
    guide = BehaviourPriorGuide(BehaviourPrior(cfg.feat_dim, cfg.action_dim, hidden=8), num_prior=2)
    assert guide.prior_rollout(model, state, 5, disagreement=False).rollout.disagreement is None
    assert (guide.prior_rollout(model, state, 5).rollout.disagreement > 0).all()
    asked = []
    rollout = guide.prior_rollout
    guide.prior_rollout = lambda *a, **kw: asked.append(a[3]) or rollout(*a, **kw)
    obs = {"pixels": np.zeros((1, cfg.image_size, cfg.image_size, 3), np.uint8)}
    for mpc_cfg in (SMALL, bonus):
        WorldModelMPCPolicy(model, mpc_cfg, guide=guide).act(obs)
    assert asked == [False, True]


@pytest.mark.parametrize("reference_frame", [False, True])
def test_world_model_mpc_policy(reference_frame):
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("debug").world_model, reference_frame=reference_frame)
    policy = WorldModelMPCPolicy(WorldModel(cfg), SMALL)
    policy.reset(3)
    obs = {"pixels": np.zeros((3, 32, 32, 3), np.uint8), "state": np.zeros((3, 20), np.float32)}
    actions = policy.act(obs)
    assert actions.shape == (3, cfg.action_dim) and np.abs(actions).max() <= 1
    frames = policy.imagined_frames()
    assert frames.shape == (3, SMALL.horizon, 32, 32, 3)
    np.testing.assert_array_equal(policy.imagined_frames(steps=1), frames[:, :1])  # (what eval decodes)
    deter = policy.state.deter.clone()
    policy.reset(3, mask=np.array([False, True, False]))
    assert torch.all(policy.state.deter[1] == 0)
    torch.testing.assert_close(policy.state.deter[[0, 2]], deter[[0, 2]])
    with pytest.raises(ValueError, match="pixels"):
        policy.act({"pixels": np.zeros((3, 64, 64, 3), np.uint8)})


def test_goal_conditioned_mpc_policy_reads_the_goal_from_the_state():
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("debug").world_model, state_dim=10, goal_start=7, goal_dim=3)
    model = WorldModel(cfg)
    model.set_state_stats(torch.zeros(10), torch.full((10,), 0.1))
    policy = WorldModelMPCPolicy(model, SMALL)
    policy.reset(2)
    state = np.zeros((2, 10), np.float32)
    state[:, 7:10] = [[0.1, 0.0, 0.1], [-0.1, 0.1, 0.2]]
    actions = policy.act({"pixels": np.zeros((2, 32, 32, 3), np.uint8), "state": state})
    assert actions.shape == (2, 3)
    torch.testing.assert_close(policy.state.goal, torch.from_numpy(state[:, 7:10]) / 0.1)
    policy.reset(2, mask=np.array([True, False]))
    assert torch.all(policy.state.deter[0] == 0) and policy.state.goal is None  # re-read at the next act
    with pytest.raises(ValueError, match="goal-conditioned"):
        policy.act({"pixels": np.zeros((2, 32, 32, 3), np.uint8)})
    # A NaN goal is refused as observe refuses it (every plan scored -inf and the policy acted 0).
    state[1, 8] = np.nan
    with pytest.raises(ValueError, match=r"obs\['state'\]: the goal it holds contains NaN or inf"):
        policy.act({"pixels": np.zeros((2, 32, 32, 3), np.uint8), "state": state})


def test_replay_in_simulator_leaves_the_env_untouched(task_id):
    from robobrain.hallucination import replay_in_simulator

    a, b = gym.make(task_id, image_size=16), gym.make(task_id, image_size=16)
    for env in (a, b):
        env.reset(seed=4)
        env.step(np.full(env.action_space.shape, 0.5, np.float32))
    plan = np.random.default_rng(0).uniform(-1, 1, (6, a.action_space.shape[0])).astype(np.float32)
    frames, rewards, states = replay_in_simulator(a, plan)
    assert frames.shape == (6, 16, 16, 3) and rewards.shape == (6,)
    assert states.shape == (6, a.observation_space["state"].shape[0])
    np.testing.assert_array_equal(a.unwrapped.data.qacc_warmstart, b.unwrapped.data.qacc_warmstart)
    np.testing.assert_array_equal(a.unwrapped.data.xpos, b.unwrapped.data.xpos)  # (derived ones too)
    np.testing.assert_array_equal(a.unwrapped._frame, b.unwrapped._frame)  # what render() returns
    oa, ra, *_ = a.step(plan[0])  # the replayed env continues exactly like its untouched twin
    ob, rb, *_ = b.step(plan[0])
    np.testing.assert_array_equal(oa["state"], ob["state"])
    np.testing.assert_array_equal(oa["pixels"], frames[0])
    assert ra == rb == pytest.approx(rewards[0])


def test_graphed_plan_on_cpu_draws_all_iterations_noise_from_the_optimizer_generator():
    """GraphedPlan's eager path (CPU): the plan of ``optimizer.plan`` with the noise of every
    iteration drawn at once from the optimizer's generator; seeded; no wall-clock budget."""
    torch.manual_seed(0)
    cfg = get_preset("debug").world_model
    model = WorldModel(cfg).eval()
    state = model.rssm.initial(3, "cpu")._replace(deter=torch.randn(3, cfg.deter))
    init = torch.zeros(3, SMALL.horizon, cfg.action_dim)

    def graphed(seed: int) -> GraphedPlan:
        opt = make_optimizer(dataclasses.replace(SMALL, seed=seed))
        return GraphedPlan(opt, lambda s: world_model_score_fn(model, s, SMALL))

    got = graphed(0)(state, init)
    opt = make_optimizer(SMALL)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 32, SMALL.horizon, cfg.action_dim, generator=g)
    ref = opt.plan(world_model_score_fn(model, state, SMALL), init, noise=noise)
    torch.testing.assert_close(got.best, ref.best, rtol=0, atol=0)
    torch.testing.assert_close(graphed(0)(state, init).best, got.best, rtol=0, atol=0)
    assert not torch.equal(graphed(1)(state, init).best, got.best)
    timed = dataclasses.replace(SMALL, optim=dataclasses.replace(SMALL.optim, time_budget=0.1))
    with pytest.raises(ValueError, match="time_budget"):
        GraphedPlan(make_optimizer(timed), lambda s: world_model_score_fn(model, s, SMALL))


def bf16_twin_and_rollouts(
    **overrides: object,
) -> tuple[WorldModel, Bf16Imagine, State, torch.Tensor, Rollout, Rollout]:
    """A debug model with a goal (and the preset ``overrides``), its bf16 twin, 256 random start
    states, random actions [256, 6, A], and the model's and the twin's rollouts of them."""
    torch.manual_seed(0)
    cfg = get_preset("debug", state_dim=10, goal_start=7, goal_dim=3, **overrides).world_model
    model = WorldModel(cfg).eval()
    b, h = 256, 6
    state = model.rssm.initial(b, "cpu", torch.randn(b, 3))._replace(deter=torch.randn(b, cfg.deter))
    actions = torch.rand(b, h, cfg.action_dim) * 2 - 1
    twin = Bf16Imagine(model)
    return model, twin, state, actions, model.imagine(state, actions), twin(state, actions)


def test_bf16_twin_follows_the_float32_model_and_syncs_its_weights():
    model, twin, state, actions, ref, got = bf16_twin_and_rollouts()
    cfg = model.cfg
    assert got.feat.dtype == torch.bfloat16 and got.reward.shape == actions.shape[:2]
    stoch = slice(cfg.deter, cfg.deter + cfg.stoch * cfg.classes)
    # bf16 can flip a near-tie of the categorical's mode; nearly all steps keep it.
    assert (got.feat[..., stoch].float() == ref.feat[..., stoch]).float().mean() > 0.9
    first = (got.success_logit[:, 0].float() - ref.success_logit[:, 0]).abs().median()
    assert first < 0.05 * ref.success_logit[:, 0].abs().median()
    # The twin pads its odd-sized matmul inputs (here 16 + 3 actions, 51 features) with zeros: the
    # same outputs as a plain bf16 copy of the model.
    assert twin.pad_action == 5 and twin.pad_goal == 5 and got.feat.shape == ref.feat.shape
    plain = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        bf = plain.imagine_unchecked(
            State(*(x.to(torch.bfloat16) for x in state)), actions.to(torch.bfloat16)
        )
    torch.testing.assert_close(got.feat[:, 0], bf.feat[:, 0], rtol=0.02, atol=0.02)
    torch.testing.assert_close(got.success_logit[:, 0], bf.success_logit[:, 0], rtol=0.02, atol=0.02)
    with torch.no_grad():
        model.success_head[-1].bias.add_(3.0)
    stale = twin(state, actions).success_logit[:, 0].float()
    twin.sync()
    fresh = twin(state, actions).success_logit[:, 0].float()
    torch.testing.assert_close(fresh - stale, torch.full_like(fresh, 3.0), atol=0.1, rtol=0)


def test_repeat_interleave_of_a_state():
    s = WorldModel(get_preset("debug").world_model).rssm.initial(3, "cpu")._replace(deter=torch.randn(3, 32))
    torch.testing.assert_close(s.repeat_interleave(4).deter, s.deter.repeat_interleave(4, 0), rtol=0, atol=0)


def test_graph_cache_keeps_the_most_recently_used_entries():
    from robobrain.world_model.graphs import GraphCache

    cache: GraphCache[str] = GraphCache(max_graphs=2)
    made = []

    def make(key):
        made.append(key)
        return f"entry {key}"

    assert cache.get("a", lambda: make("a")) == "entry a"
    cache.get("b", lambda: make("b"))
    assert cache.get("a", lambda: make("a")) == "entry a"  # kept: not made again
    cache.get("c", lambda: make("c"))  # drops b, the least recently used
    cache.get("b", lambda: make("b"))
    assert made == ["a", "b", "c", "b"] and len(cache) == 2
    with pytest.raises(ValueError, match="max_graphs"):
        GraphCache(0)


def test_coloured_noise_is_unit_variance_correlated_and_seeded():
    from robobrain.planning.noise import powerlaw_noise

    pink = powerlaw_noise(1.0, 256, 50, 3, torch.Generator().manual_seed(0))
    white = powerlaw_noise(0.0, 256, 50, 3, torch.Generator().manual_seed(0))
    assert pink.shape == (256, 50, 3)
    torch.testing.assert_close(pink.std(1), torch.ones(256, 3))
    torch.testing.assert_close(pink.mean(1), torch.zeros(256, 3), atol=1e-5, rtol=0)

    def lag1(x):
        return float((x[:, 1:] * x[:, :-1]).mean() / (x * x).mean())

    assert abs(lag1(white)) < 0.1 and lag1(pink) > 0.4
    torch.testing.assert_close(powerlaw_noise(1.0, 256, 50, 3, torch.Generator().manual_seed(0)), pink)
    # Any finite beta: freqs ** (-beta / 2) overflowed float32 from beta ~45 (NaN noise, NaN actions).
    for beta in (50.0, 200.0, -60.0):  # (and a blue one: the first fix overflowed it instead)
        assert torch.isfinite(powerlaw_noise(beta, 4, 50, 2, torch.Generator().manual_seed(0))).all()


def test_mpc_coloured_exploration_follows_each_envs_sequence_until_its_reset():
    cfg = dataclasses.replace(SMALL, exploration_std=0.1, exploration_beta=1.0, exploration_length=6)
    mpc = MPC(cfg, action_dim=2)
    mpc.reset(3)
    steps = torch.stack([mpc._exploration_noise(torch.Size([3, 2])) for _ in range(6)], 1)  # [3, 6, 2]
    torch.testing.assert_close(steps.std(1), torch.ones(3, 2))  # one whole unit-variance sequence each
    first = mpc._exploration_noise(torch.Size([3, 2]))  # all spent: three new sequences
    mpc.reset(3, torch.tensor([False, True, False]))
    second = mpc._exploration_noise(torch.Size([3, 2]))
    torch.testing.assert_close(second[[0, 2]], mpc._noise[[0, 2], 1])  # envs 0, 2 go on with theirs
    assert torch.equal(second[1], mpc._noise[1, 0])  # env 1 restarted with a fresh sequence
    assert not torch.equal(first[1], second[1])
    mpc.reset(3)  # all envs: each draws a new sequence (none goes on mid-way through its old one)
    third = mpc._exploration_noise(torch.Size([3, 2]))
    torch.testing.assert_close(third, mpc._noise[:, 0], rtol=0, atol=0)


def test_the_filter_sees_the_executed_actions_and_a_masked_reset_touches_its_envs_only():
    """The policy's latent state is observe() of the frames and the actions executed before them
    (exploration noise included), restarted where an episode restarted; the other envs keep their
    warm start. Resetting every env's plan, keeping the old episode's last action, or feeding the
    filter the plan before noise all passed the other tests."""
    torch.manual_seed(0)
    model = WorldModel(get_preset("debug").world_model).eval()
    mpc = MPCConfig(
        horizon=5, exploration_std=0.5, optim=OptimizerConfig(num_samples=32, num_elites=4, iterations=2)
    )
    policy = WorldModelMPCPolicy(model, mpc)
    policy.reset(3)
    rng = np.random.default_rng(0)
    frames, actions = [], []
    for t in range(5):
        if t == 3:
            plan = policy.mpc.plan.clone()
            policy.reset(3, mask=np.array([False, True, False]))
            assert torch.all(policy.mpc.plan[1] == 0) and torch.equal(policy.mpc.plan[[0, 2]], plan[[0, 2]])
        pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        frames.append(pixels)
        actions.append(policy.act({"pixels": pixels}))
    pixels, taken = np.stack(frames, 1), torch.from_numpy(np.stack(actions, 1))
    before = torch.cat([torch.zeros_like(taken[:, :1]), taken[:, :-1]], 1)  # the action before each frame
    with torch.no_grad():
        for i, start in ((0, 0), (1, 3), (2, 0)):
            want = model.observe(pixels[i : i + 1, start:], before[i : i + 1, start:])
            torch.testing.assert_close(policy.state.deter[i], want.deter[0])


# --- from a second mutation audit (session 30) ------------------------------------------------------
def test_the_seed_also_seeds_the_exploration_noise():
    """cfg.seed fixes the exploration noise too: other seeds draw other noise (a constant seed for
    the noise generator made every run explore alike)."""

    def noise(seed, beta):
        cfg = dataclasses.replace(SMALL, exploration_std=0.01, exploration_beta=beta, seed=seed)
        mpc = MPC(cfg, action_dim=2)
        mpc.reset(3)
        action = mpc.act(lambda a: -(a**2).sum((-2, -1)))  # optimum 0: no clamping at the bounds
        return action - mpc.last.best[:, 0]

    for beta in (0.0, 1.0):
        torch.testing.assert_close(noise(0, beta), noise(0, beta))
        assert not torch.allclose(noise(0, beta), noise(1, beta)), beta


def test_the_bounds_error_says_the_envs_own_bounds():
    """Bounds per dimension of [-1, 1] x [0, 5] were said as "[-1.0, 5.0]", the planner's own range
    with --mpc.optim.low -1 --mpc.optim.high 5, so the error contradicted itself."""
    wide = MPCConfig(optim=OptimizerConfig(low=-1.0, high=5.0))
    with pytest.raises(ValueError, match=r"low \[-1\.0, 0\.0\], high \[1\.0, 5\.0\] \(not one range"):
        check_action_bounds([-1.0, 0.0], [1.0, 5.0], wide)
    with pytest.raises(ValueError, match=r"1\.0\] but the env's actions are in \[-2\.0, 2\.0\];"):
        check_action_bounds([-2.0], [2.0], MPCConfig())
    check_action_bounds([-1.0, -1.0], [1.0, 1.0], MPCConfig())  # the planner's own range: fine
    for low, high in (([-1.0], [2.0]), ([-0.5], [1.0])):  # one bound off: the planner would miss a part
        with pytest.raises(ValueError, match="RescaleAction"):
            check_action_bounds(low, high, MPCConfig())
