"""EpisodeStore: a directory of episodes, one compressed ``.npz`` file each, plus a small manifest.

Every file is written under a temporary name, flushed to disk and renamed, so a crash never leaves
a half-written episode under a real name (each write has a temporary of its own, removed at a
later open once its writer is dead and it has been untouched for 10 minutes). Files are read with
``allow_pickle=False`` and checked (keys, dtypes, shapes, finite values, and the store's layout:
the env and the per-step shapes of its episodes, which its first readable episode sets); a
truncated, corrupt or foreign file is reported by name and skipped. The episode files are the
source of truth; ``manifest.json`` summarises them (with each file's size and modification time,
and the layout) and is brought up to date at every open, re-reading only the files it does not
know as they are.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import signal
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_NAME = re.compile(r"^episode_(\d{6,})\.npz$")
TEMPORARY_NAME = re.compile(r"^\.tmp-(\d+)-")


# Read errors of the disk or the machine, not of a file's content: they propagate (a damaged zip's own
# errors, EINVAL from a seek to a bad offset among them, make the file corrupt).
_NOT_THE_FILES_FAULT = frozenset({errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EACCES,
                                  errno.EPERM, errno.EAGAIN, errno.EINTR, errno.ESTALE, errno.ETIMEDOUT,
                                  errno.ENOENT})  # fmt: skip


class CorruptEpisodeError(ValueError):
    """An episode file could not be read or failed validation."""


def reports_success(meta: dict[str, Any]) -> bool:
    """Whether an episode's env reported ``info["success"]`` (its ``meta``; episodes collected before
    the flag was recorded came from envs that did)."""
    return bool(meta.get("reports_success", True))


@dataclass(frozen=True)
class Episode:
    """One episode of T steps.

    pixels: uint8[T+1, H, W, 3] -- observations o_0 .. o_T
    state: float32[T+1, n]
    action: float32[T, A] -- a_t taken after o_t
    reward: float32[T] -- reward received for a_t
    success: bool[T] -- ``info["success"]`` after a_t
    terminated: the episode ended in a terminal state (otherwise it was truncated)
    meta: free-form JSON-serialisable metadata (env id, policy, seed...)
    """

    pixels: np.ndarray
    state: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    success: np.ndarray
    terminated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.action)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is inconsistent."""
        t = len(self.action)
        checks = [
            ("pixels", self.pixels, np.uint8, (t + 1,), 4),
            ("state", self.state, np.float32, (t + 1,), 2),
            ("action", self.action, np.float32, (t,), 2),
            ("reward", self.reward, np.float32, (t,), 1),
            ("success", self.success, np.bool_, (t,), 1),
        ]
        if t < 1:
            raise ValueError("an episode needs at least one step")
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta: expected a dict, got {type(self.meta).__name__}")
        for name, arr, dtype, lead, ndim in checks:
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype:
                got = getattr(arr, "dtype", type(arr))
                raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {got}")
            if arr.ndim != ndim or arr.shape[:1] != lead:
                raise ValueError(f"{name}: expected {ndim} dims with leading size {lead[0]}, got {arr.shape}")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"{name}: contains NaN or inf")
        if self.pixels.shape[-1] != 3:
            raise ValueError(f"pixels: expected [T+1, H, W, 3], got {self.pixels.shape}")
        if not isinstance(self.terminated, bool | np.bool_):  # (None was stored pickled: unreadable)
            got = self.terminated
            what = (
                f"{got.dtype} array of shape {got.shape}"
                if isinstance(got, np.ndarray)
                else type(got).__name__
            )
            raise ValueError(f"terminated: expected a bool, got {what}")

    @property
    def episode_return(self) -> float:
        return float(self.reward.sum())


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block has run, then raise its ``KeyboardInterrupt``: a file is
    written whole or not at all, and the interrupt stays an interrupt (one that landed in numpy's zip
    writer became a ValueError, "Can't close the ZIP file while there is an open writing handle",
    reported as an error). Only the main thread with Python's own handler can hold it; anywhere
    else the block runs as it is."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


def _atomic_write_bytes(path: Path, write: Any, exclusive: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it and rename it over ``path``
    (Ctrl-C waits for it: :func:`interrupts_deferred`). ``exclusive``: give it the name only if no
    file has it (``FileExistsError`` otherwise), so two writers cannot both claim one name."""
    with interrupts_deferred():
        _write_and_rename(path, write, exclusive)


def _write_and_rename(path: Path, write: Any, exclusive: bool) -> None:
    # One temporary per write (threads of one process too), named with the writer's pid.
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power loss
    finally:
        if tmp.exists():
            tmp.unlink()


# Errors of a file system without hard links (FAT, some network and FUSE mounts): only there may a
# rename claim the name instead, which is not exclusive.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _link_new(tmp: Path, path: Path) -> None:
    """Hard-link ``tmp`` as ``path``, which must not exist (``FileExistsError``); a rename where the
    file system has no hard links."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def process_running(pid: str) -> bool:
    """Whether ``pid`` names another process that is alive (pids are reused: a heuristic)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A temporary that nothing has touched for this long is no write in progress.
STALE_AFTER_S = 600.0


def abandoned_temporary(path: Path, pid: str, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether temporary ``path`` (a file, or a directory checked with everything in it), named
    with its writer's ``pid``, was left by a writer that died: no other process of this host has
    that pid, and nothing in it changed for ``stale_after_s``. The age also covers what the pid
    cannot: this process's other threads (the pid is ours) and writers on another host sharing the
    directory (their pids mean nothing here)."""
    if process_running(pid):
        return False
    try:
        newest = path.lstat().st_mtime
        if path.is_dir():
            for dirpath, _, files in os.walk(path):
                for name in files:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    except FileNotFoundError:
        return False  # (its writer just finished, or another cleaner was quicker)
    return time.time() - newest >= stale_after_s


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries: renames, new files); a no-op where the OS cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_dead_temporaries(folder: Path) -> None:
    """Remove the half-written files (``.tmp-PID-...``) in ``folder`` of writers that were killed (see
    :func:`abandoned_temporary`); a folder that is missing or read-only is left as it is."""
    try:
        temporaries = [p for p in folder.glob(".tmp-*") if not p.is_dir()]
    except OSError:
        return
    for tmp in temporaries:
        match = TEMPORARY_NAME.match(tmp.name)
        if match and abandoned_temporary(tmp, match.group(1)):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # a read-only folder
                pass


def atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


@contextmanager
def no_empty_dirs_on_failure(*paths: str | os.PathLike[str] | None) -> Iterator[None]:
    """Run the block; if it raises, remove the directories among ``paths`` (and the parents made for
    them) that did not exist before it and that it left empty (or holding only empty directories).
    A command refused after it made its output folder leaves nothing behind; a file is never
    removed, so nothing written is lost."""
    new: list[Path] = []
    for p in (Path(p) for p in paths if p is not None):
        top = None  # the highest of p and its parents that does not exist yet
        for q in (p, *p.parents):
            if q.exists() or q.is_symlink():
                break
            top = q
        if top is not None:
            new.append(top)
    try:
        yield
    except BaseException:
        for top in new:
            _remove_empty_tree(top)
        raise


def _remove_empty_tree(top: Path) -> None:
    if top.is_symlink() or not top.is_dir():
        return
    for sub, _, _ in sorted(os.walk(top), key=lambda w: -len(Path(w[0]).parts)):  # deepest first
        try:
            os.rmdir(sub)  # (refused for a directory that holds anything)
        except OSError:
            pass


def _overstated_array(archive: zipfile.ZipFile) -> str | None:
    """Which .npy member's header declares more data than the member holds, if any: numpy allocates
    what it declares first, so such a file (a damaged header of 4e10 frames) raised a MemoryError,
    which the store re-raises as the machine's error, and stopped every reader of the store."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    for info in archive.infolist():
        try:
            with archive.open(info) as f:
                read = readers.get(npy.read_magic(f))
                if read is None:  # (a newer .npy version: numpy's own checks)
                    continue
                shape, _, dtype = read(f)
                declared, held = math.prod(shape) * dtype.itemsize, info.file_size - f.tell()
        except (ValueError, OSError, zipfile.BadZipFile):  # (another fault of the member: not this one)
            continue
        if declared > held:
            return f"{info.filename} declares shape {shape} of {dtype} ({declared:,} bytes), holds {held:,}"
    return None


class EpisodeStore:
    """A directory of episodes. Several writers may add to one store at once (each episode file
    claims a free name); each one's manifest may then miss the others' episodes until the next
    open, which re-reads them."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        """``create=False``: for reading; a missing directory raises ``FileNotFoundError`` instead of
        being made (a mistyped ``--data`` would otherwise leave an empty store behind)."""
        self.root = Path(root)
        if not create and not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such episode store (directory)")
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root} exists and is not a directory (an episode store is one)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.skipped: dict[str, str] = {}
        """Files found corrupt (or of another layout), by name, with the reason."""
        self._layout: tuple[Any, ...] | None = None
        self._stats: dict[str, list[int] | None] = {}
        """Size and modification time of each episode file, as the manifest records them."""
        self._remove_dead_temporaries()
        self._manifest = self._load_manifest()

    # --- writing ---------------------------------------------------------------------------
    def add(self, episode: Episode) -> str:
        """Validate and store an episode; returns its file name."""
        try:
            episode.validate()
        except ValueError as e:
            raise ValueError(f"refusing to store an invalid episode: {e}") from e
        layout = self._layout_of(episode)
        stored = self._stored_layout()
        if stored is not None and layout != stored:
            fields = "env_id, pixels, state and action shapes per step"
            raise ValueError(
                f"refusing to store an episode of another layout in {self.root}: ({fields}) {layout} "
                f"vs the stored episodes' {stored}; use another directory for another env or image size"
            )
        try:  # (standard JSON: no NaN, no numpy scalars)
            meta = json.dumps(episode.meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"refusing to store an episode whose meta is not JSON: {e}") from e
        arrays = {
            "pixels": episode.pixels,
            "state": episode.state,
            "action": episode.action,
            "reward": episode.reward,
            "success": episode.success,
            "terminated": np.array(episode.terminated),
            "meta": np.array(meta),
        }
        index = self._next_index()
        while True:
            name = f"episode_{index:06d}.npz"
            try:
                _atomic_write_bytes(
                    self.root / name, lambda f: np.savez_compressed(f, **arrays), exclusive=True
                )
                break
            except FileExistsError:  # another writer took this name since
                index += 1
        self._manifest[name] = self._summary(episode)
        self._stats[name] = self._stat(name)
        self._layout = layout
        self._write_manifest()
        return name

    def claim_seed(self, start: int, step: int, avoid: range = range(0), limit: int | None = None) -> int:
        """The first of ``start``, ``start + step``, ... that no collection into this store has
        claimed, claimed now by an empty file ``.seed-<n>`` made with ``O_EXCL`` (kept: two collections
        started at once both read the same largest seed from the manifest, and stored identical
        episodes). A seed in ``avoid`` is passed over (the walk goes on from ``avoid.stop``); none
        left below ``limit`` is a ``ValueError``."""
        seed = start
        while True:
            if seed in avoid:
                seed = avoid.stop
            if limit is not None and seed >= limit:
                raise ValueError(f"{self.root}: no unclaimed seed from {start} below {limit}")
            try:
                os.close(os.open(self.root / f".seed-{seed}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return seed
            except FileExistsError:
                seed += step

    def release_seed(self, seed: int) -> None:
        """Give a claimed seed back (a collection that stored nothing)."""
        (self.root / f".seed-{seed}").unlink(missing_ok=True)

    def truncate(self, keep: int) -> list[str]:
        """Delete every episode after the first ``keep`` (in the order they were added) and every
        temporary file, however fresh; returns the deleted names. Used on resume to drop episodes an
        interrupted run wrote after its last checkpoint, so none is stored twice: the run owns its
        store, so no other writer's temporary is there."""
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        for tmp in self.root.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        drop = self.names()[keep:]
        for name in drop:
            (self.root / name).unlink()
            self._manifest.pop(name, None)
            self._stats.pop(name, None)
            self.skipped.pop(name, None)  # (an episode added later under its name is another one)
        if drop:
            if not self._manifest:
                self._layout = None  # (an emptied store takes the layout of its next episode)
            self._write_manifest()
        return drop

    # --- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Episode file names in the order they were added."""
        return sorted((p.name for p in self.root.iterdir() if _NAME.match(p.name)), key=_index)

    def __len__(self) -> int:
        """Episode files, readable or not (``manifest`` holds the readable ones)."""
        return len(self.names())

    def load(self, name: str) -> Episode:
        """Load and validate one episode; ``CorruptEpisodeError`` names the file if it is bad."""
        path = self.root / name
        # An unfetched git-annex or DVC file: reported, not taken for one removed since it was listed.
        if path.is_symlink() and not path.exists():
            raise CorruptEpisodeError(
                f"{path}: a symlink to nothing ({os.readlink(path)}); fetch or remove it"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                episode = Episode(
                    pixels=z["pixels"],
                    state=z["state"],
                    action=z["action"],
                    reward=z["reward"],
                    success=z["success"],
                    terminated=_stored_flag(z["terminated"]),
                    meta=json.loads(str(z["meta"])),
                )
            episode.validate()
        except MemoryError as e:  # the machine's, unless the file declares more than it holds
            if not zipfile.is_zipfile(path):  # (e.g. a bare .npy whose header states terabytes)
                raise CorruptEpisodeError(f"{path}: not an .npz archive (truncated or overwritten)") from e
            with zipfile.ZipFile(path) as archive:
                overstated = _overstated_array(archive)
            if overstated is not None:
                raise CorruptEpisodeError(f"{path}: {overstated}") from e
            raise
        except Exception as e:  # a damaged zip raises BadZipFile, zlib.error, NotImplementedError, ...
            if isinstance(e, OSError) and e.errno in _NOT_THE_FILES_FAULT:  # never recorded as corrupt
                raise  # (a damaged zip's seek raises EINVAL; a vanished file, FileNotFoundError)
            if not zipfile.is_zipfile(path):  # (numpy calls such a file pickled data)
                raise CorruptEpisodeError(f"{path}: not an .npz archive (truncated or overwritten)") from e
            raise CorruptEpisodeError(f"{path}: {type(e).__name__}: {e}") from e
        return episode

    def episodes(self) -> Iterator[tuple[str, Episode]]:
        """Yield (name, episode) for every readable episode of the store's layout; corrupt files
        and episodes of another env or shape (a file copied in from another store) are logged and
        skipped."""
        for name in self.names():
            episode = self._read(name)
            if episode is not None:
                yield name, episode

    def _read(self, name: str) -> Episode | None:
        """The episode, or None after logging why it is skipped."""
        try:
            episode = self.load(name)
            stored = self._stored_layout()
            if stored is not None and self._layout_of(episode) != stored:
                raise CorruptEpisodeError(
                    f"{self.root / name}: {_FOREIGN} (env_id, pixels, state and action shapes per "
                    f"step) {self._layout_of(episode)} than the store's {stored}"
                )
        except FileNotFoundError:  # (removed since it was listed, e.g. by another process's truncate)
            return None
        except CorruptEpisodeError as e:
            if name not in self.skipped:
                log.warning("skipping episode %s", e)
            self.skipped[name] = str(e)
            return None
        return episode

    def load_all(self) -> list[Episode]:
        return [ep for _, ep in self.episodes()]

    @property
    def manifest(self) -> dict[str, dict[str, Any]]:
        """Summary per episode file: length, return, success, meta."""
        return dict(self._manifest)

    @property
    def layout(self) -> tuple[Any, ...] | None:
        """(env_id, pixels, state and action shapes per step) of the stored episodes; None when the
        store is empty (the next episode added sets it)."""
        return self._stored_layout()

    def num_steps(self) -> int:
        return sum(int(s["length"]) for s in self._manifest.values())

    # --- internals -------------------------------------------------------------------------
    @staticmethod
    def _layout_of(episode: Episode) -> tuple[Any, ...]:
        shapes = (episode.pixels.shape[1:], episode.state.shape[1:], episode.action.shape[1:])
        return (episode.meta.get("env_id"), *(tuple(int(n) for n in shape) for shape in shapes))

    def _stored_layout(self) -> tuple[Any, ...] | None:
        """The store's layout: the manifest's while a file it vouches for is unchanged, else that of
        the first readable stored episode not already skipped (None for an empty store)."""
        if self._layout is None:
            for name in self.names():
                if name in self.skipped:
                    continue
                try:
                    self._layout = self._layout_of(self.load(name))
                    break
                except (CorruptEpisodeError, FileNotFoundError):  # (one removed since it was listed:
                    continue  # escaping, it made _read skip every episode as if each had vanished)
        return self._layout

    def _next_index(self) -> int:
        names = self.names()
        return _index(names[-1]) + 1 if names else 0

    def _remove_dead_temporaries(self) -> None:
        remove_dead_temporaries(self.root)

    @staticmethod
    def _summary(episode: Episode) -> dict[str, Any]:
        return {
            "length": len(episode),
            "return": episode.episode_return,
            "success": bool(episode.success[-1]),
            "meta": episode.meta,
        }

    def _load_manifest(self) -> dict[str, dict[str, Any]]:
        """The saved summaries of the files that are as they were when it was written (same size and
        modification time; a manifest from before the sizes were recorded is read afresh, once), the
        other files read afresh; the manifest is rewritten when anything changed. The saved layout
        stands while a file it vouches for is unchanged (so deleting the first episode does not hand
        the store to a foreign file copied in later)."""
        path = self.root / MANIFEST
        saved_episodes: dict[str, Any] = {}
        stats: dict[str, Any] | None = None
        corrupt: dict[str, str] = {}
        layout = None
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                saved_episodes = dict(saved["episodes"])
                stats = dict(saved["stats"]) if "stats" in saved else None
                layout = _parse_layout(saved.get("layout"))
                # A corrupt file stays known as corrupt while it is unchanged: otherwise every open of
                # the store would find it missing from the manifest and re-read it.
                corrupt = {n: str(c["reason"]) for n, c in dict(saved.get("corrupt", {})).items()
                           if c["stat"] == self._stat(n)}  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                log.warning("rebuilding unreadable manifest %s (%s)", path, e)
                saved_episodes, stats, corrupt = {}, None, {}
        names = self.names()
        self._stats = {name: self._stat(name) for name in names}
        manifest = {
            name: saved_episodes[name]
            for name in names
            if name in saved_episodes
            and _is_summary(saved_episodes[name])
            and stats is not None
            and stats.get(name) == self._stats[name]
        }
        if manifest and layout is not None:
            self._layout = layout
        elif not manifest:  # every file it vouched for is gone: what was foreign may be the layout now
            corrupt = {n: reason for n, reason in corrupt.items() if _FOREIGN not in reason}
        corrupt = {n: reason for n, reason in corrupt.items() if n in names and n not in manifest}
        self.skipped.update(corrupt)
        fresh = [n for n in names if n not in manifest and n not in corrupt]
        for name in fresh:
            episode = self._read(name)
            if episode is not None:
                manifest[name] = self._summary(episode)
        self._manifest = manifest
        changed = fresh or stats is None or len(manifest) != len(saved_episodes)
        if changed and (names or path.exists()):  # (a new, empty store stays an empty directory)
            try:
                self._write_manifest()
            except OSError as e:  # a read-only store reads fine; the manifest is a cache
                log.warning(
                    "cannot update the manifest of %s (%s): the %d files it does not describe as they "
                    "are now were read, and will be at every open", self.root, e, len(fresh),
                )  # fmt: skip
        return manifest

    def _stat(self, name: str) -> list[int] | None:
        try:
            st = (self.root / name).stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def _write_manifest(self) -> None:
        corrupt = {
            n: {"reason": reason, "stat": self._stat(n)}
            for n, reason in self.skipped.items()
            if n not in self._manifest and self._stat(n) is not None
        }
        stats = {n: self._stats.get(n) for n in self._manifest}
        layout = self._layout if self._manifest else None
        atomic_write_json(
            self.root / MANIFEST,
            {"version": 2, "episodes": self._manifest, "stats": stats, "corrupt": corrupt, "layout": layout},
        )


def _stored_flag(arr: np.ndarray) -> bool | np.ndarray:
    """A file's 0-d bool array, or 0-d number 0 or 1, as a bool; anything else as it is, for
    ``validate`` to refuse (``bool()`` made the string "False", NaN and 7 all True)."""
    if arr.shape == () and (arr.dtype == np.bool_ or (arr.dtype.kind in "iuf" and arr in (0, 1))):
        return bool(arr)
    return arr


def _index(name: str) -> int:
    """The number of an episode file name (``episode_000012.npz`` -> 12)."""
    match = _NAME.match(name)
    assert match is not None, name
    return int(match.group(1))


_FOREIGN = "another layout"
"""What the reason of a file skipped for its layout says (it may be readable once the layout changes)."""


def _parse_layout(saved: Any) -> tuple[Any, ...] | None:
    """A layout as :meth:`EpisodeStore._layout_of` makes it, from its JSON form (None if malformed)."""
    if not (isinstance(saved, list) and len(saved) == 4 and (saved[0] is None or isinstance(saved[0], str))):
        return None
    shapes = saved[1:]
    if not all(isinstance(s, list) and all(isinstance(n, int) and n >= 0 for n in s) for s in shapes):
        return None
    return (saved[0], *(tuple(s) for s in shapes))


def _is_summary(entry: Any) -> bool:
    """Whether a manifest entry has the shape :meth:`EpisodeStore._summary` writes."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("length"), int)
        and isinstance(entry.get("return"), (int, float))
        and isinstance(entry.get("success"), bool)
        and isinstance(entry.get("meta"), dict)
    )
