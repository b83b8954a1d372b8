"""David Page's DAWNBench ResNet-9, built from quantized layers whose channels can be cut.

    prep    conv 3->c0                      (conv -> BatchNorm -> ReLU)
    layer1  conv c0->c1, max-pool 2         res1: x + conv2(conv1(x))   (c1 -> c1 -> c1)
    layer2  conv c1->c2, max-pool 2
    layer3  conv c2->c3, max-pool 2         res3: x + conv2(conv1(x))   (c3 -> c3 -> c3)
    head    global max-pool, linear c3->10 (no bias), logits * 0.125

Each activation lives on a set of the original channel indices. A residual sum lives on
the union of its shortcut's and its branch's channels. Layers record their original
row/column indices (``out_idx``/``in_idx``) so a cut network can be rebuilt from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.flat import Plan, make_plan, plan_key, quantize_layers
from trainer.quant import QConv2d, QLinear, Size, layer_q, layer_size, live_inputs_weights

T = TypeVar("T")

# Every weight layer of the uncompressed network, in forward order.
LAYER_NAMES = ("prep", "layer1", "res1.conv1", "res1.conv2", "layer2", "layer3",
               "res3.conv1", "res3.conv2", "head")
# Side of each layer's output map for a 32x32 image (a conv's output, before its pool): a
# weight of the layer is used SPATIAL**2 times per image. The head runs once.
SPATIAL = {"prep": 32, "layer1": 32, "res1.conv1": 16, "res1.conv2": 16, "layer2": 16,
           "layer3": 8, "res3.conv1": 4, "res3.conv2": 4, "head": 1}
SIZE_TERMS = ("bits", "bops")  # what Q counts: bits of weights, or bits x uses per image


def zeros_as(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zeros of ``shape`` in ``x``'s memory format: a channels_last activation stays so.

    (``new_zeros`` is always NCHW: an unaligned residual sum built on it handed every later
    convolution an NCHW input beside its channels_last weight; benchmarks/README.md says
    what that cost where it was measured.)
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(shape, dtype=x.dtype, device=x.device,
                           memory_format=torch.channels_last).zero_()
    return x.new_zeros(shape)


def constant_outputs(weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor,
                     eps: float) -> tuple[Tensor, Tensor]:
    """(train-mode, eval-mode) output of a ReLU'd BatchNorm channel whose input is all 0."""
    eval_shift = mean * weight / torch.sqrt(var + eps)
    return F.relu(bias), F.relu(bias - eval_shift)


class ConvBlock(nn.Module):
    """conv -> BatchNorm -> ReLU (-> 2x2 max-pool), computed as conv -> BatchNorm (-> pool)
    -> ReLU."""

    def __init__(self, c_in: int, c_out: int, pool: bool, quantized: bool, init_bits: float):
        super().__init__()
        self.conv = QConv2d(c_in, c_out, quantized, init_bits)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:  # (B, I, H, W) -> (B, O, H', W')
        if self.conv.weight.shape[0] == 0:  # every channel cut: an empty activation
            h, w = x.shape[2:]
            shape = (x.shape[0], 0, h // 2, w // 2) if self.pool else (x.shape[0], 0, h, w)
            return zeros_as(x, shape)
        if self.conv.weight.shape[1] == 0:  # no inputs left: the conv sums nothing, yet the
            # rows stay until their BatchNorm constants drain (F.conv2d would return 0 channels)
            z = zeros_as(x, (x.shape[0], self.conv.weight.shape[0], *x.shape[2:]))
        else:
            z = self.conv(x)
        # The pool before the ReLU (max commutes with it: the same values and gradients, on a
        # quarter of the elements), both in place (neither BatchNorm's nor the pool's backward
        # reads its output): 0.62-0.99x a block's elementwise time, benchmarks/README.md.
        y = self.bn(z)
        y = F.relu_(F.max_pool2d(y, 2) if self.pool else y)
        gate = self.conv.gate()  # fade: a channel below its floor fades out (t >= 0)
        return y if gate is None else y * gate.view(1, -1, 1, 1)

    @torch.no_grad()
    def integer_exponents(self) -> None:
        """Round the conv's exponents to integers and fold what is left into the BatchNorm:
        the same eval-mode function, with every integer k kept (an export stores n in a byte).

        A channel's weight 2^e * k becomes 2^n * k, n = round(e), so its conv output c
        becomes c / s with s = 2^(e - n) in [2^-0.5, 2^0.5]. Eval-mode BatchNorm
        gamma (c - mu) / sqrt(var + eps) + beta gives the same value for c / s with mu / s
        and gamma * s, var and eps unchanged; so does the dead-channel penalty's constant
        mu gamma / sqrt(var + eps). A dead channel outputs 0 whatever its e: only its e
        moves, its BatchNorm stays bit for bit (and so does whether it can be cut).
        Train-mode BatchNorm would not be the same function (its eps, and a running_var
        that is no longer the new output's): this runs after the last step.
        """
        conv, bn = self.conv, self.bn
        if not conv.quantized:
            return
        e = conv.e.detach()
        n = torch.round(e)
        live = ~self.dead()
        s = torch.where(live, torch.exp2((e - n).double()), 1.0)  # (O,) float64; e - n exact
        conv.set_exponents(n, "integer_exponents")
        bn.running_mean.copy_(bn.running_mean.double() / s)
        bn.weight.copy_(bn.weight.double() * s)

    def dead(self) -> Tensor:
        """Bool (O,): channels whose conv output is exactly zero for good.

        Either b+ = 0 (the quantized row is zero and gets no gradient), or no input columns
        are left (the conv sums nothing).
        """
        return ~self.live()

    def live(self) -> Tensor:
        """Bool (O,): channels whose conv output can still be nonzero (not ``dead()``)."""
        if self.conv.weight.shape[1] == 0:
            return torch.zeros_like(self.conv.out_idx, dtype=torch.bool)
        return self.conv.live_out()

    def constant_outputs(self) -> tuple[Tensor, Tensor]:
        """(train-mode, eval-mode) value (O,) a channel emits when its conv output is 0.

        Train mode normalises a zero map to 0, so the BatchNorm bias is what remains;
        eval mode subtracts the running mean first. Both go through the ReLU.
        """
        bn = self.bn
        outs = constant_outputs(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        gate = self.conv.gate()  # fade: a dead channel's gate is 0, and so is its constant
        return outs if gate is None else tuple(c * gate.detach() for c in outs)


def _pixel_rows(t: Tensor) -> Tensor:
    """A channels_last (N, C, H, W) map as the (N*H*W, C) matrix it is in memory: a view."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_rows(rows: Tensor, like: Tensor) -> Tensor:
    """``_pixel_rows``' inverse: (N*H*W, C) rows to a channels_last (N, C, H, W) view."""
    n, _, h, w = like.shape
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


class UnionSum(torch.autograd.Function):
    """``x + y`` on the union of their channels: ``x`` lands at positions ``pos_x``, ``y`` at
    ``pos_b`` of ``n``. In channels_last (the trainer's layout) it indexes the maps' (N*H*W, C)
    matrices, where a channel index picks one element in each row: forward and backward in
    0.26-0.36x the time of indexing dim 1 of the 4-D maps, which walks every channel's
    strided plane (benchmarks/README.md, "Where a cut step spends its time"). The values
    are the same either way, bit for bit (0 + x + y, each element), and the gradients come
    back channels_last when the incoming gradient is."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, pos_x: Tensor, pos_b: Tensor, n: int) -> Tensor:
        ctx.save_for_backward(pos_x, pos_b)
        cl = torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=cl) and y.is_contiguous(memory_format=cl):
            out = torch.zeros(x.shape[0] * x.shape[2] * x.shape[3], n, dtype=x.dtype,
                              device=x.device)
            out.index_add_(1, pos_x, _pixel_rows(x)).index_add_(1, pos_b, _pixel_rows(y))
            return _from_rows(out, x)
        # in place: out-of-place index_add returns NCHW whatever out's layout
        out = zeros_as(x, (x.shape[0], n, *x.shape[2:]))
        return out.index_add_(1, pos_x, x).index_add_(1, pos_b, y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        pos_x, pos_b = ctx.saved_tensors
        if grad.dim() == 4 and grad.is_contiguous(memory_format=torch.channels_last):
            rows = _pixel_rows(grad)
            return (_from_rows(rows.index_select(1, pos_x), grad),
                    _from_rows(rows.index_select(1, pos_b), grad), None, None, None)
        return (grad.index_select(1, pos_x).contiguous(), grad.index_select(1, pos_b).contiguous(),
                None, None, None)


class Residual(nn.Module):
    """x + conv2(conv1(x)); the sum lives on the union of the two sides' channels."""

    def __init__(self, c: int, quantized: bool, init_bits: float):
        super().__init__()
        self.conv1: ConvBlock | None = ConvBlock(c, c, False, quantized, init_bits)
        self.conv2: ConvBlock | None = ConvBlock(c, c, False, quantized, init_bits)
        # Positions of the shortcut's and the branch's channels within the union.
        self.register_buffer("pos_x", torch.arange(c))
        self.register_buffer("pos_b", torch.arange(c))
        self.register_buffer("out_idx", torch.arange(c))  # original indices of the union
        self.aligned = True  # shortcut, branch and union are the same channels: plain add

    def forward(self, x: Tensor) -> Tensor:
        if self.conv1 is None:  # the whole branch died: identity
            return x
        y = self.conv2(self.conv1(x))
        if self.aligned:
            return x + y
        return UnionSum.apply(x, y, self.pos_x, self.pos_b, self.out_idx.numel())

    def set_layout(self, shortcut_idx: Tensor) -> None:
        """Recompute the union and positions from the shortcut's original channel indices."""
        branch_idx = self.conv2.conv.out_idx if self.conv2 is not None else shortcut_idx[:0]
        union = torch.unique(torch.cat([shortcut_idx, branch_idx]))  # sorted
        self.out_idx = union
        self.pos_x = torch.searchsorted(union, shortcut_idx)
        self.pos_b = torch.searchsorted(union, branch_idx)
        self.aligned = self.conv1 is not None and torch.equal(shortcut_idx, union) and \
            torch.equal(branch_idx, union)

    def live_union(self, live_x: Tensor, live_b: Tensor) -> Tensor:
        """Bool mask over the union: alive on either side."""
        live = torch.zeros(self.out_idx.numel(), dtype=torch.bool, device=live_x.device)
        live[self.pos_x] = live_x
        if self.conv1 is not None:
            live[self.pos_b] |= live_b
        return live


class ResNet9(nn.Module):
    """Page's ResNet-9 with per-channel learned bit depths (``quantized=True``)."""

    def __init__(self, widths: tuple[int, int, int, int] = (64, 128, 256, 512),
                 num_classes: int = 10, quantized: bool = True, init_bits: float = 8.0,
                 full_widths: tuple[int, int, int, int] | None = None):
        super().__init__()
        c0, c1, c2, c3 = widths
        q = dict(quantized=quantized, init_bits=init_bits)
        self.widths = tuple(widths)
        self.quantized = quantized
        self.prep = ConvBlock(3, c0, pool=False, **q)
        self.layer1 = ConvBlock(c0, c1, pool=True, **q)
        self.res1 = Residual(c1, **q)
        self.layer2 = ConvBlock(c1, c2, pool=True, **q)
        self.layer3 = ConvBlock(c2, c3, pool=True, **q)
        self.res3 = Residual(c3, **q)
        self.head = QLinear(c3, num_classes, **q)
        # N0 and the MACs of one image: what sizes are measured against. This network's
        # own, unless a reference trial is measured against a wider one (narrow-float).
        full = layer_weights(full_widths or self.widths, num_classes)
        self.n0 = sum(full.values())
        self.macs0 = sum(n * SPATIAL[name] ** 2 for name, n in full.items())
        self.initial_shapes = {n: tuple(m.weight.shape) for n, m in self.quant_layers()}
        self._plan: Plan | None = None  # where quantize_at_once puts each layer's weights
        self._size_coef: tuple | None = None  # loss_size's constants, until a cut

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, classes)
        layers = self.quantize_at_once()
        try:
            x = self.res1(self.layer1(self.prep(x)))
            x = self.res3(self.layer3(self.layer2(x)))
            return self.head(torch.amax(x, dim=(2, 3))) * 0.125
        finally:
            for layer in layers:
                layer.qweight_now = None

    def quantize_at_once(self) -> list[QConv2d | QLinear]:
        """In a training step, every quantized layer's weight through the quantizer in one
        pass (trainer/flat.py: about 130 operations a step, views included, where layer by
        layer took 330), left in ``layer.qweight_now`` for this forward pass; returns the
        layers to clear after it. Layers with no weights left are skipped, as their forward
        is: their b and e get no gradient from it.

        Without gradients (evaluation) each layer quantizes itself, as an export does: on a
        CPU, 2^e of a long vector and of a short one can differ in the last bit (vectorised
        and scalar exp2), and the network tested must be the network stored.
        """
        if not torch.is_grad_enabled():
            return []
        layers = [m for _, m in self.quant_layers() if m.quantized and m.weight.numel()]
        if not layers or len({m.hold_range for m in layers}) > 1:
            return []  # one hold_range flag goes with one pass
        if self._plan is None or self._plan.key != plan_key(layers):  # a cut moved them
            self._plan = make_plan(layers)
        for layer, q in zip(layers, quantize_layers(layers, self._plan), strict=True):
            layer.qweight_now = q
        return layers

    def blocks(self) -> Iterator[tuple[str, ConvBlock]]:
        """Every conv block still present, in forward order, with its name."""
        for name in ("prep", "layer1", "res1", "layer2", "layer3", "res3"):
            m = getattr(self, name)
            if isinstance(m, ConvBlock):
                yield name, m
            elif m.conv1 is not None:
                yield f"{name}.conv1", m.conv1
                yield f"{name}.conv2", m.conv2

    def main_path(self) -> list[ConvBlock]:
        """The conv blocks every image passes through (prep, layer1, layer2, layer3): the
        network is a constant without any one of them, unlike a residual branch."""
        return [self.prep, self.layer1, self.layer2, self.layer3]

    def quant_layers(self) -> Iterator[tuple[str, QConv2d | QLinear]]:
        """Every weight layer still present (convs, then the head)."""
        for name, block in self.blocks():
            yield name, block.conv
        yield "head", self.head

    def walk(self, start: T, block: Callable[[str, ConvBlock, T], T],
             join: Callable[[Residual, T, T | None], T]) -> T:
        """Carry a value through the graph in forward order; return what reaches the head.

        ``block(name, b, x)`` maps the value entering a conv block to the one leaving it;
        ``join(r, shortcut, branch)`` merges a residual's two sides (branch is None when
        the branch has been removed).
        """
        x = block("prep", self.prep, start)
        for trunk, res in (("layer1", "res1"), ("layer3", "res3")):
            if trunk == "layer3":
                x = block("layer2", self.layer2, x)
            x = block(trunk, getattr(self, trunk), x)
            r: Residual = getattr(self, res)
            branch = None
            if r.conv1 is not None:
                branch = block(f"{res}.conv2", r.conv2, block(f"{res}.conv1", r.conv1, x))
            x = join(r, x, branch)
        return x

    def live_inputs(self) -> list[tuple[str, QConv2d | QLinear, Tensor]]:
        """Each weight layer with the bool mask of its live input channels.

        An input channel is live when its producer has b+ > 0; a residual sum's channel is
        live when it is live on either side; the image's 3 channels are always live.
        """
        out = []

        def block(name: str, b: ConvBlock, live_in: Tensor) -> Tensor:
            out.append((name, b.conv, live_in))
            return b.live()

        def join(r: Residual, live_x: Tensor, live_b: Tensor | None) -> Tensor:
            return r.live_union(live_x, live_x[:0] if live_b is None else live_b)

        live = self.walk(torch.ones(3, dtype=torch.bool, device=self.head.weight.device),
                         block, join)
        out.append(("head", self.head, live))
        return out

    def size(self, size_term: str = "bits") -> Size:
        """The network's size now: differentiable Q for the loss, exact bits for reports.

        ``bits``: Q = sum_l z_l / N0, bits per original weight. ``bops``: each layer's z_l
        weighted by its output's spatial size (the bit-operations of one image), over the
        original network's MACs: Q is bits per original multiply-accumulate.
        """
        diff = exact = live = macs = 0
        for name, layer, live_in in self.live_inputs():
            d, e, n = layer_size(layer, live_in)
            diff = diff + d * self.q_weight(name, size_term)
            exact, live, macs = exact + e, live + n, macs + n * SPATIAL[name] ** 2
        return Size(q=diff / self.q_norm(size_term), bits=exact, live_weights=live, macs=macs)

    def q_weight(self, name: str, size_term: str) -> int:
        """How often Q counts layer ``name``'s bits: once (bits), or once per output pixel."""
        return SPATIAL[name] ** 2 if size_term == "bops" else 1

    def q_norm(self, size_term: str) -> int:
        """What Q divides by: the original network's weights (bits) or MACs (bops)."""
        return self.macs0 if size_term == "bops" else self.n0

    def loss_size(self, size_term: str = "bits") -> Tensor:
        """The differentiable Q of ``size(size_term)`` alone: what the loss needs each step,
        without the exact sizes that only reports read, and over all layers' b at once:
        Q = sum_c relu(b_c) * k*k * I_live(layer of c) * q_weight / q_norm (a few dozen
        operations a step where layer by layer took over a hundred)."""
        named = self.live_inputs()
        layers = [layer for _, layer, _ in named]
        if not all(layer.quantized for layer in layers):  # the references: none in training
            return sum(layer_q(layer, live_inputs_weights(layer, live_in))
                       * self.q_weight(name, size_term) for name, layer, live_in in named) \
                / self.q_norm(size_term)
        with torch.no_grad():
            live_in = torch.stack([live.sum() for _, _, live in named])  # (L,) live inputs
            per_layer, channel_layer = self.size_coefficients(size_term)
            coef = (live_in * per_layer).index_select(0, channel_layer)  # (C,) dQ/db+_c
        return (F.relu(torch.cat([layer.b for layer in layers])) * coef).sum()

    def size_coefficients(self, size_term: str) -> tuple[Tensor, Tensor]:
        """((L,) k*k * q_weight / q_norm of each present layer, (C,) each channel's layer),
        on the network's device; kept until a cut changes the layers (no copy each step)."""
        named = list(self.quant_layers())
        device = self.head.weight.device
        key = (size_term, device, tuple(tuple(layer.weight.shape) for _, layer in named))
        if self._size_coef is None or self._size_coef[0] != key:
            per_layer = torch.tensor([  # k*k weights per (output, input) pair: 9, 1 (head)
                (layer.weight.shape[2] * layer.weight.shape[3] if layer.weight.dim() == 4 else 1)
                * self.q_weight(name, size_term) / self.q_norm(size_term)
                for name, layer in named], dtype=self.head.weight.dtype)
            outs = torch.tensor([layer.weight.shape[0] for _, layer in named])
            channel_layer = torch.arange(len(named)).repeat_interleave(outs)
            self._size_coef = (key, per_layer.to(device), channel_layer.to(device))
        return self._size_coef[1], self._size_coef[2]

    def dead_penalty(self) -> Tensor:
        """Sum of the constant outputs of dead channels (train and eval mode): the L1 term.

        Every block's channels in one vector (``constant_outputs`` over the concatenated
        BatchNorms): about 20 operations a step where a loop over the blocks issued 110.
        """
        blocks = [block for _, block in self.blocks()]  # the prep block is never removed
        with torch.no_grad():
            if all(block.conv.quantized and block.conv.weight.shape[1] for block in blocks):
                dead = ~(torch.cat([block.conv.b for block in blocks]) > 0)  # one pass
            else:
                dead = torch.cat([block.dead() for block in blocks])
        cat = {name: torch.cat([getattr(block.bn, name) for block in blocks])
               for name in ("weight", "bias", "running_mean", "running_var")}
        train_c, eval_c = constant_outputs(cat["weight"], cat["bias"], cat["running_mean"],
                                           cat["running_var"], blocks[0].bn.eps)  # one eps
        gates = [block.conv.gate() for block in blocks]
        if all(g is not None for g in gates):  # fade: a dead channel's gate 0 silences it
            dead = dead * torch.cat(gates).detach()
        return ((train_c + eval_c) * dead).sum()

    def layout(self) -> dict[str, dict[str, list[int]] | None]:
        """Original row/column indices of every layer; None for a removed residual branch."""
        present = dict(self.quant_layers())
        return {n: ({"out": present[n].out_idx.tolist(), "in": present[n].in_idx.tolist()}
                    if n in present else None) for n in LAYER_NAMES}


def layer_weights(widths: tuple[int, int, int, int], num_classes: int = 10) -> dict[str, int]:
    """Weights of each layer of the uncompressed ResNet-9 with these channel counts."""
    c0, c1, c2, c3 = widths
    convs = (3 * c0, c0 * c1, c1 * c1, c1 * c1, c1 * c2, c2 * c3, c3 * c3, c3 * c3)
    return {**{name: 9 * n for name, n in zip(LAYER_NAMES, convs, strict=False)},
            "head": c3 * num_classes}


def build_model(widths: tuple[int, int, int, int], quantized: bool, init_bits: float,
                num_classes: int = 10,
                full_widths: tuple[int, int, int, int] | None = None) -> ResNet9:
    """A fresh ResNet-9 (the seed must be set by the caller for reproducible weights).

    ``full_widths``: the network sizes are measured against (None: this one).
    """
    return ResNet9(widths, num_classes=num_classes, quantized=quantized, init_bits=init_bits,
                   full_widths=full_widths)
