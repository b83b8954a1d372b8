#!/usr/bin/env bash
# Issue 36, part 2: bf16 against fp32 on the `cpu` preset, for a CPU with bf16 units
# (lscpu flags amx_bf16 or avx512_bf16; on one without, bf16 is 3.4x slower: benchmarks/README.md).
# Three γs over the default range, two seeds, both precisions: 12 runs, one thread each,
# two at a time; then the bf16 sweep on cpu-ration's γs (same seed: the same draws).
# Usage: bash docs/ablation-precision/parity.sh OUT_DIR [sweep]   (from the repository root)
set -euo pipefail
out=${1:?give an output folder outside the work tree}
lscpu | grep -E "Model name|Flags" > "$out.lscpu" 2>/dev/null || true
common=(--preset cpu --data-dir ../shared/data --threads 1 --quiet)
run() {  # name, flags...
  local name=$1; shift
  [ -f "$out/$name/trials.parquet" ] || python -m trainer.train "${common[@]}" "$@" --out "$out/$name"
}
for seed in 0 1; do
  for g in 0.003 0.03 0.1; do
    run "fp32-g$g-s$seed" --gamma $g --seed $seed --precision fp32 &
    run "bf16-g$g-s$seed" --gamma $g --seed $seed --precision bf16
    wait
  done
done
if [ "${2:-}" = sweep ]; then  # cpu-ration's sweep (docs/cpu-ration/sweep.json) in bf16
  # compare its trials.parquet γs with docs/cpu-ration/trials.parquet before drawing them
  sweep=(--preset cpu --num-samples 12 --gamma-min 0.0003 --gamma-max 0.1 --references none
         --seed 0 --param 'ration=0.5' --param 'precision=bf16' --data-dir ../shared/data
         --results-dir "$out" --name cpu-ration-bf16)
  if [ -f "$out/cpu-ration-bf16/sweep.json" ]; then python -m sweep.run "${sweep[@]}" --resume
  else python -m sweep.run "${sweep[@]}"; fi
fi
