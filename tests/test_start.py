"""A trained float network as the start: ``trainer.train --init-from``, and the sweeps that
train their float baseline first (``--start baseline``) or start from a user's file
(``sweep.run --init-from``), killed and resumed at each stage."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from sweep.checkpoints import baseline_file
from sweep.config import BASELINE
from sweep.search import GammaSearcher
from tests.test_sweep import read, start_sweep, sweep, wait_for
from trainer.cli import run as train_cli
from trainer.config import ConfigError, TrainConfig, resolve
from trainer.network import model_for, read_start
from trainer.quant import initial_exponent
from trainer.results import EPOCHS_FILE, TRIALS_FILE
from trainer.train import setup, train

SMOKE = ["--preset", "smoke", "--dataset", "synthetic"]  # 2 epochs; 1 from a trained start
SMALL = TrainConfig(preset="smoke", dataset="synthetic", synthetic_size=64, seed=3)


def float_file(path: Path, config: TrainConfig = SMALL, seed: int = 7) -> dict:
    """A float ResNet-9 with random (not initial) weights and BatchNorm statistics, saved as
    ``save_model`` saves one; returns its state dict."""
    config = resolve(config.replace(kind="float-baseline"))
    torch.manual_seed(seed)
    model = model_for(config)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.5 if "running_var" in name
                            else torch.randn_like(value) * 0.1)
    torch.save({"config": dataclasses.asdict(config), "layout": model.layout(),
                "model": model.state_dict()}, path)
    return model.state_dict()


@pytest.mark.parametrize("kind", ["compress", "fixed-bits"])
def test_the_float_weights_load_exactly_and_each_exponent_fits_its_channel(tmp_path, kind):
    saved = float_file(tmp_path / "model.pt")
    fixed = 4.0 if kind == "fixed-bits" else None
    config = resolve(SMALL.replace(kind=kind, fixed_bits=fixed, init_from=str(tmp_path)))
    state, _ = setup(config, None)
    loaded = state.model.state_dict()
    for name, value in saved.items():
        assert torch.equal(loaded[name].contiguous(), value.contiguous()), name
    bits = fixed or config.init_bits
    for name, layer in state.model.quant_layers():
        assert torch.equal(layer.b, torch.full_like(layer.b, bits)), name
        assert torch.equal(layer.e, initial_exponent(layer.weight, bits)), name
    # At 8 bits, the quantized start computes what the float network computes.
    if kind == "compress":
        float_model = model_for(resolve(SMALL.replace(kind="float-baseline")))
        float_model.load_state_dict(saved)
        x = torch.randn(16, 3, 32, 32)
        with torch.no_grad():
            want, got = float_model.eval()(x), state.model.eval()(x)
        assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_zero_epochs_measure_the_loaded_network_and_a_trained_start_compresses(tmp_path):
    """A float baseline trained, then measured from its file (0 epochs: same accuracy), and
    compressed from it in the preset's recipe for a trained start (smoke: 1 epoch)."""
    states = {}
    base = resolve(SMALL.replace(kind="float-baseline", synthetic_size=256))
    result = train(base, on_epoch=lambda m, s: states.update(s=s), verbose=False)
    from trainer.network import save_model

    save_model(tmp_path / "model.pt", states["s"])
    measured = train(base.replace(init_from=str(tmp_path / "model.pt"), epochs=0),
                     verbose=False)
    assert measured["test_accuracy"] == result["test_accuracy"]
    assert [m["epoch"] for m in measured["history"]] == [0]
    if Path("/proc/cpuinfo").is_file():  # the machine every time is measured on
        assert result["cpu_model"] and result["cpu_model"] in Path("/proc/cpuinfo").read_text()
    squeezed = train(SMALL.replace(synthetic_size=256, gamma=0.05,
                                   init_from=str(tmp_path / "model.pt")), verbose=False)
    assert squeezed["epochs"] == 1 and squeezed["init_from"] == str(tmp_path / "model.pt")
    assert squeezed["bits_fraction"] < 0.26  # quantized from 32 bits to 8 or fewer


def test_the_preset_recipe_for_a_trained_start_and_a_given_value_wins():
    assert resolve(TrainConfig(preset="cpu")).epochs == 5
    assert resolve(TrainConfig(preset="cpu", init_from="x")).epochs == 3
    assert resolve(TrainConfig(preset="cpu", init_from="x", epochs=4)).epochs == 4
    with pytest.raises(ConfigError, match="at least 1"):
        resolve(TrainConfig(preset="cpu", epochs=0))


def cut_file(path: Path) -> None:
    """A float model.pt whose first conv lost a channel (as no float baseline does)."""
    saved = torch.load(path, weights_only=True)
    saved["model"]["prep.conv.out_idx"] = torch.arange(1, 1 + len(saved["model"][
        "prep.conv.out_idx"]))
    torch.save(saved, path)


@pytest.mark.parametrize(("make", "args", "says"), [
    (None, [], "no such file"),
    (lambda p: p.write_text("not torch"), [], "cannot be read as a PyTorch file"),
    (lambda p: torch.save([1, 2], p), [], "neither a model.pt"),
    (lambda p: float_file(p, SMALL.replace(width=0.25)), [], "widths 16-32-64-128, this run "
                                                              "trains 8-16-32-64"),
    (lambda p: torch.save({"config": {"kind": "compress"}, "layout": {}, "model": {}}, p), [],
     "holds a compress network"),
    (lambda p: (float_file(p), cut_file(p)), [], "channels cut"),
    (lambda p: torch.save({"prep.conv.weight": torch.zeros(8, 3, 3, 3)}, p), [],
     "not a ResNet-9 of this project"),
    (float_file, ["--kind", "narrow-float", "--width", "0.0625"], "narrow-float trial has others"),
    (float_file, ["--floor"], "floor trial has others"),
])
def test_a_start_that_cannot_be_loaded_is_refused_on_one_line_before_training(
        tmp_path, capsys, make, args, says):
    path = tmp_path / "model.pt"
    if make is not None:
        make(path)
    with pytest.raises(SystemExit) as exit_:
        train_cli(["--preset", "smoke", "--dataset", "synthetic", "--init-from", str(path),
                   "--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_folder_and_a_plain_state_dict_are_starts_too(tmp_path):
    weights = float_file(tmp_path / "model.pt")
    config = resolve(SMALL.replace(init_from=str(tmp_path)))
    assert read_start(tmp_path, config).keys() == weights.keys()
    torch.save(weights, tmp_path / "plain.pt")
    assert all(torch.equal(read_start(tmp_path / "plain.pt", config)[k], v)
               for k, v in weights.items())


def test_compress_points_wait_for_their_seeds_baseline_and_go_when_it_ends(tmp_path):
    """--start baseline: references first; a compress point of a seed waits until that
    seed's baseline network is on disk (others go on), or until its trial ended without
    one (the point is then proposed, and its trial says why it cannot start)."""
    points = [{"kind": "float-baseline", "gamma": 0.0, "width": None},
              {"kind": "floor", "gamma": 0.0, "width": None},
              {"kind": "compress", "gamma": 0.01, "width": None}]
    search = GammaSearcher(points, [None, 1], refine=0, folder=str(tmp_path))
    search.set_start({"init_from": BASELINE, "epochs": 1}, None, 0)
    got = [search.suggest(f"t{i}") for i in range(4)]
    assert [(p["kind"], p["seed"]) for p in got] == [("float-baseline", None),
                                                    ("float-baseline", 1), ("floor", None),
                                                    ("floor", 1)]
    assert "start" not in got[0]
    assert search.suggest("t4") is None  # both compress points wait
    baseline_file(tmp_path, 1).parent.mkdir(parents=True)
    baseline_file(tmp_path, 1).write_bytes(b"")
    point = search.suggest("t4")
    assert (point["seed"], point["start"]) == (1, {"init_from": BASELINE, "epochs": 1})
    assert search.suggest("t5") is None
    search.on_trial_complete("t0", None, error=True)  # seed 0's baseline failed
    assert search.suggest("t5")["seed"] is None


@pytest.mark.parametrize(("args", "says"), [
    (["--start", "later"], "unknown --start 'later': choose scratch"),
    (["--start", "baseline", "--no-references"], "which --no-references leaves out"),
    (["--start", "baseline", "--init-from", "x.pt"], "not allowed with argument --start"),
    (["--init-from", "missing.pt"], "missing.pt: no such file"),
    (["--init-from", "model.pt", "--width", "0.25"], "this run trains 16-32-64-128"),
])
def test_a_sweep_that_cannot_start_from_a_trained_network_exits_2_before_ray(
        tmp_path, capsys, monkeypatch, args, says):
    from sweep.run import main

    monkeypatch.chdir(tmp_path)
    float_file(tmp_path / "model.pt")  # smoke's widths, 8-16-32-64
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        main([*SMOKE, *args, "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and says in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not results.exists()


# --- real sweeps on the shared `ray start` head (one CPU: trials one after another) ---


def kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_once(folder: Path, n_trials: int) -> pd.DataFrame:
    """Every trial finished once with each of its epochs once."""
    trials = read(folder, TRIALS_FILE)
    assert len(trials) == n_trials and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all(), trials[["kind", "status", "error"]]
    epochs = read(folder, EPOCHS_FILE)
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    per_trial = epochs.groupby("trial_id")["epoch"].max()
    for row in trials.itertuples():
        assert per_trial[row.trial_id] == row.epochs, row
    return trials


@pytest.mark.ray
def test_a_sweep_from_its_baseline_killed_at_each_stage_trains_the_baseline_once(
        shared_head, tmp_path):
    """--start baseline, killed while the baseline trains, then while a compress trial
    trains: the resumes finish every trial once, the baseline trained once, and every
    compress and fixed-bits trial started from its file in the trained-start recipe."""
    env, address = shared_head
    results = tmp_path / "results"
    args = [*SMOKE, "--num-samples", "2", "--start", "baseline", "--name", "b",
            "--results-dir", str(results), "--address", address]
    resume = ["--resume", "--name", "b", "--results-dir", str(results), "--address", address]
    folder = results / "b"
    proc = start_sweep(env, tmp_path, tmp_path / "1.log", *args)
    try:  # the baseline runs first, alone: kill it after its first epoch
        wait_for(folder / EPOCHS_FILE, lambda t: len(t) >= 1, proc)
    finally:
        kill(proc)
    assert not baseline_file(folder, 0).exists()
    proc = start_sweep(env, tmp_path, tmp_path / "2.log", *resume)
    try:
        before = wait_for(folder / TRIALS_FILE, lambda t: (
            (t["kind"] == "compress") & t["test_accuracy"].notna()).any(), proc)
    finally:
        kill(proc)
    made = baseline_file(folder, 0).stat().st_mtime_ns
    out = sweep(env, tmp_path, *resume, "--start", "baseline")  # a repeated flag is fine
    trials = assert_once(folder, 4).set_index("kind")
    baseline = before.set_index("kind").loc["float-baseline"]
    assert trials.loc["float-baseline", "train_time_s"] == baseline["train_time_s"]
    assert baseline_file(folder, 0).stat().st_mtime_ns == made  # not written again
    compress = trials.loc[["compress"]]
    assert (compress["init_from"] == str(baseline_file(folder, 0))).all()
    assert (compress["epochs"] == 1).all() and trials.loc["float-baseline", "epochs"] == 2
    assert pd.isna(trials.loc["floor", "init_from"])
    assert "start from the float baseline" in (tmp_path / "1.log").read_text()
    assert "resuming" in out.stdout


@pytest.mark.ray
def test_a_sweep_from_a_users_network_measures_it_and_starts_every_trial_from_it(
        shared_head, tmp_path):
    env, address = shared_head
    float_file(tmp_path / "model.pt", SMALL.replace(seed=0))
    results = tmp_path / "results"
    sweep(env, tmp_path, *SMOKE, "--num-samples", "1", "--init-from", "model.pt",
          "--name", "u", "--results-dir", str(results), "--address", address)
    trials = read(results / "u", TRIALS_FILE).set_index("kind")
    path = str(tmp_path / "model.pt")
    assert trials.loc["float-baseline", "epochs"] == 0  # measured, not trained
    assert trials.loc["float-baseline", "init_from"] == path
    assert trials.loc["compress", "init_from"] == path and trials.loc["compress", "epochs"] == 1


def test_a_trial_whose_baseline_left_no_network_fails_saying_so(tmp_path):
    from sweep.trainable import with_baseline_file

    config = resolve(SMALL.replace(init_from=BASELINE))
    with pytest.raises(ConfigError, match="float baseline of seed 3, which ended without"):
        with_baseline_file(config, tmp_path)
    path = baseline_file(tmp_path, 3)
    path.parent.mkdir(parents=True)
    float_file(path)
    assert with_baseline_file(config, tmp_path).init_from == str(path)
    assert with_baseline_file(config.replace(init_from=None), tmp_path).init_from is None


def test_references_are_borrowed_by_the_recipe_of_the_baseline_a_trained_start_began_from():
    """A sweep whose compress trials started from its float baseline (3 epochs on top of 5)
    is compared with references trained from scratch in the baseline's recipe (5 epochs)."""
    from analysis.load import recipe_trials

    rows = pd.DataFrame({"kind": ["float-baseline", "compress", "compress", "floor"],
                         "epochs": [5, 3, 3, 5], "init_from": [None, "b.pt", "b.pt", None]})
    assert list(recipe_trials(rows).index) == [0]
    rows.loc[2, "init_from"] = None  # one from scratch: the sweep's recipe is its own
    assert list(recipe_trials(rows).index) == [2]
    assert list(recipe_trials(rows.drop(columns="init_from")).index) == [1, 2]  # older rows
