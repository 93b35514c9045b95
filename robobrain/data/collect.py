"""Roll a policy out in a vector env and store complete episodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from robobrain.data.store import Episode, EpisodeStore

if TYPE_CHECKING:  # the core does not depend on policies/ at run time
    from robobrain.policies import Policy


class EpisodeBuilder:
    """Accumulates one env's transitions until its episode ends."""

    def __init__(self, pixels: np.ndarray, state: np.ndarray) -> None:
        self.pixels = [pixels]
        self.state = [state]
        self.action: list[np.ndarray] = []
        self.reward: list[float] = []
        self.success: list[bool] = []

    def add(
        self, action: np.ndarray, reward: float, success: bool, pixels: np.ndarray, state: np.ndarray
    ) -> None:
        self.action.append(action)
        self.reward.append(reward)
        self.success.append(success)
        self.pixels.append(pixels)
        self.state.append(state)

    def finish(self, terminated: bool, meta: dict[str, Any]) -> Episode:
        return Episode(
            pixels=np.stack(self.pixels).astype(np.uint8),
            state=np.stack(self.state).astype(np.float32),
            action=np.stack(self.action).astype(np.float32),
            reward=np.asarray(self.reward, dtype=np.float32),
            success=np.asarray(self.success, dtype=bool),
            terminated=terminated,
            meta=meta,
        )


class CollectResult(NamedTuple):
    """names: stored episode files in the order the episodes ended; env_steps: transitions the envs
    executed (stored ones, plus those of episodes cut off when ``num_episodes`` was reached)."""

    names: list[str]
    env_steps: int


def _reports(info: dict[str, Any], key: str, i: int) -> bool:
    """Whether env ``i`` of a vector env's step returned ``info[key]`` (Gymnasium's ``_key`` mask)."""
    return key in info and bool(info.get(f"_{key}", np.ones(i + 1, bool))[i])


def _info_flag(info: dict[str, Any], key: str, i: int) -> bool:
    return bool(info[key][i]) if _reports(info, key, i) else False


def _env_id(envs: gym.vector.VectorEnv) -> str | None:
    """The registered id of the vector env's envs (``envs.spec`` is None for a vector env)."""
    try:
        spec = envs.get_attr("spec")[0]
    except Exception:  # (an env without a spec, or a vector env that cannot get attributes)
        return None
    return getattr(spec, "id", None)


def check_storable_actions(space: gym.Space) -> None:
    """Episodes hold 1-D Box actions [T, A] (a world model learns from them); refuse other spaces."""
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):  # (it failed in the env's step)
        raise ValueError(f"collect_episodes stores 1-D Box actions [T, A], got {space}")


def collect_episodes(
    envs: gym.vector.VectorEnv,
    policy: Policy,
    store: EpisodeStore,
    num_episodes: int,
    seed: int | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    whole_step: bool = False,
) -> CollectResult:
    """Run ``policy`` in ``envs`` until ``num_episodes`` episodes have ended; store each.

    ``whole_step``: also store the episodes that end on the step the last one needed ends, so more
    than ``num_episodes`` may come back (the online loop: with episodes of one length, no env's
    steps are thrown away when ``num_episodes`` is not a multiple of the env count). Steps of an
    episode cut off unfinished are counted in ``env_steps`` either way: they were simulated.

    ``envs`` must auto-reset in Gymnasium's NEXT_STEP mode (as :func:`robobrain.envs.make_vector_env`
    makes them): the step after an episode ends returns the reset observation and is not a
    transition, so it starts a new episode instead of being appended to the old one.
    Non-finite rewards or state observations stop collection with a ``FloatingPointError`` naming
    the env and step (nothing of that episode is stored), or the reset that returned them.

    ``meta`` without ``env_id`` gets the envs' registered id (the trainer reads the goal layout from
    it; without it, a world model of a robobrain task trained without its goal input).
    Each episode's meta gets ``env_index`` (i: the vector env's i-th env, first reset with
    ``seed + i``) and ``reset_index`` (k: the k-th reset of that env after it, 0 for the seeded one):
    an episode of a robobrain task starts where ``env.reset(seed=seed + i)`` and k plain resets after
    it leave that env (its tasks draw from the env's generator at reset only).
    """
    mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    if mode != gym.vector.AutoresetMode.NEXT_STEP:
        raise ValueError(f"collect_episodes needs a NEXT_STEP auto-resetting vector env, got {mode}")
    space = envs.single_action_space
    check_storable_actions(space)
    n = envs.num_envs
    obs, _ = envs.reset(seed=seed)
    for i in range(n):
        _check_reset_state(obs["state"], i, "nothing was stored")
    policy.reset(n)
    builders = [EpisodeBuilder(obs["pixels"][i], obs["state"][i]) for i in range(n)]
    resetting = np.zeros(n, dtype=bool)
    resets = np.zeros(n, dtype=int)  # per env: resets since the seeded one
    names: list[str] = []
    env_steps = 0
    base_meta = dict(meta or {})
    if "env_id" not in base_meta:  # (a world model learns its goal input only from named episodes)
        base_meta["env_id"] = _env_id(envs)
    bounds = (space.low, space.high)
    with tqdm(total=num_episodes, desc="collect", unit="ep", disable=not progress) as bar:
        while len(names) < num_episodes:
            action = np.asarray(policy.act(obs), dtype=np.float32)
            obs, reward, terminated, truncated, info = envs.step(action)
            action = np.clip(action, *bounds).astype(np.float32)  # what the env ran (it clips)
            done = terminated | truncated
            for i in range(n):
                if resetting[i]:  # (the episode before it ended, stored or left out, last step)
                    _check_reset_state(obs["state"], i, "the episodes before it were kept as they were")
                    builders[i] = EpisodeBuilder(obs["pixels"][i], obs["state"][i])
                    resets[i] += 1
                    continue
                if not (np.isfinite(reward[i]) and np.all(np.isfinite(obs["state"][i]))):
                    raise FloatingPointError(
                        f"env {i} returned a non-finite reward or state at step {len(builders[i].action)} "
                        f"of its episode (reward {reward[i]}); nothing of that episode was stored"
                    )
                env_steps += 1
                builders[i].add(
                    action[i],
                    float(reward[i]),
                    _info_flag(info, "success", i),
                    obs["pixels"][i],
                    obs["state"][i],
                )
                # (The loop stops after this step once enough have ended: whole_step keeps them all.)
                if done[i] and (whole_step or len(names) < num_episodes):
                    ep_meta = {**base_meta, "sim_unstable": _info_flag(info, "sim_unstable", i),
                               "env_index": i, "reset_index": int(resets[i]),
                               "reports_success": _reports(info, "success", i)}  # fmt: skip
                    names.append(store.add(builders[i].finish(bool(terminated[i]), ep_meta)))
                    bar.update(1)
            if resetting.any():  # these envs just returned their reset observation: a new episode
                policy.reset(n, mask=resetting)
            resetting = done
    return CollectResult(names, env_steps)


def _check_reset_state(state: np.ndarray, i: int, stored: str) -> None:
    """Refuse env ``i``'s reset observation (``state`` [N, D]: the start of its next episode) when
    its state is not finite; ``stored`` says what became of the episodes before it."""
    if not np.all(np.isfinite(state[i])):
        raise FloatingPointError(
            f"env {i} returned a non-finite state on reset (the first observation of an episode); {stored}"
        )
