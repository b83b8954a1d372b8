#!/usr/bin/env bash
# Issue 36, part 2: bf16 against fp32 on the `cpu` preset. Three γs over the default range,
# two seeds, both precisions: 12 runs of one thread, taken in that order by WORKERS (2)
# workers, so no core waits; then the bf16 sweep on cpu-ration's γs (same seed: the same
# draws). On a CPU without bf16 units (lscpu flags amx_bf16 / avx512_bf16) a bf16 run is
# about 12x slower at one thread (PyTorch's im2col convolution), and its backward adds each
# image's weight gradient into a bf16 sum, which a bf16 CPU's float32 sums do not
# (benchmarks/README.md, "bf16 against fp32 on a CPU without native bf16").
# emu: the same three γs and two seeds in bf16 as a bf16 CPU sums it (emulate.py, at about
# fp32's cost), named emu-g{γ}-s{seed}. emu-gammas: cpu-ration's twelve γs (seed 0, read from
# docs/cpu-ration/trials.parquet) in fp32 and emulated bf16, paired: the bf16 front beside
# the fp32 front of today's code.
# Finished runs are kept, and a run whose worker died is taken again: run it again to go on.
# bf16-sweeps: the bf16 runs not yet done here as one-γ sweeps in OUT instead (bf16-g0.003:
# seeds 0 and 1; bf16-g0.03: 0 and 1; bf16-g0.1: seed 1), one after the other, each trial
# on a core; a sweep checkpoints every epoch, so a killed one goes on where it stopped
# (a trainer.train run starts again), which is what hours-long bf16 runs on a CPU without
# bf16 units need. table.py reads both kinds of folder.
# Usage: bash docs/ablation-precision/parity.sh OUT_DIR [sweep|bf16-sweeps|emu|emu-gammas]
#   (from the repository root)
set -euo pipefail
out=${1:?give an output folder outside the work tree}
mkdir -p "$out/.claims"
{ date -u +%FT%TZ; git rev-parse --short HEAD; lscpu | grep -E "Model name|Flags"; } >> "$out/machine.txt"
if [ "${2:-}" = bf16-sweeps ]; then
  for spec in 0.003:0:2 0.03:0:2 0.1:1:1; do  # γ : first seed : seeds
    IFS=: read -r g seed n <<< "$spec"
    where=(--results-dir "$out" --name "bf16-g$g" --no-dashboard)
    if [ -f "$out/bf16-g$g/sweep.json" ]; then python -m sweep.run "${where[@]}" --resume
    else python -m sweep.run "${where[@]}" --preset cpu --num-samples 1 --seed "$seed" \
      --seeds "$n" --param "gamma=$g" --param precision=bf16 --references none \
      --data-dir ../shared/data; fi
  done
  exit
fi
for claim in "$out"/.claims/*; do  # a claim whose process is gone: the run is free again
  [ -e "$claim" ] && { kill -0 "$(cat "$claim/pid" 2>/dev/null)" 2>/dev/null || rm -rf "$claim"; }
done
runs=()
case "${2:-}" in
  emu) for seed in 0 1; do for g in 0.1 0.003 0.03; do runs+=("emu-g$g-s$seed"); done; done ;;
  emu-gammas)
    for g in $(python -c "import pandas as pd; print(*map(repr, sorted(map(float, pd.read_parquet(
        'docs/cpu-ration/trials.parquet').gamma))))"); do
      runs+=("fp32-g$g-s0" "emu-g$g-s0")
    done ;;
  *) for seed in 0 1; do for g in 0.1 0.003 0.03; do for p in fp32 bf16; do
       runs+=("$p-g$g-s$seed")
     done; done; done ;;
esac
worker() {
  local name p g seed
  for name in "${runs[@]}"; do
    [ -f "$out/$name/trials.parquet" ] && continue
    mkdir "$out/.claims/$name" 2>/dev/null || continue  # another worker has it
    echo "$BASHPID" > "$out/.claims/$name/pid"
    IFS=- read -r p g seed <<< "$name"
    local flags=(--preset cpu --data-dir ../shared/data --threads 1 --quiet
                 --gamma "${g#g}" --seed "${seed#s}" --out "$out/$name")
    if [ "$p" = emu ]; then python docs/ablation-precision/emulate.py "${flags[@]}"
    else python -m trainer.train "${flags[@]}" --precision "$p"; fi
    rm -rf "$out/.claims/$name"
  done
}
for _ in $(seq "${WORKERS:-2}"); do worker & done
wait
if [ "${2:-}" = sweep ]; then  # cpu-ration's sweep (docs/cpu-ration/sweep.json) in bf16
  # compare its trials.parquet γs with docs/cpu-ration/trials.parquet before drawing them
  sweep=(--preset cpu --num-samples 12 --gamma-min 0.0003 --gamma-max 0.1 --references none
         --seed 0 --param 'ration=0.5' --param 'precision=bf16' --data-dir ../shared/data
         --results-dir "$out" --name cpu-ration-bf16)
  if [ -f "$out/cpu-ration-bf16/sweep.json" ]; then python -m sweep.run "${sweep[@]}" --resume
  else python -m sweep.run "${sweep[@]}"; fi
fi
