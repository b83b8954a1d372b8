#!/usr/bin/env bash
# Issue 36, part 2: bf16 against fp32 on the `cpu` preset. Three γs over the default range,
# two seeds, both precisions: 12 runs, one thread each, in two lanes (fp32 and bf16) so that
# neither waits for the other; then the bf16 sweep on cpu-ration's γs (same seed: the same
# draws). On a CPU without bf16 units (lscpu flags amx_bf16 / avx512_bf16) the bf16 lane is
# 3.4x slower (benchmarks/README.md) but computes the same roundings.
# Finished runs are kept: run it again to go on.
# Usage: bash docs/ablation-precision/parity.sh OUT_DIR [sweep]   (from the repository root)
set -euo pipefail
out=${1:?give an output folder outside the work tree}
mkdir -p "$out"
{ date -u +%FT%TZ; git rev-parse --short HEAD; lscpu | grep -E "Model name|Flags"; } >> "$out/machine.txt"
common=(--preset cpu --data-dir ../shared/data --threads 1 --quiet)
lane() {  # precision: its six runs, seed 0 first
  local p=$1 seed g
  for seed in 0 1; do
    for g in 0.1 0.003 0.03; do
      [ -f "$out/$p-g$g-s$seed/trials.parquet" ] ||
        python -m trainer.train "${common[@]}" --gamma $g --seed $seed --precision "$p" \
          --out "$out/$p-g$g-s$seed"
    done
  done
}
lane fp32 & lane bf16
wait
if [ "${2:-}" = sweep ]; then  # cpu-ration's sweep (docs/cpu-ration/sweep.json) in bf16
  # compare its trials.parquet γs with docs/cpu-ration/trials.parquet before drawing them
  sweep=(--preset cpu --num-samples 12 --gamma-min 0.0003 --gamma-max 0.1 --references none
         --seed 0 --param 'ration=0.5' --param 'precision=bf16' --data-dir ../shared/data
         --results-dir "$out" --name cpu-ration-bf16)
  if [ -f "$out/cpu-ration-bf16/sweep.json" ]; then python -m sweep.run "${sweep[@]}" --resume
  else python -m sweep.run "${sweep[@]}"; fi
fi
