"""sweep: one driver per sweep folder (sweep.lock), and resumes that take what was saved.

A space that sets γ (or epochs) resumes both ways, ``--resume --name k`` alone and the
original command plus ``--resume``, although sweep.json of older code holds the preset's
values beside it; a second driver on a folder is refused in one line naming the first; the
lock dies with its holder's ``kill -9``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sweep import config as sweep_config
from sweep.cli import parse
from sweep.lock import DRIVER_FILE, LOCK_FILE, FolderLock, check_free
from sweep.run import main
from tests.conftest import REPO
from tests.test_sweep import read, start_sweep, sweep, wait_for
from trainer.config import ConfigError, resolve
from trainer.results import EPOCHS_FILE, TRIALS_FILE

GAMMA = "gamma={distribution: log_uniform_values, min: 0.01, max: 1.0}"


def start(tmp_path: Path, space: str) -> list[str]:
    return ["--param", space, "--preset", "smoke", "--dataset", "synthetic", "--num-samples",
            "2", "--no-references", "--results-dir", str(tmp_path), "--name", "k"]


def settled_and_saved(args: list[str], older: bool = False) -> None:
    """Save the sweep of ``args`` as a running driver does once it has settled (the preset's
    γ range, epochs and width filled in); ``older``: as code before the fix saved it, with
    those values beside a space that sets them."""
    c = sweep_config.prepare(*parse(args))
    train = resolve(sweep_config.base_train_config(c), has_gpu=False)
    c = c.replace(epochs=train.epochs, width=train.width, cpus_per_trial=1, gpus_per_trial=0)
    c = sweep_config.with_gamma_range(c, "smoke")
    sweep_config.save(c)
    if older:
        path = c.folder / sweep_config.SWEEP_FILE
        fields = {k: v for k, v in c.__dict__.items() if k not in sweep_config.RUNTIME_FIELDS}
        path.write_text(json.dumps(fields))


@pytest.mark.parametrize("older", [False, True])
@pytest.mark.parametrize("space, field, flag", [(GAMMA, "gamma_min", "--gamma-min"),
                                                ("epochs=[1, 2]", "epochs", "--epochs")])
def test_a_space_that_sets_a_field_the_preset_fills_resumes_both_ways(tmp_path, capsys, space,
                                                                      field, flag, older):
    args = start(tmp_path, space)
    settled_and_saved(args, older)
    saved = json.loads((tmp_path / "k" / sweep_config.SWEEP_FILE).read_text())
    assert (saved[field] is None) != older  # not the user's: not saved (older code did)
    for again in (["--resume", "--name", "k", "--results-dir", str(tmp_path)],
                  [*args, "--resume"]):
        c = sweep_config.prepare(*parse(again))
        assert (c.name, c.num_samples, c.space) == ("k", 2, saved["space"])
    # A repeated value equal to the saved one is fine; another is refused in one line that
    # names the field and both values; the preset's value is not taken for the user's.
    assert sweep_config.prepare(*parse([*args, "--resume", "--seed", "0"])).seed == 0
    resume = ["--resume", "--name", "k", "--results-dir", str(tmp_path)]
    for extra, says in (
            ([*args, "--resume", "--num-samples", "3"],
             "was started with --num-samples 2, not --num-samples 3; "),
            ([*resume, flag, "2"], f"was started without {flag}, not {flag} 2")):
        with pytest.raises(SystemExit) as stop:
            main(extra)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and says in err, err


SPACE_WITH_GAMMA = ("parameters:\n"
                    "  gamma:    {distribution: log_uniform_values, min: 0.01, max: 1.0}\n"
                    "  lr_quant: {distribution: log_uniform_values, min: 0.01, max: 0.2}\n")
SPACE_WITHOUT_GAMMA = "parameters:\n  lr_quant: {values: [0.05, 0.1]}\n"
# Every way the CLI starts a sweep (issue 37's matrix); "space" files are written first.
WAYS = {
    "gamma only": [],
    "param": ["--param", "min_bits=[0, 2]"],
    "space with gamma": ["--space", "with-gamma.yaml"],
    "space without gamma": ["--space", "without-gamma.yaml"],
    "optuna": ["--space", "with-gamma.yaml", "--search", "optuna"],
    "refine": ["--refine", "2"],
    "seeds": ["--seeds", "2"],
    "references full": ["--references", "full"],
    "export front": ["--export", "front"],
    "mlflow": ["--mlflow"],
    "start baseline": ["--start", "baseline"],
    "init from": ["--init-from", "model.pt"],
    "preset auto": ["--preset", "auto"],
}


def saved_fields(c: sweep_config.SweepConfig) -> dict:
    return {k: v for k, v in c.__dict__.items() if k not in sweep_config.RUNTIME_FIELDS}


@pytest.mark.parametrize("way", WAYS)
def test_every_way_to_start_a_sweep_resumes_both_ways_to_what_its_driver_saved(tmp_path, way,
                                                                             monkeypatch):
    """Each way is settled and saved as its driver does (sweep.run.settled, one CPU per
    trial); both resumes, ``--resume --name k`` alone and the original command plus
    ``--resume``, settle again to exactly what was saved: no field is taken for the user's
    that the preset or the cluster filled in. The real kills are in the Ray tests below and
    in test_sweep, test_space and test_start."""
    from sweep.run import settled

    monkeypatch.chdir(tmp_path)  # the space files are named relative, as a user would
    (tmp_path / "with-gamma.yaml").write_text(SPACE_WITH_GAMMA)
    (tmp_path / "without-gamma.yaml").write_text(SPACE_WITHOUT_GAMMA)
    if way == "init from":
        from tests.test_start import SMALL, float_file

        float_file(tmp_path / "model.pt", SMALL.replace(seed=0))
    args = ["--preset", "smoke", "--dataset", "synthetic", "--num-samples", "2",
            "--results-dir", str(tmp_path / "results"), "--name", "k", *WAYS[way]]
    if way == "preset auto":
        args.remove("smoke"), args.remove("--preset")
    c, _ = settled(sweep_config.prepare(*parse(args)), 1, 0)
    sweep_config.save(c)
    for again in (["--resume", "--name", "k", "--results-dir", str(tmp_path / "results")],
                  [*args, "--resume"]):
        resumed, _ = settled(sweep_config.prepare(*parse(again)), 1, 0)
        assert saved_fields(resumed) == saved_fields(c), again
        assert resumed.resume and resumed.name == "k"


def test_a_second_driver_is_refused_in_one_line_naming_the_first(tmp_path, capsys):
    sweep_config.save(sweep_config.SweepConfig(num_samples=2, dataset="synthetic",
                                               results_dir=str(tmp_path), name="k"))
    held = FolderLock(tmp_path / "k")
    held.acquire()  # this process plays the running driver
    try:
        for args in (["--resume", "--name", "k"], ["--resume"], ["--name", "k"]):
            with pytest.raises(SystemExit) as stop:
                main([*args, "--results-dir", str(tmp_path), "--dataset", "synthetic"])
            err = capsys.readouterr().err
            assert stop.value.code == 2 and err.count("\n") == 1, err
            assert (f"is being run by another driver (host {socket.gethostname()}, pid "
                    f"{os.getpid()}, since ") in err and f"kill {os.getpid()}" in err
        with pytest.raises(ConfigError, match="is being run by another driver"):
            FolderLock(tmp_path / "k").acquire()  # the lock itself, not only the check
        held.acquire()  # taken twice by its holder: still held once
    finally:
        held.release()
    assert not (tmp_path / "k" / LOCK_FILE).exists() and not (tmp_path / "k" / DRIVER_FILE).exists()
    with pytest.raises(ConfigError, match="already exists"):  # no driver: as before
        sweep_config.prepare(*parse(["--name", "k", "--results-dir", str(tmp_path)]))


def test_the_lock_dies_with_a_driver_killed_by_sigkill(tmp_path):
    folder = tmp_path / "k"
    code = ("import sys, time; from pathlib import Path; from sweep.lock import FolderLock; "
            f"FolderLock(Path({str(folder)!r})).acquire(); print('held', flush=True); "
            "time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}, since"):
            check_free(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((folder / DRIVER_FILE).read_text())["pid"] == holder.pid  # left behind
    check_free(folder)  # free: nothing to clean up
    lock = FolderLock(folder)
    lock.acquire()
    assert json.loads((folder / DRIVER_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_driver_left_behind_on_another_host_is_not_taken_for_gone(tmp_path):
    """Where locks may not reach other machines (NFS without them), its driver.json is all
    that says a driver there may still run."""
    folder = tmp_path / "k"
    folder.mkdir()
    (folder / DRIVER_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 7,
                                                  "since": "2026-12-06T10:00:00+00:00"}))
    with pytest.raises(ConfigError, match="names a driver on host elsewhere .* delete "):
        FolderLock(folder).acquire()
    (folder / DRIVER_FILE).unlink()
    lock = FolderLock(folder)
    lock.acquire()  # not held by the refused one
    lock.release()


@pytest.mark.ray
def test_a_killed_sweep_whose_space_sets_gamma_resumes_both_ways_and_keeps_one_driver(
        shared_head, tmp_path):
    """The issue's two sequences in one sweep (an Optuna study over a space that sets γ): a
    second driver, while the first runs, is refused and changes nothing; after a kill -9 of
    the first, ``--resume --name k`` finishes it and the original command plus ``--resume``
    finds it finished."""
    import optuna
    from optuna.trial import TrialState

    env, address = shared_head  # the driver dies, the cluster lives on: Ray ends its trials
    results = tmp_path / "results"
    (tmp_path / "space.yaml").write_text(
        "parameters:\n"
        "  gamma:    {distribution: log_uniform_values, min: 0.01, max: 1.0}\n"
        "  lr_quant: {distribution: log_uniform_values, min: 0.01, max: 0.2}\n")
    args = ["--space", "space.yaml", "--search", "optuna", "--num-samples", "2", "--preset",
            "smoke", "--dataset", "synthetic", "--epochs", "2", "--no-references",
            "--results-dir", str(results), "--name", "k", "--address", address]
    proc = start_sweep(env, tmp_path, tmp_path / "killed.log", *args)
    try:
        wait_for(results / "k" / TRIALS_FILE, lambda t: (t["status"] == "TERMINATED").any(),
                 proc)
        with pytest.raises(ConfigError, match=f"pid {proc.pid}, since .* kill {proc.pid}"):
            sweep_config.prepare(*parse(["--resume", "--name", "k", "--results-dir",
                                         str(results)]))
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out = sweep(env, tmp_path, "--resume", "--name", "k", "--results-dir", str(results),
                "--address", address)
    assert "resuming" in out.stdout
    again = sweep(env, tmp_path, *args, "--resume")  # the same command again: finished
    assert "2 trials finished, 0 failed" in again.stdout
    trials = read(results / "k", TRIALS_FILE)
    assert len(trials) == 2 and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all()
    assert ((trials["gamma"] >= 0.01) & (trials["gamma"] <= 1.0)).all()  # the space's γ
    epochs = read(results / "k", EPOCHS_FILE)
    assert len(epochs) == 2 * 2 and not epochs.duplicated(["trial_id", "epoch"]).any()
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{results}/k/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert not (results / "k" / LOCK_FILE).exists()  # the last driver ended by itself


@pytest.mark.ray
def test_a_killed_sweep_of_full_references_resumes_from_its_command_with_one_mlflow_run_each(
        shared_head, tmp_path):
    """The way no other kill test takes (``--references full``: narrow floats and fixed
    bits), resumed by repeating its command plus ``--resume``: every trial finishes once,
    the finished keep their rows, MLflow holds one FINISHED run per trial."""
    from mlflow.tracking import MlflowClient

    from tests.test_sweep import cut_short_by_the_kill

    env, address = shared_head
    results = tmp_path / "results"
    args = ["--preset", "smoke", "--dataset", "synthetic", "--epochs", "1", "--num-samples",
            "1", "--references", "full", "--mlflow", "--results-dir", str(results), "--name",
            "k", "--address", address]
    proc = start_sweep(env, tmp_path, tmp_path / "killed.log", *args)
    try:
        before = wait_for(results / "k" / TRIALS_FILE,
                          lambda t: (t["status"] == "TERMINATED").any(), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out = sweep(env, tmp_path, *args, "--resume")
    assert "resuming" in out.stdout and "12 trials finished, 0 failed" in out.stdout
    trials = read(results / "k", TRIALS_FILE)
    assert len(trials) == 12 and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all()
    assert sorted(trials["kind"].unique()) == ["compress", "fixed-bits", "float-baseline",
                                               "floor", "narrow-float"]
    epochs = read(results / "k", EPOCHS_FILE)
    assert len(epochs) == 12 and not epochs.duplicated(["trial_id", "epoch"]).any()
    done = before.loc[before["status"] == "TERMINATED"].set_index("trial_id")
    after = trials.set_index("trial_id").loc[done.index]
    assert (after["train_time_s"] == done["train_time_s"]).all()  # not trained again
    client = MlflowClient(f"sqlite:///{results / 'k' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("k").experiment_id])
    runs = cut_short_by_the_kill(runs, trials)
    names = sorted(r.data.tags["trial_name"].removeprefix("run_trial_") for r in runs)
    assert names == sorted(trials["trial_id"])
    assert all(r.info.status == "FINISHED" for r in runs)
