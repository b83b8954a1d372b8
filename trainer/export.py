"""Export a trained network as files a user can deploy: ``python -m trainer.export SOURCE``.

SOURCE is a run folder (``python -m trainer.train --out DIR``), its ``model.pt``, or a sweep
folder with ``--trial ID`` (the trial's latest Ray checkpoint, ``state.pt``) or ``--front``
(every trial on the sweep's Pareto front of bits against accuracy, each in OUT/<trial>/).
Into ``--out`` go:

- ``weights.safetensors``: the integer weights bit-packed at each channel's bit depth, with
  bit depths, exponents, channel indices and BatchNorm (format: ``trainer.packed``). Its
  payload is ``ceil(size_bits / 8)`` bytes.
- ``model.onnx``: the slim dense float network rebuilt from that file (``trainer.dense``).
- ``export.json``: where it came from, the reported and the packed sizes, the file sizes,
  and the test accuracy re-measured from ``model.onnx`` with onnxruntime, which must be
  within 0.05 points of the reported one (else status ``failed`` and exit 1).

Files are read without unpickling code (``torch.load(weights_only=True)``). Bad input exits
2 with one line and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.cli import OneLineParser, fail
from trainer.config import ConfigError, TrainConfig
from trainer.data import MEAN, STD
from trainer.packed import Exported, Sizes, read_weights, write_weights
from trainer.results import TRIALS_FILE

__all__ = ["export_network", "main", "read_weights"]

PROG = "scnn export"
TOLERANCE = 0.0005  # 0.05 points: how far the ONNX accuracy may be from the reported one
MODEL_FILE, STATE_FILE, META_FILE = "model.pt", "state.pt", "meta.json"
WEIGHTS, ONNX, REPORT = "weights.safetensors", "model.onnx", "export.json"
ROW_KEYS = ("trial_id", "kind", "status", "gamma", "seed", "preset", "width", "epochs",
            "test_accuracy", "size_bits", "bits_fraction", "weights_kept_fraction",
            "mean_bits", "device")
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


# --- measuring -----------------------------------------------------------------------------

def test_set(config: TrainConfig, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (uint8) and labels the run was evaluated on."""
    from trainer import data as D

    if config.dataset == "synthetic":
        x, y = D.make_synthetic(config.synthetic_size, config.seed)[2:]
    else:
        x, y = D.load_cifar10_test(data_dir or config.data_dir)
    n = config.test_subset or len(y)
    return x[:n], y[:n]


def batches(x: torch.Tensor, size: int = 1000):
    """Normalised float32 batches of uint8 images, as the training's test batches."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    for i in range(0, len(x), size):
        yield (x[i:i + size].float() - mean) / std


def check_file(model, exported: Exported) -> None:
    """The file's integers and dequantized weights are the network's, bit for bit."""
    for name, layer in model.quant_layers():
        got = exported.layers[name]
        if not torch.equal(got.ints, layer.qints()):
            raise RuntimeError(f"{name}: integers read back differ from the network's")
        want = layer.qweight().detach().contiguous()
        if not torch.equal(got.weight().view(torch.int32), want.view(torch.int32)):
            raise RuntimeError(f"{name}: dequantized weights differ from qweight() in bits")


# --- exporting -----------------------------------------------------------------------------

def export_network(src: Source, model, saved: dict, test: tuple, out: Path,
                   threads: int = 0) -> dict:
    """Write the three files of one network into ``out``; return export.json's record."""
    from trainer.dense import build_dense, export_onnx, onnx_logits

    out.mkdir(parents=True, exist_ok=True)
    sizes = write_weights(model, saved["config"], out / WEIGHTS)
    exported = read_weights(out / WEIGHTS)
    check_file(model, exported)
    export_onnx(build_dense(exported), out / ONNX)
    x, y = test
    with torch.no_grad():
        torch_logits = torch.cat([model(b) for b in batches(x)]).numpy()
    logits = onnx_logits(out / ONNX, batches(x), threads)
    record = report(src, saved, sizes, out)
    record.update(
        test_images=len(y), test_accuracy_onnx=accuracy(logits, y),
        test_accuracy_torch=accuracy(torch_logits, y),
        max_logit_diff_onnx_vs_torch=float(np.abs(logits - torch_logits).max()))
    record.update(verdict(record))
    (out / REPORT).write_text(json.dumps(record, indent=2) + "\n")
    return record


def accuracy(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean())


def report(src: Source, saved: dict, sizes: Sizes, out: Path) -> dict:
    """export.json without the accuracies: source, reported row, sizes."""
    import onnx
    import onnxruntime
    import safetensors

    config = saved["config"]
    row = {k: clean(src.row.get(k)) for k in ROW_KEYS} if src.row else None
    return {
        "status": None, "error": None, "source": str(src.weights), "trial": src.trial,
        "kind": config["kind"], "gamma": config["gamma"], "reported": row,
        **reported_accuracy(row, saved),
        "size_bits": sizes.size_bits, "payload_bytes": sizes.payload,
        "payload_rounding": "ceil(size_bits / 8): one bitstream, padded to a byte once",
        "metadata_bytes": sizes.metadata, "metadata_overhead": sizes.overhead,
        "unpriced_bytes": sizes.unpriced, "batchnorm_bytes": sizes.batchnorm,
        "header_bytes": sizes.header,
        "files": {name: (out / name).stat().st_size for name in (WEIGHTS, ONNX)},
        "test_set": {k: config[k] for k in ("dataset", "data_dir", "test_subset")},
        "input": {"name": "images", "shape": ["N", 3, 32, 32], "dtype": "float32",
                  "normalise": "(pixel - mean) / std per channel, pixels in 0..255",
                  "mean": list(MEAN), "std": list(STD)},
        "output": {"name": "logits", "shape": ["N", 10]},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__,
                     "safetensors": safetensors.__version__},
    }


def reported_accuracy(row: dict | None, saved: dict) -> dict:
    """The accuracy the export must reproduce, and where it comes from.

    The trials.parquet row; else a checkpoint's last epoch; else (a bare model.pt, which
    records no metrics) the PyTorch network's, re-measured here.
    """
    if row and row.get("test_accuracy") is not None:
        return {"reported_accuracy": row["test_accuracy"],
                "reported_accuracy_from": "trials.parquet"}
    if saved.get("history"):
        return {"reported_accuracy": saved["history"][-1]["test_accuracy"],
                "reported_accuracy_from": "the checkpoint's last epoch"}
    return {"reported_accuracy": None,
            "reported_accuracy_from": "nothing reported: PyTorch float32, re-measured here"}


def clean(value):
    """A Parquet value as JSON can hold it (NaN -> None)."""
    return None if isinstance(value, float) and math.isnan(value) else value


def verdict(record: dict) -> dict:
    """status ok/failed and why: the ONNX accuracy and the payload against the reported."""
    row = record["reported"] or {}
    reported = record["reported_accuracy"]
    if reported is None:
        reported = record["test_accuracy_torch"]
    problems = []
    gap = abs(record["test_accuracy_onnx"] - reported)
    if gap > TOLERANCE + 1e-12:
        problems.append(
            f"ONNX accuracy {record['test_accuracy_onnx']:.2%} differs from the reported "
            f"{reported:.2%} by {100 * gap:.2f} points (more than {100 * TOLERANCE:.2f}; "
            f"PyTorch float32 here: {record['test_accuracy_torch']:.2%}; the run's device: "
            f"{row.get('device') or 'not recorded'})")
    if row and row.get("size_bits") is not None and row["size_bits"] != record["size_bits"]:
        problems.append(f"packed {record['size_bits']} bits but the run reported "
                        f"{row['size_bits']:.0f}")
    return {"status": "failed" if problems else "ok", "error": "; ".join(problems) or None,
            "accuracy_tolerance_points": 100 * TOLERANCE}


# --- command line --------------------------------------------------------------------------

HELP = """\
Export trained networks as files a user can deploy, and check them.

Writes into --out: weights.safetensors (each live channel's integer weights bit-packed at
its bit depth ceil(b+), with bit depths, exponents, channel indices and BatchNorm; the
packed payload is size_bits / 8 bytes), model.onnx (the slim dense float network: cut
channels gone, weights dequantized, BatchNorm folded) and export.json (sizes, and the test
accuracy re-measured from model.onnx with onnxruntime). Exit status 1 when that accuracy is
more than 0.05 points from the reported one (export.json then says failed), 2 for bad input.

examples:
  python -m trainer.export results/run1 --out exported/run1          # a trainer --out folder
  python -m trainer.export results/run1/model.pt --out exported/run1
  python -m trainer.export results/cpu-12 --trial 7dd1a_00011 --out exported/t11
  python -m trainer.export results/cpu-12 --front --out exported/front
"""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trainer.export", description=HELP,
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      error_prefix=PROG)
    p.add_argument("source", type=Path, metavar="SOURCE",
                   help="a run folder (python -m trainer.train --out DIR), its model.pt, or a "
                        "sweep folder (with --trial or --front)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="the sweep trial to export (trial_id in trials.parquet)")
    which.add_argument("--front", action="store_true",
                       help="export every trial on the sweep's Pareto front of bits vs "
                            "accuracy, each into OUT/<trial_id>/")
    p.add_argument("--data-dir", help="where CIFAR-10 is here (default: the run's --data-dir)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for PyTorch and onnxruntime (default: their choice)")
    return p


def prepare(args: argparse.Namespace) -> list[tuple[Source, object, dict, tuple, Path]]:
    """Everything checked and loaded before a file is written; ExportError/DataError else."""
    if args.out.exists() and not args.out.is_dir():
        raise ExportError(f"--out {args.out} is a file: give a folder")
    sources = find_sources(args.source, args.trial, args.front)
    tests: dict[tuple, tuple] = {}
    jobs = []
    for src in sources:
        model, saved = load_source(src)
        config = TrainConfig(**saved["config"])
        key = (config.dataset, config.synthetic_size, config.seed, config.test_subset,
               args.data_dir or config.data_dir)
        if key not in tests:
            tests[key] = test_set(config, args.data_dir)
        out = args.out / src.trial if args.front else args.out
        jobs.append((src, model, saved, tests[key], out))
    return jobs


def main(argv: list[str] | None = None) -> None:
    from trainer.data import DataError

    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        jobs = prepare(args)
    except (ExportError, ConfigError, DataError) as err:
        fail(str(err), prog=PROG)
    failed = 0
    for src, model, saved, test, out in jobs:
        record = export_network(src, model, saved, test, out, args.threads)
        print(summary(record, out))
        if record["status"] != "ok":
            failed += 1
            print(f"{PROG}: failed: {src.label}: {record['error']} (see {out / REPORT})",
                  file=sys.stderr)
    raise SystemExit(1 if failed else 0)


def summary(r: dict, out: Path) -> str:
    """What was written, in a few lines."""
    reported = r["reported_accuracy"]
    said = f"reported {reported:.2%}" if reported is not None else "nothing reported"
    return (f"{PROG}: {r['status']}: {out}/\n"
            f"  {WEIGHTS}: {r['files'][WEIGHTS]:,} bytes = payload {r['payload_bytes']:,} "
            f"(size_bits {r['size_bits']:,} / 8, rounded up) + metadata "
            f"{r['metadata_bytes']:,} ({r['metadata_overhead']:.2%} of the payload) + "
            f"BatchNorm {r['batchnorm_bytes']:,} + unpriced {r['unpriced_bytes']:,} + header "
            f"{r['header_bytes']:,}\n"
            f"  {ONNX}: {r['files'][ONNX]:,} bytes; test accuracy {r['test_accuracy_onnx']:.2%}"
            f" on {r['test_images']:,} images ({said}, PyTorch {r['test_accuracy_torch']:.2%}),"
            f" max logit difference {r['max_logit_diff_onnx_vs_torch']:.2e}")


if __name__ == "__main__":
    main()
