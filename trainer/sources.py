"""What ``trainer.export`` exports, and loading it without running code from the files.

A source is a run folder (``python -m trainer.train --out DIR``: model.pt beside
trials.parquet), a ``model.pt`` alone, or a trial of a sweep folder (its row of
trials.parquet and the latest checkpoint ``state.pt`` in its Ray trial folder,
``*_<trial_id>_*/checkpoint_*/``, which for a finished trial is its final state). Anything
that does not fit raises ``ExportError`` with a message that says what to do.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.results import TRIALS_FILE

MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "state.pt", "meta.json"
TRIAL_HELP = "pass --trial ID (a trial_id of its trials.parquet) or --front"


class ExportError(Exception):
    """Bad input: the CLI prints it on one line and exits 2, before writing anything."""


@dataclass
class Source:
    """A trained network to export, and what is known about it."""

    weights: Path  # model.pt, or a sweep checkpoint's state.pt
    label: str  # how to name it to the user
    trial: str | None = None  # trial_id, when there is a trials.parquet row
    row: dict | None = None  # that row


# --- finding what to export ----------------------------------------------------------------

def read_trials(folder: Path) -> list[dict]:
    """The rows of ``folder``/trials.parquet."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(folder / TRIALS_FILE).to_pylist()
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ExportError(f"cannot read {folder / TRIALS_FILE} ({first_line(err)}): "
                          "pass a run or sweep folder written by scnn") from None


def find_sources(path: Path, trial: str | None, front: bool) -> list[Source]:
    """What SOURCE (with --trial / --front) names: one Source, or the front's."""
    if not path.exists():
        raise ExportError(f"{path} does not exist: pass a run folder (python -m trainer.train "
                          "--out DIR), its model.pt, or a sweep folder with --trial ID")
    model = path if path.is_file() else path / MODEL_FILE
    if model.is_file():
        if trial is not None or front:
            raise ExportError(f"{path} is a single run: --trial and --front go with a sweep "
                              "folder; drop them")
        rows = read_trials(model.parent) if (model.parent / TRIALS_FILE).is_file() else []
        row = rows[0] if len(rows) == 1 else None
        return [Source(model, str(path), row and row["trial_id"], row)]
    if not (path / TRIALS_FILE).is_file():
        raise ExportError(f"no run in {path}: expected {MODEL_FILE} (python -m trainer.train "
                          f"--out DIR) or a sweep's {TRIALS_FILE} (python -m sweep.run)")
    rows = read_trials(path)
    if front:
        return front_sources(path, rows)
    if trial is None:
        raise ExportError(f"{path} is a sweep of {len(rows)} trials: {TRIAL_HELP}")
    return [sweep_source(path, rows, trial)]


def front_sources(folder: Path, rows: list[dict]) -> list[Source]:
    """The finished compress trials on the sweep's front of bits_fraction vs accuracy."""
    import pandas as pd

    from analysis.pareto import front_of

    front = front_of(pd.DataFrame(rows), "bits_fraction") if rows else []
    if len(front) == 0:
        raise ExportError(f"no finished compress trial in {folder / TRIALS_FILE}, so no "
                          "front to export: wait for the sweep, or pass --trial ID")
    return [sweep_source(folder, rows, t) for t in front["trial_id"]]


def sweep_source(folder: Path, rows: list[dict], trial: str) -> Source:
    """A finished trial of a sweep and its final checkpoint (the latest of its Ray folder)."""
    row = next((r for r in rows if r["trial_id"] == trial), None)
    if row is None:
        known = ", ".join(r["trial_id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise ExportError(f"trial {trial!r} is not in {folder / TRIALS_FILE} (it has {known}): "
                          f"{TRIAL_HELP}")
    if row["status"] != "TERMINATED":
        why = f"failed ({row.get('error')})" if row["status"] == "ERROR" else \
            f"has not finished (status {row['status']})"
        raise ExportError(f"trial {trial} {why}: only finished trials (status TERMINATED) "
                          "can be exported; pick another with --trial")
    epoch, state = latest_checkpoint(folder, trial)
    if row.get("epochs") is not None and epoch != row["epochs"]:
        raise ExportError(f"trial {trial}'s latest checkpoint is epoch {epoch} of "
                          f"{row['epochs']}: it has not finished; pick another with --trial")
    return Source(state, f"{folder} trial {trial}", trial, row)


def latest_checkpoint(folder: Path, trial: str) -> tuple[int, Path]:
    """(epoch, state.pt) of the latest checkpoint in the trial's Ray folder."""
    found = []
    for checkpoint in folder.glob(f"*_{trial}_*/checkpoint_*"):
        try:
            epoch = int(json.loads((checkpoint / META_FILE).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not one of ours, or being written
        if (checkpoint / STATE_FILE).is_file():
            found.append((epoch, checkpoint / STATE_FILE))
    if not found:
        raise ExportError(f"no checkpoint of trial {trial} in {folder} (expected "
                          f"*_{trial}_*/checkpoint_*/{STATE_FILE}): was the sweep folder moved "
                          "without its trial folders?")
    return max(found)


def load_source(src: Source):
    """(network, saved dict) of a Source; ExportError when the file is not an scnn network."""
    from trainer.train import model_from

    saved = load_saved(src.weights)
    try:
        model = model_from(saved)
    except Exception as err:  # a foreign config, a layout or weights that do not fit
        raise not_ours(src.weights, f"{type(err).__name__}: {first_line(err)}") from None
    if not model.quantized:
        raise ExportError(f"{src.label} is a {saved['config']['kind']} network, not quantized: "
                          "only compress and fixed-bits networks have integers to export")
    return model, saved


def load_saved(path: Path) -> dict:
    """The dict in a model.pt or state.pt, loaded without running code from the file."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may refuse
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise not_ours(path, "it holds Python objects besides tensors, numbers, lists and "
                       "dicts; they are not loaded, as that could run code" if "Weights only"
                       in str(err) else f"unreadable: {first_line(err)}") from None
    except Exception as err:  # not a zip or pickle at all, truncated, ...
        raise not_ours(path, f"not a PyTorch file: {type(err).__name__}: "
                       f"{first_line(err)[:80]}") from None
    missing = [k for k in ("config", "layout", "model")
               if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise not_ours(path, f"it has no {', '.join(missing)}")
    return saved


def not_ours(path: Path, why: str) -> ExportError:
    return ExportError(f"{path} is not a network saved by scnn ({why}): pass a run folder or "
                       "model.pt written by python -m trainer.train --out, or a sweep folder "
                       "with --trial")


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
