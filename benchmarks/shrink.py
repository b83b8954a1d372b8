"""Epoch time of a network before and after it compressed, next to its live FLOPs.

Trains a ``cpu``-width network with a strong γ on synthetic data until channels are cut,
then times the same fixed "epoch" of training steps on the uncompressed network and on
the compressed one, interleaved. ``ratio`` = after / before; ``macs_ratio`` is the ratio
of their forward multiply-accumulates: the speed-up should track it.

    python -m benchmarks.shrink [--reps 5] [--steps 5]
"""

import torch

from benchmarks.common import conv_macs, count, emit, interleaved, model_for, parser, train_step_fn
from trainer.config import TrainConfig
from trainer.train import train

STRONG = TrainConfig(preset="cpu", dataset="synthetic", gamma=2.0, epochs=6, batch_size=128,
                     lr_quant=0.2, init_bits=2.0, synthetic_size=2048, cut_every=5, seed=0)


def compressed_model():
    """(the compressed network, its training result) from a short strong-γ run."""
    keep = {}
    result = train(STRONG, on_epoch=lambda m, s: keep.update(model=s.model), verbose=False)
    return keep["model"], result


def main() -> None:
    p = parser("shrink", __doc__)
    p.add_argument("--reps", type=count, default=5, help="repetitions (%(default)s)")
    p.add_argument("--steps", type=count, default=5,
                   help="training steps per timed epoch (%(default)s)")
    p.add_argument("--batch", type=count, default=512, help="images per batch (%(default)s)")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    small, result = compressed_model()
    full = model_for("cpu")
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))

    def epoch(model):
        step = train_step_fn(model, x, y)
        return lambda: [step() for _ in range(args.steps)]

    t = interleaved({"after": epoch(small), "before": epoch(full)}, args.reps)
    emit("shrink", {"ratio": round(t["after"] / t["before"], 3),
                    "macs_ratio": round(conv_macs(small) / conv_macs(full), 3),
                    "before_epoch_s": round(t["before"], 3), "after_epoch_s": round(t["after"], 3),
                    "weights_kept_fraction": round(result["weights_kept_fraction"], 3),
                    "steps_per_epoch": args.steps, "batch": args.batch, "reps": args.reps})


if __name__ == "__main__":
    main()
