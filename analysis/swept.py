"""What a sweep over the recipe learned: where each swept field's values sit on the
size-accuracy plane, the front points' values, and (for an Optuna study) each field's
importance to each objective.

The fields a sweep varied are in its trials.parquet (column ``swept``, γ first; one column
per field). Sweeps over γ alone have none of this, and look as they always did.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.load import finished
from analysis.pareto import front_of
from analysis.style import log_percent_axis

STUDY_FILE = "optuna.db"  # a --search optuna sweep's study, in its folder (sweep.study)
MAX_CHOICES = 6  # a field with at most this many distinct values is drawn as a choice
OBJECTIVE_NAMES = ("accuracy", "size")  # the study's two objectives, in its order


def swept_fields(trials: pd.DataFrame) -> list[str]:
    """The fields any sweep in ``trials`` varied besides γ, in the order first seen."""
    if "swept" not in trials.columns:
        return []
    names = [n for text in trials["swept"].dropna() for n in str(text).split(",")]
    return [n for n in dict.fromkeys(names) if n != "gamma" and n in trials.columns]


def front_columns(trials: pd.DataFrame, columns: tuple[str, ...]) -> tuple[str, ...]:
    """``columns`` with the swept fields added after γ (pareto.md lists their values)."""
    extra = swept_fields(trials)
    if not extra:
        return columns
    at = columns.index("gamma") + 1 if "gamma" in columns else len(columns)
    return (*columns[:at], *extra, *columns[at:])


def is_choice(values: pd.Series) -> bool:
    """Drawn with one colour per value: bools, strings, or a handful of whole numbers (a
    choice such as min_bits); fractional numbers (γ, a learning rate) get a colour scale."""
    values = values.dropna()
    if values.dtype == bool or values.dtype == object:
        return True
    numbers = values.astype(float)
    return values.nunique() <= MAX_CHOICES and bool((numbers == numbers.round()).all())


def swept_figure(trials: pd.DataFrame, size_column: str = "bits_fraction") -> Figure | None:
    """One panel per swept field (γ too): every finished compress trial of the sweeps that
    varied it, on (size, accuracy), coloured by its value; the front's points ringed."""
    fields = swept_fields(trials)
    if not fields:
        return None
    done = finished(trials)
    done = done[done["swept"].notna()]
    if done.empty:
        return None
    panels = ["gamma", *fields]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    front = set(front_of(done, size_column)["trial_id"])
    x, y = 100 * done[size_column].astype(float), 100 * done["test_accuracy"].astype(float)
    ring = done["trial_id"].isin(front).to_numpy()
    for ax, name in zip(axes, panels, strict=False):
        values = done[name]
        if is_choice(values):
            choices = sorted(values.dropna().unique(), key=str)
            palette = colormaps["tab10"]
            colours = {v: palette(i % 10) for i, v in enumerate(choices)}
            ax.scatter(x, y, c=[colours[v] for v in values], s=40, zorder=3,
                       edgecolors=np.where(ring, "black", "none"), linewidths=1.4)
            ax.legend(handles=[Line2D([], [], ls="", marker="o", color=colours[v],
                                      label=_label(v)) for v in choices],
                      title=name, fontsize=7, title_fontsize=8, loc="lower right")
        else:
            numbers = values.astype(float)
            low, high = numbers.min(), numbers.max()
            norm = (LogNorm(low, high) if low > 0 and high / low > 20 else
                    Normalize(low, high))
            drawn = ax.scatter(x, y, c=numbers, cmap="viridis", norm=norm, s=40, zorder=3,
                               edgecolors=np.where(ring, "black", "none"), linewidths=1.4)
            fig.colorbar(drawn, ax=ax, label=name, shrink=0.9)
        ax.set_xscale("log")
        log_percent_axis(ax.xaxis, x)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("size (% of float32 bits, log)" if size_column == "bits_fraction"
                      else f"{size_column} (%, log)", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Where each swept field's values sit (front points ringed in black)",
                 fontsize=11)
    return fig


def _label(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def importances(folder: Path) -> dict[str, dict[str, float]] | None:
    """Each varied field's fANOVA importance (Optuna's evaluator, seeded) for accuracy and
    for size, from the study in ``folder``; None without a study or with under 3 points."""
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        return None
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path.resolve()}"
    names = optuna.get_all_study_names(storage)
    if len(names) != 1:
        return None
    study = optuna.load_study(study_name=names[0], storage=storage)
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 3:
        return None
    found: dict[str, dict[str, float]] = {}
    for i, objective in enumerate(OBJECTIVE_NAMES):
        try:
            scores = get_param_importances(study, target=lambda t, i=i: t.values[i],
                                           evaluator=FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError):  # e.g. every point equally good: no variance
            scores = {}
        for name, score in scores.items():
            found.setdefault(name, {})[objective] = float(score)
    return found or None


def importance_markdown(folders: list[Path], sweeps: list[str]) -> str:
    """pareto.md's section on the study's fields' importance, per sweep with a study."""
    parts = []
    for folder, sweep in zip(folders, sweeps, strict=False):
        found = importances(folder)
        if not found:
            continue
        lines = [f"### {sweep}\n", "| field | importance for accuracy | importance for size |",
                 "|---|---:|---:|"]
        order = sorted(found, key=lambda n: -found[n].get("accuracy", 0.0))
        for name in order:
            cells = [f"{found[name][o]:.2f}" if o in found[name] else "-"
                     for o in OBJECTIVE_NAMES]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
        parts.append("\n".join(lines) + "\n")
    if not parts:
        return ""
    return ("## What each field mattered (Optuna study)\n\nfANOVA importance "
            "(optuna.importance, FanovaImportanceEvaluator, seed 0) of each varied field for "
            "each objective, over the study's finished points; each column sums to 1. A "
            "dozen points give a rough ranking, not a measurement.\n\n" + "\n".join(parts))
