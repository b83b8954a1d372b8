"""Differentiable quantization per output channel, and the network size it implies.

Every output channel i of a quantized layer has a learned bit depth b_i and exponent e_i:

    q(w; b, e) = 2^e * round(clamp(2^-e * w, -2^(b+ - 1), 2^(b+ - 1) - 1)),   b+ = relu(b)

with a straight-through round. The quantizer owns the size: the differentiable size used
in the loss and the exact size that is reported are both computed in ``layer_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import QUANTIZED_KINDS, TrainConfig


def round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through)."""
    return x + (torch.round(x) - x).detach()


class _FusedQuantize(torch.autograd.Function):
    """``quantize`` with a hand-written backward: about 30 tensor operations per layer and
    step instead of about 70, which is what a GPU step of a compress trial waits on (each
    operation is at least one kernel launch; benchmarks/README.md, "The GPU check").

    Gradients, with s = 2^e, p = 2^(b+ - 1), x = w / s, k = round(clamp(x, -p, p - 1)) and
    g the gradient of the output s * k (straight-through round):
      w: g where x lies within the bounds, else 0;
      e: ln 2 * s * sum(g * (k - x)) inside, ln 2 * s * sum(g * k) outside;
      b: ln 2 * p * (sum of s * g above the upper bound - sum of s * g below the lower)
         where b > 0, else 0 (relu);
    and with ``hold_range`` (e enters as e - (b - stop_gradient(b))) b's gradient also gets
    minus e's. A weight exactly on a bound counts as inside (autograd's minimum and maximum
    would split its gradient between the weight and the bound: at step 0 the largest weight
    of each channel lies on p - 1).
    """

    @staticmethod
    def forward(ctx, w: Tensor, b: Tensor, e: Tensor, hold_range: bool) -> Tensor:
        shape = (-1,) + (1,) * (w.dim() - 1)
        scale = torch.exp2(e).view(shape)
        p = torch.exp2(F.relu(b) - 1).view(shape)
        lo, hi = -p, p - 1
        x = w / scale
        # + 0.0 turns round's -0.0 into +0.0, as the reference form's x + (round(x) - x) does
        k = torch.round(torch.maximum(torch.minimum(x, hi), lo)).add_(0.0)
        above, below = x > hi, x < lo
        ctx.save_for_backward(b, scale, p, x, k, above, below)
        ctx.hold_range = hold_range
        return scale * k

    @staticmethod
    def backward(ctx, g: Tensor):
        b, scale, p, x, k, above, below = ctx.saved_tensors
        dims = tuple(range(1, g.dim()))
        outside = above | below
        grad_w = g.masked_fill(outside, 0.0)
        grad_e = (g * (k - x.masked_fill(outside, 0.0))).sum(dims) * (LN2 * scale.flatten())
        gs = g * scale
        grad_p = (gs * above).sum(dims) - (gs * below).sum(dims)
        grad_b = (grad_p * (LN2 * p.flatten())).masked_fill(b <= 0, 0.0)
        if ctx.hold_range:
            grad_b = grad_b - grad_e
        return grad_w, grad_b, grad_e, None


LN2 = math.log(2.0)


def quantize_fused(w: Tensor, b: Tensor, e: Tensor, hold_range: bool = False) -> Tensor:
    """``quantize(w, b, e)`` in few operations; with ``hold_range``, e's value is used with
    b's gradient taken at a fixed range e + b - 1 (``QuantMixin.qweight``)."""
    return _FusedQuantize.apply(w, b, e, hold_range)


def _scaled(w: Tensor, b: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """(2^e shaped to broadcast over ``w``, clamp(2^-e * w, -2^(b+ - 1), 2^(b+ - 1) - 1))."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    bits = F.relu(b).view(shape)
    scale = torch.exp2(e).view(shape)
    lo = -torch.exp2(bits - 1)
    hi = torch.exp2(bits - 1) - 1
    # minimum/maximum rather than clamp: gradients must reach the bounds (and so b).
    return scale, torch.maximum(torch.minimum(w / scale, hi), lo)


def integer_weights(w: Tensor, b: Tensor, e: Tensor) -> Tensor:
    """The integers k (int64, shaped like ``w``) of ``quantize(w, b, e) = 2^e * k``, exactly.

    Each channel's k fits in ceil(b+) bits two's complement (k = 0 when b+ = 0): the
    rounded bounds of b+ bits lie within those of ceil(b+) bits.
    """
    _, x = _scaled(w.detach(), b.detach(), e.detach())
    return torch.round(x).to(torch.int64)


def initial_exponent(w: Tensor, bits: float) -> Tensor:
    """Per-channel e such that the largest |w| of each channel maps to 2^(bits-1) - 1.

    Then nothing is clipped at step 0 and the quantized layer computes what the float
    layer computes, up to rounding to ``bits`` bits.
    """
    top = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)  # (O,)
    levels = max(2.0 ** (bits - 1) - 1, 0.5)  # a 1-bit channel holds {-1, 0}
    return torch.log2(top / levels)


ONE_BIT_TOP = 1 + math.log2(1.5)  # below this b, round(2^(b-1) - 1) = 0: levels {-1, 0} only


def snapped_bits(b: Tensor) -> Tensor:
    """The smallest bit depth per channel whose quantizer gives exactly the same weights as ``b``.

    The forward pass depends on b only through the integer bounds round(-2^(b-1)) and
    round(2^(b-1) - 1). For b in (k, 1 + log2(2^(k-1) + 1/2)) with k >= 1 those are the bounds
    of k bits (-2^(k-1) and 2^(k-1) - 1), yet the exact size counts ceil(b) = k + 1 bits per
    weight. Snapping such b down to k changes no weight and stores one bit less. (Below 1 bit
    nothing snaps: 0 bits is a dead channel.) A margin keeps clear of round-half ties.
    """
    k = torch.floor(b)
    top = 1 + torch.log2(torch.exp2(k - 1) + 0.5) - 1e-4
    return torch.where((k >= 1) & (b < top), k, b)


class QuantMixin:
    """Shared by QConv2d and QLinear: optional per-channel (b, e) and the quantized weight."""

    weight: nn.Parameter

    def _init_quant(self, quantized: bool, init_bits: float) -> None:
        self.quantized = quantized
        # With ``hold_range`` the learned pair is (b, r = e + b - 1): the size term's pull on b
        # coarsens the grid inside a clipping range 2^r that only the loss moves (see
        # ``qweight`` and ``follow_bits``). The forward pass is q(w; b, e) either way.
        self.hold_range = False
        # the quantized weight of the forward pass now, when the network computed every
        # layer's at once (``ResNet9.forward``, trainer/flat.py); None: computed here
        self.qweight_now: Tensor | None = None
        self.skip_one_bit = False  # after each step, a b in (0, ONE_BIT_TOP) goes to 0
        self.min_bits = 0.0  # after each step, a b in (0, min_bits) goes to 0
        # with min_bits: a channel whose b falls below the floor fades out over the bit
        # beneath it (``gate``) instead of dying at once; it dies at min_bits - 1
        self.fade = False
        # with a ration (``set_rations``): the fewest live channels this layer may have
        # until the epoch ends, a tensor on b's device (None: no limit)
        self.min_live: Tensor | None = None
        # Original indices of the rows (outputs) and columns (inputs) still present: a
        # shrunken layer knows where it sits in the uncompressed network.
        self.register_buffer("out_idx", torch.arange(self.weight.shape[0]))
        self.register_buffer("in_idx", torch.arange(self.weight.shape[1]))
        if quantized:
            out = self.weight.shape[0]
            self.b = nn.Parameter(torch.full((out,), float(init_bits)))
            self.e = nn.Parameter(initial_exponent(self.weight, init_bits))

    def qweight(self) -> Tensor:
        """The weight used in the forward pass: quantized, or the float weight."""
        if not self.quantized:
            return self.weight
        if self.qweight_now is not None:
            return self.qweight_now
        # with hold_range b's gradient is taken at a fixed range e + b - 1 (same value)
        return quantize_fused(self.weight, self.quant_bits(), self.e, self.hold_range)

    def quant_bits(self) -> Tensor:
        """The b the quantizer uses: b, except that with ``fade`` a live b below the floor
        (fading) quantizes at the floor; its gradient then comes from the gate alone."""
        if not (self.quantized and self.fade):
            return self.b
        return torch.where(self.b > 0, self.b.clamp_min(self.min_bits), self.b)

    def gate(self) -> Tensor | None:
        """With ``fade``, the factor (O,) on each output channel after its BatchNorm (the
        head: on its output): b - (min_bits - 1) clamped to [0, 1]. 1 at or above the
        floor, 0 for a dead channel, and in between the cross-entropy sees what the
        channel is worth in b's gradient as it fades. None without ``fade``."""
        if not (self.quantized and self.fade):
            return None
        return (self.b - (self.min_bits - 1)).clamp(0.0, 1.0)

    def qints(self) -> Tensor:
        """The integers k of the quantized weight: ``qweight() == 2^e * k`` exactly (int64).

        (``hold_range`` changes only e's gradient in ``qweight``, not its value.)
        """
        return integer_weights(self.weight, self.quant_bits(), self.e)

    @torch.no_grad()
    def snap_bits(self) -> None:
        """Store each channel's bit depth in its smallest form (``snapped_bits``): same weights."""
        if self.quantized:  # at the same e: the grid stays, only the bound's form changes
            self.b.copy_(snapped_bits(self.b))

    @torch.no_grad()
    def half_exponents(self) -> None:
        """Round each channel's e to the nearest float16 (an export stores it in 2 bytes),
        keeping every integer k: the weight becomes 2^e16 * k.

        Each channel's weights then move by one factor 2^(e16 - e), under 0.3 % for |e| < 8.
        Rounding e alone would re-round the integers near their rounding ties, which cost
        0.1-0.2 points of test accuracy on cpu-refs trials against 0.0-0.06 this way
        (docs/export.md). It runs before the final test, so the reported accuracy is the stored one.
        """
        if self.quantized:
            self.set_exponents(self.e.to(torch.float16).to(self.e.dtype), "half_exponents")

    @torch.no_grad()
    def set_exponents(self, e: Tensor, why: str) -> None:
        """Give the channels the exponents ``e`` (O,) and keep every integer k: the weight
        becomes exactly 2^e * k. Raises (naming ``why``) if any k would change."""
        k = self.qints()  # (O, ...) int64
        self.e.copy_(e)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        self.weight.copy_(k.to(self.weight.dtype) * torch.exp2(self.e).view(shape))
        if not torch.equal(self.qints(), k):
            moved = int((self.qints() != k).sum())
            raise RuntimeError(f"{why} changed {moved} of {k.numel()} integers")

    def dead_below(self) -> float:
        """The bit depth under which a live channel dies at the next step (0: none): 1.58
        with ``skip_one_bit``, raised to ``min_bits``; with ``fade``, min_bits - 1 (a
        fading channel quantizes at the floor, so no one-sign zone lies below it)."""
        if self.fade:
            return self.min_bits - 1
        return max(ONE_BIT_TOP if self.skip_one_bit else 0.0, self.min_bits)

    @torch.no_grad()
    def skip_one_bit_zone(self) -> None:
        """Send every b in (0, ``dead_below()``) to 0. Below 1 + log2(1.5) the quantizer's
        bounds round to -1 and 0, a one-sign channel; it dies (and is drained and cut)
        instead of crossing. ``min_bits`` raises that floor: live channels keep that many."""
        zone = (self.b > 0) & (self.b < self.dead_below())
        self.b.masked_fill_(zone, 0.0)

    def live_out(self) -> Tensor:
        """Bool mask (O,) of output channels with b+ > 0 (all True when not quantized)."""
        if self.quantized:
            return self.b.detach() > 0
        return torch.ones(self.weight.shape[0], dtype=torch.bool, device=self.weight.device)


class QConv2d(nn.Conv2d, QuantMixin):
    """3x3 convolution without bias whose weight is quantized per output channel."""

    def __init__(self, c_in: int, c_out: int, quantized: bool = True, init_bits: float = 8.0):
        super().__init__(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self._init_quant(quantized, init_bits)

    def forward(self, x: Tensor) -> Tensor:  # (B, I, H, W) -> (B, O, H, W)
        return F.conv2d(x, self.qweight(), None, self.stride, self.padding)


class QLinear(nn.Linear, QuantMixin):
    """Linear layer without bias whose weight is quantized per output (class) row."""

    def __init__(self, c_in: int, c_out: int, quantized: bool = True, init_bits: float = 8.0):
        super().__init__(c_in, c_out, bias=False)
        self._init_quant(quantized, init_bits)

    def forward(self, x: Tensor) -> Tensor:  # (B, I) -> (B, O)
        y = F.linear(x, self.qweight())
        gate = self.gate()
        return y if gate is None else y * gate


@dataclass
class Size:
    """Size of a network. Tensors (no host sync) until ``.item()``-ed for reporting."""

    q: Tensor  # differentiable size, bits per original weight (the Q in the loss)
    bits: Tensor  # exact size in bits: ceil(b+) bits per live weight
    live_weights: Tensor  # weights of live output channels times live input channels
    macs: Tensor  # multiply-accumulates of one image's forward pass through the live weights


def live_inputs_weights(layer: QuantMixin, live_in: Tensor) -> Tensor:
    """k*k * I_live: the weights one output channel of ``layer`` has on its live inputs."""
    w = layer.weight
    per_in = w.shape[2] * w.shape[3] if w.dim() == 4 else 1  # k*k weights per (out, in) pair
    return live_in.sum().to(w.dtype) * per_in


def layer_q(layer: QuantMixin, n_in: Tensor) -> Tensor:
    """Differentiable bits of one layer: z = k*k * I_live * sum_i b+_i (``n_in`` = k*k * I_live)."""
    if layer.quantized:
        return n_in * F.relu(layer.b).sum()
    return n_in * 32 * layer.weight.shape[0]  # a float layer: 32 bits per weight


def layer_size(layer: QuantMixin, live_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(differentiable bits, exact bits, live weights) of one layer.

    ``live_in`` is the bool mask of the layer's input channels whose producer is alive:
    z = k*k * I_live * sum_i b+_i. With integer b the two sizes agree exactly.
    """
    n_in = live_inputs_weights(layer, live_in)
    diff = layer_q(layer, n_in)
    if layer.quantized:
        exact = n_in * torch.ceil(F.relu(layer.quant_bits().detach())).sum()
        live = n_in * (layer.b.detach() > 0).sum()
    else:
        exact = diff
        live = n_in * layer.weight.shape[0]
    return diff, exact, live


# --- the quantizer's rules around each optimizer step, and after the last one ------------
# ``model`` is a ``trainer.model.ResNet9`` (not imported: the model imports this module).

def held_bits(model) -> list[Tensor]:
    """The b the quantizer uses (``quant_bits``) of every hold-range layer: the b itself,
    or with ``fade`` a new tensor that stays at the floor while the channel fades."""
    return [layer.quant_bits() for _, layer in model.quant_layers()
            if layer.quantized and layer.hold_range]


def bits_before_step(model) -> list[Tensor]:
    """Copies of the quantizer's b of every hold-range layer, before the optimizers step
    (in one operation), for ``after_step``."""
    with torch.no_grad():
        held = held_bits(model)
        return torch._foreach_mul(held, 1.0) if held else []  # copies, in one operation


def after_step(model, b_before: list[Tensor]) -> None:
    """The rules after the optimizers' step: hold-range layers move e against b's change
    (every layer's ``follow_bits`` in two multi-tensor operations), ``ration_deaths`` holds
    at the floor the b a layer's ration does not let die, ``skip_zones`` sends a b that fell
    below its layer's floor to 0, and ``keep_one_channel`` keeps a main-path conv from
    losing its last channel."""
    layers = [layer for _, layer in model.quant_layers() if layer.quantized]
    with torch.no_grad():
        held = held_bits(model)
        if held:  # every layer's follow_bits in two multi-tensor operations
            torch._foreach_sub_([layer.e for layer in layers if layer.hold_range],
                                torch._foreach_sub(held, b_before))
        ration_deaths([layer for layer in layers if layer.min_live is not None])
        skip_zones([layer for layer in layers if layer.dead_below() > 0])
        keep_one_channel([block.conv for block in model.main_path()
                          if block.conv.quantized and block.conv.b.requires_grad])


@torch.no_grad()
def set_rations(model, ration: float) -> None:
    """At an epoch's start: every quantized conv may keep no fewer than
    floor((1 - ``ration``) * live) live channels until the epoch ends (``ration_deaths``).
    With ``ration`` 1 there is no limit. A layer down to one channel may still lose it (a
    residual branch may still vanish; ``keep_one_channel`` guards the main path)."""
    for _, block in model.blocks():
        conv = block.conv
        if not conv.quantized or ration >= 1:
            conv.min_live = None
            continue
        live = int((conv.b.detach() > 0).sum())
        if conv.min_live is None or conv.min_live.device != conv.b.device:
            conv.min_live = torch.zeros((), dtype=torch.long, device=conv.b.device)
        conv.min_live.fill_(int((1 - ration) * live))  # filled in place: a CUDA graph keeps it


@torch.no_grad()
def ration_deaths(layers: list) -> None:
    """Before ``skip_zones``: a layer keeps ``min_live`` live channels. If fewer b than that
    stand at or above the floor (``dead_below``), the highest of those that fell below it
    this step go back to the floor, as many as it lacks, and wait there; the rest die in
    ``skip_zones``. So a layer's channels die over the epochs, the ones the loss defends
    least first, instead of all at the one step their b cross the floor together. Under
    ``hold_range`` e moves back as much as b, so the clipping range the loss chose stays
    (a ration excludes ``fade``, so the quantizer's b is b itself). No host read: a CUDA
    graph can hold it."""
    for layer in layers:
        b, floor = layer.b, layer.dead_below()
        falling = (b > 0) & (b < floor)
        short = (layer.min_live - (b >= floor).sum()).clamp_min(0)
        key = torch.where(falling, b, torch.full_like(b, -math.inf))
        rank = key.argsort(descending=True).argsort()  # 0: the highest falling b
        lift = torch.where(falling & (rank < short), floor - b, torch.zeros_like(b))
        b.add_(lift)
        if layer.hold_range:
            layer.e.sub_(lift)


@torch.no_grad()
def keep_one_channel(layers: list) -> None:
    """A main-path conv never loses its last channel: when its largest b has reached 0
    (after ``skip_zones``), that channel is put back at the smallest bit depth a live
    channel may have (its floor, at least the one-bit zone's top), so a strong γ leaves a
    thin network, never a constant. A no-op while the layer has a live channel; residual
    branches may still vanish whole, as the method intends."""
    for layer in layers:
        top = layer.b.argmax().view(1)  # on the device: no host read
        b_top = layer.b.gather(0, top)
        # with fade: back at the floor, its gate 1 (at dead_below() it would be 0)
        floor = layer.min_bits if layer.fade else max(layer.dead_below(), ONE_BIT_TOP)
        layer.b.scatter_(0, top, torch.where(b_top > 0, b_top, torch.full_like(b_top, floor)))


@torch.no_grad()
def skip_zones(layers: list) -> None:
    """``layer.skip_one_bit_zone()`` of every layer, in a few operations over all their b
    (one floor for all, as the trainer sets them; else layer by layer)."""
    floors = {layer.dead_below() for layer in layers}
    if len(floors) != 1:  # none, or layers with floors of their own
        for layer in layers:
            layer.skip_one_bit_zone()
        return
    b = torch.cat([layer.b for layer in layers])
    keep = ~((b > 0) & (b < floors.pop()))  # (C,): 1, or 0 where a b fell into the zone
    torch._foreach_mul_([layer.b for layer in layers],
                        keep.to(b.dtype).split([layer.b.numel() for layer in layers]))


def finish_quantizers(model, config: TrainConfig) -> None:
    """After the last step, before the final test: the network in the form an export stores."""
    fold_gates(model)
    for _, layer in model.quant_layers():
        if config.kind == "compress" and config.snap_bits:
            layer.snap_bits()  # the same weights, stored in fewer bits
        if config.half_exponents:
            layer.half_exponents()  # e in 2 bytes; the final test measures this network
    if config.integer_exponents and config.kind in QUANTIZED_KINDS:
        for _, block in model.blocks():  # not the head: it has no BatchNorm to take the factor
            block.integer_exponents()  # conv e in 1 byte, the fraction in the BatchNorm


@torch.no_grad()
def fold_gates(model) -> None:
    """With ``fade``: fold each channel's gate into what follows its quantized weights and
    raise a fading channel's b to the floor (a channel whose gate is 0 gets b 0), so every
    live gate is 1 and the network is a plain one (what an export stores), the same
    function in eval mode.

    A conv block's gate t >= 0 multiplies relu(BatchNorm(z)); t relu(u) = relu(t u), and
    t u is the eval-mode BatchNorm with weight and bias times t. A dead channel's t is 0:
    its weight and bias become 0, so it emits 0 whatever the flag. The head's gate scales
    its row: e + log2 t, every integer k kept (``set_exponents``).
    """
    for _, block in model.blocks():
        gate = block.conv.gate()
        if gate is not None:
            block.bn.weight.mul_(gate)
            block.bn.bias.mul_(gate)
            block.conv.b.copy_(torch.where(gate > 0, block.conv.quant_bits(), 0.0))
    head = model.head
    gate = head.gate()
    if gate is not None:
        live = gate > 0
        shift = torch.where(live, torch.log2(gate.clamp_min(1e-30)), 0.0)
        head.set_exponents(head.e + shift, "fold_gates")
        head.b.copy_(torch.where(live, head.quant_bits(), 0.0))
