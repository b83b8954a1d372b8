"""Export: packed integers read back bit for bit, ONNX logits equal PyTorch's, the payload is
the reported size, the re-measured accuracy is the reported one, the int8 ONNX holds the
trained integers and predicts as the float one, a float network exports, bad input exits 2."""

import contextlib
import copy
import dataclasses
import io
import json
import math
import pickle
import re

import numpy as np
import pytest
import torch

from sweep.checkpoints import export_front
from trainer import data
from trainer.cli import write_run
from trainer.config import TrainConfig, resolve
from trainer.export import main, read_weights
from trainer.export.dense import build_dense, export_onnx, onnx_logits
from trainer.export.integer import int8_weights
from trainer.export.packed import (
    FORMAT,
    FORMATS,
    LOGIT_SCALE,
    deflate,
    float_exponents,
    inflate,
    pack,
    pack_bits,
    unpack,
    unpack_bits,
    weight_tensors,
    write_weights,
)
from trainer.network import load_model, model_for, model_from, save_model
from trainer.results import write_results
from trainer.surgery import cut_dead_channels
from trainer.train import train

# Compresses in about 3 s: channels cut in res3, others dead but not yet cut (their BatchNorm
# still emits a constant), and res3's sum on a union that is neither side's channels. The
# channels cross the one-bit zone (no skip_one_bit), which is what leaves them dead, uncut.
CUTS = TrainConfig(preset="smoke", dataset="synthetic", gamma=1.0, epochs=3, batch_size=64,
                   width=0.125, lr_quant=0.1, init_bits=2.0, synthetic_size=1024, cut_every=2,
                   threads=1, skip_one_bit=False, min_bits=0.0)


@pytest.fixture(scope="session")  # once per test process: both take export tests (about
def run(tmp_path_factory):  # 10 s to build, against 100 s of tests held in one process)
    """A trained run folder (trainer --out layout) and the final checkpoint of its training."""
    folder = tmp_path_factory.mktemp("run")
    final = {}

    def keep(metrics, state):
        final.update(state=state, checkpoint=copy.deepcopy(state.state_dict()))

    result = train(CUTS, on_epoch=keep, verbose=False)
    write_run(folder, "train-1", result)
    save_model(folder / "model.pt", final["state"])
    return folder, result, final["checkpoint"]


@pytest.fixture(scope="session")
def exported(run, tmp_path_factory):
    """The run folder exported by the command: (folder, its stdout)."""
    out = tmp_path_factory.mktemp("export") / "e"
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit) as exit_:
        main([str(run[0]), "--out", str(out), "--threads", "1"])
    assert exit_.value.code == 0
    return out, text.getvalue()


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
    # Trained with integer_exponents: every conv e an integer, stored as int8, the head's
    # (float16, by half_exponents) apart; B <= 15 as nibbles.
    assert back.meta["format"] == FORMAT
    assert back.meta["exp_dtype"] == "int8" and back.meta["bits_encoding"] == "nibbles"
    live = sum(int((layer.b > 0).sum()) for _, layer in model.quant_layers())
    head_live = int((model.head.b > 0).sum())
    planes = weight_tensors(model)[0]
    assert planes["exp"].dtype == np.int8 and planes["exp"].size == live - head_live
    assert planes["exp_head"].dtype == np.float16 and planes["exp_head"].size == head_live
    assert sizes.metadata == metadata_bytes(planes)
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


def test_bit_depths_pack_as_nibbles_up_to_15_and_as_bytes_above():
    bits = np.array([0, 15, 3, 1, 7], np.uint8)
    stored, encoding = pack_bits(bits)
    assert encoding == "nibbles" and stored.tolist() == [0x0F, 0x31, 0x70]
    assert unpack_bits(stored, encoding)[:5].tolist() == bits.tolist()
    stored, encoding = pack_bits(np.append(bits, 16))
    assert encoding == "uint8" and stored.tolist() == [0, 15, 3, 1, 7, 16]


def test_planes_are_stored_compressed_only_when_that_is_shorter():
    ones = np.full(300, 0xFF, np.uint8)  # a network with nothing cut: all channels present
    stored, zipped = deflate(ones)
    assert zipped and stored.size < 30
    assert np.array_equal(inflate(stored, "uint8"), ones)
    exps = np.random.default_rng(0).integers(-6, -3, 300).astype(np.int8)  # 3 values
    stored, zipped = deflate(exps)
    assert zipped and stored.size < exps.size // 2  # about 1.6 bits of entropy each
    assert np.array_equal(inflate(stored, "int8"), exps)
    noise = np.random.default_rng(0).integers(0, 256, 40, dtype=np.uint8)
    stored, zipped = deflate(noise)  # nothing to gain: kept as it is
    assert not zipped and np.array_equal(stored, noise)


def metadata_bytes(planes: dict[str, np.ndarray]) -> int:
    """What ``write_weights`` stores of ``weight_tensors``' metadata: bits as nibbles when
    every B <= 15, and bits, exp and masks each as zlib's stream when that is shorter."""
    planes = {**planes, "bits": pack_bits(planes["bits"])[0]}
    return sum(min(planes[k].nbytes, deflate(planes[k])[0].nbytes)
               for k in ("bits", "exp", "masks")) + planes.get("exp_head", np.zeros(0)).nbytes


def float32_only(model) -> None:
    """Move one live e off the float16 grid and one channel to 16 bits: the fallbacks."""
    with torch.no_grad():
        layer = model.layer2.conv
        o = int((layer.b > 0).nonzero()[0])
        layer.e[o] += 2.0 ** -20
        layer.b[o] = 16.0


def write_old_format(model, path, version: int) -> None:
    """``model`` as the exports before format 3 wrote it, every live row's e in ``exp``:
    format 1 with bits one per byte and float32 exponents; format 2 with bits as nibbles
    (when every B <= 15), float16 exponents where exact and the masks zlib'd if shorter."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    write_weights(model, {}, path)
    with safe_open(str(path), framework="np") as f:
        meta = {k: v for k, v in f.metadata().items()
                if k not in ("bits_encoding", "exp_dtype", "zlib")}
    tensors, _, _ = weight_tensors(model)
    exp = np.concatenate([tensors.pop("exp").astype(np.float32),
                          tensors.pop("exp_head", np.zeros(0)).astype(np.float32)])
    if version == 1:
        tensors["exp"] = exp
    else:
        tensors["exp"] = float_exponents(exp)
        tensors["bits"], meta["bits_encoding"] = pack_bits(tensors["bits"])
        tensors["masks"], zipped = deflate(tensors["masks"])
        meta.update(exp_dtype=str(tensors["exp"].dtype), masks_encoding=["raw", "zlib"][zipped])
    save_file(tensors, str(path), metadata={**meta, "format": FORMATS[version - 1]})


@pytest.mark.parametrize("version, off_grid", [(3, True), (2, True), (1, True), (2, False)])
def test_exponents_off_the_grids_stay_float32_and_old_files_read(run, tmp_path, version,
                                                                 off_grid):
    """A network trained before integer_exponents and half_exponents (or with a bit depth
    over 15) still exports bit for bit, all its exponents float32 in ``exp``; and files of
    formats 1 (bits one per byte, exp float32) and 2 (nibbles, float16 exp) still read."""
    model = load_model(run[0] / "model.pt")
    if off_grid:
        float32_only(model)
    path = tmp_path / "w.safetensors"
    if version < 3:
        write_old_format(model, path, version)
    else:
        sizes = write_weights(model, {}, path)
        planes = weight_tensors(model)[0]
        live = sum(int((layer.b > 0).sum()) for _, layer in model.quant_layers())
        assert "exp_head" not in planes
        assert planes["exp"].dtype == np.float32 and planes["exp"].size == live
        assert sizes.metadata == metadata_bytes(planes)
    back = read_weights(path)
    assert back.meta["format"] == FORMATS[version - 1]
    want = ("float32", "uint8") if off_grid else ("float16", "nibbles")
    assert (back.meta["exp_dtype"], back.meta["bits_encoding"]) == want
    for name, layer in model.quant_layers():
        assert torch.equal(back.layers[name].ints, layer.qints()), name
        qweight = layer.qweight().detach().contiguous()
        assert torch.equal(back.layers[name].weight().view(torch.int32),
                           qweight.view(torch.int32)), name


def test_half_exponents_round_e_to_float16_unless_turned_off(run):
    _, _, checkpoint = run  # trained with the default, half_exponents=True
    for _, layer in model_from(checkpoint).quant_layers():
        assert torch.equal(layer.e.half().float(), layer.e), "an e is not a float16"
    off = {}
    train(CUTS.replace(epochs=1, half_exponents=False),
          on_epoch=lambda m, s: off.update(model=s.model), verbose=False)
    es = torch.cat([layer.e.detach() for _, layer in off["model"].quant_layers()])
    assert not torch.equal(es.half().float(), es)


@pytest.mark.parametrize("change, says", [
    (dict(format=FORMATS[1], masks_encoding="gzip"), "unknown masks encoding 'gzip'"),
    (dict(zlib='["payload"]'), "zlib planes ['payload']"),
    (dict(zlib='["bits", "masks"]'), "exp holds uint8, but the header says int8"),
    (dict(exp_dtype="float16"), "exp_dtype float16 with an exp_head tensor"),
    (dict(drop="exp_head"), "exp_dtype int8 without an exp_head tensor"),
])
def test_a_header_that_does_not_match_the_tensors_is_refused(run, tmp_path, change, says):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    write_weights(load_model(run[0] / "model.pt"), {}, path)
    with safe_open(str(path), framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(meta["zlib"]) == ["bits", "exp", "masks"]  # each shorter zlib'd
    change = dict(change)
    tensors.pop(change.pop("drop", None), None)
    save_file(tensors, str(path), metadata={**meta, **change})
    with pytest.raises(ValueError, match=re.escape(says)):
        read_weights(path)


def test_integer_exponents_leave_every_conv_e_an_integer_unless_turned_off(run):
    _, _, checkpoint = run  # trained with the default, integer_exponents=True
    model = model_from(checkpoint)
    for name, block in model.blocks():
        assert torch.equal(block.conv.e, torch.round(block.conv.e)), name
    assert not torch.equal(model.head.e, torch.round(model.head.e))  # no BatchNorm: its own
    off = {}
    train(CUTS.replace(epochs=1, integer_exponents=False),
          on_epoch=lambda m, s: off.update(model=s.model), verbose=False)
    es = torch.cat([block.conv.e.detach() for _, block in off["model"].blocks()])
    assert not torch.equal(es, torch.round(es))


def test_half_exponents_keeps_every_integer_and_moves_e_by_a_float16_rounding():
    torch.manual_seed(0)
    model = model_for(resolve(TrainConfig(preset="smoke", width=0.0625)))
    with torch.no_grad():
        for _, layer in model.quant_layers():
            layer.b.uniform_(-1.0, 9.0)  # dead rows and non-integer bit depths
            layer.e.add_(torch.rand_like(layer.e) * 0.01)  # off the float16 grid
    before = {n: (layer.qints(), layer.e.detach().clone()) for n, layer in model.quant_layers()}
    for name, layer in model.quant_layers():
        layer.half_exponents()
        ints, e = before[name]
        assert torch.equal(layer.qints(), ints), name
        assert torch.equal(layer.e, e.half().float()), name  # the nearest float16
        assert (layer.e - e).abs().max() <= 2.0 ** -11 * e.abs().max()


def test_the_uncompressed_reference_builds_the_same_dense_network(tmp_path):
    """float_exported (benchmarks.inference's reference): a float network's dense logits."""
    from trainer.export.dense import float_exported

    torch.manual_seed(0)
    model = model_for(resolve(TrainConfig(preset="smoke", kind="float-baseline", width=0.0625)))
    with torch.no_grad():
        for _, block in model.blocks():
            block.bn.running_mean.normal_(0, 0.3)
            block.bn.running_var.uniform_(0.5, 1.5)
    model.eval()
    dense = build_dense(float_exported(model))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), rtol=1e-5, atol=1e-5)


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


def test_export_of_a_run_folder_reproduces_the_reported_accuracy(run, exported):
    _, result, _ = run
    folder, out = exported
    report = json.loads((folder / "export.json").read_text())
    assert report["status"] == "ok" and report["trial"] == "train-1"
    assert report["reported_accuracy_from"] == "trials.parquet"
    assert abs(report["test_accuracy_onnx"] - result["test_accuracy"]) <= 0.0005
    assert 0.2 < report["test_accuracy_onnx"] < 1.0  # learned something, and can be wrong
    assert report["max_logit_diff_onnx_vs_torch"] < 1e-4
    assert report["payload_bytes"] == math.ceil(result["size_bits"] / 8)
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert files["weights.safetensors"] == report["files"]["weights.safetensors"] == (
        report["payload_bytes"] + report["metadata_bytes"] + report["unpriced_bytes"]
        + report["batchnorm_bytes"] + report["header_bytes"])
    assert "payload" in out and "metadata" in out
    speed = report["inference"]
    assert speed["threads"] == 1 and set(speed["images_per_s"]) == {"1", "256"}
    assert all(v > 0 for v in speed["images_per_s"].values())
    assert speed["runs"]["1"] >= 3 and "images/s at batch 1" in out


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


def test_export_front_in_process_writes_one_folder_and_one_line_per_trial(sweep, tmp_path,
                                                                          capsys):
    failed = export_front(sweep, tmp_path / "exports", None, prog="scnn sweep")
    lines = capsys.readouterr().out.strip().splitlines()
    assert failed == 0
    assert len(lines) == 1 and lines[0].startswith("scnn sweep: exported abc_00000 (ok): ")
    assert "images/s at batch 1" in lines[0]
    report = json.loads((tmp_path / "exports" / "abc_00000" / "export.json").read_text())
    assert report["status"] == "ok" and report["inference"]["images_per_s"]["256"] > 0


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
    elif case == "trial-on-a-run":
        source, extra = run[0], ["--trial", "train-1"]
    code, out, err = cli([source, *extra, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err.startswith("scnn export: error: ") and len(err.splitlines()) == 1, err
    assert says in err and "Traceback" not in err and "this ran" not in out + err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make, says", [
    (lambda t: (t / "file").write_text("x") and t / "file", "--out {t}/file is a file"),
    (lambda t: (t / "file").write_text("x") and t / "file" / "out",
     "cannot be made: {t}/file is a file, not a folder"),
    (lambda t: t / "out", "--threads must be >= 0"),
])
def test_an_out_or_threads_it_cannot_use_is_refused_before_loading(run, tmp_path, capsys,
                                                                   make, says):
    out = make(tmp_path)
    threads = ["--threads", "-1"] if out.name == "out" and out.parent == tmp_path else []
    code, _, err = cli([run[0], "--out", out, *threads], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert says.format(t=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_help_explains_the_files_and_the_sources(capsys):
    code, out, _ = cli(["--help"], capsys)
    assert code == 0
    for needle in ("weights.safetensors", "model.onnx", "model.int8.onnx", "export.json",
                   "--trial", "--front", "0.05 points", "0.3 points", "float-baseline",
                   "examples"):
        assert needle in out


# --- the integer ONNX -------------------------------------------------------------------------

def trained_scale(layer, bn, eps: float) -> np.ndarray:
    """(O,) float32 weight scale of each row as the int8 file must hold it: fl32(|s| 2^e),
    s = g / sqrt(var + eps) in float64 (the head: 2^e / 8, its logit scale)."""
    e = layer.e.detach().double().numpy()
    if bn is None:
        return (2.0 ** e * LOGIT_SCALE).astype(np.float32)
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + eps)
    return (np.abs(s.numpy()) * 2.0 ** e).astype(np.float32)


def test_the_int8_weights_are_the_trained_integers_bit_for_bit(run, exported):
    """Each int8 row is the network's own k (times the sign of its BatchNorm's s), placed in
    the dense rows and columns, with scale fl32(|s| 2^e) and zero point 0; pads are 0."""
    folder, _ = exported
    model = load_model(run[0] / "model.pt")
    report = json.loads((folder / "export.json").read_text())
    pad_to = report["padding"]["pad_to"]  # this CPU's NCHWc block (8 or 16)
    net = build_dense(read_weights(folder / "weights.safetensors"), pad_to)
    held = int8_weights(folder / "model.int8.onnx")
    blocks = dict(model.blocks())
    assert sorted(held) == report["int8"]["int8_layers"] and not report["int8"]["float_layers"]
    assert len(held) == len(list(model.quant_layers()))  # every layer fits 8 bits here
    for name, layer in model.quant_layers():
        q, scale, zero = held[name]
        bn = blocks[name].bn if name in blocks else None
        sign = torch.ones(len(layer.out_idx), dtype=torch.int64) if bn is None else \
            torch.sign(bn.weight.detach()).long()
        want = np.zeros(q.shape, np.int64)
        rows, cols = net.places[name]
        ints = layer.qints() * sign.view((-1,) + (1,) * (layer.weight.dim() - 1))
        want[rows.numpy()[:, None], cols.numpy()] = ints.numpy()
        assert q.dtype == np.int8 and np.array_equal(q.astype(np.int64), want), name
        eps = bn.eps if bn is not None else 0.0
        live = (layer.b > 0).numpy()  # a dead row (k = 0) stores no e: its scale is moot
        got = scale[rows.numpy()][live]
        want_scale = trained_scale(layer, bn, eps)[live]
        assert np.array_equal(got.view(np.int32), want_scale.view(np.int32)), name
        assert np.all(zero == 0), name
        assert q.shape[0] % pad_to == 0 or name == "head", (name, q.shape)  # padded rows


def test_the_int8_file_predicts_as_the_float_file_and_the_reference_evaluator_agrees(
        run, exported):
    from onnx import load, version_converter
    from onnx.reference import ReferenceEvaluator

    folder, out = exported
    report = json.loads((folder / "export.json").read_text())
    x, _ = data.test_set(resolve(CUTS), None)
    images = next(data.batches(x[:128], 128))
    floats = onnx_logits(folder / "model.onnx", [images])
    ints = onnx_logits(folder / "model.int8.onnx", [images])
    assert (ints.argmax(1) == floats.argmax(1)).mean() >= 0.95
    assert 0 < np.abs(ints - floats).max() < 0.5 * np.abs(floats).max()  # int8: close, not equal
    assert report["int8_predictions_as_onnx"] >= 0.95 and report["int8_status"] == "ok"
    assert abs(report["test_accuracy_int8"] - report["test_accuracy_onnx"]) <= 0.003
    assert report["int8"]["opset"] == 17 and report["int8"]["inference"]["images_per_s"]["256"]
    assert report["files"]["model.int8.onnx"] == (folder / "model.int8.onnx").stat().st_size
    assert "model.int8.onnx" in out and "int8" in out
    # onnx's own reference implementation (DequantizeLinear from opset 19) runs the same graph
    graph = version_converter.convert_version(load(str(folder / "model.int8.onnx")), 19)
    ref = ReferenceEvaluator(graph).run(None, {"images": images[:8].numpy()})[0]
    np.testing.assert_allclose(ref, ints[:8], rtol=1e-5, atol=1e-5)


def test_a_layer_with_a_row_over_8_bits_stays_float(run, tmp_path):
    """A row whose integers need 12 bits: its layer is float in the int8 file (as in
    model.onnx), export.json says why, and every other layer still holds its k."""
    from trainer.export.sources import Source
    from trainer.export.write import export_network

    model = load_model(run[0] / "model.pt")
    with torch.no_grad():
        conv = model.layer2.conv
        o = int((conv.b > 0).nonzero()[0])
        conv.e[o] -= 8.0  # k 256x larger
        conv.b[o] = 12.0
    assert model.layer2.conv.qints().abs().max() > 127
    config = dataclasses.asdict(resolve(CUTS))
    test = data.test_set(resolve(CUTS), None)
    calibration = data.train_sample(resolve(CUTS), None, 128)
    record = export_network(Source(tmp_path / "model.pt", "wide row"), model,
                            {"config": config}, test, calibration, tmp_path / "e", speed=False)
    assert record["status"] == "ok"
    assert record["int8"]["float_layers"] == {"layer2": "a row needs 12 bits (int8 holds 8)"}
    held = int8_weights(tmp_path / "e" / "model.int8.onnx")  # checked against k on writing
    assert "layer2" not in held and len(held) == len(list(model.quant_layers())) - 1
    dense = build_dense(read_weights(tmp_path / "e" / "weights.safetensors"))
    assert record["int8"]["weight_bytes"]["float32"] == 4 * dense.convs["layer2"].weight.numel()


@pytest.mark.parametrize("bits", [7, 8])
def test_a_row_of_8_bits_is_int8_where_the_cpu_adds_in_int32_else_float(run, tmp_path, bits):
    """--int8-bits 8 (a VNNI target) keeps an 8-bit row's layer in int8 with its exact k;
    7 (AVX2, where onnxruntime's int16 sums saturate) leaves that layer float."""
    from trainer.export.sources import Source
    from trainer.export.write import export_network

    model = load_model(run[0] / "model.pt")
    with torch.no_grad():
        conv = model.layer2.conv
        o = int((conv.b > 0).nonzero()[0])
        conv.b[o] = 8.0
        while conv.qints()[o].abs().max() <= 64:  # k twice as large at each step
            conv.e[o] -= 1.0
    assert 64 < model.layer2.conv.qints().abs().max() <= 128
    config = dataclasses.asdict(resolve(CUTS))
    record = export_network(Source(tmp_path / "model.pt", "8-bit row"), model,
                            {"config": config}, data.test_set(resolve(CUTS), None),
                            data.train_sample(resolve(CUTS), None, 64), tmp_path / "e",
                            speed=False, int8_bits=bits)
    assert record["status"] == "ok" and record["int8"]["int8_bits"] == bits
    assert record["int8"]["int8_bits_why"] == "given (--int8-bits)"
    held = int8_weights(tmp_path / "e" / "model.int8.onnx")  # checked against k on writing
    if bits == 8:
        assert "layer2" in held and not record["int8"]["float_layers"]
        assert np.abs(held["layer2"][0].astype(int)).max() > 64
    else:
        assert "layer2" not in held
        assert "(--int8-bits 7)" in record["int8"]["float_layers"]["layer2"]


@pytest.mark.parametrize("flags, bits", [
    ("fpu sse2 avx avx2 fma", 7),  # the AMD EPYC of the project's VM
    ("fpu avx2 avx512f avx512bw avx512_vnni amx_int8", 8),  # a Xeon
    ("fpu avx2 avx_vnni", 8),
    ("fp asimd", 7),
])
def test_the_int8_bits_follow_this_cpus_int8_units(flags, bits):
    from trainer.export.integer import int8_bits

    key = "Features" if "asimd" in flags else "flags"
    got, why = int8_bits(f"processor\t: 0\n{key}\t\t: {flags}\n")
    assert got == bits and ("VNNI" in why) == (bits == 7)


@pytest.mark.parametrize("pad_to", [8, 16])
def test_padding_channels_leaves_the_logits_unchanged(run, tmp_path, pad_to):
    model = load_model(run[0] / "model.pt")
    write_weights(model, {}, tmp_path / "w.safetensors")
    ex = read_weights(tmp_path / "w.safetensors")
    padded, plain = build_dense(ex, pad_to), build_dense(ex, pad_to=1)
    for name, conv in padded.convs.items():
        assert conv.out_channels % pad_to == 0, name
        assert conv.in_channels % pad_to == 0 or name == "prep", name
    assert any(c.out_channels % pad_to for c in plain.convs.values())  # something was padded
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flags, block", [
    ("fpu sse2 avx avx2 fma", 8),  # the AMD EPYC of the project's VM
    ("fpu avx2 avx512f avx512bw avx512_vnni", 16),  # a Xeon
    ("fp asimd", 16),  # neither (an ARM CPU's Features line)
])
def test_the_export_pads_to_this_cpus_nchwc_block(flags, block):
    from trainer.export.dense import nchwc_block

    key = "Features" if "asimd" in flags else "flags"
    got, why = nchwc_block(f"processor\t: 0\n{key}\t\t: {flags}\n")
    assert got == block and str(block) in why


def test_pad_to_is_written_into_export_json_and_bad_values_are_refused(run, tmp_path, capsys):
    from trainer.export.sources import Source
    from trainer.export.write import export_network

    model = load_model(run[0] / "model.pt")
    config = dataclasses.asdict(resolve(CUTS))
    test = data.test_set(resolve(CUTS), None)
    calibration = data.train_sample(resolve(CUTS), None, 64)
    record = export_network(Source(tmp_path / "model.pt", "pad 8"), model, {"config": config},
                            test, calibration, tmp_path / "e", speed=False, pad_to=8)
    assert record["padding"] == {"pad_to": 8, "why": "given (--pad-to)"}
    assert record["status"] == "ok" and record["max_logit_diff_onnx_vs_torch"] < 1e-4
    net = build_dense(read_weights(tmp_path / "e" / "weights.safetensors"), 8)
    assert any(c.out_channels % 16 for c in net.convs.values())  # 8, not 16
    held = int8_weights(tmp_path / "e" / "model.int8.onnx")  # checked against k on writing
    assert all(held[n][0].shape == tuple(c.weight.shape) for n, c in
               ((k.replace("_", "."), c) for k, c in net.convs.items()) if n in held)
    code, _, err = cli([run[0], "--out", tmp_path / "bad", "--pad-to", "5"], capsys)
    assert code == 2 and "--pad-to" in err and not (tmp_path / "bad").exists()


def test_a_float_network_exports_as_float_and_as_onnxruntimes_int8(tmp_path, capsys):
    config = resolve(TrainConfig(preset="smoke", kind="float-baseline", width=0.0625,
                                 dataset="synthetic", synthetic_size=256))
    torch.manual_seed(0)
    model = model_for(config).eval()
    torch.save({"config": dataclasses.asdict(config), "layout": model.layout(),
                "model": model.state_dict()}, tmp_path / "model.pt")
    code, out, err = cli([tmp_path / "model.pt", "--out", tmp_path / "e", "--threads", "1"],
                         capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "e" / "export.json").read_text())
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "export.json", "model.int8.onnx", "model.onnx"]  # no integers to pack
    assert report["kind"] == "float-baseline" and report["payload_bytes"] is None
    assert report["status"] == "ok" and report["max_logit_diff_onnx_vs_torch"] < 1e-4
    assert report["int8"]["weights"].startswith("onnxruntime's own")
    assert len(report["int8"]["int8_layers"]) == 9 and report["int8"]["weight_bytes"]["int8"]
    assert report["int8"]["inference"]["images_per_s"]["1"] > 0
    assert "float-baseline network (no integers to pack)" in out


def test_the_inference_benchmark_writes_its_side_by_side_medians_into_export_json(
        exported, tmp_path, monkeypatch, capsys):
    """benchmarks.inference --write: each form's images/s become the interleaved medians,
    said so (timed_by, the machine), the export's own timings kept as quick_look."""
    import shutil
    import sys

    from trainer.results import cpu_model

    folder = tmp_path / "e"
    shutil.copytree(exported[0], folder)
    before = json.loads((folder / "export.json").read_text())
    monkeypatch.setattr(sys, "argv", ["benchmarks/inference.py", str(folder), "--reps", "1",
                                      "--batches", "1,8", "--write"])
    from benchmarks.inference import main as bench

    bench()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    after = json.loads((folder / "export.json").read_text())
    for key, record in (("float", after["inference"]), ("int8", after["int8"]["inference"])):
        old = before["inference"] if key == "float" else before["int8"]["inference"]
        assert record["quick_look"]["images_per_s"] == old["images_per_s"], key
        assert set(record["images_per_s"]) == {"1", "8"} and record["images_per_s"]["8"] > 0
        assert record["timed_by"].startswith("python -m benchmarks.inference --reps 1: ")
        assert record["machine"] == (cpu_model() or old["machine"])
    written = after["int8"]["inference"]["images_per_s"]["8"]
    # the same median, printed to the unit and written to a tenth (5053.49 prints 5053 and
    # writes 5053.5), so they agree within half a unit
    assert abs(printed["networks"][0]["images_per_s"]["int8"]["8"] - written) <= 0.5
