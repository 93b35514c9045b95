"""Give any Gymnasium env that renders RGB the robobrain observation dict."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from robobrain.config import is_int

log = logging.getLogger(__name__)


@lru_cache(maxsize=32)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Box-filter resampling matrix [n_out, n_in]: each output pixel averages the input it covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    pix = np.arange(n_in)
    lo = np.maximum(edges[:-1, None], pix[None, :])
    hi = np.minimum(edges[1:, None], pix[None, :] + 1)
    w = np.clip(hi - lo, 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Area-resample an RGB image. image: uint8[H, W, 3] -> uint8[size, size, 3]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:  # a float frame in [0, 1] would come out black
        raise ValueError(f"expected a uint8 RGB image, got dtype {image.dtype}")
    if image.shape[:2] == (size, size):
        return image.copy()  # (a renderer may reuse its buffer for the next frame)
    wy = _area_weights(image.shape[0], size)
    wx = _area_weights(image.shape[1], size)
    out = np.einsum("ij,jkc,lk->ilc", wy, image.astype(np.float32), wx, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _with_success(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with ``success`` from ``is_success`` where only that is reported (a copy)."""
    if "success" in info or "is_success" not in info:
        return info
    return {**info, "success": bool(info["is_success"])}


def aim_free_camera(env: gym.Env) -> bool:
    """Aim a Gymnasium MuJoCo env's free camera at the model's rest pose, once per viewer; True if
    it did (the frame just rendered came from the old aim).

    Gymnasium's off-screen viewer aims its free camera, once, at the median of the geoms where they
    are at the env's first ``render()`` -- e.g. wherever Reacher's target was first drawn -- so the
    same seed gave the same state but other pixels (Reacher: 10 % of a 64 px frame's, by up to 64
    grey levels), depending on which episode an env had run first (an evaluation's episodes on
    ``--num-envs``; collected data, per env). Aimed at ``qpos0`` instead, with the env's
    ``default_camera_config`` applied again on top (as the viewer does), every env of an id sees
    through the same camera. Envs rendering from a named camera, and anything that is not a
    Gymnasium ``MujocoEnv``, are left alone.
    """
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    viewer = getattr(renderer, "viewer", None)
    cam = getattr(viewer, "cam", None)
    if (
        cam is None
        or getattr(renderer, "camera_id", None) != -1
        or getattr(viewer, "_robobrain_aimed", False)
    ):
        return False
    viewer._robobrain_aimed = True
    import mujoco

    model = renderer.model
    rest = mujoco.MjData(model)
    mujoco.mj_forward(model, rest)
    cam.lookat[:] = np.median(rest.geom_xpos, axis=0)
    cam.distance = model.stat.extent
    for key, value in (getattr(renderer, "default_cam_config", None) or {}).items():
        if isinstance(value, np.ndarray):
            getattr(cam, key)[:] = value
        else:
            setattr(cam, key, value)
    return True


def free_render_contexts(env: gym.Env) -> None:
    """Free a Gymnasium MuJoCo env's MuJoCo render contexts (its GL textures, buffers and lists) in
    its own GL context. Left to the garbage collector after ``close()``, an ``MjrContext`` frees them
    in whichever context is current then -- another env's, whose objects of the same ids it deletes:
    that env rendered frames missing bodies from then on (InvertedPendulum: the cart and the pole)."""
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    viewers = dict(getattr(renderer, "_viewers", None) or {})
    for viewer in viewers.values():
        con = getattr(viewer, "con", None)
        if con is None or not callable(getattr(viewer, "make_context_current", None)):
            continue
        viewer.make_context_current()
        con.free()


class PixelObservation(
    gym.ObservationWrapper[dict[str, np.ndarray], Any, Any], gym.utils.RecordConstructorArgs
):
    """Observation ``{"pixels": uint8[S, S, 3], "state": float32[n]}`` for any env.

    ``pixels`` is ``env.render()`` area-resized to ``image_size``; ``state`` is the env's own
    observation, flattened. The env must have been made with ``render_mode="rgb_array"``. An env
    that reports ``info["is_success"]`` (Gymnasium-Robotics, SB3's convention) and no
    ``info["success"]`` gets ``info["success"]`` from it, as robobrain reads success.

    A Gymnasium ``MujocoEnv``'s frame shows the bodies one physics substep behind its ``qpos`` (its
    ``render()`` draws the poses of before the last ``mj_step``; HalfCheetah-v5 at 64 px: 2.5 % of the
    pixels off by more than 8 grey levels). Left as Gymnasium renders it: bringing the poses forward
    in the env's own data would change the rewards of envs that read them before their next step
    (Reacher-v5). robobrain's own tasks render the final poses.
    """

    def __init__(self, env: gym.Env, image_size: int = 64) -> None:
        if not is_int(image_size) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        gym.utils.RecordConstructorArgs.__init__(self, image_size=image_size)
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"PixelObservation needs an env made with render_mode='rgb_array', got {env.render_mode!r}"
            )
        self.image_size = int(image_size)
        self._said_aspect = False
        self._closed = False
        self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}  # its frames are the pixels
        n_state = gym.spaces.flatdim(env.observation_space)
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (n_state,), np.float32),
            }
        )

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = super().reset(**kwargs)
        return obs, _with_success(info)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, _with_success(info)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            free_render_contexts(self.env)
        super().close()

    def __del__(self) -> None:  # (an env dropped without close(): its contexts are freed in its own)
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            free_render_contexts(self.env)
        except Exception:  # (e.g. at interpreter exit, with EGL gone)
            pass

    def observation(self, observation: Any) -> dict[str, np.ndarray]:
        # Gymnasium's MuJoCo envs make their OpenGL context current only when they create it: once
        # another env in the process had made or freed its own (an evaluation env, closed), their
        # render() returned one stale frame for ever (the online loop stored frozen episodes).
        viewer = getattr(getattr(self.env.unwrapped, "mujoco_renderer", None), "viewer", None)
        if callable(getattr(viewer, "make_context_current", None)):
            viewer.make_context_current()
        frame = self.env.render()
        if aim_free_camera(self.env):  # (once per viewer: its first frame again, from that camera)
            frame = self.env.render()
        if frame is None:
            raise RuntimeError("env.render() returned None; it must return an RGB array")
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[0] != frame.shape[1] and not self._said_aspect:
            self._said_aspect = True  # (once per env)
            name = self.env.spec.id if self.env.spec is not None else type(self.env.unwrapped).__name__
            log.warning(
                "%s renders %dx%d frames: resized to %dx%d, not cropped, so their aspect changes (make "
                "the env with equal width and height where it takes them)",
                name, frame.shape[1], frame.shape[0], self.image_size, self.image_size,
            )  # fmt: skip
        state = gym.spaces.flatten(self.env.observation_space, observation)
        return {
            "pixels": resize_image(frame, self.image_size),
            "state": np.asarray(state, dtype=np.float32).copy(),
        }
