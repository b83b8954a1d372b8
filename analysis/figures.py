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
from analysis.pareto import front_of, pareto_front
from analysis.quality import by_gamma, mean_front, several_seeds
from analysis.references import (
    FAMILY_NAMES,
    REFERENCE_KINDS,
    all_references,
    reference_points,
    setting_label,
)
from analysis.style import (
    BASELINE_STYLE,
    LABEL_OFFSETS,
    LABEL_SIZE,
    REFERENCE_STYLES,
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


def baseline_stats(trials: pd.DataFrame) -> tuple[float, float, float, int] | None:
    """Mean, lowest and highest accuracy of the float baseline over its seeds, and n."""
    done = finished(trials, BASELINE)["test_accuracy"].astype(float)
    if done.empty:
        return None
    return float(done.mean()), float(done.min()), float(done.max()), len(done)


def start_note(points: pd.DataFrame) -> str:
    """Where these trials started, for their legend entry: "" from random weights, else
    e.g. ", compressed from a trained float network" (some: "(5 of them)")."""
    if "init_from" not in points or points.empty:
        return ""
    n = int(points["init_from"].notna().sum())
    if n == 0:
        return ""
    some = "" if n == len(points) else f" ({n} of them)"
    return f", from a trained float network{some}"


def draw_baseline(ax, trials: pd.DataFrame, colour: str, label_prefix: str) -> None:
    """The float baseline's mean accuracy as a horizontal line, with a band from its lowest
    to its highest seed (the same spread the trials' bars show)."""
    stats = baseline_stats(trials)
    if stats is None:
        return
    mean, low, high, n = (100 * stats[0], 100 * stats[1], 100 * stats[2], stats[3])
    spread = f" (min–max {low:.1f}–{high:.1f})" if n > 1 else ""
    ax.axhline(mean, color=colour, linestyle=BASELINE_STYLE, linewidth=1.6, zorder=1,
               label=f"{label_prefix}float baseline (size 100 %): {mean:.1f} %{spread} (n={n})")
    if n > 1:
        ax.axhspan(low, high, color=colour, alpha=0.12, linewidth=0, zorder=0)


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


def draw_seed_means(ax, trials: pd.DataFrame, size_column: str, style, norm,
                    label_prefix: str) -> None:
    """A sweep with several seeds per γ: each γ at its seeds' mean, with a bar from its lowest
    to its highest accuracy; the front through the means; and a band over the front from
    each front γ's lowest to highest seed."""
    means = by_gamma(trials)
    x, y = 100 * means[size_column].astype(float), 100 * means["test_accuracy"].astype(float)
    ax.errorbar(x, y, yerr=[y - 100 * means["accuracy_min"].astype(float),
                            100 * means["accuracy_max"].astype(float) - y],
                fmt="none", ecolor="0.35", elinewidth=0.9, capsize=2.5, zorder=2.8)
    ax.scatter(x, y, c=[gamma_colour(g, norm) for g in means["gamma"]], marker=style.marker,
               s=46, edgecolors="black", linewidths=0.5, zorder=3)
    front = mean_front(trials, size_column)
    if front.empty:
        return
    fx = list(100 * front[size_column].astype(float))
    fy = list(100 * front["test_accuracy"].astype(float))
    lo = list(100 * front["accuracy_min"].astype(float))
    hi = list(100 * front["accuracy_max"].astype(float))
    largest = float(x.max())
    if largest > fx[-1]:  # nothing bigger does better: carry the best accuracy to the right
        fx, fy, lo, hi = fx + [largest], fy + [fy[-1]], lo + [lo[-1]], hi + [hi[-1]]
    n = int(means["seeds"].max())
    ax.step(fx, fy, where="post", color=style.colour, linestyle=style.linestyle,
            linewidth=1.6, zorder=2, label=f"{label_prefix}Pareto front of the means "
            f"({plural(len(front), 'γ')}, up to {n} seeds each)")
    ax.fill_between(fx, lo, hi, step="post", color=style.colour, alpha=0.12, linewidth=0,
                    zorder=1.5, label=f"{label_prefix}front γs' lowest to highest seed")


def draw_references(ax, trials: pd.DataFrame, size_column: str, prefix: str,
                    linestyle) -> list[tuple[float, float, str, str]]:
    """Each reference family present: its points (light) and a line through its Pareto front.

    Returns the point labels to place, (x %, accuracy %, text, colour): one per setting at its
    most accurate point, front points first. A family whose points all share one size (fixed
    bits against weights kept) has a one-point front: its best trial.
    """
    labels: list[tuple[float, float, str, str]] = []
    for kind in REFERENCE_KINDS:
        points = reference_points(trials, kind)
        if points.empty:
            continue
        colour, marker = REFERENCE_STYLES[kind]
        x = 100 * points[size_column].astype(float)
        y = 100 * points["test_accuracy"].astype(float)
        on_front = pareto_front(x.tolist(), y.tolist())
        front = (f"best of {plural(len(points), 'trial')}, all at {x.iloc[0]:.3g} %"
                 if x.nunique() == 1 and len(points) > 1 else
                 f"front of {len(on_front)} of {plural(len(points), 'trial')}")
        ax.scatter(x, y, marker=marker, s=24, color=colour, alpha=0.4, linewidths=0, zorder=2)
        ax.plot(x.iloc[on_front], y.iloc[on_front], color=colour, linestyle=linestyle,
                linewidth=1.2, marker=marker, markersize=6, markeredgecolor="white",
                markeredgewidth=0.6, zorder=2.5,
                label=f"{prefix}{FAMILY_NAMES[kind]}{start_note(points)}: {front}")
        rest = y.drop(y.index[on_front]).sort_values(ascending=False).index
        order = [points.index[i] for i in on_front] + list(rest)
        seen: set[str] = set()
        for i in order:
            text = setting_label(kind, points.loc[i])
            if text and text not in seen:
                seen.add(text)
                labels.append((float(x[i]), float(y[i]), text, colour))
    return labels


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels


def place_labels(fig: Figure, ax, labels: list[tuple[float, float, str, str]],
                 dots: pd.DataFrame) -> None:
    """Write each label beside its point, on the first side where it stays inside the axes and
    covers no other label and no point of ``dots`` (columns x, y, in data units); a label with
    no such side is left out, so the figure stays readable."""
    fig.draw_without_rendering()  # run the layout: pixel positions are now the saved ones
    to_pixels, frame, scale = ax.transData.transform, ax.get_window_extent(), fig.dpi / 72
    radius = 5.0 * scale  # pixels: a trial marker's radius (3.4 points) and a margin
    dot_boxes = [(qx - radius, qy - radius, qx + radius, qy + radius)
                 for qx, qy in to_pixels(dots[["x", "y"]].to_numpy(dtype=float))]
    placed: list[Box] = []  # the labels written so far
    for x, y, text, colour in labels:
        px, py = to_pixels((x, y))
        width, height = 0.62 * LABEL_SIZE * scale * len(text), 1.25 * LABEL_SIZE * scale
        own = (px - radius, py - radius, px + radius, py + radius)
        for dx, dy, ha, va in LABEL_OFFSETS:
            left = px + dx * scale - {"left": 0, "center": 0.5, "right": 1}[ha] * width
            bottom = py + dy * scale - {"bottom": 0, "center": 0.5, "top": 1}[va] * height
            box = (left, bottom, left + width, bottom + height)
            inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] \
                and box[3] <= frame.y1
            if inside and not any(_overlap(box, other) for other in placed) and not any(
                    _overlap(box, dot) for dot in dot_boxes if dot != own):
                ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha,
                            va=va, fontsize=LABEL_SIZE, color=colour, zorder=4,
                            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                                  "edgecolor": "none", "alpha": 0.7},  # lines stay behind
                            ).set_in_layout(False)
                placed.append(box)
                break


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def size_vs_accuracy(trials: pd.DataFrame, size_column: str) -> Figure | None:
    """Every finished trial as a point coloured by γ, each sweep's front, the float baseline,
    and each reference family's points and front (the compress front stays the headline)."""
    done, refs = finished(trials), all_references(trials)
    if done.empty and refs.empty:
        return None
    xlabel, title = SIZE_AXES[size_column]
    sweeps = list(dict.fromkeys(trials["sweep"]))
    styles, norm = sweep_styles(sweeps), gamma_norm(done["gamma"])
    fig, ax = new_figure()
    several = len(sweeps) > 1
    labels = []
    for sweep in sweeps:
        mine, style = trials[trials["sweep"] == sweep], styles[sweep]
        prefix = f"{sweep}: " if several else ""
        points = finished(mine)
        if several_seeds(mine):
            draw_seed_means(ax, mine, size_column, style, norm, prefix)
        else:
            ax.scatter(100 * points[size_column], 100 * points["test_accuracy"],
                       c=[gamma_colour(g, norm) for g in points["gamma"]],
                       marker=style.marker, s=46, edgecolors="black", linewidths=0.5,
                       zorder=3)
            draw_front(ax, mine, size_column, style, prefix)
        draw_baseline(ax, mine, style.colour, prefix)
        labels += draw_references(ax, mine, size_column, prefix,
                                  style.linestyle if several else "-")
    handles = ax.get_legend_handles_labels()[0]
    for sweep in sweeps:  # what the points are; with several sweeps, which marker is which
        mine = trials[trials["sweep"] == sweep]
        n = len(finished(mine))
        label, colour = trials_label(n, norm, "trials" if several else "finished trials")
        label += start_note(finished(mine))
        if several_seeds(mine):
            label = (f"{plural(len(by_gamma(mine)), 'γ')} ({n} trials): seeds' mean, bar "
                     "lowest to highest" + label[label.find(","):] if "," in label else label)
        handles.append(Line2D([], [], linestyle="", marker=styles[sweep].marker, color=colour,
                              markeredgecolor="black",
                              label=f"{sweep}: {label}" if several else label))
    legend_below(fig, handles)
    drawn = pd.concat([done, refs])
    ax.set_xscale("log")
    log_percent_axis(ax.xaxis, 100 * drawn[size_column].astype(float))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    set_titles(fig, ax, sweep_title(title, sweeps), status_note(trials))
    gamma_colourbar(fig, ax, norm)
    if labels:
        place_labels(fig, ax, labels, pd.DataFrame({
            "x": 100 * drawn[size_column].astype(float),
            "y": 100 * drawn["test_accuracy"].astype(float)}))
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
