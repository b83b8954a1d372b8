"""Find sweep folders, read their Parquet results and check the columns the analysis needs.

A sweep folder holds ``trials.parquet`` (required) and usually ``epochs.parquet`` and
``layers.parquet``; a parent folder holds several sweep folders. Everything read here is
keyed by ``(sweep, trial_id)`` so that several sweeps can be drawn together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from trainer.results import EPOCHS_FILE, LAYERS_FILE, TRIALS_FILE

# Columns without which a file cannot be drawn; other schema columns are optional.
REQUIRED = {
    TRIALS_FILE: ("trial_id", "kind", "status", "gamma", "test_accuracy", "bits_fraction",
                  "weights_kept_fraction", "mean_bits", "train_time_s"),
    EPOCHS_FILE: ("trial_id", "epoch", "epoch_time_s", "bits_fraction"),
    LAYERS_FILE: ("trial_id", "layer", "out_channels_initial", "out_channels_final",
                  "mean_bits"),
}
# Older files lack the reference columns (fixed_bits, full_width) and refined: they read as
# null (refined as False, see analysis.quality.refined).
OPTIONAL_TRIAL_COLUMNS = ("sweep", "error", "seed", "width", "fixed_bits", "full_width",
                          "refined")

FINISHED, FAILED = "TERMINATED", "ERROR"
COMPRESS, BASELINE, FLOOR = "compress", "float-baseline", "floor"
NARROW_FLOAT, FIXED_BITS = "narrow-float", "fixed-bits"  # reference families (docs/method.md §5)
KINDS = (COMPRESS, BASELINE, FLOOR, NARROW_FLOAT, FIXED_BITS)  # others: counted, not drawn
DEFAULT_RESULTS = Path("results")


class ResultsError(Exception):
    """A user-facing problem with the results folder: the CLI prints it on one line, exit 2."""


@dataclass
class Results:
    """All sweeps read together; ``epochs``/``layers`` are None when no sweep has that file."""

    trials: pd.DataFrame  # one row per trial, ``sweep`` column filled in
    epochs: pd.DataFrame | None  # one row per trial and epoch, with a ``sweep`` column
    layers: pd.DataFrame | None  # one row per trial and layer, with a ``sweep`` column
    folders: list[Path] = field(default_factory=list)  # the sweep folders read
    notes: list[str] = field(default_factory=list)  # what was skipped, for the user
    names: dict[Path, str] = field(default_factory=dict)  # each folder's sweep name

    @property
    def sweeps(self) -> list[str]:
        """Sweep names in the order they were read."""
        return list(dict.fromkeys(self.trials["sweep"]))


def find_sweep_folders(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Each path is a sweep folder or a parent of sweep folders; return the sweep folders."""
    folders: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ResultsError(f"{path} does not exist: run a sweep first (python -m sweep.run) "
                               "or pass --results DIR")
        if not path.is_dir():
            raise ResultsError(f"{path} is not a folder: pass --results DIR, a sweep folder "
                               "(holding trials.parquet) or a folder of sweep folders")
        found = sorted(p.parent for p in path.rglob(TRIALS_FILE) if p.is_file())
        # A sweep's own subfolders may hold copies (MLflow's artifacts): not sweeps.
        found = [f for f in found if not any(a in found for a in f.parents)]
        if not found:
            raise ResultsError(f"no {TRIALS_FILE} under {path}: run a sweep first "
                               "(python -m sweep.run) or pass --results DIR")
        folders += [f for f in found if f not in folders]
    return folders


def read_table(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read one Parquet file, raising ResultsError when it is unreadable or lacks columns."""
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"cannot read {path}: {first_line}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path} is missing required columns: {', '.join(missing)} "
                           "(written by another version of scnn? re-run the sweep)")
    return frame


def sweep_name(trials: pd.DataFrame, folder: Path) -> str:
    """The sweep's name from its ``sweep`` column, or the folder's name when that is empty."""
    if "sweep" in trials.columns:
        names = [n for n in trials["sweep"].dropna().astype(str) if n.strip()]
        if names:
            return names[0]
    return folder.name or str(folder)


def read_sweep(folder: Path) -> dict[str, pd.DataFrame | None]:
    """Read one sweep folder: trials (required), epochs and layers (None when absent)."""
    tables: dict[str, pd.DataFrame | None] = {}
    tables[TRIALS_FILE] = read_table(folder / TRIALS_FILE, REQUIRED[TRIALS_FILE])
    for file in (EPOCHS_FILE, LAYERS_FILE):
        path = folder / file
        tables[file] = read_table(path, REQUIRED[file]) if path.is_file() else None
    return tables


def load_results(paths: Sequence[str | os.PathLike] | None = None) -> Results:
    """Read every sweep under ``paths`` (default ``results/``) into one Results."""
    folders = find_sweep_folders(paths or [DEFAULT_RESULTS])
    parts: dict[str, list[pd.DataFrame]] = {TRIALS_FILE: [], EPOCHS_FILE: [], LAYERS_FILE: []}
    notes: list[str] = []
    names: dict[Path, str] = {}
    for folder in folders:
        tables = read_sweep(folder)
        trials = tables[TRIALS_FILE]
        for column in OPTIONAL_TRIAL_COLUMNS:
            if column not in trials.columns:
                trials[column] = None
        name = sweep_name(trials, folder)
        if any(name in set(t["sweep"]) for t in parts[TRIALS_FILE]):
            name = f"{name} ({folder})"  # two folders claim one sweep name: keep them apart
        names[folder] = name
        for file, frame in tables.items():
            if frame is None:
                notes.append(f"no {file} in {folder}: the figures that need it are skipped")
            else:
                parts[file].append(frame.assign(sweep=name))
    trials = pd.concat(parts[TRIALS_FILE], ignore_index=True)
    if trials.empty:
        raise ResultsError(f"{TRIALS_FILE} under {', '.join(map(str, folders))} has no trials "
                           "yet: wait for the sweep to report, or pass another --results DIR")

    def joined(file: str) -> pd.DataFrame | None:
        return pd.concat(parts[file], ignore_index=True) if parts[file] else None

    return Results(trials=trials, epochs=joined(EPOCHS_FILE), layers=joined(LAYERS_FILE),
                   folders=folders, notes=notes, names=names)


REFERENCE_TRIAL_KINDS = (BASELINE, FLOOR, NARROW_FLOAT, FIXED_BITS)
# What must agree for another sweep's references to be this sweep's: the recipe and network
# they are measured against (the width every size is relative to).
RECIPE_COLUMNS = ("preset", "epochs", "full_width")


def borrow_references(results: Results, folder: str | os.PathLike) -> Results:
    """``results`` with the finished reference trials of the sweep in ``folder`` added to every
    sweep, for each reference kind it has none of: a recipe change to the method is then
    compared with references trained once (they do not depend on the method's recipe).

    Raises ResultsError unless the donor's references and every sweep's compress trials share
    ``RECIPE_COLUMNS`` (preset, epochs and the full width sizes are measured against).
    """
    path = Path(folder)
    if not (path / TRIALS_FILE).is_file():
        raise ResultsError(f"--references-from {path}: no {TRIALS_FILE} there: pass the "
                           "folder of a sweep run with --references full")
    donor = read_table(path / TRIALS_FILE, REQUIRED[TRIALS_FILE])
    for column in RECIPE_COLUMNS:
        if column not in donor.columns:
            donor[column] = None
    refs = donor[donor["kind"].isin(REFERENCE_TRIAL_KINDS) & (donor["status"] == FINISHED)]
    if refs.empty:
        raise ResultsError(f"--references-from {path}: no finished reference trial there: pass "
                           "the folder of a sweep run with --references full")
    donor_recipe = _recipe(refs, path)
    name = sweep_name(donor, path)
    added = []
    for sweep in results.sweeps:
        mine = results.trials[results.trials["sweep"] == sweep]
        if not (mine["kind"] == COMPRESS).any():
            continue  # nothing to compare
        recipe = _recipe(recipe_trials(mine), sweep)
        if recipe != donor_recipe:
            raise ResultsError(
                f"--references-from {path}: its references were trained with "
                f"{_describe(donor_recipe)}, the sweep {sweep} with {_describe(recipe)}: pass "
                "references of the same preset, epochs and width")
        lacking = refs[~refs["kind"].isin(set(mine["kind"]))]
        if not lacking.empty:
            added.append(lacking.assign(sweep=sweep, trial_id=f"{name}/" + lacking["trial_id"]))
            results.notes.append(f"sweep {sweep}: {len(lacking)} reference trials "
                                 f"({', '.join(dict.fromkeys(lacking['kind']))}) from {name}")
    if added:
        results.trials = pd.concat([results.trials, *added], ignore_index=True)
    return results


def recipe_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose (preset, epochs, width) are a sweep's recipe: its compress trials,
    or, where they all started from a trained network (a shorter recipe on top of it), the
    float baseline they started from, trained from scratch as references are."""
    compress = trials[trials["kind"] == COMPRESS]
    started = compress["init_from"].notna() if "init_from" in compress else None
    if started is None or not started.all():
        return compress if started is None else compress[~started]
    return trials[trials["kind"] == BASELINE]


def _recipe(trials: pd.DataFrame, where: object) -> tuple:
    """The one (preset, epochs, full width) of ``trials``; ResultsError if unknown or mixed."""
    def column(name: str) -> pd.Series:
        values = trials.get(name)
        return pd.Series(None, index=trials.index) if values is None else values

    full = column("full_width").where(column("full_width").notna(), column("width"))
    rows = set(zip(column("preset"), column("epochs"), full, strict=True))
    if len(rows) != 1 or any(pd.isna(v) for v in next(iter(rows))):
        raise ResultsError(f"--references-from: cannot tell the recipe of {where} (preset, "
                           f"epochs, width: {sorted(map(str, rows)) or 'no trials'}): pass "
                           "sweeps whose trials record one")
    preset, epochs, width = next(iter(rows))
    return str(preset), int(epochs), round(float(width), 6)


def _describe(recipe: tuple) -> str:
    return "preset {}, {} epochs, width {:g}".format(*recipe)


def finished(trials: pd.DataFrame, kind: str = COMPRESS) -> pd.DataFrame:
    """Trials of ``kind`` that finished with every final metric: the ones fronts are made of."""
    ok = (trials["kind"] == kind) & (trials["status"] == FINISHED)
    metrics = ["test_accuracy", "bits_fraction", "weights_kept_fraction"]
    return trials[ok & trials[metrics].notna().all(axis=1)]


def count_by_status(trials: pd.DataFrame) -> dict[str, int]:
    """How many trials are finished, failed, and still going (running, pending or other)."""
    status = trials["status"].fillna("UNKNOWN")
    done, failed = int((status == FINISHED).sum()), int((status == FAILED).sum())
    return {"finished": done, "failed": failed, "unfinished": len(trials) - done - failed}
