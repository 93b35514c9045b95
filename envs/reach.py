"""Reach: bring the grip point within 5 cm of a goal drawn in a 30 x 30 x 20 cm workspace."""

from __future__ import annotations

import numpy as np

from robobrain.envs.base import ACTION_STEP, ManipulationEnv, move_toward
from robobrain.envs.physics import STATE_BASE, gripper_to_goal

GOAL_LOW = np.array([-0.15, -0.15, 0.05])
GOAL_HIGH = np.array([0.15, 0.15, 0.25])
MIN_START_DISTANCE = 0.10


class ReachEnv(ManipulationEnv):
    """Action: end-effector velocity [3]. Reward: ``reward_dist`` (minus the distance to the goal)
    plus ``reward_success`` (1 while within 5 cm)."""

    xml_file = "reach.xml"
    action_dim = 3

    def _sample_episode(self, rng: np.random.Generator) -> None:
        goal = rng.uniform(GOAL_LOW, GOAL_HIGH)
        while True:
            start = rng.uniform([-0.15, -0.15, 0.08], [0.15, 0.15, 0.22])
            if np.linalg.norm(start - goal) >= MIN_START_DISTANCE:
                break
        self.scene.set_gripper(start, opening=0.0)
        self.scene.set_goal(goal)

    @classmethod
    def reward_terms(cls, state: np.ndarray) -> dict[str, np.ndarray]:
        d = gripper_to_goal(state)
        return {"reward_dist": -d, "reward_success": (d < cls.success_threshold).astype(np.float64)}

    @classmethod
    def success(cls, state: np.ndarray) -> np.ndarray:
        return gripper_to_goal(state) < cls.success_threshold

    @staticmethod
    def expert(state: np.ndarray) -> np.ndarray:
        """Scripted expert: a proportional controller to the goal. state: [N, n] -> actions [N, 3]."""
        return move_toward(state[:, STATE_BASE["gripper_pos"]], state[:, STATE_BASE["goal"]], ACTION_STEP)
