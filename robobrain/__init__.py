"""robobrain: a robot brain backed by a learned video world model.

Importing any part of robobrain sets two rendering defaults before MuJoCo can be imported (they only
fill in what the environment leaves unset): ``MUJOCO_GL=egl`` when there is no display, and
``LP_NUM_THREADS=0`` (see ``robobrain.envs``).
"""

import os
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robobrain")
except PackageNotFoundError:  # (a source tree that was never installed)
    __version__ = "0+unknown"

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
os.environ.setdefault("LP_NUM_THREADS", "0")
