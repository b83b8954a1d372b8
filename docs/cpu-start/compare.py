"""The sweep from the trained baseline (cpu-start) against the one from scratch on the same
γs, same day and machine (cpu-scratch): CPU time, the paired trials, the fronts' quality and
the cpu preset's targets. ``python docs/cpu-start/compare.py [START SCRATCH]`` (default: the
two folders in docs/) prints the tables of docs/results.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.quality import front_metrics, metrics_lines

DOCS = Path(__file__).parent.parent
sys.path.insert(0, str(DOCS))  # docs/recipe_figure.py, shared by the ablation figures
from recipe_figure import finished, print_against_front  # noqa: E402


def load(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "trials.parquet")


def cpu_time(trials: pd.DataFrame) -> str:
    """Seconds of training per kind (one thread per trial, so CPU-seconds), and in all."""
    done = trials[trials["status"] == "TERMINATED"]
    parts = done.groupby("kind")["train_time_s"].agg(["sum", "count"])
    each = ", ".join(f"{k} {row['sum']:.0f} s ({row['count']:.0f})" for k, row in parts.iterrows())
    return f"{done['train_time_s'].sum():.0f} s: {each}"


def targets(trials: pd.DataFrame) -> list[str]:
    """The cpu preset's targets: 79.0 % at <= 3 % of the bits; half the weights removed
    within one point of the sweep's own float baseline."""
    done = trials[(trials["status"] == "TERMINATED") & (trials["kind"] == "compress")]
    base = float(trials.loc[trials["kind"] == "float-baseline", "test_accuracy"].iloc[0])
    small = done[done["bits_fraction"] <= 0.03]
    best = small["test_accuracy"].max() if len(small) else float("nan")
    near = done[done["test_accuracy"] >= base - 0.01]
    kept = near["weights_kept_fraction"].min() if len(near) else float("nan")
    return [f"best at <= 3 % of the bits: {100 * best:.2f} % (target 79.0 %: "
            f"{'met' if best >= 0.79 else 'missed'} by {100 * abs(best - 0.79):.2f} points)",
            f"fewest weights kept within one point of its float baseline ({100 * base:.2f} %): "
            f"{100 * kept:.1f} % (target <= 50 %: {'met' if kept <= 0.5 else 'missed'} by "
            f"{100 * abs(kept - 0.5):.1f} points of the weights)"]


def cell(trials: pd.DataFrame, gamma: float) -> str:
    """One trial's accuracy and sizes ("" when it has not finished)."""
    if gamma not in trials.index or pd.isna(trials.loc[gamma, "test_accuracy"]):
        return ""
    r = trials.loc[gamma]
    return (f"{100 * r['test_accuracy']:.2f} % at {100 * r['bits_fraction']:.3f} % of the "
            f"bits, {100 * r['weights_kept_fraction']:.1f} % of the weights")


def paired(start: pd.DataFrame, scratch: pd.DataFrame) -> str:
    """Each γ's two trials side by side."""
    cols = ["gamma", "test_accuracy", "bits_fraction", "weights_kept_fraction", "train_time_s"]

    def done(trials: pd.DataFrame) -> pd.DataFrame:
        ended = (trials["kind"] == "compress") & (trials["status"] == "TERMINATED")
        return trials[ended][cols].set_index("gamma")

    a, b = done(start), done(scratch)
    rows = ["| γ | from the trained baseline | from scratch | time (start / scratch) |",
            "|---:|---|---|---:|"]
    for g in sorted(set(a.index) | set(b.index)):
        ratio = (f"{a.loc[g, 'train_time_s'] / b.loc[g, 'train_time_s']:.2f}"
                 if g in a.index and g in b.index else "")
        rows.append(f"| {g:.4g} | {cell(a, g)} | {cell(b, g)} | {ratio} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    start_dir, scratch_dir = (Path(p) for p in (argv or [DOCS / "cpu-start", DOCS / "cpu-scratch"]))
    start, scratch = load(start_dir), load(scratch_dir)
    print(paired(start, scratch), "\n")
    print_against_front("cpu preset, seed 0", {"start": finished(start),
                                               "scratch": finished(scratch)},
                        {"start": ("from the trained baseline", ""),
                         "scratch": ("from scratch", "")})
    print()
    for name, trials in (("from the trained baseline", start), ("from scratch", scratch)):
        print(f"{name}: {cpu_time(trials)}")
        print("  " + "\n  ".join(targets(trials)))
    both = pd.concat([start, scratch])
    print("\n" + "\n".join(metrics_lines(front_metrics(both))))
    t_start = start.loc[start["status"] == "TERMINATED", "train_time_s"].sum()
    t_scratch = scratch.loc[scratch["status"] == "TERMINATED", "train_time_s"].sum()
    compress = scratch.loc[scratch["kind"] == "compress", "train_time_s"].sum()
    print(f"\nCPU time, whole sweeps (baseline and floor included): {t_start / t_scratch:.3f}x; "
          f"against the scratch sweep's compress trials alone: {t_start / compress:.3f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
