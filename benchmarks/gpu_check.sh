#!/usr/bin/env bash
# The GPU check: what one GPU does with scnn, in one script of at most about 6 minutes.
#
# Run from the repository root of a fresh copy on a machine with one GPU:
#     bash benchmarks/gpu_check.sh
# It needs the CIFAR-10 JPEG archive and its rebuild script in data/ (ignored by git), copied
# from ../shared/data/ beforehand:
#     mkdir -p data && cp ../shared/data/cifar-10-jpeg.tar.gz ../shared/data/build_from_jpeg.py data/
# and, for the sweep step, Ray: if `import ray` fails it unpacks .whl/*.tar.xz (an unpacked
# site-packages tree) and installs .whl/*.whl into /tmp/site, or the sweep step is skipped and
# says so. Ray 2.60's wheel (79 MB) is over the device tool's 64 MiB carry; benchmarks/README.md
# says how to pack it, without its Java jars, into a 31 MB .tar.xz.
#
# Steps, each printed as it runs (JSON lines from benchmarks.gpu_check):
#   1. the GPU (nvidia-smi), rebuild CIFAR-10 into data/cifar-10-batches-py
#   2. a paper-preset float baseline and a paper-preset compress trial, per-epoch seconds,
#      accuracy, peak GPU memory (EPOCHS=24 by default: the preset's); the float baseline's
#      final network also with test-time augmentation (--tta: benchmarks.tta), for the
#      92 % target on the JPEG copy
#   1a. benchmarks.step: seconds per step of the float, compress and captured compress step,
#      and how busy the GPU is in each (does the compress step wait on the host?)
#   1b. benchmarks.align: is a conv with a channel count off a multiple of 8 slower per
#      multiply-add (the suspect for compress epochs slowing down as channels go)
#   1c. benchmarks.shrink --device cuda: a cut network's step against its dense twin's
#      (twin_ratio) and the uncut network's (ratio), beside their MACs ratios
#   2a. with BEFORE=DIR (DIR/trainer/ an older trainer, e.g. `mkdir -p local/before &&
#      git archive 0432bd1 trainer | tar -x -C local/before`, carried), the compress trial
#      again with that trainer: the two side by side on one machine
#   2b. the compress trial again with its step captured in a CUDA graph (--cuda-graphs;
#      epoch seconds side by side with 2), and tests/test_graphs.py with its GPU test
#   3. an 8-trial sweep of shortened paper trials (SWEEP_EPOCHS=3) at GPUS_PER_TRIAL=0.25,
#      its wall time and every trial's result (SKIP_SWEEP=1 leaves it out)
# Results land in ${OUT:-/tmp/gpu_check}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
EPOCHS=${EPOCHS:-24}
SWEEP_EPOCHS=${SWEEP_EPOCHS:-3}
GPUS_PER_TRIAL=${GPUS_PER_TRIAL:-0.25}
SWEEP_DIR=${SWEEP_DIR:-/tmp/gpu_check_sweep}  # the sweep's folder; its Parquet files go to OUT
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
mkdir -p "$OUT"
step() { echo; echo "== $(date +%T) $*"; }

step "the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
git log --oneline -1 2>/dev/null || true

step "rebuild CIFAR-10 from data/cifar-10-jpeg.tar.gz"
if [ ! -f data/cifar-10-batches-py/test_batch ]; then
  $PY data/build_from_jpeg.py data/cifar-10-jpeg.tar.gz data/cifar-10-batches-py || {
    echo "cannot rebuild the data: copy ../shared/data/cifar-10-jpeg.tar.gz and" \
         "build_from_jpeg.py into data/ first"; exit 2; }
fi

step "channel counts that are not multiples of 8 (benchmarks.align)"
timeout ${ALIGN_S:-60} $PY -m benchmarks.align --reps 20 | tee "$OUT/align.jsonl" \
  || echo "align: stopped or failed ($?)"

step "one training step alone: float, compress, compress captured in a CUDA graph (benchmarks.step)"
timeout ${ALIGN_S:-60} $PY -m benchmarks.step --preset paper | tee "$OUT/step.jsonl" \
  || echo "step: stopped or failed ($?)"

if [ -z "${SKIP_TRIALS:-}" ]; then  # SKIP_TRIALS=1: the sweep step alone
step "a cut network against its dense twin and the uncut one (benchmarks.shrink --device cuda)"
timeout ${SHRINK_S:-120} $PY -m benchmarks.shrink --device cuda --reps 10 --steps 10 \
  | tee "$OUT/shrink.jsonl" || echo "shrink: stopped or failed ($?)"

step "paper-preset float baseline, $EPOCHS epochs"
timeout ${STEP_S:-150} $PY -m benchmarks.gpu_check --kind float-baseline --epochs "$EPOCHS" \
  --tta --data-dir data | tee "$OUT/float.jsonl" || echo "float baseline: stopped or failed ($?)"

# --min-bits 0 (skip-one-bit alone, the default before cpu-mb3): the same trial as the
# timings of 2026-11-26 in benchmarks/README.md
step "paper-preset compress trial (gamma 0.05, --min-bits 0), $EPOCHS epochs"
timeout ${STEP_S:-150} $PY -m benchmarks.gpu_check --kind compress --gamma 0.05 --epochs "$EPOCHS" --min-bits 0 \
  --data-dir data | tee "$OUT/compress.jsonl" || echo "compress: stopped or failed ($?)"

if [ -n "${BEFORE:-}" ]; then  # BEFORE=local/before: a folder holding an older trainer/
step "the same compress trial with the trainer in $BEFORE (side by side with the one above)"
# run from inside $BEFORE: python -m puts the working directory first on the path, so its
# trainer/ is the one imported; benchmarks/ comes from this copy (the JSON's "trainer" says)
(cd "$BEFORE" && timeout ${STEP_S:-150} $PY -m benchmarks.gpu_check --kind compress \
  --gamma 0.05 --epochs "$EPOCHS" --min-bits 0 --data-dir "$OLDPWD/data") \
  | tee "$OUT/compress_before.jsonl" || echo "compress before: stopped or failed ($?)"
fi

step "the same compress trial, its step captured in a CUDA graph (--cuda-graphs)"
timeout ${STEP_S:-150} $PY -m benchmarks.gpu_check --kind compress --gamma 0.05 --epochs "$EPOCHS" \
  --min-bits 0 --cuda-graphs --data-dir data | tee "$OUT/compress_graphs.jsonl" || echo "cuda graphs: stopped or failed ($?)"

step "a captured trial trains as the eager one (tests/test_graphs.py, on the GPU)"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py 2>&1 | tail -15
fi

if [ -z "${SKIP_SWEEP:-}" ]; then  # SKIP_SWEEP=1: the trials alone (measured: 65 s, 8 of 8)
step "8-trial sweep, $SWEEP_EPOCHS epochs each, $GPUS_PER_TRIAL GPU per trial"
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"  # Ray installed by a call before
if ! $PY -c "import ray.tune" 2>/dev/null; then
  mkdir -p /tmp/site
  for t in .whl/*.tar.xz; do [ -f "$t" ] && tar -xJf "$t" -C /tmp/site; done
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if $PY -c "import ray.tune"; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
    >"$OUT/smi_mib.txt" 2>/dev/null &
  smi=$!
  start=$(date +%s)
  timeout ${SWEEP_S:-200} $PY -m sweep.run --preset paper --epochs "$SWEEP_EPOCHS" --num-samples 8 \
    --references none --gpus-per-trial "$GPUS_PER_TRIAL" --data-dir data \
    --results-dir "$SWEEP_DIR" --name gpu8 2>&1 | grep -v "^│\|^├\|^╭\|^╰" | tail -40
  echo "sweep wall time: $(( $(date +%s) - start )) s"
  kill $smi 2>/dev/null
  echo "peak GPU memory used during the sweep (nvidia-smi, all trials): $(sort -n "$OUT/smi_mib.txt" | tail -1) MiB"
  cp "$SWEEP_DIR"/gpu8/*.parquet "$OUT"/ 2>/dev/null
  $PY - "$SWEEP_DIR/gpu8" <<'EOF'
import sys
import pandas as pd
t = pd.read_parquet(f"{sys.argv[1]}/trials.parquet")
print(t[["kind", "status", "gamma", "test_accuracy", "bits_fraction", "train_time_s"]]
      .to_string(index=False))
e = pd.read_parquet(f"{sys.argv[1]}/epochs.parquet")
print("seconds per epoch, every trial:",
      e.groupby("trial_id")["epoch_time_s"].apply(lambda s: [round(v, 1) for v in s]).tolist())
EOF
else
  echo "sweep skipped: Ray is not importable here (carry its wheels, see the header)"
fi
fi
step "done"
