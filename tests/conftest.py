import os

# Headless rendering for every test that renders; must be set before MuJoCo is imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "0")  # single-threaded llvmpipe: fast and fork-safe

import gymnasium as gym
import pytest

import robobrain.envs  # registers the tasks

TASK_IDS = list(robobrain.envs.TASKS)


@pytest.fixture(params=TASK_IDS)
def task_id(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def small_env(task_id: str):
    env = gym.make(task_id, image_size=32, render_mode="rgb_array")
    yield env
    env.close()
