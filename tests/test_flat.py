"""Every layer's quantizer in one pass (trainer/flat.py) against each layer's own."""

import copy

import torch
import torch.nn.functional as F

from trainer.flat import make_plan, quantize_layers
from trainer.model import ResNet9
from trainer.quant import quantize_fused
from trainer.surgery import cut_dead_channels


def mixed_resnet(seed: int) -> ResNet9:
    """A tiny ResNet-9 with dead, clipped and unclipped channels, channels_last convs."""
    torch.manual_seed(seed)
    model = ResNet9((4, 6, 8, 10), init_bits=4.0).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _, layer in model.quant_layers():
            o = layer.b.numel()
            layer.b.copy_(torch.linspace(-0.5, 6.0, o)[torch.randperm(o)])
            layer.e.add_(torch.randn(o))  # clipping at some channels, not at others
    return model


def test_one_pass_gives_each_layers_weights_and_gradients():
    for hold_range in (False, True):
        model = mixed_resnet(0)
        layers = [m for _, m in model.quant_layers()]
        for m in layers:
            m.hold_range = hold_range
        targets = [torch.randn_like(m.weight) for m in layers]
        results = []
        for together in (False, True):
            if together:
                qs = quantize_layers(layers, make_plan(layers))
            else:
                qs = [quantize_fused(m.weight, m.b, m.e, hold_range) for m in layers]
            sum(((q - t) ** 2).sum() for q, t in zip(qs, targets, strict=True)).backward()
            results.append(([q.detach() for q in qs],
                            [(m.weight.grad, m.b.grad, m.e.grad) for m in layers]))
            for m in layers:
                m.weight.grad = m.b.grad = m.e.grad = None
        (ref, ref_grads), (out, out_grads) = results
        for m, r, o in zip(layers, ref, out, strict=True):
            # the same up to the last bit of 2^e (exp2 vectorised or not, on a CPU): no
            # integer moved, which would move a weight by a whole step, 1e-2 or more
            torch.testing.assert_close(o, r, rtol=1e-6, atol=0)
            assert o.stride() == m.weight.stride()  # channels_last stays channels_last
        for rg, og in zip(ref_grads, out_grads, strict=True):
            for name, r, o in zip("wbe", rg, og, strict=True):
                assert o.stride() == r.stride(), name
                torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6)
        assert sum(int((g[1] != 0).sum()) for g in ref_grads) > 20  # clipping reached b


def test_the_network_quantizes_in_one_pass_and_computes_what_its_layers_compute():
    model = mixed_resnet(1)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model.quantize_at_once = lambda: []  # each layer's own quantizer (an instance override)
    ref = model(x)
    F.cross_entropy(ref, torch.arange(4)).backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    del model.quantize_at_once
    out = model(x)
    F.cross_entropy(out, torch.arange(4)).backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for p, r in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-6)
    assert all(m.qweight_now is None for _, m in model.quant_layers())  # nothing left over


def test_after_a_cut_the_plan_follows_the_new_shapes():
    model = mixed_resnet(2)
    before = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model(x)
    plan = model._plan
    with torch.no_grad():  # drain the dead channels' BatchNorm so that they can be cut
        for _, block in model.blocks():
            block.bn.bias.masked_fill_(block.dead(), -1.0)
    assert cut_dead_channels(model, [], 1)
    out = model(x)
    assert model._plan is not plan and model._plan.numels != plan.numels
    model.quantize_at_once = lambda: []
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
    assert sum(plan.numels) > sum(model._plan.numels)
    assert before.prep.conv.weight.shape != model.prep.conv.weight.shape


def test_without_gradients_each_layer_quantizes_itself_as_an_export_does():
    model = mixed_resnet(3).eval()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
        model.quantize_at_once = lambda: []
        ref = model(x)
    assert torch.equal(out, ref) and model._plan is None  # the one-pass plan never made


def test_bf16_autocast_leaves_the_one_pass_quantizer_in_float32():
    # the trainer autocasts a GPU step to bfloat16; the quantizer's rounding must not move
    model = mixed_resnet(4)
    layers = [m for _, m in model.quant_layers()]
    plain = quantize_layers(layers, make_plan(layers))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = quantize_layers(layers, make_plan(layers))
    for p, c in zip(plain, cast, strict=True):
        assert c.dtype == torch.float32 and torch.equal(c, p)


def test_the_one_bit_zone_of_every_layer_at_once_is_each_layers_own():
    from trainer.quant import skip_zones

    for floor in (0.0, 3.0):  # the one-bit zone alone, and raised by min_bits
        nets = [mixed_resnet(5), mixed_resnet(5)]
        for net in nets:
            for _, layer in net.quant_layers():
                layer.skip_one_bit, layer.min_bits = True, floor
        layers = [[m for _, m in net.quant_layers()] for net in nets]
        below = layers[0][0].dead_below()
        b = torch.cat([m.b.detach() for m in layers[0]])
        assert ((b > 0) & (b < below)).sum() >= 3  # channels in the zone, to be sent to 0
        skip_zones(layers[0])  # every layer in a few operations
        for layer in layers[1]:
            layer.skip_one_bit_zone()
        for a, c in zip(*layers, strict=True):
            assert torch.equal(a.b, c.b)
        b = torch.cat([m.b.detach() for m in layers[0]])
        assert not ((b > 0) & (b < below)).any()
