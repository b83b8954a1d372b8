"""Inference of a compressed network (channels physically cut) vs the uncompressed one.

Trains a network with a strong γ on synthetic data until channels are cut, then times
evaluation (eval mode, no grad) of it and of the same architecture uncompressed,
interleaved. ``ratio`` = compressed time / uncompressed time (below 1 is faster).

    python -m benchmarks.inference [--reps 9] [--batch 1000]
"""

import torch

from benchmarks.common import conv_macs, count, emit, interleaved, model_for, parser
from benchmarks.shrink import compressed_model


def main() -> None:
    p = parser("inference", __doc__)
    p.add_argument("--reps", type=count, default=9, help="repetitions (%(default)s)")
    p.add_argument("--batch", type=count, default=1000, help="images per batch (%(default)s)")
    args = p.parse_args()
    small, result = compressed_model()
    full = model_for("cpu", width=small.widths[0] / 64)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    small.eval(), full.eval()

    def infer(model):
        def run():
            with torch.no_grad():
                model(x)
        return run

    t = interleaved({"compressed": infer(small), "full": infer(full)}, args.reps)
    emit("inference", {"ratio": round(t["compressed"] / t["full"], 3),
                       "compressed_images_per_s": round(args.batch / t["compressed"]),
                       "full_images_per_s": round(args.batch / t["full"]),
                       "macs_ratio": round(conv_macs(small) / conv_macs(full), 3),
                       "weights_kept_fraction": round(result["weights_kept_fraction"], 3),
                       "batch": args.batch, "reps": args.reps})


if __name__ == "__main__":
    main()
