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

Then the trainer's ``Step`` on each network with ``ConvBlock.forward`` and ``UnionSum`` (below)
as they were and as they are, interleaved. ``ratio`` = now / before of the uncut network's
step.

For each residual sum of the cut network on a union of channels (``unions``), fwd+bwd:

- ``before``: ``index_add_`` into dim 1 of the 4-D union, ``index_select`` back, as
  ``trainer.model.UnionSum`` did (``UnionSumBefore``);
- ``now``: ``UnionSum``, which indexes the channels_last maps' (N*H*W, C) matrices;
- ``slice`` and ``cat``: the same sum with the union laid out as contiguous blocks (the
  shortcut's own channels, those on both sides, the branch's own), so that each side is a
  slice of it: zeros and two slice updates, or one ``torch.cat`` of three parts. The
  inputs are permuted into that order first (untimed; a network laid out so would produce
  them in it).

Every way's output is checked equal to ``before``'s, bit for bit (permuted for the block
layouts), and ``now``'s input gradients too. ``unions_saved_of_cut_step`` = ``before`` -
``now``, summed over the unions, as a share of the cut network's step;
``unions_blocks_would_save_of_cut_step`` = ``now`` - the faster block layout, the same way:
what laying the unions out as blocks would add (negative: it would lose).

    python -m benchmarks.elementwise [--model RUN/model.pt] [--reps 5] [--compile static|dynamic]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import trainer.model
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
from trainer.model import SPATIAL, ConvBlock, UnionSum, zeros_as


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


class UnionSumBefore(torch.autograd.Function):
    """``UnionSum`` as it was: indexing dim 1 of the 4-D channels_last maps."""

    @staticmethod
    def forward(ctx, x, y, pos_x, pos_b, n):
        ctx.save_for_backward(pos_x, pos_b)
        out = zeros_as(x, (x.shape[0], n, *x.shape[2:]))
        return out.index_add_(1, pos_x, x).index_add_(1, pos_b, y)

    @staticmethod
    def backward(ctx, grad):
        pos_x, pos_b = ctx.saved_tensors
        cl = torch.channels_last
        return (grad.index_select(1, pos_x).contiguous(memory_format=cl),
                grad.index_select(1, pos_b).contiguous(memory_format=cl), None, None, None)


def union_layout(r) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shortcut order, branch order, union order) that lay a residual's union out as
    [shortcut only | both | branch only], each side a contiguous slice of it."""
    pos_x, pos_b = r.pos_x.tolist(), r.pos_b.tolist()
    in_x, in_b = set(pos_x), set(pos_b)
    both = [p for p in pos_x if p in in_b]
    x_only = [p for p in pos_x if p not in in_b]
    b_only = [p for p in pos_b if p not in in_x]
    union = x_only + both + b_only
    return (torch.tensor([pos_x.index(p) for p in x_only + both]),
            torch.tensor([pos_b.index(p) for p in both + b_only]), torch.tensor(union))


def slice_sum(x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """x + y on a union of ``n`` channels laid out so that x is its first channels, y its
    last."""
    out = zeros_as(x, (x.shape[0], n, *x.shape[2:]))
    out[:, :x.shape[1]] = x
    out[:, n - y.shape[1]:] += y
    return out


def cat_sum(x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """The same as one concatenation: x only, the overlap summed, y only."""
    nx, ny = x.shape[1], y.shape[1]
    both = nx + ny - n
    return torch.cat([x[:, :nx - both], x[:, nx - both:] + y[:, :both], y[:, both:]], 1)


def time_unions(model, batch: int, reps: int) -> list[dict]:
    """Each residual sum on a union of the cut ``model``, fwd+bwd, each way (module doc)."""
    return [time_union(name, getattr(model, name), batch, reps) for name in ("res1", "res3")
            if getattr(model, name).conv1 is not None and not getattr(model, name).aligned]


def time_union(name: str, r, batch: int, reps: int) -> dict:
    """One residual's sum on its union, fwd+bwd, each way."""
    n, side, cl = r.out_idx.numel(), SPATIAL[f"{name}.conv1"], torch.channels_last

    def feature(c: int) -> torch.Tensor:
        return torch.randn(batch, c, side, side).contiguous(memory_format=cl)

    x, y, g = feature(r.pos_x.numel()), feature(r.pos_b.numel()), feature(n)
    ox, ob, order = union_layout(r)
    xs, ys = (t[:, o].contiguous(memory_format=cl) for t, o in ((x, ox), (y, ob)))
    gs = g[:, order].contiguous(memory_format=cl)
    for t in (x, y, xs, ys):
        t.requires_grad_()
    ways = {"before": (lambda: UnionSumBefore.apply(x, y, r.pos_x, r.pos_b, n), g),
            "now": (lambda: UnionSum.apply(x, y, r.pos_x, r.pos_b, n), g),
            "slice": (lambda: slice_sum(xs, ys, n), gs),
            "cat": (lambda: cat_sum(xs, ys, n), gs)}
    outs = {k: f() for k, (f, _) in ways.items()}
    grads = []
    for k in ("before", "now"):  # and the gradients of the two in the same layout
        outs[k].backward(g)
        grads.append((x.grad, y.grad))
        x.grad = y.grad = None
    exact = torch.equal(outs["now"], outs["before"]) and all(
        torch.equal(a, b) for a, b in zip(*grads, strict=True)) and all(
        torch.equal(outs[k], outs["before"][:, order]) for k in ("slice", "cat"))

    def run(f, grad):
        def go():
            for t in (x, y, xs, ys):
                t.grad = None
            f().backward(grad)
        return go
    t = interleaved({k: run(f, grad) for k, (f, grad) in ways.items()}, reps)
    return {"residual": name, "shortcut": x.shape[1], "branch": y.shape[1], "union": n,
            "side": side, "exact": exact, **{f"{k}_ms": round(v * 1e3, 2) for k, v in t.items()},
            "now_over_before": round(t["now"] / t["before"], 3),
            "saved_ms": round((t["before"] - t["now"]) * 1e3, 2),
            "blocks_would_save_ms": round((t["now"] - min(t["slice"], t["cat"])) * 1e3, 2)}


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

    def step_with(forward, union, step):
        def go():
            ConvBlock.forward, trainer.model.UnionSum = forward, union
            try:
                step()
            finally:
                ConvBlock.forward, trainer.model.UnionSum = forward_now, UnionSum
        return go
    t = interleaved({f"{k} {v}": step_with(fwd, union, s) for k, s in steps.items()
                     for v, fwd, union in (("before", forward_before, UnionSumBefore),
                                           ("now", forward_now, UnionSum))},
                    args.reps)
    step_rows = {k: {"before_s": round(t[f"{k} before"], 3), "now_s": round(t[f"{k} now"], 3),
                     "now_over_before": round(t[f"{k} now"] / t[f"{k} before"], 3)}
                 for k in nets}
    unions = {}
    if "cut" in nets:
        for v in ("before", "now"):
            step_rows[f"cut_over_uncut_{v}"] = round(t[f"cut {v}"] / t[f"uncut {v}"], 3)
        rows = time_unions(nets["cut"], args.batch, args.reps)
        unions = {"unions": rows, **{f"unions_{k}_of_cut_step": round(
            sum(r[f"{k}_ms"] for r in rows) / 1e3 / t["cut now"], 4)
            for k in ("saved", "blocks_would_save")}}
    emit("elementwise", {"ratio": step_rows["uncut"]["now_over_before"], "step": step_rows,
                         "blocks": blocks, **unions, "compile": args.compile,
                         "batch": args.batch, "reps": args.reps})


if __name__ == "__main__":
    main()
