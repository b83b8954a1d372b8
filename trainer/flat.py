"""Every quantized layer's weights through the quantizer at once, as one flat vector.

``quantize_fused`` runs once per layer: about 16 tensor operations forward and 25 backward
for each of a ResNet-9's 9 layers, each one a kernel launch and its host-side dispatch on a
GPU, where a compress step waited on the host (benchmarks/README.md, the H100 figures).
Here the 9 layers' weights are concatenated in memory order into one vector, each weight
beside its channel's 2^e and 2^(b+ - 1), and the quantizer's elementwise arithmetic runs
once over all of them: the same values (the same float operations on the same
numbers), the same gradients up to the order of the per-channel sums. (On a CPU, one
exception: exp2 of the concatenated exponents runs vectorised where a layer's short vector
ran partly in the scalar tail, and the two can differ in the last bit of 2^e. So only
training steps quantize this way; evaluation and export quantize layer by layer.)

The layout of the flat vector (a ``Plan``) depends only on the layers' shapes: it is
rebuilt when a cut changes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.quant import LN2, QuantMixin


def _channels_last(w: Tensor) -> bool:
    return w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) \
        and not w.is_contiguous()


def flat_view(w: Tensor, channels_last: bool) -> Tensor:
    """``w`` (O, ...) as a vector in memory order: each output channel one contiguous run."""
    return (w.permute(0, 2, 3, 1) if channels_last else w).reshape(-1)


def unflat(v: Tensor, shape: torch.Size, channels_last: bool) -> Tensor:
    """The inverse of ``flat_view``: a vector back to ``shape`` with ``w``'s strides."""
    if channels_last:
        o, i, h, w = shape
        return v.view(o, h, w, i).permute(0, 3, 1, 2)
    return v.view(shape)


@dataclass(frozen=True)
class Plan:
    """Where each layer's weights, bit depths and exponents sit in the flat vectors."""

    key: tuple  # the layers' (shape, strides, device): the plan holds while this does
    shapes: tuple[torch.Size, ...]  # each layer's weight shape (O, ...)
    channels_last: tuple[bool, ...]  # each layer's weight in channels_last memory order
    numels: tuple[int, ...]  # weights per layer
    outs: tuple[int, ...]  # output channels per layer
    chan: Tensor  # (N,) int64: the index into cat(b) of every weight's channel

    def flatten(self, ts: Sequence[Tensor]) -> Tensor:
        """(N,): the layers' weight-shaped tensors ``ts``, each in memory order, one after
        another (a copy)."""
        return torch.cat([flat_view(t, cl) for t, cl in zip(ts, self.channels_last, strict=True)])

    def unflatten(self, v: Tensor) -> list[Tensor]:
        """``flatten``'s inverse: views of ``v`` (N,) with each weight's shape and strides."""
        return [unflat(piece, shape, cl) for piece, shape, cl
                in zip(v.split(self.numels), self.shapes, self.channels_last, strict=True)]


def plan_key(layers: Sequence[QuantMixin]) -> tuple:
    return tuple((tuple(m.weight.shape), m.weight.stride(), m.weight.device) for m in layers)


def make_plan(layers: Sequence[QuantMixin]) -> Plan:
    ws = [m.weight for m in layers]
    device, outs = ws[0].device, tuple(w.shape[0] for w in ws)
    per_channel = torch.tensor([w[0].numel() if w.shape[0] else 0 for w in ws])
    counts = per_channel.repeat_interleave(torch.tensor(outs))  # (C,) weights per channel
    numels = tuple(w.numel() for w in ws)
    # built where it is used: after a cut, C counts cross to a GPU, not N indices (53 MB)
    chan = torch.arange(counts.numel(), device=device).repeat_interleave(
        counts.to(device), output_size=sum(numels))
    return Plan(plan_key(layers), tuple(w.shape for w in ws),
                tuple(_channels_last(w) for w in ws), numels, outs, chan)


class _QuantizeLayers(torch.autograd.Function):
    """``quantize_fused`` of every layer in one pass (its docstring has the gradients).

    Inputs: the plan, ``hold_range``, then the n weights, the n bit depths and the n
    exponents. Outputs: the n quantized weights, each with its weight's shape and strides.
    """

    @staticmethod
    def forward(ctx, plan: Plan, hold_range: bool, *tensors: Tensor) -> tuple[Tensor, ...]:
        n = len(plan.shapes)
        ws, bs, es = tensors[:n], tensors[n:2 * n], tensors[2 * n:]
        b, e = torch.cat(bs), torch.cat(es)  # (C,)
        scale, p = torch.exp2(e), torch.exp2(F.relu(b) - 1)  # (C,)
        scale_w, p_w = scale.index_select(0, plan.chan), p.index_select(0, plan.chan)
        x = plan.flatten(ws) / scale_w
        lo, hi = -p_w, p_w - 1
        # + 0.0 turns round's -0.0 into +0.0, as the reference form's x + (round(x) - x) does
        k = torch.round(torch.maximum(torch.minimum(x, hi), lo)).add_(0.0)
        above, below = x > hi, x < lo
        ctx.save_for_backward(b, scale, p, scale_w, x, k, above, below)
        ctx.plan, ctx.hold_range = plan, hold_range
        return tuple(plan.unflatten(scale_w * k))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        b, scale, p, scale_w, x, k, above, below = ctx.saved_tensors
        plan: Plan = ctx.plan
        g = plan.flatten(grads)
        outside = above | below
        grad_w = g.masked_fill(outside, 0.0)  # (N,)
        gs = g * scale_w
        # per weight: e's term, and p's (+ above the upper bound, - below the lower)
        terms = torch.stack([g * (k - x.masked_fill(outside, 0.0)), gs * above - gs * below])
        sums = torch.cat([t.view(2, o, -1).sum(2) for t, o  # (2, C): per channel
                          in zip(terms.split(plan.numels, dim=1), plan.outs, strict=True)], dim=1)
        grad_e = sums[0] * (LN2 * scale)
        grad_b = (sums[1] * (LN2 * p)).masked_fill(b <= 0, 0.0)
        if ctx.hold_range:
            grad_b = grad_b - grad_e
        return (None, None, *plan.unflatten(grad_w), *grad_b.split(plan.outs),
                *grad_e.split(plan.outs))


def quantize_layers(layers: Sequence[QuantMixin], plan: Plan) -> tuple[Tensor, ...]:
    """``layer.qweight()`` of every layer (all quantized, one ``hold_range``, no empty
    weight), computed together; ``plan`` is ``make_plan(layers)``."""
    return _QuantizeLayers.apply(plan, layers[0].hold_range, *(m.weight for m in layers),
                                 *(m.quant_bits() for m in layers), *(m.e for m in layers))
