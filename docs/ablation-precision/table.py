"""The parity table and figure of parity.sh's runs: bf16 against fp32, γ by γ and seed by seed.

    python docs/ablation-precision/table.py RUNS_DIR [--plot parity.png]

RUNS_DIR holds parity.sh's folders ``{fp32,bf16}-g{γ}-s{seed}``, each a ``trainer.train
--out`` folder, and sweep folders (``parity.sh OUT bf16-sweeps``), whose finished trials
count by their precision, γ and seed. Prints a markdown table (a row per γ and seed with
both runs finished) and the mean bf16 - fp32 difference with its spread; ``--plot`` draws
accuracy against bits, each pair joined by a line.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

NAME = re.compile(r"(fp32|bf16)-g([0-9.]+)-s([0-9]+)$")


def read(runs: Path) -> pd.DataFrame:
    """One row per finished run: precision, gamma, seed and its trial-level results, from
    parity.sh's ``trainer.train`` folders and from sweep folders (every finished compress
    trial of a ``sweep.run`` folder's trials.parquet, as parity.sh's ``bf16-sweeps`` runs)."""
    rows = []
    for folder in sorted(runs.iterdir()):
        m = NAME.match(folder.name)
        if not (folder / "trials.parquet").is_file():
            continue
        t = pd.read_parquet(folder / "trials.parquet")
        if m:
            t = t.iloc[:1]
            if t["precision"].iloc[0] != m.group(1):
                print(f"table.py: error: {folder} trained in {t['precision'].iloc[0]}, its "
                      f"name says {m.group(1)}", file=sys.stderr)
                sys.exit(2)
        else:  # a sweep's folder
            t = t[(t.status == "TERMINATED") & (t.kind == "compress")]
        for r in t.itertuples():
            rows.append({"precision": r.precision, "gamma": float(r.gamma), "seed": int(r.seed),
                         "accuracy": 100 * r.test_accuracy, "bits": 100 * r.bits_fraction,
                         "weights": 100 * r.weights_kept_fraction, "time_s": r.train_time_s,
                         "code": r.code_version, "cpu": r.cpu_model, "folder": folder.name})
    df = pd.DataFrame(rows)
    twice = df[df.duplicated(["precision", "gamma", "seed"], keep=False)] if rows else df
    if not twice.empty:
        r = twice.iloc[0]
        same = twice[(twice.precision == r.precision) & (twice.gamma == r.gamma)
                     & (twice.seed == r.seed)]
        print(f"table.py: error: {r.precision} at γ {r.gamma:g} seed {r.seed} was trained "
              f"twice ({', '.join(same.folder)}): keep one", file=sys.stderr)
        sys.exit(2)
    return df


def pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """A row per (γ, seed) with both precisions: each one's figures and bf16 - fp32."""
    if set(runs.precision) != {"fp32", "bf16"}:
        return pd.DataFrame()
    wide = runs.pivot_table(index=["gamma", "seed"], columns="precision",
                            values=["accuracy", "bits", "weights", "time_s"], aggfunc="first")
    wide.columns = [f"{v}_{p}" for v, p in wide.columns]
    wide = wide.dropna().reset_index()
    for v in ("accuracy", "bits", "weights"):
        wide[f"d_{v}"] = wide[f"{v}_bf16"] - wide[f"{v}_fp32"]
    wide["bits_ratio"] = wide["bits_bf16"] / wide["bits_fp32"]
    return wide


def markdown(p: pd.DataFrame) -> str:
    lines = ["| γ | seed | fp32: accuracy, bits, weights | bf16: accuracy, bits, weights "
             "| bf16 − fp32: accuracy (points) | bits (bf16 / fp32) |",
             "|---:|---:|---|---|---:|---:|"]
    for r in p.itertuples():
        lines.append(f"| {r.gamma:g} | {r.seed} | {r.accuracy_fp32:.2f} %, {r.bits_fp32:.3f} %, "
                     f"{r.weights_fp32:.2f} % | {r.accuracy_bf16:.2f} %, {r.bits_bf16:.3f} %, "
                     f"{r.weights_bf16:.2f} % | {r.d_accuracy:+.2f} | {r.bits_ratio:.3f} |")
    if len(p) > 1:
        d, b = p["d_accuracy"], p["bits_ratio"]
        lines.append(f"| all | {len(p)} pairs | | | mean {d.mean():+.2f}, sd {d.std():.2f} "
                     f"| mean {b.mean():.3f}, sd {b.std():.3f} |")
    return "\n".join(lines)


def plot(runs: pd.DataFrame, p: pd.DataFrame, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in p.itertuples():
        ax.plot([r.bits_fp32, r.bits_bf16], [r.accuracy_fp32, r.accuracy_bf16], color="0.7",
                lw=1, zorder=1)
    for prec, marker, color, offset, ha in (("fp32", "o", "tab:blue", (-4, -3), "right"),
                                            ("bf16", "s", "tab:orange", (4, -3), "left")):
        sub = runs[runs.precision == prec]
        ax.scatter(sub.bits, sub.accuracy, marker=marker, color=color, label=prec, zorder=2)
        for r in sub.itertuples():  # fp32 labelled on the left, bf16 on the right
            ax.annotate(f"γ {r.gamma:g} s{r.seed}", (r.bits, r.accuracy), fontsize=7,
                        color=color, xytext=offset, textcoords="offset points", ha=ha)
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel("bits kept (% of the float network's)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("cpu preset: bf16 autocast against fp32, same γ and seed")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--plot", metavar="PNG")
    args = ap.parse_args()
    if not args.runs.is_dir():
        ap.error(f"{args.runs}: no such folder; give parity.sh's output folder")
    runs = read(args.runs)
    if runs.empty:
        ap.error(f"{args.runs}: no finished parity.sh run in it")
    p = pairs(runs)
    print(markdown(p))
    print(f"\n{len(runs)} runs finished; code {', '.join(sorted(set(runs.code)))}; "
          f"CPU {', '.join(sorted(set(runs.cpu)))}")
    if args.plot and not p.empty:
        plot(runs, p, args.plot)


if __name__ == "__main__":
    main()
