"""Cost of self-compression per training step: compressing ResNet-9 vs plain float ResNet-9.

Same width (the ``cpu`` preset's), same batch, steps interleaved; median of repetitions.
``ratio`` = compress step time / float step time (target: at most 1.10 on a CPU).

    python -m benchmarks.overhead [--reps 7] [--batch 512]
"""

import argparse

import torch

from benchmarks.common import emit, interleaved, model_for, train_step_fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=512)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    steps = {"compress": train_step_fn(model_for("cpu"), x, y),
             "float": train_step_fn(model_for("cpu", kind="float-baseline"), x, y)}
    t = interleaved(steps, args.reps)
    emit("overhead", {"ratio": round(t["compress"] / t["float"], 3),
                      "compress_step_s": round(t["compress"], 4),
                      "float_step_s": round(t["float"], 4), "batch": args.batch,
                      "reps": args.reps, "preset": "cpu"})


if __name__ == "__main__":
    main()
