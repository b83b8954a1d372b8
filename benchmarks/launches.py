"""Operations per training step: what a GPU step of a compress trial waits on.

On a GPU a ResNet-9 step at batch 512 is short (about 8 ms on an H100), and every tensor
operation the step issues is at least one kernel launch with its host-side dispatch, so a
step that issues many small operations waits on the host. This counts the operations one
training step issues (forward, loss, backward, optimizers: torch.profiler's top-level aten
operations, backward included) for the float network and for the compress network as the
trainer runs it, and as it ran before the fused quantizer (``quantize``'s autograd form layer
by layer, the full ``size()`` in the loss, the dead-channel penalty block by block,
single-tensor optimizers (neither foreach nor fused); ``step_optimizers``' multi-tensor
operations for hold-range and the one-bit zone are not undone). It also times the two
compress steps side by side on this CPU, where the arithmetic, not the dispatch, dominates.

The host's time per step, phase by phase: ``benchmarks.host``.

``ratio`` = operations of the compress step now / before. With ``--cut MODEL``, also the
operations of a step of that trained network (a ``model.pt`` of ``trainer.train --out``),
cut as it ended, beside the uncut one's (``ops_cut``): whether a network's steps issue more
operations as its channels go (the unaligned residual sums add a few).

    python -m benchmarks.launches [--preset smoke] [--reps 5] [--cut DIR/model.pt]
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import trainer.quant as Q
from benchmarks.common import count, emit, interleaved, load_trained, model_for, parser
from trainer.config import TrainConfig, resolve
from trainer.heap import keep_freed_memory
from trainer.model import ResNet9
from trainer.train import make_optimizers, step_optimizers


@contextmanager
def unfused() -> Iterator[None]:
    """The layers quantize one by one with the reference autograd form, as before the fused
    quantizer (and before every layer's quantizer ran in one pass)."""
    fused, at_once = Q.quantize_fused, ResNet9.quantize_at_once

    def reference(w, b, e, hold_range=False):
        return Q.quantize(w, b, e - (b - b.detach()) if hold_range else e)

    Q.quantize_fused = reference
    ResNet9.quantize_at_once = lambda self: []
    try:
        yield
    finally:
        Q.quantize_fused, ResNet9.quantize_at_once = fused, at_once


def dead_penalty_loop(model: ResNet9) -> torch.Tensor:
    """``ResNet9.dead_penalty`` as it was computed before: block by block."""
    total = model.head.weight.new_zeros(())
    for _, block in model.blocks():
        train_c, eval_c = block.constant_outputs()
        total = total + ((train_c + eval_c) * block.dead()).sum()
    return total


def step_fn(model: ResNet9, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
            before: bool) -> Callable[[], None]:
    """One training step as the trainer runs it (``before``: as it ran before the change)."""
    opts = make_optimizers(model, config)
    if before:
        for opt in opts:
            for group in opt.param_groups:  # single-tensor loops, as before foreach
                group["foreach"] = group["fused"] = False
    model.train()

    def step() -> None:
        with unfused() if before else nullcontext():
            loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
            if model.quantized:
                q = model.size().q if before else model.loss_size()
                dead = dead_penalty_loop(model) if before else model.dead_penalty()
                loss = loss + config.gamma * q + config.dead_l1 * dead
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            step_optimizers(model, opts)
    return step


def operations(step: Callable[[], None]) -> int:
    """Top-level aten operations one call of ``step`` issues (after one warm-up call)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = collections.Counter(
        e.name for e in prof.events() if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    return sum(ops.values())


def main() -> None:
    p = parser("launches", __doc__)
    p.add_argument("--preset", default="smoke", choices=("smoke", "cpu", "paper"),
                   help="network width and batch of the counted step (%(default)s); the "
                        "count does not depend on the width, the times do")
    p.add_argument("--reps", type=count, default=5, help="timed repetitions (%(default)s)")
    p.add_argument("--cut", metavar="MODEL", help="also count a step of this trained network")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as the trainer runs on a CPU (benchmarks.heap)
    config = resolve(TrainConfig(preset=args.preset), has_gpu=False)
    x = torch.randn(config.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (config.batch_size,))
    steps = {"compress": step_fn(model_for(args.preset), x, y, config, before=False),
             "compress_before": step_fn(model_for(args.preset), x, y, config, before=True),
             "float": step_fn(model_for(args.preset, kind="float-baseline"), x, y, config,
                              before=False)}
    if args.cut:
        cut, _ = load_trained(args.cut, "benchmarks.launches", "--cut")
        steps["cut"] = step_fn(cut, x, y, config, before=False)
    ops = {name: operations(fn) for name, fn in steps.items()}
    t = interleaved({k: steps[k] for k in ("compress", "compress_before")}, args.reps)
    emit("launches", {"ratio": round(ops["compress"] / ops["compress_before"], 3),
                      "ops_compress": ops["compress"],
                      "ops_compress_before": ops["compress_before"],
                      "ops_float": ops["float"],
                      **({"ops_cut": ops["cut"]} if args.cut else {}),
                      "step_s_compress": round(t["compress"], 4),
                      "step_s_compress_before": round(t["compress_before"], 4),
                      "batch": config.batch_size, "reps": args.reps, "preset": args.preset})


if __name__ == "__main__":
    main()
