"""sweep: bad input, the Parquet records, checkpoint choice; and real Ray sweeps.

The tests marked ``ray`` run real Ray sweeps (synthetic data, smoke trials) in
subprocesses, each cluster with its own HOME (so Ray's token lives there) and its own Ray
temp folder; afterwards every process that carries that folder in its environment is
killed, so no Ray process outlives its test (or, for the ``ray start`` head of
``shared_head`` in ``tests/conftest.py``, its test process) and nobody else's Ray is
touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from sweep import cluster
from sweep import config as sweep_config
from sweep.cli import parse
from sweep.cluster import Cluster, dashboard_message, trial_resources
from sweep.config import GAMMA_RANGE, REFERENCES, SweepConfig, gamma_range, with_gamma_range
from sweep.run import describe_references, main
from sweep.store import epoch_rows, layer_rows, new_record, trial_row
from sweep.trainable import FAIL_ENV, META_FILE, STATE_FILE, latest, load_latest
from tests.conftest import REPO
from trainer.config import ConfigError, TrainConfig, resolve
from trainer.results import EPOCHS_FILE, LAYERS_FILE, TRIALS_FILE

SMOKE = ["--preset", "smoke", "--dataset", "synthetic", "--epochs", "2"]
N_LAYERS = 9  # rows per trial in layers.parquet
RAY = str(Path(sys.executable).parent / "ray")  # the CLI of this Python's Ray, venv or not


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- bad input: one line, exit 2, nothing written -------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--num-samples", "0"], "--num-samples must be at least 1"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--refine", "-1"], "--refine must be >= 0"),
    (["--gamma-min", "0"], "--gamma-min must be > 0"),
    (["--gamma-min", "0.1", "--gamma-max", "0.01"], "must be above --gamma-min"),
    (["--preset", "cpu", "--gamma-min", "2"], "the cpu preset's range is 0.0003 to 0.3"),
    (["--gamma-max", "-1"], "--gamma-max must be > 0"),
    (["--resume", "--name", "nope"], "no sweep named 'nope'"),
    (["--resume"], "no sweep to resume"),
    (["--address", f"127.0.0.1:{free_port()}"], "no Ray cluster answers at 127.0.0.1:"),
    (["--address", "nonsense"], "is not host:port"),
    (["--no-dashboard", "--address", "127.0.0.1:6379"], "--no-dashboard is for the cluster"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--num-samples", "many"], "invalid int value"),
    (["--name", "a/b"], "--name must be a plain folder name"),
    (["--references", "all"], "unknown --references 'all': choose default"),
    (["--references", "full", "--no-references"], "not allowed with argument --references"),
    (["--export", "all"], "unknown --export 'all': choose front"),
    (["--min-bits", "20"], "--min-bits must be in [0, 16]"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, says):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        main([*args, "--dataset", "synthetic", "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert says in err and err.startswith("scnn sweep: error:")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not results.exists()


def test_no_dashboard_with_ray_address_from_the_environment_exits_2(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # refused before Ray is reached
    with pytest.raises(SystemExit) as stop:
        main(["--no-dashboard", "--dataset", "synthetic", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("scnn sweep: error: --no-dashboard is for the cluster a sweep starts")
    assert not (tmp_path / "r").exists()


def test_a_results_dir_that_cannot_be_made_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as stop:
        main(["--dataset", "synthetic", "--results-dir", str(tmp_path / "file" / "results")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "--results-dir" in err and "is a file, not a folder" in err


def test_a_data_dir_without_cifar10_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--data-dir", str(tmp_path), "--results-dir", str(tmp_path / "results")])
    assert stop.value.code == 2
    assert "does not hold CIFAR-10" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def fake_cifar10(folder: Path, broken: str = "") -> Path:
    """A cifar-10-batches-py folder of tiny batches; ``broken`` names one that is garbage."""
    import pickle

    import numpy as np

    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = {b"data": np.zeros((4, 3 * 32 * 32), np.uint8), b"labels": [0, 1, 2, 3]}
        (batches / name).write_bytes(b"not a pickle" if name == broken else pickle.dumps(data))
    return folder


def test_data_the_trainer_rejects_the_sweep_rejects_before_ray_and_writes_nothing(tmp_path,
                                                                                   capsys):
    from trainer.cli import run as train

    data = fake_cifar10(tmp_path / "data", broken="data_batch_3")
    with pytest.raises(SystemExit) as stop:
        train(["--preset", "smoke", "--data-dir", str(data), "--epochs", "1"])
    trainer_err = capsys.readouterr().err
    assert stop.value.code == 2 and "data_batch_3" in trainer_err
    with pytest.raises(SystemExit) as stop:
        main(["--preset", "smoke", "--data-dir", str(data), "--results-dir",
              str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("scnn sweep: error: cannot read ") and "data_batch_3" in err
    assert err.split("error: ", 1)[1] == trainer_err.split("error: ", 1)[1]  # the same words
    assert not (tmp_path / "results").exists()
    import ray

    assert not ray.is_initialized()


def test_mlflow_without_uri_is_the_sweeps_sqlite_store_and_resume_keeps_it(tmp_path, capsys):
    c, given = parse(["--mlflow", "--name", "m", "--results-dir", str(tmp_path),
                      "--dataset", "synthetic"])
    c = sweep_config.prepare(c, given)
    assert c.mlflow == f"sqlite:///{tmp_path / 'm' / 'mlflow.db'}"
    assert parse(["--mlflow", "http://mlflow:5000"])[0].mlflow == "http://mlflow:5000"
    assert parse([])[0].mlflow is None
    other = sweep_config.prepare(*parse(["--mlflow", "sqlite:///db/x.db", "--name", "o",
                                         "--dataset", "synthetic",
                                         "--results-dir", str(tmp_path)]))
    assert other.mlflow == f"sqlite:///{Path.cwd() / 'db' / 'x.db'}"
    sweep_config.save(c)
    resumed = sweep_config.prepare(*parse(["--resume", "--results-dir", str(tmp_path)]))
    assert resumed.mlflow == c.mlflow
    again = sweep_config.prepare(*parse(["--resume", "--mlflow", "--results-dir",
                                         str(tmp_path)]))
    assert again.mlflow == c.mlflow  # --mlflow alone names the same store
    sweep_config.save(SweepConfig(dataset="synthetic", results_dir=str(tmp_path), name="plain"))
    with pytest.raises(SystemExit) as stop:
        main(["--resume", "--name", "plain", "--results-dir", str(tmp_path), "--mlflow"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "was started without --mlflow" in err


def test_a_resumed_trial_logs_into_the_run_a_kill_cut_short_while_logging_its_params(
        tmp_path):
    """Ray starts a trial's MLflow run, then logs its parameters: a kill in between leaves a
    run with some of them, which the resumed trial takes up; a run with other values does
    not count (MLflow refuses to change a parameter)."""
    from mlflow.tracking import MlflowClient
    from ray.tune.experiment.trial import Trial
    from ray.tune.utils import flatten_dict

    from sweep.loggers import MLflowCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = Trial("run_trial", config={"train": {"preset": "smoke", "epochs": 2},
                                       "kind": "compress", "gamma": 0.01},
                  trial_id="abc", stub=True)
    other = Trial("run_trial", config={"train": {"preset": "smoke", "epochs": 2},
                                       "kind": "compress", "gamma": 0.02},
                  trial_id="abd", stub=True)
    callback = MLflowCallback(uri, "s", store=None)
    callback.setup()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("s").experiment_id
    params = {k: str(v) for k, v in flatten_dict(trial.config).items()}
    for t, logged in ((trial, dict(list(params.items())[:2])), (other, {"gamma": "0.5"})):
        run = client.create_run(experiment, tags={"trial_name": str(t), "sweep": "s"})
        for k, v in logged.items():
            client.log_param(run.info.run_id, k, v)
    for t in (trial, other):
        callback.log_trial_start(t)
    runs = client.search_runs([experiment])
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["trial_name"], []).append(run)
    assert len(by_trial[str(trial)]) == 1  # taken up, its parameters completed
    assert by_trial[str(trial)][0].data.params == params
    assert len(by_trial[str(other)]) == 2  # other values: a run of its own


def test_resume_keeps_the_saved_search_and_refuses_to_change_it(tmp_path, capsys):
    saved = SweepConfig(num_samples=3, dataset="synthetic", results_dir=str(tmp_path),
                        name="old")
    sweep_config.save(saved)
    with pytest.raises(SystemExit) as stop:
        main(["--resume", "--name", "old", "--results-dir", str(tmp_path), "--num-samples", "5"])
    assert stop.value.code == 2
    assert "--num-samples 3" in capsys.readouterr().err
    resumed = sweep_config.prepare(SweepConfig(resume=True, results_dir=str(tmp_path)))
    assert (resumed.name, resumed.num_samples, resumed.dataset) == ("old", 3, "synthetic")
    with pytest.raises(ConfigError, match="already exists"):
        sweep_config.prepare(SweepConfig(name="old", results_dir=str(tmp_path)))


def test_export_is_saved_kept_by_resume_and_may_be_turned_on_there(tmp_path):
    assert parse(["--export", "front"])[0].export == "front"
    sweep_config.save(SweepConfig(num_samples=3, dataset="synthetic", export="front",
                                  results_dir=str(tmp_path), name="old"))
    saved = json.loads((tmp_path / "old" / sweep_config.SWEEP_FILE).read_text())
    assert saved["export"] == "front"
    resumed = sweep_config.prepare(SweepConfig(resume=True, results_dir=str(tmp_path)))
    assert resumed.export == "front"
    off = sweep_config.prepare(SweepConfig(resume=True, export="none",
                                           results_dir=str(tmp_path)), {"export"})
    assert off.export == "none"  # not part of the search: the new value wins, and is saved


def test_references_default_full_or_none_and_no_references_is_none():
    assert parse([]) == (SweepConfig(references="default"), frozenset())
    assert parse(["--references", "full"]) == (SweepConfig(references="full"),
                                               frozenset({"references"}))
    assert parse(["--no-references"])[0].references == "none"
    assert parse(["--references", "none"])[0].references == "none"
    counts = {r: SweepConfig(num_samples=3, references=r).num_trials for r in REFERENCES}
    assert counts == {"default": 3 + 2, "full": 3 + 2 + 4 + 5, "none": 3}


@pytest.mark.parametrize("saved, loaded", [(True, "default"), (False, "none")])
def test_a_sweep_json_of_older_code_with_boolean_references_resumes(tmp_path, capsys, saved,
                                                                    loaded):
    sweep_config.save(SweepConfig(num_samples=3, dataset="synthetic", results_dir=str(tmp_path),
                                  name="old"))
    path = tmp_path / "old" / sweep_config.SWEEP_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "references": saved}))
    resumed = sweep_config.prepare(SweepConfig(resume=True, results_dir=str(tmp_path)))
    assert (resumed.references, resumed.num_trials) == (loaded, 3 + 2 * (loaded == "default"))
    with pytest.raises(SystemExit) as stop:
        main(["--resume", "--results-dir", str(tmp_path), "--references", "full"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert f"was started with --references {loaded}" in err
    with pytest.raises(SystemExit) as stop:  # nor seeds or refine γs
        main(["--resume", "--results-dir", str(tmp_path), "--seeds", "2"])
    assert stop.value.code == 2 and "was started with --seeds 1" in capsys.readouterr().err


def test_help_explains_the_sweep(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0
    for words in ("--num-samples", "--resume", "--address", "log-uniformly", "dashboard",
                  "--seeds N", "--refine K", "widest gap",
                  "--references {default,full,none}", "--no-references", "narrower float",
                  "--mlflow [URI]", "tensorboard --logdir"):
        assert words in text
    assert "--fail-gamma-above" not in text


# --- pure parts ------------------------------------------------------------------------------

def epoch(n: int, acc: float) -> dict:
    return {"epoch": n, "train_loss": 1.0, "test_accuracy": acc, "size_bits": 10.0,
            "bits_fraction": 0.5, "weights_kept_fraction": 0.9, "mean_bits": 4.0,
            "channels_kept": 7, "epoch_time_s": 1.0, "time_total_s": float(n), "lr": 0.1}


def test_records_keep_each_epoch_once_and_the_summary_wins():
    config = {"kind": "compress", "gamma": 0.01,
              "train": {"seed": 0, "preset": "smoke", "width": 0.125, "epochs": 2}}
    record = new_record(config)
    record["status"] = "RUNNING"
    for n, acc in ((1, 0.3), (2, 0.4), (2, 0.5)):  # epoch 2 re-reported after a resume
        record["epochs"][n] = epoch(n, acc)
    assert [r["test_accuracy"] for r in epoch_rows("t", record)] == [0.3, 0.5]
    row = trial_row("s", "t", record)
    assert (row["gamma"], row["epochs"], row["test_accuracy"], row["status"]) == (
        0.01, 2, 0.5, "RUNNING")
    assert (row["kind"], row["width"], row["full_width"], row["fixed_bits"]) == (
        "compress", 0.125, 0.125, None)
    assert layer_rows("t", record) == []
    history = [epoch(1, 0.35), epoch(2, 0.55)]
    record["summary"] = {"kind": "compress", "gamma": 0.01, "test_accuracy": 0.55,
                         "history": history, "layers": [{"layer": "prep"}]}
    record["status"] = "TERMINATED"
    assert [r["test_accuracy"] for r in epoch_rows("t", record)] == [0.35, 0.55]
    assert trial_row("s", "t", record)["test_accuracy"] == 0.55
    assert layer_rows("t", record) == [{"trial_id": "t", "layer": "prep"}]


def test_reference_rows_carry_kind_width_and_bits_before_and_after_they_finish():
    train = {"seed": 0, "preset": "smoke", "width": 0.5, "full_width": None,
             "fixed_bits": None, "epochs": 2}
    narrow = new_record({"kind": "narrow-float", "gamma": 0.0, "width": 0.125,
                         "full_width": 0.5, "fixed_bits": None, "train": train})
    fixed = new_record({"kind": "fixed-bits", "gamma": 0.0, "width": None,
                        "full_width": None, "fixed_bits": 4.0, "train": train})
    columns = ("kind", "width", "full_width", "fixed_bits", "status")
    assert [tuple(trial_row("s", "t", r)[k] for k in columns) for r in (narrow, fixed)] == [
        ("narrow-float", 0.125, 0.5, None, "PENDING"), ("fixed-bits", 0.5, 0.5, 4.0, "PENDING")]
    # The trainer's summary has no full_width: it still comes from the config.
    narrow["summary"] = {"kind": "narrow-float", "width": 0.125, "fixed_bits": None,
                         "test_accuracy": 0.5, "history": [], "layers": []}
    narrow["status"] = "TERMINATED"
    assert tuple(trial_row("s", "t", narrow)[k] for k in columns) == (
        "narrow-float", 0.125, 0.5, None, "TERMINATED")


def test_min_bits_reaches_every_compress_trial_and_its_row():
    from sweep.space import train_config

    c = SweepConfig(num_samples=2, dataset="synthetic", preset="smoke", min_bits=0.0)
    configs = proposed(c)
    built = [resolve(train_config(t, "cpu", 1), has_gpu=False) for t in configs]
    assert [b.min_bits for b in built if b.kind == "compress"] == [0.0, 0.0]
    assert trial_row("s", "t", new_record(configs[-1]))["min_bits"] == 0.0
    default = proposed(SweepConfig(num_samples=1, dataset="synthetic", preset="smoke"))
    assert resolve(train_config(default[-1], "cpu", 1), has_gpu=False).min_bits == 3.0 \
        == TrainConfig().min_bits
    # a trial saved by a sweep begun before the floor (and skip-one-bit) resumes without them
    old = {**default[-1], "train": {k: v for k, v in default[-1]["train"].items()
                                    if k not in ("min_bits", "skip_one_bit")}}
    resumed = resolve(train_config(old, "cpu", 1), has_gpu=False)
    assert (resumed.min_bits, resumed.skip_one_bit) == (0.0, False)


def test_a_trial_stopped_inside_a_weakref_callback_prints_no_traceback(monkeypatch, capsys):
    """What a stopped sweep's workers printed once under load: Ray's SIGTERM handler raised
    SystemExit inside a weakref callback, printed as "Exception ignored ... Traceback"."""
    import weakref

    from sweep.trainable import quiet_stop

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    quiet_stop()

    class Thing:
        pass

    def raising(error):
        def callback(ref):
            raise error
        return callback

    for error in (SystemExit(1), ValueError("a real fault")):
        thing = Thing()
        ref = weakref.ref(thing, raising(error))  # noqa: F841  (called when thing dies)
        del thing
    said = capsys.readouterr().err
    assert "SystemExit" not in said and "ValueError: a real fault" in said


def test_the_latest_checkpoint_of_the_same_trial_is_chosen(tmp_path):
    key = {"kind": "compress", "gamma": 0.01, "train": {"epochs": 5}}
    other = {**key, "gamma": 0.02}

    def checkpoint(name: str, n: int, trial: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True)
        (folder / META_FILE).write_text(json.dumps({"epoch": n, "trial": trial}))
        return folder

    tune_own = checkpoint("a/checkpoint_000001", 2, key)
    orphan = checkpoint("b/checkpoint_000003", 4, key)  # a run Tune's snapshot forgot
    foreign = checkpoint("c/checkpoint_000004", 5, other)
    broken = tmp_path / "d/checkpoint_000009"
    broken.mkdir(parents=True)
    (broken / META_FILE).write_text("{")  # cut short by a kill
    assert latest([tune_own, foreign, broken, orphan], key) == [(4, orphan), (2, tune_own)]
    assert latest([foreign], key) == []


def test_a_minimal_ray_runs_without_a_dashboard_and_says_how_to_get_one(monkeypatch):
    # `pip install ray` (not ray[default]) cannot start a dashboard: ray.init must not ask for
    # one (it stopped the GPU check's sweep), and the sweep says what it runs without.
    monkeypatch.setattr(cluster, "has_dashboard", lambda: False)
    message = dashboard_message(Cluster(True, "", True))
    assert message.splitlines()[1] == "  it runs no dashboard: install ray[default] for one"
    attached = dashboard_message(Cluster(False, "", True)).splitlines()[1]
    assert attached == "  it runs no dashboard"  # someone else's cluster: no advice
    monkeypatch.setattr(cluster, "has_dashboard", lambda: True)
    shown = dashboard_message(Cluster(True, "127.0.0.1:8265", True))
    assert "Ray dashboard: http://127.0.0.1:8265" in shown


def test_resources_default_to_one_cpu_or_a_quarter_gpu_and_must_fit():
    cpu_only = {"CPU": 8.0}
    assert trial_resources(SweepConfig(), cpu_only, [cpu_only]) == (1.0, 0.0)
    gpus = {"CPU": 16.0, "GPU": 2.0}
    assert trial_resources(SweepConfig(), gpus, [gpus]) == (2.0, 0.25)
    assert trial_resources(SweepConfig(gpus_per_trial=1), gpus, [gpus]) == (4.0, 1)
    with pytest.raises(ConfigError, match="--gpus-per-trial"):
        trial_resources(SweepConfig(gpus_per_trial=0.5), cpu_only, [cpu_only])
    with pytest.raises(ConfigError, match="--cpus-per-trial"):
        trial_resources(SweepConfig(cpus_per_trial=12), cpu_only, [cpu_only])


def sampled(c: SweepConfig) -> list[tuple[str, float]]:
    """The (kind, gamma) of every trial the sweep's seeded searcher proposes, in order."""
    from sweep.space import sampled_trials

    return sampled_trials(with_gamma_range(c, c.preset),
                          resolve(sweep_config.base_train_config(c), has_gpu=False))


def proposed(c: SweepConfig) -> list[dict]:
    """The Tune config of every trial the sweep's seeded searcher proposes, in order."""
    from sweep.space import sampled_configs

    return sampled_configs(with_gamma_range(c, c.preset),
                           resolve(sweep_config.base_train_config(c), has_gpu=False))


def test_the_default_gamma_range_is_the_presets_and_a_given_bound_wins():
    assert gamma_range("cpu") == (3e-4, 0.3) and gamma_range("paper") == GAMMA_RANGE
    c = SweepConfig(gamma_max=0.5)
    assert (with_gamma_range(c, "cpu").gamma_min, with_gamma_range(c, "cpu").gamma_max) == (
        3e-4, 0.5)
    assert with_gamma_range(c, "smoke").gamma_min == GAMMA_RANGE[0]
    given = SweepConfig(gamma_min=0.02, gamma_max=0.04)
    assert with_gamma_range(given, "cpu") == given


def test_the_same_seed_draws_the_same_gammas_and_references_come_first():
    c = SweepConfig(num_samples=5, dataset="synthetic", preset="smoke")
    first, again = sampled(c), sampled(c)
    assert first == again
    assert first[:2] == [("float-baseline", 0.0), ("floor", 0.0)]
    gammas = [g for _, g in first[2:]]
    low, high = GAMMA_RANGE
    assert len(set(gammas)) == 5 and all(low <= g <= high for g in gammas)
    assert [g for _, g in sampled(c.replace(seed=1))[2:]] != gammas


FULL_REFERENCES = [  # (kind, width, full_width, fixed_bits) of --references full, width 0.5
    ("float-baseline", None, None, None), ("floor", None, None, None),
    ("narrow-float", 0.0625, 0.5, None), ("narrow-float", 0.125, 0.5, None),
    ("narrow-float", 0.25, 0.5, None), ("narrow-float", 0.375, 0.5, None),
    *[("fixed-bits", None, None, float(b)) for b in (2, 3, 4, 6, 8)]]


def test_full_references_come_first_at_their_widths_and_bits_then_the_same_gammas():
    c = SweepConfig(num_samples=3, dataset="synthetic", preset="smoke", width=0.5,
                    references="full")
    configs = proposed(c)
    assert len(configs) == c.num_trials == 3 + len(FULL_REFERENCES)
    refs, rest = configs[:len(FULL_REFERENCES)], configs[len(FULL_REFERENCES):]
    assert [(t["kind"], t["width"], t["full_width"], t["fixed_bits"]) for t in refs] == (
        FULL_REFERENCES)
    assert all(t["gamma"] == 0.0 for t in refs)
    assert all(t["train"]["width"] == 0.5 for t in configs)  # the sweep's, shared
    assert [(t["kind"], t["width"], t["fixed_bits"]) for t in rest] == [
        ("compress", None, None)] * 3
    assert [t["gamma"] for t in rest] == [g for _, g in sampled(c.replace(references="none"))]
    # Without --width the sweep's width is the preset's (smoke: 0.125).
    narrow = [t for t in proposed(c.replace(width=None)) if t["kind"] == "narrow-float"]
    assert [(t["width"], t["full_width"]) for t in narrow] == [
        (0.125 * f, 0.125) for f in (1 / 8, 1 / 4, 1 / 2, 3 / 4)]


def test_reference_trials_build_valid_train_configs_and_keys_that_tell_them_apart():
    from sweep.space import train_config, trial_key

    configs = proposed(SweepConfig(num_samples=1, dataset="synthetic", preset="smoke",
                                          width=0.5, references="full"))
    built = [resolve(train_config(t, "cpu", 1), has_gpu=False) for t in configs]
    assert [(b.kind, b.width if b.kind == "narrow-float" else None, b.full_width, b.fixed_bits)
            for b in built[:-1]] == FULL_REFERENCES
    assert all(b.width == 0.5 for b in built if b.kind != "narrow-float")
    assert all(b.gamma == 0.0 for b in built[:-1]) and built[-1].kind == "compress"
    keys = [json.dumps(trial_key(t), sort_keys=True) for t in configs]
    assert len(set(keys)) == len(keys)  # no trial resumes from another's checkpoint
    assert set(trial_key(configs[0])) == {"kind", "gamma", "train"}  # as before references
    assert trial_key(configs[2])["width"] == 0.0625


def test_the_start_up_line_counts_the_reference_trials():
    assert describe_references("full") == (
        " + 11 reference trials (float-baseline, floor, 4 narrow-float, 5 fixed-bits)")
    assert describe_references("default") == " + 2 reference trials (float-baseline, floor)"
    assert describe_references("none") == ""


def test_a_resumed_sweep_trains_with_the_recipe_it_began_with_not_todays_preset(tmp_path,
                                                                                capsys):
    from sweep.run import keep_recipe

    c = SweepConfig(preset="cpu", dataset="synthetic", results_dir=str(tmp_path), name="r")
    began = resolve(sweep_config.base_train_config(c), has_gpu=False)
    assert keep_recipe(c, began) == began  # a new sweep records its recipe
    recorded = json.loads((c.folder / sweep_config.RECIPE_FILE).read_text())
    assert recorded["lr"] == began.lr and recorded["gamma_ramp"] == began.gamma_ramp
    # Later code changed the preset: the resume keeps the recipe and says what differs.
    assert began.gamma_ramp == 0.5  # the cpu preset's since cpu-ramp
    today = began.replace(lr=began.lr / 2, gamma_ramp=0.25)
    resumed = keep_recipe(c.replace(resume=True), today)
    assert resumed == began
    assert capsys.readouterr().out.strip().endswith("differs in lr, gamma_ramp")
    # A field this code no longer knows is dropped; one it added since takes today's value,
    # but for a field whose preset value changed what training did (ADDED_SINCE_RECIPE):
    # a recipe recorded before the cpu preset's ration trained without one (1).
    assert began.ration == 0.5  # the cpu preset's since cpu-ration
    recorded["retired_field"] = 1
    del recorded["gamma_ramp"], recorded["ration"]
    (c.folder / sweep_config.RECIPE_FILE).write_text(json.dumps(recorded))
    assert keep_recipe(c.replace(resume=True), today) == began.replace(gamma_ramp=0.25,
                                                                        ration=1.0)
    # A sweep older than the record began before the cpu preset's ramp: it resumes with
    # today's recipe but for that, says so, and keeps that recipe from now on.
    (c.folder / sweep_config.RECIPE_FILE).unlink()
    capsys.readouterr()
    before = began.replace(gamma_ramp=0.0, ration=1.0)
    assert keep_recipe(c.replace(resume=True), began) == before
    assert capsys.readouterr().out.strip().endswith("differs in gamma_ramp, ration")
    assert keep_recipe(c.replace(resume=True), today) == before
    # A new sweep records its own recipe over whatever a dead one left in the folder.
    assert keep_recipe(c, began) == began
    assert json.loads((c.folder / sweep_config.RECIPE_FILE).read_text())["lr"] == began.lr
    # A record that is not JSON stops the resume with one line, before any trial trains.
    (c.folder / sweep_config.RECIPE_FILE).write_text("{cut short")
    with pytest.raises(ConfigError, match=r"cannot read .*recipe\.json .*delete it to resume"):
        keep_recipe(c.replace(resume=True), today)


def test_checkpoints_load_without_unpickling_code_and_resume(tmp_path, capsys):
    import pickle

    import torch

    from trainer.train import train

    config = TrainConfig(preset="smoke", dataset="synthetic", epochs=1, synthetic_size=256,
                         threads=1)
    states = []
    train(config, on_epoch=lambda m, s: states.append(s.state_dict()), verbose=False)
    key = {"kind": "compress", "gamma": 0.01}

    def checkpoint(name: str, epoch: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / META_FILE).write_text(json.dumps({"epoch": epoch, "trial": key}))
        return folder

    good = checkpoint("good", 1)
    torch.save(states[-1], good / STATE_FILE)
    evil = checkpoint("evil", 2)  # the latest, but it would run code when unpickled

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    (evil / STATE_FILE).write_bytes(pickle.dumps({"config": Payload()}))
    loaded = load_latest([evil, good], key)
    assert "this ran" not in capsys.readouterr().out
    assert loaded is not None and loaded["epoch"] == 1
    result = train(config.replace(epochs=2), resume=loaded, verbose=False)
    assert [m["epoch"] for m in result["history"]] == [1, 2]


def finish_trial(search, trial_id: str, accuracy: float, bits: float) -> None:
    """What Tune tells the searcher when a trial's last report was its summary."""
    search.on_trial_complete(trial_id, {"test_accuracy": accuracy, "bits_fraction": bits,
                                        "layers": []})


def test_seeds_train_every_point_n_times_with_their_own_seed_and_key():
    from sweep.space import train_config, trial_key

    c = SweepConfig(num_samples=2, seeds=3, seed=5, dataset="synthetic", preset="smoke")
    configs = proposed(c)
    assert len(configs) == c.num_trials == (2 + 2) * 3
    built = [resolve(train_config(t, "cpu", 1), has_gpu=False) for t in configs]
    assert [(b.kind, b.seed) for b in built[:6]] == [
        ("float-baseline", 5), ("float-baseline", 6), ("float-baseline", 7),
        ("floor", 5), ("floor", 6), ("floor", 7)]
    gammas = [t["gamma"] for t in configs[6:]]
    assert gammas[:3] == [gammas[0]] * 3 and gammas[3:] == [gammas[3]] * 3
    assert [b.seed for b in built[6:]] == [5, 6, 7, 5, 6, 7]
    keys = [json.dumps(trial_key(t), sort_keys=True) for t in configs]
    assert len(set(keys)) == len(keys)
    assert "seed" not in trial_key(configs[0])  # the first seed's key is what it always was
    assert [trial_row("s", "t", new_record(t))["seed"] for t in configs[6:9]] == [5, 6, 7]
    # One seed: the same γs as the first seed of a sweep with more.
    assert [g for _, g in sampled(c.replace(seeds=1))[2:]] == gammas[::3]


def test_refine_waits_for_the_samples_then_splits_the_widest_gap_and_restores(tmp_path):
    from sweep.search import REFINE_FILE, GammaSearcher
    from sweep.space import searcher

    c = SweepConfig(num_samples=3, seeds=2, refine=2, references="none", dataset="synthetic",
                    preset="smoke", results_dir=str(tmp_path), name="r")
    train = resolve(sweep_config.base_train_config(c), has_gpu=False)
    limiter = searcher(with_gamma_range(c, "smoke"), train)
    search = limiter.searcher
    (tmp_path / "r").mkdir()
    first = [search.suggest(f"t{i}") for i in range(6)]
    assert search.suggest("t6") is None  # the samples have not ended
    gammas = sorted({p["gamma"] for p in first})
    # Larger gamma: smaller and less accurate; the widest gap lies between the two largest.
    result = {gammas[0]: (0.9, 0.5), gammas[1]: (0.85, 0.2), gammas[2]: (0.5, 0.01)}
    for i, p in enumerate(first):
        finish_trial(search, f"t{i}", *result[p["gamma"]])
    refine = [search.suggest("u0"), search.suggest("u1")]
    expected = math.sqrt(gammas[1] * gammas[2])
    assert [(p["gamma"], p["seed"], p["refined"]) for p in refine] == [
        (pytest.approx(expected), None, True), (pytest.approx(expected), 1, True)]
    assert (tmp_path / "r" / REFINE_FILE).read_text() == f"{refine[0]['gamma']!r}\n"
    assert search.suggest("u2") is None  # the refine gamma's seeds have not ended
    saved = tmp_path / "searcher.pkl"
    limiter.save(str(saved))
    again = GammaSearcher([], [None, 1], 0, folder=str(tmp_path / "r"))
    again.restore(str(saved))
    assert again.get_state() == search.get_state()
    for s in (search, again):
        finish_trial(s, "u0", 0.7, 0.05)
        s.on_trial_complete("u1", None, error=True)  # a failed seed: left out of the mean
    second = [again.suggest("v0"), again.suggest("v1")]
    assert second[0]["gamma"] == second[1]["gamma"] != expected
    assert again.suggest("v2") is None
    for i in range(2):
        finish_trial(again, f"v{i}", 0.6, 0.03)
    from ray.tune.search import Searcher
    assert again.suggest("v3") == Searcher.FINISHED
    # Killed before Tune's snapshot held the second gamma: refine.txt gives it again.
    record = [float(g) for g in (tmp_path / "r" / REFINE_FILE).read_text().split()]
    assert record == [refine[0]["gamma"], second[0]["gamma"]]
    assert search.suggest("w0")["gamma"] == second[0]["gamma"]


def test_the_gammas_a_seed_draws_are_those_of_the_published_sweeps():
    """docs/cpu-refs (seed 0, cpu range) was drawn by Tune's BasicVariantGenerator."""
    from ray import tune
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng

    from sweep.search import draw_gammas

    drawn = draw_gammas(8, 3e-3, 0.3, 0)
    assert drawn == pytest.approx([0.05637, 0.010392, 0.003623, 0.003237, 0.126958, 0.200739,
                                   0.049022, 0.086321], rel=1e-4)
    rng, domain = _BackwardsCompatibleNumpyRng(7), tune.loguniform(1e-3, 1.0)
    assert draw_gammas(5, 1e-3, 1.0, 7) == [float(domain.sample(random_state=rng))
                                            for _ in range(5)]


def test_the_searcher_keeps_to_max_concurrent():
    from sweep.search import GammaSearcher

    search = GammaSearcher([{"kind": "compress", "gamma": g} for g in (0.1, 0.2, 0.3)],
                           [None], 0, max_concurrent=2)
    assert [search.suggest(f"t{i}") is not None for i in range(3)] == [True, True, False]
    finish_trial(search, "t0", 0.5, 0.1)
    assert search.suggest("t3")["gamma"] == 0.3


# --- real Ray clusters -----------------------------------------------------------------------

def kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment holds ``marker``, and their descendants.

    Descendants count too: Ray renames some processes (setproctitle), which overwrites
    what /proc shows of their environment.
    """
    parent, marked = {}, set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if marker.encode() in (proc / "environ").read_bytes():
                marked.add(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    grown = True
    while grown:
        more = {pid for pid, ppid in parent.items() if ppid in marked} - marked
        marked |= more
        grown = bool(more)
    for pid in marked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_environment(root: Path):
    """The environment of a sweep subprocess; kills whatever Ray it left behind."""
    ray_tmp = tempfile.mkdtemp(prefix="scnn-ray-", dir="/tmp")  # short: Ray's socket paths
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0",
               SCNN_TEST_RAY=ray_tmp)  # the marker kill_marked looks for
    try:
        yield env
    finally:
        kill_marked(f"SCNN_TEST_RAY={ray_tmp}")
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def ray_env(tmp_path):
    with ray_environment(tmp_path) as env:
        yield env


def sweep(env: dict, cwd: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "sweep.run", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(folder / name)


def assert_complete(folder: Path, n_trials: int, epochs: int) -> pd.DataFrame:
    """Every trial once, finished, with each of its epochs and layers once."""
    trials = read(folder, TRIALS_FILE)
    assert len(trials) == n_trials and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all() and trials["error"].isna().all()
    per_trial = read(folder, EPOCHS_FILE).groupby("trial_id")["epoch"].apply(list)
    assert per_trial.to_dict() == {t: list(range(1, epochs + 1)) for t in trials["trial_id"]}
    layers = read(folder, LAYERS_FILE)
    assert len(layers) == n_trials * N_LAYERS
    assert set(layers["trial_id"]) == set(trials["trial_id"])
    return trials


@pytest.mark.ray
@pytest.mark.xdist_group("smoke-sweep")  # one process builds the fixture
def test_smoke_sweep_writes_parquet_with_the_right_rows(smoke):
    folder, stdout, _ = smoke
    trials = assert_complete(folder, 4, 2)
    assert sorted(trials["kind"]) == ["compress", "compress", "float-baseline", "floor"]
    expected = sampled(SweepConfig(num_samples=2, dataset="synthetic", preset="smoke"))
    assert sorted(zip(trials["kind"], trials["gamma"], strict=True)) == sorted(expected)
    assert (trials["sweep"] == "smoke").all() and (trials["epochs"] == 2).all()
    assert all(len(list(d.glob("checkpoint_*"))) == 1 for d in folder.glob("run_trial_*"))
    assert "local Ray cluster (token authentication on)" in stdout
    assert "Ray dashboard: http://127.0.0.1:" in stdout
    assert f"TensorBoard: tensorboard --logdir {folder.resolve()}\n" in stdout
    assert f"MLflow: mlflow ui --backend-store-uri sqlite:///{folder.resolve()}/mlflow.db" in stdout
    assert "Pareto-optimal trials" in stdout and str(folder) in stdout


def trial_folder(folder: Path, trial_id: str) -> Path:
    return next(folder.glob(f"run_trial_{trial_id}_*"))


@pytest.mark.ray
@pytest.mark.xdist_group("smoke-sweep")  # one process builds the fixture
def test_tensorboard_has_every_epoch_of_every_trial_with_gamma_and_kind_as_hparams(smoke):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    folder, _, _ = smoke
    epochs = read(folder, EPOCHS_FILE)
    for trial in read(folder, TRIALS_FILE).itertuples():
        events = EventAccumulator(str(trial_folder(folder, trial.trial_id)))
        events.Reload()
        mine = epochs[epochs["trial_id"] == trial.trial_id].set_index("epoch")
        for metric in ("test_accuracy", "bits_fraction", "weights_kept_fraction",
                       "epoch_time_s", "lr", "train_loss"):
            scalars = events.Scalars(f"ray/tune/{metric}")
            assert [s.step for s in scalars] == [1, 2]  # one point per epoch, step = epoch
            assert [s.value for s in scalars] == pytest.approx(list(mine[metric]), rel=1e-6)
        start = [HParamsPluginData.FromString(raw).session_start_info
                 for raw in events.PluginTagToContent("hparams").values()
                 if HParamsPluginData.FromString(raw).HasField("session_start_info")]
        assert len(start) == 1
        hparams = start[0].hparams
        assert hparams["kind"].string_value == trial.kind
        assert hparams["gamma"].number_value == pytest.approx(trial.gamma)
        assert hparams["seed"].number_value == 0


@pytest.mark.ray
@pytest.mark.xdist_group("smoke-sweep")  # one process builds the fixture
def test_mlflow_has_a_run_per_trial_with_params_epochs_and_parquet_rows(smoke, tmp_path):
    from mlflow.tracking import MlflowClient

    folder, _, _ = smoke
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.artifact_location == (folder / "mlartifacts").as_uri()
    runs = {r.data.tags["trial_name"].removeprefix("run_trial_"): r
            for r in client.search_runs([experiment.experiment_id])}
    trials = read(folder, TRIALS_FILE).set_index("trial_id")
    assert sorted(runs) == sorted(trials.index)
    epochs = read(folder, EPOCHS_FILE)
    for trial_id, run in runs.items():
        row = trials.loc[trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["sweep"] == "smoke"
        params = run.data.params
        assert (params["kind"], float(params["gamma"])) == (row["kind"], row["gamma"])
        assert (params["train/seed"], params["train/preset"], params["train/epochs"]) == (
            "0", "smoke", "2")
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        mine = epochs[epochs["trial_id"] == trial_id]
        got_steps = sorted((m.step, m.value) for m in history)
        assert [step for step, _ in got_steps] == list(mine["epoch"])
        assert [value for _, value in got_steps] == pytest.approx(list(mine["test_accuracy"]))
        assert run.data.metrics["bits_fraction"] == pytest.approx(row["bits_fraction"])
        got = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / trial_id)))
        assert sorted(p.name for p in got.iterdir()) == sorted(
            [TRIALS_FILE, EPOCHS_FILE, LAYERS_FILE])
        assert list(read(got, TRIALS_FILE)["trial_id"]) == [trial_id]
        assert len(read(got, EPOCHS_FILE)) == 2 and len(read(got, LAYERS_FILE)) == N_LAYERS


@pytest.mark.ray
def test_bad_input_found_once_ray_runs_is_one_line_without_rays_start_up_lines(ray_env,
                                                                              tmp_path):
    out = subprocess.run([sys.executable, "-m", "sweep.run", *SMOKE, "--gpus-per-trial", "0.5",
                          "--results-dir", str(tmp_path / "results")], cwd=tmp_path,
                         env=ray_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("scnn sweep: error: --gpus-per-trial 0.5 does not fit")
    assert out.stderr.count("\n") == 1  # no token or dashboard lines of Ray before it
    assert not (tmp_path / "results").exists()


@pytest.mark.ray
def test_a_failing_trial_is_retried_recorded_and_the_others_finish(ray_env, tmp_path):
    results = tmp_path / "results"
    out = sweep({**ray_env, FAIL_ENV: "0.001"}, tmp_path, *SMOKE, "--num-samples", "2",
                "--no-references", "--name", "f", "--results-dir", str(results),
                "--max-failures", "1", "--no-dashboard")
    assert "it runs no dashboard\n" in out.stdout and "Ray dashboard:" not in out.stdout
    trials = read(results / "f", TRIALS_FILE).set_index("trial_id")
    failing = trials["gamma"] > 0.001
    assert failing.any() and not failing.all()  # seed 0 draws gammas on both sides
    assert (trials.loc[failing, "status"] == "ERROR").all()
    assert trials.loc[failing, "error"].str.startswith("RuntimeError: test failure").all()
    assert (trials.loc[~failing, "status"] == "TERMINATED").all()
    assert set(read(results / "f", LAYERS_FILE)["trial_id"]) == set(trials.index[~failing])
    for trial_id in trials.index[failing]:
        error_txt = next((results / "f").glob(f"run_trial_{trial_id}_*/error.txt"))
        assert error_txt.read_text().count("RuntimeError: test failure") == 2  # and a retry


def wait_for(path: Path, enough, proc: subprocess.Popen, timeout: float = 300) -> pd.DataFrame:
    """Poll the Parquet file ``path`` of a running sweep until ``enough(table)`` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the sweep ended before the test could stop it"
        try:
            table = pd.read_parquet(path)
            if enough(table):
                return table
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{path} did not fill up in {timeout} s")


def pareto_front_ids(trials: pd.DataFrame) -> list[str]:
    from analysis.pareto import front_of

    return list(front_of(trials, "bits_fraction")["trial_id"])


def cut_short_by_the_kill(runs: list, trials: pd.DataFrame) -> list:
    """The MLflow runs of the sweep's trials; any other run must be one a kill cut short
    before Tune's snapshot (its point ran again as another trial), closed as KILLED."""
    ids = set(trials["trial_id"])
    mine = [r for r in runs if r.data.tags["trial_name"].removeprefix("run_trial_") in ids]
    for run in runs:
        if run.data.tags["trial_name"].removeprefix("run_trial_") not in ids:
            assert run.info.status == "KILLED", run.data.tags["trial_name"]
    return mine


def start_sweep(env: dict, cwd: Path, log: Path, *args: str) -> subprocess.Popen:
    """A sweep in its own process group (with its embedded cluster), output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "sweep.run", *args], cwd=cwd, env=env,
                                stdout=out, stderr=out, start_new_session=True)


@pytest.mark.ray
def test_a_sweep_stopped_by_sigterm_then_killed_by_sigkill_resumes_every_trial_once(ray_env,
                                                                                    tmp_path):
    """Both ways a sweep ends early, one after the other (each resume starts its cluster):
    SIGTERM to the driver stops it cleanly; SIGKILL to the resumed one takes the driver
    and its whole embedded cluster; the second resume finishes every trial exactly once."""
    results = tmp_path / "results"
    # Without the dashboard, which the smoke sweep checks: three starts, 3 CPU-seconds each.
    args = [*SMOKE, "--epochs", "3", "--num-samples", "2", "--name", "k",
            "--results-dir", str(results), "--export", "front", "--mlflow", "--no-dashboard"]
    resume = ["--resume", "--name", "k", "--results-dir", str(results), "--no-dashboard"]
    log = tmp_path / "stopped.log"
    proc = start_sweep(ray_env, tmp_path, log, *args)
    try:
        wait_for(results / "k" / EPOCHS_FILE, lambda t: len(t) >= 1, proc)
        proc.send_signal(signal.SIGTERM)  # the driver only, as `kill` or a scheduler would
        assert proc.wait(timeout=60) == 130
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    said = log.read_text()
    assert f"python -m sweep.run --resume --name k --results-dir {results}" in said
    assert "Traceback" not in said
    assert not (read(results / "k", TRIALS_FILE)["status"] == "TERMINATED").any()

    proc = start_sweep(ray_env, tmp_path, tmp_path / "killed.log", *resume)
    try:
        before = wait_for(results / "k" / TRIALS_FILE,
                          lambda t: (t["status"] == "TERMINATED").any(), proc)
        before_epochs = read(results / "k", EPOCHS_FILE)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its whole embedded cluster
        proc.wait()
    out = sweep(ray_env, tmp_path, *resume)
    trials = assert_complete(results / "k", 4, 3)
    assert (results / "k" / sweep_config.RECIPE_FILE).is_file()
    assert "recipe the sweep began with" not in out.stdout  # the same code: nothing differs
    # --export front was saved with the sweep: the resumed sweep exports its front.
    front = set(pareto_front_ids(trials))
    exported = {p.parent.name for p in (results / "k" / "exports").glob("*/export.json")}
    assert front and exported == front
    for trial_id in front:
        report = json.loads((results / "k" / "exports" / trial_id / "export.json").read_text())
        assert report["status"] == "ok" and report["inference"]["images_per_s"]["1"] > 0
        assert f"scnn sweep: exported {trial_id} (ok)" in out.stdout
    expected = sampled(SweepConfig(num_samples=2, dataset="synthetic", preset="smoke"))
    assert sorted(zip(trials["kind"], trials["gamma"], strict=True)) == sorted(expected)
    done = before[before["status"] == "TERMINATED"]["trial_id"]
    after = trials.set_index("trial_id")
    for trial_id, row in before.set_index("trial_id").loc[done].iterrows():
        assert after.loc[trial_id, "train_time_s"] == row["train_time_s"]  # not trained again
    epochs = read(results / "k", EPOCHS_FILE).set_index(["trial_id", "epoch"])
    kept = before_epochs[before_epochs["trial_id"].isin(done)].set_index(["trial_id", "epoch"])
    pd.testing.assert_frame_equal(epochs.loc[kept.index], kept)
    # MLflow: the resumed trials went on in the runs they had; every run finished.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'k' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("k").experiment_id])
    runs = cut_short_by_the_kill(runs, trials)
    names = sorted(r.data.tags["trial_name"].removeprefix("run_trial_") for r in runs)
    assert names == sorted(trials["trial_id"])  # one run per trial, none started twice
    assert all(r.info.status == "FINISHED" for r in runs)


REFINE = [*SMOKE, "--epochs", "1", "--num-samples", "2", "--seeds", "2", "--no-references"]


def assert_refined(folder: Path, refine: int) -> pd.DataFrame:
    """Two seeds (0 and 1) per γ; the sampled γs those the seed draws; the first refine γ
    between them or beyond their ends; refine.txt lists the refine γs in order."""
    from sweep.search import REFINE_FILE

    trials = assert_complete(folder, (2 + refine) * 2, 1)
    seeds = trials.groupby("gamma")["seed"].apply(sorted).to_dict()
    assert list(seeds.values()) == [[0, 1]] * (2 + refine), seeds
    expected = {g for _, g in sampled(SweepConfig(num_samples=2, dataset="synthetic",
                                                  preset="smoke", references="none"))}
    assert sorted(set(trials.loc[~trials["refined"], "gamma"])) == pytest.approx(sorted(expected))
    chosen = [float(g) for g in (folder / REFINE_FILE).read_text().split()]
    assert sorted(chosen) == sorted(set(trials.loc[trials["refined"], "gamma"]))
    low, high = min(expected), max(expected)
    assert len(chosen) == refine
    assert low < chosen[0] < high or chosen[0] in (2 * high, low / 2), (chosen, low, high)
    return trials


@pytest.mark.ray
def test_a_killed_refine_sweep_with_two_seeds_resumes_with_its_gamma_and_is_drawn(shared_head,
                                                                                 tmp_path):
    env, address = shared_head  # the driver dies, the cluster lives on: Ray ends its trials
    results = tmp_path / "results"
    proc = start_sweep(env, tmp_path, tmp_path / "killed.log", *REFINE, "--refine", "2",
                       "--name", "k", "--results-dir", str(results), "--address", address)
    try:
        before = wait_for(results / "k" / TRIALS_FILE, lambda t: t["refined"].any(), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = set(before.loc[before["refined"], "gamma"])
    assert "scnn sweep: refine 1: γ " in (tmp_path / "killed.log").read_text()
    out = sweep(env, tmp_path, "--resume", "--name", "k", "--results-dir", str(results),
                "--address", address)
    folder = results / "k"
    trials = assert_refined(folder, 2)
    assert first < set(trials.loc[trials["refined"], "gamma"])  # and one chosen after resuming
    assert "scnn sweep: refine 2: γ " in out.stdout and "before --refine widest gap" in out.stdout
    from analysis.plots import main as plots

    plots(["--results", str(folder)])
    md = (folder / "plots" / "pareto.md").read_text()
    assert "## Front quality" in md and "hypervolume" in md and "| seeds |" in md


def start_head(env: dict, port: int, dashboard: int = 0, cpus: int = 2) -> subprocess.Popen:
    """``ray start --head`` on its own process group, so the test can stop exactly it.

    ``dashboard``: its port (with the Jobs API), every other fixed port of the head free
    too, so tests running beside each other do not collide; 0: no dashboard. ``cpus``: the
    CPUs it offers trials (one CPU each).
    """
    ports = ["--include-dashboard", "false"]
    if dashboard:
        ports = ["--dashboard-port", str(dashboard), *(
            arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                             "--metrics-export-port", "--runtime-env-agent-port",
                             "--ray-client-server-port") for arg in (flag, str(free_port())))]
    head = subprocess.Popen(
        [RAY, "start", "--head", "--port", str(port), "--num-cpus", str(cpus),
         "--dashboard-host", "127.0.0.1", *ports,
         "--temp-dir", env["RAY_TMPDIR"], "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    log, _ = head.communicate(timeout=120)
    assert head.returncode == 0, log[-3000:]
    return head


def stop_head(head: subprocess.Popen, env: dict) -> None:
    with contextlib.suppress(ProcessLookupError):  # everything `ray start` launched
        os.killpg(head.pid, signal.SIGTERM)
    time.sleep(2)
    kill_marked(f"SCNN_TEST_RAY={env['RAY_TMPDIR']}")


@pytest.mark.ray
def test_attaches_to_a_cluster_started_with_ray_start_without_authentication(shared_head,
                                                                             tmp_path):
    env, address = shared_head
    out = sweep(env, tmp_path, *SMOKE, "--epochs", "1", "--num-samples", "1",
                "--no-references", "--name", "a", "--results-dir", "results",
                "--address", address)
    assert_complete(tmp_path / "results" / "a", 1, 1)
    assert "the running Ray cluster (no authentication)" in out.stdout


@pytest.mark.ray
@pytest.mark.job
def test_attaches_to_a_token_cluster_and_ray_job_submit_runs_the_sweep_there(ray_env,
                                                                            tmp_path):
    """One `ray start` head with token authentication: ``sweep.run --address`` attaches,
    then ``ray job submit`` runs a sweep on it."""
    subprocess.run([RAY, "get-auth-token", "--generate"], env=ray_env, check=True,
                   capture_output=True)  # so `ray start` turns token authentication on
    dashboard, port = free_port(), free_port()
    head = start_head(ray_env, port, dashboard=dashboard)
    # The job CLI sends the token when RAY_AUTH_MODE says so (it reads ~/.ray/auth_token).
    env = {**ray_env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}", "RAY_AUTH_MODE": "token"}
    results = tmp_path / "results"  # absolute: the job runs in an uploaded copy of the repo

    def job(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "job", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)

    try:
        attached = sweep(ray_env, tmp_path, *SMOKE, "--epochs", "1", "--num-samples", "1",
                         "--no-references", "--name", "a", "--results-dir", str(results),
                         "--address", f"127.0.0.1:{port}")
        submit = job("submit", "--working-dir", ".", "--submission-id", "scnn-smoke", "--",
                     sys.executable, "-m", "sweep.run", *SMOKE, "--epochs", "1",
                     "--num-samples", "2", "--no-references", "--name", "job",
                     "--results-dir", str(results), timeout=500)
        status, logs, listed = job("status", "scnn-smoke"), job("logs", "scnn-smoke"), job("list")
    finally:
        stop_head(head, ray_env)
    assert_complete(results / "a", 1, 1)
    assert "the running Ray cluster (token authentication on)" in attached.stdout
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "Job 'scnn-smoke' succeeded" in status.stdout, status.stdout + status.stderr
    assert_complete(results / "job", 2, 1)
    assert "the running Ray cluster (token authentication on)" in logs.stdout
    assert "Pareto-optimal trials" in logs.stdout and str(results / "job") in logs.stdout
    assert "scnn-smoke" in listed.stdout and "sweep.run" in listed.stdout  # the Jobs page


@pytest.mark.ray
@pytest.mark.real_data
def test_a_relative_data_dir_reaches_the_trials(shared_head, tmp_path, cifar_dir):
    env, address = shared_head  # trials run in other folders of the cluster's processes
    data = os.path.relpath(cifar_dir, tmp_path)
    sweep(env, tmp_path, "--preset", "smoke", "--epochs", "1", "--num-samples", "1",
          "--no-references", "--data-dir", data, "--name", "c", "--results-dir", "results",
          "--address", address)
    trials = assert_complete(tmp_path / "results" / "c", 1, 1)
    assert trials["test_accuracy"].iloc[0] > 0.1  # learned something from real images


def test_a_trials_reports_lead_with_gamma_and_its_key_metrics():
    """Ray's live table shows a report's first four scalars: gamma, accuracy, bits, weights."""
    from sweep.trainable import KEY_METRICS, summary_report
    from trainer.train import train

    result = train(TrainConfig(preset="smoke", dataset="synthetic", epochs=1, synthetic_size=256,
                               gamma=0.02, threads=1), verbose=False)
    report = summary_report(result)
    assert list(report)[:4] == list(KEY_METRICS) == [
        "gamma", "test_accuracy", "bits_fraction", "weights_kept_fraction"]
    assert report["gamma"] == 0.02 and "layers" in report  # the summary: the trial's last
    assert report["test_accuracy"] == result["history"][-1]["test_accuracy"]


def test_the_cluster_it_starts_puts_worker_threads_on_one_malloc_arena(monkeypatch):
    # a trial's training runs in a thread of its Ray worker: with one arena its large
    # tensors stay on the heap (trainer/heap.py, tests/test_heap.py)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "-")  # recorded, so that the test leaves it as it was
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    cluster.worker_environment()
    assert os.environ["MALLOC_ARENA_MAX"] == "1"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's own setting stays
    cluster.worker_environment()
    assert os.environ["MALLOC_ARENA_MAX"] == "4"


def test_the_sweeps_start_line_says_when_gamma_is_ramped(tmp_path):
    from sweep.run import describe_sweep

    def line(preset: str, space: dict | None = None) -> str:
        c = with_gamma_range(SweepConfig(preset=preset, num_samples=4, space=space,
                                         results_dir=str(tmp_path), name="s"), preset)
        train = resolve(sweep_config.base_train_config(c), has_gpu=False)
        c = c.replace(epochs=train.epochs, cpus_per_trial=1.0, gpus_per_trial=0.0)  # as settled
        return describe_sweep(c, train)

    assert ("preset cpu, 5 epochs, gamma ramped up over the first 50% of steps, at most 50% of "
            "a conv's live channels die per epoch;") in line("cpu")
    assert "preset smoke, 2 epochs; " in line("smoke")
    fixed = line("cpu", {"gamma_ramp": {"value": 0.25}})  # the space's own words say it
    assert "gamma_ramp = 0.25" in fixed and "ramped up over" not in fixed
    fixed = line("cpu", {"ration": {"value": 1.0}})
    assert "ration = 1" in fixed and "die per epoch" not in fixed
