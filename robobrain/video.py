"""mp4 writing through imageio-ffmpeg."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robobrain.data.store import fsync_dir


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int = 20, scale: int = 4) -> Path:
    """Write uint8 frames [T, H, W, 3] (T >= 1) as an mp4, upscaled ``scale`` times (nearest
    neighbour); an odd side gets one more row or column, repeated from the edge (H.264's 4:2:0 needs
    even sides: ffmpeg refused odd ones and left an empty file that no error reported).

    Written to a temporary name, read back (:func:`check_video`) and renamed, so neither a crash nor
    an ffmpeg that failed midway (a full disk) leaves a truncated video behind or replaces a good one.
    """
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames [T >= 1, H, W, 3], got {frames.dtype} {frames.shape}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    odd = (0, frames.shape[1] % 2), (0, frames.shape[2] % 2)
    if any(pad for _, pad in odd):
        frames = np.pad(frames, ((0, 0), *odd, (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # (two writers never share a temporary)
    try:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1) as w:
            for frame in frames:
                w.append_data(frame)
        with open(tmp, "rb") as f:  # on disk before the rename, as the store's and checkpoints' writes
            os.fsync(f.fileno())
        check_video(tmp, len(frames), path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_video(tmp: Path, expected: int, path: Path) -> None:
    """Raise ``OSError`` unless ffmpeg can decode ``expected`` frames from ``tmp``: imageio-ffmpeg
    does not check how ffmpeg exited, and one that ran out of disk left an empty file, or a partial
    one without its index that no player opens, which then replaced ``path``. (~25 ms per video.)"""
    import imageio_ffmpeg

    try:
        got = imageio_ffmpeg.count_frames_and_secs(str(tmp))[0] if tmp.stat().st_size else 0
    except (RuntimeError, OSError) as e:  # (ffmpeg cannot read it: "FFMPEG call failed")
        got = f"none readable ({str(e).splitlines()[0]})"
    if got != expected:
        raise OSError(
            f"ffmpeg wrote a broken video for {path} ({got} of {expected} frames; a full disk?): "
            "nothing was replaced"
        )
