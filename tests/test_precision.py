"""--precision: auto's rule, the start line's reason, one autocast path for CPU and GPU that
keeps what is learned in float32, a bf16 CPU run that resumes exactly, the Parquet column,
and sweeps recorded before the field existed resuming in what they trained in."""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext

import pyarrow.parquet as pq
import pytest
import torch

from sweep import config as sweep_config
from sweep.config import SweepConfig
from sweep.params import SWEEPABLE, check_space
from sweep.space import PER_TRIAL_FIELDS, train_config, trial_key
from trainer import precision as P
from trainer.config import ConfigError, TrainConfig, resolve
from trainer.network import model_for
from trainer.train import Step, autocast_for, make_optimizers, train

# bf16 on a CPU without native bf16 units (this suite's usual machine) is several times
# slower than fp32: the runs here are a few steps of the smallest network on 256 images.
TINY = TrainConfig(preset="smoke", dataset="synthetic", synthetic_size=256, batch_size=64,
                   epochs=2, gamma=0.5, lr_quant=0.2, device="cpu", precision="bf16",
                   cut_every=2, min_bits=0.0, skip_one_bit=False, init_bits=3.0)


def test_auto_is_bf16_on_a_gpu_and_fp32_on_a_cpu_and_an_asked_precision_is_kept():
    assert resolve(TrainConfig(preset="cpu"), has_gpu=False).precision == "fp32"
    assert resolve(TrainConfig(preset="cpu"), has_gpu=True).precision == "bf16"
    for asked in ("fp32", "bf16"):
        for gpu in (False, True):
            assert resolve(TrainConfig(preset="cpu", precision=asked), has_gpu=gpu).precision \
                == asked
    with pytest.raises(ConfigError, match=r"unknown --precision 'fp16': choose auto"):
        resolve(TrainConfig(precision="fp16"), has_gpu=False)
    assert "precision" in SWEEPABLE  # a TrainConfig field: a space may vary it


def test_the_start_line_says_which_precision_and_why(monkeypatch):
    assert set(P.native_bf16()) <= set(P.BF16_UNITS)  # this CPU's, read from torch
    monkeypatch.setattr(P, "native_bf16", lambda: [])
    assert P.precision_words("fp32", "auto", "cpu") == "fp32 (auto: this CPU has no native bf16)"
    assert P.precision_words("bf16", "bf16", "cpu") == (
        "bf16 autocast (asked, but this CPU has no native bf16: 3-12x slower than fp32, "
        "docs/train.md)")
    assert P.precision_words("bf16", "auto", "cuda") == "bf16 autocast (auto: a GPU)"
    assert P.precision_words("fp32", "fp32", "cuda") == "fp32 (asked)"
    monkeypatch.setattr(P, "native_bf16", lambda: ["amx_bf16", "avx512_bf16"])
    assert P.precision_words("fp32", "auto", "cpu").startswith(
        "fp32 (auto: native bf16 here (amx_bf16, avx512_bf16), but bf16 on CPUs waits for its "
        "speed measured on one")
    assert P.precision_words("bf16", "bf16", "cpu") == "bf16 autocast (asked)"


def test_one_autocast_path_runs_cpu_bf16_and_keeps_what_is_learned_in_float32():
    """The trainer's own Step under autocast_for("cpu", "bf16"), the path a GPU trial takes
    with "cuda": convolutions run in bf16, while the quantizer's weights, the size term, the
    loss, BatchNorm's statistics, every parameter, gradient and optimizer state stay float32."""
    assert autocast_for("cpu", "fp32") is nullcontext  # fp32: nothing is cast
    config = resolve(TINY.replace(gamma=0.05), has_gpu=False)
    torch.manual_seed(0)
    model = model_for(config).to(memory_format=torch.channels_last)
    opts = make_optimizers(model, config)
    step = Step(model, opts, config, autocast_for("cpu", config.precision), torch.zeros(()))
    step.gamma.fill_(config.gamma)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    seen = {}
    model.layer1.conv.register_forward_hook(
        lambda m, inputs, out: seen.update(conv=out.dtype, qweight=m.qweight().dtype))
    with step.autocast():
        size = model.loss_size(config.size_term)
        assert size.dtype == torch.float32  # the size term, under autocast
    for _ in range(3):
        step.zero_grad()
        logits = step.forward(x)
        loss, ce = step.loss(logits, y)
        step.backward(loss)
        step.optimize()
    assert logits.dtype == torch.bfloat16 and seen["conv"] == torch.bfloat16  # it did autocast
    assert seen["qweight"] == torch.float32  # the quantized weights 2^e * k, as without autocast
    assert loss.dtype == torch.float32 and ce.dtype == torch.float32
    for name, p in model.named_parameters():  # b, e, weights, BatchNorm affine
        assert p.dtype == torch.float32, name
        assert p.grad is None or p.grad.dtype == torch.float32, name
    for name, buf in model.named_buffers():  # BatchNorm running statistics among them
        assert not buf.is_floating_point() or buf.dtype == torch.float32, name
    assert any(n.endswith("running_mean") for n, _ in model.named_buffers())
    states = [v for opt in opts for s in opt.state.values() for v in s.values()
              if torch.is_tensor(v) and v.is_floating_point()]
    assert states and all(v.dtype == torch.float32 for v in states)  # momentum, Adam moments
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture(scope="session")  # built once per process, however its tests interleave
def bf16_run():
    """TINY on a CPU in bf16: ``(result, each epoch's state_dict)``."""
    states = []
    result = train(TINY, verbose=False,
                   on_epoch=lambda m, state: states.append(copy.deepcopy(state.state_dict())))
    return result, states


def test_bf16_on_a_cpu_trains_a_network_and_records_its_precision(bf16_run):
    result, states = bf16_run
    assert result["precision"] == "bf16" and states[0]["config"]["precision"] == "bf16"
    first, last = result["history"][0], result["history"][-1]
    assert last["bits_fraction"] < first["bits_fraction"] < 0.2  # the size term works in bf16
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result["history"])
    assert result["test_accuracy"] > 0.15  # 10 classes: above chance after two short epochs


def test_a_bf16_run_resumes_exactly_from_its_checkpoint(bf16_run):
    result, states = bf16_run
    resumed = train(TINY, resume=states[0], verbose=False)
    a, b = result["history"][-1], resumed["history"][-1]
    for key in ("train_loss", "test_accuracy", "size_bits", "weights_kept_fraction"):
        assert a[key] == b[key], key


def test_the_trials_parquet_column_records_what_the_run_computed_in(bf16_run, tmp_path):
    from trainer.cli import write_run

    result, _ = bf16_run
    write_run(tmp_path, "t", result)
    assert pq.read_table(tmp_path / "trials.parquet").column("precision").to_pylist() == ["bf16"]
    write_run(tmp_path, "t", {**result, "precision": resolve(TINY.replace(precision="auto"),
                                                              has_gpu=False).precision})
    assert pq.read_table(tmp_path / "trials.parquet").column("precision").to_pylist() == ["fp32"]


def test_the_cli_takes_precision_and_its_start_line_says_why(tmp_path, capsys, monkeypatch):
    from trainer.cli import run

    monkeypatch.setattr(P, "native_bf16", lambda: [])  # as on this suite's usual machine
    run(["--preset", "smoke", "--dataset", "synthetic", "--train-subset", "64",
         "--test-subset", "32", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
         "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "in fp32 (auto: this CPU has no native bf16)" in out.splitlines()[0]
    assert pq.read_table(tmp_path / "trials.parquet").column("precision").to_pylist() == ["fp32"]
    with pytest.raises(SystemExit) as stop:
        run(["--precision", "half", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "unknown --precision 'half'" in err[0]


def test_a_space_may_vary_precision_and_a_bad_value_is_refused():
    base = sweep_config.base_train_config(SweepConfig(preset="smoke", dataset="synthetic"))
    gamma = {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1}
    check_space({"gamma": gamma, "precision": {"values": ["fp32", "bf16"]}}, base)
    with pytest.raises(ConfigError, match=r"at precision 'fp8' the trainer refuses: unknown"):
        check_space({"gamma": gamma, "precision": {"values": ["fp32", "fp8"]}}, base)


@pytest.mark.parametrize("gpus, before", [(0, "fp32"), (1, "bf16")])
def test_a_sweep_recorded_before_precision_resumes_in_what_it_trained_in(tmp_path, gpus,
                                                                         before):
    """A recipe.json without the field, a sweep older than recipe.json, and a trial config
    saved without it: fp32 where the trials run on CPUs, bf16 where they get GPUs, named so,
    whatever auto means by the time they resume; the trial's key (its checkpoints) as it was."""
    from sweep.run import keep_recipe

    c = SweepConfig(preset="cpu", dataset="synthetic", results_dir=str(tmp_path), name="r",
                    gpus_per_trial=gpus)
    began = resolve(sweep_config.base_train_config(c), has_gpu=gpus > 0)
    assert began.precision == before  # what auto means today, recorded as such
    keep_recipe(c, began)
    path = c.folder / sweep_config.RECIPE_FILE
    assert json.loads(path.read_text())["precision"] == before
    recorded = json.loads(path.read_text())
    del recorded["precision"]
    path.write_text(json.dumps(recorded))
    today = began.replace(precision="bf16" if before == "fp32" else "fp32")  # auto changed
    assert keep_recipe(c.replace(resume=True), today).precision == before
    path.unlink()  # older than recipe.json
    assert keep_recipe(c.replace(resume=True), today).precision == before
    assert json.loads(path.read_text())["precision"] == before
    old_train = {k: v for k, v in json.loads(path.read_text()).items()
                 if k not in ("precision", *PER_TRIAL_FIELDS)}
    trial = {"kind": "compress", "gamma": 0.01, "train": old_train}
    device = "cuda" if gpus else "cpu"
    assert train_config(trial, device, threads=1).precision == before
    assert "precision" not in trial_key(trial)["train"]


def test_the_precision_benchmark_times_both_and_checks_how_bf16_sums(monkeypatch, capsys):
    """benchmarks.precision on a tiny step, for what it prints: both steps timed, the
    machine, and how a bf16 convolution here sums: its forward as in float32 everywhere, its
    gradients as the library does (docs/ablation.md, "bf16 against fp32")."""
    import importlib
    import sys

    monkeypatch.setattr(sys, "argv", ["benchmarks/precision.py", "--preset", "smoke",
                                      "--batch", "2", "--reps", "1"])
    importlib.import_module("benchmarks.precision").main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["fp32_step_s"] > 0 and printed["bf16_step_s"] > 0
    sums = printed["bf16_conv_equal_to_fp32_sums"]
    assert set(sums) == {"forward", "grad_input", "grad_weight"}
    assert sums["forward"] > 0.99  # on any CPU; the gradients' shares depend on its library
    assert all(0 <= share <= 1 for share in sums.values())
    assert set(printed["lscpu_bf16_flags"]) <= {"amx_bf16", "avx512_bf16"}
