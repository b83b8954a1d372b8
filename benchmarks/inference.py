"""Exported networks (``python -m trainer.export``) against the uncompressed one, onnxruntime,
each in float (``model.onnx``) and in int8 (``model.int8.onnx``), side by side in one run.

Each PATH is a sweep folder with exports (``exports/*/model.onnx``, as ``python -m sweep.run
--export front`` leaves them) or an export folder (``model.onnx`` and ``export.json``). The
reference is the uncompressed network: an export of a float-baseline network among the PATHs
(``python -m trainer.export SWEEP --trial FLOAT_TRIAL``: its float file and onnxruntime's
int8 of it), else the same kind of slim dense ONNX (BatchNorm folded) of the sweep's
float-baseline trial (its final checkpoint) when a PATH is a sweep with one, else of a float
ResNet-9 at the exports' width with fresh weights (speed does not depend on them), and
onnxruntime's int8 of it calibrated on random images (for timing; its accuracy is not
measured). Every file runs on the CPU with onnxruntime at ``--threads`` threads; per
repetition each is timed once per batch size, interleaved, and the median counts. Printed
per network and form (float, int8): images/s and ``time`` (the reference float network's
images/s over its own: its time per image relative to the uncompressed float network) at
each batch size, beside ``macs`` (its ONNX graph's multiply-accumulates over the
reference's, pad and zero weights included) and the trained network's live MACs fraction.
The headline ``ratio`` is the float time ratio, median over the networks at the largest
batch (below 1 is faster); ``int8_ratio`` the same for the int8 files.

With ``--write`` each export's ``export.json`` takes these medians as its images/s (both
files, ``timed_by`` saying so; the export's own quick look kept as ``quick_look``), so that
``python -m analysis.plots`` draws the networks as timed side by side.

    python -m benchmarks.inference results/cpu-refs [--reps 5] [--threads 1] [--batches 1,256]
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import count, emit, interleaved, parser
from trainer.cli import fail
from trainer.export.write import SPEED_THREADS
from trainer.results import cpu_model

EXPORTS_DIR, ONNX, REPORT, WEIGHTS = "exports", "model.onnx", "export.json", "weights.safetensors"
INT8 = "model.int8.onnx"
FORMS = {"float": ONNX, "int8": INT8}  # the files of an export, by form
REFERENCE = "uncompressed"


class BenchError(ValueError):
    """Bad input: one line, exit 2."""


def batches(text: str) -> list[int]:
    """argparse type: comma-separated batch sizes, each at least 1."""
    return [count(part) for part in text.split(",")]


def find_exports(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(export folders, sweep folders among the paths)."""
    found, sweeps = [], []
    for path in paths:
        if not path.is_dir():
            raise BenchError(f"{path} is not a folder: pass a sweep folder with {EXPORTS_DIR}/ "
                             f"or an export folder (python -m trainer.export ... --out DIR)")
        if (path / ONNX).is_file():
            found.append(path)
            continue
        mine = sorted(p.parent for p in path.glob(f"{EXPORTS_DIR}/*/{ONNX}"))
        if not mine:
            raise BenchError(f"no {ONNX} in {path} nor in {path}/{EXPORTS_DIR}/*/: export first "
                             "(python -m sweep.run --export front, or python -m trainer.export)")
        found += mine
        sweeps.append(path)
    return found, sweeps


def reference(sweeps: list[Path], exports: list[Path], folder: Path) -> tuple[Path, str]:
    """(a folder with model.onnx and model.int8.onnx of the uncompressed network, where it
    came from): a float-baseline export among ``exports``, else written into ``folder``."""
    for export in exports:
        if describe(export)["kind"] == "float-baseline" and (export / INT8).is_file():
            return export, f"the float-baseline export {export}"
    import torch
    from safetensors import safe_open

    from sweep.checkpoints import latest_checkpoint
    from trainer.config import TrainConfig, resolve
    from trainer.export.dense import build_dense, export_onnx, float_exported
    from trainer.export.sources import ExportError, load_saved, read_trials
    from trainer.network import model_for, model_from

    for sweep in sweeps:
        rows = [r for r in read_trials(sweep) if r["kind"] == "float-baseline"
                and r["status"] == "TERMINATED"]
        for row in rows:
            try:
                model = model_from(load_saved(latest_checkpoint(sweep, row["trial_id"])[1]))
            except ExportError:
                continue
            said = f"float-baseline trial {row['trial_id']} of {sweep.name}"
            break
        else:
            continue
        break
    else:
        with safe_open(str(exports[0] / WEIGHTS), framework="np") as f:
            config = json.loads(f.metadata()["config"])
        base = resolve(TrainConfig(**{**config, "kind": "float-baseline"}), has_gpu=False)
        torch.manual_seed(0)
        model = model_for(base).eval()
        said = f"a fresh float ResNet-9 at width {base.width:g} (no float-baseline trial)"
    from trainer.export.integer import CALIBRATION_IMAGES, write_int8

    export_onnx(build_dense(float_exported(model.eval())), folder / ONNX)
    images = np.random.default_rng(0).standard_normal((CALIBRATION_IMAGES, 3, 32, 32),
                                                      dtype=np.float32)
    write_int8(folder / ONNX, folder / INT8, images)
    return folder, said + "; int8: onnxruntime's, calibrated on random images"


def describe(folder: Path) -> dict:
    """Name, payload and accuracy of an export, from its export.json."""
    try:
        report = json.loads((folder / REPORT).read_text())
    except (OSError, ValueError) as err:
        raise BenchError(f"cannot read {folder / REPORT} ({err}): re-export {folder}") from None
    return {"name": report.get("trial") or folder.name, "kind": report.get("kind"),
            "payload_bytes": report.get("payload_bytes"),
            "test_accuracy": report.get("test_accuracy_onnx"),
            "test_accuracy_int8": report.get("test_accuracy_int8"),
            "macs_kept_fraction": (report.get("reported") or {}).get("macs_kept_fraction")}


def timings(files: dict[str, Path], batch_sizes: list[int], reps: int,
            threads: int) -> dict[str, dict[str, float]]:
    """Images per second of each ONNX file at each batch size, interleaved, median."""
    from trainer.export.dense import session

    runs = {key: session(path, threads) for key, path in files.items()}
    speeds: dict[str, dict[str, float]] = {key: {} for key in runs}
    for batch in batch_sizes:
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        calls = max(1, 256 // batch)  # a timing long enough to read: >= 256 images

        def timed(run, x=x, calls=calls):
            return lambda: [run.run(["logits"], {"images": x}) for _ in range(calls)]

        t = interleaved({key: timed(run) for key, run in runs.items()}, reps, warmup=2)
        for key, seconds in t.items():
            speeds[key][str(batch)] = batch * calls / seconds
    return speeds


def write_speeds(folder: Path, speeds: dict[str, dict[str, float]], said: str) -> None:
    """Put the interleaved medians (per form, per batch) into ``folder``'s export.json, in
    place of the export's own 0.5 s timings, which are kept as ``quick_look``."""
    path = folder / REPORT
    report = json.loads(path.read_text())
    for form, record in (("float", report.get("inference")),
                         ("int8", (report.get("int8") or {}).get("inference"))):
        if record is None or form not in speeds:
            continue
        record.setdefault("quick_look", {"images_per_s": record["images_per_s"],
                                         "timed_seconds": record.get("timed_seconds")})
        record.update(images_per_s={b: round(v, 1) for b, v in speeds[form].items()},
                      timed_by=said, machine=cpu_model() or record.get("machine"))
    path.write_text(json.dumps(report, indent=2) + "\n")


def line(name: str, speeds: dict, ref: dict, macs: float, live: float | None) -> str:
    """One network's figures: each form's images/s and time ratio, beside its MACs."""
    said = []
    for form, mine in speeds.items():
        said.append(f"{form} " + ", ".join(f"{v:,.0f} images/s at batch {b} (time "
                                           f"{ref['float'][b] / v:.2f}x)"
                                           for b, v in mine.items()))
    live_said = f", live {live:.3f}x" if live is not None else ""
    return f"{name}: {'; '.join(said)}; MACs {macs:.3f}x{live_said}"


def main() -> None:
    p = parser("inference", __doc__)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="sweep folders with exports/, or export folders")
    p.add_argument("--reps", type=count, default=5, help="repetitions (%(default)s)")
    p.add_argument("--threads", type=count, default=SPEED_THREADS,
                   help="onnxruntime threads (%(default)s, as trainer.export measures)")
    p.add_argument("--batches", type=batches, default=[1, 256],
                   help="comma-separated batch sizes (default 1,256)")
    p.add_argument("--write", action="store_true",
                   help="write each export's medians into its export.json (images_per_s, "
                   "timed_by), for analysis.plots")
    args = p.parse_args()
    try:
        exports, sweeps = find_exports(args.paths)
        networks = {str(f): describe(f) for f in exports}
    except BenchError as err:
        fail(str(err), "benchmarks.inference")
    from trainer.export.dense import onnx_macs

    with tempfile.TemporaryDirectory() as tmp:
        ref_dir, ref_said = reference(sweeps, exports, Path(tmp))
        folders = {REFERENCE: ref_dir, **{key: Path(key) for key in networks
                                          if Path(key) != ref_dir}}
        files = {(key, form): folder / name for key, folder in folders.items()
                 for form, name in FORMS.items() if (folder / name).is_file()}
        t = timings({f"{key}|{form}": path for (key, form), path in files.items()},
                    args.batches, args.reps, args.threads)
        macs = {key: onnx_macs(folder / ONNX) for key, folder in folders.items()}
    speeds = {key: {form: t[f"{key}|{form}"] for (k, form) in files if k == key}
              for key in folders}
    ref = speeds[REFERENCE]
    rows = []
    for key in folders:
        if key == REFERENCE:
            continue
        info, mine = networks[key], speeds[key]
        macs_ratio = macs[key] / macs[REFERENCE]
        rows.append({**info, "macs_ratio": round(macs_ratio, 4),
                     "images_per_s": {f: {b: round(v) for b, v in s.items()}
                                      for f, s in mine.items()},
                     "time_ratio": {f: {b: round(ref["float"][b] / v, 3) for b, v in s.items()}
                                    for f, s in mine.items()}})
        print(line(info["name"], mine, ref, macs_ratio, info["macs_kept_fraction"]))
    print(line(REFERENCE, ref, ref, 1.0, None) + f" [{ref_said}]")
    top = str(max(args.batches))

    def median_ratio(form: str) -> float | None:
        got = [r["time_ratio"][form][top] for r in rows if form in r["time_ratio"]]
        return round(statistics.median(got), 3) if got else None

    if args.write:
        said = (f"python -m benchmarks.inference --reps {args.reps}: {len(files)} files "
                f"interleaved, median")
        for key, folder in folders.items():  # a reference built here has no export.json
            if (folder / REPORT).is_file():
                write_speeds(folder, speeds[key], said)
    emit("inference", {
        "ratio": median_ratio("float"), "int8_ratio": median_ratio("int8"),
        "ratio_at_batch": int(top), "reference": ref_said,
        "reference_images_per_s": {f: {b: round(v) for b, v in s.items()}
                                   for f, s in ref.items()},
        "reference_macs_per_image": macs[REFERENCE], "networks": rows,
        "onnxruntime_threads": args.threads, "reps": args.reps})


if __name__ == "__main__":
    main()
