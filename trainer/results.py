"""The three Parquet result files (docs/method.md §5): their schemas and atomic writes.

Pure pyarrow, no torch: the sweep writes these files too, and the analysis reads the
column names from here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TRIALS_FILE, EPOCHS_FILE, LAYERS_FILE = "trials.parquet", "epochs.parquet", "layers.parquet"

TRIALS_SCHEMA = pa.schema([
    ("sweep", pa.string()),
    ("trial_id", pa.string()),
    ("kind", pa.string()),  # compress | float-baseline | narrow-float | fixed-bits | floor
    ("status", pa.string()),  # TERMINATED | ERROR | RUNNING | PENDING
    ("error", pa.string()),  # one-line error of a failed trial, else null
    ("gamma", pa.float64()),
    ("seed", pa.int64()),  # the trial's training seed (weight init, data order, augmentation)
    ("refined", pa.bool_()),  # gamma chosen by the sweep's --refine (null: not by a sweep)
    ("swept", pa.string()),  # the fields its sweep varied, comma-separated, γ first
    #   (sweep.params; null: written before spaces existed, γ alone)
    ("study_trial", pa.int64()),  # its point's number in the sweep's Optuna study
    #   (--search optuna; null: not chosen by a study)
    ("preset", pa.string()),
    ("width", pa.float64()),  # channel multiplier the trial trained at
    ("epochs", pa.int64()),
    ("fixed_bits", pa.float64()),  # bit depth every channel keeps: fixed-bits only, else null
    ("full_width", pa.float64()),  # width whose weights (N0) the sizes are measured against:
    #   the trial's own width, except for narrow-float (the sweep's width)
    ("test_accuracy", pa.float64()),  # fraction in [0, 1]
    ("size_bits", pa.float64()),  # exact size of the weights in bits
    ("bits_fraction", pa.float64()),  # size_bits / (32 * N0)
    ("weights_kept_fraction", pa.float64()),  # live weights / N0
    ("mean_bits", pa.float64()),  # size_bits / live weights
    ("macs_kept_fraction", pa.float64()),  # forward MACs of the live weights / original's
    ("size_term", pa.string()),  # what the size term counted: bits | bops (null: bits)
    ("min_bits", pa.float64()),  # bit depth under which a compress trial's channels died
    #   at once (TrainConfig.min_bits; null: written before it existed, when it was 0)
    ("init_from", pa.string()),  # what it started from: the trained float network's file
    #   (--init-from; a sweep's own baseline: "baseline"), null: random weights
    ("train_time_s", pa.float64()),  # wall time of training, evaluation included
    ("device", pa.string()),
    ("precision", pa.string()),  # what its steps computed in: fp32 | bf16 (autocast), auto
    #   already resolved (TrainConfig.precision; null: written before it existed, when a GPU
    #   trained in bf16 and a CPU in fp32)
    ("hostname", pa.string()),
    ("cpu_model", pa.string()),  # the CPU's model name (/proc/cpuinfo; machines change from
    #   day to day, so times compare only between rows of one model; null: not recorded)
    ("code_version", pa.string()),
    ("torch_version", pa.string()),
])

EPOCHS_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("epoch", pa.int64()),  # 1-based
    ("train_loss", pa.float64()),  # mean cross-entropy over the epoch (size term excluded)
    ("test_accuracy", pa.float64()),
    ("size_bits", pa.float64()),
    ("bits_fraction", pa.float64()),
    ("weights_kept_fraction", pa.float64()),
    ("mean_bits", pa.float64()),
    ("macs_kept_fraction", pa.float64()),  # forward MACs of the live weights / original's
    ("channels_kept", pa.int64()),  # live output channels summed over the conv layers
    ("epoch_time_s", pa.float64()),  # training time of this epoch, evaluation excluded
    ("time_total_s", pa.float64()),  # wall time since the trial started
    ("lr", pa.float64()),  # weights' learning rate at the end of the epoch
])

LAYERS_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("layer", pa.string()),
    ("out_channels_initial", pa.int64()),
    ("out_channels_final", pa.int64()),
    ("in_channels_initial", pa.int64()),
    ("in_channels_final", pa.int64()),
    ("mean_bits", pa.float64()),  # mean exact bit depth of the live channels
    ("weights_initial", pa.int64()),
    ("weights_final", pa.int64()),
])

SCHEMAS = {TRIALS_FILE: TRIALS_SCHEMA, EPOCHS_FILE: EPOCHS_SCHEMA, LAYERS_FILE: LAYERS_SCHEMA}
EPOCH_METRICS = tuple(n for n in EPOCHS_SCHEMA.names if n != "trial_id")


def cpuinfo_field(keys: tuple[str, ...], cpuinfo: str | None = None) -> str | None:
    """The first /proc/cpuinfo line starting with one of ``keys``, after its colon; None
    where there is none (or no such file). ``cpuinfo``: the file's text (read when None)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if line.startswith(keys)), None)


def cpu_model() -> str | None:
    """The CPU's model name as /proc/cpuinfo gives it (e.g. ``AMD EPYC``), or None."""
    return cpuinfo_field(("model name",))


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """This CPU's flags (x86) or Features (ARM) from /proc/cpuinfo (``cpuinfo``: its text,
    read when None); none off Linux."""
    return (cpuinfo_field(("flags", "Features"), cpuinfo) or "").split()


def code_version() -> str:
    """``git describe`` of the checkout this code runs from, else the package version."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scnn")
    except PackageNotFoundError:
        return "unknown"


def to_table(rows: Iterable[Mapping], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table of exactly ``schema``'s columns; missing keys become null."""
    rows = list(rows)
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def write_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600; results are for everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trials_schema(swept: Iterable[str] = ()) -> pa.Schema:
    """TRIALS_SCHEMA with a column for each swept TrainConfig field it lacks (a sweep's
    space, sweep.params), typed as the field, in the order given."""
    from trainer.config import TrainConfig

    types = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    annotations = {f.name: str(f.type) for f in fields(TrainConfig)}
    extra = []
    for name in swept:
        if name in TRIALS_SCHEMA.names:
            continue
        kind = next(k for k in (bool, int, float, str) if k.__name__ in annotations[name])
        extra.append((name, types[kind]))
    return pa.schema([*TRIALS_SCHEMA, *extra])


def write_results(folder: str | os.PathLike, trials: Iterable[Mapping],
                  epochs: Iterable[Mapping], layers: Iterable[Mapping],
                  swept: Iterable[str] = ()) -> None:
    """Write trials/epochs/layers Parquet files into ``folder``, each atomically;
    ``swept``: fields a sweep varies, each given a trials.parquet column (trials_schema)."""
    schemas = {**SCHEMAS, TRIALS_FILE: trials_schema(swept)}
    for name, rows in ((TRIALS_FILE, trials), (EPOCHS_FILE, epochs), (LAYERS_FILE, layers)):
        write_atomic(to_table(rows, schemas[name]), Path(folder) / name)
