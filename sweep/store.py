"""The driver's Parquet writer: a Tune callback that keeps every trial's record and rewrites
``trials.parquet``, ``epochs.parquet`` and ``layers.parquet`` (docs/method.md §5) as trials
report and finish, each file atomically, so the analysis can read a sweep that still runs.

The records travel with Tune's experiment snapshots (``get_state``/``set_state``), so after
a resume they agree with the trials Tune restores. Whatever happened after the last
snapshot is reported again by the trials themselves; epochs are keyed by their number, so
a re-reported epoch replaces the old row instead of adding one. A finished trial's last
report carries its whole history and its layer rows, which are authoritative.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from sweep.space import overrides, swept_values
from trainer.results import EPOCH_METRICS, TRIALS_SCHEMA, write_results

WRITE_EVERY_S = 2.0  # rewrite the files at most this often for epoch results alone
# What a trial's final report contributes: its trials.parquet columns, history and layers.
SUMMARY_KEYS = (*TRIALS_SCHEMA.names, "history", "layers")
# The trials.parquet columns that are TrainConfig fields (kind and gamma are set per trial).
CONFIG_COLUMNS = ("seed", "preset", "width", "full_width", "fixed_bits", "epochs", "size_term",
                  "min_bits", "init_from")
SIZE_METRICS = ("test_accuracy", "size_bits", "bits_fraction", "weights_kept_fraction",
                "macs_kept_fraction",
                "mean_bits")


def new_record(config: dict) -> dict:
    """A trial's record: plain data, so it pickles into Tune's snapshots."""
    return {"config": dict(config), "status": "PENDING", "error": None, "epochs": {},
            "summary": None}


def trial_row(sweep: str, trial_id: str, record: dict, swept: list[str] | None = None) -> dict:
    """The trials.parquet row of one trial; a running trial shows its latest epoch.
    ``swept``: the fields the sweep varies (None: not known, older sweeps)."""
    summary = record["summary"]
    row = config_columns(record["config"])
    if summary is not None:
        row.update({k: v for k, v in summary.items() if k not in ("history", "layers")})
    elif record["epochs"]:
        last = record["epochs"][max(record["epochs"])]
        row.update({k: last.get(k) for k in SIZE_METRICS}, train_time_s=last.get("time_total_s"))
    if row.get("full_width") is None:  # sized against its own network
        row["full_width"] = row.get("width")
    return {**row, "sweep": sweep, "trial_id": trial_id, "status": record["status"],
            "error": record["error"], "swept": ",".join(swept) if swept else None}


def config_columns(config: dict) -> dict:
    """The trials.parquet columns a trial's Tune config sets, known before it reports: its
    swept fields among them (sweep.params), each in a column of its own."""
    params = swept_values(config)
    train = {**config.get("train", {}), **params, **overrides(config)}
    return {"kind": config.get("kind"), "gamma": config.get("gamma"),
            "refined": bool(config.get("refined")), "study_trial": config.get("study_trial"),
            **{k: train.get(k) for k in CONFIG_COLUMNS}, **params}


def epoch_rows(trial_id: str, record: dict) -> list[dict]:
    """The epochs.parquet rows of one trial, by epoch number, each epoch once."""
    summary = record["summary"]
    history = summary["history"] if summary is not None else [
        record["epochs"][e] for e in sorted(record["epochs"])]
    return [{"trial_id": trial_id, **{k: m.get(k) for k in EPOCH_METRICS}} for m in history]


def layer_rows(trial_id: str, record: dict) -> list[dict]:
    """The layers.parquet rows of a finished trial (none before it finishes)."""
    summary = record["summary"]
    return [{"trial_id": trial_id, **row} for row in (summary or {}).get("layers", [])]


def write(folder: str | Path, sweep: str, records: dict[str, dict],
          swept: list[str] | None = None) -> None:
    """Rewrite the three Parquet files from ``records`` (trial id -> record), atomically;
    ``swept``: the fields the sweep varies (sweep.params.swept)."""
    ids = sorted(records)
    columns = dict.fromkeys(k for r in records.values() for k in swept_values(r["config"]))
    write_results(folder, [trial_row(sweep, t, records[t], swept) for t in ids],
                  [r for t in ids for r in epoch_rows(t, records[t])],
                  [r for t in ids for r in layer_rows(t, records[t])], swept=list(columns))


def error_line(trial) -> str:
    """The trial's exception as one line (Tune keeps the full traceback in error.txt)."""
    err = trial.get_pickled_error()
    cause = getattr(err, "cause", None) or err
    if cause is not None:
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
    lines = [ln for ln in (trial.get_error() or "").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "failed (see error.txt in the trial folder)"


class ParquetCallback(Callback):
    """Keeps a record per trial and rewrites the sweep's Parquet files as they change."""

    def __init__(self, folder: str, sweep: str, swept: list[str] | None = None):
        self.folder, self.sweep, self.swept = folder, sweep, swept
        self.records: dict[str, dict] = {}
        self._dirty, self._written_at = False, 0.0

    def get_state(self) -> dict:
        return {"records": self.records}

    def set_state(self, state: dict) -> None:
        self.records = state["records"]
        self.flush()

    def _record(self, trial) -> dict:
        return self.records.setdefault(trial.trial_id, new_record(trial.config))

    def _set_status(self, trial, status: str, error: str | None = None) -> None:
        record = self._record(trial)
        record["status"], record["error"] = status, error
        self.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._set_status(trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self._record(trial)
        if "layers" in result:
            record["summary"] = {k: result[k] for k in SUMMARY_KEYS if k in result}
        else:
            record["epochs"][int(result["epoch"])] = {k: result.get(k) for k in EPOCH_METRICS}
        self._dirty = True
        if time.monotonic() - self._written_at >= WRITE_EVERY_S:
            self.flush()

    def on_step(self, iteration, trials, **info):
        if self._dirty and time.monotonic() - self._written_at >= WRITE_EVERY_S:
            self.flush()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._set_status(trial, "PENDING")  # retried from its last checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._set_status(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set_status(trial, "ERROR", error_line(trial))

    def on_experiment_end(self, trials, **info):
        self.flush()

    def flush(self) -> None:
        write(self.folder, self.sweep, self.records, getattr(self, "swept", None))
        self._dirty, self._written_at = False, time.monotonic()
