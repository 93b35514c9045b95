"""Every registered task: API checks, determinism, randomization, bad input, instability."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import robobrain.envs as envs
from robobrain.envs.physics import FINGER_OPEN, STATE_BASE


def rollout(env, seed: int, steps: int = 15):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    traj = [obs]
    for _ in range(steps):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        traj.append(obs)
    return traj


def test_gymnasium_check_env(task_id):
    env = gym.make(task_id, image_size=32, render_mode="rgb_array")
    gym_check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_sb3_check_env(task_id):
    env = gym.make(task_id, image_size=32)
    with pytest.warns(UserWarning):  # SB3 notes it will transpose the image for its CNN
        sb3_check_env(env, warn=True)
    env.close()


def test_spaces_and_info(small_env, task_id):
    obs, info = small_env.reset(seed=0)
    assert small_env.observation_space.contains(obs)
    assert obs["pixels"].shape == (32, 32, 3) and obs["pixels"].dtype == np.uint8
    assert small_env.action_space.dtype == np.float32
    assert np.all(small_env.action_space.low == -1) and np.all(small_env.action_space.high == 1)
    obs, reward, terminated, truncated, info = small_env.step(small_env.action_space.sample())
    assert small_env.observation_space.contains(obs)
    assert not terminated and not truncated
    assert isinstance(info["success"], bool)
    terms = {k: v for k, v in info.items() if k.startswith("reward_")}
    assert len(terms) >= 2
    assert reward == pytest.approx(sum(terms.values()))
    assert small_env.spec.max_episode_steps == envs.EPISODE_STEPS


def test_time_limit(small_env):
    small_env.reset(seed=1)
    for t in range(envs.EPISODE_STEPS):
        _, _, terminated, truncated, _ = small_env.step(np.zeros(small_env.action_space.shape, np.float32))
        assert not terminated
        assert truncated == (t == envs.EPISODE_STEPS - 1)


def test_same_seed_same_trajectory_pixels_included(task_id):
    a, b = gym.make(task_id, image_size=32), gym.make(task_id, image_size=32)
    for oa, ob in zip(rollout(a, seed=7), rollout(b, seed=7), strict=True):
        np.testing.assert_array_equal(oa["pixels"], ob["pixels"])
        np.testing.assert_array_equal(oa["state"], ob["state"])


def test_pixels_show_the_state_returned_beside_them(task_id):
    """The frame is rendered at the returned state (mj_step leaves poses one substep behind it), and
    re-deriving the poses leaves the trajectory as it was."""
    env = gym.make(task_id, image_size=32)
    traj = rollout(env, seed=5)
    raw = env.unwrapped
    data = mujoco.MjData(raw.model)
    data.qpos[:], data.qvel[:] = raw.data.qpos, raw.data.qvel
    mujoco.mj_forward(raw.model, data)
    with mujoco.Renderer(raw.model, 32, 32) as renderer:
        renderer.update_scene(data, camera=raw.camera)
        np.testing.assert_array_equal(traj[-1]["pixels"], renderer.render())
    plain = gym.make(task_id, image_size=32)
    plain.reset(seed=5)
    rng = np.random.default_rng(123)
    for _ in range(15):  # mj_step alone, as step does before its kinematics
        plain.unwrapped.data.ctrl[:] = plain.unwrapped.action_to_ctrl(
            rng.uniform(-1, 1, plain.action_space.shape).astype(np.float32)
        )
        mujoco.mj_step(plain.unwrapped.model, plain.unwrapped.data, nstep=plain.unwrapped.frame_skip)
    np.testing.assert_array_equal(plain.unwrapped.data.qpos, raw.data.qpos)
    np.testing.assert_array_equal(plain.unwrapped.data.qvel, raw.data.qvel)
    env.close()
    plain.close()


def test_resets_are_randomized(small_env):
    states = [small_env.reset(seed=s)[0]["state"] for s in range(5)]
    states += [small_env.reset()[0]["state"] for _ in range(3)]
    assert len({s.tobytes() for s in states}) == len(states)
    pixels = {small_env.reset(seed=s)[0]["pixels"].tobytes() for s in range(5)}
    assert len(pixels) == 5


def test_observations_are_fresh_arrays(small_env):
    obs0, _ = small_env.reset(seed=0)
    keep = {k: v.copy() for k, v in obs0.items()}
    obs1, *_ = small_env.step(np.ones(small_env.action_space.shape, np.float32))
    assert not np.shares_memory(obs0["pixels"], obs1["pixels"])
    obs1["pixels"][:] = 0
    obs1["state"][:] = 0
    for k in keep:
        np.testing.assert_array_equal(obs0[k], keep[k])
    frame = small_env.render()
    assert frame is not None and frame.any(), "render() must not share the observation's buffer"


def test_image_size(task_id):
    for size in (32, 64):
        env = gym.make(task_id, image_size=size)
        assert env.reset(seed=0)[0]["pixels"].shape == (size, size, 3)
        env.close()
    for bad in (0, True):
        with pytest.raises(ValueError, match="image_size"):
            gym.make(task_id, image_size=bad)


def test_wrong_action_shape_raises(small_env):
    small_env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        small_env.step(np.zeros(small_env.action_space.shape[0] + 1, np.float32))
    with pytest.raises(ValueError, match="shape"):
        small_env.step(np.zeros((1, small_env.action_space.shape[0]), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_raises_and_leaves_state(small_env, bad):
    small_env.reset(seed=0)
    small_env.step(small_env.action_space.sample())
    raw = small_env.unwrapped
    before = (raw.data.qpos.copy(), raw.data.qvel.copy(), raw.data.time, raw.data.ctrl.copy())
    action = np.zeros(small_env.action_space.shape, np.float32)
    action[0] = bad
    with pytest.raises(ValueError, match="finite"):
        small_env.step(action)
    np.testing.assert_array_equal(raw.data.qpos, before[0])
    np.testing.assert_array_equal(raw.data.qvel, before[1])
    np.testing.assert_array_equal(raw.data.ctrl, before[3])
    assert raw.data.time == before[2]


@pytest.mark.parametrize("bad", [["1", "-0.5", "1e9"], [True, False, True], np.array([1 + 5j, 0, 0])])
def test_an_action_that_is_not_numbers_is_refused(small_env, bad):
    """Strings, bools and complex numbers were cast to floats and stepped (1+5j as 1.0)."""
    small_env.reset(seed=0)
    qpos = small_env.unwrapped.data.qpos.copy()
    with pytest.raises(ValueError, match="action must be numbers, got an array of dtype"):
        small_env.step(bad)
    np.testing.assert_array_equal(small_env.unwrapped.data.qpos, qpos)
    small_env.step(np.ones(small_env.action_space.shape, dtype=np.int64))  # (ints are numbers)


def test_out_of_range_actions_are_clipped(task_id):
    a, b = gym.make(task_id, image_size=32), gym.make(task_id, image_size=32)
    a.reset(seed=3)
    b.reset(seed=3)
    big = np.full(a.action_space.shape, 5.0, np.float32)
    big[0] = -7.0
    oa, *_ = a.step(big)
    ob, *_ = b.step(np.clip(big, -1, 1))
    np.testing.assert_array_equal(oa["state"], ob["state"])


def test_unstable_simulation_is_truncated_without_teleport(small_env):
    obs, _ = small_env.reset(seed=0)
    obs, *_ = small_env.step(np.zeros(small_env.action_space.shape, np.float32))
    raw = small_env.unwrapped
    raw.data.qvel[:] = 1e30  # blow the physics up
    spec = mujoco.mjtState.mjSTATE_INTEGRATION  # (ctrl and the solver's warm start too: they stayed)
    before, after = (np.empty(mujoco.mj_stateSize(raw.model, spec)) for _ in range(2))
    mujoco.mj_getState(raw.model, raw.data, before, spec)
    zero = np.zeros(small_env.action_space.shape, np.float32)
    obs_bad, reward, terminated, truncated, info = small_env.step(np.ones(small_env.action_space.shape))
    mujoco.mj_getState(raw.model, raw.data, after, spec)
    np.testing.assert_array_equal(after, before)
    assert info["sim_unstable"] is True
    assert truncated and not terminated
    assert np.all(np.isfinite(obs_bad["state"])) and np.isfinite(reward)
    # The state is rolled back to the last good one, not MuJoCo's auto-reset (qpos0).
    np.testing.assert_allclose(obs_bad["state"][:3], obs["state"][:3], atol=1e-6)
    assert np.linalg.norm(obs_bad["state"][:3]) > 1e-3
    # A second blow-up in the same episode (MuJoCo's auto-reset leaves its warning count at 1), and
    # one that is still finite and below MuJoCo's own bound: both are caught, neither teleports.
    for qvel in (1e30, 1e6):
        raw.data.qvel[:] = 0.0
        good, *_ = small_env.step(zero)
        raw.data.qvel[:] = qvel
        bad, _, _, truncated, info = small_env.step(zero)
        assert info["sim_unstable"] is True and truncated, qvel
        np.testing.assert_allclose(bad["state"][:3], good["state"][:3], atol=1e-6)


def test_a_reset_env_copies_and_pickles(task_id):
    """Its renderer (a GL context) is left behind and made afresh: deepcopy and pickle failed."""
    import copy
    import pickle

    env = gym.make(task_id, image_size=16).unwrapped
    env.reset(seed=3)
    action = np.full(env.action_space.shape, 0.5, np.float32)
    twins = (copy.deepcopy(env), pickle.loads(pickle.dumps(env)))
    expected, *_ = env.step(action)
    for twin in twins:
        obs, *_ = twin.step(action)
        np.testing.assert_array_equal(obs["state"], expected["state"])
        np.testing.assert_array_equal(obs["pixels"], expected["pixels"])
    env.close()


def test_success_flag_matches_threshold(task_id):
    env = gym.make(task_id, image_size=32)
    obs, info = env.reset(seed=0)
    assert info["success"] is False  # starts are drawn away from the goal
    env.close()
    # Success is "within 5 cm of the goal" (of the gripper for Reach, of the block otherwise): 4.9 cm
    # succeeds, 5.1 cm does not (no start comes that close, so a looser threshold passed the above).
    raw = env.unwrapped
    layout = raw.state_layout
    moved = layout["block_pos"] if "block_pos" in layout else layout["gripper_pos"]
    states = np.repeat(obs["state"][None], 2, axis=0)
    states[:, moved] = states[:, layout["goal"]]
    states[:, moved.start] += [0.049, 0.051]
    assert raw.success(states).tolist() == [True, False]
    assert raw.reward_terms(states)["reward_success"].tolist() == [1.0, 0.0]


def test_goal_and_its_success_zone_are_visible(task_id):
    """The goal is drawn as a sphere plus its 5 cm success zone on the table, large enough at 64 px
    for a world model to locate it (the sphere alone covered ~4x4 px)."""
    env = gym.make(task_id, image_size=64)
    green = []
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        scene = env.unwrapped.scene
        zone = scene.model.site("goal_zone").id
        goal = obs["state"][STATE_BASE["goal"]]
        np.testing.assert_allclose(scene.model.site_pos[zone, :2], goal[:2], atol=1e-6)
        px = obs["pixels"].astype(int)
        green.append(int(((px[..., 1] > px[..., 0] + 40) & (px[..., 1] > px[..., 2] + 40)).sum()))
    assert np.median(green) >= 40, green
    env.close()


def test_an_unknown_env_id_suggests_ours_by_name_first():
    """``Push-v0`` suggested Pusher-v5 (MuJoCo's) and not robobrain/Push-v0."""
    from robobrain.envs import make_env

    cases = [("Push-v0", "robobrain/Push-v0"), ("push", "robobrain/Push-v0"),
             ("robobrain/Rech-v0", "robobrain/Reach-v0"), ("CartPoel-v1", "CartPole-v1")]  # fmt: skip
    for typo, first in cases:
        with pytest.raises(ValueError, match=f"^unknown env id '{typo}'; did you mean {first} "):
            make_env(typo)


# --- from a mutation audit (session 30): properties a broken implementation passed -----------------
def test_gripper_command_maps_linearly_onto_the_finger_opening():
    """-1 closed, +1 open, 0 half open (the experts only ever send +-1, so a mapping that is right at
    the ends only -- e.g. ``action * FINGER_OPEN`` -- passed every other test)."""
    from robobrain.envs.pick_place import PickPlaceEnv

    actions = np.zeros((5, 4))
    actions[:, 3] = [-1.0, -0.5, 0.0, 0.5, 1.0]
    ctrl = PickPlaceEnv.action_to_ctrl(actions)
    expected = np.array([0.0, 0.25, 0.5, 0.75, 1.0]) * FINGER_OPEN
    np.testing.assert_allclose(ctrl[:, 3], expected)
    np.testing.assert_allclose(ctrl[:, 4], expected)


def _pick_state(grip, block, finger, goal=(0.1, 0.1, 0.025)):
    from robobrain.envs.physics import STATE_BASE, STATE_BLOCK

    s = np.zeros(20, np.float32)
    s[STATE_BASE["gripper_pos"]] = grip
    s[STATE_BASE["finger"]] = finger
    s[STATE_BASE["goal"]] = goal
    s[STATE_BLOCK["block_pos"]] = block
    s[STATE_BLOCK["block_quat"]] = (1, 0, 0, 0)
    return s


def test_block_grasped_needs_the_block_between_closed_fingers():
    """Held: block centred between the fingers *and* the fingers pressing on it (closed to the
    block's half size). Open fingers around it, or closed fingers above it, do not hold it."""
    from robobrain.envs.physics import BLOCK_HALF_SIZE, block_grasped
    from robobrain.envs.pick_place import PickPlaceEnv

    b = np.array([0.0, 0.0, 0.025])
    states = np.stack([
        _pick_state(b, b, BLOCK_HALF_SIZE),               # pressing on it: held
        _pick_state(b, b, FINGER_OPEN),                   # open around it: not held
        _pick_state(b + np.array([0, 0, 0.08]), b, BLOCK_HALF_SIZE),  # closed 8 cm above it: not held
        _pick_state(b + np.array([0.05, 0, 0]), b, BLOCK_HALF_SIZE),  # beside it: not held
    ])  # fmt: skip
    assert block_grasped(states).tolist() == [True, False, False, False]
    np.testing.assert_allclose(PickPlaceEnv.reward_terms(states)["reward_grasp"], [0.25, 0, 0, 0])


@pytest.mark.parametrize("task", ["Reach", "Push", "PickPlace"])
def test_reward_terms_have_their_documented_signs_and_scales(task):
    """Each term is the documented function of the distances: a flipped sign or a wrong distance kept
    ``reward == sum(terms)`` true, which is all test_envs checked."""
    from robobrain.envs.physics import STATE_BASE

    env_cls = gym.spec(f"robobrain/{task}-v0").entry_point
    env_cls = gym.envs.registration.load_env_creator(env_cls) if isinstance(env_cls, str) else env_cls
    grip, block, goal = np.array([0.0, 0.0, 0.1]), np.array([0.0, 0.3, 0.025]), np.array([0.4, 0.3, 0.025])
    if task == "Reach":
        s = np.zeros(10, np.float32)
        s[STATE_BASE["gripper_pos"]], s[STATE_BASE["goal"]] = grip, goal
        terms = env_cls.reward_terms(s)
        assert float(terms["reward_dist"]) == pytest.approx(-np.linalg.norm(grip - goal), abs=1e-6)
        return
    s = _pick_state(grip, block, FINGER_OPEN, goal)[:20]
    terms = env_cls.reward_terms(s)
    assert float(terms["reward_reach"]) == pytest.approx(-0.5 * np.linalg.norm(grip - block), abs=1e-6)
    assert float(terms["reward_place"]) == pytest.approx(-0.4, abs=1e-6)
    assert float(terms["reward_success"]) == 0.0


def test_state_reports_the_blocks_linear_velocity():
    """``block_vel`` is the free joint's linear velocity (qvel[0:3] of it), not its angular one."""
    env = gym.make("robobrain/Push-v0", image_size=8)
    env.reset(seed=0)
    raw = env.unwrapped
    dof = raw.model.jnt_dofadr[raw.model.joint("block").id]
    raw.data.qvel[dof : dof + 3] = (0.1, -0.2, 0.3)
    raw.data.qvel[dof + 3 : dof + 6] = (4.0, 5.0, 6.0)
    np.testing.assert_allclose(raw.state()[raw.state_layout["block_vel"]], [0.1, -0.2, 0.3], rtol=1e-6)
    env.close()


@pytest.mark.parametrize("goal_in_air_prob", [0.0, 0.5])
def test_block_goal_and_start_draws_keep_their_ranges(goal_in_air_prob):
    """Block in +-15 cm, goal 10-25 cm from it and inside +-18 cm, gripper start >= 10 cm from the
    block; goals on the table at the block's height, or (PickPlace) in the air 6-20 cm about half the time."""
    from robobrain.envs import push
    from robobrain.envs.physics import BLOCK_HALF_SIZE

    rng = np.random.default_rng(0)
    draws = [push.sample_block_and_goal(rng, goal_in_air_prob, 0.2) for _ in range(400)]
    start, block, goal = (np.array(x) for x in zip(*draws, strict=True))
    assert np.all(np.abs(block[:, :2]) <= push.BLOCK_RANGE) and np.all(block[:, 2] == BLOCK_HALF_SIZE)
    d = np.linalg.norm(goal[:, :2] - block[:, :2], axis=1)
    assert np.all((d >= push.GOAL_DISTANCE[0]) & (d <= push.GOAL_DISTANCE[1]))
    assert np.all(np.abs(goal[:, :2]) <= push.GOAL_RANGE)
    assert np.all(np.linalg.norm(start[:, :2] - block[:, :2], axis=1) >= push.MIN_GRIPPER_DISTANCE)
    assert np.all((start[:, 2] >= push.START_HEIGHT[0]) & (start[:, 2] <= push.START_HEIGHT[1]))
    in_air = goal[:, 2] != BLOCK_HALF_SIZE
    assert np.all((goal[in_air, 2] >= push.MIN_AIR_GOAL_HEIGHT) & (goal[in_air, 2] <= 0.2))
    assert in_air.mean() == pytest.approx(goal_in_air_prob, abs=0.08)


def test_pick_place_uses_half_its_goals_in_the_air_and_starts_open():
    """The env (not only the sampler) draws air goals for PickPlace, and its episodes start with the
    fingers open; Push and Reach start closed."""
    from robobrain.envs.physics import BLOCK_HALF_SIZE, STATE_BASE

    env = gym.make("robobrain/PickPlace-v0", image_size=8)
    air = []
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        assert obs["state"][STATE_BASE["finger"]][0] == pytest.approx(FINGER_OPEN, abs=1e-6)
        air.append(obs["state"][STATE_BASE["goal"]][2] > BLOCK_HALF_SIZE + 1e-6)
    env.close()
    assert 0.25 <= np.mean(air) <= 0.75
    for task in ("Push", "Reach"):
        env = gym.make(f"robobrain/{task}-v0", image_size=8)
        assert env.reset(seed=0)[0]["state"][STATE_BASE["finger"]][0] == pytest.approx(0.0, abs=1e-6)
        env.close()


def test_reach_starts_at_least_10_cm_from_its_goal():
    from robobrain.envs.physics import gripper_to_goal

    env = gym.make("robobrain/Reach-v0", image_size=8)
    d = [float(gripper_to_goal(env.reset(seed=s)[0]["state"])) for s in range(60)]
    env.close()
    assert min(d) >= 0.10
