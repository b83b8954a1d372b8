"""Training end to end on small data: compression happens, checkpoints resume, real data learns."""

import copy

import pytest
import torch

from trainer.config import TrainConfig, resolve
from trainer.network import load_model, save_model
from trainer.train import train

# A network that compresses within seconds: 2-bit start, fast bit-depth learning rate (with
# hold-range, the default, b falls more slowly than with plain (b, e): gamma 2, lr_quant 0.2).
# Channels cross the one-bit zone here (skip_one_bit or min_bits would cut nearly all of them
# at once): these tests are about cutting and resuming, not the recipe.
STRONG = TrainConfig(preset="smoke", dataset="synthetic", gamma=2.0, epochs=6, batch_size=128,
                     width=0.25, lr_quant=0.2, init_bits=2.0, synthetic_size=2048, cut_every=5,
                     skip_one_bit=False, min_bits=0.0)


@pytest.fixture(scope="session")  # built once per process, however its tests interleave
def strong():
    """One STRONG run, shared: ``(result, each epoch's state_dict, the last TrainState)``."""
    states, last = [], {}

    def keep(metrics, state):
        states.append(copy.deepcopy(state.state_dict()))
        last["state"] = state

    result = train(STRONG, on_epoch=keep, verbose=False)
    return result, states, last["state"]


@pytest.mark.xdist_group("strong")  # one process builds the fixture
def test_a_strong_gamma_shrinks_the_network_and_its_work(tmp_path, strong):
    result, states, _ = strong
    hist = result["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 7))
    assert result["weights_kept_fraction"] < 0.5
    assert result["bits_fraction"] < hist[0]["bits_fraction"]
    # channels were physically cut, not just masked
    model = load_model_from(states[-1], tmp_path)
    present = sum(layer.weight.numel() for _, layer in model.quant_layers())
    assert present < 0.6 * model.n0
    # the work of a forward pass shrinks with it (its time: benchmarks.shrink, not a test)
    assert hist[-1]["macs_kept_fraction"] < hist[0]["macs_kept_fraction"] <= 1.0
    assert result["test_accuracy"] > 0.3  # still far above chance (0.1)


@pytest.mark.parametrize("pool", [True, False])
def test_a_conv_block_gives_relu_then_pool_bit_for_bit(pool):
    """ConvBlock pools before its ReLU, both in place (a cheaper order, benchmarks.elementwise);
    the values and every gradient must be those of BatchNorm -> ReLU -> pool."""
    import torch.nn.functional as F

    from trainer.model import ConvBlock

    torch.manual_seed(0)
    block = ConvBlock(5, 7, pool=pool, quantized=True, init_bits=4.0)
    with torch.no_grad():
        block.bn.bias.normal_()  # some channels below zero before the ReLU, some above
    x = torch.randn(6, 5, 8, 8).contiguous(memory_format=torch.channels_last)

    def run(forward):
        block.zero_grad(set_to_none=True)
        y = forward(x)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        return [y.detach()] + [p.grad.clone() for p in block.parameters()]

    def relu_then_pool(x):
        y = F.relu(block.bn(block.conv(x)))
        return F.max_pool2d(y, 2) if pool else y

    now, reference = run(block), run(relu_then_pool)
    assert (now[0] == 0).any() and (now[0] > 0).any()
    assert all(torch.equal(a, b) for a, b in zip(now, reference, strict=True))


@pytest.mark.xdist_group("strong")  # one process builds the fixture
def test_a_result_holds_no_torch_objects(strong):
    """A sweep's driver unpickles each trial's result: a torch object in it (once the
    TorchVersion of ``torch.__version__``) would import torch into the driver."""
    result, _, _ = strong

    def walk(value, where):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            assert not type(value).__module__.startswith("torch"), (where, type(value))

    walk(result, "result")


def load_model_from(state: dict, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    return load_model(path)


@pytest.mark.xdist_group("strong")  # one process builds the fixture
def test_a_saved_shrunken_network_reloads_with_the_same_outputs(tmp_path, strong):
    _, _, state = strong
    physical = sum(layer.weight.numel() for _, layer in state.model.quant_layers())
    assert physical < state.model.n0  # channels were cut before saving
    save_model(tmp_path / "model.pt", state)
    reloaded = load_model(tmp_path / "model.pt")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), state.model.eval()(x))


@pytest.mark.xdist_group("strong")  # one process builds the fixture
def test_resuming_from_a_checkpoint_continues_exactly(strong):
    """The strong run's last two epochs again, from its checkpoint of epoch 4, when its
    network is already cut: the same losses, accuracy and size to the last bit."""
    result, states, _ = strong
    assert result["history"][3]["weights_kept_fraction"] < 1.0  # cut before the checkpoint
    resumed = train(STRONG, resume=states[3], verbose=False)
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 7))
    a, b = result["history"][-1], resumed["history"][-1]
    for key in ("train_loss", "test_accuracy", "size_bits", "weights_kept_fraction"):
        assert a[key] == b[key], key


def test_float_baseline_and_floor_report_full_size():
    base = train(TrainConfig(preset="smoke", dataset="synthetic", kind="float-baseline",
                             epochs=1), verbose=False)
    assert base["bits_fraction"] == 1.0 and base["weights_kept_fraction"] == 1.0
    assert base["mean_bits"] == 32.0
    floor = train(TrainConfig(preset="smoke", dataset="synthetic", kind="floor", epochs=1),
                  verbose=False)
    convs = [row for row in floor["layers"] if row["layer"] != "head"]
    assert all(row["out_channels_initial"] == 1 for row in convs)


def test_a_short_smoke_run_on_real_cifar10_beats_chance(cifar_dir):
    result = train(TrainConfig(preset="smoke", data_dir=str(cifar_dir), gamma=0.01),
                   verbose=False)
    assert result["n_train"] == 4096
    assert result["test_accuracy"] > 0.2  # chance is 0.1


def test_reference_kinds_are_sized_against_the_full_network():
    smoke = dict(preset="smoke", dataset="synthetic", epochs=1, gamma=0.0)
    narrow = train(TrainConfig(kind="narrow-float", width=0.0625, **smoke), verbose=False)
    assert narrow["full_width"] == 0.125  # the smoke preset's width
    assert 0.2 < narrow["weights_kept_fraction"] < 0.3  # half the width: ~1/4 of the weights
    assert narrow["bits_fraction"] == narrow["weights_kept_fraction"]
    fixed = train(TrainConfig(kind="fixed-bits", fixed_bits=3.0, **smoke), verbose=False)
    assert fixed["mean_bits"] == 3.0 and fixed["weights_kept_fraction"] == 1.0
    assert fixed["bits_fraction"] == 3.0 / 32


def test_fixed_bits_hold_their_bit_depth_while_exponents_learn():
    captured = {}
    train(TrainConfig(preset="smoke", dataset="synthetic", kind="fixed-bits", fixed_bits=2.0,
                      epochs=1), on_epoch=lambda m, s: captured.update(state=s), verbose=False)
    layers = [layer for _, layer in captured["state"].model.quant_layers()]
    assert all(torch.equal(layer.b, torch.full_like(layer.b, 2.0)) for layer in layers)
    # integer_exponents (the default) ends every conv with integer e: the head keeps its own
    assert all(torch.equal(layer.e, torch.round(layer.e)) for layer in layers[:-1])
    fresh = TrainConfig(preset="smoke", dataset="synthetic", kind="fixed-bits", fixed_bits=2.0)
    from trainer.network import model_for

    torch.manual_seed(0)
    start = model_for(resolve(fresh))
    pairs = zip(start.quant_layers(), layers, strict=True)
    assert any(not torch.equal(a.e, b.e) for (_, a), b in pairs)


def test_gamma_ramps_up_linearly_over_its_fraction_of_training():
    from trainer.train import gamma_at

    config = TrainConfig(gamma=0.4, gamma_ramp=0.5)
    assert [gamma_at(s, 100, config) for s in (0, 25, 50, 99)] == [0.0, 0.2, 0.4, 0.4]
    assert gamma_at(0, 100, config.replace(gamma_ramp=0.0)) == 0.4
    # The cpu preset ramps over the first half (docs/ablation.md); the others do not, and a
    # value given wins over the preset's.
    assert resolve(TrainConfig(preset="cpu")).gamma_ramp == 0.5
    assert {resolve(TrainConfig(preset=p)).gamma_ramp for p in ("paper", "smoke", "demo")} == {0}
    assert resolve(TrainConfig(preset="cpu", gamma_ramp=0.0)).gamma_ramp == 0.0


def test_a_main_path_layer_keeps_a_channel_and_the_guard_is_idle_until_then(monkeypatch):
    """γ 20 would cut every channel of a main-path layer (the network then answers a
    constant); each keeps at least one. Where no layer is near that, the guard changes
    nothing: a run without it gives the same history, bit for bit."""
    import trainer.quant as T

    brutal = STRONG.replace(gamma=20.0, epochs=3, skip_one_bit=True, min_bits=3.0,
                            init_bits=4.0, synthetic_size=512)
    result = train(brutal, verbose=False)
    kept = {row["layer"]: row["out_channels_final"] for row in result["layers"]}
    assert min(kept[name] for name in ("prep", "layer1", "layer2", "layer3")) >= 1
    off = STRONG.replace(epochs=2, synthetic_size=512)
    with_guard = train(off, verbose=False)["history"]
    monkeypatch.setattr(T, "keep_one_channel", lambda layers: None)
    without = train(off, verbose=False)["history"]
    strip = [{k: v for k, v in h.items() if "time" not in k} for h in with_guard]
    assert strip == [{k: v for k, v in h.items() if "time" not in k} for h in without]
    guardless = train(brutal, verbose=False)
    dead = {row["layer"]: row["out_channels_final"] for row in guardless["layers"]}
    assert min(dead[name] for name in ("prep", "layer1", "layer2", "layer3")) == 0


def test_the_demo_presets_gamma_range_spans_the_trade_off():
    """The first look (README): at the two ends of the demo preset's default γ range, on the
    synthetic set, accuracy differs by at least 10 points and size by at least a decade."""
    from sweep.config import gamma_range

    low, high = (train(TrainConfig(preset="demo", dataset="synthetic", gamma=g, threads=1),
                       verbose=False) for g in gamma_range("demo"))
    assert low["test_accuracy"] - high["test_accuracy"] >= 0.10
    assert low["bits_fraction"] >= 10 * high["bits_fraction"]


def test_the_same_seed_gives_the_same_trial_bit_for_bit():
    """A short strong-γ trial (both quantizer rules, the cut checks, the last step's
    rewrites), twice: the same weights and layout to the last bit, the same metrics but for
    the clocks (what a refactoring of the trainer must keep; the comparison with the tree
    before one: docs/method.md, "Tests")."""
    short = STRONG.replace(epochs=2, synthetic_size=512)  # 4 steps an epoch
    def run() -> tuple[dict, dict]:
        final = {}
        result = train(short, on_epoch=lambda m, s: final.update(
            state=copy.deepcopy(s.state_dict())), verbose=False)
        return result, final["state"]

    (a, state_a), (b, state_b) = run(), run()
    assert state_a["layout"] == state_b["layout"]
    assert state_a["model"].keys() == state_b["model"].keys()
    for name, tensor in state_a["model"].items():
        assert torch.equal(tensor, state_b["model"][name]), name
    clock = ("train_time_s", "epoch_time_s", "time_total_s")
    def drop(r):
        return {k: v for k, v in r.items() if k not in clock and k != "history"}
    assert drop(a) == drop(b)
    assert [drop(h) for h in a["history"]] == [drop(h) for h in b["history"]]


def test_the_start_line_says_when_gamma_is_ramped():
    from types import SimpleNamespace

    from trainer.network import model_for
    from trainer.train import describe

    data = SimpleNamespace(n_train=512, y_test=torch.zeros(256))
    lines = {p: describe(c, model_for(c), data) for p, c in
             ((p, resolve(TrainConfig(preset=p, gamma=0.01))) for p in ("cpu", "smoke"))}
    assert ("gamma=0.01 (ramped up over the first 50% of steps; at most 50% of a conv's live "
            "channels die per epoch) seed=0") in lines["cpu"]
    assert "gamma=0.01 seed=0" in lines["smoke"]


def test_a_fading_run_cuts_resumes_exactly_and_ends_with_every_gate_folded(tmp_path):
    """``--fade``: channels pass through the fade zone (2, 3) mid-run and some die and are
    cut; a resume from the checkpoint taken while channels fade ends where the run ended;
    the final network has no b left in the zone (the gates folded into the BatchNorms), and
    its saved ``model.pt`` computes what it computed."""
    config = TrainConfig(preset="smoke", dataset="synthetic", synthetic_size=1024, epochs=3,
                         batch_size=128, width=0.25, gamma=1.0, lr_quant=0.2, init_bits=4.0,
                         fade=True, cut_every=5, threads=1)
    states, fading, last = [], [], {}

    def keep(metrics, state):
        states.append(copy.deepcopy(state.state_dict()))
        b = torch.cat([layer.b.detach() for _, layer in state.model.quant_layers()])
        fading.append(int(((b > 2) & (b < 3)).sum()))
        last["state"] = state

    result = train(config, on_epoch=keep, verbose=False)
    assert fading[1] > 50  # mid-run, many channels fade
    assert result["weights_kept_fraction"] < 0.9 and result["test_accuracy"] > 0.5
    model = last["state"].model
    b = torch.cat([layer.b.detach() for _, layer in model.quant_layers()])
    assert not ((b > 0) & (b < 3)).any()  # every live channel at or above the floor
    assert all(set(layer.gate().unique().tolist()) <= {0.0, 1.0}
               for _, layer in model.quant_layers())
    resumed = train(config, resume=states[1], verbose=False)
    for key in ("train_loss", "test_accuracy", "size_bits", "weights_kept_fraction"):
        assert result["history"][-1][key] == resumed["history"][-1][key], key
    save_model(tmp_path / "model.pt", last["state"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "model.pt")(x), model.eval()(x))


def test_a_rationed_run_loses_at_most_its_share_of_each_layer_per_epoch_and_resumes_exactly():
    """``--ration 0.5`` where an unrationed run empties layers in its first epoch: no conv
    ends an epoch with fewer than half the live channels it began it with (rounded down),
    the network ends larger, and a resume from the first epoch's checkpoint ends where the
    run ended (the rations are set again from the live channels at each epoch's start)."""
    config = TrainConfig(preset="smoke", dataset="synthetic", synthetic_size=1024, epochs=3,
                         batch_size=128, width=0.25, gamma=3.0, lr_quant=0.2, init_bits=4.0,
                         cut_every=5, threads=1)
    free = train(config, verbose=False)["history"]
    states = []
    rationed = train(config.replace(ration=0.5), verbose=False,
                     on_epoch=lambda m, s: states.append(copy.deepcopy(s.state_dict())))
    start = {"prep": 16, "layer1": 32, "res1.conv1": 32, "res1.conv2": 32, "layer2": 64,
             "layer3": 128, "res3.conv1": 128, "res3.conv2": 128}

    def halved(history) -> list[bool]:  # per epoch: did a conv end below half its start?
        ends = [start] + [h["channels"] for h in history]
        return [any(now[n] < then[n] // 2 for n in start)
                for then, now in zip(ends[:-1], ends[1:], strict=True)]

    assert any(halved(free))  # unrationed, layers empty within an epoch
    assert not any(halved(rationed["history"]))
    assert rationed["history"][-1]["channels_kept"] > free[-1]["channels_kept"]
    resumed = train(config.replace(ration=0.5), resume=states[0], verbose=False)
    for key in ("train_loss", "test_accuracy", "size_bits", "channels"):
        assert rationed["history"][-1][key] == resumed["history"][-1][key], key
