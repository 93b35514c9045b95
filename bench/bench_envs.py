"""Environment throughput: rendered steps/s at 64 px, with the peers measured in the same run.

    python bench/bench_envs.py [--seconds 3] [--image-size 64]

Rows: each robobrain task (single env; vector env of 2, sync and async), the raw loop on the
same scene (``mujoco.Renderer`` + ``mj_step(nstep=frame_skip)`` + the ``mj_kinematics`` and
``mj_camlight`` each env step makes before its frame, no Python env around it), Gymnasium's
``Pusher-v5`` rendering at the same size, and Gymnasium's ``InvertedPendulum-v5`` and ``Reacher-v5``
through ``make_env`` (``PixelObservation``) as it renders them (``render_side``) and at their own
480x480 default, area-resized to the image size either way. The ratio column is steps/s divided by
the raw loop's, timed again right before each row (the machine's speed drifts over a run), so it
survives the machine's run-to-run noise better than the absolute numbers; the raw row shows the
median of those timings and their range.
A single env's reset is timed inside the step that ended its episode (not counted as a step); a
vector env's autoreset step (Gymnasium's NEXT_STEP mode: a reset, no physics) counts as ``num_envs``
steps, as SB3's step counter does.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np
from machine import describe  # bench/machine.py (the script's folder is on sys.path)

import robobrain.envs as envs
from robobrain.envs.base import ASSETS, ManipulationEnv
from robobrain.envs.factory import render_side


def gl_renderer() -> str:
    """The OpenGL renderer MuJoCo draws with (``llvmpipe`` on the CPU; a GPU's name where EGL found
    one: a GPU machine's frames are rendered there, so its CPU alone does not describe the row)."""
    from OpenGL import GL  # (PyOpenGL: a dependency of mujoco's own rendering)

    ctx = mujoco.GLContext(16, 16)
    try:
        ctx.make_current()
        return " ".join(GL.glGetString(e).decode() for e in (GL.GL_RENDERER, GL.GL_VENDOR))
    finally:
        ctx.free()


def timed(step, seconds: float) -> float:
    """Calls/s of ``step()`` (returns the number of env steps it made) over ~``seconds``."""
    step()  # warm up (renderer creation, first frame)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        n += step()
    return n / elapsed


def bench_env(env_id: str, size: int, seconds: float, **kwargs: int) -> float:
    """A single env of ``make_env`` (``kwargs``: e.g. a Gymnasium env's width/height)."""
    env = envs.make_env(env_id, image_size=size, **kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high

    def step() -> int:
        _, _, term, trunc, _ = env.step(rng.uniform(low, high).astype(np.float32))
        if term or trunc:
            env.reset()
        return 1

    try:
        return timed(step, seconds)
    finally:
        env.close()


def bench_vector(env_id: str, size: int, seconds: float, mode: str) -> float:
    vec = envs.make_vector_env(env_id, 2, image_size=size, mode=mode)
    vec.reset(seed=0)
    rng = np.random.default_rng(0)

    def step() -> int:
        vec.step(rng.uniform(-1, 1, vec.action_space.shape).astype(np.float32))
        return vec.num_envs

    try:
        return timed(step, seconds)
    finally:
        vec.close()


def bench_raw(size: int, seconds: float) -> float:
    model = mujoco.MjModel.from_xml_path(str(ASSETS / "push.xml"))
    data = mujoco.MjData(model)
    renderer = mujoco.Renderer(model, size, size)
    rng = np.random.default_rng(0)
    data.qpos[2] = 0.12

    def step() -> int:
        data.ctrl[:3] = rng.uniform(-0.5, 0.5, 3)
        mujoco.mj_step(model, data, nstep=ManipulationEnv.frame_skip)
        # as the env's step: poses brought to the final qpos, so the frame shows the state
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        renderer.update_scene(data, camera="front")
        renderer.render()
        return 1

    try:
        return timed(step, seconds)
    finally:
        renderer.close()


def bench_pusher(size: int, seconds: float) -> float:
    env = gym.make("Pusher-v5", render_mode="rgb_array", width=size, height=size)
    env.reset(seed=0)

    def step() -> int:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        env.render()
        if term or trunc:
            env.reset()
        return 1

    try:
        return timed(step, seconds)
    finally:
        env.close()


def frame_difference(env_id: str, size: int, steps: int = 50) -> float:
    """Mean |difference| in grey levels (0-255) between ``make_env``'s frames and those it resizes
    from 480x480 renders, over ``steps`` steps of the same random actions from the same reset."""
    default, full = envs.make_env(env_id, image_size=size), envs.make_env(env_id, size, width=480, height=480)
    rng = np.random.default_rng(0)
    diffs = []
    try:
        (a, _), (b, _) = default.reset(seed=0), full.reset(seed=0)
        for _ in range(steps):
            diffs.append(np.abs(a["pixels"].astype(np.float32) - b["pixels"]).mean())
            action = rng.uniform(default.action_space.low, default.action_space.high).astype(np.float32)
            a, _, term, trunc, _ = default.step(action)
            b, *_ = full.step(action)
            if term or trunc:
                (a, _), (b, _) = default.reset(seed=1), full.reset(seed=1)
        return float(np.mean(diffs))
    finally:
        default.close()
        full.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    size, sec = args.image_size, args.seconds

    benches: list[tuple[str, Callable[[], float]]] = []
    for env_id in envs.TASKS:
        benches.append((f"{env_id} single env", partial(bench_env, env_id, size, sec)))
        benches.append((f"{env_id} vector x2 sync", partial(bench_vector, env_id, size, sec, "sync")))
        benches.append((f"{env_id} vector x2 async", partial(bench_vector, env_id, size, sec, "async")))
    benches.append(("gymnasium Pusher-v5 (default visuals)", partial(bench_pusher, size, sec)))
    for env_id in ("InvertedPendulum-v5", "Reacher-v5"):
        benches.append(
            (f"make_env {env_id} ({render_side(size)} px render)", partial(bench_env, env_id, size, sec))
        )
        full = partial(bench_env, env_id, size, sec, width=480, height=480)
        benches.append((f"make_env {env_id} (480 px render)", full))
    rows, raws = [], []  # (name, steps/s, steps/s / the raw loop's timed just before)
    for name, bench in benches:
        raws.append(bench_raw(size, sec))
        rate = bench()
        rows.append((name, rate, rate / raws[-1]))
    raw = float(np.median(raws))
    raw_name = f"raw mujoco.Renderer + mj_step (push scene; {min(raws):.0f}-{max(raws):.0f})"
    rows.insert(0, (raw_name, raw, 1.0))
    notes = []
    for env_id in ("InvertedPendulum-v5", "Reacher-v5"):
        diff = frame_difference(env_id, size)
        notes.append(f"# {env_id}: {render_side(size)} px renders resized to {size} px differ from 480 px "
                     f"ones by {diff:.2f} grey levels on average (50 steps, same actions)")  # fmt: skip

    print(f"# env throughput at {size} px, {describe('cpu')}, MuJoCo {mujoco.__version__}")
    print(f"# MUJOCO_GL={os.environ.get('MUJOCO_GL')} ({gl_renderer()}) "
          f"LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS')}")  # fmt: skip
    print(f"| {'what':<58} | {'steps/s':>8} | {'vs raw':>6} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 8}|")
    for name, rate, ratio in rows:
        print(f"| {name:<58} | {rate:>8.0f} | {ratio:>6.2f} |")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
