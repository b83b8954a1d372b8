"""The exported networks in time: test accuracy against time per image, float and int8.

Reads only the ``export.json`` files of ``exports/<trial_id>/`` in each sweep folder (what
``python -m sweep.run --export front`` and ``python -m trainer.export ... --front --out
SWEEP/exports`` write; a float-baseline or narrow-float trial exported with ``--trial ID
--out SWEEP/exports/ID`` joins them as a reference); never the networks themselves, so no
torch and no onnxruntime here. Each network is drawn twice: as ``model.onnx`` (float32) and
as ``model.int8.onnx`` (the trained integers; for a float network onnxruntime's own int8).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figures import place_labels
from analysis.load import BASELINE, COMPRESS, FIXED_BITS, NARROW_FLOAT
from analysis.style import legend_below, log_percent_axis, new_figure, new_panels, plural

EXPORTS_DIR, REPORT = "exports", "export.json"
FLOAT, INT8 = "float32", "int8"  # the two forms of every exported network
FILES = {FLOAT: "model.onnx", INT8: "model.int8.onnx"}
FORM_COLOURS = {FLOAT: "tab:blue", INT8: "tab:red"}
# Marker and legend name per network kind; a kind not listed is drawn as "^" with its name.
KIND_STYLES = {COMPRESS: ("o", "self-compressing"), FIXED_BITS: ("d", "fixed bits"),
               BASELINE: ("*", "float baseline"), NARROW_FLOAT: ("h", "narrow float")}
PANEL_BATCHES = ("256", "1")  # left to right; other measured batch sizes follow
COLUMNS = ("sweep", "trial_id", "kind", "gamma", "status", "form", "test_accuracy",
           "file_bytes", "payload_bytes", "macs_graph", "macs_live_fraction", "int8_layers",
           "layers", "batch",
           "images_per_s", "ms_per_image", "threads", "machine", "timed_by")


class ExportsError(ValueError):
    """An export.json that cannot be read: the message names the file."""


def load_exports(folders: Sequence[Path], names: Mapping[Path, str] | None = None
                 ) -> pd.DataFrame:
    """One row per exported network, form (float32, int8) and measured batch size, from
    ``exports/*/export.json``; a form without a speed measurement is left out. ``names``:
    each folder's sweep name (``Results.names``; default: the folder's name).

    ``payload_bytes`` is null for a float network (nothing bit-packed); ``macs_graph`` is
    the ONNX graph's multiply-adds per image, ``macs_live_fraction`` the trained network's
    live MACs over the full network's (from its trials.parquet row; null if not recorded);
    ``int8_layers`` of ``layers`` run as int8 in model.int8.onnx (0 of 0: no int8 file).
    """
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).glob(f"{EXPORTS_DIR}/*/{REPORT}")):
            try:
                sweep = (names or {}).get(folder) or Path(folder).name
                rows += _report_rows(sweep, path.parent.name,
                                     json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise ExportsError(f"cannot read {path} ({type(err).__name__}: {err}): "
                                   "re-export it (python -m trainer.export) or remove it") \
                    from None
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _report_rows(sweep: str, folder_name: str, report: dict) -> list[dict]:
    """The rows of one export.json (older ones, without ``int8``, give float rows only)."""
    reported = report.get("reported") or {}
    payload = report.get("payload_bytes")
    network = {"sweep": sweep, "trial_id": str(report.get("trial") or folder_name),
               "kind": report.get("kind"), "gamma": report.get("gamma"),
               "status": report.get("status", "ok"),
               "payload_bytes": None if payload is None else int(payload),
               "macs_graph": _number(report.get("macs_per_image_onnx")),
               "macs_live_fraction": _number(reported.get("macs_kept_fraction"))}
    int8 = report.get("int8") or {}
    # a layer with a row over int8's range stays float in model.int8.onnx (docs/export.md)
    network["int8_layers"] = len(int8.get("int8_layers") or [])
    network["layers"] = network["int8_layers"] + len(int8.get("float_layers") or {})
    forms = {FLOAT: (report.get("inference"), report["test_accuracy_onnx"],
                     report["files"].get(FILES[FLOAT])),
             INT8: (int8.get("inference"), report.get("test_accuracy_int8"),
                    int8.get("bytes", report["files"].get(FILES[INT8])))}
    rows = []
    for form, (speed, accuracy, n_bytes) in forms.items():
        if not speed or accuracy is None:
            continue
        for batch, value in (speed.get("images_per_s") or {}).items():
            rows.append({**network, "form": form, "test_accuracy": float(accuracy),
                         "file_bytes": _number(n_bytes), "batch": str(batch),
                         "images_per_s": float(value), "ms_per_image": 1000 / float(value),
                         "threads": speed.get("threads"), "machine": speed.get("machine"),
                         "timed_by": speed.get("timed_by")})
    return rows


def _number(value) -> float:
    return math.nan if value is None else float(value)


def usable(exports: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The exports whose ``model.onnx`` kept the reported accuracy (status ok), and a note
    for each one left out."""
    bad = exports[exports["status"] != "ok"].drop_duplicates(["sweep", "trial_id"])
    notes = [f"export {r.sweep}/{r.trial_id} left out of the time figure and table: its "
             f"export.json says {r.status} (model.onnx's accuracy is not the reported one)"
             for r in bad.itertuples()]
    return exports[exports["status"] == "ok"], notes


def baseline_of(exports: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The rows of the sweep's exported float baseline (its first trial_id), or none."""
    mine = exports[(exports["sweep"] == sweep) & (exports["kind"] == BASELINE)]
    if mine.empty:
        return mine
    return mine[mine["trial_id"] == sorted(mine["trial_id"])[0]]


def macs_fraction(exports: pd.DataFrame) -> pd.Series:
    """Per row, the graph's MACs over the sweep's exported float baseline's graph MACs
    (NaN without a baseline export)."""
    full = {sweep: baseline_of(exports, sweep)["macs_graph"].max()
            for sweep in exports["sweep"].unique()}
    return exports["macs_graph"] / exports["sweep"].map(full)


def macs_text(row: pd.Series) -> str:
    """A point's label: its live MACs as trained ('23 % MACs'), else its graph's share of
    the float baseline's, and how many layers its int8 file runs in int8 when not all
    ('81 % MACs, 6/9 int8'); '' when no MACs are known."""
    fraction = row["macs_live_fraction"]
    if math.isnan(fraction):
        fraction = row["macs_fraction"]
    if math.isnan(fraction):
        return ""
    some = 0 < row["layers"] != row["int8_layers"]  # its int8 file is partly float
    return f"{100 * fraction:.0f} % MACs" + (
        f", {row['int8_layers']}/{row['layers']} int8" if some else "")


def time_figure(exports: pd.DataFrame) -> Figure | None:
    """Test accuracy against time per image (ms, log axis), one panel per batch size (256,
    then 1): each exported network as model.onnx (blue) and model.int8.onnx (red), a marker
    per kind, the self-compressing networks joined in order of accuracy, each network labelled
    once per panel with its MACs. None when nothing was measured."""
    if exports.empty:
        return None
    exports = exports.assign(macs_fraction=macs_fraction(exports))
    batches = sorted(exports["batch"].unique(), key=lambda b: (
        PANEL_BATCHES.index(b) if b in PANEL_BATCHES else len(PANEL_BATCHES), int(b)))
    if len(batches) == 1:
        fig, first = new_figure()
        axes = [first]
    else:
        fig, axes = new_panels(len(batches))
    for ax, batch in zip(axes, batches, strict=True):
        _draw_panel(fig, ax, exports[exports["batch"] == batch], batch)
    handles = [Line2D([], [], color=FORM_COLOURS[form], marker="s", linestyle="",
                      label=f"{FILES[form]} ({form})") for form in (FLOAT, INT8)]
    for kind in dict.fromkeys(exports["kind"]):
        marker, name = KIND_STYLES.get(kind, ("^", str(kind)))
        handles.append(Line2D([], [], color="0.3", marker=marker, linestyle="",
                              markerfacecolor="white", label=name))
    handles += [Line2D([], [], linestyle="", label="label: MACs kept (live, as trained)"),
                Line2D([], [], linestyle="", label=timing_text(exports))]
    legend_below(fig, handles, columns=3)
    fig.suptitle(_title(exports), fontsize=12)
    return fig


def timing_text(exports: pd.DataFrame) -> str:
    """How the times were taken: side by side by benchmarks.inference (``timed_by``), or
    each export's own 0.5 s, a quick look that a busy machine moves by up to 2x."""
    said = set(exports["timed_by"].dropna())
    if len(said) == 1 and exports["timed_by"].notna().all():
        return f"timed side by side: {said.pop()}"
    if said:
        return ("timed partly side by side, partly by each export (0.5 s, a quick look): "
                "python -m benchmarks.inference --write times them all together")
    return ("each export's own 0.5 s timing (a quick look: python -m benchmarks.inference "
            "--write times them side by side)")


def _title(exports: pd.DataFrame) -> str:
    sweeps = list(dict.fromkeys(exports["sweep"]))
    threads = sorted({int(t) for t in exports["threads"].dropna()})
    machines = sorted({str(m) for m in exports["machine"].dropna()})
    n = exports.drop_duplicates(["sweep", "trial_id"]).shape[0]
    where = f", sweep {sweeps[0]}" if len(sweeps) == 1 else ""
    said = "/".join(map(str, threads)) or "?"
    return (f"Accuracy against inference time{where}: {plural(n, 'exported network')}, "
            f"onnxruntime on the CPU, {said} thread{'' if threads == [1] else 's'}"
            + (f", {', '.join(machines)}" if machines else ""))


def _draw_panel(fig: Figure, ax, rows: pd.DataFrame, batch: str) -> None:
    labels = []
    for (kind, form), mine in rows.groupby(["kind", "form"], sort=False):
        mine = mine.sort_values("test_accuracy")  # a front's line: along its accuracy
        marker, _ = KIND_STYLES.get(kind, ("^", str(kind)))
        colour = FORM_COLOURS[form]
        x, y = mine["ms_per_image"], 100 * mine["test_accuracy"]
        big = marker == "*"
        ax.plot(x, y, color=colour, marker=marker, markersize=12 if big else 6.5,
                markeredgecolor="black", markeredgewidth=0.5, zorder=3,
                linestyle="-" if kind == COMPRESS else "", linewidth=0.8, alpha=0.9)
        if form == INT8:  # each network labelled once, at its int8 point
            labels += [(xi, yi, macs_text(r), "0.25") for xi, yi, (_, r)
                       in zip(x, y, mine.iterrows(), strict=True) if macs_text(r)]
    ax.set_xscale("log")
    log_percent_axis(ax.xaxis, rows["ms_per_image"])  # plain numbers on the log axis
    low, high = rows["ms_per_image"].min(), rows["ms_per_image"].max()
    ax.set_xlim(low / 1.35, high * 1.35)
    accuracy = 100 * rows["test_accuracy"]
    margin = max(0.08 * (accuracy.max() - accuracy.min()), 0.5)
    ax.set_ylim(accuracy.min() - margin, accuracy.max() + margin)
    ax.set_xlabel(f"time per image at batch {batch} (ms, log scale)")
    ax.set_ylabel("test accuracy (%), re-measured from each file")
    ax.set_title(f"batch {batch}", fontsize=10, color="0.35")
    place_labels(fig, ax, labels, pd.DataFrame({"x": rows["ms_per_image"], "y": accuracy}))


# --- the table of pareto.md ----------------------------------------------------------------

TABLE_HEADER = ("| sweep | network | kind | accuracy: float32 / int8 | bytes: packed / "
                "model.onnx / model.int8.onnx | ms per image, batch 1: float32 / int8 | "
                "ms per image, batch 256: float32 / int8 | int8 time over the float "
                "baseline's, batch 256: float32 / int8 | MACs: live / in the graph (% of "
                "the float baseline's) | layers in int8 |\n"
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")


def exports_markdown(exports: pd.DataFrame) -> str:
    """pareto.md's section on the exported networks: one row per network, its float32 and
    int8 files side by side; '' when there are none."""
    if exports.empty:
        return ""
    exports = exports.assign(macs_fraction=macs_fraction(exports))
    lines = []
    for sweep in dict.fromkeys(exports["sweep"]):
        mine = exports[exports["sweep"] == sweep]
        base = baseline_of(exports, sweep)
        order = mine.drop_duplicates("trial_id").sort_values(
            ["macs_graph", "trial_id"], ascending=[False, True], na_position="last")
        for network in order.itertuples():
            rows = mine[mine["trial_id"] == network.trial_id]
            lines.append(_table_row(rows, base, network))
    machines = sorted({str(m) for m in exports["machine"].dropna()})
    threads = sorted({int(t) for t in exports["threads"].dropna()})
    return ("## Exported networks in time\n\n"
            "Each exported network as `model.onnx` (float32) and `model.int8.onnx` (the "
            "trained integers as int8 weights; for a float network onnxruntime's own int8), "
            "from `exports/*/export.json`: test accuracy re-measured from each file, time "
            f"per image with onnxruntime on the CPU ({'/'.join(map(str, threads)) or '?'} "
            f"thread{'' if threads == [1] else 's'}"
            + (f", {', '.join(machines)}" if machines else "")
            + f"; {timing_text(exports)}). The float baseline is the sweep's exported "
            "float-baseline trial.\n\n" + TABLE_HEADER + "\n".join(lines) + "\n")


def _table_row(rows: pd.DataFrame, base: pd.DataFrame, network) -> str:
    def at(frame: pd.DataFrame, form: str, batch: str | None, column: str) -> float:
        pick = frame[frame["form"] == form]
        if batch is not None:
            pick = pick[pick["batch"] == batch]
        return float(pick[column].iloc[0]) if len(pick) else math.nan

    def pair(values: Sequence[float], fmt: str) -> str:
        return " / ".join("-" if math.isnan(v) else fmt.format(v) for v in values)

    ms = {(form, batch): at(rows, form, batch, "ms_per_image")
          for form in (FLOAT, INT8) for batch in ("1", "256")}
    over = [ms[INT8, "256"] / at(base, form, "256", "ms_per_image") for form in (FLOAT, INT8)]
    accuracy = [100 * at(rows, form, None, "test_accuracy") for form in (FLOAT, INT8)]
    sizes = [_number(network.payload_bytes), at(rows, FLOAT, None, "file_bytes"),
             at(rows, INT8, None, "file_bytes")]
    macs = [100 * network.macs_live_fraction, 100 * network.macs_fraction]
    return (f"| {network.sweep} | {network.trial_id} | {network.kind} | "
            f"{pair(accuracy, '{:.2f} %')} | {pair(sizes, '{:,.0f}')} | "
            f"{pair([ms[f, '1'] for f in (FLOAT, INT8)], '{:.3f}')} | "
            f"{pair([ms[f, '256'] for f in (FLOAT, INT8)], '{:.3f}')} | "
            f"{pair(over, '{:.2f}×')} | {pair(macs, '{:.1f} %')} | "
            f"{network.int8_layers} of {network.layers} |")
