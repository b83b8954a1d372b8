#!/usr/bin/env bash
# The proxy runs of docs/ablation.md, "Compressing a trained network": a float baseline on
# the first 12,800 training images, then compress runs from it under candidate recipes.
# Usage: bash docs/ablation-start/proxy.sh OUT_DIR   (one thread per run, one run at a time)
set -euo pipefail
out=${1:?give an output folder}
common=(--preset cpu --batch-size 128 --train-subset 12800 --data-dir ../shared/data --seed 0
        --threads 1 --quiet)
run() {  # name, flags...
  local name=$1; shift
  [ -f "$out/$name/trials.parquet" ] || python -m trainer.train "${common[@]}" "$@" --out "$out/$name"
}
run float --float-baseline --epochs 5
for g in 0.01 0.03 0.1; do  # the candidates, γ by γ
  run "e3-lr0.4-g$g" --init-from "$out/float" --gamma $g --epochs 3
  run "e3-lr0.1-g$g" --init-from "$out/float" --gamma $g --epochs 3 --lr 0.1
  run "e2-lr0.4-g$g" --init-from "$out/float" --gamma $g --epochs 2
done
for g in 0.01 0.03 0.1; do  # then from scratch beside them, and a warm-up of 0
  run "scratch-e5-g$g" --gamma $g --epochs 5
  run "e3-lr0.4-w0-g$g" --init-from "$out/float" --gamma $g --epochs 3 --warmup-fraction 0
done
