"""Cutting dead channels: the output does not change, the size drops, optimizer state follows."""

import copy

import pytest
import torch
import torch.nn.functional as F

from trainer.model import ConvBlock, ResNet9
from trainer.surgery import aligned, cut_dead_channels

WIDTHS = (6, 8, 10, 12)


def randomize(model: ResNet9, seed: int) -> None:
    """Give BatchNorm non-trivial statistics and affine parameters, so eval mode matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, block in model.blocks():
            n = block.bn.num_features
            block.bn.running_mean.copy_(torch.randn(n, generator=g))
            block.bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            block.bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            block.bn.bias.copy_(torch.randn(n, generator=g) * 0.5)


def kill(block: ConvBlock, channels: list[int], drained: bool = True) -> None:
    """Make ``channels`` 0-bit; when ``drained``, also make their constant output zero."""
    with torch.no_grad():
        idx = torch.tensor(channels, dtype=torch.long)
        block.conv.b[idx] = -0.25
        if drained:
            bn = block.bn
            shift = bn.running_mean[idx] * bn.weight[idx] / torch.sqrt(bn.running_var[idx] + bn.eps)
            bn.bias[idx] = torch.minimum(shift, torch.zeros_like(shift)) - 0.1


def outputs(model: ResNet9, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eval-mode output, train-mode output) without touching the model's running stats."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        return m.eval()(x), m.train()(x)


def random_dead(model: ResNet9, seed: int, fraction: float) -> int:
    g = torch.Generator().manual_seed(seed)
    n_dead = 0
    for _, block in model.blocks():
        n = block.conv.weight.shape[0]
        pick = (torch.rand(n, generator=g) < fraction).nonzero().flatten().tolist()
        kill(block, pick)
        n_dead += len(pick)
    return n_dead


@pytest.mark.parametrize("seed", range(6))
def test_cutting_random_dead_channels_leaves_the_output_unchanged(seed):
    torch.manual_seed(seed)
    model = ResNet9(WIDTHS).double()
    randomize(model, seed)
    n_dead = random_dead(model.float(), seed, fraction=0.4)
    model = model.double()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    before_eval, before_train = outputs(model, x)
    size_before = model.size()
    n_cut = cut_dead_channels(model, [])
    assert n_cut >= n_dead > 0
    after_eval, after_train = outputs(model, x)
    torch.testing.assert_close(after_eval, before_eval, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(after_train, before_train, rtol=1e-9, atol=1e-12)
    # the exact size and weight count only ever shrink (a removed branch takes its weights)
    size_after = model.size()
    assert float(size_after.bits) <= float(size_before.bits)
    assert float(size_after.live_weights) <= float(size_before.live_weights)
    physical = sum(m.weight.numel() for _, m in model.quant_layers())
    assert physical < model.n0


def test_aligned_puts_back_the_fewest_dead_channels_for_a_multiple():
    cut = torch.zeros(20, dtype=torch.bool)
    cut[[1, 4, 5, 9, 17]] = True  # 15 left: one put back (the lowest index) leaves 16
    mask, n = aligned(cut, 5, 8)
    assert mask.nonzero().flatten().tolist() == [4, 5, 9, 17] and n == 4
    mask, n = aligned(cut, 5, 1)
    assert mask.equal(cut) and n == 5
    mask, n = aligned(cut, 5, 32)
    assert not mask.any() and n == 0  # 32 > 20: keep all it had
    every = torch.ones(20, dtype=torch.bool)
    mask, n = aligned(every, 20, 8)
    assert mask.all() and n == 20  # none left is a multiple too


def test_cuts_with_align_keep_multiples_and_the_output():
    torch.manual_seed(3)
    model = ResNet9((16, 24, 32, 40)).double()
    randomize(model, 3)
    random_dead(model.float(), 3, fraction=0.3)
    model = model.double()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    before = outputs(model, x)
    initial = {n: b.conv.weight.shape[0] for n, b in model.blocks()}
    assert cut_dead_channels(model, [], align=8) > 0
    rows = {n: b.conv.weight.shape[0] for n, b in model.blocks()}
    assert all(r % 8 == 0 or r == initial[n] for n, r in rows.items()), rows
    assert any(r < initial[n] for n, r in rows.items())
    for got, want in zip(outputs(model, x), before, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    kept_dead = sum(int(b.dead().sum()) for _, b in model.blocks())
    assert kept_dead > 0  # some dead channels wait for the next cut
    assert cut_dead_channels(model, []) == kept_dead  # unaligned, they go


def test_trunk_and_branch_keep_their_own_channels_and_the_sum_their_union():
    torch.manual_seed(0)
    model = ResNet9(WIDTHS).double()
    randomize(model, 0)
    kill(model.layer1, [0, 1, 2])  # shortcut loses 0, 1, 2
    kill(model.res1.conv2, [2, 3])  # branch loses 2, 3: only 2 is gone from the sum
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    before = outputs(model, x)
    cut_dead_channels(model, [])
    assert model.layer1.conv.out_idx.tolist() == [3, 4, 5, 6, 7]
    assert model.res1.conv2.conv.out_idx.tolist() == [0, 1, 4, 5, 6, 7]
    assert model.res1.out_idx.tolist() == [0, 1, 3, 4, 5, 6, 7]
    assert model.layer2.conv.weight.shape[1] == 7
    assert model.res1.conv1.conv.weight.shape[1] == 5
    for a, b in zip(outputs(model, x), before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_branch_whose_channels_all_die_disappears_and_the_block_is_the_identity():
    torch.manual_seed(1)
    model = ResNet9(WIDTHS).double()
    randomize(model, 1)
    kill(model.res3.conv2, list(range(WIDTHS[3])))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    before = outputs(model, x)
    weights_before = float(model.size().live_weights)
    cut_dead_channels(model, [])
    assert model.res3.conv1 is None and model.res3.conv2 is None
    # conv2's 0-bit rows were already out of the count; the cut takes conv1's live weights,
    # which fed nothing but conv2
    assert weights_before - float(model.size().live_weights) == 9 * WIDTHS[3] ** 2
    for a, b in zip(outputs(model, x), before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_branch_conv_left_without_inputs_still_emits_its_constants_until_drained():
    # res3.conv1 dies whole and is cut; res3.conv2 then has no input columns, but its
    # BatchNorm biases still emit constants, so its rows stay until they drain. Its forward
    # must give those constants (F.conv2d over 0 input channels returns 0 channels).
    torch.manual_seed(3)
    model = ResNet9(WIDTHS).double()
    randomize(model, 3)
    kill(model.res3.conv1, list(range(WIDTHS[3])))
    with torch.no_grad():
        model.res3.conv2.bn.bias.copy_(torch.linspace(0.2, 0.9, WIDTHS[3]))  # not drained
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    before = outputs(model, x)
    cut_dead_channels(model, [])
    assert model.res3.conv1.conv.weight.shape[0] == 0
    assert model.res3.conv2.conv.weight.shape == (WIDTHS[3], 0, 3, 3)
    for a, b in zip(outputs(model, x), before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    F.cross_entropy(model.train()(x), torch.zeros(4, dtype=torch.long)).backward()
    assert model.res3.conv2.bn.bias.grad.abs().sum() > 0  # the drain still has a gradient


def test_a_dead_channel_with_a_nonzero_constant_output_is_not_cut():
    torch.manual_seed(2)
    model = ResNet9(WIDTHS)
    randomize(model, 2)
    kill(model.layer2, [1], drained=False)
    with torch.no_grad():
        model.layer2.bn.bias[1] = 0.7  # emits relu(0.7) everywhere in train mode
    assert cut_dead_channels(model, []) == 0
    assert model.layer2.conv.weight.shape[0] == WIDTHS[2]
    assert model.dead_penalty() > 0  # ... and the L1 term pushes on it


def make_optimizers(model):
    quant = [p for n, p in model.named_parameters() if n.endswith((".b", ".e"))]
    ids = {id(p) for p in quant}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [torch.optim.SGD(rest, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
            torch.optim.Adam(quant, lr=0.01)]


def step(model, opts, x, y, gamma=0.1):
    loss = F.cross_entropy(model(x), y) + gamma * model.size().q + 0.05 * model.dead_penalty()
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()


def test_optimizer_state_is_sliced_and_the_next_step_matches_the_uncut_network():
    torch.manual_seed(3)
    model = ResNet9(WIDTHS).double()
    randomize(model, 3)
    opts = make_optimizers(model)
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    for _ in range(3):  # momentum and Adam moments become non-trivial
        step(model, opts, x, y)
    random_dead(model, 3, fraction=0.35)
    kill(model.res1.conv2, list(range(WIDTHS[1])))  # and one whole branch
    uncut, uncut_opts = copy.deepcopy((model, opts))
    assert cut_dead_channels(model, opts) > 0
    params = {id(p) for p in model.parameters()}
    for opt in opts:
        for group in opt.param_groups:
            assert all(id(p) in params for p in group["params"])
        assert all(id(p) in params for p in opt.state)
        for p, state in opt.state.items():
            for k, v in state.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    assert v.shape == p.shape, k
    assert sum(len(g["params"]) for o in opts for g in o.param_groups) == len(params)

    step(model, opts, x, y)
    step(uncut, uncut_opts, x, y)
    big = dict(uncut.quant_layers())
    for name, layer in model.quant_layers():
        rows, cols = layer.out_idx, layer.in_idx
        ref = big[name]
        torch.testing.assert_close(layer.weight, ref.weight[rows][:, cols], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(layer.b, ref.b[rows], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(layer.e, ref.e[rows], rtol=1e-10, atol=1e-13)
    blocks = dict(uncut.blocks())
    for name, block in model.blocks():
        rows = block.conv.out_idx
        for attr in ("weight", "bias", "running_mean", "running_var"):
            ref = getattr(blocks[name].bn, attr)[rows]
            torch.testing.assert_close(getattr(block.bn, attr), ref, rtol=1e-10, atol=1e-13)


def test_a_channels_last_network_stays_channels_last_through_a_cut():
    torch.manual_seed(5)
    model = ResNet9(WIDTHS).to(memory_format=torch.channels_last)
    randomize(model, 5)
    opts = make_optimizers(model)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    step(model, opts, x, y)
    random_dead(model, 5, fraction=0.4)
    assert cut_dead_channels(model, opts) > 0
    cl = torch.channels_last
    for name, layer in model.quant_layers():
        if name != "head" and layer.weight.numel():
            assert layer.weight.is_contiguous(memory_format=cl), name
            momentum = opts[0].state[layer.weight]["momentum_buffer"]
            assert momentum.is_contiguous(memory_format=cl), name
    # the activations too: an unaligned residual sum hands the next conv channels_last
    assert not model.res1.aligned and not model.res3.aligned
    h = model.layer1(model.prep(x))
    r1 = model.res1(h)
    r3 = model.res3(model.layer3(model.layer2(r1)))
    for name, act in (("res1", r1), ("res3", r3)):
        assert act.shape[1] > 1 and act.is_contiguous(memory_format=cl), name
    step(model, opts, x, y)  # and training goes on


def test_a_cut_network_and_its_dense_twin_give_the_same_outputs_and_gradients():
    """The twin (``dense_twin``: every residual sum a plain add, on the union's widths) is
    what a cut network's step time is measured against; given the same weights it computes
    the same logits, loss and gradients of every weight the two share."""
    from trainer.surgery import dense_twin

    torch.manual_seed(4)
    model = ResNet9(WIDTHS).double().to(memory_format=torch.channels_last)
    randomize(model, 4)
    kill(model.layer1, [0, 1, 2])
    kill(model.res1.conv2, [2, 3, 5])
    kill(model.layer3, [1, 4, 7, 9])
    kill(model.res3.conv2, [0, 4, 11])
    cut_dead_channels(model, [])
    assert not model.res1.aligned and not model.res3.aligned
    twin = dense_twin(model)
    assert twin.res1.aligned and twin.res3.aligned
    assert twin.layer1.conv.weight.shape[0] == model.res1.out_idx.numel()
    assert twin.res3.conv2.conv.weight.shape[0] == model.res3.out_idx.numel()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,))
    for a, b in zip(outputs(model, x), outputs(twin, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    losses = []
    for net in (model, twin):
        net.train().zero_grad()
        loss = F.cross_entropy(net(x), y) + 0.1 * net.size().q + 0.05 * net.dead_penalty()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    close = dict(rtol=1e-10, atol=1e-12)
    for (name, layer), (_, wide) in zip(model.quant_layers(), twin.quant_layers(), strict=True):
        rows = torch.searchsorted(wide.out_idx, layer.out_idx)
        cols = torch.searchsorted(wide.in_idx, layer.in_idx)
        torch.testing.assert_close(layer.weight.grad, wide.weight.grad[rows][:, cols], **close,
                                   msg=name)
        torch.testing.assert_close(layer.b.grad, wide.b.grad[rows], **close, msg=name)
        torch.testing.assert_close(layer.e.grad, wide.e.grad[rows], **close, msg=name)
    for (name, block), (_, wide) in zip(model.blocks(), twin.blocks(), strict=True):
        rows = torch.searchsorted(wide.conv.out_idx, block.conv.out_idx)
        for p in ("weight", "bias"):
            torch.testing.assert_close(getattr(block.bn, p).grad,
                                       getattr(wide.bn, p).grad[rows], **close, msg=name)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_a_sum_on_a_union_is_exact_and_keeps_its_layout(layout):
    """``UnionSum`` (the (N*H*W, C) rows of a channels_last map; dim 1 otherwise) gives
    0 + x + y at each union position and hands back exactly the gradient's own channels,
    bit for bit, in the layout of what came in."""
    from trainer.model import UnionSum

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 4, generator=g).contiguous(memory_format=layout).requires_grad_()
    y = torch.randn(3, 3, 4, 4, generator=g).contiguous(memory_format=layout).requires_grad_()
    pos_x, pos_b = torch.tensor([0, 1, 3, 4, 6]), torch.tensor([1, 2, 6])
    out = UnionSum.apply(x, y, pos_x, pos_b, 7)
    want = torch.zeros(3, 7, 4, 4)
    want[:, pos_x] += x.detach()
    want[:, pos_b] += y.detach()
    assert torch.equal(out, want) and out.is_contiguous(memory_format=layout)
    grad = torch.randn(3, 7, 4, 4, generator=g).contiguous(memory_format=layout)
    out.backward(grad)
    assert torch.equal(x.grad, grad[:, pos_x]) and torch.equal(y.grad, grad[:, pos_b])
    assert x.grad.is_contiguous(memory_format=layout)


def test_the_elementwise_benchmark_times_each_union_every_way_and_finds_them_equal():
    """benchmarks.elementwise's unions: the sum as it was, as it is and in block layouts,
    equal bit for bit (outputs, and the two index ways' gradients)."""
    from benchmarks.elementwise import time_unions

    torch.manual_seed(5)
    model = ResNet9(WIDTHS).to(memory_format=torch.channels_last)
    kill(model.layer1, [0, 1, 2])
    kill(model.res1.conv2, [2, 3, 5])
    kill(model.layer3, [1, 4, 7, 9])
    kill(model.res3.conv2, [0, 4, 11])
    cut_dead_channels(model, [])
    rows = time_unions(model, batch=4, reps=1)
    assert [r["residual"] for r in rows] == ["res1", "res3"]
    for r in rows:
        assert r["exact"] and r["union"] == getattr(model, r["residual"]).out_idx.numel()
        assert all(r[f"{k}_ms"] > 0 for k in ("before", "now", "slice", "cat"))
