"""Cutting dead channels out of a ResNet9 while it trains, optimizer state included.

A channel is cut only when cutting it changes nothing: its quantized weights are zero for
good (b+ = 0, or no inputs left) and the constant it still emits, its BatchNorm bias
through the ReLU, is zero in train and in eval mode. Cutting removes its conv row, b and e,
its BatchNorm parameters and buffers, and the matching input column of every consumer.

Each slice of a parameter is recorded as a ``Remap``; ``slice_optimizer_state`` then slices
the optimizers' per-parameter state (momentum, Adam moments) with the same indices, so
training goes on exactly as if the cut channels had stayed as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.model import ConvBlock, Residual, ResNet9
from trainer.quant import QConv2d, QLinear


@dataclass
class Remap:
    """Parameter ``old`` was replaced by ``new`` = old.index_select(dim, keep)."""

    old: nn.Parameter
    new: nn.Parameter
    dim: int
    keep: Tensor


def _sliced(t: Tensor, dim: int, keep: Tensor) -> Tensor:
    """``t.index_select(dim, keep)`` in ``t``'s memory format (channels_last stays so)."""
    out = t.index_select(dim, keep)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _slice_param(module: nn.Module, name: str, dim: int, keep: Tensor,
                 remaps: list[Remap]) -> None:
    old = getattr(module, name)
    new = nn.Parameter(_sliced(old.detach(), dim, keep).clone(),
                       requires_grad=old.requires_grad)
    setattr(module, name, new)
    remaps.append(Remap(old, new, dim, keep))


def _slice_buffer(module: nn.Module, name: str, keep: Tensor) -> None:
    setattr(module, name, getattr(module, name).index_select(0, keep))


def slice_layer_out(layer: QConv2d | QLinear, keep: Tensor, remaps: list[Remap]) -> None:
    """Keep only rows ``keep`` of a weight layer: weight rows, b, e, out_idx."""
    _slice_param(layer, "weight", 0, keep, remaps)
    if layer.quantized:
        _slice_param(layer, "b", 0, keep, remaps)
        _slice_param(layer, "e", 0, keep, remaps)
    _slice_buffer(layer, "out_idx", keep)
    layer.out_channels = keep.numel() if isinstance(layer, QConv2d) else layer.out_channels


def slice_layer_in(layer: QConv2d | QLinear, keep: Tensor, remaps: list[Remap]) -> None:
    """Keep only input columns ``keep`` of a weight layer: weight columns, in_idx."""
    _slice_param(layer, "weight", 1, keep, remaps)
    _slice_buffer(layer, "in_idx", keep)
    if isinstance(layer, QConv2d):
        layer.in_channels = keep.numel()
    else:
        layer.in_features = keep.numel()


def slice_bn(bn: nn.BatchNorm2d, keep: Tensor, remaps: list[Remap]) -> None:
    """Keep only channels ``keep`` of a BatchNorm: weight, bias, running mean and variance."""
    _slice_param(bn, "weight", 0, keep, remaps)
    _slice_param(bn, "bias", 0, keep, remaps)
    _slice_buffer(bn, "running_mean", keep)
    _slice_buffer(bn, "running_var", keep)
    bn.num_features = keep.numel()


def slice_optimizer_state(optimizers: list[torch.optim.Optimizer], remaps: list[Remap],
                          dropped: list[nn.Parameter] = ()) -> None:
    """Re-key and slice per-parameter state; forget parameters that left the network.

    State tensors shaped like the old parameter are sliced like it; others (Adam's step
    count) are kept as they are.
    """
    for opt in optimizers:
        for r in remaps:  # in order: a parameter sliced twice is re-keyed twice
            for group in opt.param_groups:
                group["params"] = [r.new if p is r.old else p for p in group["params"]]
            if r.old in opt.state:
                state = opt.state.pop(r.old)
                opt.state[r.new] = {
                    k: _sliced(v, r.dim, r.keep)
                    if torch.is_tensor(v) and v.shape == r.old.shape else v
                    for k, v in state.items()}
        gone = {id(p) for p in dropped}
        for group in opt.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in gone]
        for p in dropped:
            opt.state.pop(p, None)


def _feed(layer: QConv2d | QLinear, space: Tensor, remaps: list[Remap]) -> None:
    """Make ``layer``'s input columns match the producer's channels ``space`` (a subset)."""
    if torch.equal(layer.in_idx, space):
        return
    keep = torch.searchsorted(layer.in_idx, space)
    if keep.numel() and (keep.max() >= layer.in_idx.numel()
                         or not torch.equal(layer.in_idx[keep], space)):
        raise RuntimeError(f"producer channels {space.tolist()} are not a subset of the "
                           f"consumer's inputs {layer.in_idx.tolist()}")
    slice_layer_in(layer, keep, remaps)


def relayout(model: ResNet9, remaps: list[Remap]) -> None:
    """Walk the network and cut every consumer's input columns down to its producer's."""

    def block(_name: str, b: ConvBlock, space: Tensor) -> Tensor:
        _feed(b.conv, space, remaps)
        return b.conv.out_idx

    def join(r: Residual, space: Tensor, _branch: Tensor | None) -> Tensor:
        r.set_layout(space)
        return r.out_idx

    _feed(model.head, model.walk(torch.arange(3, device=model.head.weight.device), block, join),
          remaps)


def cuttable(block: ConvBlock) -> Tensor:
    """Bool (O,): dead channels whose constant output is zero in train and eval mode."""
    train_c, eval_c = block.constant_outputs()
    return block.dead() & (train_c == 0) & (eval_c == 0)


def aligned(cut: Tensor, n_cut: int, align: int) -> tuple[Tensor, int]:
    """``cut`` (bool, O, with ``n_cut`` set) with the fewest channels put back, lowest index
    first, that leave a multiple of ``align`` channels (or none), and how many it still cuts:
    a GPU's bf16 convolutions work in groups of 8. The channels put back are dead: they stay
    zeros until a later cut takes them."""
    total = cut.numel()
    left = total - n_cut
    keep = min(total, -(-left // align) * align)  # rounded up to a multiple of align
    back = keep - left
    if back:
        cut = cut.clone()
        cut[cut.nonzero().flatten()[:back]] = False
    return cut, n_cut - back


def cut_dead_channels(model: ResNet9, optimizers: list[torch.optim.Optimizer],
                      align: int = 1) -> int:
    """Cut every channel whose removal leaves the output unchanged; return how many.

    A residual branch whose last conv has no channels left is removed whole (the block
    becomes the identity); its first conv's channels count as cut. With ``align`` > 1 each
    conv keeps a multiple of ``align`` output channels (or none, or all it had): fewer dead
    channels are cut at a time (``aligned``).
    """
    if not model.quantized:
        return 0
    remaps: list[Remap] = []
    dropped: list[nn.Parameter] = []
    n_cut = 0
    with torch.no_grad():
        blocks = list(model.blocks())
        masks = [cuttable(b) for _, b in blocks]
        counts = torch.stack([m.sum() for m in masks]).tolist() if masks else []
        if align > 1:  # on the counts already read: no more host syncs unless one is put back
            pairs = [aligned(m, n, align) for m, n in zip(masks, counts, strict=True)]
            masks, counts = [m for m, _ in pairs], [n for _, n in pairs]
        for (_, b), cut, n in zip(blocks, masks, counts, strict=True):
            if n:
                keep = (~cut).nonzero().flatten()
                slice_layer_out(b.conv, keep, remaps)
                slice_bn(b.bn, keep, remaps)
                n_cut += n
        for r in (model.res1, model.res3):
            if r.conv1 is not None and r.conv2.conv.weight.shape[0] == 0:
                n_cut += r.conv1.conv.weight.shape[0]
                dropped += [*r.conv1.parameters(), *r.conv2.parameters()]
                r.conv1 = r.conv2 = None
        if n_cut:
            relayout(model, remaps)
    if n_cut:
        slice_optimizer_state(optimizers, remaps, dropped)
    return n_cut


def apply_layout(model: ResNet9, layout: dict[str, dict[str, list[int]] | None]) -> None:
    """Shrink a freshly built model to a saved ``ResNet9.layout()`` (before load_state_dict)."""
    remaps: list[Remap] = []
    with torch.no_grad():
        for res in ("res1", "res3"):
            if layout.get(f"{res}.conv1") is None:
                r = getattr(model, res)
                r.conv1 = r.conv2 = None
        for name, b in list(model.blocks()):
            rows = torch.tensor(layout[name]["out"], dtype=torch.long,
                                device=b.conv.weight.device)
            if not torch.equal(rows, b.conv.out_idx):
                keep = torch.searchsorted(b.conv.out_idx, rows)
                slice_layer_out(b.conv, keep, remaps)
                slice_bn(b.bn, keep, remaps)
        relayout(model, remaps)
    mismatch = [n for n, layer in model.quant_layers()
                if layer.in_idx.tolist() != layout[n]["in"]]
    if mismatch:
        raise RuntimeError(f"saved layout is inconsistent: input channels differ in {mismatch}")


def _spread(t: Tensor, dim: int, pos: Tensor, n: int, fill: float) -> Tensor:
    """``t`` placed at positions ``pos`` of a length-``n`` ``dim``, the rest ``fill``, in
    ``t``'s memory format (the inverse of ``_sliced``)."""
    shape = list(t.shape)
    shape[dim] = n
    out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out.index_copy_(dim, pos, t)


def _widen(module: nn.Module, name: str, dim: int, pos: Tensor, n: int, fill: float) -> None:
    old = getattr(module, name)
    new = _spread(old.detach(), dim, pos, n, fill)
    setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad)
            if isinstance(old, nn.Parameter) else new)


def _widen_out(block: ConvBlock, rows: Tensor) -> None:
    """Give ``block`` the output channels ``rows`` (original indices, a superset of its own):
    the new ones a zero weight row at bit depth 0 and a BatchNorm of weight 1 and bias 0,
    so that they emit exactly 0 in train and eval mode."""
    conv, bn, n = block.conv, block.bn, rows.numel()
    pos = torch.searchsorted(rows, conv.out_idx)
    _widen(conv, "weight", 0, pos, n, 0.0)
    if conv.quantized:
        _widen(conv, "b", 0, pos, n, 0.0)
        _widen(conv, "e", 0, pos, n, 0.0)
    conv.out_idx, conv.out_channels = rows.clone(), n
    for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                       ("running_var", 1.0)):
        _widen(bn, name, 0, pos, n, fill)
    bn.num_features = n


def dense_twin(model: ResNet9) -> ResNet9:
    """A copy of the cut ``model`` in which every residual sum is a plain add.

    For a sum on the union of two channel sets, the shortcut's producer (layer1, layer3)
    and the branch's last conv get the whole union. The channels they lacked become zero
    rows that emit exactly 0, and the branch's first conv reads them through zero columns.
    The twin computes the same function with the widths the sums force. A cut network's
    step is measured against it (``benchmarks.shrink``), and ``tests/test_surgery.py``
    checks that the two give the same outputs and gradients.
    """
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for producer, r in ((twin.layer1, twin.res1), (twin.layer3, twin.res3)):
            if r.conv1 is None or r.aligned:
                continue
            union = r.out_idx.clone()
            _widen_out(producer, union)
            _widen_out(r.conv2, union)
            first = r.conv1.conv
            _widen(first, "weight", 1, torch.searchsorted(union, first.in_idx), union.numel(),
                   0.0)
            first.in_idx, first.in_channels = union.clone(), union.numel()
            r.set_layout(union)
    return twin
