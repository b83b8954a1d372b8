"""Training throughput of a ``cpu``-preset step against what this machine's arithmetic allows.

The limit is this machine's measured float32 matrix-multiply throughput (FLOP/s, a large
square ``torch.mm`` at the same thread count) divided by the FLOPs one training image costs
(forward multiply-accumulates x 2 FLOPs x 3: forward, and the two products of backward).
``ratio`` = achieved images/s / that limit: the share of the machine's peak arithmetic the
step turns into training. The step is the trainer's: channels_last, compress kind, size
term and dead-channel penalty, both optimizers, large tensors kept on the heap.

    python -m benchmarks.roofline [--reps 5] [--batch 512] [--matmul 2048]
"""

import time

import torch

from benchmarks.common import conv_macs, count, emit, interleaved, model_for, parser, train_step_fn
from trainer.heap import keep_freed_memory


def matmul_flops(n: int, reps: int) -> float:
    """Best float32 FLOP/s of an n x n x n matrix product over ``reps`` runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
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
    args = p.parse_args()
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as the trainer runs a CPU step (trainer/heap.py)
    model = model_for("cpu")
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    peak = matmul_flops(args.matmul, args.reps)
    step = interleaved({"step": train_step_fn(model, x, y)}, args.reps)["step"]
    peak = max(peak, matmul_flops(args.matmul, args.reps))  # after the step too: noisy host
    flops_per_image = 6 * conv_macs(model)
    limit = peak / flops_per_image
    achieved = args.batch / step
    emit("roofline", {"ratio": round(achieved / limit, 3),
                      "images_per_s": round(achieved), "limit_images_per_s": round(limit),
                      "matmul_gflops": round(peak / 1e9, 1), "step_s": round(step, 4),
                      "train_mflops_per_image": round(flops_per_image / 1e6, 1),
                      "batch": args.batch, "reps": args.reps, "preset": "cpu"})


if __name__ == "__main__":
    main()
