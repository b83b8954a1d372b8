"""Two training recipes side by side, for the ablation figures in docs/ (not a package:
``docs/ablation-fade/figure.py`` and ``docs/ablation-ration/figure.py`` put this folder on
``sys.path`` and import it; ``docs/ablation-ramp/figure.py`` takes ``style`` alone).

``budgets`` maps a budget's title (the proxy, the ``cpu`` preset) to ``{recipe: runs}``,
each runs a trials.parquet frame; ``recipes`` maps a recipe to its (label, colour), the
one under test first and today's second. ``draw`` plots, one row per budget, accuracy
against γ (left) and against the bits kept (right); ``print_against_front`` prints every
run beside the other recipe's front at its size (interpolated linearly in log size; blank
outside its range), on the bits and the weights axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DOCS = Path(__file__).parent


def finished(rows: pd.DataFrame) -> pd.DataFrame:
    """The compress trials that ran to the end."""
    return rows[(rows["kind"] == "compress") & (rows["status"] == "TERMINATED")]


def front(trials: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The Pareto front (smallest ``axis`` for its accuracy), sorted by size."""
    rows = trials.sort_values(axis)
    return rows[rows["test_accuracy"] > rows["test_accuracy"].cummax().shift(fill_value=0)]


def print_against_front(budget: str, runs: dict[str, pd.DataFrame],
                        recipes: dict[str, tuple[str, str]]) -> None:
    """Each run beside the other recipe's front at its size, on the bits and weights axes."""
    new, today = list(recipes)
    for recipe, other in ((new, today), (today, new)):
        print(f"\n{budget}: {recipes[recipe][0]} against the front of {recipes[other][0]}\n")
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


def style(by_gamma, by_bits, gamma_title: str) -> None:
    """Log axes, labels, a dotted line at chance and the legend of one row's two panels."""
    by_gamma.set(xscale="log", xlabel="γ, weight of the size term (log scale)",
                 ylabel="test accuracy, %", title=gamma_title)
    by_bits.set(xscale="log", xlabel="bits kept, % of the float network (log scale)",
                ylabel="test accuracy, %", title="accuracy against size")
    for ax in (by_gamma, by_bits):
        ax.axhline(10, color="grey", linestyle=":", linewidth=1)  # chance
        ax.grid(True, which="both", alpha=0.3)
    by_gamma.legend(fontsize=8, loc="lower left")


def draw(budgets: dict[str, dict[str, pd.DataFrame]], recipes: dict[str, tuple[str, str]],
         title: str, path: Path) -> None:
    """The figure (one row per budget) to ``path``, and the tables to stdout."""
    fig = Figure(figsize=(12.5, 5 * len(budgets)), dpi=150)
    axes = fig.subplots(len(budgets), 2, squeeze=False)
    for (budget, runs), (by_gamma, by_bits) in zip(budgets.items(), axes, strict=True):
        for recipe, (label, colour) in recipes.items():
            rows = runs[recipe].sort_values("gamma")
            by_gamma.plot(rows["gamma"], 100 * rows["test_accuracy"], "o-", color=colour,
                          label=label, alpha=0.8)
            rows = rows.sort_values("bits_fraction")
            by_bits.plot(100 * rows["bits_fraction"], 100 * rows["test_accuracy"], "o-",
                         color=colour, alpha=0.8)
        style(by_gamma, by_bits, f"{budget}: accuracy against γ")
        print_against_front(budget, runs, recipes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
