"""PickPlace: grasp the block and bring its centre within 5 cm of a goal; half the goals are in
the air, up to 20 cm above the table."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from robobrain.envs.base import ACTION_STEP, ManipulationEnv, move_toward
from robobrain.envs.physics import (
    BLOCK_HALF_SIZE,
    FINGER_OPEN,
    STATE_BASE,
    STATE_BLOCK,
    block_grasped,
    block_to_goal,
    gripper_to_block,
)
from robobrain.envs.push import TRAVEL_HEIGHT, sample_block_and_goal


class PickPlaceEnv(ManipulationEnv):
    """Action: end-effector velocity [3] and gripper command [1] (-1 close, +1 open).
    Reward terms: ``reward_reach`` (-0.5 x gripper-to-block distance), ``reward_grasp`` (0.25 while
    the block is held), ``reward_place`` (-block-to-goal distance), ``reward_success``."""

    xml_file = "pick_place.xml"
    action_dim = 4
    state_layout: ClassVar[dict[str, slice]] = {**STATE_BASE, **STATE_BLOCK}

    def _sample_episode(self, rng: np.random.Generator) -> None:
        start, block, goal = sample_block_and_goal(rng, goal_in_air_prob=0.5, max_goal_height=0.2)
        self.scene.set_gripper(start, opening=FINGER_OPEN)
        self.scene.set_block(block)
        self.scene.set_goal(goal)

    @classmethod
    def reward_terms(cls, state: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "reward_reach": -0.5 * gripper_to_block(state),
            "reward_grasp": 0.25 * block_grasped(state),
            "reward_place": -block_to_goal(state),
            "reward_success": cls.success(state).astype(np.float64),
        }

    @classmethod
    def success(cls, state: np.ndarray) -> np.ndarray:
        return block_to_goal(state) < cls.success_threshold

    @staticmethod
    def expert(state: np.ndarray) -> np.ndarray:
        """Scripted picker: above the block, descend open, close, carry to the goal.
        state: [N, n] -> actions [N, 4]."""
        grip = state[:, STATE_BASE["gripper_pos"]]
        finger = state[:, STATE_BASE["finger"]][:, 0]
        block = state[:, STATE_BLOCK["block_pos"]]
        goal = state[:, STATE_BASE["goal"]]
        rel = block - grip
        xy_err = np.linalg.norm(rel[:, :2], axis=1)
        held = (np.abs(rel[:, 0]) < 0.015) & (np.abs(rel[:, 1]) < 0.02) & (np.abs(rel[:, 2]) < 0.025)
        held &= finger < BLOCK_HALF_SIZE + 0.002
        above = xy_err < 0.012
        at_block = above & (np.abs(rel[:, 2]) < 0.012)
        high = grip[:, 2] > TRAVEL_HEIGHT - 0.015

        # Default: fingers open, travel above the block (climb first when low and off to the side).
        target = np.empty_like(grip)
        target[:, :2] = np.where((high | above)[:, None], block[:, :2], grip[:, :2])
        target[:, 2] = np.where(above, block[:, 2], TRAVEL_HEIGHT)
        close = at_block | held
        target[at_block] = block[at_block]
        target[held] = (grip + goal - block)[held]
        action = np.empty((len(state), 4))
        action[:, :3] = move_toward(grip, target, ACTION_STEP)
        action[:, 3] = np.where(close, -1.0, 1.0)
        return action
