"""bf16 training as a CPU with bf16 units computes it, at float32 speed on a CPU without them.

    python docs/ablation-precision/emulate.py [trainer.train flags ... --out DIR]

Trains as ``python -m trainer.train --precision bf16`` does (the same autocast, so BatchNorm,
ReLU, pooling and the residual sums see the same bf16 activations), except that each
convolution and the head's matmul, the ops autocast lowers to bf16 in this network, runs in
float32 arithmetic on its bf16-rounded inputs and its result is rounded once to bf16. Forward
and backward, that is the exact sum of bf16 products rounded once: what a kernel that
accumulates in float32 returns, as oneDNN's do on AMX and AVX512-BF16. A CPU without bf16
units runs a bf16 convolution through PyTorch's own im2col + gemm (``_slow_conv2d``) at 10-12x
the float32 time, and its backward adds each image's weight gradient into a bf16 sum, so its
errors grow with the batch (``python -m benchmarks.precision`` prints both; docs/ablation.md,
"bf16 against fp32"). This costs about what float32 costs.

DIR gets ``emulated.json`` beside trainer.train's files; ``table.py`` counts a folder named
``emu-g{γ}-s{seed}`` with it as the emulated bf16 arm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# the trainer of the tree this file is in, not whichever one the environment installed
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LOWERED = (F.conv2d, F.linear)  # what autocast runs in bf16 in ResNet9 (tests check it)


def rounded(a):
    """A float tensor rounded to the nearest bf16, kept float32 (others as they are)."""
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        return a.to(torch.bfloat16).float()
    return a


class EmulatedBF16(TorchFunctionMode):
    """Under CPU autocast, LOWERED ops in float32 on bf16-rounded inputs, their result
    rounded once to bf16; the casts' backward rounds the gradients alike. ``calls`` counts
    them."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LOWERED and torch.is_autocast_enabled("cpu"):
            self.calls += 1
            with torch.autocast("cpu", enabled=False):
                out = func(*map(rounded, args), **{k: rounded(v) for k, v in kwargs.items()})
            return out.to(torch.bfloat16)
        return func(*args, **kwargs)


def main(argv: list[str]) -> None:
    from trainer.cli import parser
    from trainer.cli import run as train_cli

    asked = parser().parse_args(argv)  # trainer.train's own errors first, exit 2
    if asked.out is None:
        fail("give trainer.train's --out DIR: emulated.json goes there")
    if asked.precision not in ("auto", "bf16"):
        fail("emulate.py trains in bf16: leave --precision out or give bf16")
    if asked.device not in ("auto", "cpu"):
        fail("emulate.py emulates a CPU's bf16: give --device cpu or leave it out")
    out = Path(asked.out)
    argv = [*argv, "--precision", "bf16", "--device", "cpu"]  # the last one given counts
    print("emulate.py: bf16 autocast, its convolutions and matmuls summed in float32 and "
          "rounded once (a CPU with bf16 units), computed in float32 arithmetic")
    mode = EmulatedBF16()
    with mode:
        train_cli(argv)
    if not mode.calls:
        fail("no convolution ran under bf16 autocast: nothing was emulated")
    (out / "emulated.json").write_text(json.dumps(
        {"emulated": "bf16, sums in float32 rounded once", "ops": [f.__name__ for f in LOWERED],
         "calls": mode.calls}, indent=1))


def fail(message: str) -> None:
    print(f"emulate.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
