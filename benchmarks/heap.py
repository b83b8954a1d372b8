"""A `cpu`-preset training step with glibc's default malloc against the trainer's heap.

Every tensor above glibc's mmap threshold (at most 32 MB) is a fresh mmap, faulted in and
zeroed by the kernel, and unmapped when freed; a `cpu`-preset step at batch 512 makes many
(trainer/heap.py). The trainer keeps them on the heap on a CPU (``keep_freed_memory``).
A malloc setting holds for a whole process, so this runs the step in fresh processes, one
per setting in turn (``--reps`` rounds), each timing ``--steps`` steps after two warm-up
steps, and prints the medians and their ratio.

``ratio`` = seconds per step with the trainer's heap / with glibc's default: below 1, the
setting makes the step faster. Also the peak resident memory of each (``maxrss_mib_*``).

    python -m benchmarks.heap [--reps 3] [--steps 3] [--kind compress]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import count, emit, model_for, parser, train_step_fn
from trainer.heap import keep_freed_memory


def child(kind: str, heap: bool, steps: int) -> None:
    """Time ``steps`` steps in this process and print one JSON line (the child's side)."""
    applied = keep_freed_memory() if heap else False
    torch.set_flush_denormal(True)
    model = model_for("cpu", kind=kind)
    x, y = torch.randn(512, 3, 32, 32), torch.randint(0, 10, (512,))
    step = train_step_fn(model, x, y)
    step()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"step_s": statistics.median(times), "applied": applied,
                      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = parser("heap", __doc__)
    p.add_argument("--reps", type=count, default=3, help="rounds of both (%(default)s)")
    p.add_argument("--steps", type=count, default=3, help="timed steps per process "
                   "(%(default)s)")
    p.add_argument("--kind", default="compress", choices=("compress", "float-baseline"),
                   help="the network (%(default)s)")
    p.add_argument("--child", choices=("default", "heap"), help=argparse.SUPPRESS)  # one run
    args = p.parse_args()
    if args.child:
        child(args.kind, args.child == "heap", args.steps)
        return
    runs: dict[str, list[dict]] = {"default": [], "heap": []}
    for _ in range(args.reps):
        for mode in runs:
            out = subprocess.run([sys.executable, "-m", "benchmarks.heap", "--child", mode,
                                  "--kind", args.kind, "--steps", str(args.steps)],
                                 check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    step = {m: statistics.median(r["step_s"] for r in rs) for m, rs in runs.items()}
    emit("heap", {"ratio": round(step["heap"] / step["default"], 3),
                  "step_s_default": round(step["default"], 4),
                  "step_s_heap": round(step["heap"], 4),
                  "applied": all(r["applied"] for r in runs["heap"]),
                  "maxrss_mib_default": round(max(r["maxrss_mib"] for r in runs["default"])),
                  "maxrss_mib_heap": round(max(r["maxrss_mib"] for r in runs["heap"])),
                  "kind": args.kind, "reps": args.reps, "steps": args.steps,
                  "batch": 512, "preset": "cpu"})


if __name__ == "__main__":
    main()
