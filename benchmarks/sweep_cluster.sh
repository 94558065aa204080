#!/bin/bash
# fastal sweep the way a cluster is used: a separately started `dask scheduler` and two `dask worker`
# processes (loopback only, one run at a time each, one thread), a tiny synthetic grid of
# 2 strategies x 2 seeds (4 runs, 2 shared references). From the repository root:
#   bash benchmarks/sweep_cluster.sh [RESULTS_JSON]      # default benchmarks/results/sweep_cluster.json
# It times the `fastal sweep` command alone (the cluster is up before it starts) and writes the
# machine, the commands and the wall time to RESULTS_JSON.
set -euo pipefail
out_json=${1:-benchmarks/results/sweep_cluster.json}
python=${PYTHON:-python}
dask=$(dirname "$(command -v "$python")")/dask
work=$(mktemp -d)
port=${PORT:-8799}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/base.toml" <<EOF
dataset = "synthetic"
image_size = [32, 48]
train_images = 8
val_images = 4
superpixels = 12
labels = "dominant"
budgets = [4.0, 8.0]
epochs = 1
full_epochs = 2
device = "cpu"
cache_dir = "$work/cache"
EOF
printf 'base = "base.toml"\n[axes]\nstrategy = ["random", "entropy"]\nseed = [0, 1]\n' > "$work/sweep.toml"

scheduler=("$dask" scheduler --host 127.0.0.1 --port "$port" --no-dashboard)
worker=("$dask" worker "tcp://127.0.0.1:$port" --host 127.0.0.1 --nthreads 1 --no-dashboard)
sweep=("$python" -m fastal sweep "$work/sweep.toml" --out "$work/out" --scheduler "tcp://127.0.0.1:$port"
       --threads-per-worker 1)
"${scheduler[@]}" > "$work/scheduler.log" 2>&1 & pids+=($!)
sleep 3
for i in 1 2; do
    DASK_DISTRIBUTED__WORKER__DAEMON=False OMP_NUM_THREADS=1 "${worker[@]}" > "$work/worker$i.log" 2>&1 & pids+=($!)
done
sleep 5
load=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s.%N)
"${sweep[@]}" 2> "$work/sweep.log"
wall=$(echo "$(date +%s.%N) - $start" | bc)
"$python" - "$out_json" "$wall" "$load" "$work" "${scheduler[*]}" "DASK_DISTRIBUTED__WORKER__DAEMON=False OMP_NUM_THREADS=1 ${worker[*]}" "${sweep[*]}" <<'EOF'
import json, os, sys, time
from fastal.atomic import atomic_write_json
from fastal.machine import machine_info
import pandas as pd

out, wall, load, work, scheduler, worker, sweep = sys.argv[1:]
bin_dir = os.path.dirname(scheduler.split()[0]) + "/"


def portable(command: str) -> str:  # no path of this machine: the temp folder as $WORK, programs by name
    return command.replace(work, "$WORK").replace(bin_dir, "")


df = pd.read_parquet(f"{work}/out/cycles.parquet")
atomic_write_json(out, {
    "benchmark": "sweep_cluster",
    "what": "fastal sweep against a separately started dask scheduler + 2 dask worker processes (loopback), "
            "2 strategies x 2 seeds of a tiny synthetic run (4 runs, 2 references)",
    "commands": {"scheduler": portable(scheduler), "workers (x2)": portable(worker), "sweep": portable(sweep)},
    "wall_seconds": round(float(wall), 1),
    "load_average_before": load,
    "runs": int(df["run"].nunique()),
    "final_miou": {r: float(g["miou"].iloc[-1]) for r, g in df.groupby("run", sort=False)},
    "machine": machine_info(),
    "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
})
print(f"{out}: {df['run'].nunique()} runs in {float(wall):.1f} s")
EOF
