"""The Pareto front of size against accuracy, the table of its trials, and the trial to zoom on.

``pareto_front`` is pure (plain sequences in, indices out) so it can be checked by hand; the
rest applies it to the trials table of one or several sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis.load import BASELINE, finished

# Columns of pareto.csv / pareto.md, in order. Fractions stay fractions in the CSV.
TABLE_COLUMNS = ("sweep", "trial_id", "gamma", "test_accuracy", "bits_fraction",
                 "weights_kept_fraction", "mean_bits", "train_time_s")
NEAR_BEST = 0.01  # "within 1 point of the best accuracy", as a fraction
BITS_BUDGET = 0.05  # trade-off 1: the best accuracy at most 5 % of the float network's bits
ACCURACY_DROP = 0.01  # trade-off 2: the most weights removed within 1 point of the baseline
EPS = 1e-12


def pareto_front(size: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats, ordered by size (smallest first).

    A point is dominated when another is no larger and no less accurate, and strictly
    better in one of the two. Identical points do not dominate each other, so both stay.
    Points with a NaN size or accuracy are never on the front.
    """
    if len(size) != len(accuracy):
        raise ValueError(f"size has {len(size)} values but accuracy has {len(accuracy)}")
    valid = [i for i in range(len(size))
             if not (math.isnan(size[i]) or math.isnan(accuracy[i]))]
    # Smallest first; among equal sizes the most accurate first, so the others are dominated.
    order = sorted(valid, key=lambda i: (size[i], -accuracy[i]))
    front: list[int] = []
    for i in order:
        if not front or accuracy[i] > accuracy[front[-1]]:
            front.append(i)
        elif accuracy[i] == accuracy[front[-1]] and size[i] == size[front[-1]]:
            front.append(i)  # an exact duplicate of the last front point
    return front


def front_of(trials: pd.DataFrame, size_column: str = "bits_fraction") -> pd.DataFrame:
    """The finished compress trials of ``trials`` on the front of ``size_column``, by size."""
    done = finished(trials)
    idx = pareto_front(done[size_column].astype(float).tolist(),
                       done["test_accuracy"].astype(float).tolist())
    return done.iloc[idx]


def fronts_by_sweep(trials: pd.DataFrame, size_column: str = "bits_fraction"
                    ) -> dict[str, pd.DataFrame]:
    """One front per sweep (sweeps are compared, not pooled); empty fronts left out."""
    fronts = {}
    for sweep in dict.fromkeys(trials["sweep"]):
        front = front_of(trials[trials["sweep"] == sweep], size_column)
        if not front.empty:
            fronts[sweep] = front
    return fronts


def pareto_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal trials (bits vs accuracy) of every sweep, in TABLE_COLUMNS and the
    sweeps' swept fields after γ (analysis.swept)."""
    from analysis.swept import front_columns

    columns = list(front_columns(trials, TABLE_COLUMNS))
    fronts = fronts_by_sweep(trials, "bits_fraction")
    if not fronts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(fronts.values())
    return table.loc[:, columns].reset_index(drop=True)


def pick_layer_trial(trials: pd.DataFrame) -> str | None:
    """The smallest Pareto-optimal trial within 1 point of the best accuracy (all sweeps)."""
    front = front_of(trials, "bits_fraction")
    if front.empty:
        return None
    near = front[front["test_accuracy"] >= front["test_accuracy"].max() - NEAR_BEST - 1e-12]
    return str(near.sort_values("bits_fraction").iloc[0]["trial_id"])


def trade_offs(trials: pd.DataFrame) -> list[str]:
    """Per sweep, the two headline trade-offs in words (or why one cannot be given yet).

    1. The most accurate finished compress trial at <= BITS_BUDGET of the float bits.
    2. The one with the fewest weights kept (then the fewest bits) whose accuracy is within
       ACCURACY_DROP of the float baseline's (the mean over baseline seeds).
    """
    lines = []
    for sweep in dict.fromkeys(trials["sweep"]):
        mine = trials[trials["sweep"] == sweep]
        done = finished(mine)
        if not done.empty:
            baseline = finished(mine, BASELINE)["test_accuracy"].astype(float)
            lines += [f"{sweep}: {_best_at_bits(done)}",
                      f"{sweep}: {_most_removed(done, baseline)}"]
    return lines


def _best_at_bits(done: pd.DataFrame) -> str:
    small = done[done["bits_fraction"] <= BITS_BUDGET + EPS]
    if small.empty:
        return (f"no trial at <= {BITS_BUDGET:.0%} of the float bits yet (smallest: "
                f"{_pct(done['bits_fraction'].min())}); a larger --gamma-max reaches it")
    best = small.sort_values(["test_accuracy", "bits_fraction"], ascending=[False, True]).iloc[0]
    return (f"best accuracy at <= {BITS_BUDGET:.0%} of the float bits: "
            f"{_pct(best['test_accuracy'])} at {_pct(best['bits_fraction'])} of the bits "
            f"({_who(best)})")


def _most_removed(done: pd.DataFrame, baseline: pd.Series) -> str:
    within = f"within {100 * ACCURACY_DROP:.0f} point of"
    if baseline.empty:
        return f"no finished float baseline, so no accuracy to stay {within}"
    near = done[done["test_accuracy"] >= baseline.mean() - ACCURACY_DROP - EPS]
    if near.empty:
        return (f"no trial {within} the float baseline ({_pct(baseline.mean())}); the best "
                f"reached {_pct(done['test_accuracy'].max())}")
    best = near.sort_values(["weights_kept_fraction", "bits_fraction", "test_accuracy"],
                            ascending=[True, True, False]).iloc[0]  # ties: fewest bits
    return (f"most weights removed {within} the float baseline ({_pct(baseline.mean())}): "
            f"{_pct(1 - best['weights_kept_fraction'])} removed, "
            f"{_pct(best['test_accuracy'])} accuracy, {_pct(best['bits_fraction'])} of the "
            f"bits ({_who(best)})")


def _pct(fraction: float) -> str:
    return f"{100 * float(fraction):.2f} %"


def _who(trial: pd.Series) -> str:
    return f"γ = {float(trial['gamma']):.3g}, trial {trial['trial_id']}"


# How each numeric column is written in the Markdown tables (percent columns use _pct).
FORMATS = {"gap": "{:+.2f} points", "width": "{:.3g}", "width_fraction": "{:.3g}×",
           "fixed_bits": "{:.3g}", "gamma": "{:.3g}", "mean_bits": "{:.2f}",
           "train_time_s": "{:.0f} s", "seeds": "{:.0f}"}
PERCENT_COLUMNS = ("test_accuracy", "bits_fraction", "weights_kept_fraction",
                   "reference_accuracy", "accuracy_mean", "bits_mean", "kept_mean")


def _cell(column: str, value: object) -> str:
    """One value of the Markdown table, in the units a reader expects."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return OUTSIDE if column == "gap" else "-"
    if column in PERCENT_COLUMNS:
        return _pct(value)
    if column == "gap":
        return FORMATS[column].format(100 * float(value))
    if column in FORMATS:
        return FORMATS[column].format(float(value))
    if isinstance(value, float):  # a swept field's value
        return f"{value:.3g}"
    return str(value)


HEADERS = {"sweep": "sweep", "trial_id": "trial", "gamma": "γ", "test_accuracy": "accuracy",
           "bits_fraction": "size (% of float32)", "weights_kept_fraction": "weights kept",
           "mean_bits": "mean bits", "train_time_s": "train time",
           "width": "width", "width_fraction": "width (× full)", "fixed_bits": "bits per weight",
           "reference_accuracy": "best reference at this size",
           "gap": "above (+) / below (-) the references", "seeds": "seeds",
           "accuracy_spread": "accuracy min–max", "bits_spread": "size min–max",
           "accuracy_mean": "accuracy (mean)", "bits_mean": "size (mean, % of float32)",
           "kept_mean": "weights kept (mean)"}
OUTSIDE = "outside the references' range"  # a gap that is not extrapolated


def to_markdown(table: pd.DataFrame, columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A table as GitHub Markdown (default: the Pareto table), percentages and units spelled
    out."""
    columns = list(columns)
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" if c in ("sweep", "trial_id") else "---:" for c in columns)
             + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(c, getattr(row, c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
