"""The figures of final results: size against accuracy (with the Pareto front), and the layers
of one trial.

Each function takes tables and returns a ``Figure``, or None when there is nothing to draw.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.load import BASELINE, finished
from analysis.pareto import front_of
from analysis.style import (
    BASELINE_STYLE,
    gamma_colour,
    gamma_colourbar,
    gamma_norm,
    legend_below,
    log_percent_axis,
    new_figure,
    plural,
    set_titles,
    status_note,
    sweep_styles,
    sweep_title,
    trials_label,
)

SIZE_AXES = {
    "bits_fraction": ("size in bits relative to the 32-bit float network (%, log scale)",
                      "Test accuracy against network size in bits"),
    "weights_kept_fraction": ("weights kept (% of the original network's weights, log scale)",
                              "Test accuracy against weights kept"),
}


def baseline_stats(trials: pd.DataFrame) -> tuple[float, float, int] | None:
    """Mean and standard deviation of the float baseline's accuracy and its number of seeds."""
    done = finished(trials, BASELINE)["test_accuracy"].astype(float)
    if done.empty:
        return None
    return float(done.mean()), float(done.std(ddof=1)) if len(done) > 1 else 0.0, len(done)


def draw_baseline(ax, trials: pd.DataFrame, colour: str, label_prefix: str) -> None:
    """The float baseline's accuracy as a horizontal line, with a ±1 std band over seeds."""
    stats = baseline_stats(trials)
    if stats is None:
        return
    mean, std, n = (100 * stats[0], 100 * stats[1], stats[2])
    spread = f" ± {std:.1f}" if n > 1 else ""
    ax.axhline(mean, color=colour, linestyle=BASELINE_STYLE, linewidth=1.6, zorder=1,
               label=f"{label_prefix}float baseline (size 100 %): {mean:.1f}{spread} % (n={n})")
    if n > 1:
        ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12, linewidth=0, zorder=0)


def draw_front(ax, trials: pd.DataFrame, size_column: str, style, label_prefix: str) -> None:
    """The sweep's Pareto front as a step line, held level up to its largest trial."""
    front = front_of(trials, size_column)
    if front.empty:
        return
    x = list(100 * front[size_column].astype(float))
    y = list(100 * front["test_accuracy"].astype(float))
    largest = 100 * float(finished(trials)[size_column].max())
    if largest > x[-1]:  # nothing bigger does better: carry the best accuracy to the right
        x, y = x + [largest], y + [y[-1]]
    ax.step(x, y, where="post", color=style.colour, linestyle=style.linestyle, linewidth=1.6,
            zorder=2, label=f"{label_prefix}Pareto front ({plural(len(front), 'trial')})")


def size_vs_accuracy(trials: pd.DataFrame, size_column: str) -> Figure | None:
    """Every finished trial as a point coloured by γ, each sweep's front, the float baseline."""
    done = finished(trials)
    if done.empty:
        return None
    xlabel, title = SIZE_AXES[size_column]
    sweeps = list(dict.fromkeys(trials["sweep"]))
    styles, norm = sweep_styles(sweeps), gamma_norm(done["gamma"])
    fig, ax = new_figure()
    several = len(sweeps) > 1
    for sweep in sweeps:
        mine, style = trials[trials["sweep"] == sweep], styles[sweep]
        prefix = f"{sweep}: " if several else ""
        points = finished(mine)
        ax.scatter(100 * points[size_column], 100 * points["test_accuracy"],
                   c=[gamma_colour(g, norm) for g in points["gamma"]], marker=style.marker,
                   s=46, edgecolors="black", linewidths=0.5, zorder=3)
        draw_front(ax, mine, size_column, style, prefix)
        draw_baseline(ax, mine, style.colour, prefix)
    handles = ax.get_legend_handles_labels()[0]
    for sweep in sweeps:  # what the points are; with several sweeps, which marker is which
        n = len(finished(trials[trials["sweep"] == sweep]))
        label, colour = trials_label(n, norm, "trials" if several else "finished trials")
        handles.append(Line2D([], [], linestyle="", marker=styles[sweep].marker, color=colour,
                              markeredgecolor="black",
                              label=f"{sweep}: {label}" if several else label))
    legend_below(fig, handles)
    ax.set_xscale("log")
    log_percent_axis(ax.xaxis, 100 * done[size_column].astype(float))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    set_titles(fig, ax, sweep_title(title, sweeps), status_note(trials))
    gamma_colourbar(fig, ax, norm)
    return fig


def layers_figure(layers: pd.DataFrame, trial: pd.Series, why: str = "") -> Figure:
    """One trial's layers: output channels before and after training, and mean bit depth.

    ``why`` (optional) says how the trial was chosen, in a small line under the title.
    """
    fig = Figure(figsize=(9.0, 6.4), dpi=150, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    x = np.arange(len(layers))
    before = layers["out_channels_initial"].astype(float).to_numpy()
    after = layers["out_channels_final"].astype(float).to_numpy()
    top.bar(x - 0.2, before, width=0.4, color="0.8", edgecolor="0.5", label="before training")
    top.bar(x + 0.2, after, width=0.4, color="tab:blue", label="after training (kept)")
    for xi, a in zip(x, after, strict=True):
        top.text(xi + 0.2, a, f"{a:.0f}", ha="center", va="bottom", fontsize=8)
    top.set_ylabel("output channels")
    top.set_ylim(0, 1.12 * max(before.max(), 1))
    top.legend(loc="upper left", fontsize=8)
    bits = layers["mean_bits"].astype(float).fillna(0).to_numpy()
    bottom.bar(x, bits, width=0.6, color="tab:orange")
    for xi, b, a in zip(x, bits, after, strict=True):
        bottom.text(xi, b, "cut" if a == 0 else f"{b:.1f}", ha="center", va="bottom", fontsize=8)
    bottom.set_ylabel("mean bit depth of\nkept channels (bits)")
    bottom.set_ylim(0, 1.25 * max(bits.max(), 1))
    bottom.set_xticks(x, layers["layer"].astype(str), rotation=30, ha="right")
    bottom.set_xlabel("layer (input to output)")
    for ax in (top, bottom):
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(trial_title(trial), fontsize=13)
    if why:
        top.set_title(why, fontsize=9, color="0.35")
    return fig


def trial_title(trial: pd.Series) -> str:
    """'Layers of trial X (sweep S, γ = G): A % accuracy at B % of the float size'."""
    gamma = trial.get("gamma")
    parts = [f"Layers of trial {trial['trial_id']} (sweep {trial['sweep']}"]
    if gamma is not None and not math.isnan(gamma):
        parts.append(f", γ = {gamma:.3g}")
    parts.append(")")
    acc, bits = trial.get("test_accuracy"), trial.get("bits_fraction")
    if acc is not None and not math.isnan(acc) and bits is not None and not math.isnan(bits):
        parts.append(f": {100 * acc:.1f} % accuracy at {100 * bits:.2f} % of the float size")
    title = "".join(parts)
    return title.replace("): ", "):\n", 1) if len(title) > 90 else title  # long Ray ids
