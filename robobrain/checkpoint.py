"""Checkpoints: ``model.safetensors`` + ``config.json`` + ``training_state/``, written atomically.

Layout of a run directory::

    run/checkpoints/step_0000500/model.safetensors
                               /config.json
                               /training_state/optimizer.safetensors   (tensors of the optimizer state)
                               /training_state/state.json              (step, counters, RNG states, ...)
    run/checkpoints/latest                                              (name of the newest complete one)

A checkpoint is written into a temporary directory which is renamed when complete; ``latest`` is
moved (atomically) only afterwards; every file and directory is fsynced first. Loading the world
model and training state never unpickles anything: tensors come from safetensors and the rest from
JSON (an online run's SB3 model, ``sb3/model.zip``, is SB3's own format, which cloudpickles some
entries). A bad file gives a ``CheckpointError`` naming it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robobrain.data.store import (
    TEMPORARY_NAME,
    abandoned_temporary,
    atomic_write_json,
    fsync_dir,
    process_running,
)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_DIR = "training_state"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


class RunInUseError(RuntimeError):
    """Another process is training in the run directory."""


@contextmanager
def exclusive_run(run_dir: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold the run directory (created if missing) for one process: a second ``train`` or ``train-wm``
    on it, e.g. the same command started again while the first still runs, would resume from the
    first one's checkpoint and truncate what it wrote since. An advisory ``flock`` on the directory
    itself: no file is left behind, and the kernel releases it when the process ends, however it ends.
    Where ``fcntl`` is missing (Windows) nothing is locked."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield run_dir
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUseError(
                f"{run_dir}: another process is training in this run directory (`robobrain {command}`?); "
                "wait for it to end or stop it (it checkpoints), then run again to resume"
            ) from None
        yield run_dir
    finally:
        os.close(fd)  # (releases the lock)


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    state: dict[str, Any]

    def require(self, *keys: str) -> dict[str, Any]:
        """The training state, after checking it holds ``keys`` (CheckpointError naming the file: e.g.
        a checkpoint of another kind of run, whose configs happen to match)."""
        missing = [k for k in keys if k not in self.state]
        if missing:
            where = self.path / STATE_DIR / STATE_FILE
            raise CheckpointError(f"{where}: no {', '.join(missing)} (not this kind of run's checkpoint?)")
        return self.state


# --- optimizer state <-> flat tensors + json ----------------------------------------------------
def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
    for pid, pstate in opt_state["state"].items():
        entry: dict[str, Any] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                name = f"{pid}.{key}"
                tensors[name] = value.detach().cpu().contiguous()
                entry[key] = {"tensor": name}
            else:
                entry[key] = value
        meta["state"][str(pid)] = entry
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v for k, v in entry.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


# --- save / load ----------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model: torch.nn.Module,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    keep: int = 2,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``step_{step}`` under ``run_dir/checkpoints`` and point ``latest`` at it.

    ``extra(directory)`` may write more files (e.g. an SB3 model) into the checkpoint before it is
    renamed into place, so they are part of the same atomic write."""
    root = Path(run_dir) / "checkpoints"
    name = f"step_{step:07d}"

    def write(tmp: Path) -> None:
        (tmp / STATE_DIR).mkdir()
        save_weights(model, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        full_state = dict(state or {}, step=step)
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / STATE_DIR / OPTIM_FILE))
            full_state["optimizer"] = meta
        (tmp / STATE_DIR / STATE_FILE).write_text(json.dumps(full_state))
        if extra is not None:
            extra(tmp)

    final = write_directory_atomically(root / name, write)
    atomic_write_json(root / LATEST, {"checkpoint": name, "step": step})
    _prune(root, keep, protect=name)
    return final


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """A module's state dict as safetensors (CPU, contiguous); :func:`load_weights` reads it back."""
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def write_directory_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Create directory ``final`` as ``write(tmp)`` fills a temporary sibling, which is fsynced and
    renamed into place (an existing ``final`` is replaced; a crash leaves the old one or the new
    one, never a half-written one). Returns ``final``."""
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(root, f".tmp-{glob.escape(final.name)}-*")  # (killed earlier writes)
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:12]}-{os.getpid()}"  # (one per write)
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        old = root / f".old-{final.name}-{os.getpid()}"
        if final.exists():  # re-saving: set the old copy aside (restore_set_aside falls back to it)
            _remove_set_aside(final)  # (final is complete: older copies, even a dead process's, go)
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old.exists() and not final.exists():
                os.replace(old, final)  # the new copy could not take its place: keep the old one
            raise
        fsync_dir(root)
        _remove_set_aside(final, ignore_errors=True)  # (what is left goes before the next re-save)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _fsync_tree(path: Path) -> None:
    """fsync every file (SB3's zip and replay buffer included) and directory under ``path``."""
    for dirpath, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


STEP_NAME = re.compile(r"step_(\d+)")
"""A checkpoint directory's name: ``step_`` and the step it was written at."""


def step_checkpoints(root: Path) -> list[Path]:
    """The ``step_N`` checkpoint directories under ``root``, oldest first: by step (by name,
    step_10000000 came before step_9999500, the width growing past 10 million, and pruning removed
    the newest); another directory (``step_notes``, a ``.bak`` copy) is not one of them."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := STEP_NAME.fullmatch(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def _step_of(name: str) -> int:
    """The step of checkpoint directory ``name`` (``step_N``)."""
    match = STEP_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a checkpoint's name (step_N)")
    return int(match.group(1))


def _prune(root: Path, keep: int, protect: str) -> None:
    """Remove the checkpoints of steps after ``protect`` (the one just saved), then all but the
    ``keep`` newest, and the temporaries of writers that were killed (see
    :func:`~robobrain.data.store.abandoned_temporary`): a checkpoint's directory, whose name ends with
    the pid, and the ``latest`` pointer's file, named as the store's temporaries.

    A checkpoint after the one saved is from an attempt the run went back on (``latest`` pointed at
    an older one, as the recovery hints say to do): kept, it outlived its successors' predecessors
    (pruning kept the highest steps) and the hints offered it to go on from again; an online run's
    store no longer holds its episodes."""
    olds, saved = [], _step_of(protect)
    for p in step_checkpoints(root):
        if _step_of(p.name) > saved:
            _remove_directory(p)
        else:
            olds.append(p)
    for p in olds[:-keep] if keep > 0 else []:
        if p.name != protect:
            _remove_directory(p)
    _remove_abandoned_temporaries(root, ".tmp-*")


def _remove_directory(path: Path) -> None:
    """Remove ``path`` whole: it is renamed to a temporary first (a process killed while deleting it
    left a half checkpoint under its step name, which the recovery hints offer to go on from)."""
    doomed = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:12]}-{os.getpid()}"
    try:
        os.replace(path, doomed)
    except OSError:
        return  # (gone already, or not ours to move: left as it was)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_abandoned_temporaries(root: Path, pattern: str) -> None:
    """Remove the temporaries under ``root`` matching ``pattern`` that writers left when killed."""
    for tmp in root.glob(pattern):
        file = TEMPORARY_NAME.match(tmp.name) if not tmp.is_dir() else None
        if abandoned_temporary(tmp, file.group(1) if file else tmp.name.rsplit("-", 1)[-1]):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run, or None when the run has none. Checkpoints without
    the pointer to the newest (deleted, or the run killed while saving its first) are an error: a run
    that took them for none started over, and an online one emptied its episode store."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if root.exists() and not root.is_dir():  # (its first save failed, after the training before it)
        raise CheckpointError(f"{root}: not a directory (a run keeps its checkpoints there)")
    if not pointer.exists():
        steps = [p.name for p in step_checkpoints(root)]
        if steps:
            raise CheckpointError(
                f"{root} holds checkpoints ({', '.join(steps[-3:])}) but no {LATEST} pointer (deleted, or "
                f'the run was killed saving its first): to go on from the newest, write {{"checkpoint": '
                f'"{steps[-1]}"}} into {pointer}; to start the run over, remove {root}'
            )
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{pointer}: unreadable ({e})") from e
    # (".." is its own name: the run directory was taken for its checkpoint)
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise CheckpointError(f"{pointer}: names no checkpoint directory ({name!r})")
    path = root / name
    if not restore_set_aside(path):
        raise CheckpointError(f"{pointer} names {name}, which does not exist{recovery_hint(path)}")
    return path


def recovery_hint(checkpoint: Path) -> str:
    """How to go on from the run's newest other checkpoint instead of ``checkpoint`` (missing or
    corrupt): an addition to an error message, empty when the run has no other one. Nothing falls
    back by itself: resuming an online run from an older checkpoint drops the episodes stored after it."""
    root = checkpoint.parent
    others = [p.name for p in step_checkpoints(root) if p != checkpoint]
    if not others:
        return ""
    return (
        f"; the run's other checkpoints: {', '.join(others[-3:])}. To go on from one (what followed it is "
        f'redone), write {{"checkpoint": "{others[-1]}"}} into {root / LATEST}'
    )


def load_latest(run_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """:func:`load_checkpoint` of the run's newest checkpoint (None when it has none); a corrupt one's
    error says how to go on from an older one."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    try:
        return load_checkpoint(latest)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{recovery_hint(latest)}") from e


def _remove_set_aside(final: Path, ignore_errors: bool = False) -> None:
    for aside in final.parent.glob(f".old-{final.name}-*"):
        shutil.rmtree(aside, ignore_errors=ignore_errors)


def restore_set_aside(final: Path, wait_s: float = 2.0) -> bool:
    """Whether directory ``final`` exists, after putting back the complete old copy that
    :func:`write_directory_atomically` set aside when a process died re-saving it. A copy set aside
    by a process still running is its re-save in progress: the new copy is waited for (up to
    ``wait_s``; putting the old one back would make that re-save fail)."""
    deadline = time.monotonic() + wait_s
    while True:
        if final.is_dir():
            return True
        aside = sorted(final.parent.glob(f".old-{final.name}-*"))
        if not aside:
            return False
        if not process_running(aside[-1].name.rsplit("-", 1)[-1]) or time.monotonic() > deadline:
            os.replace(aside[-1], final)
            return True
        time.sleep(0.01)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint directory from itself, a run directory, or a run's ``checkpoints`` folder."""
    p = Path(path)
    if (p / MODEL_FILE).exists() or (p / STATE_DIR).is_dir():
        return p
    if not p.exists():
        raise CheckpointError(f"{p}: no checkpoint there (the path does not exist)")
    if p.is_file() and (p.parent / MODEL_FILE).exists():  # (its weights file: "expected model.safetensors")
        raise CheckpointError(f"{p}: a file of a checkpoint; pass its directory, {p.parent}")
    run = p.parent if p.name == "checkpoints" else p
    latest = latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
    if latest is not None:
        return latest
    raise CheckpointError(
        f"{p}: no checkpoint there (expected {MODEL_FILE} or a run with checkpoints/latest)"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint (or of a run directory's latest), without its tensors."""
    return _read_json(resolve_checkpoint(path) / CONFIG_FILE)


def trained_env(config: dict[str, Any]) -> str | None:
    """The env id whose episodes a checkpoint's world model was trained on: ``train-wm`` records it
    as ``env_id``, a ``robobrain train`` run as ``online.env``. None for checkpoints from before."""
    return config.get("env_id") or config.get("online", {}).get("env")


def check_trained_env(config: dict[str, Any], env_id: str | None, where: str | os.PathLike[str]) -> None:
    """Refuse to use a world model on another env's data or env: Reach and Push share the action
    and goal layout, so nothing else would stop it and the numbers would mean nothing."""
    trained = trained_env(config)
    if trained is not None and env_id is not None and trained != env_id:
        raise ValueError(f"{where}: the world model was trained on {trained} episodes, not on {env_id}")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e


def load_checkpoint(path: str | os.PathLike[str], with_training_state: bool = True) -> Checkpoint:
    """Read a checkpoint directory (or a run directory's latest). Never unpickles."""
    ckpt = resolve_checkpoint(path)
    config = _read_json(ckpt / CONFIG_FILE)
    weights = _read_tensors(ckpt / MODEL_FILE)
    optimizer_state, state = None, {}
    if with_training_state:
        state = _read_json(ckpt / STATE_DIR / STATE_FILE)
        if "optimizer" in state:
            tensors = _read_tensors(ckpt / STATE_DIR / OPTIM_FILE)
            try:
                optimizer_state = _unflatten_optimizer(tensors, state.pop("optimizer"))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise CheckpointError(f"{ckpt / STATE_DIR}: optimizer state inconsistent ({e})") from e
    return Checkpoint(ckpt, config, weights, optimizer_state, state)


def load_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load weights strictly; a missing, unexpected, wrong-shape or non-finite tensor names the file
    (NaN weights loaded: a resume skipped every step as non-finite, eval blamed the observations)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ckpt.model_state))
    unexpected = sorted(set(ckpt.model_state) - set(expected))
    wrong = [
        f"{k}: file {list(v.shape)} vs model {list(expected[k].shape)}"
        for k, v in ckpt.model_state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{ckpt.path / MODEL_FILE} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    bad = [k for k, v in ckpt.model_state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{ckpt.path / MODEL_FILE}: NaN or inf in {', '.join(bad[:5])}{recovery_hint(ckpt.path)}"
        )
    # Standardisation stds (state_std, goal_std, ...): every run floored them (at 1e-3, later 0.05); a
    # 0 there divided the env state into inf, reported as the env's NaN goal.
    stds = ("state_std", "goal_std", "proprio_std")
    tiny = [k for k, v in ckpt.model_state.items() if k.endswith(stds) and (v < 1e-3).any()]
    if tiny:
        raise CheckpointError(
            f"{ckpt.path / MODEL_FILE}: {', '.join(tiny)} below 1e-3, which no run writes (a standard "
            f"deviation the model divides by){recovery_hint(ckpt.path)}"
        )
    model.load_state_dict(ckpt.model_state)


#: Errors of the machine, not of a checkpoint (AcceleratorError: torch >= 2.8's CUDA errors; before
#: it, a RuntimeError whose message begins "CUDA error").
_DEVICE_ERRORS = (
    torch.cuda.OutOfMemoryError,
    *(getattr(torch, name) for name in ("OutOfMemoryError", "AcceleratorError") if hasattr(torch, name)),
)


@contextmanager
def restoring(checkpoint: Path) -> Iterator[None]:
    """Training state that loaded but does not fit what restores it (an optimizer tensor of another
    shape, a malformed RNG state): a CheckpointError naming the checkpoint, with the way on from an
    older one, instead of a traceback from torch or numpy (some only at the first step)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        if isinstance(e, _DEVICE_ERRORS) or str(e).startswith("CUDA error"):  # (the machine's: an older
            raise  # checkpoint would fail alike)
        why = f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"{checkpoint}: its training state does not fit ({why}){recovery_hint(checkpoint)}"
        ) from e


def set_cuda_rng_states(states: list[list[int]]) -> None:
    """Restore CUDA generator states saved from ``torch.cuda.get_rng_state_all()`` (one per GPU the
    saving process saw). A run resumed on a machine with fewer GPUs restores those it has (torch's
    ``set_rng_state_all`` would index past them); with more, the others keep their seeding."""
    for i, state in enumerate(states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(torch.tensor(state, dtype=torch.uint8), i)
