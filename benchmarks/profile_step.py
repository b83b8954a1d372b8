"""Where a training step's time goes, in a cut network against its uncut start.

The trainer's ``Step`` (``benchmarks.common.train_step_fn``) of a trained run's network
(``--model``: a ``model.pt`` or a sweep trial's ``state.pt``) and of the uncompressed network
of its config, each profiled by ``torch.profiler`` over ``--steps`` steps after two warm-up
steps, in ``--precision`` (fp32, or bf16 autocast as the trainer runs it). Operators' self
CPU time is summed into groups (convolutions, BatchNorm, ReLU, pooling, the residual unions'
index operations, copies, the rest); ``ratio`` = cut / uncut per group, beside the
networks' MACs ratio: a group whose ratio stays near 1 is what keeps a cut epoch from
following its MACs (issue 36, part 5).

    python -m benchmarks.profile_step --model RUN/model.pt [--steps 3] [--batch 512]
                                      [--precision fp32|bf16]
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import conv_macs, count, emit, parser, train_step_fn
from benchmarks.shrink import trained_pair
from trainer.heap import keep_freed_memory
from trainer.precision import autocast_for

# operator name (its start) -> group; the first match wins, the rest is "other"
GROUPS = (("aten::convolution_backward", "conv"), ("aten::mkldnn_convolution", "conv"),
          ("aten::_convolution", "conv"),
          ("aten::_slow_conv2d", "conv"),  # bf16 on a CPU without bf16 units: im2col + gemm
          ("aten::native_batch_norm", "batchnorm"),
          ("aten::threshold_backward", "relu"), ("aten::clamp_min", "relu"),
          ("aten::relu", "relu"), ("aten::max_pool2d", "pool"), ("aten::index_add", "union"),
          ("aten::index_select", "union"), ("aten::copy_", "copy"),
          ("aten::fill_", "fill"), ("Optimizer.step", "optimizer"))


def group_of(name: str) -> str:
    return next((group for start, group in GROUPS if name.startswith(start)), "other")


def profiled(step, steps: int) -> dict[str, float]:
    """Seconds of self CPU time per group, per step."""
    step(), step()  # warm-up: oneDNN's kernels chosen, the heap grown
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        group = group_of(event.key)
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e6 / steps
    return groups


def main() -> None:
    p = parser("profile_step", __doc__)
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a trained run's model.pt, or a sweep trial's checkpoint state.pt")
    p.add_argument("--steps", type=count, default=3, help="profiled steps (%(default)s)")
    p.add_argument("--batch", type=count, default=512, help="images per batch (%(default)s)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="the step's precision (%(default)s)")
    args = p.parse_args()
    torch.set_flush_denormal(True)  # as trainer.train.setup does on a CPU
    keep_freed_memory()
    cut, uncut, kept = trained_pair(args.model, "benchmarks.profile_step")
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    autocast = autocast_for("cpu", args.precision)
    times = {name: profiled(train_step_fn(model, x, y, autocast=autocast), args.steps)
             for name, model in (("cut", cut), ("uncut", uncut))}
    names = sorted(set(times["cut"]) | set(times["uncut"]), key=lambda g: -times["uncut"].get(g, 0))
    total = {name: sum(t.values()) for name, t in times.items()}
    emit("profile_step", {
        "ratio": round(total["cut"] / total["uncut"], 3),
        "macs_ratio": round(conv_macs(cut) / conv_macs(uncut), 3),
        "step_s": {name: round(t, 4) for name, t in total.items()},
        "groups": {g: {"cut_s": round(times["cut"].get(g, 0.0), 4),
                       "uncut_s": round(times["uncut"].get(g, 0.0), 4),
                       "ratio": round(times["cut"].get(g, 0.0) / times["uncut"][g], 3)
                       if times["uncut"].get(g) else None,
                       "cut_share": round(times["cut"].get(g, 0.0) / total["cut"], 3)}
                   for g in names},
        "weights_kept_fraction": round(kept, 3), "widths": {
            name: layer.weight.shape[0] for name, layer in cut.quant_layers()},
        "batch": args.batch, "steps": args.steps, "precision": args.precision})


if __name__ == "__main__":
    main()
