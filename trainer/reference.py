"""Reference forms kept as test oracles: slower, plainer forms of what the trainer computes
in fewer operations. Nothing in training calls them; each names what it checks.

The product forms they check: ``quant.quantize_fused`` (each layer's quantizer, a
hand-written backward; evaluation and export use it), checked against ``quantize`` here
(tests/test_quant.py), against which in turn ``flat.quantize_layers`` (every layer in one
pass, the training forward) is checked (tests/test_flat.py); and
``quant.after_step``'s multi-tensor hold-range update, checked against ``follow_bits``
(tests/test_quant.py).

Pairs that are not oracle and product but two products: ``ResNet9.size`` (the exact size,
reported) and ``ResNet9.loss_size`` (the differentiable one in the loss; tests/test_quant.py
checks they agree on integer bits); ``QuantMixin.skip_one_bit_zone`` (one layer, the
fallback of ``quant.skip_zones`` when layers have floors of their own) and
``quant.skip_zones`` (every layer at once); ``ConvBlock.dead`` (one block's dead-channel
mask, which surgery and reports read) and ``ResNet9.dead_penalty`` (all blocks at once, in
the loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.quant import _scaled, round_ste


# checks quant.quantize_fused: the same values and the same gradients
def quantize(w: Tensor, b: Tensor, e: Tensor) -> Tensor:
    """Quantize ``w`` (O, ...) with per-output-channel bit depth ``b`` (O,) and exponent ``e`` (O,).

    With b <= 0 the clamp range is [-0.5, -0.5], which rounds to 0: the channel is exactly
    zero, and relu passes no gradient back to b, so a dead channel stays dead.

    The reference form, built from autograd's operations; the layers train with
    ``quant.quantize_fused``, the same forward values and the same gradients in far fewer
    operations (tests/test_quant.py compares the two).
    """
    scale, x = _scaled(w, b, e)
    return scale * round_ste(x)


# checks quant.after_step's hold-range update (every layer at once, multi-tensor)
@torch.no_grad()
def follow_bits(layer, b_before: Tensor) -> None:
    """``hold_range``: after an optimizer step, move ``layer``'s e against b's change,
    keeping the range.

    Together with ``qweight``'s gradient this is exactly gradient descent on (b, r),
    r = e + b - 1, while e and b stay the stored parameters. The trainer's
    ``quant.after_step`` does this for every layer at once in multi-tensor operations
    (tested equal to this form).
    """
    layer.e -= layer.b - b_before
