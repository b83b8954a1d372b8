"""The reference families (narrow float networks, every channel at one fixed bit depth): their
points and fronts, their tables, and how far each self-compressing Pareto point sits above or
below the best of them at the same size.

Reference sizes are measured against the preset's full network (docs/method.md §5), so they share
the compress trials' axes. ``envelope_at`` is pure (plain sequences in, a number out) so it
can be checked by hand; the rest applies it to the trials table, one sweep at a time (another
sweep may be another preset, with other references).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import pandas as pd

from analysis.load import FIXED_BITS, NARROW_FLOAT, finished
from analysis.pareto import front_of, pareto_front, to_markdown

REFERENCE_KINDS = (NARROW_FLOAT, FIXED_BITS)
FAMILY_NAMES = {NARROW_FLOAT: "narrow float ResNet-9 (width)",
                FIXED_BITS: "fixed bits, all channels"}
SIZE_NAMES = {"bits_fraction": "size in bits", "weights_kept_fraction": "weights kept"}
# Columns of the tables in pareto.md: one per family, and one of gaps per size axis.
FAMILY_COLUMNS = {
    NARROW_FLOAT: ("sweep", "trial_id", "width", "width_fraction", "test_accuracy",
                   "bits_fraction", "weights_kept_fraction", "mean_bits"),
    FIXED_BITS: ("sweep", "trial_id", "fixed_bits", "test_accuracy", "bits_fraction",
                 "weights_kept_fraction", "mean_bits"),
}
GAP_COLUMNS = ("sweep", "trial_id", "gamma", "test_accuracy", "bits_fraction",
               "weights_kept_fraction", "reference_accuracy", "gap")
TOLERANCE = 1e-9  # relative: a size this close to the references' range counts as inside


def reference_points(trials: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Finished trials of one reference family with their setting, ``width_fraction``
    (width over full width; null when the full width was not recorded) and ``fixed_bits``
    (the recorded bit depth, else the mean bits, which is the same number for this kind)."""
    points = finished(trials, kind).copy()
    points["width"] = _numbers(points, "width")
    full = _numbers(points, "full_width")
    points["width_fraction"] = points["width"] / full.where(full > 0)
    points["fixed_bits"] = _numbers(points, "fixed_bits").fillna(_numbers(points, "mean_bits"))
    return points.sort_values(["sweep", "bits_fraction"])


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as floats; all NaN when the frame has no such column (older files)."""
    if column not in frame.columns:
        return pd.Series(math.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def setting_label(kind: str, point: pd.Series) -> str:
    """The short label of one reference point: 'w=0.5×' (or 'w=0.125' without a full width
    to divide by) for a narrow network, '4 b' for a fixed bit depth; '' when unknown."""
    if kind == NARROW_FLOAT:
        fraction, width = point["width_fraction"], point["width"]
        return (f"w={fraction:.3g}×" if not math.isnan(fraction) else
                f"w={width:.3g}" if not math.isnan(width) else "")
    return f"{point['fixed_bits']:.3g} b" if not math.isnan(point["fixed_bits"]) else ""


def all_references(trials: pd.DataFrame) -> pd.DataFrame:
    """Every finished reference trial of every family, together (the envelope's points)."""
    return pd.concat([finished(trials, kind) for kind in REFERENCE_KINDS])


def envelope_at(size: Sequence[float], accuracy: Sequence[float], at: float) -> float | None:
    """The best accuracy the reference points reach at size ``at``, or None outside their range.

    The envelope is the points' Pareto front, linear in accuracy against log10(size) between
    front points, and level from the front's most accurate point up to the largest reference
    (a smaller reference is available at a larger size). Outside [smallest, largest reference
    size] it is not extrapolated: None. Points with a size <= 0 or NaN are left out.
    """
    if len(size) != len(accuracy):
        raise ValueError(f"size has {len(size)} values but accuracy has {len(accuracy)}")
    keep = [i for i in range(len(size)) if size[i] > 0 and not math.isnan(accuracy[i])]
    if not keep or math.isnan(at) or at <= 0:
        return None
    front = [keep[i] for i in pareto_front([size[i] for i in keep], [accuracy[i] for i in keep])]
    smallest, largest = size[front[0]], max(size[i] for i in keep)
    if at < smallest * (1 - TOLERANCE) or at > largest * (1 + TOLERANCE):
        return None
    xs = [math.log10(size[i]) for i in front]
    ys = [float(accuracy[i]) for i in front]
    x = math.log10(at)
    k = bisect.bisect_right(xs, x)  # xs[k - 1] <= x < xs[k]
    if k == 0:  # at the smallest reference, within TOLERANCE
        return ys[0]
    if k == len(xs):  # at or beyond the most accurate reference: the front is level
        return ys[-1]
    x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def gap_table(trials: pd.DataFrame, size_column: str) -> pd.DataFrame:
    """Each sweep's compress Pareto front on ``size_column`` against its own references:
    ``reference_accuracy`` is the envelope at the trial's size and ``gap`` its accuracy minus
    that (both null outside the references' range). Sweeps without references are left out."""
    rows = []
    for sweep in dict.fromkeys(trials["sweep"]):
        mine = trials[trials["sweep"] == sweep]
        refs = all_references(mine)
        if refs.empty:
            continue
        sizes = refs[size_column].astype(float).tolist()
        accuracies = refs["test_accuracy"].astype(float).tolist()
        for _, point in front_of(mine, size_column).iterrows():
            ref = envelope_at(sizes, accuracies, float(point[size_column]))
            gap = math.nan if ref is None else float(point["test_accuracy"]) - ref
            rows.append({**{c: point[c] for c in GAP_COLUMNS[:-2]},
                         "reference_accuracy": math.nan if ref is None else ref, "gap": gap})
    return pd.DataFrame(rows, columns=list(GAP_COLUMNS))


def references_markdown(trials: pd.DataFrame) -> str:
    """pareto.md's sections on the references: one table per family present, then the gaps
    per size axis; empty when no sweep has a finished reference trial."""
    families = {kind: reference_points(trials, kind) for kind in REFERENCE_KINDS}
    families = {kind: points for kind, points in families.items() if not points.empty}
    if not families:
        return ""
    parts = ["## Reference trials\n\nThe obvious alternatives to self-compression, trained "
             "with the same recipe; sizes are measured against the full network.\n"]
    for kind, points in families.items():
        parts.append(f"\n### {FAMILY_NAMES[kind]}\n\n"
                     + to_markdown(points, FAMILY_COLUMNS[kind]))
    parts.append("\n## Against the references\n\nAccuracy of each Pareto-optimal compress "
                 "trial minus the best accuracy the references of its sweep (narrow-float and "
                 "fixed-bits together) reach at the same size: their Pareto front, linear in "
                 "accuracy against log10(size), level beyond its most accurate point; sizes "
                 "outside the references' range are not extrapolated.\n")
    for size_column, name in SIZE_NAMES.items():
        gaps = gap_table(trials, size_column)
        parts.append(f"\n### {name}\n\n" + (to_markdown(gaps, GAP_COLUMNS) if len(gaps) else
                                             "no sweep has both compress and reference "
                                             "trials finished yet\n"))
    return "".join(parts)
