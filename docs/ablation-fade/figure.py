"""Draw the fade ablation (docs/ablation.md, "A channel fades out below the floor").

    python docs/ablation-fade/figure.py    # writes docs/ablation-fade/fade.png

and prints every run beside the other recipe's front at its size (interpolated linearly
in log size; blank outside its range), on each budget.

Top row: the proxy budget (hand runs in this folder, trial_id p-base-… and p-fade-…);
bottom row: the `cpu` preset (the sweeps cpu-ramp, without fade, and cpu-fade, with it).
Left: test accuracy against γ; right: accuracy against the bits kept.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

HERE = Path(__file__).parent
RECIPES = {"base": ("today (no fade)", "tab:blue"), "fade": ("--fade", "tab:orange")}
SWEEPS = {"base": "cpu-ramp", "fade": "cpu-fade"}  # docs/, seed 0


def finished(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows["kind"] == "compress") & (rows["status"] == "TERMINATED")]


def budgets() -> dict[str, dict[str, pd.DataFrame]]:
    """{budget: {recipe: its runs}}: the proxy's hand runs and the cpu preset's sweeps."""
    hand = pd.read_parquet(HERE / "trials.parquet")
    hand["recipe"] = hand["trial_id"].str.extract(r"^p-(base|fade)-g")[0]
    return {
        "proxy (batch 128, 12,800 images, 5 epochs)":
            {r: finished(hand[hand["recipe"] == r]) for r in RECIPES},
        "cpu preset (sweeps, 5 epochs, full CIFAR-10)":
            {r: finished(pd.read_parquet(HERE.parent / s / "trials.parquet"))
             for r, s in SWEEPS.items()}}


def front(trials: pd.DataFrame) -> pd.DataFrame:
    """The Pareto front (smallest bits for its accuracy), sorted by size."""
    rows = trials.sort_values("bits_fraction")
    return rows[rows["test_accuracy"] > rows["test_accuracy"].cummax().shift(fill_value=0)]


def print_against_front(budget: str, runs: dict[str, pd.DataFrame]) -> None:
    for recipe, other in (("fade", "base"), ("base", "fade")):
        there = front(runs[other])
        x, y = np.log10(there["bits_fraction"]), 100 * there["test_accuracy"]
        print(f"\n{budget}: {RECIPES[recipe][0]} against the front of {RECIPES[other][0]}\n")
        print("| run | γ | accuracy | bits | weights kept | bits per kept weight | "
              "the other front there | difference |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in runs[recipe].sort_values("gamma").itertuples():
            at, accuracy = np.log10(row.bits_fraction), 100 * row.test_accuracy
            level = np.interp(at, x, y) if x.min() <= at <= x.max() else None
            print(f"| {row.trial_id} | {row.gamma:.3g} | {accuracy:.2f} % | "
                  f"{100 * row.bits_fraction:.3g} % | {100 * row.weights_kept_fraction:.3g} % | "
                  f"{row.mean_bits:.2f} | "
                  + (f"{level:.2f} % | {accuracy - level:+.2f} |" if level is not None else
                     "(outside its sizes) | |"))


def main() -> None:
    fig = Figure(figsize=(12.5, 10), dpi=150)
    axes = fig.subplots(2, 2)
    for (budget, runs), (by_gamma, by_bits) in zip(budgets().items(), axes, strict=True):
        for recipe, (label, colour) in RECIPES.items():
            rows = runs[recipe].sort_values("gamma")
            by_gamma.plot(rows["gamma"], 100 * rows["test_accuracy"], "o-", color=colour,
                          label=label, alpha=0.8)
            rows = rows.sort_values("bits_fraction")
            by_bits.plot(100 * rows["bits_fraction"], 100 * rows["test_accuracy"], "o-",
                         color=colour, alpha=0.8)
        by_gamma.set(xscale="log", xlabel="γ, weight of the size term (log scale)",
                     ylabel="test accuracy, %", title=f"{budget}: accuracy against γ")
        by_bits.set(xscale="log", xlabel="bits kept, % of the float network (log scale)",
                    ylabel="test accuracy, %", title="accuracy against size")
        for ax in (by_gamma, by_bits):
            ax.axhline(10, color="grey", linestyle=":", linewidth=1)  # chance
            ax.grid(True, which="both", alpha=0.3)
        by_gamma.legend(fontsize=8, loc="lower left")
        print_against_front(budget, runs)
    fig.suptitle("Fading a channel out below the 3-bit floor (--fade), seed 0, one thread per run")
    fig.tight_layout()
    fig.savefig(HERE / "fade.png")


if __name__ == "__main__":
    main()
