"""Draw the γ-ramp ablation (docs/ablation.md, "γ ramped over the first half, cpu preset").

    python docs/ablation-ramp/figure.py    # writes docs/ablation-ramp/gamma_curve.png

and prints each ramped sweep trial beside the front of the sweeps without the ramp at its
size (interpolated linearly in log size; blank outside their range).

Left: test accuracy against γ; right: accuracy against the bits kept. One colour per
recipe (the run name starts with r0- for no ramp, r0.5- for --gamma-ramp 0.5, r0.5-mb2- for
the ramp with --min-bits 2), one marker per seed, a line through each recipe's seed means;
crosses are the seed-0 sweeps of the first two (cpu-mb3 and cpu-ab/A without the ramp,
cpu-ramp with it).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).parent.parent))  # docs/: the shared axis styling
from recipe_figure import style  # noqa: E402

HERE = Path(__file__).parent
RECIPES = {"0": ("no ramp", "tab:red"), "0.5": ("--gamma-ramp 0.5", "tab:blue"),
           "0.5-mb2": ("--gamma-ramp 0.5 --min-bits 2", "tab:green")}
MARKERS = {0: "o", 1: "s"}
SWEEPS = {"0": ("cpu-mb3", "cpu-ab/A"), "0.5": ("cpu-ramp",), "0.5-mb2": ()}  # docs/, seed 0


def sweep_trials(folders: tuple[str, ...]) -> pd.DataFrame:
    """The finished compress trials of these sweeps in docs/."""
    rows = pd.concat([pd.read_parquet(HERE.parent / f / "trials.parquet") for f in folders])
    return rows[(rows["kind"] == "compress") & (rows["status"] == "TERMINATED")]


def front(trials: pd.DataFrame) -> pd.DataFrame:
    """The Pareto front (smallest bits for its accuracy), sorted by size."""
    rows = trials.sort_values("bits_fraction")
    return rows[rows["test_accuracy"] > rows["test_accuracy"].cummax().shift(fill_value=0)]


def seed0(trials: pd.DataFrame, ramp: str) -> pd.DataFrame:
    """Every seed-0 run of a recipe: its sweeps and the hand runs of trials.parquet."""
    hand = trials[(trials["ramp"] == ramp) & (trials["seed"] == 0)]
    return pd.concat([sweep_trials(SWEEPS[ramp]), hand])


def print_against_front(trials: pd.DataFrame) -> None:
    """Each seed-0 run of one recipe beside the other recipe's seed-0 front at its size."""
    for ramp, other in (("0.5", "0"), ("0", "0.5")):
        there = front(seed0(trials, other))
        x, y = np.log10(there["bits_fraction"]), 100 * there["test_accuracy"]
        print(f"\n{RECIPES[ramp][0]} against the front of {RECIPES[other][0]} (seed 0)\n")
        print("| run | γ | accuracy | bits | weights kept | the other front there | difference |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in seed0(trials, ramp).sort_values("gamma").itertuples():
            at, accuracy = np.log10(row.bits_fraction), 100 * row.test_accuracy
            level = np.interp(at, x, y) if x.min() <= at <= x.max() else None
            print(f"| {row.sweep}/{row.trial_id} | {row.gamma:.3g} | {accuracy:.2f} % | "
                  f"{100 * row.bits_fraction:.3g} % | {100 * row.weights_kept_fraction:.3g} % | "
                  + (f"{level:.2f} % | {accuracy - level:+.2f} |" if level is not None else
                     "(outside its sizes) | |"))


def main() -> None:
    trials = pd.read_parquet(HERE / "trials.parquet")
    trials["ramp"] = trials["trial_id"].str.extract(r"^r([0-9.]+(?:-mb2)?)-g")[0]
    trials["accuracy"] = 100 * trials["test_accuracy"]
    trials["bits"] = 100 * trials["bits_fraction"]
    fig = Figure(figsize=(12.5, 5.2), dpi=150)
    by_gamma, by_bits = fig.subplots(1, 2)
    for ramp, (label, colour) in RECIPES.items():
        rows = trials[trials["ramp"] == ramp]
        for seed, marker in MARKERS.items():
            points = rows[rows["seed"] == seed]
            if points.empty:
                continue
            for ax, x in ((by_gamma, "gamma"), (by_bits, "bits")):
                ax.scatter(points[x], points["accuracy"], color=colour, marker=marker,
                           label=f"{label}, seed {seed}" if ax is by_gamma else None)
        if SWEEPS[ramp]:
            swept = sweep_trials(SWEEPS[ramp])
            names = " and ".join(SWEEPS[ramp])
            by_gamma.scatter(swept["gamma"], 100 * swept["test_accuracy"], color=colour,
                             marker="x", label=f"{label}, seed 0, sweep {names}")
            by_bits.scatter(100 * swept["bits_fraction"], 100 * swept["test_accuracy"],
                            color=colour, marker="x")
        means = rows.groupby("gamma")[["accuracy", "bits"]].mean().reset_index()
        by_gamma.plot(means["gamma"], means["accuracy"], color=colour, alpha=0.6)
        means = means.sort_values("bits")
        by_bits.plot(means["bits"], means["accuracy"], color=colour, alpha=0.6)
    style(by_gamma, by_bits, "accuracy against γ (line: mean of seeds)")
    fig.suptitle("cpu preset, 5 epochs, full CIFAR-10, one thread per run")
    fig.tight_layout()
    fig.savefig(HERE / "gamma_curve.png")
    print_against_front(trials)


if __name__ == "__main__":
    main()
