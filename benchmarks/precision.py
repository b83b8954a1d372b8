"""A training step in fp32 against the same step in bf16 autocast, side by side in one process.

Both are the trainer's own ``Step`` (``benchmarks.common.train_step_fn``: channels_last, the
compress kind with its size term, both optimizers, the trainer's heap and denormal settings)
on two copies of one fresh network, the bf16 one under ``trainer.precision.autocast_for`` as
``--precision bf16`` runs it; their repetitions alternate (``interleaved``), so a busy host
slows both alike. ``ratio`` = bf16 seconds per step / fp32: below 1, bf16 is faster here.
The machine is printed with the figures: the CPU's model name and which of its bf16 flags
(``amx_bf16``, ``avx512_bf16``) it has, since the answer depends on them (docs/train.md,
"Precision"); and ``bf16_conv_equal_to_fp32_sums``: for a bf16 convolution's output and
its gradients, the share equal to the exact sum rounded once (float32 accumulation, as on
AMX), at batch 64.

    python -m benchmarks.precision [--preset cpu] [--batch 128] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import torch

from benchmarks.common import count, emit, interleaved, model_for, parser, train_step_fn
from trainer.heap import keep_freed_memory
from trainer.precision import BF16_UNITS, autocast_for, native_bf16
from trainer.results import cpu_flags, cpu_model

LSCPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 flags of bfloat16 arithmetic units


def machine_bf16() -> dict:
    """The CPU's model name and which of LSCPU_BF16_FLAGS its flags list."""
    flags = set(cpu_flags())
    return {"cpu_model": cpu_model(),
            "lscpu_bf16_flags": [f for f in LSCPU_BF16_FLAGS if f in flags]}


def conv_sums_in_fp32(seed: int = 0, batch: int = 64) -> dict[str, float]:
    """For a bf16-autocast convolution's output and its two gradients, the share equal to
    the exact sum (bf16 inputs, float64 sums) rounded once to bf16: near 1 where the library
    sums in float32 and rounds once, as oneDNN does on AMX and as docs/ablation-precision/
    emulate.py does. Without bf16 units PyTorch's own im2col + gemm does so forward but adds
    each image's weight gradient into a bf16 sum (docs/ablation.md, "bf16 against fp32")."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 32, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 32, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(), w.requires_grad_()
    with autocast_for("cpu", "bf16")():
        y = torch.nn.functional.conv2d(x, w, padding=1)
    dy = torch.randn(y.shape, generator=g).bfloat16()
    y.backward(dy)
    xd, wd = (t.detach().bfloat16().double().requires_grad_() for t in (x, w))
    exact = torch.nn.functional.conv2d(xd, wd, padding=1)
    exact.backward(dy.double())

    def share(got: torch.Tensor, sums: torch.Tensor) -> float:
        return round((got == sums.bfloat16()).float().mean().item(), 5)
    return {"forward": share(y, exact), "grad_input": share(x.grad, xd.grad),
            "grad_weight": share(w.grad, wd.grad)}


def main() -> None:
    p = parser("precision", __doc__)
    p.add_argument("--preset", default="cpu", help="the network's preset (%(default)s)")
    p.add_argument("--batch", type=count, default=128, help="images per step (%(default)s)")
    p.add_argument("--reps", type=count, default=5,
                   help="timed steps of each, alternating (%(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as the trainer runs a CPU step (trainer/heap.py)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    steps = {"fp32": train_step_fn(model_for(args.preset), x, y),
             "bf16": train_step_fn(model_for(args.preset), x, y,
                                   autocast=autocast_for("cpu", "bf16"))}
    t = interleaved(steps, args.reps)
    emit("precision", {"ratio": round(t["bf16"] / t["fp32"], 3),
                       "fp32_step_s": round(t["fp32"], 4), "bf16_step_s": round(t["bf16"], 4),
                       **machine_bf16(), "torch_bf16_units": native_bf16(),
                       "bf16_conv_equal_to_fp32_sums": conv_sums_in_fp32(),
                       "torch_bf16_units_looked_for": list(BF16_UNITS),
                       "batch": args.batch, "reps": args.reps, "preset": args.preset})


if __name__ == "__main__":
    main()
