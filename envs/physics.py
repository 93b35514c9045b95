"""Named physics queries on the shared scene, kept apart from task logic (dm_control style)."""

from __future__ import annotations

import mujoco
import numpy as np

BLOCK_HALF_SIZE = 0.025
"""Half the edge of the cube in push and pick-and-place (m)."""
FINGER_OPEN = 0.04
"""Finger opening target (each side, m) for a fully open gripper."""


STATE_BASE = {
    "gripper_pos": slice(0, 3),
    "gripper_vel": slice(3, 6),
    "finger": slice(6, 7),
    "goal": slice(7, 10),
}
STATE_BLOCK = {"block_pos": slice(10, 13), "block_quat": slice(13, 17), "block_vel": slice(17, 20)}


def _dist(state: np.ndarray, a: str, b: str) -> np.ndarray:
    layout = {**STATE_BASE, **STATE_BLOCK}
    return np.linalg.norm(state[..., layout[a]] - state[..., layout[b]], axis=-1)


def gripper_to_goal(state: np.ndarray) -> np.ndarray:
    """[..., n] -> [...] distance (m) from the grip point to the goal."""
    return _dist(state, "gripper_pos", "goal")


def gripper_to_block(state: np.ndarray) -> np.ndarray:
    return _dist(state, "gripper_pos", "block_pos")


def block_to_goal(state: np.ndarray) -> np.ndarray:
    return _dist(state, "block_pos", "goal")


def block_grasped(state: np.ndarray) -> np.ndarray:
    """The block sits between the fingers and the fingers press on it: [..., n] -> bool [...]."""
    rel = state[..., STATE_BLOCK["block_pos"]] - state[..., STATE_BASE["gripper_pos"]]
    between = (np.abs(rel[..., 0]) < 0.015) & (np.abs(rel[..., 1]) < 0.02) & (np.abs(rel[..., 2]) < 0.025)
    return between & (state[..., STATE_BASE["finger"]][..., 0] < BLOCK_HALF_SIZE + 0.002)


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
        self._zone_site = model.site("goal_zone").id
        self.has_block = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "block") >= 0
        if self.has_block:
            self._block_qpos = model.jnt_qposadr[jid("block").id]
            self._block_dof = model.jnt_dofadr[jid("block").id]

    # --- queries -------------------------------------------------------------------------
    def finger_opening(self) -> float:
        """Mean opening of the two fingers from the centre line (m): 0 closed, 0.04 open."""
        return float(self.data.qpos[self._finger_qpos].mean())

    def goal_pos(self) -> np.ndarray:
        """Goal marker position: [3]."""
        return self.model.site_pos[self._goal_site].copy()

    def state_vector(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """The task state vector from physics arrays, batched over leading dims.

        qpos: [..., nq], qvel: [..., nv] -> float32 [..., n]: gripper pos (3), gripper vel (3), finger
        opening (1), goal (3), then block pos (3), quat (4), linear vel (3) when there is a block.
        """
        lead = qpos.shape[:-1]
        parts = [
            qpos[..., self._grip_qpos],
            qvel[..., self._grip_dof],
            qpos[..., self._finger_qpos].mean(-1, keepdims=True),
            np.broadcast_to(self.goal_pos(), (*lead, 3)),
        ]
        if self.has_block:
            parts += [
                qpos[..., self._block_qpos : self._block_qpos + 7],
                qvel[..., self._block_dof : self._block_dof + 3],
            ]
        return np.concatenate(parts, axis=-1).astype(np.float32)

    # --- writes --------------------------------------------------------------------------
    def set_gripper(self, pos: np.ndarray, opening: float) -> None:
        self.data.qpos[self._grip_qpos] = pos
        self.data.qpos[self._finger_qpos] = opening

    def set_block(self, pos: np.ndarray) -> None:
        self.data.qpos[self._block_qpos : self._block_qpos + 3] = pos
        self.data.qpos[self._block_qpos + 3 : self._block_qpos + 7] = (1.0, 0.0, 0.0, 0.0)

    def set_goal(self, pos: np.ndarray) -> None:
        """Move the goal marker to pos [3] and its success zone on the table under it."""
        self.model.site_pos[self._goal_site] = pos
        self.model.site_pos[self._zone_site, :2] = pos[:2]
