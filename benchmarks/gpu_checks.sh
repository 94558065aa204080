#!/usr/bin/env bash
# The GPU checks, in one call of under 8 minutes on a lent GPU machine (see ../shared/GPU.md):
# the gpu-marked tests (sync-free selection under sync_debug_mode "error", UMAP/KMeans on CUDA
# against umap-learn/CPU, the numba.cuda kernels), the selection sweep 10k -> 6M with the torch
# engine (no cuML there; the 1M run also writes a profiler trace), `fastal bench scoring` with
# ResNet-50 in bf16 at 1024x2048 over a Cityscapes-sized pool (2,975 images), the kernel
# benchmark, an end-to-end `fastal run` on CUDA, and the training step if time is left.
#
#   OUT=/tmp/gpu BUDGET=470 bash benchmarks/gpu_checks.sh
#
# Missing pure-Python packages (umap-learn, pynndescent) travel as wheels in .whl/; the synthetic
# dataset's superpixel cache travels in .gpucache/ (that machine has no OpenCV contrib, no SEEDS:
# the scoring bench uses a regular grid of ~2,000 regions per image instead). Each step's log and
# JSON go to $OUT/r and are packed into $OUT/gpu.tar.gz after every step, so that what finished
# comes back even if the call is cut off. Steps share one deadline (BUDGET s); a step gets
# min(its limit, time left) and the sizes below are chosen so that the sum of limits fits.
set -u
OUT=${OUT:-$PWD/gpu_out}
R=$OUT/r
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-10000 100000 1000000 3000000 6000000}  # selection sweep (a full Cityscapes pool is ~6M)
POOL_IMAGES=${POOL_IMAGES:-2975}                        # Cityscapes train
DEADLINE=$(($(date +%s) + ${BUDGET:-470}))
mkdir -p "$R"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 FASTAL_CACHE=$PWD/.gpucache

step() {  # step NAME LIMIT_S COMMAND...: run under min(LIMIT_S, time left), log to $R/NAME.log
    local name=$1 limit=$2 left rc start
    shift 2
    left=$((DEADLINE - $(date +%s) - 5))
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        echo "== $name skipped: deadline"
        return 1
    fi
    start=$(date +%s)
    timeout "$limit" "$@" >"$R/$name.log" 2>&1
    rc=$?
    echo "== $name rc=$rc $(($(date +%s) - start)) s (limit $limit s)"
    tail -n 12 "$R/$name.log"
    tar -czf "$OUT/gpu.tar.gz" -C "$R" .
    return $rc
}

nvidia-smi >"$R/nvidia-smi.txt" 2>&1
python3 -c "import torch, numba; print(torch.__version__, numba.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
step tests 100 python3 -m pytest -m gpu -q -p no:cacheprovider tests
for n in $SIZES; do
    extra=()
    [ "$n" = 1000000 ] && extra=(--profile "$R/profile_selection_1M")
    step "selection_$n" 45 python3 -m fastal bench selection --superpixels "$n" --device "$DEVICE" --engine torch \
        --json "$R/selection_${DEVICE}_$n.json" "${extra[@]}" || break
done
step scoring 110 python3 -m fastal bench scoring --images "$POOL_IMAGES" --size 1024x2048 --backbone resnet50 \
    --amp bf16 --batch-size 8 --superpixels grid --device "$DEVICE" --json "$R/scoring_${DEVICE}_resnet50_bf16.json"
step kernels 45 python3 benchmarks/bench_kernels.py --device "$DEVICE" --dtypes float32 bfloat16 --json "$R/kernels_$DEVICE.json"
step run 90 python3 -m fastal run --device "$DEVICE" --out /tmp/fastal_run_gpu_check &&
    cp /tmp/fastal_run_gpu_check/results.json "$R/run_results.json"
step train 40 python3 benchmarks/bench_train.py --device "$DEVICE" --batch-size 8 --steps 5 \
    --cases resnet50:360x480 --out "$R/train_$DEVICE.json"
gzip -f "$R"/profile_selection_1M/*.json 2>/dev/null
tar -czf "$OUT/gpu.tar.gz" -C "$R" .
