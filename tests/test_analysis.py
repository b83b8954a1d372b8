"""analysis: the Pareto front on hand-worked cases, and the figures from small results folders."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.colors import to_rgba

from analysis.curves import epoch_time
from analysis.figures import size_vs_accuracy
from analysis.load import ResultsError, load_results
from analysis.pareto import pareto_front, pareto_table, pick_layer_trial, trade_offs
from analysis.plots import main
from analysis.references import envelope_at, gap_table, references_markdown
from trainer.results import EPOCHS_FILE, LAYERS_FILE, TRIALS_FILE, write_results

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("bits_vs_accuracy", "weights_vs_accuracy", "epoch_time", "size_over_training",
           "layers")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = (("prep", 64), ("layer1", 128), ("res1.a", 128), ("res1.b", 128), ("layer2", 256),
          ("layer3", 512), ("res3.a", 512), ("res3.b", 512), ("head", 10))
# gamma, test accuracy, weights_kept_fraction, mean bits; bits_fraction = kept * bits / 32.
# 1e-3 is dominated by 3e-4 (bigger and less accurate) in both bits and weights kept.
COMPRESS = ((1e-4, 0.90, 0.80, 6.0), (3e-4, 0.89, 0.62, 5.0), (1e-3, 0.86, 0.66, 5.0),
            (3e-3, 0.84, 0.35, 4.0), (1e-2, 0.78, 0.18, 3.5), (1e-1, 0.60, 0.06, 2.5))
EPOCHS = 5
# References of the demo (full width 0.25): narrow-float (width fraction, accuracy), sized
# fraction² of the full network at 32 bits, two seeds at half width; fixed-bits (bits,
# accuracy), all weights kept, 8 bits dominated by 6 bits.
NARROW = ((0.25, 0.80), (0.375, 0.85), (0.5, 0.88), (0.5, 0.875), (0.75, 0.91))
FIXED = ((2, 0.83), (3, 0.88), (4, 0.905), (6, 0.915), (8, 0.912))


def trial_row(sweep: str, tid: str, kind: str, gamma, acc, bits, kept, seed=0,
              status="TERMINATED", error=None) -> dict:
    done = status == "TERMINATED"
    return dict(sweep=sweep, trial_id=tid, kind=kind, status=status, error=error, gamma=gamma,
                seed=seed, preset="cpu", width=0.25, epochs=EPOCHS,
                test_accuracy=acc if done else None, bits_fraction=bits if done else None,
                weights_kept_fraction=kept if done else None,
                size_bits=bits * 32 * 6.5e6 if done else None,
                mean_bits=32 * bits / kept if done else None,
                train_time_s=60.0 * (1 - 0.5 * (1 - kept)) if done else None, device="cpu")


def epoch_rows(tid: str, acc: float, bits: float, kept: float, full_time: float,
               epochs: int = EPOCHS) -> list[dict]:
    """Shrinking fast early then slowly from 8 bits (25 %); time follows the weights kept."""
    rows, total, start = [], 0.0, max(bits, 0.25)
    for e in range(1, epochs + 1):
        shrink = (1 - 0.5 ** e) / (1 - 0.5 ** EPOCHS)  # 0.52, 0.77, 0.90, 0.97, 1
        b = start * (bits / start) ** shrink
        k = 1 - (1 - kept) * shrink
        t = full_time * (0.35 + 0.65 * k)
        total += t + 1.5
        rows.append(dict(trial_id=tid, epoch=e, train_loss=2.0 / e, test_accuracy=acc * shrink,
                         size_bits=b * 32 * 6.5e6, bits_fraction=b, weights_kept_fraction=k,
                         mean_bits=32 * b / k, channels_kept=int(2250 * k), epoch_time_s=t,
                         time_total_s=total, lr=0.4 * (1 - e / epochs)))
    return rows


def layer_rows(tid: str, kept: float, mean_bits: float) -> list[dict]:
    """Later, wider layers lose more channels and bits; res3.a dies in small networks."""
    rows = []
    for i, (name, width) in enumerate(LAYERS):
        keep = 1.0 if name == "head" else min(1.0, kept ** 0.5 * (1.3 - 0.08 * i))
        final = 0 if name == "res3.a" and kept < 0.1 else round(width * keep)
        bits = mean_bits * (1.4 - 0.08 * i) if name != "head" else 8.0
        rows.append(dict(trial_id=tid, layer=name, out_channels_initial=width,
                         out_channels_final=final, in_channels_initial=width,
                         in_channels_final=final, mean_bits=bits if final else None,
                         weights_initial=9 * width * width, weights_final=9 * final * final))
    return rows


def build_sweep(folder: Path, sweep: str = "demo", running: int = 0) -> None:
    """6 compress trials (the last ``running`` still going), a failed one, 2 baselines, a floor."""
    trials, epochs, layers = [], [], []
    for i, (gamma, acc, kept, mean_bits) in enumerate(COMPRESS):
        bits = kept * mean_bits / 32
        tid = f"{sweep}_{i:02d}"
        going = i >= len(COMPRESS) - running
        trials.append(trial_row(sweep, tid, "compress", gamma, acc, bits, kept,
                                status="RUNNING" if going else "TERMINATED"))
        epochs += epoch_rows(tid, acc, bits, kept, 12.0, epochs=2 if going else EPOCHS)
        if not going:
            layers += layer_rows(tid, kept, mean_bits)
    trials.append(trial_row(sweep, f"{sweep}_err", "compress", 0.05, None, None, None,
                            status="ERROR", error="RuntimeError: CUDA out of memory\nmore"))
    epochs += epoch_rows(f"{sweep}_err", 0.5, 0.05, 0.2, 12.0, epochs=2)
    for seed, (gamma, acc) in enumerate(((0.0, 0.915), (None, 0.925))):
        tid = f"{sweep}_float{seed}"
        trials.append(trial_row(sweep, tid, "float-baseline", gamma, acc, 1.0, 1.0, seed=seed))
        epochs += epoch_rows(tid, acc, 1.0, 1.0, 13.0 + 0.6 * seed)
    trials.append(trial_row(sweep, f"{sweep}_floor", "floor", 0.0, 0.27, 1e-5, 1e-5))
    epochs += epoch_rows(f"{sweep}_floor", 0.27, 1e-5, 1.0, 3.0)
    write_results(folder, trials, epochs, layers)


def add_references(folder: Path, sweep: str = "demo", extra: Sequence[dict] = ()) -> None:
    """Rewrite the sweep's trials.parquet with the NARROW and FIXED references (and ``extra``
    rows), and the columns that came with them, through pyarrow as a newer sweep writes it."""
    rows = pq.read_table(folder / TRIALS_FILE).to_pylist()
    for i, (fraction, acc) in enumerate(NARROW):
        rows.append({**trial_row(sweep, f"{sweep}_w{i}", "narrow-float", 0.0, acc,
                                 fraction ** 2, fraction ** 2, seed=i),
                     "width": 0.25 * fraction, "full_width": 0.25})
    for bits, acc in FIXED:
        rows.append({**trial_row(sweep, f"{sweep}_b{bits}", "fixed-bits", 0.0, acc, bits / 32,
                                 1.0), "fixed_bits": float(bits)})
    rows += extra
    for row in rows:  # every row has every column, so that pyarrow infers the same table
        row.setdefault("full_width", 0.25)
        row.setdefault("fixed_bits", None)
    pq.write_table(pa.Table.from_pylist(rows), folder / TRIALS_FILE)


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m analysis.plots ARGS`` run in this process (the module is its ``main``):
    its exit status and what it printed."""

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            contextlib.chdir(ROOT):
        try:
            main(list(args))
        except SystemExit as stop:
            code = stop.code or 0
    return subprocess.CompletedProcess(["analysis.plots", *args], code, out.getvalue(),
                                       err.getvalue())


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert path.stat().st_size > 20_000, f"{path} is only {path.stat().st_size} bytes"
    height, width = mpimg.imread(path).shape[:2]
    assert 600 <= width <= 3000 and 400 <= height <= 2000, (path, width, height)


# --- the Pareto front, by hand ------------------------------------------------------------

@pytest.mark.parametrize("size, acc, front", [
    ([3, 1, 2], [0.9, 0.5, 0.7], [1, 2, 0]),  # all optimal, returned smallest first
    ([1, 2, 3], [0.8, 0.7, 0.9], [0, 2]),  # 2 is bigger and worse than 1: dominated
    ([1, 1], [0.7, 0.8], [1]),  # same size: the less accurate is dominated
    ([1, 2], [0.8, 0.8], [0]),  # same accuracy: the bigger is dominated
    ([1, 1, 2], [0.8, 0.8, 0.9], [0, 1, 2]),  # exact duplicates dominate neither other
    ([1, math.nan, 2], [0.5, 0.99, math.nan], [0]),  # NaN never on the front
    ([5, 4, 3, 2, 1], [0.5, 0.5, 0.5, 0.5, 0.5], [4]),
    ([], [], []),
])
def test_pareto_front_hand_cases(size, acc, front):
    assert pareto_front(size, acc) == front


def test_pareto_front_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 values"):
        pareto_front([1, 2], [0.5])


def test_table_and_layer_trial_leave_out_failed_dominated_and_references(tmp_path):
    build_sweep(tmp_path / "demo")
    results = load_results([tmp_path])
    table = pareto_table(results.trials)
    assert list(table["trial_id"]) == ["demo_05", "demo_04", "demo_03", "demo_01", "demo_00"]
    assert list(table.columns)[:4] == ["sweep", "trial_id", "gamma", "test_accuracy"]
    # Best is 90 %; within one point: 90 % at 25 % and 89 % at 16 %: the smaller wins.
    assert pick_layer_trial(results.trials) == "demo_01"


def test_trade_offs_by_hand():
    rows = [trial_row("s", "base0", "float-baseline", 0.0, 0.80, 1.0, 1.0),
            trial_row("s", "base1", "float-baseline", 0.0, 0.82, 1.0, 1.0, seed=1),
            trial_row("s", "a", "compress", 1e-3, 0.805, 0.20, 1.00),
            trial_row("s", "b", "compress", 1e-2, 0.800, 0.10, 0.70),  # exactly 1 point below
            trial_row("s", "c", "compress", 1e-1, 0.790, 0.04, 0.30),
            trial_row("s", "d", "compress", 1.0, 0.750, 0.02, 0.20),
            trial_row("s", "e", "compress", 3.0, None, None, None, status="ERROR"),
            trial_row("t", "f", "compress", 1e-2, 0.70, 0.10, 0.90),
            trial_row("u", "g", "float-baseline", 0.0, 0.90, 1.0, 1.0),
            trial_row("u", "h", "compress", 1.0, 0.60, 0.01, 0.05)]
    lines = trade_offs(pd.DataFrame(rows))
    assert lines == [
        "s: best accuracy at <= 5% of the float bits: 79.00 % at 4.00 % of the bits "
        "(γ = 0.1, trial c)",
        "s: most weights removed within 1 point of the float baseline (81.00 %): 30.00 % "
        "removed, 80.00 % accuracy, 10.00 % of the bits (γ = 0.01, trial b)",
        "t: no trial at <= 5% of the float bits yet (smallest: 10.00 %); a larger --gamma-max "
        "reaches it",
        "t: no finished float baseline, so no accuracy to stay within 1 point of",
        "u: best accuracy at <= 5% of the float bits: 60.00 % at 1.00 % of the bits "
        "(γ = 1, trial h)",
        "u: no trial within 1 point of the float baseline (90.00 %); the best reached 60.00 %"]


# --- the references, by hand ----------------------------------------------------------------

@pytest.mark.parametrize("size, acc, at, expected", [
    ([0.1, 1.0], [0.70, 0.80], 0.316, 0.70 + 0.10 * (math.log10(0.316) + 1)),  # 0.74997
    ([1.0, 0.1], [0.80, 0.70], 0.1, 0.70),  # at the ends, in any order
    ([1.0, 0.1], [0.80, 0.70], 1.0, 0.80),
    ([0.1, 1.0], [0.70, 0.80], 0.0999, None),  # outside the range: not extrapolated
    ([0.1, 1.0], [0.70, 0.80], 1.001, None),
    ([0.1, 0.2, 0.4], [0.70, 0.60, 0.90], 0.2, 0.70 + 0.20 * 0.5),  # 0.2 is dominated
    ([0.1, 0.5, 1.0], [0.70, 0.90, 0.85], 0.8, 0.90),  # level beyond the most accurate
    ([0.1, 0.0, math.nan, 1.0], [0.70, 0.99, 0.99, 0.80], 1.0, 0.80),  # no log of 0 or NaN
    ([], [], 0.5, None),
])
def test_envelope_by_hand(size, acc, at, expected):
    got = envelope_at(size, acc, at)
    assert got == expected if expected is None else got == pytest.approx(expected, abs=1e-12)


def test_gaps_against_the_references_by_hand():
    # Both size axes hold the same numbers: references at (0.1, 70 %) and (1.0, 80 %).
    rows = [trial_row("s", "nf", "narrow-float", 0.0, 0.70, 0.1, 0.1),
            trial_row("s", "fb", "fixed-bits", 0.0, 0.80, 1.0, 1.0),
            trial_row("s", "fb2", "fixed-bits", 0.0, 0.65, 0.5, 0.5),  # dominated: no effect
            trial_row("s", "small", "compress", 1.0, 0.60, 0.05, 0.05),
            trial_row("s", "mid", "compress", 0.1, 0.78, 0.316, 0.316),
            trial_row("s", "full", "compress", 1e-3, 0.79, 1.0, 1.0),
            trial_row("t", "alone", "compress", 0.1, 0.78, 0.316, 0.316)]  # no references
    trials = pd.DataFrame(rows)
    for size_column in ("bits_fraction", "weights_kept_fraction"):
        gaps = gap_table(trials, size_column).set_index("trial_id")
        assert list(gaps.index) == ["small", "mid", "full"]
        assert math.isnan(gaps.loc["small", "gap"])  # below 0.1: outside the range
        assert gaps.loc["mid", "reference_accuracy"] == pytest.approx(0.74997, abs=1e-5)
        assert gaps.loc["mid", "gap"] == pytest.approx(0.03, abs=1e-4)  # +3 points
        assert gaps.loc["full", "gap"] == pytest.approx(-0.01)  # at the range's end: inside
    md = references_markdown(trials)
    assert "| s | mid | 0.1 | 78.00 % | 31.60 % | 31.60 % | 75.00 % | +3.00 points |" in md
    assert "| s | full | 0.001 | 79.00 % | 100.00 % | 100.00 % | 80.00 % | -1.00 points |" in md
    assert "| s | small | 1 | 60.00 % | 5.00 % | 5.00 % | - | outside the references' " \
        "range |" in md
    assert "alone" not in md
    # Without full_width and fixed_bits columns (hand-built rows): no width fraction, and the
    # mean bits of a fixed-bits trial (32 here) stand in for its bit depth.
    assert "| s | nf | 0.25 | - | 70.00 % |" in md and "| s | fb | 32 | 80.00 % |" in md


def test_reference_fronts_are_drawn_and_labelled(tmp_path):
    build_sweep(tmp_path / "demo")
    add_references(tmp_path / "demo")
    trials = load_results([tmp_path]).trials
    for size_column, fixed in (("bits_fraction", "front of 4 of 5 trials"),
                               ("weights_kept_fraction", "best of 5 trials, all at 100 %")):
        fig = size_vs_accuracy(trials, size_column)
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "narrow float ResNet-9 (width): front of 4 of 5 trials" in legend, legend
        assert f"fixed bits, all channels: {fixed}" in legend, legend
        assert legend[0] == "Pareto front (5 trials)"  # the compress front stays first
        labels = {t.get_text() for t in fig.axes[0].texts}
        assert {"w=0.25×", "w=0.75×", "2 b", "6 b"} <= labels, labels
    # References alone (every compress trial still running) still make a figure.
    refs_only = trials[trials["kind"] != "compress"]
    assert size_vs_accuracy(refs_only, "bits_fraction") is not None


def test_epoch_time_draws_the_macs_and_weights_kept_beside_it(tmp_path):
    build_sweep(tmp_path / "demo")  # 6 compress trials drawn (the failed one left out)
    results = load_results([tmp_path / "demo"])
    epochs = results.epochs.assign(
        macs_kept_fraction=0.5 + 0.5 * results.epochs["weights_kept_fraction"])
    fig = epoch_time(epochs, results.trials)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2
    time_lines, kept_lines = panels[0].lines, panels[1].lines
    macs = [line for line in kept_lines if line.get_linestyle() == "-"]
    weights = [line for line in kept_lines if line.get_linestyle() == "--"]
    assert len(macs) == len(weights) == 6 and len(kept_lines) == 12
    # the same colour per trial in both panels (the time panel draws the trials first)
    colours = [to_rgba(line.get_color()) for line in time_lines[:6]]
    assert [to_rgba(line.get_color()) for line in macs] == colours
    assert [to_rgba(line.get_color()) for line in weights] == colours
    first = epochs[epochs["trial_id"] == "demo_00"]  # in % of the original network
    assert list(weights[0].get_ydata()) == pytest.approx(list(100 * first["weights_kept_fraction"]))
    assert list(macs[0].get_ydata()) == pytest.approx(list(100 * first["macs_kept_fraction"]))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "MACs kept (compute per image)" in legend and "weights kept" in legend
    # Older files: macs_kept_fraction null (the demo as written) or absent: weights only.
    for old in (results.epochs, results.epochs.drop(columns="macs_kept_fraction")):
        fig = epoch_time(old, results.trials)
        kept = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][1]
        assert len(kept.lines) == 6 and {line.get_linestyle() for line in kept.lines} == {"--"}
        assert "MACs kept (compute per image)" not in [
            t.get_text() for t in fig.legends[0].get_texts()]


# --- the command ---------------------------------------------------------------------------

def test_cli_draws_every_figure_for_two_sweeps(tmp_path):
    build_sweep(tmp_path / "results" / "alpha", "alpha")
    build_sweep(tmp_path / "results" / "beta", "")  # empty sweep column: named after folder
    proc = cli("--results", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "results" / "plots"
    for name in FIGURES:
        check_png(out / f"{name}.png")
    table = pd.read_csv(out / "pareto.csv")
    assert set(table["sweep"]) == {"alpha", "beta"} and len(table) == 10
    md = (out / "pareto.md").read_text()
    assert "| alpha | alpha_01 |" in md
    # The demo's best is 90 % against a 92 % baseline; at <= 5 % of the bits: 84 % at 4.375 %.
    assert "- beta: no trial within 1 point of the float baseline (92.00 %)" in md
    assert "alpha: best accuracy at <= 5% of the float bits: 84.00 % at 4.38 % of the bits " \
        "(γ = 0.003, trial alpha_03)" in proc.stdout
    assert "2 failed" in proc.stdout and "wrote" in proc.stdout


def test_cli_with_reference_trials_and_an_unknown_kind(tmp_path, capsys):
    build_sweep(tmp_path / "demo")
    add_references(tmp_path / "demo", extra=[trial_row("demo", "m", "mystery", 0.0, 0.5, 0.1,
                                                       0.1)])
    main(["--results", str(tmp_path / "demo")])
    out = tmp_path / "demo" / "plots"
    for name in FIGURES:
        check_png(out / f"{name}.png")
    assert len(pd.read_csv(out / "pareto.csv")) == 5  # the compress front only
    md = (out / "pareto.md").read_text()
    assert "## Best trade-offs\n\n- demo: best accuracy at <= 5% of the float bits" in md
    assert "### narrow float ResNet-9 (width)" in md and "### fixed bits, all channels" in md
    assert "| demo | demo_w2 | 0.125 | 0.5× | 88.00 % | 25.00 % | 25.00 % | 32.00 |" in md
    assert "| demo | demo_b4 | 4 | 90.50 % | 12.50 % | 100.00 % | 4.00 |" in md
    # 9.69 % of the bits lies between 3 bits (9.375 %, 88 %) and 4 bits (12.5 %, 90.5 %).
    assert "| demo | demo_01 | 0.0003 | 89.00 % | 9.69 % | 62.00 % | 88.28 % | +0.72 points |" \
        in md
    assert "| demo | demo_05 | 0.1 | 60.00 % | 0.47 % | 6.00 % | - | outside the " in md
    printed = capsys.readouterr().out
    assert "Against the references:" in printed and "+0.72 points" in printed
    assert "not drawn: 1 'mystery'" in printed


def test_references_from_another_sweep_of_the_same_recipe(tmp_path, capsys):
    build_sweep(tmp_path / "refs", sweep="refs")
    add_references(tmp_path / "refs", sweep="refs")
    build_sweep(tmp_path / "new", sweep="new")  # compress trials, float baselines and floor
    main(["--results", str(tmp_path / "new"), "--references-from", str(tmp_path / "refs")])
    md = (tmp_path / "new" / "plots" / "pareto.md").read_text()
    # the same gap as the sweep with its own references, under the borrowing sweep's name
    assert "| new | new_01 | 0.0003 | 89.00 % | 9.69 % | 62.00 % | 88.28 % | +0.72 points |" \
        in md
    assert "| new | refs/refs_b4 | 4 | 90.50 % |" in md
    assert "refs_float" not in md  # the sweep's own float baselines stay its only ones
    printed = capsys.readouterr().out
    assert "sweep new: 10 reference trials (narrow-float, fixed-bits) from refs" in printed
    # another recipe (15 epochs) is refused with one line, exit 2, nothing written
    rows = pq.read_table(tmp_path / "refs" / TRIALS_FILE).to_pylist()
    pq.write_table(pa.Table.from_pylist([{**r, "epochs": 15} for r in rows]),
                   tmp_path / "refs" / TRIALS_FILE)
    out = cli("--results", str(tmp_path / "new"), "--references-from", str(tmp_path / "refs"),
              "--out", str(tmp_path / "other"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "preset cpu, 15 epochs, width 0.25, the sweep new with preset cpu, 5 epochs" \
        in out.stderr and not (tmp_path / "other").exists()
    out = cli("--results", str(tmp_path / "new"), "--references-from", str(tmp_path / "none"))
    assert out.returncode == 2 and "no trials.parquet there" in out.stderr


def test_old_files_without_reference_columns(tmp_path, capsys):
    build_sweep(tmp_path / "old")
    table = pq.read_table(tmp_path / "old" / TRIALS_FILE)
    old = [c for c in ("fixed_bits", "full_width") if c in table.column_names]
    pq.write_table(table.drop_columns(old), tmp_path / "old" / TRIALS_FILE)
    main(["--results", str(tmp_path / "old")])
    check_png(tmp_path / "old" / "plots" / "bits_vs_accuracy.png")
    md = (tmp_path / "old" / "plots" / "pareto.md").read_text()
    assert "- demo: best accuracy at <= 5% of the float bits" in md
    assert "reference" not in md.lower()
    assert "Against the references" not in capsys.readouterr().out
    trials = load_results([tmp_path / "old"]).trials
    assert trials["fixed_bits"].isna().all() and trials["full_width"].isna().all()
    legend = [t.get_text() for t in size_vs_accuracy(trials, "bits_fraction").legends[0]
              .get_texts()]
    assert not any("narrow float" in t or "fixed bits" in t for t in legend), legend


def test_partial_sweep_and_other_format(tmp_path, capsys):
    build_sweep(tmp_path / "run", "run", running=2)
    main(["--results", str(tmp_path / "run"), "--out", str(tmp_path / "figs"),
          "--format", "svg", "--trial", "run_02"])
    for name in FIGURES:
        assert (tmp_path / "figs" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    table = pd.read_csv(tmp_path / "figs" / "pareto.csv")
    assert "run_04" not in set(table["trial_id"])  # still running: not on the front
    assert "2 unfinished" in capsys.readouterr().out


def test_missing_epochs_and_layers_are_skipped_with_a_note(tmp_path, capsys):
    build_sweep(tmp_path / "s")
    (tmp_path / "s" / EPOCHS_FILE).unlink()
    (tmp_path / "s" / LAYERS_FILE).unlink()
    main(["--results", str(tmp_path / "s")])
    check_png(tmp_path / "s" / "plots" / "bits_vs_accuracy.png")
    assert not (tmp_path / "s" / "plots" / "epoch_time.png").exists()
    assert "no epochs.parquet" in capsys.readouterr().out


def bad_columns(folder: Path) -> Path:
    build_sweep(folder)
    pq.write_table(pa.table({"trial_id": ["a"], "kind": ["compress"]}), folder / TRIALS_FILE)
    return folder


@pytest.mark.parametrize("make, args, words", [
    (lambda p: p.mkdir() or p, [], "no trials.parquet under"),
    (lambda p: p / "nowhere", [], "does not exist: run a sweep first"),
    (lambda p: (p.write_text("x"), p)[1], [], "is not a folder"),
    (bad_columns, [], "missing required columns: status, gamma"),
    (lambda p: build_sweep(p) or p, ["--trial", "nope"], "unknown --trial 'nope'"),
    (lambda p: build_sweep(p) or p, ["--out", "pyproject.toml"], "is a file: give a folder"),
    (lambda p: build_sweep(p) or p, ["--out", "pyproject.toml/plots"],
     "pyproject.toml is a file, not a folder"),
    (lambda p: (build_sweep(p), (p / "plots").write_text("x"), p)[2], [],
     "plots is a file: give a folder"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, make, args, words):
    folder = make(tmp_path / "bad")
    proc = cli("--results", str(folder), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("scnn analysis: error:") and words in proc.stderr


def test_default_results_folder_is_results_under_the_working_directory(tmp_path):
    build_sweep(tmp_path / "results" / "mine", "mine")
    proc = subprocess.run([sys.executable, "-m", "analysis.plots", "--trial", "mine_03"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check_png(tmp_path / "results" / "plots" / "layers.png")
    assert "mine_03" in proc.stdout and "wrote" in proc.stdout


def test_copies_of_a_sweeps_rows_inside_its_folder_are_not_more_sweeps(tmp_path):
    """MLflow keeps each trial's rows as artifacts in the sweep's mlartifacts/."""
    folder = tmp_path / "results" / "mine"
    build_sweep(folder, "mine")
    artifacts = folder / "mlartifacts" / "0" / "abc" / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / TRIALS_FILE).write_bytes((folder / TRIALS_FILE).read_bytes())
    build_sweep(tmp_path / "results" / "other", "other")
    results = load_results([tmp_path / "results"])
    assert results.folders == [folder, tmp_path / "results" / "other"]
    assert len(results.trials) == 2 * len(pd.read_parquet(folder / TRIALS_FILE))


def test_empty_trials_file_is_an_error(tmp_path):
    write_results(tmp_path, [], [], [])
    with pytest.raises(ResultsError, match="no trials yet"):
        load_results([tmp_path])


def test_imports_neither_torch_nor_ray_nor_onnxruntime():
    code = ("import analysis.plots, sys; bad = [m for m in ('torch', 'ray', 'onnxruntime') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def write_export(sweep_folder: Path, tid: str, acc: float, payload: int | None, speeds: dict,
                 kind: str = "compress", int8: tuple[float, dict] | None = None,
                 macs: tuple[int, float] = (6_000_000, 0.25), status: str = "ok",
                 timed_by: str | None = None, float_layers: int = 0) -> None:
    """An export.json as trainer.export writes it (only the keys the analysis reads).

    ``speeds``/``int8``: images/s per batch size of model.onnx / (accuracy, images/s) of
    model.int8.onnx (None: an export from before the int8 file); ``macs``: the graph's MACs
    per image and the live fraction reported by the trial; ``payload`` None: a float
    network; ``timed_by``: what benchmarks.inference --write leaves; ``float_layers``:
    of the 9 layers, how many model.int8.onnx keeps float."""
    folder = sweep_folder / "exports" / tid
    folder.mkdir(parents=True)
    files = {"model.onnx": 4 * 60_000 if payload is None else 260_000}
    if payload is not None:
        files["weights.safetensors"] = payload + 3000
    report = {"status": status, "trial": tid, "kind": kind, "gamma": 0.01,
              "reported": {"macs_kept_fraction": macs[1]}, "test_accuracy_onnx": acc,
              "payload_bytes": payload, "files": files, "macs_per_image_onnx": macs[0],
              "inference": {"threads": 1, "machine": "x86_64", "timed_by": timed_by,
                            "images_per_s": {str(b): v for b, v in speeds.items()}}}
    if int8 is not None:
        files["model.int8.onnx"] = files["model.onnx"] // 3
        names = [name for name, _ in LAYERS]
        report.update(test_accuracy_int8=int8[0], int8={
            "bytes": files["model.int8.onnx"], "int8_layers": names[float_layers:],
            "float_layers": {name: "a row needs 9 bits" for name in names[:float_layers]},
            "inference": {"threads": 1, "machine": "x86_64", "timed_by": timed_by,
                          "images_per_s": {str(b): v for b, v in int8[1].items()}}})
    (folder / "export.json").write_text(json.dumps(report))


def write_demo_exports(sweep_folder: Path) -> None:
    """Three compress networks and the float baseline (24 M MACs), each float32 and int8."""
    write_export(sweep_folder, "demo_base", 0.81, None, {1: 1000.0, 256: 2000.0},
                 kind="float-baseline", int8=(0.8094, {1: 1250.0, 256: 4000.0}),
                 macs=(24_000_000, 1.0))
    for i, (acc, payload, one, many, macs) in enumerate((
            (0.6458, 77_756, 2100.0, 9100.0, (4_800_000, 0.10)),
            (0.7195, 85_640, 1900.0, 8000.0, (9_600_000, 0.23)),
            (0.8052, 153_874, 1500.0, 5200.0, (18_000_000, 0.60)))):
        write_export(sweep_folder, f"demo_0{i}", acc, payload, {1: one, 256: many},
                     int8=(acc + 0.0001, {1: 1.5 * one, 256: 2 * many}), macs=macs,
                     float_layers=3 if i == 2 else 1)


def test_exports_load_per_network_form_and_batch(tmp_path):
    from analysis.speed import load_exports

    write_demo_exports(tmp_path / "s")
    rows = load_exports([tmp_path / "s"])
    assert len(rows) == 4 * 2 * 2  # networks x (float32, int8) x batch sizes
    one = rows[(rows["trial_id"] == "demo_01") & (rows["batch"] == "256")].set_index("form")
    assert one.loc["float32", "ms_per_image"] == pytest.approx(1000 / 8000.0)
    assert one.loc["int8", "ms_per_image"] == pytest.approx(1000 / 16000.0)
    assert one.loc["int8", "test_accuracy"] == pytest.approx(0.7196)  # the int8 file's own
    assert one.loc["int8", "file_bytes"] == 260_000 // 3
    assert one.loc["float32", "payload_bytes"] == 85_640
    base = rows[rows["trial_id"] == "demo_base"]  # a float network: nothing bit-packed
    assert base["payload_bytes"].isna().all() and set(base["kind"]) == {"float-baseline"}


def test_an_export_from_before_the_int8_file_gives_float_rows(tmp_path):
    from analysis.speed import load_exports

    write_export(tmp_path / "s", "old", 0.70, 20_000, {1: 1500.0, 256: 3000.0})
    rows = load_exports([tmp_path / "s"])
    assert set(rows["form"]) == {"float32"} and len(rows) == 2


def test_a_float_network_export_draws_and_tabulates(tmp_path):
    """A float-baseline export (no payload) was refused with 're-export it' before."""
    from analysis.speed import exports_markdown, load_exports, time_figure

    write_export(tmp_path / "s", "base", 0.81, None, {1: 1000.0, 256: 2000.0},
                 kind="float-baseline", int8=(0.8094, {1: 1250.0, 256: 4000.0}),
                 macs=(24_000_000, 1.0))
    rows = load_exports([tmp_path / "s"], {tmp_path / "s": "demo"})
    assert time_figure(rows) is not None
    assert "| demo | base | float-baseline | 81.00 % / 80.94 % | - / 240,000 / 80,000 | " \
        "1.000 / 0.800 | 0.500 / 0.250 | 0.50× / 1.00× | 100.0 % / 100.0 % | 9 of 9 |" \
        in exports_markdown(rows)
    assert "each export's own 0.5 s timing" in exports_markdown(rows)
    write_export(tmp_path / "t", "base", 0.81, None, {1: 1000.0, 256: 2000.0},
                 kind="float-baseline", int8=(0.8094, {1: 1250.0, 256: 4000.0}),
                 timed_by="python -m benchmarks.inference --reps 7")
    timed = exports_markdown(load_exports([tmp_path / "t"]))
    assert "timed side by side: python -m benchmarks.inference --reps 7" in timed
    empty = load_exports([tmp_path / "none"])  # no exports: no figure, no section
    assert time_figure(empty) is None and exports_markdown(empty) == ""


def test_time_figure_panels_batch_256_then_1_on_a_log_axis_with_the_macs(tmp_path):
    from analysis.speed import load_exports, time_figure

    write_demo_exports(tmp_path / "s")
    rows = load_exports([tmp_path / "s"])
    fig = time_figure(rows)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["batch 256", "batch 1"]
    assert all(ax.get_xscale() == "log" for ax in axes)
    drawn = {round(float(x), 6) for line in axes[0].get_lines() for x in line.get_xdata()}
    want = rows[rows["batch"] == "256"]["ms_per_image"].round(6)
    assert drawn == set(want)  # every network, both forms, at its time per image
    labels = {t.get_text() for t in axes[0].texts}
    assert {"10 % MACs, 8/9 int8", "60 % MACs, 6/9 int8", "100 % MACs"} <= labels
    colours = {line.get_color() for line in axes[1].get_lines()}
    assert colours == {"tab:blue", "tab:red"}  # float32 and int8


def test_exports_draw_accuracy_against_time_and_pareto_md_gains_the_table(tmp_path):
    build_sweep(tmp_path / "s")
    write_demo_exports(tmp_path / "s")
    write_export(tmp_path / "s", "demo_bad", 0.5, 70_000, {1: 1.0, 256: 1.0},
                 int8=(0.5, {1: 1.0, 256: 1.0}), status="failed")
    proc = cli("--results", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    check_png(tmp_path / "s" / "plots" / "inference_time.png")
    assert "inference_time.png" in proc.stdout
    assert "demo_bad left out" in proc.stdout and "failed" in proc.stdout
    table = (tmp_path / "s" / "plots" / "pareto.md").read_text()
    section = table[table.index("## Exported networks in time"):]
    rows = [line for line in section.splitlines() if line.startswith("| demo |")]
    assert [r.split(" | ")[1] for r in rows] == ["demo_base", "demo_02", "demo_01", "demo_00"]
    # demo_01: int8 at batch 256 takes 1/16,000 s against the baseline's 1/2,000 (float32)
    # and 1/4,000 (int8); 23 % of the MACs live, 9.6 M of the baseline's 24 M in the graph
    assert rows[2].endswith("| 0.526 / 0.351 | 0.125 / 0.062 | 0.12× / 0.25× "
                            "| 23.0 % / 40.0 % | 8 of 9 |"), rows[2]


def test_a_damaged_export_json_exits_2_with_one_line(tmp_path):
    build_sweep(tmp_path / "s")
    (tmp_path / "s" / "exports" / "x").mkdir(parents=True)
    (tmp_path / "s" / "exports" / "x" / "export.json").write_text("{")
    proc = cli("--results", str(tmp_path / "s"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot read" in proc.stderr and "export.json" in proc.stderr


# --- seeds, widest gap, hypervolume, where --refine goes -----------------------------------

def test_gamma_means_average_seeds_and_leave_out_failed_trials():
    from analysis.frontier import gamma_means

    nan = math.nan
    assert gamma_means([0.2, 0.1, 0.1, 0.2], [0.5, 0.1, 0.3, nan], [0.9, 0.5, 0.7, 0.8]) == [
        pytest.approx((0.1, 0.2, 0.6)), (0.2, 0.5, 0.9)]


def test_widest_gap_by_hand():
    from analysis.frontier import widest_gap

    # Front (0.01, 50 %), (0.1, 80 %), (0.2, 82 %); (0.3, 70 %) is dominated.
    sizes, accs = [0.1, 0.01, 0.3, 0.2], [0.8, 0.5, 0.7, 0.82]
    assert widest_gap(sizes, accs) == pytest.approx(math.hypot(1, 0.3))  # 1 decade, 30 points
    assert widest_gap([0.1, 0.2], [0.8, 0.82]) == pytest.approx(math.hypot(math.log10(2), 0.02))
    assert math.isnan(widest_gap([0.1], [0.8])) and math.isnan(widest_gap([], []))


def test_hypervolume_by_hand():
    from analysis.frontier import hypervolume

    # x = -log10(size): 2 and 1 decades; above 10 %: 0.4 over (1, 2], 0.7 over (0, 1].
    assert hypervolume([0.01, 0.1], [0.5, 0.8]) == pytest.approx(100 * (0.4 + 0.7))
    assert hypervolume([0.01, 0.1], [0.5, 0.8], ceiling=0.7) == pytest.approx(100 * (0.4 + 0.6))
    # Dominated points, the full size and points at chance add nothing.
    assert hypervolume([0.01, 0.1, 0.2, 1.0, 0.001], [0.5, 0.8, 0.6, 0.95, 0.1]) == (
        pytest.approx(110))
    assert hypervolume([], []) == 0.0


def test_next_gamma_splits_the_widest_untried_gap_else_goes_beyond_the_end():
    from analysis.frontier import next_gamma

    gammas, sizes, accs = [0.1, 0.01, 0.005], [0.01, 0.1, 0.2], [0.5, 0.8, 0.82]
    tried = list(gammas)
    g, why = next_gamma(gammas, sizes, accs, tried)
    assert g == pytest.approx(math.sqrt(0.1 * 0.01)) and "widest untried gap" in why
    g, _ = next_gamma(gammas, sizes, accs, tried + [math.sqrt(0.001) * (1 + 1e-7)])
    assert g == pytest.approx(math.sqrt(0.01 * 0.005))  # the next widest gap
    g, why = next_gamma(gammas, sizes, accs, tried + [math.sqrt(0.001), math.sqrt(5e-5)])
    assert g == pytest.approx(0.0025) and "smallest" in why  # the best point is at 0.005
    g, why = next_gamma([0.05], [0.1], [0.8], [0.05, 0.01])  # one front point, at the top
    assert g == pytest.approx(0.1) and "largest" in why


def seeded_sweep(folder: Path, refined_gamma: float | None = None) -> None:
    """Two seeds per γ: 1e-3 (88 %, 90 %), 1e-2 (78 %, 80 %), 1e-1 (60 %, 64 %); baselines
    91 % and 93 %; optionally a refine γ (83 %, 85 %) between 1e-3 and 1e-2."""
    points = [(1e-3, 0.88, 0.20), (1e-3, 0.90, 0.22), (1e-2, 0.78, 0.04), (1e-2, 0.80, 0.06),
              (1e-1, 0.60, 0.01), (1e-1, 0.64, 0.01)]
    rows = [dict(trial_row("s2", f"c{i}", "compress", g, a, b, b, seed=i % 2), refined=False)
            for i, (g, a, b) in enumerate(points)]
    if refined_gamma is not None:
        rows += [dict(trial_row("s2", f"r{i}", "compress", refined_gamma, a, 0.1, 0.1, seed=i),
                      refined=True) for i, a in enumerate((0.83, 0.85))]
    rows += [trial_row("s2", f"b{i}", "float-baseline", 0.0, a, 1.0, 1.0, seed=i)
             for i, a in enumerate((0.91, 0.93))]
    write_results(folder, rows, [], [])


def test_seeded_sweep_draws_means_with_bars_and_band_and_gives_the_front_quality(tmp_path,
                                                                                  capsys):
    seeded_sweep(tmp_path / "s2", refined_gamma=math.sqrt(1e-5))
    trials = load_results([tmp_path / "s2"]).trials
    fig = size_vs_accuracy(trials, "bits_fraction")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Pareto front of the means (4 γs, up to 2 seeds each)" in legend, legend
    assert "front γs' lowest to highest seed" in legend
    assert "float baseline (size 100 %): 92.0 % (min–max 91.0–93.0) (n=2)" in legend
    main(["--results", str(tmp_path / "s2")])
    md = (tmp_path / "s2" / "plots" / "pareto.md").read_text()
    assert "| s2 | 0.001 | 2 | 89.00 % | 88.00–90.00 % | 21.00 % | 20.00–22.00 % |" in md
    # Before: front (1 %, 62 %), (5 %, 79 %), (21 %, 89 %); after, (10 %, 84 %) joins.
    before = max(math.hypot(math.log10(5), 0.17), math.hypot(math.log10(21 / 5), 0.10))
    after = max(math.hypot(math.log10(5), 0.17), math.hypot(math.log10(2), 0.05),
                math.hypot(math.log10(2.1), 0.05))
    assert (f"s2: before --refine widest gap {before:.3f}, hypervolume" in md
            and f"after widest gap {after:.3f}" in md), md
    assert "(3 γs); after" in md and "(4 γs)" in md and "92.00 %" in md
    assert "Front quality" in capsys.readouterr().out


def test_one_seed_sweeps_say_their_front_quality_without_refine(tmp_path):
    build_sweep(tmp_path / "demo")  # files written before seeds and --refine: no refined column
    table = pq.read_table(tmp_path / "demo" / TRIALS_FILE)
    pq.write_table(table.drop_columns(["refined"]), tmp_path / "demo" / TRIALS_FILE)
    main(["--results", str(tmp_path / "demo")])
    md = (tmp_path / "demo" / "plots" / "pareto.md").read_text()
    assert "demo: front of widest gap " in md and "no --refine γs" in md
    assert "| demo | demo_01 |" in md and "min–max" not in md.split("## Best")[0]


# --- sweeps over the recipe ----------------------------------------------------------------

def recipe_sweep(folder: Path, with_study: bool) -> list[dict]:
    """12 compress trials over γ, min_bits and lr_quant: min_bits 3 wins at every size (2
    loses 10 points, 4 loses 20), lr_quant does nothing; with a real Optuna study of them."""
    import optuna

    rows = []
    for i in range(12):
        gamma, min_bits, lr_quant = 1e-3 * 1.5 ** i, (4.0, 2.0, 3.0)[i % 3], 0.01 * (1 + i % 5)
        bits = 0.2 * 0.7 ** i
        acc = 0.9 - 0.02 * i - {2.0: 0.1, 3.0: 0.0, 4.0: 0.2}[min_bits]
        rows.append({**trial_row("recipe", f"r{i:02d}", "compress", gamma, acc, bits, bits * 4),
                     "min_bits": min_bits, "lr_quant": lr_quant, "study_trial": i,
                     "swept": "gamma,min_bits,lr_quant"})
    rows.append({**trial_row("recipe", "base", "float-baseline", 0.0, 0.91, 1.0, 1.0),
                 "swept": "gamma,min_bits,lr_quant"})
    write_results(folder, rows, [], [], swept=["min_bits", "lr_quant"])
    if with_study:
        study = optuna.create_study(study_name="recipe", directions=["maximize", "minimize"],
                                    storage=f"sqlite:///{folder / 'optuna.db'}")
        dists = {"gamma": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
                 "min_bits": optuna.distributions.CategoricalDistribution([2.0, 3.0, 4.0]),
                 "lr_quant": optuna.distributions.FloatDistribution(0.01, 0.05)}
        for row in rows[:12]:
            study.add_trial(optuna.trial.create_trial(
                params={k: row[k] for k in dists}, distributions=dists,
                values=[row["test_accuracy"], row["bits_fraction"]]))
    return rows


def test_a_recipe_sweep_shows_its_fields_front_values_and_importances(tmp_path, capsys):
    rows = recipe_sweep(tmp_path / "recipe", with_study=True)
    main(["--results", str(tmp_path / "recipe"), "--out", str(tmp_path / "out")])
    check_png(tmp_path / "out" / "swept_fields.png")
    table = pd.read_csv(tmp_path / "out" / "pareto.csv")
    assert list(table.columns[:5]) == ["sweep", "trial_id", "gamma", "min_bits", "lr_quant"]
    assert set(table["min_bits"]) == {3.0}  # the winner is on the front, alone
    md = (tmp_path / "out" / "pareto.md").read_text()
    assert "| sweep | trial | γ | min_bits | lr_quant | accuracy |" in md
    front = md.split("## What each field mattered")[1]
    scores = {line.split("|")[1].strip(): line.split("|")[2].strip()
              for line in front.splitlines() if line.startswith("| ") and "field" not in line}
    # accuracy: min_bits matters more than lr_quant, which does nothing here
    assert set(scores) == {"gamma", "min_bits", "lr_quant"}
    assert float(scores["min_bits"]) > float(scores["lr_quant"])
    assert len(rows) == 13


def test_the_swept_panels_colour_each_point_by_its_value(tmp_path):
    from analysis.swept import swept_figure

    recipe_sweep(tmp_path, with_study=False)
    trials = load_results([tmp_path]).trials
    fig = swept_figure(trials)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["gamma", "min_bits", "lr_quant"]
    legend = axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["2", "3", "4"]
    points = axes[1].collections[0]
    colours = {tuple(c) for c in points.get_facecolors()}
    assert len(colours) == 3 and len(points.get_offsets()) == 12
    # A γ-only sweep draws no such figure, and pareto.md is as before.
    build_sweep(tmp_path / "plain", "plain")
    plain = load_results([tmp_path / "plain"]).trials
    assert swept_figure(plain) is None
    assert list(pareto_table(plain).columns) == ["sweep", "trial_id", "gamma", "test_accuracy",
                                                 "bits_fraction", "weights_kept_fraction",
                                                 "mean_bits", "train_time_s"]
