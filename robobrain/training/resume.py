"""What a resumed online run restores and checks: the global RNGs, the planner's generators, and
the config it was started with (``robobrain train`` re-run on the same ``--run-dir``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robobrain.checkpoint import CheckpointError, set_cuda_rng_states
from robobrain.planning import OptimizerConfig

log = logging.getLogger(__name__)


# SB3 samples its replay buffer with numpy's legacy global RNG, and its ``load`` reseeds the global
# RNGs (Python's, numpy's, torch's), so the loop saves and restores them all.
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy_global": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_initialized():  # (a CPU run on a GPU host starts no CUDA context for this)
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    if "python" in state:  # (checkpoints older than it lack it)
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        set_cuda_rng_states(state["cuda"])


def generator_states(policy: Any) -> dict[str, list[int]]:
    mpc = getattr(policy, "mpc", None)
    if mpc is None:
        return {}
    return {
        "optimizer": mpc.optimizer.generator.get_state().tolist(),
        "noise": mpc.noise_gen.get_state().tolist(),
    }


def set_generator_states(policy: Any, states: dict[str, list[int]], reseed: int | None = None) -> None:
    """Restore the planner's generators from ``states``; with ``reseed``, seed them with it instead
    (a run resumed on another kind of device: a CPU generator's state does not fit a CUDA one)."""
    mpc = getattr(policy, "mpc", None)
    if mpc is None:
        return
    if reseed is not None:
        mpc.optimizer.generator.manual_seed(reseed)
        mpc.noise_gen.manual_seed(reseed + 1)
    elif states:
        mpc.optimizer.generator.set_state(torch.tensor(states["optimizer"], dtype=torch.uint8))
        mpc.noise_gen.set_state(torch.tensor(states["noise"], dtype=torch.uint8))


PATH_OPTIONS = ("seed_data", "init_world_model")
"""Options that name files: recorded absolute, so a resume from another directory, or the same store
spelled another way, compares what they point at (a relative path in an older checkpoint is read
from where the run is resumed)."""


def resolved_paths(online: dict[str, Any]) -> dict[str, Any]:
    """The path options absolute, as strings (a ``Path`` from the Python API too: it failed the write
    of config.json, after the seed episodes)."""
    return {k: str(Path(v).resolve()) if k in PATH_OPTIONS and isinstance(v, str | os.PathLike) else v
            for k, v in online.items()}  # fmt: skip


def fingerprint(names: list[str]) -> dict[str, Any]:
    """Which offline episodes a run trained on: their number and a hash of their file names."""
    return {"episodes": len(names), "sha1": hashlib.sha1("\n".join(names).encode()).hexdigest()}


#: Settings a resumed run may change: its env-step budget, and the device it runs on.
RESUMABLE_CHANGES = ("env_steps", "device")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"mpc": {"horizon": 8}}`` -> ``{"mpc.horizon": 8}`` (the CLI's dotted flag names)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_config(saved: dict[str, Any], now: dict[str, Any], where: Path) -> None:
    """A resumed run must have the same config, except :data:`RESUMABLE_CHANGES`.

    An option the checkpoint lacks was added to robobrain after the run started: it is resumed with
    the value given now (the default unless passed), with a warning, since the run's first part
    went without it -- except ``sb3.soft_value``, which a SAC run of before it had on (SB3's soft Q):
    resuming one needs ``--sb3.soft-value``. An option the checkpoint has but robobrain no longer
    knows is ignored, with a warning. Any option both know must be equal; ``image_size`` left out on
    either side means the run's own (the size its world model sees, which the envs must render).
    """
    now = json.loads(json.dumps(now))  # as it was stored (tuples become lists)
    a, b = (
        {k: v for k, v in flatten(resolved_paths(c)).items() if k.split(".")[0] not in RESUMABLE_CHANGES}
        for c in (saved.get("online", {}), now["online"])
    )
    for flat in (a, b):  # num_elites None is an eighth of num_samples (runs before it was stored 32)
        for k in [k for k, v in flat.items() if k.endswith("num_elites") and v is None]:
            flat[k] = OptimizerConfig(num_samples=flat[k.replace("num_elites", "num_samples")]).elites
    used_sb3 = a.get("prior_samples", 16) > 0 or a.get("use_value", True)  # (OnlineConfig's defaults)
    if "sb3.soft_value" not in a and str(a.get("sb3.algo", "")).upper() == "SAC" and used_sb3:
        a["sb3.soft_value"] = True  # (a SAC run from before the option trained SB3's soft Q)
    if a.get("image_size") is None or b.get("image_size") is None:  # (left out: the run's own size;
        a.pop("image_size", None)  # _resume checks what the envs render against the world model)
        b.pop("image_size", None)
    diff = {k: (a[k], v) for k, v in b.items() if k in a and a[k] != v}
    if diff:
        soft = " (--sb3.soft-value: it predates the option and trained SB3's soft Q)" if (
            "sb3.soft_value" in diff and "sb3.soft_value" not in flatten(saved.get("online", {}))
        ) else ""  # fmt: skip
        raise CheckpointError(
            f"{where}: the run was started with another config (checkpoint vs now: {diff}); to resume "
            f"it, pass the flags it was started with (its config.json{soft}); for another config, use a "
            "new --run-dir"
        )
    added = {k: v for k, v in b.items() if k not in a}
    if added:
        log.warning(
            "%s predates the options %s: the run goes on with these values, its first part went "
            "without them", where, added,
        )  # fmt: skip
    removed = sorted(set(a) - set(b))
    if removed:
        log.warning("%s has options this robobrain no longer knows, ignored: %s", where, removed)
