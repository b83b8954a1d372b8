"""Write and check the files of one exported network; the lines that report it.

``export_network`` writes ``weights.safetensors`` (``trainer.export.packed``; a quantized
network only), ``model.onnx`` (``trainer.export.dense``), ``model.int8.onnx``
(``trainer.export.integer``) and ``export.json``: where it came from, the reported and the
packed sizes, the file sizes, the test accuracy re-measured from ``model.onnx`` with
onnxruntime, which must be within 0.05 points of the reported one (else status ``failed``),
and from ``model.int8.onnx``, which ``int8_status`` says is within 0.3 points of it or not,
and the images per second of both files with onnxruntime on the CPU at batch 1 and 256
(``SPEED_THREADS`` threads, a short warm-up and a timed loop: ``inference_speed``).
A float network (float-baseline, narrow-float: the references a deployer compares with)
has no integers to pack: it gets ``model.onnx`` and onnxruntime's own int8 of it.
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
from trainer.data import MEAN, STD, batches, test_set, train_sample
from trainer.export.integer import CALIBRATION_IMAGES, INT8_FILE
from trainer.export.packed import Exported, Sizes, read_weights, write_weights
from trainer.export.sources import ExportError, Source, SweepSources, find_sources, load_source
from trainer.results import cpu_model

PROG = "scnn export"
TOLERANCE = 0.0005  # 0.05 points: how far the ONNX accuracy may be from the reported one
INT8_TOLERANCE = 0.003  # 0.3 points: how far the int8 file's may be (int8_status "ok")
WEIGHTS, ONNX, INT8, REPORT = "weights.safetensors", "model.onnx", INT8_FILE, "export.json"
SPEED_THREADS = 1  # onnxruntime threads of the speed measurement: small, fixed, comparable
SPEED_BATCHES = (1, 256)  # batch sizes it measures: one image at a time, and throughput
SPEED_SECONDS = 0.5  # timed seconds per batch size (after SPEED_WARMUP untimed runs)
SPEED_WARMUP = 3
ROW_KEYS = ("trial_id", "kind", "status", "gamma", "seed", "preset", "width", "epochs",
            "test_accuracy", "size_bits", "bits_fraction", "weights_kept_fraction",
            "macs_kept_fraction", "mean_bits", "device")


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

def export_network(src: Source, model, saved: dict, test: tuple, calibration: torch.Tensor,
                   out: Path, threads: int = 0, speed: bool = True,
                   pad_to: int | None = None, int8_bits: int | None = None) -> dict:
    """Write the files of one network into ``out``; return export.json's record.

    ``calibration``: training images (uint8) the int8 file's activations are calibrated on.
    ``speed``: measure each ONNX file's images per second (``inference_speed``).
    ``pad_to``: pad activations to multiples of this many channels; None: this CPU's NCHWc
    block (``dense.nchwc_block``). ``int8_bits``: the largest bit depth whose k go into the
    int8 file (7 or 8); None: this CPU's (``integer.int8_bits``).
    """
    from trainer.export.dense import (
        build_dense,
        export_onnx,
        float_exported,
        nchwc_block,
        onnx_logits,
        onnx_macs,
    )
    from trainer.export.integer import int8_bits as cpu_int8_bits
    from trainer.export.integer import write_int8

    if pad_to is None:
        pad_to, why = nchwc_block()
    else:
        why = "given (--pad-to)"
    bits, bits_why = cpu_int8_bits() if int8_bits is None else (int8_bits, "given (--int8-bits)")

    out.mkdir(parents=True, exist_ok=True)
    images = torch.cat(list(batches(calibration))).numpy()
    if model.quantized:
        sizes = write_weights(model, saved["config"], out / WEIGHTS)
        exported = read_weights(out / WEIGHTS)
        check_file(model, exported)
        net = build_dense(exported, pad_to)
        export_onnx(net, out / ONNX)
        int8 = write_int8(out / ONNX, out / INT8, images, exported, net, pad_to, bits)
    else:  # a float reference: onnxruntime's own post-training int8
        sizes = None
        export_onnx(build_dense(float_exported(model.eval()), pad_to), out / ONNX)
        int8 = write_int8(out / ONNX, out / INT8, images, bits=bits)
    x, y = test
    with torch.no_grad():
        torch_logits = torch.cat([model(b) for b in batches(x)]).numpy()
    logits = onnx_logits(out / ONNX, batches(x), threads)
    int8_logits = onnx_logits(out / INT8, batches(x), threads)
    record = report(src, saved, sizes, out)
    record["padding"] = {"pad_to": pad_to, "why": why}
    int8.update(int8_bits_why=bits_why, bytes=(out / INT8).stat().st_size,
                inference=inference_speed(out / INT8) if speed else None)
    if sizes is not None:
        int8["weight_bytes_over_payload"] = sum(int8["weight_bytes"].values()) / sizes.payload
    record.update(
        test_images=len(y), test_accuracy_onnx=accuracy(logits, y),
        test_accuracy_int8=accuracy(int8_logits, y),
        test_accuracy_torch=accuracy(torch_logits, y),
        max_logit_diff_onnx_vs_torch=float(np.abs(logits - torch_logits).max()),
        int8_predictions_as_onnx=float((int8_logits.argmax(1) == logits.argmax(1)).mean()),
        macs_per_image_onnx=onnx_macs(out / ONNX),
        inference=inference_speed(out / ONNX) if speed else None, int8=int8)
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
            "machine": cpu_model() or platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}


def accuracy(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean())


def report(src: Source, saved: dict, sizes: Sizes | None, out: Path) -> dict:
    """export.json without the accuracies: source, reported row, sizes (``sizes`` None: a
    float network, which has no packed file)."""
    import onnx
    import onnxruntime
    import safetensors

    config = saved["config"]
    row = {k: clean(src.row.get(k)) for k in ROW_KEYS} if src.row else None
    return {
        "status": None, "error": None, "source": str(src.weights), "trial": src.trial,
        "kind": config["kind"], "gamma": config["gamma"], "reported": row,
        **reported_accuracy(row, saved),
        **packed_sizes(sizes),
        "files": {name: (out / name).stat().st_size for name in (WEIGHTS, ONNX, INT8)
                  if (out / name).is_file()},
        "test_set": {k: config[k] for k in ("dataset", "data_dir", "test_subset")},
        "input": {"name": "images", "shape": ["N", 3, 32, 32], "dtype": "float32",
                  "normalise": "(pixel - mean) / std per channel, pixels in 0..255",
                  "mean": list(MEAN), "std": list(STD)},
        "output": {"name": "logits", "shape": ["N", 10]},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__,
                     "safetensors": safetensors.__version__},
    }


def packed_sizes(sizes: Sizes | None) -> dict:
    """The sizes of weights.safetensors in export.json (None each for a float network)."""
    keys = ("size_bits", "payload_bytes", "metadata_bytes", "metadata_overhead",
            "unpriced_bytes", "batchnorm_bytes", "header_bytes")
    if sizes is None:
        return dict.fromkeys(keys) | {"payload_rounding": None}
    return {"size_bits": sizes.size_bits, "payload_bytes": sizes.payload,
            "payload_rounding": "ceil(size_bits / 8): one bitstream, padded to a byte once",
            "metadata_bytes": sizes.metadata, "metadata_overhead": sizes.overhead,
            "unpriced_bytes": sizes.unpriced, "batchnorm_bytes": sizes.batchnorm,
            "header_bytes": sizes.header}


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
    """status ok/failed and why: the ONNX accuracy and the payload against the reported;
    int8_status ok/off: the int8 file's accuracy within INT8_TOLERANCE of the reported (it
    does not fail the export: a few images on a small test set can move it)."""
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
    if row and row.get("size_bits") is not None and record["size_bits"] is not None and \
            row["size_bits"] != record["size_bits"]:
        problems.append(f"packed {record['size_bits']} bits but the run reported "
                        f"{row['size_bits']:.0f}")
    int8_gap = abs(record["test_accuracy_int8"] - reported)
    off = int8_gap > INT8_TOLERANCE + 1e-12
    return {"status": "failed" if problems else "ok", "error": "; ".join(problems) or None,
            "accuracy_tolerance_points": 100 * TOLERANCE,
            "int8_status": "off" if off else "ok",
            "int8_error": f"int8 accuracy {record['test_accuracy_int8']:.2%} differs from the "
                          f"reported {reported:.2%} by {100 * int8_gap:.2f} points (more than "
                          f"{100 * INT8_TOLERANCE:.1f})" if off else None,
            "int8_tolerance_points": 100 * INT8_TOLERANCE}


Job = tuple[Source, object, dict, tuple, torch.Tensor, Path]
#   (source, network, saved, test set, calibration images, out)


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
    calibrations: dict[tuple, torch.Tensor] = {}
    jobs = []
    for src in sources:
        model, saved = load_source(src)
        config = TrainConfig(**saved["config"])
        key = (config.dataset, config.synthetic_size, config.seed, config.test_subset,
               data_dir or config.data_dir)
        if key not in tests:
            tests[key] = test_set(config, data_dir)
        train_key = (*key, config.train_subset)
        if train_key not in calibrations:
            calibrations[train_key] = train_sample(config, data_dir, CALIBRATION_IMAGES)
        jobs.append((src, model, saved, tests[key], calibrations[train_key],
                     out / src.trial if front else out))
    return jobs


def run_jobs(jobs: list[Job], threads: int = 0, prog: str = PROG,
             say=lambda record, out: print(summary(record, out)),
             pad_to: int | None = None, int8_bits: int | None = None) -> int:
    """Export every job, ``say`` each record; the number that failed (each said on stderr).
    ``pad_to``, ``int8_bits``: as ``export_network``'s (None: this CPU's choice)."""
    failed = 0
    for src, model, saved, test, calibration, out in jobs:
        record = export_network(src, model, saved, test, calibration, out, threads,
                                pad_to=pad_to, int8_bits=int8_bits)
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


def size_text(r: dict) -> str:
    """'payload 1,234 B + metadata 1.03%', or what a float network has instead."""
    if r["payload_bytes"] is None:
        return f"a {r['kind']} network (no integers to pack)"
    return f"payload {r['payload_bytes']:,} B + metadata {r['metadata_overhead']:.2%}"


def one_line(r: dict, out: Path, prog: str = PROG) -> str:
    """One export in one line: status, where, size, accuracy (float and int8), speed."""
    return (f"{prog}: exported {r['trial'] or r['source']} ({r['status']}): "
            f"{r['test_accuracy_onnx']:.2%} accuracy ({r['test_accuracy_int8']:.2%} in int8, "
            f"{r['int8_status']}), {size_text(r)}, {speed_text(r)}; int8 "
            f"{speed_text(r['int8'])} -> {out}/")


def summary(r: dict, out: Path) -> str:
    """What was written, in a few lines."""
    reported = r["reported_accuracy"]
    said = f"reported {reported:.2%}" if reported is not None else "nothing reported"
    q = r["int8"]
    packed = (f"  {WEIGHTS}: {r['files'][WEIGHTS]:,} bytes = payload {r['payload_bytes']:,} "
              f"(size_bits {r['size_bits']:,} / 8, rounded up) + metadata "
              f"{r['metadata_bytes']:,} ({r['metadata_overhead']:.2%} of the payload) + "
              f"BatchNorm {r['batchnorm_bytes']:,} + unpriced {r['unpriced_bytes']:,} + header "
              f"{r['header_bytes']:,}\n") if r["payload_bytes"] is not None else \
        f"  {size_text(r)}: no {WEIGHTS}\n"
    floats = "; ".join(f"{n} float: {why}" for n, why in q["float_layers"].items())
    over = q.get("weight_bytes_over_payload")
    return (f"{PROG}: {r['status']}: {out}/\n" + packed +
            f"  {ONNX}: {r['files'][ONNX]:,} bytes; test accuracy {r['test_accuracy_onnx']:.2%}"
            f" on {r['test_images']:,} images ({said}, PyTorch {r['test_accuracy_torch']:.2%}),"
            f" max logit difference {r['max_logit_diff_onnx_vs_torch']:.2e}; "
            f"{speed_text(r)}\n"
            f"  {INT8}: {q['bytes']:,} bytes, weights {q['weight_bytes']['int8']:,} B int8 + "
            f"{q['weight_bytes']['float32']:,} B float32"
            + (f" ({over:.2f}x the payload)" if over is not None else "") +
            f", {q['weights']}{'; ' + floats if floats else ''}; test accuracy "
            f"{r['test_accuracy_int8']:.2%} ({r['int8_status']}: "
            f"{'within' if r['int8_status'] == 'ok' else 'more than'} "
            f"{r['int8_tolerance_points']:.1f} points from the reported); "
            f"{speed_text(q)}")
