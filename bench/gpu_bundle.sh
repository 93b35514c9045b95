#!/usr/bin/env bash
# The offline bundle for a lent GPU machine (it has a CUDA torch and Triton but no network and none of
# the project's other packages; bench/RESULTS.md, "GPU"). Run it here, from the repository root, in
# the set-up venv:
#
#   bash bench/gpu_bundle.sh [PYTHON_VERSION]   # default 3.12, the lent H200s' Python
#
# .whl/  wheels for that Python (manylinux x86_64) of the project's runtime and test dependencies, at
#        the versions this venv has, without torch (the GPU machine brings its own build, and torch's
#        own dependencies with it), imageio-ffmpeg (66 MB; tests/test_cuda.py stubs the video writer)
#        and mujoco-studio (MuJoCo's viewer; `import mujoco` does not load it): ~55 MB;
# .gl/   libglvnd's EGL / OpenGL loader .debs (~0.25 MB): the NVIDIA driver brings its EGL vendor
#        library but not the loaders MuJoCo's headless rendering opens.
# Both are git-ignored; `bash bench/gpu_check.sh` installs them when present. Pass them to the device
# tool as carry [".whl", ".gl"] (it carries 64 MiB in all; the script refuses a bundle over 60 MiB).
set -euo pipefail
pyver=${1:-3.12}
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
packages="cloudpickle contourpy cycler docstring_parser Farama-Notifications fonttools glfw gymnasium \
imageio iniconfig kiwisolver matplotlib mujoco mujoco-core numpy packaging pillow pluggy Pygments \
PyOpenGL pyparsing pytest pytest-timeout python-dateutil safetensors stable_baselines3 tqdm typeguard \
typing_extensions tyro tzdata websockets"
pins=$($py - $packages <<'EOF'
import importlib.metadata as md
import sys

pins = []
for name in sys.argv[1:]:
    try:
        pins.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass  # not a dependency of this version of the stack (e.g. mujoco-core before mujoco 4)
print(" ".join(pins))
EOF
)
rm -rf .whl .gl
mkdir -p .whl .gl
abi="cp${pyver/./}"
# shellcheck disable=SC2086
$py -m pip download -q --no-deps --only-binary=:all: --dest .whl --python-version "$pyver" \
    --implementation cp --abi "$abi" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any $pins
if ! (cd .gl && apt-get download -q libglvnd0 libegl1 libopengl0 libgl1 libglx0); then
    echo "gpu_bundle: apt-get download of the GL loaders failed (run apt-get update first?)" >&2
    exit 1
fi
echo "wheels for Python $pyver:"
ls .whl
du -sh .whl .gl
total=$(du -sm .whl .gl | awk '{s += $1} END {print s}')
if [ "$total" -gt 60 ]; then
    echo "gpu_bundle: the bundle is $total MiB, over the 60 MiB that leaves room in the device tool's 64 MiB carry" >&2
    exit 1
fi
