"""Inference speed of the exported networks: images/s against test accuracy.

Reads only the ``export.json`` files of ``exports/<trial_id>/`` in each sweep folder (what
``python -m sweep.run --export front`` and ``python -m trainer.export ... --front --out
SWEEP/exports`` write); never the networks themselves, so no torch and no onnxruntime here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figures import place_labels
from analysis.style import (
    legend_below,
    log_percent_axis,
    new_figure,
    plural,
    set_titles,
    sweep_title,
)

EXPORTS_DIR, REPORT = "exports", "export.json"
# One series per measured batch size: colour and marker, as the trial markers elsewhere.
BATCH_STYLES = {"1": ("tab:blue", "o"), "256": ("tab:orange", "s")}
COLUMNS = ("sweep", "trial_id", "kind", "gamma", "test_accuracy", "payload_bytes",
           "file_bytes", "batch", "images_per_s", "threads", "machine")


class ExportsError(ValueError):
    """An export.json that cannot be read: the message names the file."""


def load_exports(folders: Sequence[Path]) -> pd.DataFrame:
    """One row per exported network and measured batch size, from ``exports/*/export.json``.

    Exports without a speed measurement (``inference``) are left out.
    """
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).glob(f"{EXPORTS_DIR}/*/{REPORT}")):
            try:
                report = json.loads(path.read_text())
                speed = report.get("inference") or {}
                for batch, value in (speed.get("images_per_s") or {}).items():
                    rows.append({
                        "sweep": Path(folder).name,
                        "trial_id": report.get("trial") or path.parent.name,
                        "kind": report.get("kind"), "gamma": report.get("gamma"),
                        "test_accuracy": float(report["test_accuracy_onnx"]),
                        "payload_bytes": int(report["payload_bytes"]),
                        "file_bytes": int(report["files"]["weights.safetensors"]),
                        "batch": str(batch), "images_per_s": float(value),
                        "threads": speed.get("threads"), "machine": speed.get("machine")})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise ExportsError(f"cannot read {path} ({type(err).__name__}: {err}): "
                                   "re-export it (python -m trainer.export) or remove it") \
                    from None
    return pd.DataFrame(rows, columns=list(COLUMNS))


def size_text(n_bytes: int) -> str:
    """'76 kB', '1.2 MB': a point's label (payload size)."""
    return f"{n_bytes / 1e6:.2g} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.3g} kB"


def inference_figure(exports: pd.DataFrame) -> Figure | None:
    """Images/s (log) against test accuracy, one series per batch size; each point labelled
    with its payload size. None when nothing was measured."""
    if exports.empty:
        return None
    fig, ax = new_figure()
    labels = []
    for batch in sorted(exports["batch"].unique(), key=int):
        mine = exports[exports["batch"] == batch].sort_values("test_accuracy")
        colour, marker = BATCH_STYLES.get(batch, ("tab:green", "^"))
        x, y = 100 * mine["test_accuracy"], mine["images_per_s"]
        ax.plot(x, y, color=colour, marker=marker, markersize=7, markeredgecolor="black",
                markeredgewidth=0.5, linestyle="", zorder=3,
                label=f"batch {batch}")
        labels += [(xi, yi, size_text(b), colour)
                   for xi, yi, b in zip(x, y, mine["payload_bytes"], strict=True)]
    ax.set_yscale("log")
    log_percent_axis(ax.yaxis, exports["images_per_s"])  # plain numbers on the log axis
    ax.set_xlabel("test accuracy (%), re-measured from model.onnx")
    ax.set_ylabel("images per second (log scale)")
    low, high = exports["images_per_s"].min(), exports["images_per_s"].max()
    ax.set_ylim(low / 1.6, high * 1.6)  # room for the labels above and below
    span = 100 * (exports["test_accuracy"].max() - exports["test_accuracy"].min())
    middle = 100 * exports["test_accuracy"].mean()
    half = max(span * 0.65, 1.0)
    ax.set_xlim(middle - half, middle + half)
    handles = ax.get_legend_handles_labels()[0]
    handles.append(Line2D([], [], linestyle="", label="label: payload size (bit-packed weights)"))
    legend_below(fig, handles, columns=3)
    threads = sorted({int(t) for t in exports["threads"].dropna()})
    machines = sorted({str(m) for m in exports["machine"].dropna()})
    n = exports.drop_duplicates(["sweep", "trial_id"]).shape[0]
    said = "/".join(map(str, threads)) or "?"
    note = (f"{plural(n, 'exported network')}; onnxruntime on the CPU, {said} "
            f"thread{'' if threads == [1] else 's'}"
            + (f", {', '.join(machines)}" if machines else ""))
    set_titles(fig, ax, sweep_title("Inference speed against accuracy",
                                    list(dict.fromkeys(exports["sweep"]))), note)
    place_labels(fig, ax, labels, pd.DataFrame({"x": 100 * exports["test_accuracy"],
                                                "y": exports["images_per_s"]}))
    return fig
