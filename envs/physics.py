"""Named physics queries on the shared scene, kept apart from task logic (dm_control style)."""

from __future__ import annotations

import mujoco
import numpy as np

BLOCK_HALF_SIZE = 0.025
"""Half the edge of the cube in push and pick-and-place (m)."""
FINGER_OPEN = 0.04
"""Finger opening target (each side, m) for a fully open gripper."""


class Scene:
    """Reads and writes the named parts of a robobrain scene in a `mujoco.MjData`."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        self.model = model
        self.data = data
        jid = model.joint
        self._grip_qpos = np.array([model.jnt_qposadr[jid(n).id] for n in ("grip_x", "grip_y", "grip_z")])
        self._grip_dof = np.array([model.jnt_dofadr[jid(n).id] for n in ("grip_x", "grip_y", "grip_z")])
        self._finger_qpos = np.array([model.jnt_qposadr[jid(n).id] for n in ("finger_left", "finger_right")])
        self._goal_site = model.site("goal").id
        self.has_block = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "block") >= 0
        if self.has_block:
            self._block_qpos = model.jnt_qposadr[jid("block").id]
            self._block_dof = model.jnt_dofadr[jid("block").id]

    # --- queries -------------------------------------------------------------------------
    def gripper_pos(self) -> np.ndarray:
        """Grip point (between the fingers) in world coordinates: [3]."""
        return self.data.qpos[self._grip_qpos].copy()

    def gripper_vel(self) -> np.ndarray:
        """Grip point linear velocity: [3]."""
        return self.data.qvel[self._grip_dof].copy()

    def finger_opening(self) -> float:
        """Mean opening of the two fingers from the centre line (m): 0 closed, 0.04 open."""
        return float(self.data.qpos[self._finger_qpos].mean())

    def goal_pos(self) -> np.ndarray:
        """Goal marker position: [3]."""
        return self.model.site_pos[self._goal_site].copy()

    def block_pos(self) -> np.ndarray:
        """Block centre: [3]."""
        return self.data.qpos[self._block_qpos : self._block_qpos + 3].copy()

    def block_quat(self) -> np.ndarray:
        """Block orientation quaternion (w, x, y, z): [4]."""
        return self.data.qpos[self._block_qpos + 3 : self._block_qpos + 7].copy()

    def block_vel(self) -> np.ndarray:
        """Block linear velocity: [3]."""
        return self.data.qvel[self._block_dof : self._block_dof + 3].copy()

    def gripper_to_goal(self) -> float:
        return float(np.linalg.norm(self.gripper_pos() - self.goal_pos()))

    def gripper_to_block(self) -> float:
        return float(np.linalg.norm(self.gripper_pos() - self.block_pos()))

    def block_to_goal(self) -> float:
        return float(np.linalg.norm(self.block_pos() - self.goal_pos()))

    def block_grasped(self) -> bool:
        """The block sits between the fingers and the fingers press on it."""
        rel = self.block_pos() - self.gripper_pos()
        between = abs(rel[0]) < 0.015 and abs(rel[1]) < 0.02 and abs(rel[2]) < 0.025
        return between and self.finger_opening() < BLOCK_HALF_SIZE + 0.002

    # --- writes --------------------------------------------------------------------------
    def set_gripper(self, pos: np.ndarray, opening: float) -> None:
        self.data.qpos[self._grip_qpos] = pos
        self.data.qpos[self._finger_qpos] = opening

    def set_block(self, pos: np.ndarray) -> None:
        self.data.qpos[self._block_qpos : self._block_qpos + 3] = pos
        self.data.qpos[self._block_qpos + 3 : self._block_qpos + 7] = (1.0, 0.0, 0.0, 0.0)

    def set_goal(self, pos: np.ndarray) -> None:
        self.model.site_pos[self._goal_site] = pos
