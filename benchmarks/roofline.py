"""Training throughput of a ``cpu``-preset step against what this machine's arithmetic allows.

The limit is this machine's measured matrix-multiply throughput in the step's precision
(FLOP/s, a large square ``torch.mm`` at the same thread count, in float32 for ``--precision
fp32`` and bfloat16 for ``bf16``) divided by the FLOPs one training image costs (forward
multiply-accumulates x 2 FLOPs x 3: forward, and the two products of backward). ``ratio`` =
achieved images/s / that limit: the share of the machine's peak arithmetic the step turns
into training. Both peaks are printed, whichever the step runs in. The step is the
trainer's: channels_last, compress kind, size term and dead-channel penalty, both
optimizers, large tensors kept on the heap, under ``trainer.precision.autocast_for``.

    python -m benchmarks.roofline [--reps 5] [--batch 512] [--matmul 2048]
                                  [--precision fp32|bf16]
"""

import time

import torch

from benchmarks.common import conv_macs, count, emit, interleaved, model_for, parser, train_step_fn
from trainer.heap import keep_freed_memory
from trainer.precision import autocast_for

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_flops(n: int, reps: int, precision: str = "fp32") -> float:
    """Best FLOP/s of an n x n x n matrix product in ``precision`` over ``reps`` runs."""
    a, b = (torch.randn(n, n, dtype=DTYPES[precision]) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def main() -> None:
    p = parser("roofline", __doc__)
    p.add_argument("--reps", type=count, default=5, help="repetitions (%(default)s)")
    p.add_argument("--batch", type=count, default=512, help="images per batch (%(default)s)")
    p.add_argument("--matmul", type=count, default=2048,
                   help="side of the square matrices timed for the peak (%(default)s)")
    p.add_argument("--precision", choices=tuple(DTYPES), default="fp32",
                   help="the step's precision, and so the peak it is held to (%(default)s: "
                        "what --precision auto trains in on every CPU)")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as the trainer runs a CPU step (trainer/heap.py)
    model = model_for("cpu")
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    peaks = {q: matmul_flops(args.matmul, args.reps, q) for q in DTYPES}
    step = train_step_fn(model, x, y, autocast=autocast_for("cpu", args.precision))
    step = interleaved({"step": step}, args.reps)["step"]
    for q in DTYPES:  # after the step too: noisy host
        peaks[q] = max(peaks[q], matmul_flops(args.matmul, args.reps, q))
    flops_per_image = 6 * conv_macs(model)
    limit = peaks[args.precision] / flops_per_image
    achieved = args.batch / step
    emit("roofline", {"ratio": round(achieved / limit, 3), "precision": args.precision,
                      "images_per_s": round(achieved), "limit_images_per_s": round(limit),
                      "matmul_gflops": {q: round(f / 1e9, 1) for q, f in peaks.items()},
                      "step_s": round(step, 4),
                      "train_mflops_per_image": round(flops_per_image / 1e6, 1),
                      "batch": args.batch, "reps": args.reps, "preset": "cpu"})


if __name__ == "__main__":
    main()
