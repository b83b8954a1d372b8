"""The quantizer: exact zeros at 0 bits, gradients, and the size it reports."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.model import ConvBlock, ResNet9
from trainer.quant import QConv2d, initial_exponent, quantize_fused, snapped_bits
from trainer.reference import follow_bits, quantize


def test_zero_bits_give_an_exactly_zero_channel_and_no_gradient_to_b():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.tensor([0.0, -0.7, 3.0, 5.0], requires_grad=True)
    e = initial_exponent(w, 4.0).requires_grad_()
    q = quantize(w, b, e)
    assert torch.all(q[:2] == 0)  # b <= 0: every weight of the channel is exactly 0
    assert q[2:].abs().sum() > 0
    q.pow(2).sum().backward()
    assert b.grad[0] == 0 and b.grad[1] == 0
    assert torch.all(w.grad[:2] == 0)


def test_gradients_reach_w_b_and_e():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    # 2 bits against an exponent made for 8: most values clip, so b gets a gradient.
    b = torch.full((6,), 2.0, requires_grad=True)
    e = initial_exponent(w, 8.0).requires_grad_()
    target = torch.randn(6, 4, 3, 3)
    ((quantize(w, b, e) - target) ** 2).sum().backward()
    for name, t in (("w", w), ("b", b), ("e", e)):
        assert t.grad is not None and torch.all(torch.isfinite(t.grad)), name
        assert t.grad.abs().sum() > 0, f"no gradient reached {name}"


def test_the_fused_quantizer_gives_the_reference_values_and_gradients():
    # The layers train with quantize_fused (a hand-written backward, few operations); it must
    # be the method of `quantize` exactly: same weights, same gradients to w, b and e, with
    # dead, clipped and unclipped channels, with and without hold_range.
    torch.manual_seed(4)
    for hold_range in (False, True):
        w = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.tensor([-0.3, 0.0, 0.7, 1.9, 3.3, 6.2, 8.0], dtype=torch.float64,
                         requires_grad=True)
        e = (initial_exponent(w, 8.0) + torch.randn(7, dtype=torch.float64)).requires_grad_()
        target = torch.randn(7, 5, 3, 3, dtype=torch.float64)
        grads = []
        for fused in (False, True):
            if fused:
                q = quantize_fused(w, b, e, hold_range)
            else:
                q = quantize(w, b, e - (b - b.detach()) if hold_range else e)
            ((q - target) ** 2).sum().backward()
            grads.append((q.detach(), *(t.grad.clone() for t in (w, b, e))))
            w.grad = b.grad = e.grad = None
        (ref, *ref_grads), (out, *fused_grads) = grads
        assert torch.equal(out.view(torch.int64), ref.view(torch.int64))  # bit for bit, ±0
        for name, r, f in zip("wbe", ref_grads, fused_grads, strict=True):
            assert torch.allclose(f, r, rtol=1e-12, atol=1e-12), (hold_range, name)
        assert ref_grads[1][2:].abs().min() > 0  # clipping reached every live b
        assert torch.all(ref_grads[1][:2] == 0)  # and no dead one


def test_the_loss_size_is_the_size_q():
    model = ResNet9((4, 6, 8, 10), init_bits=3.0)
    with torch.no_grad():  # fractional and dead channels, and a dead branch conv
        model.layer1.conv.b.copy_(torch.linspace(-1.0, 5.5, 6))
        model.res3.conv1.conv.b.fill_(0.0)
    for term in ("bits", "bops"):
        q, loss_q = model.size(term).q, model.loss_size(term)
        assert torch.allclose(loss_q, q, rtol=1e-6)
        (gq,) = torch.autograd.grad(q, model.layer1.conv.b)
        (gl,) = torch.autograd.grad(loss_q, model.layer1.conv.b)
        assert torch.allclose(gl, gq) and gq.abs().sum() > 0


def test_bf16_autocast_leaves_the_quantizer_in_float32():
    # On a GPU the trainer autocasts to bfloat16. The quantizer's rounding must not move:
    # the weight 2^e * k comes out in float32 and equal to the one computed without autocast
    # (CPU autocast follows the same op lists: elementwise ops are left alone).
    torch.manual_seed(3)
    conv = QConv2d(8, 16, init_bits=8.0)
    with torch.no_grad():
        conv.b.copy_(torch.linspace(0.5, 9.0, 16))  # every depth up to 9 bits
        conv.hold_range = True
    plain = conv.qweight()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = conv.qweight()
        out = conv(torch.randn(2, 8, 6, 6))
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
    assert out.dtype == torch.bfloat16  # the convolution itself does run in bfloat16
    k = conv.qints()
    assert k.abs().max() <= 2 ** 8  # 9 bits: the integers are exact in bfloat16 too
    assert torch.equal(k.to(torch.bfloat16).to(torch.int64), k)


def test_initial_exponent_makes_the_quantized_layer_match_the_float_layer():
    torch.manual_seed(2)
    conv = QConv2d(8, 16, init_bits=8.0)
    x = torch.randn(2, 8, 10, 10)
    qout = conv(x)
    fout = torch.nn.functional.conv2d(x, conv.weight, padding=1)
    # 8 bits: rounding error only, no clipping; relative error well under 1%.
    assert (qout - fout).norm() / fout.norm() < 0.01
    top = conv.weight.abs().flatten(1).amax(1)
    assert torch.allclose(conv.qweight().abs().flatten(1).amax(1), top, rtol=1e-6)


def test_with_integer_bits_the_differentiable_size_equals_the_exact_size():
    torch.manual_seed(3)
    model = ResNet9((4, 6, 8, 10), init_bits=8.0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in model.quant_layers():
            layer.b.copy_(torch.randint(-2, 9, layer.b.shape, generator=gen).float())
    size = model.size()
    assert size.q.requires_grad
    assert torch.equal(size.q * model.n0, size.bits)
    # by hand: sum over layers of 9 * live inputs * sum(relu(b)) (1 * ... for the head)
    total = 0.0
    for _, layer, live_in in model.live_inputs():
        per_in = 9 if layer.weight.dim() == 4 else 1
        total += per_in * int(live_in.sum()) * float(torch.relu(layer.b.detach()).sum())
    assert float(size.bits) == total


def test_fractional_bits_are_stored_as_their_ceiling():
    model = ResNet9((2, 2, 2, 2), init_bits=2.5)
    size = model.size()
    q_bits = float(size.q.detach() * model.n0)
    assert float(size.bits) > q_bits  # 3 bits stored for b = 2.5
    assert float(size.bits) == q_bits * 3 / 2.5


def test_the_bops_size_weights_each_layer_by_its_output_map():
    model = ResNet9((4, 6, 8, 10), init_bits=3.0)
    bits, bops = model.size("bits"), model.size("bops")
    # both count bits per original weight / per original MAC
    assert float(bits.q.detach()) == 3.0 and float(bops.q.detach()) == 3.0
    assert float(bops.macs) == model.macs0
    with torch.no_grad():  # kill the 4x4 res3 branch's first conv: few MACs, many weights
        model.res3.conv1.conv.b.fill_(0.0)
    bits, bops = model.size("bits"), model.size("bops")
    gone = 9 * 10 * 10  # res3.conv1's weights; res3.conv2 loses all its inputs too
    assert float(bits.live_weights) == model.n0 - 2 * gone
    assert float(bops.macs) == model.macs0 - 2 * gone * 16
    # the same cut costs bops far less than bits: 4x4 maps are 1/64 of the prep's 32x32
    assert 3.0 - float(bops.q.detach()) < (3.0 - float(bits.q.detach())) / 4


def test_hold_range_takes_the_gradients_of_bits_and_range_and_keeps_the_range():
    torch.manual_seed(0)
    conv = QConv2d(3, 4, init_bits=3.0)
    with torch.no_grad():
        conv.b.copy_(torch.tensor([2.3, 3.7, 1.4, 4.2]))
    x = torch.randn(2, 3, 8, 8)
    target = torch.randn(2, 4, 8, 8)
    conv.hold_range = True
    F.mse_loss(conv(x), target).backward()
    # the same loss written explicitly in (b, r), e = r - b + 1
    b = conv.b.detach().clone().requires_grad_()
    r = (conv.e.detach() + conv.b.detach() - 1).requires_grad_()
    out = F.conv2d(x, quantize(conv.weight.detach(), b, r - b + 1), padding=1)
    F.mse_loss(out, target).backward()
    torch.testing.assert_close(conv.b.grad, b.grad)
    torch.testing.assert_close(conv.e.grad, r.grad)
    assert not torch.equal(conv.b.grad, conv.e.grad)  # b's gradient is not e's
    before = conv.b.detach().clone()
    range_before = conv.e.detach() + before
    with torch.no_grad():
        conv.b -= 0.5  # what the size term does to b
    follow_bits(conv, before)
    torch.testing.assert_close(conv.e.detach() + conv.b.detach(), range_before)


def test_step_optimizers_moves_every_hold_range_exponent_as_follow_bits_does():
    import copy

    from trainer.config import TrainConfig, resolve
    from trainer.network import model_for
    from trainer.train import make_optimizers, step_optimizers

    config = resolve(TrainConfig(preset="smoke", skip_one_bit=False, min_bits=0.0), has_gpu=False)
    torch.manual_seed(0)
    nets = [model_for(config)]
    nets.append(copy.deepcopy(nets[0]))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    e_start = nets[0].prep.conv.e.detach().clone()
    for i, net in enumerate(nets):
        opts = make_optimizers(net, config)
        (F.cross_entropy(net(x), y) + 0.1 * net.loss_size()).backward()
        if i == 0:
            step_optimizers(net, opts)  # the multi-tensor form
        else:
            layers = [layer for _, layer in net.quant_layers() if layer.hold_range]
            before = [layer.b.detach().clone() for layer in layers]
            for opt in opts:
                opt.step()
            for layer, b in zip(layers, before, strict=True):
                follow_bits(layer, b)
    pairs = list(zip(nets[0].quant_layers(), nets[1].quant_layers(), strict=True))
    assert all(a.hold_range for (_, a), _ in pairs)
    for (_, a), (_, b) in pairs:
        torch.testing.assert_close(a.e, b.e, rtol=0, atol=0)
        torch.testing.assert_close(a.b, b.b, rtol=0, atol=0)
    assert not torch.equal(nets[0].prep.conv.e.detach(), e_start)  # e moved


def test_snapping_bits_keeps_every_weight_and_stores_fewer_bits():
    torch.manual_seed(1)
    conv = QConv2d(16, 64, init_bits=4.0)
    with torch.no_grad():
        conv.b.copy_(torch.linspace(-0.5, 6.0, 64))
    before, bits_before = conv.qweight().detach(), torch.ceil(torch.relu(conv.b.detach()))
    conv.snap_bits()
    torch.testing.assert_close(conv.qweight().detach(), before, rtol=0, atol=0)
    bits_after = torch.ceil(torch.relu(conv.b.detach()))
    assert torch.all(bits_after <= bits_before) and bits_after.sum() < bits_before.sum()
    assert torch.equal(conv.b.detach() > 0, torch.linspace(-0.5, 6.0, 64) > 0)  # none die
    assert float(snapped_bits(torch.tensor([1.5]))) == 1.0  # {-1, 0}: the levels of 1 bit
    assert float(snapped_bits(torch.tensor([1.75]))) == 1.75  # {-2, .., 1}: needs 2 bits


def test_the_one_bit_zone_holds_one_sign_and_skipping_it_kills_just_those_channels():
    torch.manual_seed(2)
    conv = QConv2d(8, 40, init_bits=4.0)
    b = torch.linspace(-0.2, 3.0, 40)
    with torch.no_grad():
        conv.b.copy_(b)
    zone = (b > 0) & (b < 1 + math.log2(1.5))
    ints = conv.qints()
    assert set(ints[zone].unique().tolist()) <= {-1, 0}  # no positive level at all
    assert (ints[b > 1.6] > 0).any()  # above the zone both signs come back
    conv.skip_one_bit = True
    conv.skip_one_bit_zone()
    assert torch.equal(conv.b.detach()[zone], torch.zeros(int(zone.sum())))
    assert torch.equal(conv.b.detach()[~zone], b[~zone])
    assert not conv.qweight()[zone].any()  # those channels are dead: weights exactly 0


def test_min_bits_raises_the_floor_under_which_a_channel_dies():
    conv = QConv2d(8, 40, init_bits=4.0)
    b = torch.linspace(-0.2, 5.0, 40)
    with torch.no_grad():
        conv.b.copy_(b)
    conv.skip_one_bit, conv.min_bits = True, 3.0
    assert conv.dead_below() == 3.0
    conv.skip_one_bit_zone()
    dies = (b > 0) & (b < 3.0)
    assert dies.sum() > 10 and torch.equal(conv.b.detach()[dies], torch.zeros(int(dies.sum())))
    assert torch.equal(conv.b.detach()[~dies], b[~dies])  # >= 3 bits and the dead untouched
    conv.skip_one_bit, conv.min_bits = True, 1.0  # the one-bit zone's top still holds
    assert conv.dead_below() == 1 + math.log2(1.5)
    conv.skip_one_bit, conv.min_bits = False, 0.0
    assert conv.dead_below() == 0.0


def test_training_with_skip_one_bit_leaves_no_bit_depth_in_the_zone():
    from trainer.config import TrainConfig
    from trainer.train import train

    config = TrainConfig(preset="smoke", dataset="synthetic", synthetic_size=1024, epochs=2,
                         batch_size=128, width=0.25, gamma=2.0, lr_quant=0.2, init_bits=2.0,
                         cut_every=5, threads=1, skip_one_bit=True, min_bits=0.0)
    seen = []
    result = train(config, verbose=False, on_epoch=lambda m, state: seen.append(
        torch.cat([layer.b.detach().flatten() for _, layer in state.model.quant_layers()])))
    b = seen[-1]
    assert not ((b > 0) & (b < 1 + math.log2(1.5))).any()
    assert (b <= 0).any() and result["weights_kept_fraction"] < 1.0  # died, and were cut


def random_block(block: ConvBlock, gen: torch.Generator) -> None:
    """Running stats and affine BatchNorm parameters far from their init, fractional bit
    depths with some channels dead (b <= 0), exponents moved by up to half a step."""
    n = block.bn.num_features
    with torch.no_grad():
        block.bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
        block.bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        block.bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
        block.bn.bias.copy_(torch.randn(n, generator=gen) * 0.3)
        block.conv.b.copy_(torch.rand(n, generator=gen) * 6 - 1)
        block.conv.e.add_(torch.rand(n, generator=gen) - 0.5)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_integer_exponents_keep_every_integer_and_what_a_conv_block_computes():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    block = ConvBlock(6, 16, pool=True, quantized=True, init_bits=4.0)
    random_block(block, gen)
    block.eval()
    x = torch.randn(3, 6, 8, 8, generator=gen)
    ints, e, dead = block.conv.qints(), block.conv.e.detach().clone(), block.dead()
    bn = {k: getattr(block.bn, k).detach().clone() for k in ("weight", "running_mean")}
    constants = block.constant_outputs()
    with torch.no_grad():
        before = block(x)
    block.integer_exponents()
    n = torch.round(e)
    assert dead.any() and (~dead).any() and (e - n).abs().max() > 0.3
    assert torch.equal(block.conv.qints(), ints)
    assert torch.equal(block.conv.e.detach(), n)
    assert torch.equal(block.conv.qweight(), ints * torch.exp2(n).view(-1, 1, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-6)
    assert before.abs().max() > 0.1  # something to compare: not all zeros after the ReLU
    # a live channel's conv output shrinks by s = 2^(e - n), its mean and gain follow it
    s = torch.exp2(e - n)[~dead]
    torch.testing.assert_close(block.bn.running_mean[~dead], bn["running_mean"][~dead] / s)
    torch.testing.assert_close(block.bn.weight.detach()[~dead], bn["weight"][~dead] * s)
    # a dead one outputs 0 whatever e is: its BatchNorm stays, and so does its constant
    for k, v in bn.items():
        assert torch.equal(getattr(block.bn, k).detach()[dead], v[dead]), k
    for got, want in zip(block.constant_outputs(), constants, strict=True):
        torch.testing.assert_close(got, want)
    empty = ConvBlock(6, 0, pool=False, quantized=True, init_bits=4.0)  # every row cut
    empty.integer_exponents()
    assert empty.conv.e.numel() == 0


def test_integer_exponents_on_a_cut_resnet9_compute_the_same_and_leave_the_head():
    from trainer.surgery import cut_dead_channels

    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(6)
    model = ResNet9((4, 8, 8, 8), init_bits=4.0)
    for name, block in model.blocks():
        random_block(block, gen)
        with torch.no_grad():
            if name == "res1.conv2":  # dead and drained: cut whole, res1's branch goes
                block.conv.b.fill_(-1.0)
                block.bn.bias.fill_(-1.0)
                block.bn.running_mean.zero_()
            if name == "res3.conv1":  # dead, not drained: res3.conv2 sums constants
                block.conv.b.fill_(-1.0)
    with torch.no_grad():
        model.head.e.add_(0.3)
    assert cut_dead_channels(model, []) > 0
    assert model.res1.conv1 is None and model.res3.conv1.dead().all()
    model.eval()
    x = torch.randn(4, 3, 32, 32, generator=gen)
    ints = {name: layer.qints() for name, layer in model.quant_layers()}
    head_e = model.head.e.detach().clone()
    with torch.no_grad():
        before = model(x)
    for _, block in model.blocks():
        block.integer_exponents()
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    for name, layer in model.quant_layers():
        assert torch.equal(layer.qints(), ints[name]), name
    for name, block in model.blocks():
        assert torch.equal(block.conv.e, torch.round(block.conv.e)), name
    assert torch.equal(model.head.e, head_e)  # no BatchNorm to take a fraction


def test_setting_exponents_that_would_move_an_integer_raises():
    conv = QConv2d(3, 4, init_bits=4.0)
    with pytest.raises(RuntimeError, match="changed .* of 108 integers"):
        conv.set_exponents(torch.full((4,), 200.0), "a test")  # 2^200 overflows float32


def fading_resnet(seed: int) -> ResNet9:
    """A smoke-width ResNet-9 with ``fade`` on a 3-bit floor: bit depths spread over the
    fade zone (2, 3) and above, one channel per layer dead (b = 0), BatchNorms moved."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ResNet9((8, 16, 32, 64))
    for _, block in net.blocks():
        random_block(block, gen)
    for _, layer in net.quant_layers():
        layer.min_bits, layer.skip_one_bit, layer.fade = 3.0, True, True
        with torch.no_grad():
            layer.b.copy_(torch.rand(layer.b.shape, generator=gen) * 3 + 2.0)  # (2, 5)
            layer.b[0] = 0.0
    return net


def test_a_fading_channel_quantizes_at_the_floor_and_its_gate_is_what_b_learns_from():
    conv = QConv2d(8, 6, init_bits=4.0)
    conv.min_bits, conv.fade = 3.0, True
    with torch.no_grad():
        conv.b.copy_(torch.tensor([0.0, 2.0, 2.25, 2.75, 3.0, 4.5]))
        conv.e.sub_(2.0)  # every channel clips its largest weights: b gets the bounds' gradient
    assert conv.dead_below() == 2.0  # dies one bit below the floor
    torch.testing.assert_close(conv.gate(), torch.tensor([0.0, 0.0, 0.25, 0.75, 1.0, 1.0]))
    torch.testing.assert_close(conv.quant_bits(), torch.tensor([0.0, 3.0, 3.0, 3.0, 3.0, 4.5]))
    assert torch.equal(conv.qints()[2], integer_ints(conv, 3.0, 2))  # the floor's grid
    # the quantizer gives b no gradient in the zone; the gate does
    conv.qweight().pow(2).sum().backward()
    assert torch.all(conv.b.grad[1:4] == 0) and conv.b.grad[5] != 0
    conv.b.grad = None
    conv.gate().sum().backward()
    assert conv.b.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    # exact size: a fading channel stores the floor's bits
    from trainer.quant import layer_size
    bits = layer_size(conv, torch.ones(8, dtype=torch.bool))[1]
    assert float(bits) == 72 * (3 + 3 + 3 + 3 + 5)


def integer_ints(conv: QConv2d, bits: float, row: int) -> torch.Tensor:
    from trainer.quant import integer_weights
    return integer_weights(conv.weight[row:row + 1], torch.tensor([bits]), conv.e[row:row + 1])[0]


def test_a_fading_network_trains_in_one_pass_as_layer_by_layer_and_folds_exactly():
    from trainer.quant import fold_gates

    net = fading_resnet(7)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    flat = net(x)  # training mode: every layer quantized at once (trainer/flat.py)
    layers = [layer for _, layer in net.quant_layers()]
    assert all(layer.qweight_now is None for layer in layers)
    by_layer = net.head(torch.amax(net.res3(net.layer3(net.layer2(net.res1(net.layer1(
        net.prep(x)))))), dim=(2, 3))) * 0.125
    torch.testing.assert_close(flat, by_layer, rtol=1e-5, atol=1e-7)
    flat.sum().backward()
    zone = torch.cat([(layer.b > 2) & (layer.b < 3) for layer in layers])
    grads = torch.cat([layer.b.grad for layer in layers])
    assert zone.sum() > 50 and (grads[zone] != 0).float().mean() > 0.8  # through the gates
    net.eval()
    with torch.no_grad():
        before = net(x)
        fold_gates(net)
        gates = torch.cat([layer.gate() for layer in layers])
        assert set(gates.unique().tolist()) == {0.0, 1.0}  # every live gate 1: a plain net
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-7)
        for layer in layers:  # and it stays that net with the gates off (what exports see)
            layer.fade = False
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-7)


def test_with_fade_a_dead_channel_is_silent_at_once_and_the_main_path_keeps_one_at_the_floor():
    from trainer.quant import keep_one_channel, skip_zones
    from trainer.surgery import cuttable

    net = fading_resnet(3)
    block = net.layer2
    assert cuttable(block)[0]  # b = 0: gate 0, so its BatchNorm constant emits nothing
    assert float(net.dead_penalty().detach()) == 0.0  # nothing left to drain
    with torch.no_grad():
        block.conv.b.copy_(torch.linspace(1.5, 2.9, block.conv.b.numel()))
    skip_zones([block.conv])
    b = block.conv.b.detach()
    assert torch.all(b[torch.linspace(1.5, 2.9, b.numel()) <= 2.0] == 0)
    assert torch.all(b[torch.linspace(1.5, 2.9, b.numel()) > 2.0] > 2.0)  # still fading
    with torch.no_grad():
        block.conv.b.zero_()
    keep_one_channel([block.conv])
    assert sorted(block.conv.b.tolist())[-2:] == [0.0, 3.0]  # back at the floor: gate 1


def test_a_ration_holds_the_highest_falling_channels_at_the_floor_with_their_range():
    """``ration_deaths`` then ``skip_zones`` on a 3-bit floor: two channels stand at or above
    it, three fell below it this step, one was dead. A ration of 4 live channels lifts the
    two highest fallers back to 3 bits, e down by as much (the clipping range e + b - 1
    stays) and the lowest dies; a ration of 0 lets all three die."""
    from trainer.quant import ration_deaths, skip_zones

    for min_live, after in ((4, [5.0, 3.0, 0.0, 3.0, 0.0, 3.2]),
                            (0, [5.0, 0.0, 0.0, 0.0, 0.0, 3.2])):
        torch.manual_seed(0)
        layer = QConv2d(4, 6)
        layer.min_bits, layer.skip_one_bit, layer.hold_range = 3.0, True, True
        with torch.no_grad():
            layer.b.copy_(torch.tensor([5.0, 2.9, 2.5, 2.95, 0.0, 3.2]))
        layer.min_live = torch.tensor(min_live)
        e0, range0 = layer.e.detach().clone(), (layer.e + layer.b).detach().clone()
        ration_deaths([layer])
        skip_zones([layer])
        assert layer.b.tolist() == pytest.approx(after)
        lifted = torch.tensor([b == 3.0 for b in after])
        torch.testing.assert_close((layer.e + layer.b).detach()[lifted], range0[lifted])
        torch.testing.assert_close(layer.e.detach()[~lifted], e0[~lifted])


def test_rations_are_set_per_epoch_from_each_convs_live_channels():
    """``set_rations``: floor((1 - ration) * live) per quantized conv; ration 1 clears them."""
    from trainer.quant import set_rations

    model = ResNet9((16, 32, 64, 128), quantized=True)
    with torch.no_grad():
        model.layer1.conv.b[:10] = 0.0  # 22 of 32 live
    set_rations(model, 0.5)
    assert int(model.layer1.conv.min_live) == 11 and int(model.prep.conv.min_live) == 8
    assert int(model.res3.conv2.conv.min_live) == 64
    set_rations(model, 1.0)
    assert all(block.conv.min_live is None for _, block in model.blocks())
