#!/usr/bin/env bash
# The A/B pair of sweeps on the paper preset, on one GPU: A sweeps γ alone (random draws),
# B lets an Optuna study search γ and three recipe fields (docs/spaces/paper-recipe.yaml);
# both with the same number of compress trials, both drawn against A's reference trials.
# It is the paper-preset version of the cpu pair in docs/results.md.
#
# Run from the repository root on a machine with one GPU, with data/ prepared as for
# benchmarks/gpu_check.sh (data/cifar-10-jpeg.tar.gz and data/build_from_jpeg.py):
#     N=12 bash benchmarks/gpu_ab.sh
# Four trials share the GPU (a quarter each). Results: ${OUT:-/tmp/gpu_ab}/{A,B}/ and
# the figures of both in ${OUT}/plots/; a killed run continues with RESUME=1.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_ab}
N=${N:-12}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
mkdir -p "$OUT"
echo "== $(date +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader) $(git log --oneline -1 2>/dev/null | cut -c1-7)"
if [ ! -f data/cifar-10-batches-py/test_batch ]; then
  $PY data/build_from_jpeg.py data/cifar-10-jpeg.tar.gz data/cifar-10-batches-py >/dev/null || {
    echo "cannot rebuild the data: copy ../shared/data/cifar-10-jpeg.tar.gz and" \
         "build_from_jpeg.py into data/ first"; exit 2; }
fi
sweep() {  # name, then sweep.run arguments
  local name=$1; shift
  if [ -n "${RESUME:-}" ]; then
    $PY -m sweep.run --resume --name "$name" --results-dir "$OUT"
  else
    $PY -m sweep.run --preset paper --num-samples "$N" --seed 0 --name "$name" \
      --results-dir "$OUT" --data-dir data "$@"
  fi
}
sweep A
sweep B --references none --space docs/spaces/paper-recipe.yaml --search optuna
$PY -m analysis.plots --results "$OUT/A" "$OUT/B" --references-from "$OUT/A" --out "$OUT/plots"
