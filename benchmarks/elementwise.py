"""What a conv block costs besides its convolution: BatchNorm, ReLU and pooling, forward and
backward, in the trainer's order against candidates, and the training step with each.

A block of the trainer computes conv -> BatchNorm (-> 2x2 max-pool) -> ReLU in place
(``trainer.model.ConvBlock``); it computed conv -> BatchNorm -> ReLU (-> pool) out of place
before (``before``: the same values and gradients, checked here bit for bit). For every
block of the ``cpu`` network uncut, and of ``--model``'s cut network, it times the part
after the conv, fwd+bwd at the trainer's batch, channels_last:

- ``before``: ReLU then pool, out of place;
- ``now``: the trainer's;
- ``compiled`` (with ``--compile static|dynamic``): ``before`` through ``torch.compile``,
  Inductor's fused kernels, with the shapes fixed or symbolic (a cut then need not
  recompile); compile time not counted.

Then the trainer's ``Step`` on each network with ``ConvBlock.forward`` as it was and as it
is, interleaved. ``ratio`` = now / before of the uncut network's step.

    python -m benchmarks.elementwise [--model RUN/model.pt] [--reps 5] [--compile static|dynamic]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import (
    count,
    emit,
    interleaved,
    load_trained,
    model_for,
    parser,
    train_step_fn,
)
from trainer.heap import keep_freed_memory
from trainer.model import SPATIAL, ConvBlock, zeros_as


def before(z, bn, pool: bool):
    """The block's elementwise part as the trainer computed it before (ReLU, then pool)."""
    y = F.relu(F.batch_norm(z, bn["rm"], bn["rv"], bn["w"], bn["b"], True, 0.1, 1e-5))
    return F.max_pool2d(y, 2) if pool else y


def now(z, bn, pool: bool):
    """As ``ConvBlock.forward`` computes it now."""
    y = F.batch_norm(z, bn["rm"], bn["rv"], bn["w"], bn["b"], True, 0.1, 1e-5)
    return F.relu_(F.max_pool2d(y, 2) if pool else y)


def forward_before(self, x):
    """``ConvBlock.forward`` as it was (ReLU before the pool, out of place)."""
    if self.conv.weight.shape[0] == 0:
        h, w = x.shape[2:]
        return zeros_as(x, (x.shape[0], 0, h // 2, w // 2) if self.pool else (x.shape[0], 0, h, w))
    if self.conv.weight.shape[1] == 0:
        z = zeros_as(x, (x.shape[0], self.conv.weight.shape[0], *x.shape[2:]))
    else:
        z = self.conv(x)
    y = F.relu(self.bn(z))
    y = F.max_pool2d(y, 2) if self.pool else y
    gate = self.conv.gate()
    return y if gate is None else y * gate.view(1, -1, 1, 1)


def block_shapes(model) -> list[tuple[str, int, int, bool]]:
    """(name, channels, side, pooled) of each conv block's output before its pool."""
    return [(name, b.conv.weight.shape[0], SPATIAL[name], b.pool) for name, b in model.blocks()
            if b.conv.weight.shape[0]]


def time_block(name: str, c: int, side: int, pool: bool, batch: int, reps: int,
               compiled) -> dict:
    """One block's elementwise part, fwd+bwd, each way; whether ``now`` equals ``before``."""
    z = torch.randn(batch, c, side, side).contiguous(memory_format=torch.channels_last)
    z.requires_grad_()
    bn = {"w": torch.rand(c, requires_grad=True) + 0.5, "b": torch.randn(c, requires_grad=True),
          "rm": torch.zeros(c), "rv": torch.ones(c)}
    out = side // 2 if pool else side
    g = torch.randn(batch, c, out, out).contiguous(memory_format=torch.channels_last)

    def run(fn):
        def go():
            z.grad = None
            fn(z, bn, pool).backward(g)
        return go
    exact = []
    for fn in (before, now):  # values and input gradients, bit for bit
        z.grad = None
        y = fn(z, bn, pool)
        y.backward(g)
        exact.append((y.detach(), z.grad.clone()))
    fns = {"before": run(before), "now": run(now)}
    if compiled is not None:
        fns["compiled"] = run(compiled)
    t = interleaved(fns, reps)
    return {"block": name, "channels": c, "side": side, "pool": pool,
            "exact": all(torch.equal(a, b) for a, b in zip(*exact, strict=True)),
            **{f"{k}_ms": round(v * 1e3, 2) for k, v in t.items()},
            "now_over_before": round(t["now"] / t["before"], 3),
            **({"compiled_over_before": round(t["compiled"] / t["before"], 3)}
               if compiled is not None else {})}


def main() -> None:
    p = parser("elementwise", __doc__)
    p.add_argument("--model", metavar="PATH", help="a trained run's model.pt (or a trial's "
                   "state.pt) whose cut blocks and step to time as well")
    p.add_argument("--reps", type=count, default=5, help="repetitions (%(default)s)")
    p.add_argument("--batch", type=count, default=512, help="images per batch (%(default)s)")
    p.add_argument("--compile", choices=("static", "dynamic"),
                   help="also time the blocks' elementwise part through torch.compile, "
                        "shapes fixed or symbolic (default: not)")
    args = p.parse_args()
    torch.set_flush_denormal(True)  # as trainer.train.setup does on a CPU
    keep_freed_memory()
    nets = {"uncut": model_for("cpu")}
    if args.model:
        nets["cut"] = load_trained(args.model, "benchmarks.elementwise", "--model")[0]
    torch._dynamo.config.recompile_limit = 64  # static: one compile per shape, all of them
    compiled = (torch.compile(before, dynamic=args.compile == "dynamic") if args.compile
                else None)
    blocks = {k: [time_block(*shape, args.batch, args.reps, compiled)
                  for shape in block_shapes(m)] for k, m in nets.items()}
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    steps = {k: train_step_fn(m, x, y) for k, m in nets.items()}
    forward_now = ConvBlock.forward

    def step_with(forward, step):
        def go():
            ConvBlock.forward = forward
            try:
                step()
            finally:
                ConvBlock.forward = forward_now
        return go
    t = interleaved({f"{k} {v}": step_with(fwd, s) for k, s in steps.items()
                     for v, fwd in (("before", forward_before), ("now", forward_now))},
                    args.reps)
    step_rows = {k: {"before_s": round(t[f"{k} before"], 3), "now_s": round(t[f"{k} now"], 3),
                     "now_over_before": round(t[f"{k} now"] / t[f"{k} before"], 3)}
                 for k in nets}
    if "cut" in nets:
        for v in ("before", "now"):
            step_rows[f"cut_over_uncut_{v}"] = round(t[f"cut {v}"] / t[f"uncut {v}"], 3)
    emit("elementwise", {"ratio": step_rows["uncut"]["now_over_before"], "step": step_rows,
                         "blocks": blocks, "compile": args.compile, "batch": args.batch,
                         "reps": args.reps})


if __name__ == "__main__":
    main()
