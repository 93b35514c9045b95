"""The machine a benchmark ran on, for its table header (RESULTS.md records it with every figure)."""

from __future__ import annotations

import argparse
import os
import platform

import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC 7B13"), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str | torch.device = "cpu") -> str:
    """The CPU's model, core count (those this process may use, and torch's threads:
    ``OMP_NUM_THREADS=1`` halves a 2-core figure) and torch's version; on CUDA the GPU's name first
    (the host CPU stays: launch-bound GPU rows depend on it, 33.6 to 49.5 ms for one H200 row)."""
    device = torch.device(device)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = f"{cpu_name()}, {os.cpu_count()} cores ({usable} usable, {torch.get_num_threads()} torch threads)"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} on {host}, torch {torch.__version__}"
    return f"{host}, torch {torch.__version__}"


def checked_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``--device`` as a torch device; one a machine's torch cannot use (``cuda`` on a CPU-only
    build) ends the script with the parser's one-line error, not a traceback later."""
    from robobrain.cli import check_device

    try:
        check_device(name)
    except ValueError as e:
        parser.error(str(e))
    return torch.device(name)


if __name__ == "__main__":  # `python bench/machine.py [--device cuda]`: the header line RESULTS cites
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--device", default="cpu")
    print(describe(checked_device(cli, cli.parse_args().device)))
