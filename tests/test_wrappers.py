"""The pixel wrapper gives third-party envs the robobrain observation dict."""

import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

import robobrain.envs as envs
from robobrain.envs import PixelObservation, resize_image


@pytest.mark.parametrize("env_id", ["Reacher-v5", "Pusher-v5"])
def test_wrapped_gymnasium_env(env_id):
    env = envs.make_env(env_id, image_size=32, width=64, height=64)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["pixels"].shape == (32, 32, 3) and obs["pixels"].dtype == np.uint8
    raw_dim = gym.spaces.flatdim(env.unwrapped.observation_space)
    assert obs["state"].shape == (raw_dim,) and obs["state"].dtype == np.float32
    first = obs["pixels"].copy()
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert not np.array_equal(first, obs["pixels"]), "the pixels must follow the simulation"
    env.close()


def test_gymnasium_mujoco_envs_render_near_the_image_size():
    """Made without width/height, a Gymnasium MuJoCo env renders at 128x128 for 16 px, not 480x480:
    the same frames to within a grey level on average; width/height given (here or in the env's
    registration) are kept."""
    small = envs.make_env("InvertedPendulum-v5", image_size=16)
    full = envs.make_env("InvertedPendulum-v5", image_size=16, width=480, height=480)
    assert (small.unwrapped.width, small.unwrapped.height) == (128, 128)
    assert full.unwrapped.width == 480
    a, _ = small.reset(seed=1)
    b, _ = full.reset(seed=1)
    diffs = [np.abs(a["pixels"].astype(float) - b["pixels"]).mean()]
    for _ in range(3):
        action = np.full(small.action_space.shape, 0.5, np.float32)
        a, *_ = small.step(action)
        b, *_ = full.step(action)
        diffs.append(np.abs(a["pixels"].astype(float) - b["pixels"]).mean())
    assert max(diffs) < 1.0, diffs
    small.close()
    full.close()
    gym.register("RegisteredSize-v0", entry_point="gymnasium.envs.mujoco.reacher_v5:ReacherEnv",
                 kwargs={"width": 40, "height": 40}, max_episode_steps=5)  # fmt: skip
    try:
        env = envs.make_env("RegisteredSize-v0", image_size=16)
        assert env.unwrapped.width == 40
        env.close()
    finally:
        del gym.registry["RegisteredSize-v0"]
    assert [envs.render_side(s) for s in (16, 64, 100, 300)] == [128, 128, 200, 480]


@pytest.mark.parametrize("env_id", ["Reacher-v5", "InvertedPendulum-v5"])
def test_same_seed_same_pixels_whatever_the_env_ran_before(env_id):
    """Gymnasium's viewer aims its free camera where the geoms are at the first render (Reacher: the
    random target), so an env that had run another episode first saw the same state through another
    camera; every env of an id now sees through the one camera aimed at the model's rest pose."""
    used = envs.make_env(env_id, image_size=32)
    used.reset(seed=1)
    used.step(used.action_space.sample())
    fresh = envs.make_env(env_id, image_size=32)
    a, _ = used.reset(seed=2)
    b, _ = fresh.reset(seed=2)
    np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(a["pixels"], b["pixels"])
    used.close()
    fresh.close()


@pytest.mark.parametrize("closed", [True, False])
def test_freeing_an_env_leaves_the_frames_of_another_intact(closed):
    """An MjrContext left to the garbage collector freed its GL objects in whichever context was
    current -- another env's, which rendered InvertedPendulum without its cart and pole from then on
    (286 of 1,024 pixels off); closed or merely dropped, an env now frees them in its own."""
    import gc

    first = envs.make_env("InvertedPendulum-v5", image_size=32)
    first.reset(seed=2)
    if closed:
        first.close()
    other = envs.make_env("InvertedPendulum-v5", image_size=32)
    before, _ = other.reset(seed=2)
    del first
    gc.collect()
    after, _ = other.reset(seed=2)
    np.testing.assert_array_equal(before["pixels"], after["pixels"])
    other.close()


class FixedSizeReacher(ReacherEnv):
    """A user's MujocoEnv subclass that takes no width/height (it sizes its frames itself)."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode, width=40, height=30)


def test_a_users_mujoco_env_keeps_its_own_render_size():
    """Only Gymnasium's own MuJoCo envs get the smaller render: a user's subclass may not take
    width/height at all (gym.make's TypeError) or have chosen a size, and an entry point that cannot
    be imported is still said in one line."""
    gym.register("FixedSizeReacher-v0", entry_point=FixedSizeReacher, max_episode_steps=5)
    gym.register("Unimportable-v0", entry_point="no_such_pkg.envs:Env", max_episode_steps=5)
    try:
        env = envs.make_env("FixedSizeReacher-v0", image_size=16)
        assert (env.unwrapped.width, env.unwrapped.height) == (40, 30)
        assert env.reset(seed=0)[0]["pixels"].shape == (16, 16, 3)
        env.close()
        with pytest.raises(ValueError, match="Unimportable-v0 cannot be made here"):
            envs.make_env("Unimportable-v0", image_size=16)
    finally:
        del gym.registry["FixedSizeReacher-v0"], gym.registry["Unimportable-v0"]


def test_wrapper_needs_rgb_rendering():
    with pytest.raises(ValueError, match="rgb_array"):
        PixelObservation(gym.make("Reacher-v5"), image_size=32)
    for size in (0, 4.7, -3, True):  # (True, an int to Python, made 1x1 frames)
        with pytest.raises(ValueError, match="positive int"):
            envs.make_env("Reacher-v5", image_size=size)
    # "module:Env-v0" ids, as gym.make reads them: the module registers the env (it was refused).
    reacher = envs.make_env("gymnasium.envs:Reacher-v5", image_size=16)
    assert reacher.observation_space["pixels"].shape == (16, 16, 3)
    reacher.close()


def test_module_ids_register_their_env_wherever_an_id_is_read(tmp_path, monkeypatch):
    """``"module:Env-v0"``: the state layout of a user's goal env was None (never imported), so a
    world model on its data was not goal-conditioned; a module that cannot be imported, or one of
    Gymnasium's mujoco-py ids (registered, but making one raises ImportError), is a ValueError."""
    (tmp_path / "my_goal_env.py").write_text(
        "import gymnasium as gym\n"
        "class GoalEnv(gym.Env):\n"
        "    state_layout = {'pos': slice(0, 2), 'goal': slice(2, 4)}\n"
        "gym.register('MyGoal-v0', entry_point=GoalEnv)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_goal_env", raising=False)
    try:
        assert envs.get_state_layout("my_goal_env:MyGoal-v0") == {"pos": slice(0, 2), "goal": slice(2, 4)}
    finally:
        gym.registry.pop("MyGoal-v0", None)
    with pytest.raises(ValueError, match="cannot import 'no_such_module' to register it"):
        envs.make_env("no_such_module:Foo-v0")
    for nameless in (":Foo-v0", ".rel:Foo-v0"):  # ("Empty module name", a TypeError traceback)
        with pytest.raises(ValueError, match="name the module that registers it"):
            envs.make_env(nameless)
    (tmp_path / "needs_a_dep.py").write_text("import not_installed_dep\n")
    with pytest.raises(ModuleNotFoundError, match="not_installed_dep"):  # (found, but its own import is
        envs.make_env("needs_a_dep:Foo-v0")  # missing: not "is it on PYTHONPATH?", and its traceback)
    with pytest.raises(ValueError, match=r"^Reacher-v2 cannot be made here: The mujoco v2 and v3"):
        with warnings.catch_warnings():  # (Gymnasium's "Reacher-v2 is out of date" first)
            warnings.simplefilter("ignore", DeprecationWarning)
            envs.make_env("Reacher-v2")
    with pytest.raises(ValueError, match="did you mean") as e:  # (only ids that can be made)
        envs.make_env("Reacher")
    assert "-v2" not in str(e.value) and "-v3" not in str(e.value)


def test_wrapped_env_passes_gymnasiums_checker_and_is_recreated_from_its_spec():
    from gymnasium.utils.env_checker import check_env

    env = envs.make_env("Reacher-v5", image_size=16, width=32, height=32)
    with pytest.warns(UserWarning) as warned:  # it warns about a wrapped env and an unbounded state Box
        check_env(env)
    assert any("infinity" in str(w.message) for w in warned)
    again = gym.make(env.spec)
    assert isinstance(again, PixelObservation) and again.observation_space == env.observation_space


def test_wrapped_env_vectorizes():
    vec = envs.make_vector_env("Reacher-v5", 2, image_size=16, width=32, height=32)
    obs, _ = vec.reset(seed=0)
    assert obs["pixels"].shape == (2, 16, 16, 3)
    vec.close()


def test_resize_is_an_area_average():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    small = resize_image(img, 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.uint8
    # 64 -> 16 rows is an exact 4x4 block mean; 48 -> 16 columns a 3-wide one.
    expected = img.astype(np.float64).reshape(16, 4, 16, 3, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(small, np.rint(expected), atol=1)
    flat = np.full((50, 70, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_image(flat, 32), 77)
    for shape in ((8, 8), (8, 8, 4)):  # (an RGBA frame came out with 4 channels without the check)
        with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\]"):
            resize_image(np.zeros(shape, np.uint8), 4)
    with pytest.raises(ValueError, match="uint8"):  # a float frame in [0, 1] came out black
        resize_image(np.ones((8, 8, 3), np.float32), 4)
    same = resize_image(flat[:32, :32], 32)
    assert not np.shares_memory(same, flat)  # a renderer may reuse its buffer for the next frame


def test_the_wrapped_state_is_the_inner_observation():
    """At reset and every step (zeros of the right shape passed every other wrapper test)."""
    env = envs.make_env("Reacher-v5", image_size=16, width=32, height=32)
    plain = gym.make("Reacher-v5")  # same dynamics, no rendering: the same observations for one seed
    obs, _ = env.reset(seed=0)
    ref, _ = plain.reset(seed=0)
    np.testing.assert_allclose(obs["state"], ref.astype(np.float32))
    rng = np.random.default_rng(0)
    states = [obs["state"].copy()]
    for _ in range(5):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, *_ = env.step(action)
        ref, *_ = plain.step(action)
        np.testing.assert_allclose(obs["state"], ref.astype(np.float32))
        states.append(obs["state"].copy())
    assert len({s.tobytes() for s in states}) == len(states)  # it follows the simulation
    env.close()
    plain.close()


def test_a_non_square_render_is_said_once(caplog):
    """Frames are resized to square, not cropped: an env rendering 48x32 changes aspect (it did in
    silence)."""
    env = envs.make_env("Reacher-v5", image_size=16, width=48, height=32)
    with caplog.at_level("WARNING", logger="robobrain.envs.wrappers"):
        env.reset(seed=0)
        env.step(env.action_space.sample())
    assert caplog.text.count("renders 48x32 frames: resized to 16x16, not cropped") == 1
    env.close()


def test_frames_follow_the_env_after_another_mujoco_env_is_closed():
    """Gymnasium's MuJoCo envs make their OpenGL context current only when they create it: after
    another env in the process was closed (the online loop's evaluation envs), render() returned one
    stale frame for ever, and the loop stored episodes whose frames never moved."""
    env = envs.make_env("InvertedPendulum-v5", 32)
    env.reset(seed=0)
    other = envs.make_env("InvertedPendulum-v5", 32)
    other.reset(seed=1)
    other.close()
    push = np.full(1, 3.0, np.float32)  # (the cart runs right: every frame differs from the first)
    frames = [env.step(push)[0]["pixels"].astype(int) for _ in range(4)]
    assert all(np.abs(f - frames[0]).mean() > 0.1 for f in frames[1:])
    env.close()
