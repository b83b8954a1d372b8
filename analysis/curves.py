"""Per-epoch curves: epoch time (training getting faster as channels are cut) beside the
MACs and weights each epoch still has, and size over training (the network shrinking fast
early, then slowly).

Trials still running are drawn with the epochs they have; failed trials are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.load import BASELINE, COMPRESS, FAILED, FLOOR
from analysis.style import (
    gamma_colour,
    gamma_colourbar,
    gamma_norm,
    integer_axis,
    legend_below,
    log_percent_axis,
    new_figure,
    new_panels,
    set_titles,
    status_note,
    sweep_styles,
    sweep_title,
    trials_label,
)

REFERENCES = {FLOOR: ("black", "floor run (1 channel per layer)"),
              BASELINE: ("tab:red", "float baseline (no quantization)")}
# What an epoch still has of the original network, drawn beside its time: (column, line
# style, legend). Files written before macs_kept_fraction existed lack it: weights only.
KEPT = (("macs_kept_fraction", "-", "MACs kept (compute per image)"),
        ("weights_kept_fraction", "--", "weights kept"))


def epochs_with_trials(epochs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Epoch rows of trials that have not failed, with each trial's kind and γ, by epoch."""
    keep = trials.loc[trials["status"] != FAILED, ["sweep", "trial_id", "kind", "gamma"]]
    merged = epochs.merge(keep, on=["sweep", "trial_id"], how="inner")
    return merged.sort_values(["sweep", "trial_id", "epoch"])


def draw_trials(ax, rows: pd.DataFrame, column: str, scale: float, styles, norm,
                linestyle: str = "-") -> int:
    """One line per compress trial that has ``column``, coloured by γ, marked by sweep;
    returns how many."""
    compress = rows[(rows["kind"] == COMPRESS) & rows[column].notna()]
    for (sweep, _), trial in compress.groupby(["sweep", "trial_id"], sort=False):
        ax.plot(trial["epoch"], scale * trial[column].astype(float),
                color=gamma_colour(trial["gamma"].iloc[0], norm), marker=styles[sweep].marker,
                markersize=3.5, linewidth=1.3, linestyle=linestyle, alpha=0.9, zorder=2)
    return compress.groupby(["sweep", "trial_id"]).ngroups


def draw_kept(ax, rows: pd.DataFrame, styles, norm) -> list[Line2D]:
    """Per compress trial, in its γ colour: the MACs (solid) and weights (dashed) its epochs
    kept, in % of the original network; returns the legend entries of the two line styles.

    What got cheaper shows here even when the epoch times beside it are noisy (a shared
    machine). A trial whose rows lack ``macs_kept_fraction`` (older files) draws weights only.
    """
    handles = []
    for column, linestyle, label in KEPT:
        if column in rows.columns and draw_trials(ax, rows, column, 100.0, styles, norm,
                                                  linestyle):
            handles.append(Line2D([], [], color="0.35", linestyle=linestyle, label=label))
    ax.set_ylim(0, 105)
    ax.set_ylabel("kept, % of the original network")
    ax.set_title("what each epoch still computes and stores", fontsize=9, color="0.35")
    return handles


def draw_reference(ax, rows: pd.DataFrame, kind: str, column: str, prefix: str,
                   linestyle) -> None:
    """A reference run (floor or float baseline): mean over its seeds per epoch, ±1 std band."""
    ref = rows[rows["kind"] == kind]
    if ref.empty:
        return
    colour, label = REFERENCES[kind]
    by_epoch = ref.groupby("epoch")[column].agg(["mean", "std", "count"]).reset_index()
    seeds = ref["trial_id"].nunique()
    ax.plot(by_epoch["epoch"], by_epoch["mean"], color=colour, linestyle=linestyle, linewidth=2,
            zorder=3, label=f"{prefix}{label}" + (f", mean of {seeds}" if seeds > 1 else ""))
    if seeds > 1:
        spread = by_epoch["std"].fillna(0)
        ax.fill_between(by_epoch["epoch"], by_epoch["mean"] - spread, by_epoch["mean"] + spread,
                        color=colour, alpha=0.15, linewidth=0, zorder=1)


def finish_axes(fig: Figure, ax, norm, styles, trials: pd.DataFrame, n: int,
                title: str, beside: Sequence[Axes] = (), more: Sequence[Line2D] = ()) -> None:
    """Titles, legend below (trials, references, ``more``, sweep markers), colour bar, epoch
    axis; ``beside``: further panels on the same epochs, which share the colour bar."""
    label, colour = trials_label(n, norm, "compress trials")
    handles = [Line2D([], [], color=colour, marker="o", markersize=3.5, label=label)]
    handles += ax.get_legend_handles_labels()[0] + list(more)
    if len(styles) > 1:
        handles += [Line2D([], [], color="0.5", marker=s.marker, label=f"{name}: trials")
                    for name, s in styles.items()]
    legend_below(fig, handles, columns=2 if len(handles) > 1 else 1)
    for panel in (ax, *beside):
        integer_axis(panel.xaxis)
        panel.set_xlabel("epoch")
    gamma_colourbar(fig, [ax, *beside] if beside else ax, norm)
    note = status_note(trials, unfinished_drawn=True)
    set_titles(fig, ax, sweep_title(title, list(styles)), note)


def epoch_time(epochs: pd.DataFrame, trials: pd.DataFrame) -> Figure | None:
    """Epoch time against epoch for every trial, with the floor and float baseline runs; and
    beside it, in a second panel, the MACs and weights each compress trial's epochs kept."""
    rows = epochs_with_trials(epochs, trials)
    if rows.empty:
        return None
    sweeps = list(dict.fromkeys(rows["sweep"]))
    styles, norm = sweep_styles(sweeps), gamma_norm(rows.loc[rows["kind"] == COMPRESS, "gamma"])
    fig, (ax, kept) = new_panels(2)
    n = draw_trials(ax, rows, "epoch_time_s", 1.0, styles, norm)
    several = len(sweeps) > 1  # then the sweep's line style tells its references apart
    for sweep in sweeps:
        prefix, linestyle = (f"{sweep}: ", styles[sweep].linestyle) if several else ("", "--")
        for kind in (BASELINE, FLOOR):
            draw_reference(ax, rows[rows["sweep"] == sweep], kind, "epoch_time_s", prefix,
                           linestyle)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("epoch time (s, training only)")
    more = draw_kept(kept, rows, styles, norm)
    finish_axes(fig, ax, norm, styles, trials, n,
                "Epoch time, and the work left, while channels are cut", beside=[kept],
                more=more)
    return fig


def size_over_training(epochs: pd.DataFrame, trials: pd.DataFrame) -> Figure | None:
    """bits_fraction (log) against epoch for every compress trial."""
    rows = epochs_with_trials(epochs, trials)
    rows = rows[(rows["kind"] == COMPRESS) & (rows["bits_fraction"] > 0)]
    if rows.empty:
        return None
    sweeps = list(dict.fromkeys(rows["sweep"]))
    styles, norm = sweep_styles(sweeps), gamma_norm(rows["gamma"])
    fig, ax = new_figure()
    n = draw_trials(ax, rows, "bits_fraction", 100.0, styles, norm)
    ax.set_yscale("log")
    log_percent_axis(ax.yaxis, 100 * rows["bits_fraction"].astype(float))
    ax.set_ylabel("size in bits, % of the 32-bit float network (log scale)")
    finish_axes(fig, ax, norm, styles, trials, n,
                "Size during training: fast shrinking early, then slow")
    return fig
