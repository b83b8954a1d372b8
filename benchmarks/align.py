"""Does a channel count that is not a multiple of 8 slow a convolution down?

After cuts a layer keeps whatever number of channels is live (389 of 512, say). On a GPU the
tensor cores take bf16 convolutions in groups of 8 channels, so an odd count may cost more
than the multiply-adds it saves; on this CPU oneDNN vectorises over 8 or 16 floats. This
times one 3x3 conv + BatchNorm + ReLU block (forward and backward, batch 512, channels_last;
bf16 autocast on CUDA as the trainer runs it) at the paper network's widths and spatial
sizes, at four channel counts side by side: c and c + 8 (multiples of 8), c - 1 and c + 7.

``ratio`` = seconds per multiply-add at the unaligned counts / at the aligned ones (each
pair's geometric mean): above 1, a count that is not a multiple of 8 costs more per
multiply-add, so cutting a channel from an aligned layer can make it slower.

    python -m benchmarks.align [--reps 10] [--batch 512] [--device auto]
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from benchmarks.common import count, emit, interleaved, parser

# (channels, spatial size) like the paper network's 3x3 layers after layer1: res1 (128 at
# 16x16), layer3 (256 in at 8x8), res3 (512 at 4x4) (trainer.model.SPATIAL).
SHAPES = ((128, 16), (256, 8), (512, 4))


def block_fn(c: int, size: int, batch: int, device: torch.device):
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
    block = nn.Sequential(conv, nn.BatchNorm2d(c), nn.ReLU()).to(device)
    block = block.to(memory_format=torch.channels_last)
    x = torch.randn(batch, c, size, size, device=device).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if cuda else contextlib.nullcontext

    def step() -> None:
        with autocast():
            y = block(x)
        y.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()
    return step


def main() -> None:
    p = parser("align", __doc__)
    p.add_argument("--reps", type=count, default=10, help="timed repetitions (%(default)s)")
    p.add_argument("--batch", type=count, default=512, help="images per batch (%(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    args = p.parse_args()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.set_flush_denormal(True)
    for c, size in SHAPES:
        counts = (c, c - 1, c + 7, c + 8)
        t = interleaved({n: block_fn(n, size, args.batch, device) for n in counts}, args.reps,
                        warmup=2)
        per_mac = {n: t[n] / n**2 for n in counts}
        unaligned = (per_mac[c - 1] * per_mac[c + 7]) ** 0.5
        aligned = (per_mac[c] * per_mac[c + 8]) ** 0.5
        emit("align", {"ratio": round(unaligned / aligned, 3), "channels": c, "spatial": size,
                       **{f"s_{n}": round(t[n], 5) for n in counts},
                       "batch": args.batch, "reps": args.reps, "device": device.type})


if __name__ == "__main__":
    main()
