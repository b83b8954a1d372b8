"""Draw the γ-ramp ablation (docs/ablation.md, "γ ramped over the first half, cpu preset").

    python docs/ablation-ramp/figure.py    # writes docs/ablation-ramp/gamma_curve.png

Left: test accuracy against γ; right: accuracy against the bits kept. One colour per
recipe (the run name starts with r0 for today's, r0.5 for --gamma-ramp 0.5), one marker
per seed, a line through each recipe's seed means.
"""

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

HERE = Path(__file__).parent
RECIPES = {"0": ("today (no ramp)", "tab:red"), "0.5": ("--gamma-ramp 0.5", "tab:blue")}
MARKERS = {0: "o", 1: "s"}


def main() -> None:
    trials = pd.read_parquet(HERE / "trials.parquet")
    trials["ramp"] = trials["trial_id"].str.extract(r"^r([0-9.]+)-")[0]
    trials["accuracy"] = 100 * trials["test_accuracy"]
    trials["bits"] = 100 * trials["bits_fraction"]
    fig = Figure(figsize=(12.5, 5.2), dpi=150)
    by_gamma, by_bits = fig.subplots(1, 2)
    for ramp, (label, colour) in RECIPES.items():
        rows = trials[trials["ramp"] == ramp]
        for seed, marker in MARKERS.items():
            points = rows[rows["seed"] == seed]
            for ax, x in ((by_gamma, "gamma"), (by_bits, "bits")):
                ax.scatter(points[x], points["accuracy"], color=colour, marker=marker,
                           label=f"{label}, seed {seed}" if ax is by_gamma else None)
        means = rows.groupby("gamma")[["accuracy", "bits"]].mean().reset_index()
        by_gamma.plot(means["gamma"], means["accuracy"], color=colour, alpha=0.6)
        means = means.sort_values("bits")
        by_bits.plot(means["bits"], means["accuracy"], color=colour, alpha=0.6)
    by_gamma.set(xscale="log", xlabel="γ, weight of the size term (log scale)",
                 ylabel="test accuracy, %", title="accuracy against γ (line: mean of seeds)")
    by_bits.set(xscale="log", xlabel="bits kept, % of the float network (log scale)",
                ylabel="test accuracy, %", title="accuracy against size")
    for ax in (by_gamma, by_bits):
        ax.axhline(10, color="grey", linestyle=":", linewidth=1)  # chance
        ax.grid(True, which="both", alpha=0.3)
    by_gamma.legend(fontsize=8, loc="lower left")
    fig.suptitle("cpu preset, 5 epochs, full CIFAR-10, one thread per run")
    fig.tight_layout()
    fig.savefig(HERE / "gamma_curve.png")


if __name__ == "__main__":
    main()
