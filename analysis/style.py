"""What every figure shares: γ colours, one marker and line style per sweep, axes, saving.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), which draws
headless through Agg without pyplot: nothing here touches a display or the global backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from analysis.load import COMPRESS, FIXED_BITS, NARROW_FLOAT, count_by_status

CMAP = colormaps["viridis"]
NO_GAMMA = "#9a9a9a"  # colour of a trial whose γ is 0 or missing (no place on a log scale)
DPI = 150
FIGSIZE = (8.0, 5.2)  # inches: 1200 x 780 px at DPI
PANELS_FIGSIZE = (12.5, 5.2)  # two panels side by side: 1875 x 780 px at DPI
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_COLOURS = ("black", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
LINE_STYLES = ("-", "--", "-.", (0, (6, 2, 1, 2, 1, 2)))  # fronts; baselines are dotted
BASELINE_STYLE = (0, (1, 1.5))  # dotted: the float baseline of any sweep
GAMMA_LABEL = "γ, weight of the size term (log scale)"
# Reference families: a colour outside viridis (the γ colours) and a marker no sweep uses.
REFERENCE_STYLES = {NARROW_FLOAT: ("tab:blue", "h"), FIXED_BITS: ("darkorange", "d")}
LABEL_SIZE = 6.5  # points: the light labels of reference points
# Where a point's label may go, tried in order: (dx, dy) in points, horizontal and vertical
# alignment of the text: right of the point, left, above, below.
LABEL_OFFSETS = ((6, 0, "left", "center"), (-6, 0, "right", "center"),
                 (0, 6, "center", "bottom"), (0, -6, "center", "top"))


@dataclass(frozen=True)
class SweepStyle:
    """How one sweep is told apart from the others."""

    marker: str
    colour: str  # of its lines (fronts, baselines); trial colours come from γ
    linestyle: str


def sweep_styles(sweeps: Sequence[str]) -> dict[str, SweepStyle]:
    """A marker, line colour and line style per sweep, in the order given."""
    return {s: SweepStyle(MARKERS[i % len(MARKERS)], LINE_COLOURS[i % len(LINE_COLOURS)],
                          LINE_STYLES[i % len(LINE_STYLES)]) for i, s in enumerate(sweeps)}


def gamma_norm(gammas: Iterable[float]) -> LogNorm | None:
    """A log colour scale spanning the positive γ values, or None when there are none."""
    positive = [float(g) for g in gammas if g is not None and not math.isnan(g) and g > 0]
    if not positive:
        return None
    low, high = min(positive), max(positive)
    if low == high:  # a single γ: widen so the colour bar still has a range
        low, high = low / 2, high * 2
    return LogNorm(vmin=low, vmax=high)


def gamma_colour(gamma: float | None, norm: LogNorm | None) -> tuple | str:
    """The colour of one trial: from γ on the log scale, grey when γ cannot be placed."""
    if norm is None or gamma is None or math.isnan(gamma) or gamma <= 0:
        return NO_GAMMA
    return CMAP(norm(gamma))


def trials_label(n: int, norm: LogNorm | None, what: str = "trials") -> tuple[str, tuple | str]:
    """Legend text and colour for ``n`` trials: 'coloured by γ' only when they are."""
    text = f"{n} {what[:-1] if n == 1 else what}"
    return (f"{text}, coloured by γ", CMAP(0.6)) if norm is not None else (text, NO_GAMMA)


def plural(n: int, word: str) -> str:
    """'1 trial', '5 trials'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def gamma_colourbar(fig: Figure, ax: Axes | Sequence[Axes], norm: LogNorm | None) -> None:
    """The γ colour bar beside ``ax`` (or beside several panels, spanning them; nothing when
    no trial has a positive γ)."""
    if norm is not None:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=ax, pad=0.02)
        bar.set_label(GAMMA_LABEL)


def new_figure(size: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    """A headless figure with one axes and a light grid."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def new_panels(n: int, size: tuple[float, float] = PANELS_FIGSIZE) -> tuple[Figure, list[Axes]]:
    """A headless figure with ``n`` axes side by side, each with a light grid."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = list(fig.subplots(1, n))
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig, axes


def log_percent_axis(axis, values: Iterable[float]) -> None:
    """Log scale whose ticks read as plain percentages; denser ticks on a narrow range."""
    positive = [v for v in values if v > 0]
    decades = math.log10(max(positive) / min(positive)) if positive else 3.0
    subs = (1.0, 2.0, 5.0) if decades >= 2 else (1.0, 2.0, 3.0, 5.0) if decades >= 1 else (
        1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def integer_axis(axis) -> None:
    """Ticks on whole numbers only (epochs)."""
    axis.set_major_locator(ticker.MaxNLocator(integer=True))


def status_note(trials: pd.DataFrame, unfinished_drawn: bool = False) -> str:
    """A short line on the compress trials: how many finished, and which are left out."""
    counts = count_by_status(trials[trials["kind"] == COMPRESS])
    parts = [f"{counts['finished']} finished"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed (left out)")
    if counts["unfinished"]:
        drawn = "epochs so far drawn" if unfinished_drawn else "left out"
        parts.append(f"{counts['unfinished']} still running ({drawn})")
    return "compress trials: " + ", ".join(parts)


def sweep_title(title: str, sweeps: Sequence[str]) -> str:
    """``title``, naming the sweep when there is only one."""
    return f"{title}, sweep {sweeps[0]}" if len(sweeps) == 1 else title


def legend_below(fig: Figure, handles: list, columns: int = 2) -> None:
    """The legend under the axes, where it cannot hide a curve."""
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8,
                   frameon=False)


def set_titles(fig: Figure, ax: Axes, title: str, note: str) -> None:
    """The figure's title, and under it a small grey note (what was left out)."""
    fig.suptitle(title, fontsize=13)
    ax.set_title(note, fontsize=9, color="0.35")


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
