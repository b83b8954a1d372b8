"""Draw the fade ablation (docs/ablation.md, "A channel fades out below the floor").

    python docs/ablation-fade/figure.py    # writes docs/ablation-fade/fade.png

and prints every run beside the other recipe's front at its size (interpolated linearly
in log size; blank outside its range), on each budget.

Top row: the proxy budget (hand runs in this folder, trial_id p-base-… and p-fade-…);
bottom row: the `cpu` preset (the sweeps cpu-ramp, without fade, with the seed-0 hand runs
of docs/ablation-ramp; and cpu-fade, with it, stopped after 6 of its 12 trials, with the
hand runs c-fade-… beyond its range).
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
    """{budget: {recipe: its runs}}: the proxy's hand runs (p-…), and on the cpu preset
    the sweeps with the hand runs beyond them (c-…)."""
    hand = pd.read_parquet(HERE / "trials.parquet")
    parts = hand["trial_id"].str.extract(r"^(p|c)-(base|fade)-g")
    hand["budget"], hand["recipe"] = parts[0], parts[1]
    proxy, cpu = hand[hand["budget"] == "p"], hand[hand["budget"] == "c"]
    return {
        "proxy (batch 128, 12,800 images, 5 epochs)":
            {r: finished(proxy[proxy["recipe"] == r]) for r in RECIPES},
        "cpu preset (full CIFAR-10, 5 epochs)":
            {r: finished(pd.concat([pd.read_parquet(HERE.parent / s / "trials.parquet"),
                                    cpu[cpu["recipe"] == r], RAMP_RUNS[r]()]))
             for r, s in SWEEPS.items()}}


def ramp_runs() -> pd.DataFrame:
    """The seed-0 hand runs of today's cpu recipe (docs/ablation-ramp, r0.5-g…-s0)."""
    runs = pd.read_parquet(HERE.parent / "ablation-ramp" / "trials.parquet")
    return runs[runs["trial_id"].str.match(r"^r0\.5-g[0-9.]+-s0$")]


RAMP_RUNS = {"base": ramp_runs, "fade": pd.DataFrame}


def front(trials: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The Pareto front (smallest ``axis`` for its accuracy), sorted by size."""
    rows = trials.sort_values(axis)
    return rows[rows["test_accuracy"] > rows["test_accuracy"].cummax().shift(fill_value=0)]


def print_against_front(budget: str, runs: dict[str, pd.DataFrame]) -> None:
    """Each run beside the other recipe's front at its size, on the bits and weights axes."""
    for recipe, other in (("fade", "base"), ("base", "fade")):
        print(f"\n{budget}: {RECIPES[recipe][0]} against the front of {RECIPES[other][0]}\n")
        print("| run | γ | accuracy | bits | weights kept | bits per kept weight | "
              "the other front there, bits axis | difference | weights axis | difference |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in runs[recipe].sort_values("gamma").itertuples():
            accuracy = 100 * row.test_accuracy
            cells = []
            for axis in ("bits_fraction", "weights_kept_fraction"):
                there = front(runs[other], axis)
                x, y = np.log10(there[axis]), 100 * there["test_accuracy"]
                at = np.log10(getattr(row, axis))
                cells.append(f"{np.interp(at, x, y):.2f} % | {accuracy - np.interp(at, x, y):+.2f}"
                             if x.min() <= at <= x.max() else "(outside its sizes) |")
            print(f"| {row.trial_id} | {row.gamma:.3g} | {accuracy:.2f} % | "
                  f"{100 * row.bits_fraction:.3g} % | {100 * row.weights_kept_fraction:.3g} % | "
                  f"{row.mean_bits:.2f} | {cells[0]} | {cells[1]} |")


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
