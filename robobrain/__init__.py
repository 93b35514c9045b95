"""robobrain: a robot brain backed by a learned video world model.

Importing any part of robobrain sets two rendering defaults before MuJoCo can be imported (they only
fill in what the environment leaves unset): ``MUJOCO_GL=egl`` when there is no display, and
``LP_NUM_THREADS=0`` (see ``robobrain.envs``).
"""

import os

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
os.environ.setdefault("LP_NUM_THREADS", "0")
