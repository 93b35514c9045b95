#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks, in one go (a lent GPU machine is short-lived):
#
#   bash bench/gpu_check.sh [OUT_DIR [STEP...]]   # from the repository root, on a machine with a CUDA GPU
#
# With STEP names (tests, wm_cpu_1024, wm_cpu_16384, wm_gpu_1024, planner_cpu, planner_gpu,
# planner_cpu_bc, planner_modes, planner_fused, profile_imagine, sac_pixels) only those run, in the
# order given below.
#
# 1. tests/test_cuda.py (graph replay == eager imagination, bf16 training learns, checkpoints move
#    between devices, train-wm / eval / the online loop on CUDA);
# 2. bench_world_model.py on cuda: `cpu` preset at B=1024 and B=16384, `gpu` preset at B=1024;
# 3. bench_planner.py on cuda at the GPU budget (1 and 16 envs, 1024 samples, H=12,
#    6 iterations), `cpu` and `gpu` presets, and MPPI + a behaviour prior; the `cpu` preset's
#    compiled plan in torch.compile's default and max-autotune modes (planner_modes); with Triton
#    installed (GPU torch builds bring it) also the fused Triton rollout (FusedImagine), whose
#    autotuning compiles 14 configurations on its first call (the tests step compiles them first,
#    for Triton's cache); planner_fused: only the compiled twin and the fused rollout, side by
#    side (the short check of the fused kernel);
# 4. profile_imagine.py: where a [16384, 12] rollout spends its time, cheaper precisions, and the
#    fused Triton rollout (autotuned, with its chosen block, and each candidate block pinned);
# 5. (only when named) the SB3 SAC-from-pixels peer of the online bar on Push, 20k steps on cuda
#    (bench_online.py; ~9.5 min on an H200 with two other seeds beside it, extrapolated from 19,000
#    steps in 535 s; alone not timed: by that estimate its 560 s step is cut before its evaluation,
#    so plan on two calls). It checkpoints every
#    5,000 steps in /tmp/sac_pixels (the replay buffer is ~0.5 GB), so the same command resumes it
#    on a machine that is still warm; its log holds the table.
# Logs go to OUT_DIR (default $OUT, else /tmp/gpu_check), with summary.txt (each step's rc and
# seconds); the script exits 1 when a step failed (a tests step in which nothing passed counts as
# failed: test_cuda.py skips everything without a GPU), 2 without CUDA or for an unknown step name.
# All steps together may take up to ~36 min (their timeouts): on a lent machine with a 10-minute
# limit per command, name the steps (with ~15 minutes of device time in all, start with
# `planner_fused`: the fused rollout is the one untimed lead for issue #4's 10 ms bar). Offline machines: wheels of the project's
# packages in ./.whl and the GL loader .debs in ./.gl (made by `bash bench/gpu_bundle.sh` on a
# machine with network; bench/RESULTS.md, "GPU") are installed first when present; elsewhere
# install the project as usual (`make setup`) and run this.
set -u
out=${1:-${OUT:-/tmp/gpu_check}}
shift $(( $# > 0 ? 1 : 0 ))
only=" $* "
steps=" tests wm_cpu_1024 wm_cpu_16384 wm_gpu_1024 planner_cpu planner_gpu planner_cpu_bc planner_modes \
planner_fused profile_imagine sac_pixels "
for name in "$@"; do
    if [[ "$steps" != *" $name "* ]]; then echo "gpu_check: unknown step '$name'; steps:$steps" >&2; exit 2; fi
done
mkdir -p "$out"
: >"$out/summary.txt"
failed=0
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -d .whl ]; then
    # No install of robobrain itself: envs/ and policies/ are linked into the package for this run
    # (they install as robobrain.envs and robobrain.policies), and the repository root goes on the path.
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    for d in envs policies; do [ -e robobrain/$d ] || { ln -s ../$d robobrain/$d && linked="${linked:-} robobrain/$d"; }; done
    trap 'rm -f ${linked:-}' EXIT
fi
step() {  # step NAME TIMEOUT CMD...: run, log to $out/NAME.log, echo the tail, go on after a failure
    local name=$1 limit=$2
    shift 2
    if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then return; fi
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    if [ "$name" = tests ] && [ $rc = 0 ] && ! grep -q " passed" "$out/$name.log"; then rc=5; fi  # all skipped
    tail -n 25 "$out/$name.log"
    echo "=== $name: rc=$rc, $((SECONDS - t0)) s"
    echo "$name rc=$rc $((SECONDS - t0))s" >>"$out/summary.txt"
    if [ $rc != 0 ]; then failed=1; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
$py -c "import torch, mujoco, gymnasium, stable_baselines3 as sb3; print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', \
'| mujoco', mujoco.__version__, \
'| gymnasium', gymnasium.__version__, '| sb3', sb3.__version__)" 2>&1 | tee -a "$out/gpu.txt"
if ! $py -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_check: $py's torch sees no CUDA device; nothing to check" | tee -a "$out/summary.txt" >&2
    exit 2
fi
bp="bench/bench_planner.py --device cuda --samples 1024 --elites 64 --iterations 6 --horizon 12 --repeats 20"
bw=bench/bench_world_model.py
step tests 360 $py -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
step wm_cpu_1024 60 $py $bw --device cuda --preset cpu --batch 1024 --seconds 2
step wm_cpu_16384 60 $py $bw --device cuda --preset cpu --batch 16384 --seconds 2
step wm_gpu_1024 90 $py $bw --device cuda --preset gpu --batch 1024 --seconds 2
step planner_cpu 360 $py $bp --preset cpu
step planner_gpu 180 $py $bp --preset gpu
step planner_cpu_bc 90 $py $bp --preset cpu --optimizer mppi --guide bc --prior-samples 255
step planner_modes 420 $py $bp --preset cpu --compile-modes default max-autotune-no-cudagraphs
step planner_fused 300 $py $bp --preset cpu --only compiled fused
step profile_imagine 240 $py bench/profile_imagine.py --preset cpu --batch 16384
if [[ "$only" == *" sac_pixels "* ]]; then
    step sac_pixels 560 $py bench/bench_online.py --env robobrain/Push-v0 --env-steps 20000 --episodes 20 \
        --skip state ablation --device cuda --out /tmp/sac_pixels
    cp /tmp/sac_pixels/*.json /tmp/sac_pixels/*.md "$out/" 2>/dev/null  # the table (not the ~0.5 GB buffer)
fi
cat "$out/summary.txt"
exit $failed
