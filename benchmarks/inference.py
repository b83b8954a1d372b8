"""Exported networks (``python -m trainer.export``) against the uncompressed one, onnxruntime.

Each PATH is a sweep folder with exports (``exports/*/model.onnx``, as ``python -m sweep.run
--export front`` leaves them) or an export folder (``model.onnx`` and ``export.json``). The
reference is the uncompressed network as the same kind of slim dense ONNX (BatchNorm folded):
the sweep's float-baseline trial (its final checkpoint) when a PATH is a sweep with one, else
a float ResNet-9 at the exports' width with fresh weights (speed does not depend on them).
Every network runs on the CPU with onnxruntime at ``--threads`` threads; per repetition each
network is timed once per batch size, interleaved, and the median counts. Printed per
network: images/s and ``speedup`` (its images/s over the reference's) at each batch size;
the headline ``ratio`` is, as in the other benchmarks, time over the reference's time: the
median over the networks at the largest batch (below 1 is faster).

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

EXPORTS_DIR, ONNX, REPORT, WEIGHTS = "exports", "model.onnx", "export.json", "weights.safetensors"


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
    """(model.onnx of the uncompressed network, where it came from), written into ``folder``."""
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
    path = folder / ONNX
    export_onnx(build_dense(float_exported(model.eval())), path)
    return path, said


def describe(folder: Path) -> dict:
    """Name, payload and accuracy of an export, from its export.json."""
    try:
        report = json.loads((folder / REPORT).read_text())
    except (OSError, ValueError) as err:
        raise BenchError(f"cannot read {folder / REPORT} ({err}): re-export {folder}") from None
    return {"name": report.get("trial") or folder.name, "kind": report.get("kind"),
            "payload_bytes": report.get("payload_bytes"),
            "test_accuracy": report.get("test_accuracy_onnx")}


def main() -> None:
    p = parser("inference", __doc__)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="sweep folders with exports/, or export folders")
    p.add_argument("--reps", type=count, default=5, help="repetitions (%(default)s)")
    p.add_argument("--threads", type=count, default=SPEED_THREADS,
                   help="onnxruntime threads (%(default)s, as trainer.export measures)")
    p.add_argument("--batches", type=batches, default=[1, 256],
                   help="comma-separated batch sizes (default 1,256)")
    args = p.parse_args()
    try:
        exports, sweeps = find_exports(args.paths)
        networks = {str(f): describe(f) for f in exports}
    except BenchError as err:
        fail(str(err), "benchmarks.inference")
    from trainer.export.dense import session

    with tempfile.TemporaryDirectory() as tmp:
        ref_path, ref_said = reference(sweeps, exports, Path(tmp))
        runs = {"uncompressed": session(ref_path, args.threads),
                **{key: session(Path(key) / ONNX, args.threads) for key in networks}}
        speeds: dict[str, dict[str, float]] = {name: {} for name in runs}
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
            calls = max(1, 256 // batch)  # a timing long enough to read: >= 256 images

            def timed(run, x=x, calls=calls):
                return lambda: [run.run(["logits"], {"images": x}) for _ in range(calls)]

            t = interleaved({name: timed(run) for name, run in runs.items()}, args.reps,
                            warmup=2)
            for name, seconds in t.items():
                speeds[name][str(batch)] = batch * calls / seconds
    ref = speeds.pop("uncompressed")
    rows = []
    for key, info in networks.items():
        mine = speeds[key]
        rows.append({**info, "images_per_s": {b: round(v) for b, v in mine.items()},
                     "speedup": {b: round(v / ref[b], 3) for b, v in mine.items()}})
        said = ", ".join(f"{v:,.0f} images/s at batch {b} ({v / ref[b]:.2f}x)"
                         for b, v in mine.items())
        print(f"{info['name']}: {said}")
    print("uncompressed: " + ", ".join(f"{v:,.0f} images/s at batch {b}"
                                       for b, v in ref.items()) + f" [{ref_said}]")
    top = str(max(args.batches))
    emit("inference", {
        "ratio": round(statistics.median(ref[top] / r["images_per_s"][top] for r in rows), 3),
        "ratio_at_batch": int(top), "reference": ref_said,
        "reference_images_per_s": {b: round(v) for b, v in ref.items()}, "networks": rows,
        "onnxruntime_threads": args.threads, "reps": args.reps})


if __name__ == "__main__":
    main()
