"""Write and check the three files of one exported network; the lines that report it.

``export_network`` writes ``weights.safetensors`` (``trainer.export.packed``), ``model.onnx``
(``trainer.export.dense``) and ``export.json``: where it came from, the reported and the
packed sizes, the file sizes, the test accuracy re-measured from ``model.onnx`` with
onnxruntime, which must be within 0.05 points of the reported one (else status ``failed``),
and the images per second of ``model.onnx`` with onnxruntime on the CPU at batch 1 and 256
(``SPEED_THREADS`` threads, a short warm-up and a timed loop: ``inference_speed``).
``plan`` loads everything before a file is written; ``run_jobs`` exports each job.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from trainer.config import TrainConfig, check_writable_folder
from trainer.data import MEAN, STD, batches, test_set
from trainer.export.packed import Exported, Sizes, read_weights, write_weights
from trainer.export.sources import ExportError, Source, SweepSources, find_sources, load_source

PROG = "scnn export"
TOLERANCE = 0.0005  # 0.05 points: how far the ONNX accuracy may be from the reported one
WEIGHTS, ONNX, REPORT = "weights.safetensors", "model.onnx", "export.json"
SPEED_THREADS = 1  # onnxruntime threads of the speed measurement: small, fixed, comparable
SPEED_BATCHES = (1, 256)  # batch sizes it measures: one image at a time, and throughput
SPEED_SECONDS = 0.5  # timed seconds per batch size (after SPEED_WARMUP untimed runs)
SPEED_WARMUP = 3
ROW_KEYS = ("trial_id", "kind", "status", "gamma", "seed", "preset", "width", "epochs",
            "test_accuracy", "size_bits", "bits_fraction", "weights_kept_fraction",
            "mean_bits", "device")


# --- measuring -----------------------------------------------------------------------------

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
                   threads: int = 0, speed: bool = True) -> dict:
    """Write the three files of one network into ``out``; return export.json's record.

    ``speed``: measure ``model.onnx``'s images per second (``inference_speed``).
    """
    from trainer.export.dense import build_dense, export_onnx, onnx_logits

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
        max_logit_diff_onnx_vs_torch=float(np.abs(logits - torch_logits).max()),
        inference=inference_speed(out / ONNX) if speed else None)
    record.update(verdict(record))
    (out / REPORT).write_text(json.dumps(record, indent=2) + "\n")
    return record


def inference_speed(onnx_path: Path) -> dict:
    """Images per second of an ONNX network at each of SPEED_BATCHES (export.json's
    ``inference``): onnxruntime, CPU, SPEED_THREADS threads."""
    import platform

    from trainer.export.dense import onnx_speed

    runs = {str(b): onnx_speed(onnx_path, b, SPEED_THREADS, SPEED_SECONDS, SPEED_WARMUP)
            for b in SPEED_BATCHES}
    return {"runtime": "onnxruntime CPUExecutionProvider", "threads": SPEED_THREADS,
            "warmup_runs": SPEED_WARMUP, "timed_seconds": SPEED_SECONDS,
            "images_per_s": {b: r["images_per_s"] for b, r in runs.items()},
            "runs": {b: r["runs"] for b, r in runs.items()},
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


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


Job = tuple[Source, object, dict, tuple, Path]  # (source, network, saved, test set, out)


def plan(source: Path, out: Path, trial: str | None = None, front: bool = False,
         data_dir: str | None = None, threads: int = 0,
         sweep_sources: SweepSources | None = None) -> list[Job]:
    """Everything checked and loaded before a file is written; ExportError/DataError else.

    ``sweep_sources`` finds a sweep folder's trials (``sources.find_sources``)."""
    check_writable_folder(out, "--out")  # ConfigError: a file, or a folder it cannot make
    if threads < 0:
        raise ExportError(f"--threads must be >= 0 (0: the libraries' choice), got {threads}")
    sources = find_sources(source, trial, front, sweep_sources)
    tests: dict[tuple, tuple] = {}
    jobs = []
    for src in sources:
        model, saved = load_source(src)
        config = TrainConfig(**saved["config"])
        key = (config.dataset, config.synthetic_size, config.seed, config.test_subset,
               data_dir or config.data_dir)
        if key not in tests:
            tests[key] = test_set(config, data_dir)
        jobs.append((src, model, saved, tests[key], out / src.trial if front else out))
    return jobs


def run_jobs(jobs: list[Job], threads: int = 0, prog: str = PROG,
             say=lambda record, out: print(summary(record, out))) -> int:
    """Export every job, ``say`` each record; the number that failed (each said on stderr)."""
    failed = 0
    for src, model, saved, test, out in jobs:
        record = export_network(src, model, saved, test, out, threads)
        say(record, out)
        if record["status"] != "ok":
            failed += 1
            print(f"{prog}: failed: {src.label}: {record['error']} (see {out / REPORT})",
                  file=sys.stderr)
    return failed


def speed_text(r: dict) -> str:
    """'1,234 images/s at batch 1, 5,678 at batch 256 (onnxruntime, 1 thread)'."""
    inf = r.get("inference")
    if not inf:
        return "speed not measured"
    parts = [f"{v:,.0f} images/s at batch {b}" if i == 0 else f"{v:,.0f} at batch {b}"
             for i, (b, v) in enumerate(inf["images_per_s"].items())]
    n = inf["threads"]
    return f"{', '.join(parts)} (onnxruntime, {n} thread{'s' if n != 1 else ''})"


def one_line(r: dict, out: Path, prog: str = PROG) -> str:
    """One export in one line: status, where, size, accuracy, speed."""
    return (f"{prog}: exported {r['trial'] or r['source']} ({r['status']}): "
            f"{r['test_accuracy_onnx']:.2%} accuracy, payload {r['payload_bytes']:,} B + "
            f"metadata {r['metadata_overhead']:.2%}, {speed_text(r)} -> {out}/")


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
            f" max logit difference {r['max_logit_diff_onnx_vs_torch']:.2e}\n"
            f"  speed: {speed_text(r)}")
