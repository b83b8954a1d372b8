"""Seeds and the quality of a front: each γ's mean and spread over its training seeds, the
front through the means, and each sweep's widest gap and hypervolume before and after
``--refine`` (the numbers are defined in analysis.frontier).

A sweep trained with one seed per γ has one trial per γ: its means are its trials.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.frontier import CHANCE, hypervolume, widest_gap
from analysis.load import BASELINE, finished
from analysis.pareto import pareto_front

# Columns of pareto.md's table when a sweep has several seeds per γ: mean and min–max.
SEED_COLUMNS = ("sweep", "gamma", "seeds", "accuracy_mean", "accuracy_spread",
                "bits_mean", "bits_spread", "kept_mean", "mean_bits")


def refined(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial's γ was chosen by --refine (False for sweeps before --refine)."""
    if "refined" not in trials.columns:
        return pd.Series(False, index=trials.index)
    return trials["refined"].astype("boolean").fillna(False).astype(bool)


def by_gamma(trials: pd.DataFrame) -> pd.DataFrame:
    """Per sweep and γ, the finished compress trials' mean metrics, their min and max, the
    number of seeds and whether --refine chose the γ; ordered by sweep, then bits."""
    done = finished(trials).assign(refined=refined(finished(trials)))
    columns = ["sweep", "gamma", "seeds", "trial_id", "refined", "test_accuracy",
               "accuracy_min", "accuracy_max", "bits_fraction", "bits_min", "bits_max",
               "weights_kept_fraction", "kept_min", "kept_max", "mean_bits", "train_time_s"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    table = done.groupby(["sweep", "gamma"], sort=False).agg(
        seeds=("trial_id", "size"), trial_id=("trial_id", lambda s: ", ".join(map(str, s))),
        refined=("refined", "any"), test_accuracy=("test_accuracy", "mean"),
        accuracy_min=("test_accuracy", "min"), accuracy_max=("test_accuracy", "max"),
        bits_fraction=("bits_fraction", "mean"), bits_min=("bits_fraction", "min"),
        bits_max=("bits_fraction", "max"), weights_kept_fraction=("weights_kept_fraction",
                                                                  "mean"),
        kept_min=("weights_kept_fraction", "min"), kept_max=("weights_kept_fraction", "max"),
        mean_bits=("mean_bits", "mean"), train_time_s=("train_time_s", "mean")).reset_index()
    return table.loc[:, columns].sort_values(["sweep", "bits_fraction"], kind="stable")


def several_seeds(trials: pd.DataFrame) -> bool:
    """Whether some sweep has a γ trained with more than one seed (finished)."""
    means = by_gamma(trials)
    return bool(len(means)) and int(means["seeds"].max()) > 1


def mean_front(trials: pd.DataFrame, size_column: str = "bits_fraction") -> pd.DataFrame:
    """The per-γ means of one sweep's trials on their Pareto front of ``size_column``."""
    means = by_gamma(trials)
    idx = pareto_front(means[size_column].astype(float).tolist(),
                       means["test_accuracy"].astype(float).tolist())
    return means.iloc[idx]


def seed_table(trials: pd.DataFrame) -> pd.DataFrame:
    """pareto.md's table for sweeps with several seeds: each sweep's front of per-γ means
    (bits against accuracy), in SEED_COLUMNS, spreads as 'min–max' strings."""
    parts = [mean_front(trials[trials["sweep"] == s]) for s in dict.fromkeys(trials["sweep"])]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=list(SEED_COLUMNS))
    table = pd.concat(parts).reset_index(drop=True)
    table = table.assign(accuracy_mean=table["test_accuracy"], bits_mean=table["bits_fraction"],
                         kept_mean=table["weights_kept_fraction"])
    table["accuracy_spread"] = [f"{100 * lo:.2f}–{100 * hi:.2f} %" for lo, hi in
                                zip(table["accuracy_min"], table["accuracy_max"], strict=True)]
    table["bits_spread"] = [f"{100 * lo:.2f}–{100 * hi:.2f} %" for lo, hi in
                            zip(table["bits_min"], table["bits_max"], strict=True)]
    return table


def baseline_accuracy(trials: pd.DataFrame) -> float | None:
    """The float baseline's mean accuracy over its seeds, or None when none finished."""
    done = finished(trials, BASELINE)["test_accuracy"].astype(float)
    return float(done.mean()) if len(done) else None


def front_metrics(trials: pd.DataFrame) -> list[dict]:
    """Per sweep with a finished compress trial: the widest gap and hypervolume of the front
    of per-γ means (bits against accuracy), before --refine (the sampled γs only) and after
    (all γs), with how many γs each counts and the baseline that clips the hypervolume."""
    rows = []
    for sweep in dict.fromkeys(trials["sweep"]):
        mine = trials[trials["sweep"] == sweep]
        means = by_gamma(mine)
        if means.empty:
            continue
        ceiling = baseline_accuracy(mine)
        row = {"sweep": sweep, "ceiling": ceiling}
        for stage, part in (("before", means[~means["refined"]]), ("after", means)):
            sizes = part["bits_fraction"].astype(float).tolist()
            accuracies = part["test_accuracy"].astype(float).tolist()
            row[stage] = {"gammas": len(part), "widest_gap": widest_gap(sizes, accuracies),
                          "hypervolume": hypervolume(sizes, accuracies, ceiling)}
        rows.append(row)
    return rows


def _numbers(stage: dict) -> str:
    gap = stage["widest_gap"]
    gap_text = "-" if math.isnan(gap) else f"{gap:.3f}"
    return (f"widest gap {gap_text}, hypervolume {stage['hypervolume']:.2f} "
            f"({stage['gammas']} γs)")


def metrics_lines(rows: list[dict]) -> list[str]:
    """One line per sweep: its front's widest gap and hypervolume, before and after --refine
    (the same numbers for a sweep without refine γs)."""
    lines = []
    for row in rows:
        before, after = row["before"], row["after"]
        if before["gammas"] == after["gammas"]:
            lines.append(f"{row['sweep']}: front of {_numbers(after)}; no --refine γs")
        else:
            lines.append(f"{row['sweep']}: before --refine {_numbers(before)}; "
                         f"after {_numbers(after)}")
    return lines


def metrics_markdown(rows: list[dict]) -> str:
    """pareto.md's section on the fronts' widest gap and hypervolume, with their definitions."""
    if not rows:
        return ""
    clip = {r["sweep"]: r["ceiling"] for r in rows}
    clipped = ", ".join(f"{s}: {100 * c:.2f} %" if c is not None else f"{s}: no baseline, "
                        "not clipped" for s, c in clip.items())
    return ("## Front quality\n\nThe compress front of per-γ means (bits against accuracy). "
            "**Widest gap**: the largest distance between neighbouring front points in "
            "(log10 of the size fraction, accuracy as a fraction): 1 decade of size counts as "
            "100 accuracy points, 0.01 is 1 point. **Hypervolume**: the area the front "
            "dominates with x = -log10(size fraction) and y = accuracy in points, bounded "
            f"below by the corner (full float size, {100 * CHANCE:.0f} % accuracy: chance), "
            f"accuracy clipped at the float baseline's mean ({clipped}); in decades × points, "
            "larger is better. *Before* counts the sampled γs only, *after* adds the "
            "--refine γs.\n\n"
            + "".join(f"- {line}\n" for line in metrics_lines(rows)))
