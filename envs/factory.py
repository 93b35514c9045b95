"""Make robobrain tasks and wrapped third-party envs, single or vectorized, by id."""

from __future__ import annotations

import difflib
import importlib
import signal
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from robobrain.config import is_int, numeric_array
from robobrain.envs.wrappers import PixelObservation

Expert = Callable[[np.ndarray], np.ndarray]
"""A scripted expert: state [N, n] -> actions [N, A] in [-1, 1]."""


def is_robobrain_task(env_id: str) -> bool:
    return env_id.startswith("robobrain/")


def _close_env_ids(env_id: str, n: int = 3) -> list[str]:
    """Registered ids like ``env_id`` that can be made, best first; a robobrain task is compared by
    its name without the namespace (``Push-v0`` suggested Pusher-v5 before robobrain/Push-v0), case
    aside."""
    query = env_id.removeprefix("robobrain/").lower()
    scored = []
    for e, spec in gym.registry.items():
        if getattr(spec.entry_point, "__name__", "") == "_raise_mujoco_py_error":
            continue  # (Gymnasium's mujoco-py v2/v3 ids: registered, but making one only raises)
        name = e.removeprefix("robobrain/") if is_robobrain_task(e) else e
        score = difflib.SequenceMatcher(None, query, name.lower()).ratio()
        if score >= 0.6:
            scored.append((-score, e))
    return [e for _, e in sorted(scored)[:n]]


def registered_id(env_id: str) -> str:
    """The registry id of ``env_id``: for ``"module:Env-v0"`` (as ``gym.make`` reads such an id),
    the module, which registers the env, is imported first and ``"Env-v0"`` returned."""
    if ":" not in env_id:
        return env_id
    module, _, env_id = env_id.partition(":")
    if not module or module.startswith("."):  # (importlib's "Empty module name", or a TypeError)
        raise ValueError(
            f"env id {module}:{env_id}: name the module that registers it, e.g. my_pkg.envs:{env_id}"
        )
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(f"{e.name}.")):
            raise  # (the module was found: one of its own imports is missing, its traceback says which)
        raise ValueError(
            f"env id {module}:{env_id}: cannot import {module!r} to register it ({e}); is it on PYTHONPATH?"
        ) from e
    return env_id


def render_side(image_size: int) -> int:
    """Side of the frames a Gymnasium MuJoCo env made without ``width``/``height`` renders for
    ``image_size`` pixels: twice it and at least 128, at most the env's own 480x480 default. Area-
    resized, they come within ~0.1-0.4 grey levels on average of frames resized from 480x480, at
    3-8x the steps per second (InvertedPendulum, Reacher; HalfCheetah, with its fine checkered floor
    and shadows: ~2-3 grey levels, ~1.5x; bench/RESULTS.md)."""
    from gymnasium.envs.mujoco.mujoco_env import DEFAULT_SIZE

    return min(DEFAULT_SIZE, max(128, 2 * image_size))


def _render_size_kwargs(env_id: str, image_size: int, kwargs: dict[str, Any]) -> dict[str, int]:
    """``width``/``height`` for one of Gymnasium's own MuJoCo envs made without them; none for other
    envs (a user's MujocoEnv subclass may take neither, or have a size of its own)."""
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    given = {**gym.spec(env_id).kwargs, **kwargs}
    if not is_int(image_size) or image_size < 1 or "width" in given or "height" in given:
        return {}  # (PixelObservation refuses a bad image_size)
    try:
        cls = _env_class(env_id)
    except ImportError:
        return {}  # (gym.make says it, below)
    ours = (
        isinstance(cls, type) and issubclass(cls, MujocoEnv) and cls.__module__.startswith("gymnasium.envs.")
    )
    return {"width": render_side(image_size), "height": render_side(image_size)} if ours else {}


def make_env(env_id: str, image_size: int = 64, **kwargs: Any) -> gym.Env:
    """One env with the robobrain observation dict ``{"pixels", "state"}``.

    robobrain tasks produce it themselves; any other registered env that can render
    ``rgb_array`` is wrapped in :class:`PixelObservation`. ``env_id`` may name the module that
    registers it: ``"module:Env-v0"``. Gymnasium's MuJoCo envs made without ``width``/``height``
    render at :func:`render_side` (not their 480x480 default).
    """
    env_id = registered_id(env_id)
    if env_id not in gym.registry:
        close = _close_env_ids(env_id)
        hint = f"did you mean {' or '.join(close)}?" if close else "is the package registering it imported?"
        raise ValueError(f"unknown env id {env_id!r}; {hint}")
    if kwargs.get("render_mode", "rgb_array") != "rgb_array":
        raise ValueError(f"render_mode={kwargs['render_mode']!r}: the pixel observations need 'rgb_array'")
    kwargs.pop("render_mode", None)
    if is_robobrain_task(env_id):
        return gym.make(env_id, image_size=image_size, render_mode="rgb_array", **kwargs)
    kwargs = {**_render_size_kwargs(env_id, image_size, kwargs), **kwargs}
    try:
        env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    except ImportError as e:  # e.g. Gymnasium's mujoco-py v2/v3 envs, registered but gone
        raise ValueError(f"{env_id} cannot be made here: {e}") from e
    return PixelObservation(env, image_size)


def make_vector_env(
    env_id: str,
    num_envs: int,
    image_size: int = 64,
    mode: Literal["sync", "async"] = "sync",
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of :func:`make_env`, auto-resetting on the step after an episode ends
    (Gymnasium's ``NEXT_STEP`` mode: that step's action is ignored and it returns the reset
    observation)."""
    if not is_int(num_envs) or num_envs < 1:  # (True made one env; 2.0 failed deep in a range())
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    fns = [partial(make_env, env_id, image_size, **kwargs) for _ in range(num_envs)]
    autoreset = gym.vector.AutoresetMode.NEXT_STEP
    if mode == "sync":
        return CheckedSyncVectorEnv(fns, autoreset_mode=autoreset)
    if mode == "async":
        return CheckedAsyncVectorEnv(fns, autoreset_mode=autoreset)
    raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")


def check_batch_actions(actions: Any, space: gym.Space, num_envs: int) -> None:
    """Refuse a batch of Box actions of the wrong shape or with NaN/inf, before any env steps:
    otherwise the envs before the bad row would step and the caller would only see the error (and
    an async worker that raised is shut down)."""
    if not isinstance(space, gym.spaces.Box):
        return
    a = numeric_array(actions, "actions")  # (strings failed in isfinite; complex lost its imaginary part)
    if a.shape != (num_envs, *space.shape):
        raise ValueError(f"actions must have shape {(num_envs, *space.shape)}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        rows = np.flatnonzero(~np.isfinite(a.reshape(num_envs, -1)).all(axis=1)).tolist()
        raise ValueError(f"actions must be finite; envs {rows} got NaN or inf")


class CheckedSyncVectorEnv(gym.vector.SyncVectorEnv):
    """``SyncVectorEnv`` that checks the whole action batch first (:func:`check_batch_actions`)."""

    def step(self, actions: Any) -> Any:
        check_batch_actions(actions, self.single_action_space, self.num_envs)
        return super().step(actions)


def _worker_deaf_to_ctrl_c(*args: Any) -> None:
    """Gymnasium's async worker, ignoring SIGINT: Ctrl-C reaches the whole process group, and each
    worker printed the traceback of wherever it was (``mj_step``, a pipe read) as Gymnasium's
    "Received the following error from Worker-N". The parent alone handles it and closes them."""
    from gymnasium.vector.async_vector_env import _async_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _async_worker(*args)


class CheckedAsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """``AsyncVectorEnv`` that checks the whole action batch first (:func:`check_batch_actions`);
    its workers leave Ctrl-C to the parent process (:func:`_worker_deaf_to_ctrl_c`)."""

    def __init__(self, env_fns: Any, **kwargs: Any) -> None:
        super().__init__(env_fns, worker=kwargs.pop("worker", _worker_deaf_to_ctrl_c), **kwargs)

    def step_async(self, actions: Any) -> None:
        check_batch_actions(actions, self.single_action_space, self.num_envs)
        super().step_async(actions)

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        with warnings.catch_warnings():  # (closing after Ctrl-C waits for the step it cut short)
            warnings.filterwarnings("ignore", message=".*Calling `close` while waiting for a pending call")
            super().close_extras(timeout, terminate)


def _env_class(env_id: str) -> Any:
    env_id = registered_id(env_id)
    if env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}")
    entry = gym.spec(env_id).entry_point
    return gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry


def get_state_layout(env_id: str | None) -> dict[str, slice] | None:
    """Name -> slice of the parts of a robobrain task's state vector (or of another env's whose class
    declares ``state_layout``); None for other envs."""
    if env_id is None or registered_id(env_id) not in gym.registry:
        return None
    layout = getattr(_env_class(env_id), "state_layout", None)
    return dict(layout) if layout is not None else None


def get_expert(env_id: str) -> Expert:
    """The scripted expert shipped with a robobrain task."""
    expert = getattr(_env_class(env_id), "expert", None)
    if expert is None:
        raise ValueError(
            f"{env_id!r} ships no scripted expert (the robobrain tasks do; --policy random acts on any env)"
        )
    return expert
