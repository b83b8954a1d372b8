#!/usr/bin/env bash
# A paper-preset front on one GPU: compress trials beside the references that issue 9 asks
# the front to beat, all run at once on the one GPU (each its own process), 24 epochs each.
#
# Run from the repository root on a machine with one GPU, with data/ prepared as for
# benchmarks/gpu_check.sh:
#     bash benchmarks/gpu_front.sh
# Prints each run's final JSON line (benchmarks.gpu_check) and a table; the per-epoch lines
# land in ${OUT:-/tmp/gpu_front}/<run>.jsonl. GAMMAS, NARROW (widths) and FIXED (bits) choose
# the runs; MIN_BITS, when set, is the compress runs' --min-bits; TRIAL_S stops a run that
# takes longer.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_front}
# with --min-bits 3 (the default) a tenth of the gammas without it (measured on the cpu
# preset; on the paper preset unmeasured): 0.005 0.01 0.02 ran with MIN_BITS=0
GAMMAS=${GAMMAS-"0.0005 0.001 0.002"}
NARROW=${NARROW-"0.5 0.75"}
FIXED=${FIXED-"3"}  # FIXED="" runs none
TRIAL_S=${TRIAL_S:-280}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
mkdir -p "$OUT"
echo "== $(date +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader) $(git log --oneline -1 2>/dev/null | cut -c1-7)"
if [ ! -f data/cifar-10-batches-py/test_batch ]; then
  $PY data/build_from_jpeg.py data/cifar-10-jpeg.tar.gz data/cifar-10-batches-py >/dev/null || {
    echo "cannot rebuild the data: copy ../shared/data/cifar-10-jpeg.tar.gz and" \
         "build_from_jpeg.py into data/ first"; exit 2; }
fi
run() {  # name, then benchmarks.gpu_check arguments
  local name=$1; shift
  timeout "$TRIAL_S" $PY -m benchmarks.gpu_check --data-dir data "$@" >"$OUT/$name.jsonl" \
    2>"$OUT/$name.err" || echo "$name: stopped or failed ($?): $(tail -1 "$OUT/$name.err")"
}
start=$(date +%s)
run float --kind float-baseline &
for g in $GAMMAS; do
  run "compress_g$g" --kind compress --gamma "$g" ${MIN_BITS:+--min-bits "$MIN_BITS"} &
done
for w in $NARROW; do run "narrow_w$w" --kind narrow-float --width "$w" & done
for b in $FIXED; do run "fixed_b$b" --kind fixed-bits --fixed-bits "$b" & done
wait
echo "== $(date +%T) all runs ended, $(( $(date +%s) - start )) s of wall time, run side by side"
$PY - "$OUT" <<'PYEOF'
import json, pathlib, sys
rows = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.jsonl")):
    lines = [json.loads(x) for x in f.read_text().splitlines() if x.startswith("{")]
    last = next((x for x in reversed(lines) if "trial_s" in x), None)
    if last is None:
        print(f"{f.stem}: did not finish ({len(lines)} epochs)")
        continue
    print(json.dumps(last))
    rows.append((f.stem, last))
print("\n| run | accuracy | bits | weights kept | train s (side by side) |")
print("|---|---:|---:|---:|---:|")
for name, r in sorted(rows, key=lambda nr: nr[1]["bits_fraction"]):
    print(f"| {name} | {100 * r['test_accuracy']:.2f} % | {100 * r['bits_fraction']:.2f} % "
          f"| {100 * r['weights_kept_fraction']:.1f} % | {r['train_s']} |")
PYEOF
