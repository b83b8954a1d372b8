"""Export: packed integers read back bit for bit, ONNX logits equal PyTorch's, the payload is
the reported size, the re-measured accuracy is the reported one, bad input exits 2."""

import copy
import dataclasses
import json
import math
import pickle

import numpy as np
import pytest
import torch

from trainer.cli import write_run
from trainer.config import TrainConfig, resolve
from trainer.dense import build_dense, export_onnx, onnx_logits
from trainer.export import main, read_weights
from trainer.packed import pack, unpack, write_weights
from trainer.results import write_results
from trainer.surgery import cut_dead_channels
from trainer.train import load_model, model_for, model_from, save_model, train

# Compresses in about 3 s: channels cut in res3, others dead but not yet cut (their BatchNorm
# still emits a constant), and res3's sum on a union that is neither side's channels.
CUTS = TrainConfig(preset="smoke", dataset="synthetic", gamma=1.0, epochs=3, batch_size=64,
                   width=0.125, lr_quant=0.1, init_bits=2.0, synthetic_size=1024, cut_every=2,
                   threads=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run folder (trainer --out layout) and the final checkpoint of its training."""
    folder = tmp_path_factory.mktemp("run")
    final = {}

    def keep(metrics, state):
        final.update(state=state, checkpoint=copy.deepcopy(state.state_dict()))

    result = train(CUTS, on_epoch=keep, verbose=False)
    write_run(folder, "train-1", result)
    save_model(folder / "model.pt", final["state"])
    return folder, result, final["checkpoint"]


def cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``python -m trainer.export`` in-process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_the_network_has_cuts_dead_channels_and_a_union(run):
    _, _, checkpoint = run
    model = model_from(checkpoint)
    present = {n: layer.weight.shape[0] for n, layer in model.quant_layers()}
    assert sum(present.values()) < sum(s[0] for s in model.initial_shapes.values())
    assert any(b.dead().any() for _, b in model.blocks())  # dead, not cut: unpriced weights
    assert not model.res3.aligned


def test_packed_integers_read_back_bit_for_bit(run, tmp_path):
    folder, result, _ = run
    model = load_model(folder / "model.pt")
    config = dataclasses.asdict(resolve(CUTS))
    sizes = write_weights(model, config, tmp_path / "w.safetensors")
    back = read_weights(tmp_path / "w.safetensors")
    assert list(back.layers) == [n for n, _ in model.quant_layers()]
    for name, layer in model.quant_layers():
        got = back.layers[name]
        assert torch.equal(got.ints, layer.qints()), name
        qweight = layer.qweight().detach().contiguous()
        assert torch.equal(got.weight().view(torch.int32), qweight.view(torch.int32)), name
        assert torch.equal(got.out_idx, layer.out_idx) and torch.equal(got.in_idx, layer.in_idx)
        assert torch.equal(got.bits, torch.ceil(torch.relu(layer.b.detach())).long())
    assert sizes.unpriced > 0  # dead-but-present inputs: stored, outside the payload
    # The payload is the reported size: one bitstream, rounded up to a byte once.
    assert sizes.size_bits == result["size_bits"] == float(model.size().bits)
    assert sizes.payload == math.ceil(result["size_bits"] / 8)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13, 16, 31])
def test_pack_and_unpack_are_inverse_at_every_bit_depth(bits):
    gen = np.random.default_rng(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rows = [gen.integers(lo, hi + 1, size=n) for n in (7, 0, 9)]
    rows[0][:2] = lo, hi  # the extremes of the two's complement range
    packed = pack(rows, [bits] * 3)
    back = unpack(packed, [7, 0, 9], [bits, bits, bits])
    assert packed.size == math.ceil(16 * bits / 8)
    assert all(np.array_equal(a, b) for a, b in zip(rows, back, strict=True))
    with pytest.raises(ValueError, match="do not fit"):
        pack([np.array([hi + 1])], [bits])


def test_the_dense_network_computes_what_the_cut_network_computes(tmp_path):
    """Removed branch, cut and dead channels, non-integer bits: dense logits = PyTorch's."""
    torch.manual_seed(0)
    model = model_for(resolve(TrainConfig(preset="smoke", width=0.0625)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, block in model.blocks():
            n = block.bn.num_features
            block.bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            block.bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            block.bn.bias.copy_(torch.randn(n, generator=gen) * 0.3)
            block.conv.b.copy_(torch.rand(n, generator=gen) * 4)  # non-integer bit depths
            dead = torch.rand(n, generator=gen) < 0.3
            if name == "res1.conv2":
                dead[:] = True  # the whole branch dies: res1 becomes the identity
            cut = dead & (torch.rand(n, generator=gen) < 0.5)
            if name == "res1.conv2":
                cut[:] = True
            block.conv.b[dead] = -1.0
            block.bn.bias[cut] = -1.0  # its constant drained to 0: cuttable
            block.bn.running_mean[cut] = 0.0
        assert cut_dead_channels(model, []) > 0
    model.eval()
    assert model.res1.conv1 is None and not model.res3.aligned
    write_weights(model, {}, tmp_path / "w.safetensors")
    dense = build_dense(read_weights(tmp_path / "w.safetensors"))
    x = torch.randn(4, 3, 32, 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), rtol=1e-5, atol=1e-5)


def test_onnx_logits_equal_pytorch_logits(run, tmp_path):
    folder, _, _ = run
    model = load_model(folder / "model.pt")
    write_weights(model, {}, tmp_path / "w.safetensors")
    export_onnx(build_dense(read_weights(tmp_path / "w.safetensors")), tmp_path / "m.onnx")
    x = torch.randn(5, 3, 32, 32)
    logits = onnx_logits(tmp_path / "m.onnx", [x[:3], x[3:]])  # any batch size
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_export_of_a_run_folder_reproduces_the_reported_accuracy(run, tmp_path, capsys):
    folder, result, _ = run
    code, out, err = cli([folder, "--out", tmp_path / "e", "--threads", "1"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "e" / "export.json").read_text())
    assert report["status"] == "ok" and report["trial"] == "train-1"
    assert report["reported_accuracy_from"] == "trials.parquet"
    assert abs(report["test_accuracy_onnx"] - result["test_accuracy"]) <= 0.0005
    assert 0.2 < report["test_accuracy_onnx"] < 1.0  # learned something, and can be wrong
    assert report["max_logit_diff_onnx_vs_torch"] < 1e-4
    assert report["payload_bytes"] == math.ceil(result["size_bits"] / 8)
    files = {p.name: p.stat().st_size for p in (tmp_path / "e").iterdir()}
    assert files["weights.safetensors"] == report["files"]["weights.safetensors"] == (
        report["payload_bytes"] + report["metadata_bytes"] + report["unpriced_bytes"]
        + report["batchnorm_bytes"] + report["header_bytes"])
    assert "payload" in out and "metadata" in out


def test_an_accuracy_that_does_not_match_fails_with_exit_1(run, tmp_path, capsys):
    folder, result, _ = run
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "model.pt").write_bytes((folder / "model.pt").read_bytes())
    write_run(run2, "train-2", {**result, "test_accuracy": result["test_accuracy"] - 0.01})
    code, _, err = cli([run2, "--out", tmp_path / "e"], capsys)
    assert code == 1 and "differs from the reported" in err and len(err.splitlines()) == 1
    assert json.loads((tmp_path / "e" / "export.json").read_text())["status"] == "failed"


@pytest.fixture
def sweep(run, tmp_path):
    """A sweep folder as sweep.run leaves it: trials.parquet and Ray trial folders."""
    folder, result, checkpoint = run
    sweep = tmp_path / "sweep"
    base = {k: v for k, v in result.items() if k not in ("history", "layers")}
    rows = [{**base, "trial_id": "abc_00000", "status": "TERMINATED"},
            {**base, "trial_id": "abc_00001", "status": "ERROR", "error": "RuntimeError: x"},
            {**base, "trial_id": "abc_00002", "status": "RUNNING"},
            # finished, but off the front (less accurate) and its checkpoint is not the last
            {**base, "trial_id": "abc_00003", "status": "TERMINATED",
             "test_accuracy": result["test_accuracy"] - 0.1}]
    write_results(sweep, rows, [], [])
    for trial, epoch in (("abc_00000", CUTS.epochs), ("abc_00003", 1)):
        ckpt = sweep / f"run_trial_{trial}_0_gamma=1_2026" / "checkpoint_000002"
        ckpt.mkdir(parents=True)
        torch.save(checkpoint, ckpt / "state.pt")
        (ckpt / "meta.json").write_text(json.dumps({"epoch": epoch, "trial": {}}))
    return sweep


def test_a_sweep_trial_and_the_front_export_from_checkpoints(sweep, tmp_path, capsys):
    code, _, err = cli([sweep, "--trial", "abc_00000", "--out", tmp_path / "one"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "one" / "export.json").read_text())["trial"] == "abc_00000"
    code, _, err = cli([sweep, "--front", "--out", tmp_path / "front"], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "front").iterdir()] == ["abc_00000"]
    assert (tmp_path / "front" / "abc_00000" / "model.onnx").is_file()


def unsafe_pickle(path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    with open(path, "wb") as f:
        pickle.dump({"config": Payload()}, f)


@pytest.mark.parametrize("case, says", [
    ("empty", "no run in"),
    ("missing", "does not exist"),
    ("unknown-trial", "is not in"),
    ("failed-trial", "failed (RuntimeError: x)"),
    ("running-trial", "has not finished (status RUNNING)"),
    ("stale-checkpoint", "latest checkpoint is epoch 1 of 3"),
    ("no-trial", "pass --trial ID"),
    ("foreign-dict", "is not a network saved by scnn"),
    ("unsafe-pickle", "is not a network saved by scnn"),
    ("float-network", "not quantized"),
    ("trial-on-a-run", "drop them"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, says, sweep, run, tmp_path,
                                                            capsys):
    source, extra = tmp_path / "src", []
    if case == "empty":
        source.mkdir()
    elif case in ("unknown-trial", "failed-trial", "running-trial", "stale-checkpoint",
                  "no-trial"):
        source = sweep
        trial = {"unknown-trial": "nope", "failed-trial": "abc_00001",
                 "running-trial": "abc_00002", "stale-checkpoint": "abc_00003"}.get(case)
        extra = ["--trial", trial] if trial else []
    elif case == "foreign-dict":
        torch.save({"weights": torch.zeros(3)}, source)
    elif case == "unsafe-pickle":
        unsafe_pickle(source)
    elif case == "float-network":
        config = resolve(TrainConfig(preset="smoke", kind="float-baseline", width=0.0625))
        model = model_for(config)
        torch.save({"config": dataclasses.asdict(config), "layout": model.layout(),
                    "model": model.state_dict()}, source)
    elif case == "trial-on-a-run":
        source, extra = run[0], ["--trial", "train-1"]
    code, out, err = cli([source, *extra, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err.startswith("scnn export: error: ") and len(err.splitlines()) == 1, err
    assert says in err and "Traceback" not in err and "this ran" not in out + err
    assert not (tmp_path / "out").exists()


def test_help_explains_the_files_and_the_sources(capsys):
    code, out, _ = cli(["--help"], capsys)
    assert code == 0
    for needle in ("weights.safetensors", "model.onnx", "export.json", "--trial", "--front",
                   "0.05 points", "examples"):
        assert needle in out
