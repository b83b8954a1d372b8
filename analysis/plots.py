"""``python -m analysis.plots``: the figures and the Pareto table of one or more sweeps.

Reads the Parquet results (a sweep folder, or a folder of sweep folders; default
``results/``) and, where a sweep has exports (``exports/*/export.json``), their accuracy
and time per image as float32 and int8 ONNX; writes the figures and
``pareto.md``/``pareto.csv`` into ``--out`` (default ``plots/`` inside the results
folder), and prints what it wrote and a short summary. Bad
input ends with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.curves import epoch_time, size_over_training
from analysis.figures import layers_figure, size_vs_accuracy
from analysis.load import (
    DEFAULT_RESULTS,
    FAILED,
    KINDS,
    Results,
    ResultsError,
    borrow_references,
    count_by_status,
    load_results,
)
from analysis.pareto import pareto_table, pick_layer_trial, to_markdown, trade_offs
from analysis.quality import (
    SEED_COLUMNS,
    front_metrics,
    metrics_lines,
    metrics_markdown,
    seed_table,
    several_seeds,
)
from analysis.references import references_markdown
from analysis.speed import (
    ExportsError,
    exports_markdown,
    load_exports,
    time_figure,
    usable,
)
from analysis.style import save
from analysis.swept import importance_markdown, swept_figure

# torch-free: the one-line-error argparse and the output-folder check every command shares
from trainer.cli import ConfigError, OneLineParser, check_writable_folder

FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class PlotsConfig:
    """What to read, where to write, and which trial's layers to draw."""

    results: tuple[Path, ...] = (DEFAULT_RESULTS,)  # sweep folders or folders of sweep folders
    out: Path | None = None  # where figures go; None = plots/ inside the results folder
    format: str = "png"  # png | svg | pdf
    trial: str | None = None  # trial for layers.png; None = smallest near-best Pareto trial
    references_from: Path | None = None  # a sweep whose reference trials every sweep borrows


def parse_args(argv: Sequence[str] | None = None) -> PlotsConfig:
    """Parse the command line into a PlotsConfig."""
    parser = OneLineParser(prog="python -m analysis.plots", description=__doc__,
                           error_prefix="scnn analysis",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", nargs="+", type=Path, default=[DEFAULT_RESULTS],
                        metavar="PATH", help="sweep folder(s) or parent(s) of sweep folders "
                        "(default: every sweep under results/)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default: plots/ inside the results folder)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="figure file format")
    parser.add_argument("--trial", default=None, metavar="ID",
                        help="trial_id for layers.png (default: the smallest Pareto-optimal "
                        "trial within 1 point of the best accuracy)")
    parser.add_argument("--references-from", type=Path, default=None, metavar="DIR",
                        help="compare with the reference trials of the sweep in DIR (same "
                        "preset, epochs and width; e.g. one run with --references full), for "
                        "each reference kind a sweep has none of: a change to the method's "
                        "recipe needs no new references")
    args = parser.parse_args(argv)
    try:  # before anything is read (results that are not folders get their own error)
        if args.out or all(path.is_dir() for path in args.results):
            check_writable_folder(args.out or default_out(args.results), "--out")
    except ConfigError as err:
        parser.error(str(err))
    return PlotsConfig(results=tuple(args.results), out=args.out, format=args.format,
                       trial=args.trial, references_from=args.references_from)


def default_out(paths: Sequence[Path]) -> Path:
    """plots/ inside the results folder (the common parent when several are given)."""
    if len(paths) == 1:
        return paths[0] / "plots"
    return Path(os.path.commonpath([p.resolve() for p in paths])) / "plots"


def layer_trial(results: Results, wanted: str | None) -> pd.Series | None:
    """The trials row to draw layers.png for, or None (with a note) when there is none."""
    if results.layers is None:
        if wanted is not None:
            raise ResultsError(f"--trial {wanted} needs layers.parquet, and no sweep under "
                               f"{', '.join(map(str, results.folders))} has one")
        return None
    trial_id = wanted or pick_layer_trial(results.trials)
    if trial_id is None:
        results.notes.append("no finished compress trial yet: layers figure skipped")
        return None
    with_layers = results.layers["trial_id"].astype(str)
    if wanted is None and trial_id not in set(with_layers):
        results.notes.append(f"trial {trial_id} has no layers rows: layers figure skipped")
        return None
    if trial_id not in set(with_layers):
        known = ", ".join(list(dict.fromkeys(with_layers))[:5]) or "none yet"
        raise ResultsError(f"unknown --trial {trial_id!r}: pick a trial_id from pareto.md or "
                           f"the trial_id column of trials.parquet (with layers: {known} ...)")
    rows = results.trials[results.trials["trial_id"].astype(str) == trial_id]
    if rows.empty:
        raise ResultsError(f"trial {trial_id!r} has layers rows but no row in trials.parquet: "
                           "the results folder is inconsistent, re-run the sweep")
    return rows.iloc[0]


def write_figures(results: Results, trial: pd.Series | None, out: Path, fmt: str,
                  chosen: bool, exports: pd.DataFrame | None = None) -> list[Path]:
    """Draw every figure the data allows into ``out``; note the ones skipped.

    ``chosen``: the layers trial was picked here (not by --trial), which its figure says.
    ``exports``: the sweeps' exported networks (``exported``), drawn in time when any.
    """
    t, e = results.trials, results.epochs
    why = "the smallest Pareto-optimal trial within 1 point of the best accuracy; " \
          "pick another with --trial ID" if chosen else ""
    figures = {
        "bits_vs_accuracy": lambda: size_vs_accuracy(t, "bits_fraction"),
        "weights_vs_accuracy": lambda: size_vs_accuracy(t, "weights_kept_fraction"),
        "epoch_time": lambda: None if e is None else epoch_time(e, t),
        "size_over_training": lambda: None if e is None else size_over_training(e, t),
        "swept_fields": lambda: swept_figure(t, "bits_fraction"),
        "layers": lambda: None if trial is None else layers_figure(
            trial_layers(results, trial), trial, why),
    }
    written = []
    if exports is not None and not exports.empty:  # sweeps with exports/*/export.json
        figures["inference_time"] = lambda: time_figure(exports)
    for name, draw in figures.items():
        fig = draw()
        if fig is None:
            if name not in ("layers", "swept_fields"):  # layers: layer_trial() said why;
                #   swept_fields: a sweep over γ alone has no other field to show
                results.notes.append(f"{name}.{fmt} skipped: no data for it yet")
            continue
        written.append(save(fig, out / f"{name}.{fmt}"))
    return written


def exported(results: Results) -> pd.DataFrame:
    """The sweeps' exported networks whose model.onnx kept the reported accuracy (the others
    noted)."""
    exports, notes = usable(load_exports(results.folders, results.names))
    results.notes.extend(notes)
    return exports


def trial_layers(results: Results, trial: pd.Series) -> pd.DataFrame:
    """The layers rows of one trial, in network order (the order they were written)."""
    layers = results.layers
    mine = (layers["sweep"] == trial["sweep"]) & (layers["trial_id"] == trial["trial_id"])
    return layers[mine].reset_index(drop=True)


def write_table(table: pd.DataFrame, best: list[str], references: str,
                out: Path, quality: str = "", seeds: bool = False,
                studies: str = "", exports: str = "") -> list[Path]:
    """pareto.csv (raw fractions) and pareto.md (percentages, the trade-offs, the fronts'
    quality, then the references' section when there is one) in ``out``. ``seeds``: the
    table is seed_table's, per γ over its seeds. ``studies``: the fields' importance in
    the sweeps' Optuna studies (analysis.swept). ``exports``: the exported networks in
    time (analysis.speed)."""
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "pareto.csv", out / "pareto.md"
    table.to_csv(csv, index=False)
    intro = ("Per sweep, the γs whose mean over their training seeds has the smallest size "
             "(bits relative to the 32-bit float network) for its mean test accuracy, with "
             "the seeds' lowest and highest values" if seeds else
             "Smallest size (bits relative to the 32-bit float network) for its test "
             "accuracy, per sweep")
    md.write_text("# Pareto-optimal trials\n\n" + intro + "; failed and unfinished trials "
                  "are left out.\n\n" + (to_markdown(table, SEED_COLUMNS) if seeds else
                                         to_markdown(table, list(table.columns)))
                  + "\n## Best trade-offs\n\n"
                  + "".join(f"- {line}\n" for line in best or ["none yet"])
                  + (f"\n{quality}" if quality else "")
                  + (f"\n{references}" if references else "")
                  + (f"\n{studies}" if studies else "")
                  + (f"\n{exports}" if exports else ""),
                  encoding="utf-8")
    return [csv, md]


def summary(results: Results) -> str:
    """Trials found per kind, failed trials with their errors, unfinished trials."""
    t = results.trials
    kinds = ", ".join(f"{n} {k}" for k, n in t["kind"].value_counts(sort=False).items())
    counts = count_by_status(t)
    lines = [f"read {len(results.folders)} sweep folder(s): {len(t)} trials ({kinds}); "
             f"{counts['failed']} failed, {counts['unfinished']} unfinished (left out of fronts)"]
    for row in t[t["status"] == FAILED].itertuples():
        error = str(row.error or "no error recorded").splitlines()[0][:120]
        lines.append(f"  failed: {row.sweep}/{row.trial_id}: {error}")
    unknown = t.loc[~t["kind"].isin(KINDS), "kind"].fillna("none").astype(str)
    if len(unknown):
        names = ", ".join(f"{n} {k!r}" for k, n in unknown.value_counts(sort=False).items())
        lines.append(f"  not drawn: {names}: kinds this analysis does not know "
                     f"(it knows {', '.join(KINDS)})")
    return "\n".join(lines)


def run(config: PlotsConfig) -> list[Path]:
    """Load, draw and write everything; returns the paths written."""
    results = load_results(config.results)
    if config.references_from is not None:
        results = borrow_references(results, config.references_from)
    trial = layer_trial(results, config.trial)
    out = config.out or default_out(config.results)
    print(summary(results))
    seeds = several_seeds(results.trials)
    table = seed_table(results.trials) if seeds else pareto_table(results.trials)
    exports = exported(results)
    written = write_figures(results, trial, out, config.format, chosen=config.trial is None,
                            exports=exports)
    best = trade_offs(results.trials)
    references = references_markdown(results.trials)
    metrics = front_metrics(results.trials)
    studies = importance_markdown(results.folders, results.sweeps)
    written += write_table(table, best, references, out, metrics_markdown(metrics), seeds,
                           studies, exports_markdown(exports))
    for note in results.notes:
        print(f"note: {note}")
    shown = (to_markdown(table, SEED_COLUMNS) if seeds
             else to_markdown(table, list(table.columns)))
    print("\nPareto-optimal trials:\n" + (shown if len(table) else
                                            "none yet: no compress trial has finished\n"))
    if metrics:
        print("Front quality (widest gap, hypervolume; see pareto.md):\n"
              + "".join(f"  {line}\n" for line in metrics_lines(metrics)))
    if best:
        print("Best trade-offs:\n" + "".join(f"  {line}\n" for line in best))
    if references:  # Markdown headings printed as the lines above: 'Title:'
        print(re.sub(r"^#+ (.*)$", r"\1:", references, flags=re.MULTILINE))
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: exit status 2 with one line on stderr for bad input."""
    config = parse_args(argv)
    try:
        run(config)
    except (ResultsError, ExportsError) as exc:
        print(f"scnn analysis: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # stdout piped into e.g. `head`, which has stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no 2nd error at exit
        sys.exit(1)
    except OSError as exc:  # e.g. an --out folder that cannot be written
        print(f"scnn analysis: error: cannot write {exc.filename or 'the output'}: "
              f"{exc.strerror or exc}: pass --out DIR to a writable folder", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
