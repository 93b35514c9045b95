"""The Gymnasium environment all robobrain manipulation tasks share.

A task subclasses :class:`ManipulationEnv` and supplies its MJCF file, how a reset draws the
initial gripper / block / goal, its reward terms, its success test and a scripted expert.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from robobrain.config import is_int, numeric_array
from robobrain.envs.physics import FINGER_OPEN, STATE_BASE, Scene

ASSETS = Path(__file__).parent / "assets"

CONTROL_DT = 0.05
"""Seconds per control step (frame_skip x timestep)."""
MAX_SPEED = 0.5
"""End-effector speed (m/s) an action of 1 commands; matches the velocity actuators' ctrlrange. The
grip joints' damping (2) against the servos' gain (40) makes the steady speed 40/42 of it (0.476 m/s)."""
ACTION_STEP = MAX_SPEED * CONTROL_DT
"""Metres per control step one unit of action commands (the experts' gain); the gripper moves ~5 %
less at steady speed (2.38 cm measured) and 1.6 cm in a first step from rest."""

_UNSTABLE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
)
MAX_ABS_QPOS_QVEL = 1e3
"""Beyond this (metres, radians, per second) the simulation has diverged even if MuJoCo has not
warned yet: its own bound (1e10) is checked only at the start of the next step."""
_ROLLBACK_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


class ManipulationEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Table-top manipulation with a Cartesian gripper, observed from a fixed camera.

    Observation: ``{"pixels": uint8[H, W, 3], "state": float32[n]}`` where the state layout is
    ``state_layout`` (gripper position / velocity, finger opening, goal, then the block's pose
    and velocity where the task has one). Action: ``float32[A]`` in [-1, 1], the end-effector
    velocity as a fraction of ``MAX_SPEED`` (so one step moves at most ``ACTION_STEP``), plus a
    gripper command (-1 closed, +1 open) where ``action_dim == 4``. Out-of-range actions are
    clipped; a wrong shape or a non-finite value raises ``ValueError`` and leaves the state alone.

    A step whose physics diverge (MuJoCo's bad qacc/qpos/qvel warnings, or non-finite state) is
    rolled back to the state before it and returned truncated with ``info["sim_unstable"] = True``,
    so MuJoCo's silent reset never shows up as a teleport in the data.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}
    xml_file: ClassVar[str]
    action_dim: ClassVar[int] = 3
    state_layout: ClassVar[dict[str, slice]] = STATE_BASE
    frame_skip: ClassVar[int] = 25
    """Physics steps per control step (timestep 2 ms, so control runs at 20 Hz)."""
    success_threshold: ClassVar[float] = 0.05

    def __init__(self, image_size: int = 64, render_mode: str | None = None, camera: str = "front") -> None:
        if not is_int(image_size) or not 8 <= image_size <= 480:
            raise ValueError(f"image_size must be an int in [8, 480], got {image_size!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.image_size = int(image_size)
        self.render_mode = render_mode
        self.camera = camera
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / self.xml_file))
        self.data = mujoco.MjData(self.model)
        self.scene = Scene(self.model, self.data)
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"unknown camera {camera!r} in {self.xml_file}")
        # The planners map actions to controls with the module constants: the MJCF must agree.
        self.dt = self.model.opt.timestep * self.frame_skip
        speed = float(self.model.actuator("vel_x").ctrlrange[1])
        if not (np.isclose(self.dt, CONTROL_DT) and np.isclose(speed, MAX_SPEED)):
            raise ValueError(
                f"{self.xml_file}: control dt {self.dt} / max speed {speed} differ from "
                f"CONTROL_DT {CONTROL_DT} / MAX_SPEED {MAX_SPEED}"
            )
        n_state = max(s.stop for s in self.state_layout.values())
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (n_state,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self._renderer: mujoco.Renderer | None = None
        self._frame: np.ndarray | None = None
        # What a rolled-back step restores: everything mj_step integrates from (qpos, qvel, act, time,
        # ctrl, the solver's warm start, ...).
        self._saved = np.empty(mujoco.mj_stateSize(self.model, _ROLLBACK_STATE))

    # --- to be supplied by a task ----------------------------------------------------------
    def _sample_episode(self, rng: np.random.Generator) -> None:
        """Place the gripper, the objects and the goal for a new episode."""
        raise NotImplementedError

    @classmethod
    def reward_terms(cls, state: np.ndarray) -> dict[str, np.ndarray]:
        """Named reward terms from state vectors [..., n] -> {name: [...]}; the reward is their sum.

        A pure function of the state, so a planner can score simulated futures exactly as the env does.
        """
        raise NotImplementedError

    @classmethod
    def success(cls, state: np.ndarray) -> np.ndarray:
        """Success flags from state vectors [..., n] -> bool [...]."""
        raise NotImplementedError

    @classmethod
    def action_to_ctrl(cls, action: np.ndarray) -> np.ndarray:
        """Actions [..., A] in [-1, 1] -> MuJoCo controls [..., nu] (gripper velocity, finger targets).

        Stateless: the controls depend on the action alone, so a batched ``mujoco.rollout`` of the same
        actions reproduces ``step`` exactly.
        """
        action = np.asarray(action, dtype=np.float64)
        ctrl = np.zeros((*action.shape[:-1], 5))
        ctrl[..., :3] = action[..., :3] * MAX_SPEED
        if cls.action_dim == 4:
            ctrl[..., 3:5] = ((action[..., 3:4] + 1.0) * 0.5 * FINGER_OPEN).repeat(2, -1)
        return ctrl

    def _evaluate(self, state: np.ndarray) -> tuple[float, dict[str, Any]]:
        terms = {k: float(v) for k, v in self.reward_terms(state).items()}
        return sum(terms.values()), {**terms, "success": bool(self.success(state))}

    # --- Gymnasium API -----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self._sample_episode(self.np_random)
        self.data.ctrl[:] = 0.0
        self.data.ctrl[3:5] = self.scene.finger_opening()
        mujoco.mj_forward(self.model, self.data)
        state = self.state()
        _, info = self._evaluate(state)
        return self._observation(state), {**info, "sim_unstable": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = self._check_action(action)
        mujoco.mj_getState(self.model, self.data, self._saved, _ROLLBACK_STATE)
        self.data.ctrl[:] = self.action_to_ctrl(action)
        for w in _UNSTABLE_WARNINGS:  # MuJoCo's auto-reset sets a fired warning back to 1, so count afresh
            self.data.warning[w].number = 0
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)

        unstable = self._became_unstable()
        if unstable:
            mujoco.mj_setState(self.model, self.data, self._saved, _ROLLBACK_STATE)
            mujoco.mj_forward(self.model, self.data)
        else:
            # mj_step leaves body, geom and camera poses as they were before its last substep's
            # integration: bring them to qpos, so the frame shows the state returned beside it. (The
            # next mj_step recomputes them anyway, so the trajectory is unchanged.)
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_camlight(self.model, self.data)
        state = self.state()
        reward, info = self._evaluate(state)
        info["sim_unstable"] = unstable
        return self._observation(state), float(reward), False, unstable, info

    def render(self) -> np.ndarray | None:
        """The latest camera frame, uint8[H, W, 3] (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'.")
            return None
        if self._frame is None:
            self._frame = self._render_pixels()
        return self._frame.copy()

    def __getstate__(self) -> dict[str, Any]:
        """For copy.deepcopy and pickle: all but the renderer (a GL context), which the copy makes
        afresh at its first frame. MjModel and MjData pickle themselves."""
        return {**self.__dict__, "_renderer": None}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- helpers ------------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """The proprioceptive + object state vector, float32[n] (layout: ``state_layout``)."""
        return self.scene.state_vector(self.data.qpos, self.data.qvel)

    def _observation(self, state: np.ndarray) -> dict[str, np.ndarray]:
        self._frame = self._render_pixels()
        return {"pixels": self._frame.copy(), "state": state}

    def _render_pixels(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, camera=self.camera)
        return self._renderer.render()

    def _check_action(self, action: np.ndarray) -> np.ndarray:
        a = numeric_array(action, "action")
        if a.shape != (self.action_dim,):
            raise ValueError(f"action must have shape ({self.action_dim},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        return np.clip(a, -1.0, 1.0)

    def _became_unstable(self) -> bool:
        """A divergence warning during this step, or a state that is non-finite or out of bounds."""
        if any(self.data.warning[w].number > 0 for w in _UNSTABLE_WARNINGS):
            return True
        q = np.concatenate([self.data.qpos, self.data.qvel])
        return not (np.all(np.isfinite(q)) and np.all(np.abs(q) < MAX_ABS_QPOS_QVEL))


def move_toward(pos: np.ndarray, target: np.ndarray, step: float, gain: float = 1.0) -> np.ndarray:
    """Velocity action (in [-1, 1]) that moves ``pos`` toward ``target``.

    A horizontal move too long for one step is scaled down as a whole, keeping its direction on the
    table (clipping each axis bent a long push toward 45°); the vertical move is clipped on its own,
    so a climb or descent does not slow the horizontal alignment (scaling all three together cost
    PickPlace's expert 2.5 points under noise 0.3, see bench/RESULTS.md).

    pos, target: [N, 3]; step: metres moved per unit action in one control step. Returns [N, 3].
    """
    action = gain * (target - pos) / step
    xy = action[..., :2] / np.maximum(np.abs(action[..., :2]).max(axis=-1, keepdims=True), 1.0)
    return np.concatenate([xy, np.clip(action[..., 2:], -1.0, 1.0)], axis=-1)
