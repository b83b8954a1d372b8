"""Where a sweep keeps its trials' checkpoints, and the ones an export hands over.

Every epoch of a trial leaves a checkpoint folder in the trial's Ray folder,
``<sweep>/*_<trial_id>_*/checkpoint_*/`` (the trial folder named by
``sweep.space.trial_dirname``), holding ``state.pt`` (the trainer's whole state,
``TrainState.state_dict``) and ``meta.json`` (the trial's key and the epoch).
``sweep.trainable`` writes them and resumes from them; ``sweep_sources`` finds a finished
trial's final one, or those of the sweep's Pareto front, for ``trainer.export``.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.export.sources import ExportError, Source
from trainer.results import TRIALS_FILE

STATE_FILE, META_FILE = "state.pt", "meta.json"
BASELINES_DIR = "baselines"  # <sweep>/baselines/seed-<s>/model.pt: each float baseline's
#   final network (trainer.network.save_model), which --start baseline trials start from


def baseline_file(folder: str | Path, seed: int) -> Path:
    """Where the sweep in ``folder`` keeps the final network of its float baseline of ``seed``."""
    return Path(folder) / BASELINES_DIR / f"seed-{seed}" / "model.pt"
TRIAL_HELP = "pass --trial ID (a trial_id of its trials.parquet) or --front"


def sweep_sources(folder: Path, rows: list[dict], trial: str | None,
                  front: bool) -> list[Source]:
    """The Sources of a sweep folder: the trial ``trial``, or (``front``) the front's."""
    if front:
        return front_sources(folder, rows)
    if trial is None:
        raise ExportError(f"{folder} is a sweep of {len(rows)} trials: {TRIAL_HELP}")
    return [sweep_source(folder, rows, trial)]


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



def export_front(sweep: Path, out: Path, data_dir: str | None, prog: str) -> int:
    """Export every trial on ``sweep``'s Pareto front into ``out``/<trial_id>/, in-process,
    one line each; the number that failed. ExportError/DataError when nothing can be."""
    from trainer.export.write import one_line, plan, run_jobs

    jobs = plan(sweep, out, front=True, data_dir=data_dir, sweep_sources=sweep_sources)
    return run_jobs(jobs, prog=prog, say=lambda r, o: print(one_line(r, o, prog), flush=True))
