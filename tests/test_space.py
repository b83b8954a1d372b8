"""Search spaces (sweep.params) and the Optuna study searcher (sweep.study): bad spaces, the
draws, what a trial trains, the Parquet columns, resume; and one real Ray study sweep that
is killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from sweep import config as sweep_config
from sweep.cli import parse
from sweep.config import SweepConfig, with_gamma_range
from sweep.params import SWEEPABLE, check_space, draw, normalise_space
from sweep.run import main
from sweep.search import draw_gammas
from sweep.space import sampled_configs, train_config, trial_key
from sweep.store import new_record, trial_row, write
from tests.test_sweep import (
    SMOKE,
    cut_short_by_the_kill,
    read,
    start_sweep,
    sweep,
    wait_for,
)
from trainer.config import ConfigError, TrainConfig, resolve
from trainer.results import EPOCHS_FILE, TRIALS_FILE

SPACE = {"gamma": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.05},
         "min_bits": {"values": [0, 2, 3]},
         "lr_quant": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.2},
         "init_bits": {"distribution": "uniform", "min": 4, "max": 8},
         "epochs": {"distribution": "int_uniform", "min": 1, "max": 3},
         "skip_one_bit": {"values": [True, False]}}


def configs(c: SweepConfig) -> list[dict]:
    return sampled_configs(with_gamma_range(c, c.preset),
                           resolve(sweep_config.base_train_config(c), has_gpu=False))


# --- bad spaces: one line, exit 2, nothing written -----------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--param", "colour=[1, 2]"], "unknown field 'colour' in the search space: sweepable "
     "fields are gamma, epochs, width"),
    (["--param", "device=[cpu]"], "unknown field 'device'"),
    (["--param", "kind=[floor]"], "unknown field 'kind'"),
    (["--param", "lr={distribution: uniform, min: 0.5, max: 0.1}"],
     "the range [0.5, 0.1] is empty or inverted"),
    (["--param", "lr={distribution: uniform, min: 0.1, max: 0.1}"], "empty or inverted"),
    (["--param", "lr={distribution: log_uniform_values, min: 0, max: 0.1}"], "needs min > 0"),
    (["--param", "min_bits=[]"], "values must be a non-empty list"),
    (["--param", "epochs={distribution: uniform, min: 1, max: 3}"], "takes whole numbers"),
    (["--param", "hold_range=[yes, 2]"], "hold_range is true or false"),
    (["--param", "lr={distribution: normal, mu: 1}"], "expected {distribution: D, min: A"),
    (["--param", "min_bits=[0, 20]"], "at min_bits 20.0 the trainer refuses: --min-bits must be"),
    (["--param", "min_bits=[4]", "--param", "init_bits={distribution: uniform, min: 4, max: 8}"],
     "--init-bits 4 is not above --min-bits 4"),
    (["--param", "min_bits"], "expected NAME=SPEC"),
    (["--param", "gamma=[0.1, 0.2]", "--gamma-max", "0.5"], "γ's range is given twice"),
    (["--param", "min_bits=[0, 3]", "--min-bits", "2"], "min_bits is given twice"),
    (["--param", "epochs=[1, 2]", "--epochs", "3"], "epochs is given twice, by --epochs"),
    (["--refine", "2", "--search", "optuna"], "--search optuna chooses every point itself"),
    (["--refine", "2", "--param", "min_bits=[0, 3]"], "the space also varies min_bits"),
    (["--objective", "weights"], "--objective sets up --search optuna's study"),
    (["--search", "grid"], "unknown --search 'grid'"),
    (["--search", "optuna", "--objective", "joules"], "unknown --objective 'joules'"),
    (["--space", "nowhere.yaml"], "--space nowhere.yaml: no such file"),
    (["--sampler", "gp"], "--sampler sets up --search optuna's study"),
    (["--search", "optuna", "--sampler", "cmaes"], "unknown --sampler 'cmaes'"),
    (["--search", "optuna", "--startup-trials", "-1"], "--startup-trials must be >= 0"),
])
def test_a_bad_space_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, says):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        main([*args, "--dataset", "synthetic", "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert says in err and err.startswith("scnn sweep: error:"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not results.exists()


@pytest.mark.parametrize("text, says", [
    ("parameters: [1, 2]\n", "expected a mapping with 'parameters:'"),
    ("parameters: {lr: [0.1]}\nmethod: bayes\n", "unknown top-level key 'method'"),
    ("parameters: {lr: [0.1\n", "not readable as YAML or JSON"),
])
def test_a_space_file_that_cannot_be_read_is_one_line(tmp_path, capsys, text, says):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stop:
        main(["--space", str(path), "--dataset", "synthetic", "--results-dir", str(tmp_path / "r")])
    assert stop.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_yaml_or_json_file_and_params_make_one_space(tmp_path):
    yaml_file, json_file = tmp_path / "s.yaml", tmp_path / "s.json"
    yaml_file.write_text("parameters:\n  min_bits: {values: [0, 2, 3]}\n"
                         "  lr_quant: {distribution: log_uniform_values, min: 1e-2, max: 0.2}\n")
    json_file.write_text(json.dumps({"parameters": {"min_bits": {"values": [0, 2, 3]},
                                                    "lr_quant": SPACE["lr_quant"]}}))
    from_yaml, given = parse(["--space", str(yaml_file)])
    from_json, _ = parse(["--space", str(json_file)])
    assert from_yaml.space == from_json.space == {"min_bits": {"values": [0.0, 2.0, 3.0]},
                                                  "lr_quant": SPACE["lr_quant"]}
    assert "space" in given and "param" not in given
    # --param adds a field or replaces one of the file's.
    both, _ = parse(["--space", str(yaml_file), "--param", "min_bits=[3]",
                     "--param", "size_term=bops"])
    assert both.space["min_bits"] == {"values": [3.0]} and both.space["size_term"] == {
        "value": "bops"}
    assert parse([])[0].space is None


def test_every_sweepable_field_is_a_training_field_and_the_rest_are_not():
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(SWEEPABLE) <= fields
    for name in ("device", "threads", "data_dir", "kind", "dataset", "seed", "preset"):
        assert name not in SWEEPABLE
    for name in ("gamma", "min_bits", "lr_quant", "init_bits", "dead_l1", "width", "epochs",
                 "size_term", "skip_one_bit", "label_smoothing"):
        assert name in SWEEPABLE


# --- draws -------------------------------------------------------------------------------

def test_a_space_draws_typed_values_in_range_gamma_as_it_always_was():
    space = normalise_space(SPACE)
    points = draw(space, 200, seed=3)
    assert points == draw(space, 200, seed=3) and points != draw(space, 200, seed=4)
    assert [p["gamma"] for p in points] == draw_gammas(200, 0.001, 0.05, 3)
    assert {p["min_bits"] for p in points} == {0.0, 2.0, 3.0}
    assert {p["epochs"] for p in points} == {1, 2, 3}
    assert all(isinstance(p["epochs"], int) and isinstance(p["skip_one_bit"], bool)
               for p in points)
    assert all(0.01 <= p["lr_quant"] <= 0.2 and 4 <= p["init_bits"] <= 8 for p in points)
    logs = [math.log10(p["lr_quant"]) for p in points]  # log-uniform: half below the middle
    assert 0.35 < sum(x < (math.log10(0.01) + math.log10(0.2)) / 2 for x in logs) / 200 < 0.65
    # A field more or less never moves the others' draws.
    fewer = {k: v for k, v in space.items() if k != "init_bits"}
    assert [p["lr_quant"] for p in draw(fewer, 200, 3)] == [p["lr_quant"] for p in points]


def test_a_gamma_only_sweep_proposes_what_it_always_did():
    c = SweepConfig(num_samples=4, dataset="synthetic", preset="smoke")
    plain = configs(c)
    assert all("params" not in t for t in plain)
    assert "params" not in trial_key(plain[-1])
    # The same γ range given as a space draws the same γs, and stores no params either.
    lo, hi = sweep_config.gamma_range("smoke")
    spaced = configs(c.replace(space=normalise_space(
        {"gamma": {"distribution": "log_uniform_values", "min": lo, "max": hi}})))
    assert spaced == plain


def test_a_trial_trains_its_swept_values_and_is_keyed_by_them():
    c = SweepConfig(num_samples=6, dataset="synthetic", preset="smoke", references="none",
                    space=normalise_space({k: SPACE[k] for k in ("min_bits", "lr_quant")}))
    trials = configs(c)
    built = [train_config(t, "cpu", 1) for t in trials]
    assert [(b.min_bits, b.lr_quant) for b in built] == [
        (t["params"]["min_bits"], t["params"]["lr_quant"]) for t in trials]
    assert len({json.dumps(trial_key(t), sort_keys=True) for t in trials}) == 6
    # Every swept field has its own column, typed as the field.
    records = {f"t{i}": new_record(t) for i, t in enumerate(trials)}
    rows = [trial_row("s", t, r, ["gamma", "min_bits", "lr_quant"]) for t, r in records.items()]
    assert [r["lr_quant"] for r in rows] == [t["params"]["lr_quant"] for t in trials]
    assert {r["swept"] for r in rows} == {"gamma,min_bits,lr_quant"}


def test_swept_fields_land_in_their_own_parquet_columns(tmp_path):
    c = SweepConfig(num_samples=3, dataset="synthetic", preset="smoke", references="none",
                    space=normalise_space({k: SPACE[k] for k in ("lr_quant", "skip_one_bit",
                                                                 "epochs")}))
    trials = configs(c)
    write(tmp_path, "s", {f"t{i}": new_record(t) for i, t in enumerate(trials)},
          ["gamma", "lr_quant", "skip_one_bit", "epochs"])
    table = pd.read_parquet(tmp_path / TRIALS_FILE)
    assert table["lr_quant"].tolist() == [t["params"]["lr_quant"] for t in trials]
    assert table["skip_one_bit"].dtype == bool and table["epochs"].tolist() == [
        t["params"]["epochs"] for t in trials]
    assert table["min_bits"].notna().all()  # the shared value, as before


def test_a_width_sweep_is_sized_against_the_sweeps_width():
    from sweep.space import param_space

    c = with_gamma_range(SweepConfig(num_samples=2, dataset="synthetic", preset="smoke",
                                     space=normalise_space({"width": {"values": [0.0625,
                                                                                 0.25]}})),
                         "smoke")
    train = resolve(sweep_config.base_train_config(c), has_gpu=False)
    assert param_space(c, train)["train"]["full_width"] == train.width == 0.125
    built = [train_config(t, "cpu", 1) for t in configs(c)[2:]]
    assert {b.full_width for b in built} == {0.125}


def test_corners_the_trainer_refuses_are_found_before_ray():
    base = TrainConfig(preset="smoke", dataset="synthetic")
    check_space(normalise_space(SPACE), base)  # fine
    with pytest.raises(ConfigError, match="batch_size 0"):
        check_space(normalise_space({"batch_size": {"values": [0, 64]}}), base)


def test_sweep_json_records_the_space_and_resume_refuses_another(tmp_path, capsys):
    c, given = parse(["--param", "min_bits=[0, 3]", "--search", "optuna", "--objective",
                      "weights", "--dataset", "synthetic", "--preset", "smoke",
                      "--results-dir", str(tmp_path), "--name", "s"])
    sweep_config.save(sweep_config.prepare(c, given))
    saved = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert saved["space"] == {"min_bits": {"values": [0.0, 3.0]}}
    assert (saved["search"], saved["objective"]) == ("optuna", "weights")
    assert (saved["sampler"], saved["startup_trials"]) == ("tpe", 10)
    with pytest.raises(SystemExit) as stop:
        main(["--resume", "--name", "s", "--results-dir", str(tmp_path),
              "--param", "min_bits=[0, 4]"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "was started with another search space" in err
    again = sweep_config.prepare(SweepConfig(resume=True, name="s", results_dir=str(tmp_path)))
    assert again.space == saved["space"] and again.search == "optuna"
    # A sweep.json of older code (no space) resumes as a γ-only random sweep.
    older = {k: v for k, v in saved.items() if k not in ("sampler", "startup_trials")}
    (tmp_path / "s" / "sweep.json").write_text(json.dumps(older))  # a study before --sampler
    again = sweep_config.prepare(SweepConfig(resume=True, name="s", results_dir=str(tmp_path)))
    assert (again.search, again.sampler, again.startup_trials) == ("optuna", "tpe", 4)
    old = {k: v for k, v in older.items() if k not in ("space", "search", "objective")}
    (tmp_path / "s" / "sweep.json").write_text(json.dumps(old))
    again = sweep_config.prepare(SweepConfig(resume=True, name="s", results_dir=str(tmp_path)))
    assert (again.space, again.search, again.objective) == (None, "random", "bits")


# --- the study searcher (no cluster) -------------------------------------------------------

def study_searcher(folder: Path, seeds=(None,), num_samples=4, references=True):
    from sweep.space import reference_points
    from sweep.study import StudySearcher

    c = with_gamma_range(SweepConfig(dataset="synthetic", preset="smoke"), "smoke")
    space = normalise_space({"gamma": SPACE["gamma"], "min_bits": {"values": [0, 3]},
                             "dead_l1": {"value": 0.1}})
    refs = [{"width": None, "full_width": None, "fixed_bits": None, **p}
            for p in reference_points(c, 0.125)] if references else []
    return StudySearcher(refs, list(seeds), num_samples, space, "bits", 0, str(folder), "st")


def finish(search, trial_id: str, accuracy: float, bits: float) -> None:
    search.on_trial_complete(trial_id, {"test_accuracy": accuracy, "bits_fraction": bits,
                                        "weights_kept_fraction": 1.0, "layers": []})


def study_trials(folder: Path):
    import optuna

    from sweep.study import storage_url

    return optuna.load_study(study_name="st", storage=storage_url(folder)).trials


def test_references_come_first_and_stay_out_of_the_study(tmp_path):
    search = study_searcher(tmp_path)
    first = [search.suggest(f"r{i}") for i in range(2)]
    assert [p["kind"] for p in first] == ["float-baseline", "floor"]
    assert not (tmp_path / "optuna.db").exists()  # no point asked yet
    for i in range(2):
        finish(search, f"r{i}", 0.9, 1.0)
    point = search.suggest("t0")
    assert point["kind"] == "compress" and point["params"]["dead_l1"] == 0.1
    assert point["params"]["min_bits"] in (0.0, 3.0) and point["study_trial"] == 0
    trials = study_trials(tmp_path)
    assert len(trials) == 1 and set(trials[0].params) == {"gamma", "min_bits"}


def test_a_nan_or_a_failure_is_told_fail_and_a_result_complete(tmp_path):
    from optuna.trial import TrialState

    search = study_searcher(tmp_path, references=False)
    points = [search.suggest(f"t{i}") for i in range(4)]
    assert [p["study_trial"] for p in points] == [0, 1, 2, 3]
    finish(search, "t0", 0.8, 0.05)
    finish(search, "t1", float("nan"), 0.05)  # Ray would leave it RUNNING for good
    search.on_trial_complete("t2", None, error=True)
    search.on_trial_complete("t3", {"test_accuracy": 0.7, "layers": []})  # no size
    states = [t.state for t in study_trials(tmp_path)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.FAIL]
    assert study_trials(tmp_path)[0].values == [0.8, 0.05]
    from ray.tune.search import Searcher
    assert search.suggest("t4") == Searcher.FINISHED


def test_a_point_is_told_the_mean_of_its_seeds_once_all_have_ended(tmp_path):
    search = study_searcher(tmp_path, seeds=(None, 1, 2), num_samples=1, references=False)
    seeds = [search.suggest(f"t{i}") for i in range(3)]
    assert [p["seed"] for p in seeds] == [None, 1, 2]
    assert len({(p["gamma"], p["params"]["min_bits"]) for p in seeds}) == 1
    finish(search, "t0", 0.8, 0.1)
    finish(search, "t1", 0.6, 0.3)
    assert study_trials(tmp_path)[0].values is None  # one seed still runs
    search.on_trial_complete("t2", None, error=True)  # left out of the mean
    assert study_trials(tmp_path)[0].values == pytest.approx([0.7, 0.2])


def test_a_restored_searcher_adopts_points_asked_after_its_snapshot(tmp_path):
    """A kill between asking a point and Tune's next snapshot: the restored searcher
    trains that point under the same study trial instead of asking a new one."""
    from optuna.trial import TrialState

    search = study_searcher(tmp_path, references=False)
    a = search.suggest("t0")
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))  # Tune's snapshot: t0 is live
    b = search.suggest("t1")  # asked after the snapshot, then the sweep is killed
    again = study_searcher(tmp_path, references=False)
    again.restore(str(saved))
    finish(again, "t0", 0.8, 0.1)  # Tune restarts the trial its snapshot knew
    redo = again.suggest("u1")
    assert redo["study_trial"] == b["study_trial"] == 1
    assert (redo["gamma"], redo["params"]) == (b["gamma"], b["params"])
    assert trial_key({**redo, "train": {}}) == trial_key({**b, "train": {}})  # its checkpoints
    finish(again, "u1", 0.7, 0.05)
    rest = [again.suggest(f"u{i}") for i in (2, 3)]
    assert [p["study_trial"] for p in rest] == [2, 3]
    for i in (2, 3):
        finish(again, f"u{i}", 0.6, 0.01)
    trials = study_trials(tmp_path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert a["study_trial"] == 0 and [t.values for t in trials][0] == [0.8, 0.1]


def test_a_restored_study_draws_new_points_not_its_first_ones_again(tmp_path):
    """The sampler is seeded from --seed: rebuilt after a restore with the same seed, it
    proposed the study's first points again (seen in the kill test, 2026-12-02)."""
    search = study_searcher(tmp_path, references=False, num_samples=4)
    first = [search.suggest(f"t{i}") for i in range(2)]
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))
    for i in range(2):
        finish(search, f"t{i}", 0.8, 0.1)
    again = study_searcher(tmp_path, references=False, num_samples=4)
    again.restore(str(saved))
    later = [again.suggest(f"u{i}") for i in range(2)]
    assert [p["study_trial"] for p in later] == [2, 3]
    points = {(p["gamma"], p["params"]["min_bits"]) for p in first + later}
    assert len(points) == 4
    # The same history gives the same draws: a resume is reproducible.
    other = tmp_path / "other"
    other.mkdir()
    twin = study_searcher(other, references=False, num_samples=4)
    for i in range(2):
        twin.suggest(f"t{i}")
    twin.save(str(other / "searcher.pkl"))
    for i in range(2):
        finish(twin, f"t{i}", 0.8, 0.1)
    twin_again = study_searcher(other, references=False, num_samples=4)
    twin_again.restore(str(other / "searcher.pkl"))
    assert [twin_again.suggest(f"u{i}")["gamma"] for i in range(2)] == [
        p["gamma"] for p in later]


def test_a_point_killed_while_the_study_drew_it_is_drawn_whole_and_trained(tmp_path):
    """Optuna stores a new trial, then its values one by one: a kill in between leaves a
    RUNNING trial with some values or none (seen: a resume that died on KeyError 'gamma')."""
    import optuna
    from optuna.trial import TrialState

    search = study_searcher(tmp_path, references=False, num_samples=2)
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))
    study = optuna.load_study(study_name="st", storage=search.study_search._ot_study._storage)
    study.ask()  # the kill came before any value was stored
    again = study_searcher(tmp_path, references=False, num_samples=2)
    again.restore(str(saved))
    point = again.suggest("u0")
    assert point["study_trial"] == 0 and 0.001 <= point["gamma"] <= 0.05
    assert point["params"]["min_bits"] in (0.0, 3.0)
    assert set(study_trials(tmp_path)[0].params) == {"gamma", "min_bits"}
    finish(again, "u0", 0.8, 0.1)
    assert again.suggest("u1")["study_trial"] == 1
    finish(again, "u1", 0.7, 0.05)
    assert [t.state for t in study_trials(tmp_path)] == [TrialState.COMPLETE] * 2


def test_a_point_told_before_a_kill_and_reported_again_after_it_is_told_once(tmp_path):
    search = study_searcher(tmp_path, references=False)
    search.suggest("t0")
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))  # Tune's snapshot: t0 runs
    finish(search, "t0", 0.8, 0.1)  # told; then killed before the next snapshot
    again = study_searcher(tmp_path, references=False)
    again.restore(str(saved))
    finish(again, "t0", 0.8, 0.1)  # Tune runs t0 again: it finds itself complete, reports
    trials = study_trials(tmp_path)
    assert len(trials) == 1 and trials[0].values == [0.8, 0.1]
    assert again.suggest("t1")["study_trial"] == 1


def write_tune_state(folder: Path, trials: list[tuple]) -> None:
    """Tune's experiment state listing ``trials`` (id, status, point, last result), written
    the way TuneController.save_to_dir writes it."""
    from ray.tune import PlacementGroupFactory
    from ray.tune.experiment.trial import Trial
    from ray.tune.utils.serialization import TuneFunctionEncoder

    data = []
    for trial_id, status, point, last_result in trials:
        trial = Trial("run_trial", config={"train": {"preset": "smoke"}, **point},
                      trial_id=trial_id, stub=True,
                      placement_group_factory=PlacementGroupFactory([{"CPU": 1}]))
        trial.create_placement_group_factory()  # as TuneController.add_trial does
        trial.set_status(status)
        trial.run_metadata.last_result = last_result or {}
        data.append(trial.get_json_state())
    state = {"trial_data": data, "runner_data": {}, "stats": {"start_time": 0.0}}
    text = json.dumps(state, cls=TuneFunctionEncoder)
    (folder / "experiment_state-2026-12-02_00-00-00.json").write_text(text)


def summary(accuracy: float, bits: float) -> dict:
    return {"test_accuracy": accuracy, "bits_fraction": bits, "weights_kept_fraction": 1.0,
            "layers": []}


def test_a_searcher_older_than_tunes_snapshot_does_not_ask_its_points_again(tmp_path):
    """Tune's trial list was saved, the searcher's snapshot not yet (a kill -9 between
    the two): the points Tune restores are neither queued again nor lost to the study."""
    from optuna.trial import TrialState

    search = study_searcher(tmp_path, references=False)
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))  # the searcher's snapshot: nothing asked yet
    a, b, c = (search.suggest(f"t{i}") for i in range(3))
    finish(search, "t0", 0.8, 0.1)  # ended before Tune's snapshot, unseen by the searcher's
    write_tune_state(tmp_path, [("t0", "TERMINATED", a, summary(0.8, 0.1)),
                                ("t1", "RUNNING", b, None)])  # c: asked after both snapshots
    again = study_searcher(tmp_path, references=False)
    again.restore(str(saved))
    assert list(again.live) == ["t1"]  # Tune runs it again; t0 is counted as ended
    assert (again.live["t1"]["study_trial"], again.live["t1"]["params"]) == (
        b["study_trial"], b["params"])
    redo = again.suggest("u0")  # the point asked after both snapshots, once more
    assert (redo["study_trial"], redo["gamma"], redo["params"]) == (
        c["study_trial"], c["gamma"], c["params"])
    finish(again, "t1", 0.7, 0.05)
    finish(again, "u0", 0.6, 0.02)
    last = again.suggest("u1")
    assert last["study_trial"] == 3
    finish(again, "u1", 0.5, 0.01)
    from ray.tune.search import Searcher
    assert again.suggest("u2") == Searcher.FINISHED
    trials = study_trials(tmp_path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert [t.values for t in trials] == [[0.8, 0.1], [0.7, 0.05], [0.6, 0.02], [0.5, 0.01]]


def test_a_searcher_newer_than_tunes_snapshot_proposes_the_lost_trials_point_again(tmp_path):
    """The searcher's snapshot holds a trial Tune's does not: Tune will never report it, so
    its point is proposed again (else the searcher would wait for it for ever)."""
    search = study_searcher(tmp_path, references=False, num_samples=2)
    a, b = search.suggest("t0"), search.suggest("t1")
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))
    write_tune_state(tmp_path, [("t0", "RUNNING", a, None)])
    again = study_searcher(tmp_path, references=False, num_samples=2)
    again.restore(str(saved))
    assert again.live == {"t0": a} and again.suggest("u0") == b
    finish(again, "t0", 0.8, 0.1)
    finish(again, "u0", 0.7, 0.05)
    from ray.tune.search import Searcher
    assert again.suggest("u1") == Searcher.FINISHED
    assert [t.values for t in study_trials(tmp_path)] == [[0.8, 0.1], [0.7, 0.05]]


def test_the_random_search_restored_before_tunes_snapshot_does_not_repeat_a_trial(tmp_path):
    from sweep.search import GammaSearcher

    def searcher():
        return GammaSearcher([{"kind": "compress", "gamma": g} for g in (0.1, 0.2, 0.3)],
                             [None], 0, folder=str(tmp_path))

    search = searcher()
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))
    a, b = search.suggest("t0"), search.suggest("t1")
    write_tune_state(tmp_path, [("t0", "TERMINATED", a, summary(0.9, 0.2)),
                                ("t1", "PENDING", b, None)])
    again = searcher()
    again.restore(str(saved))
    assert again.live == {"t1": b} and [p["gamma"] for p in again.queue] == [0.3]
    assert [(p["gamma"], acc) for p, acc, _ in again.ended] == [(0.1, 0.9)]


def test_the_study_searcher_keeps_to_max_concurrent(tmp_path):
    search = study_searcher(tmp_path, references=False)
    search.set_max_concurrency(2)
    assert [search.suggest(f"t{i}") is not None for i in range(3)] == [True, True, False]
    finish(search, "t0", 0.5, 0.1)
    assert search.suggest("t3")["study_trial"] == 2


# --- a real study sweep, killed and resumed --------------------------------------------------

@pytest.mark.ray
def test_a_study_sweep_killed_with_sigkill_resumes_its_study(shared_head, tmp_path):
    import optuna
    from optuna.trial import TrialState

    env, address = shared_head  # the driver dies, the cluster lives on: Ray ends its trials
    results = tmp_path / "results"
    args = [*SMOKE, "--num-samples", "4", "--name", "o", "--results-dir", str(results),
            "--references", "none", "--search", "optuna", "--param", "min_bits=[0, 3]",
            "--param", "lr_quant={distribution: log_uniform_values, min: 0.01, max: 0.1}",
            "--max-concurrent", "2", "--export", "front", "--mlflow", "--address", address]
    proc = start_sweep(env, tmp_path, tmp_path / "killed.log", *args)
    try:
        wait_for(results / "o" / TRIALS_FILE, lambda t: (t["status"] == "TERMINATED").any(),
                 proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out = sweep(env, tmp_path, "--resume", "--name", "o", "--results-dir", str(results),
                "--address", address)
    assert "optuna-dashboard sqlite:///" in out.stdout
    trials = read(results / "o", TRIALS_FILE)
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    assert sorted(trials["study_trial"]) == [0, 1, 2, 3]  # none asked twice, none lost
    points = trials[["gamma", "min_bits", "lr_quant"]].drop_duplicates()
    assert len(points) == 4  # and none drawn twice by a sampler seeded as at the start
    assert set(trials["swept"]) == {"gamma,min_bits,lr_quant"}
    study = optuna.load_study(study_name="o", storage=f"sqlite:///{results}/o/optuna.db")
    assert len(study.directions) == 2
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    by_number = trials.set_index("study_trial")
    for t in study.trials:
        row = by_number.loc[t.number]
        assert t.values == pytest.approx([row["test_accuracy"], row["bits_fraction"]])
        assert (t.params["min_bits"], t.params["lr_quant"]) == (row["min_bits"],
                                                                 row["lr_quant"])
    epochs = read(results / "o", EPOCHS_FILE)
    assert len(epochs) == 4 * 2 and not epochs.duplicated(["trial_id", "epoch"]).any()
    # --export front and MLflow work with a space: the front exported, a run per trial
    # with its swept values as parameters.
    from mlflow.tracking import MlflowClient

    from analysis.pareto import front_of

    front = set(front_of(trials)["trial_id"])
    exported = {p.parent.name for p in (results / "o" / "exports").glob("*/export.json")}
    assert front and exported == front
    client = MlflowClient(f"sqlite:///{results / 'o' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("o").experiment_id])
    runs = cut_short_by_the_kill(runs, trials)
    assert len(runs) == 4
    for run in runs:
        row = trials.set_index("trial_id").loc[run.data.tags["trial_name"].removeprefix(
            "run_trial_")]
        assert float(run.data.params["params/min_bits"]) == row["min_bits"]


def test_tensorboard_hparams_carry_the_swept_values():
    from sweep.loggers import hparams

    config = {"kind": "compress", "gamma": 0.01, "train": {"seed": 0, "width": 0.25},
              "params": {"min_bits": 2.0, "skip_one_bit": False, "width": 0.5}}
    assert hparams(config) == {"gamma": 0.01, "kind": "compress", "seed": 0, "width": 0.5,
                               "min_bits": 2.0, "skip_one_bit": False}


@pytest.mark.parametrize("name", ["cpu-mb3", "cpu-refs", "cpu-12", "cpu-skip", "cpu-ramp"])
def test_the_sweeps_in_docs_still_draw_their_gammas(name):
    """Each committed sweep's saved settings, resolved by today's code, propose exactly the
    γs its trials.parquet holds (the data folder swapped for synthetic data: not read)."""
    folder = Path(__file__).resolve().parents[1] / "docs" / name
    saved = sweep_config.load_saved(folder)
    c = SweepConfig(**{k: v for k, v in saved.items() if k in SweepConfig.__dataclass_fields__})
    c = c.replace(dataset="synthetic", data_dir=None)
    trials = pd.read_parquet(folder / TRIALS_FILE)
    drawn = [t["gamma"] for t in configs(c) if t["kind"] == "compress" and not t["refined"]]
    refined = (trials["refined"].fillna(False).astype(bool) if "refined" in trials.columns
               else False)
    have = trials[(trials["kind"] == "compress") & ~refined]
    assert sorted(drawn) == sorted(have["gamma"]) and len(drawn) == c.num_samples * c.seeds


def test_todays_cpu_recipe_is_the_sweep_cpu_ration_which_drew_the_gammas_of_cpu_ramp():
    """docs/cpu-ration ran with the ration given as a flag, before it became the cpu preset's
    default, over cpu-ramp's range (3e-4 to 0.1, today's ends at 0.3), so that the two drew
    the same γs: a plain sweep now trains with its recipe, and with --gamma-max 0.1 draws
    its γs and cpu-ramp's."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    plain = SweepConfig(preset="cpu", num_samples=12, seed=0, references="none",
                        dataset="synthetic")
    assert with_gamma_range(plain, "cpu").gamma_max == 0.3
    paired = with_gamma_range(plain.replace(gamma_max=0.1), "cpu")
    drawn = sorted(t["gamma"] for t in configs(paired) if t["kind"] == "compress")
    assert drawn == sorted(pd.read_parquet(docs / "cpu-ramp" / TRIALS_FILE)["gamma"])
    began = pd.read_parquet(docs / "cpu-ration" / TRIALS_FILE)["gamma"]  # its trials so far
    assert len(began) >= 6 and set(began) <= set(drawn)
    folder = docs / "cpu-ration"
    trained = sweep_config.load_recipe(folder, gpu=False)  # its recipe, then its space's value
    space = sweep_config.load_saved(folder)["space"]
    trained.update({k: spec["value"] for k, spec in space.items()})
    assert trained["gamma_ramp"] == 0.5 and trained["ration"] == 0.5
    today = resolve(sweep_config.base_train_config(plain), has_gpu=False)
    differ = {k for k, v in trained.items() if getattr(today, k) != v}
    assert differ == {"dataset", "data_dir"}  # where it read CIFAR-10; the recipe is the same
