"""What ``trainer.export`` exports, and loading it without running code from the files.

A source is a run folder (``python -m trainer.train --out DIR``: model.pt beside
trials.parquet), a ``model.pt`` alone, or a trial of a sweep folder: its row of
trials.parquet and a checkpoint file, which the sweep finds (``sweep.checkpoints``) and
hands over. Anything that does not fit raises ``ExportError`` with a message that says
what to do.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.results import TRIALS_FILE

MODEL_FILE = "model.pt"


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


SweepSources = Callable[[Path, list[dict], "str | None", bool], "list[Source]"]


def find_sources(path: Path, trial: str | None, front: bool,
                 sweep_sources: SweepSources | None = None) -> list[Source]:
    """What SOURCE (with --trial / --front) names: one Source, or the front's.

    A sweep folder's trials are found by ``sweep_sources(folder, rows, trial, front)``
    (``sweep.checkpoints.sweep_sources``): the sweep knows where its checkpoints are.
    """
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
    if sweep_sources is None:
        raise ExportError(f"{path} is a sweep folder: export its trials with python -m "
                          "trainer.export (the command reads sweep folders)")
    return sweep_sources(path, read_trials(path), trial, front)


def load_source(src: Source):
    """(network, saved dict) of a Source; ExportError when the file is not an scnn network."""
    from trainer.network import model_from

    saved = load_saved(src.weights)
    try:
        model = model_from(saved)
    except Exception as err:  # a foreign config, a layout or weights that do not fit
        raise not_ours(src.weights, f"{type(err).__name__}: {first_line(err)}") from None
    return model, saved


def load_saved(path: Path) -> dict:
    """The dict in a model.pt or state.pt, loaded without running code from the file."""
    import torch  # here: a sweep's driver imports this module without needing torch

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
