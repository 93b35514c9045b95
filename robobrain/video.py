"""mp4 writing through imageio-ffmpeg."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robobrain.data.store import fsync_dir


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int = 20, scale: int = 4) -> Path:
    """Write uint8 frames [T, H, W, 3] as an mp4, upscaled ``scale`` times (nearest neighbour).

    Written to a temporary name and renamed, so a crash never leaves a truncated video behind.
    """
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # (two writers never share a temporary)
    try:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1) as w:
            for frame in frames:
                w.append_data(frame)
        with open(tmp, "rb") as f:  # on disk before the rename, as the store's and checkpoints' writes
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path
