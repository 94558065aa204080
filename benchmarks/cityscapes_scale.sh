#!/usr/bin/env bash
# The measurements in order, each resumable: the generated tree (finishes an interrupted
# generation), `fastal run` at growing fractions of its training split (benchmarks/cityscapes_scale.py),
# then `fastal prepare` at full size over the whole split. Hours on a shared 2-core machine.
#
#   DATA=/work/data-scale/cityscapes RUNS=/work/data-scale/runs FASTAL_CACHE=/work/cache-scale \
#       nice -n 5 bash benchmarks/cityscapes_scale.sh
set -eu
DATA=${DATA:?folder of the generated tree}
RUNS=${RUNS:?folder for the run directories}
PY=${PY:-python}
$PY -m fastal generate cityscapes --out "$DATA" --workers "${WORKERS:-2}"
$PY benchmarks/cityscapes_scale.py --data-root "$DATA" --images ${IMAGES:-372 744 1488 2975} --runs "$RUNS"
/usr/bin/time -v $PY -m fastal prepare --dataset cityscapes --data-root "$DATA" --superpixels 2000 \
    --workers "${WORKERS:-2}" --json benchmarks/results/cityscapes_scale1.0_prepare.json
