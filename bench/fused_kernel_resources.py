"""Registers, spills, software pipelining and compile time of the fused rollout kernel (FusedImagine)
for each of the autotuner's configurations, from an offline compile for a GPU architecture: no GPU
needed.

    python bench/fused_kernel_resources.py [--preset cpu] [--horizon 12] [--arch 90] [--grid]

``--grid``: every BM in 16..128, BK in 16..64 and 1..3 stages at 8 warps instead of the autotuner's
candidates. "async copies" counts the ``cp.async`` instructions in the PTX: the K loops' loads are
software-pipelined (the next weight rows are in flight while the current ones are multiplied) only
where it is above 0.

A configuration that spills to local memory is slower than its arithmetic says; what it costs in
time only a GPU can tell (bench/profile_imagine.py, bench/bench_planner.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import tempfile
import time

from machine import describe  # bench/machine.py (the script's folder is on sys.path)

from robobrain.config import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100/H200)")
    parser.add_argument("--grid", action="store_true", help="a grid of configurations, not the candidates")
    args = parser.parse_args()

    # a fresh cache, so every configuration is compiled and ptxas reports on it
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cache-")
    try:
        import triton
    except ImportError:
        parser.error(
            "needs Triton (a CUDA build of torch brings it; on a CPU-only machine put the interpreter's "
            "copy on the path: PYTHONPATH=.venv/interpreter-triton, as bench/RESULTS.md does)"
        )
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from robobrain.world_model.fused import _BLOCKS, NS, block_fits, fused_unsupported, padded_bins
    from robobrain.world_model.fused_kernel import rollout_kernel

    cfg = get_preset(args.preset, state_dim=10, goal_start=7, goal_dim=3).world_model
    why = fused_unsupported(cfg)
    if why is not None:
        raise SystemExit(f"the fused kernel cannot run the {args.preset} preset: {why}")
    sc = cfg.stoch * cfg.classes
    const = {"T": args.horizon, "D": cfg.deter, "HD": cfg.hidden, "S": cfg.stoch, "C": cfg.classes,
             "NB": padded_bins(cfg.reward_bins), "BINS": cfg.reward_bins, "NS": NS}  # fmt: skip
    float32 = {"deter_ptr", "goal_ptr", "reward_ptr", "success_ptr", "deter_out_ptr", "stoch_out_ptr"}
    scalars = {"M": "i32", "zero": "i32", "eps": "fp32", "bin_low": "fp32", "bin_step": "fp32"}
    print(f"# fused rollout kernel, preset {args.preset}, H={args.horizon}, sm_{args.arch}, "
          f"triton {triton.__version__}; compiled (compile s) on {describe('cpu')}")  # fmt: skip
    columns = "BM BK warps stages MMA registers spill_stores_B spill_loads_B stack_B shared_B".split()
    columns += ["async_copies", "compile_s"]
    print("| " + " | ".join(c.replace("_", " ") for c in columns) + " |")
    print("|" + "---|" * len(columns))
    triton.knobs.nvidia.dump_ptxas_log = True
    grid = [(bm, bk, 8, st) for bm in (16, 32, 64, 128) for bk in (16, 32, 64) for st in (1, 2, 3)]
    for bm, bk, warps, stages in grid if args.grid else _BLOCKS:
        if not block_fits(bk, cfg.deter, cfg.hidden, sc):
            continue
        constexprs = dict(const, BM=bm, BK=bk)
        signature = {
            name: scalars.get(name, "*fp32" if name in float32 else "*bf16")
            for name in rollout_kernel.arg_names
        }
        signature |= {name: "constexpr" for name in constexprs}
        # as Triton specializes at a launch: pointers 16-byte aligned, M a multiple of 16
        aligned = [
            (i,)
            for i, name in enumerate(rollout_kernel.arg_names)
            if signature[name][0] == "*" or name == "M"
        ]
        attrs = {index: [["tt.divisibility", 16]] for index in aligned}
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(
                ASTSource(rollout_kernel, signature, constexprs=constexprs, attrs=attrs),
                target=GPUTarget("cuda", args.arch, 32),
                options={"num_warps": warps, "num_stages": stages},
            )
        seconds = time.perf_counter() - start
        text = log.getvalue()

        def grab(pattern: str, text: str = text) -> str:
            found = re.search(pattern, text)
            return found.group(1) if found else "?"

        regs, stores = grab(r"Used (\d+) registers"), grab(r"(\d+) bytes spill stores")
        loads, stack = grab(r"(\d+) bytes spill loads"), grab(r"(\d+) bytes stack frame")
        shared = kernel.metadata.shared
        # mma.sync (Ampere's, version 2) or Hopper's warpgroup MMA (wgmma, version 3)
        versions = sorted(set(re.findall(r"versionMajor = (\d)", kernel.asm["ttgir"])))
        mma = "/".join({"2": "mma.sync", "3": "wgmma"}.get(v, v) for v in versions)
        copies = len(re.findall(r"\bcp\.async\.c[ag]\b", kernel.asm["ptx"]))
        row = (bm, bk, warps, stages, mma, regs, stores, loads, stack, shared, copies, f"{seconds:.1f}")
        print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
