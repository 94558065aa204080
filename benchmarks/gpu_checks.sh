#!/usr/bin/env bash
# The GPU checks, in one call on a lent GPU machine (see ../shared/GPU.md): the gpu-marked tests,
# the selection sweep with the torch engine on CUDA (no cuML there), the kernel benchmark, an
# end-to-end `fastal run` on CUDA and the training-step throughput at the GPU protocol's size.
#
#   OUT=/tmp/gpu BUDGET=540 bash benchmarks/gpu_checks.sh
#
# Missing pure-Python packages (umap-learn, pynndescent) travel as wheels in .whl/; the synthetic
# dataset's superpixel cache travels in .gpucache/ (that machine has no OpenCV contrib, no SEEDS).
# Each step's log and JSON go to $OUT/r and are packed into $OUT/gpu.tar.gz after every step, so
# that what finished comes back even if the call is cut off. Steps share one deadline (BUDGET s).
set -u
OUT=${OUT:-$PWD/gpu_out}
R=$OUT/r
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-10000 100000 1000000}     # selection sweep, before the other benchmarks
LARGE=${LARGE:-3000000 6000000}          # and after them (a full Cityscapes pool is ~6M)
DEADLINE=$(($(date +%s) + ${BUDGET:-540}))
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
step tests 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests
sweep() {
    for n in "$@"; do
        step "selection_$n" 150 python3 -m fastal bench selection --superpixels "$n" --device "$DEVICE" --engine torch \
            --json "$R/selection_${DEVICE}_$n.json" || return
    done
}
sweep $SIZES
step kernels 100 python3 benchmarks/bench_kernels.py --device "$DEVICE" --dtypes float32 bfloat16 --json "$R/kernels_$DEVICE.json"
step run 100 python3 -m fastal run --device "$DEVICE" --out /tmp/fastal_run_gpu_check &&
    cp /tmp/fastal_run_gpu_check/results.json "$R/run_results.json"
sweep $LARGE
step train 80 python3 benchmarks/bench_train.py --device "$DEVICE" --batch-size 8 --steps 5 \
    --cases resnet50:360x480 resnet18:360x480 --out "$R/train_$DEVICE.json"
tar -czf "$OUT/gpu.tar.gz" -C "$R" .
