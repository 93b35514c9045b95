"""envs/ and policies/ install as robobrain.envs and robobrain.policies, editable and as a wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import robobrain.envs
import robobrain.policies

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_the_top_level_folders():
    assert Path(robobrain.envs.__file__).resolve().parent == ROOT / "envs"
    assert Path(robobrain.policies.__file__).resolve().parent == ROOT / "policies"


def test_wheel_contains_envs_policies_and_assets(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("robobrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "robobrain/cli.py",
        "robobrain/__main__.py",
        "robobrain/py.typed",
        "robobrain/data/store.py",
        "robobrain/world_model/model.py",
        "robobrain/planning/optimizers.py",
        "robobrain/training/wm_trainer.py",
        "robobrain/rl/imagination_env.py",
        "robobrain/evaluation.py",
        "robobrain/envs/__init__.py",
        "robobrain/envs/push.py",
        "robobrain/envs/assets/base.xml",
        "robobrain/envs/assets/pick_place.xml",
        "robobrain/policies/__init__.py",
    ]:
        assert expected in names, f"{expected} missing from {wheel.name}"
    assert not any(n.startswith(("envs/", "policies/", "tests/")) for n in names)
    # every package directory of the source tree is in the wheel
    for init in sorted((ROOT / "robobrain").rglob("__init__.py")):
        rel = init.relative_to(ROOT).as_posix()
        assert rel in names, f"package {init.parent.name} missing from {wheel.name}"


def test_version_is_the_installed_distributions():
    import importlib.metadata

    import robobrain

    assert robobrain.__version__ == importlib.metadata.version("robobrain")


def test_python_dash_m_robobrain_is_the_command():
    """`python -m robobrain` runs the same command line (help, and a user's error in one line, status 2)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "robobrain"]
    done = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and "train" in done.stdout and "eval" in done.stdout
    done = subprocess.run(
        [*run, "eval", "--policy", "banana"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("robobrain eval: error: unknown policy spec 'banana'")
    )
