"""The true simulator as the planner's model: the first-principles upper bound for MPC.

Candidates are rolled out from a copy of each env's physics state with ``mujoco.rollout`` and scored
with the task's own reward function of the state, so a perfect world model would plan exactly this
well. Works with any env exposing the robobrain task API (``model``, ``data``, ``frame_skip``,
``action_to_ctrl``, ``scene.state_vector``, ``reward_terms``, ``success``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np
import torch
from mujoco import rollout

from robobrain.planning.optimizers import ScoreFn


class OracleModel:
    """Scores action sequences [B, N, H, A] for B envs by simulating them; returns [B, N].

    score = sum over the horizon of discount^t times the task reward after action t (+ ``success_bonus``
    when in success), as the world-model planner scores imagined steps.
    """

    def __init__(self, success_bonus: float = 0.0, nthread: int = 2, discount: float = 1.0) -> None:
        self.success_bonus = success_bonus
        self.discount = discount
        self.nthread = max(1, nthread)
        self._datas: dict[int, list[mujoco.MjData]] = {}

    def _data_for(self, model: mujoco.MjModel) -> list[mujoco.MjData]:
        key = id(model)
        if key not in self._datas:
            self._datas[key] = [mujoco.MjData(model) for _ in range(self.nthread)]
        return self._datas[key]

    def score_fn(self, envs: Sequence[Any]) -> ScoreFn:
        """A score function planning from the envs' current physics states (snapshotted now)."""
        raws = [getattr(env, "unwrapped", env) for env in envs]
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        starts = []
        for raw in raws:
            state = np.empty(mujoco.mj_stateSize(raw.model, spec))
            mujoco.mj_getState(raw.model, raw.data, state, spec)
            starts.append(state)

        def score(actions: torch.Tensor) -> torch.Tensor:
            b, n = actions.shape[:2]
            if b != len(raws):
                raise ValueError(f"actions are for {b} envs, the oracle holds {len(raws)}")
            acts = actions.detach().cpu().double().numpy()
            out = np.empty((b, n))
            for i, raw in enumerate(raws):
                dim = raw.action_space.shape[0]
                if acts.shape[-1] != dim:  # as env.step refuses it
                    raise ValueError(f"actions have {acts.shape[-1]} dims, env {i} takes {dim}")
                # env.step refuses a NaN/inf action; MuJoCo would zero it and score the plan as if
                # it stood still, so such a candidate could win. It scores -inf instead.
                bad = ~np.isfinite(acts[i]).all(axis=(1, 2))
                out[i] = self._score_one(raw, starts[i], np.where(np.isfinite(acts[i]), acts[i], 0.0))
                out[i][bad] = -np.inf
            return torch.from_numpy(out).to(actions.device, torch.float32)

        return score

    def _score_one(self, raw: Any, start: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """actions [N, H, A] -> returns [N]."""
        model, fs = raw.model, raw.frame_skip
        n = actions.shape[0]
        ctrl = np.repeat(raw.action_to_ctrl(actions), fs, axis=1)  # [N, H*fs, nu]
        states, _ = rollout.rollout(
            model,
            self._data_for(model),
            np.repeat(start[None], n, axis=0),
            ctrl,
            control_spec=mujoco.mjtState.mjSTATE_CTRL,
        )
        states = states[:, fs - 1 :: fs]  # the state after each action: [N, H, nstate]
        q0 = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_TIME)
        v0 = q0 + model.nq
        qpos, qvel = states[..., q0:v0], states[..., v0 : v0 + model.nv]
        task_state = raw.scene.state_vector(qpos, qvel)  # [N, H, n]
        reward = sum(raw.reward_terms(task_state).values())
        reward = reward + self.success_bonus * raw.success(task_state)
        reward = np.where(np.isfinite(reward), reward, -np.inf)
        return (reward * self.discount ** np.arange(reward.shape[1])).sum(axis=1)
