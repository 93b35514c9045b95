"""A stable-baselines3 model behind the Policy protocol (loaded from SB3's own zip format)."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import gymnasium as gym
import numpy as np

from robobrain.config import SB3_ALGORITHMS
from robobrain.policies.base import Observation, batch_size

ALGORITHMS = (*SB3_ALGORITHMS, "DQN")
"""What ``sb3:`` loads: the actor-critics ``robobrain train`` fine-tunes, and DQN (Discrete actions)."""

VECNORMALIZE_FILES = ("vecnormalize.pkl", "vec_normalize.pkl")
"""Names of SB3's ``VecNormalize.save`` file (rl-zoo's, SB3's docs'), looked for in a folder named as
the zip (rl-zoo's layout), then beside it."""


def _zip_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The zip's ``data`` JSON (SB3 pickles parts of it: nothing is unpickled here)."""
    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data"))
        if not isinstance(data, dict):
            raise TypeError(f"its data is a JSON {type(data).__name__}")
        return data
    except FileNotFoundError as e:
        raise ValueError(f"{path}: no such SB3 model zip") from e
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a stable-baselines3 model zip ({type(e).__name__}: {e})") from e


def _algorithm_of(path: str | os.PathLike[str]) -> str:
    """The SB3 algorithm a zip was saved by, read from its ``data`` JSON (nothing is unpickled)."""
    data = _zip_data(path)
    try:
        module = data["policy_class"]["__module__"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a stable-baselines3 model zip ({type(e).__name__}: {e})") from e
    if module.startswith("stable_baselines3.dqn."):
        return "DQN"
    if module.startswith("stable_baselines3.sac."):
        return "SAC"
    if module.startswith("stable_baselines3.td3."):
        # SB3's DDPG is a TD3 without the delay and the target-policy smoothing (noise clipped to 0).
        return "DDPG" if data.get("policy_delay") == 1 and data.get("target_noise_clip") == 0.0 else "TD3"
    if module == "stable_baselines3.common.policies":
        return "PPO" if "clip_range" in data else "A2C"
    raise ValueError(
        f"{path}: unsupported SB3 policy module {module!r}; pass sb3:ALGO:PATH, ALGO one of "
        f"{', '.join(ALGORITHMS)}"
    )


def _parse_spec(spec: str) -> tuple[str | None, str]:
    """``PATH`` or ``ALGO:PATH`` -> (ALGO or None, the zip's path, ``.zip`` added as SB3's load does)."""
    name, _, rest = spec.partition(":")
    named = name.upper() in ALGORITHMS and bool(rest)
    path = rest if named else spec
    if not path:
        raise ValueError("sb3: needs the path of an SB3 model zip (sb3:PATH or sb3:ALGO:PATH)")
    if not os.path.isfile(path) and os.path.isfile(path + ".zip"):
        path += ".zip"
    if not os.path.isfile(path):
        if not named and rest and len(name) > 1 and name.isalnum():  # (FOO:PATH: "no such FOO:PATH")
            raise ValueError(
                f"sb3:{spec}: unknown SB3 algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}"
            )
        raise ValueError(f"{path}: no such SB3 model zip (nor {path}.zip)")
    return (name.upper() if named else None), path


def frame_size(spec: str) -> int | None:
    """The side S of the frames the SB3 model of ``spec`` (as :meth:`SB3Policy.load` takes it) was
    trained on: its observation space, or that space's ``pixels``, is an image; None when it sees no
    frames (e.g. ``obs["state"]``). Reads the zip's observation space alone (not the networks)."""
    from stable_baselines3.common.save_util import json_to_data

    _, path = _parse_spec(spec)
    try:
        with zipfile.ZipFile(path) as z:
            space = json_to_data(json.dumps({"space": json.loads(z.read("data"))["observation_space"]}))
        space = space["space"]
    except Exception as e:  # (a damaged zip: BadZipFile, KeyError, pickle errors, ...)
        raise ValueError(
            f"{path}: cannot read the SB3 model's observation space ({type(e).__name__}: {e})"
        ) from e
    if isinstance(space, gym.spaces.Dict):
        space = space.spaces.get("pixels")
    layout = _frame_layout(space)
    return None if layout is None else layout[0]


def _frame_layout(space: Any) -> tuple[int, int] | None:
    """(side S, channels C) of a uint8 image space of square frames, [C, S, S] (SB3's, after
    VecTransposeImage) or [S, S, C]; None for any other space. Read from the two equal sides,
    not from C in (1, 3, 4): frames stacked by VecFrameStack have 6, 12, ... channels."""
    shape = tuple(getattr(space, "shape", None) or ())
    if len(shape) != 3 or getattr(space, "dtype", None) != np.uint8:
        return None
    if shape[1] == shape[2] and shape[0] != shape[1]:
        return shape[1], shape[0]
    if shape[0] == shape[1]:
        return shape[0], shape[2]
    return None


def _image_shapes(shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """An image space's shape as SB3 stores it (channel-first after VecTransposeImage) and
    channel-last [S, S, C], the env's layout (predict transposes it back)."""
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return (shape, (*shape[1:], shape[0]))
    return (shape,)


def _check_rgb_frames(space: gym.Space) -> None:
    """Refuse a model whose frames are not one RGB frame, as the env gives them (its error named a
    frame size: "sees 16 px frames, the env gives 16 px", or the channels as the size)."""
    pixels = space.spaces.get("pixels") if isinstance(space, gym.spaces.Dict) else space
    layout = _frame_layout(pixels)
    if layout is None or layout[1] == 3:
        return
    channels = layout[1]
    if channels % 3 == 0:
        raise ValueError(
            f"the SB3 model was trained on {channels // 3} stacked frames ({pixels.shape}: VecFrameStack); "
            "sb3: feeds it one RGB frame a step: evaluate it with SB3's own frame stack"
        )
    raise ValueError(f"the SB3 model sees frames of {channels} channels ({pixels.shape}); the env's are RGB")


def _vecnormalize_of(path: str, algo: str, space: gym.Space) -> Any | None:
    """The VecNormalize statistics a model was trained with (:data:`VECNORMALIZE_FILES`), checked
    against its observation ``space``; None where there are none. A PPO or A2C zip records its raw
    observation only under VecNormalize: one without the file is refused (raw observations fed to it
    gave actions of another policy, silently). An off-policy zip records it always: not told apart."""
    stem, folder = os.path.splitext(path)[0], os.path.dirname(path)
    where = [os.path.join(d, name) for d in (stem, folder) for name in VECNORMALIZE_FILES]
    found = next((w for w in where if os.path.isfile(w)), None)
    data = _zip_data(path) if algo in ("PPO", "A2C") else {}
    if found is None:
        if data.get("_last_original_obs") is not None:
            raise ValueError(
                f"{path}: trained under VecNormalize, whose statistics SB3 keeps out of the zip; save "
                f"them (VecNormalize.save) as {where[0]} (one that normalised rewards only: save "
                "VecNormalize(venv, norm_obs=False) there)"
            )
        return None
    if data.get("_last_original_obs", 0) is None and data.get("num_timesteps"):
        # (SB3's log folder holds several runs' zips beside one run's statistics: another model's
        # normalisation made it act otherwise than its predict, silently)
        raise ValueError(
            f"{found}: VecNormalize statistics beside {path}, which was not trained under VecNormalize "
            "(its zip records no raw observation); keep each run's statistics in its own folder"
        )
    import pickle

    try:
        with open(found, "rb") as f:  # (SB3's own format: a pickle, as the zip's parts are)
            stats = pickle.load(f)
        if not callable(getattr(stats, "normalize_obs", None)):
            raise TypeError(f"it holds a {type(stats).__name__}")
        stats.training = False  # (its running means stay as they were trained)
        fits = _normalizes(stats, space)
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
        raise ValueError(f"{found}: cannot load it as SB3 VecNormalize statistics ({why})") from e
    if not fits:  # (another model's: a broadcasting error at the first act, or wrong actions)
        raise ValueError(f"{found}: VecNormalize statistics of other observations than {path}'s {space}")
    return stats


def _normalizes(stats: Any, space: gym.Space) -> bool:
    """Whether VecNormalize ``stats`` normalise observations of ``space`` (shapes of its running means)."""
    if not stats.norm_obs:
        return True
    if isinstance(space, gym.spaces.Dict):  # (a Box's statistics passed with no keys to check)
        if not isinstance(stats.obs_rms, dict):
            return False
        keys = stats.norm_obs_keys or []
        return all(k in space.spaces and stats.obs_rms[k].mean.shape == space[k].shape for k in keys)
    mean = getattr(stats.obs_rms, "mean", None)  # (a dict's: "AttributeError ... has no attribute")
    return isinstance(mean, np.ndarray) and mean.shape == space.shape


class SB3Policy:
    """Acts with ``model.predict(deterministic=True)``. The model may have been trained on the whole
    observation dict, on ``obs["state"]`` or on ``obs["pixels"]``: the matching part is passed."""

    def __init__(self, model: Any, normalize: Any | None = None) -> None:
        """``normalize``: the SB3 ``VecNormalize`` the model was trained under (its statistics
        normalise each observation before ``predict``)."""
        from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

        _check_rgb_frames(model.observation_space)
        self.model = model
        self.normalize = normalize
        self.space = model.observation_space
        # SB3 trains image models channel-first (VecTransposeImage) and its predict transposes
        # channel-last frames back, so an env's [N, H, W, C] pixels are accepted as they are.
        shape = tuple(self.space.shape or ())
        self._shapes: tuple[tuple[int, ...], ...] = (shape,)
        if is_image_space(self.space, check_channels=False) and is_image_space_channels_first(self.space):
            self._shapes = (shape, (*shape[1:], shape[0]))

    @classmethod
    def load(cls, spec: str, device: str = "cpu") -> SB3Policy:
        """``spec``: ``PATH`` (algorithm detected) or ``ALGO:PATH`` with ALGO one of ALGORITHMS."""
        import stable_baselines3

        named, path = _parse_spec(spec)
        algo_name = named or _algorithm_of(path)
        try:
            model = getattr(stable_baselines3, algo_name).load(path, device=device)
        except Exception as e:  # a damaged zip: BadZipFile, zlib.error, pickle errors, ...
            why = f"{type(e).__name__}: {e}"
            raise ValueError(f"{path}: cannot load it as an SB3 {algo_name} model ({why})") from e
        return cls(model, _vecnormalize_of(path, algo_name, model.observation_space))

    def reset(self, num_envs: int, mask: np.ndarray | None = None) -> None:
        pass

    def _select(self, obs: Observation) -> Any:
        if isinstance(self.space, gym.spaces.Dict):
            missing = set(self.space.spaces) - set(obs)
            if missing:
                raise ValueError(f"the SB3 model needs observation keys {sorted(missing)}")
            for key, space in self.space.spaces.items():
                shapes = _image_shapes(tuple(space.shape or ()))
                got = np.asarray(obs[key]).shape[1:]
                if key == "pixels":
                    self._check_frame_size(shapes, np.asarray(obs[key]))
                elif got not in shapes:  # (SB3 failed at its reshape: "cannot reshape array of size 10")
                    raise ValueError(
                        f"the SB3 model observes obs[{key!r}] of shape {space.shape}, the env gives {got}: "
                        "was it trained on another task?"
                    )
            return {key: obs[key] for key in self.space.spaces}
        for key in ("state", "pixels"):
            if key in obs and np.asarray(obs[key]).shape[1:] in self._shapes:
                return np.asarray(obs[key])
        if "pixels" in obs and len(self._shapes) == 2:  # an image model given other frames
            self._check_frame_size(self._shapes, np.asarray(obs["pixels"]))
        shapes = {key: np.asarray(v).shape[1:] for key, v in obs.items()}
        raise ValueError(
            f"the SB3 model observes {self.space.shape}; the env gives {shapes} (an actor that "
            "`robobrain train` fine-tuned observes world-model latents: --policy mpc:RUN --guide prior)"
        )

    @staticmethod
    def _check_frame_size(shapes: tuple[tuple[int, ...], ...], pixels: np.ndarray) -> None:
        """Frames [N, S, S, 3] of another size than the model's: say which (SB3's own error names a
        channel-first shape the env never had)."""
        if pixels.shape[1:] not in shapes:
            side = shapes[-1][0]
            raise ValueError(
                f"the SB3 model sees {side} px frames, the env gives {pixels.shape[1]} px: pass "
                f"--image-size {side} (robobrain eval), or make the env with image_size={side}"
            )

    def act(self, obs: Observation) -> np.ndarray:
        batch_size(obs)  # (one env's frames [S, S, 3] were reported as frames of another size)
        selected = self._select(obs)
        parts = selected.items() if isinstance(selected, dict) else [(None, selected)]
        for key, value in parts:  # (SB3 failed inside torch.distributions: "Expected parameter loc")
            value = np.asarray(value)
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(
                    f"SB3Policy: {'its observation' if key is None else f'obs[{key!r}]'} holds NaN or inf"
                )
        if self.normalize is not None:
            selected = self.normalize.normalize_obs(selected)
        actions, _ = self.model.predict(selected, deterministic=True)
        if isinstance(self.model.action_space, gym.spaces.Discrete):
            return np.asarray(actions, dtype=np.int64)  # [N] action indices
        return np.asarray(actions, dtype=np.float32)
