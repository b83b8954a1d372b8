"""Cost of self-compression per training step: compressing ResNet-9 vs plain float ResNet-9.

Same width (the ``cpu`` preset's), same batch, steps interleaved; median of repetitions.
``ratio`` = compress step time / float step time (target: at most 1.10 on a CPU).

    python -m benchmarks.overhead [--reps 7] [--batch 512]
"""

import torch

from benchmarks.common import count, emit, interleaved, model_for, parser, train_step_fn


def main() -> None:
    p = parser("overhead", __doc__)
    p.add_argument("--reps", type=count, default=7, help="repetitions (%(default)s)")
    p.add_argument("--batch", type=count, default=512, help="images per batch (%(default)s)")
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
