"""The parity tables and figure of parity.sh's runs: bf16 against fp32, γ by γ and seed by seed.

    python docs/ablation-precision/table.py RUNS_DIR [--plot parity.png] [--fronts]

RUNS_DIR holds parity.sh's folders ``{fp32,bf16,emu}-g{γ}-s{seed}``, each a ``trainer.train
--out`` folder (``emu``: emulate.py's, bf16 as a CPU with bf16 units sums it), and sweep
folders (``parity.sh OUT bf16-sweeps``), whose finished trials count by their precision, γ
and seed. For each of bf16 and emu, prints a markdown table (a row per γ and seed that it
and fp32 both finished) and the mean difference with its spread, and, for a seed with three
or more such γs, the hypervolume of each one's front (analysis.frontier). ``--plot`` draws
accuracy against bits, each pair joined by a line; ``--fronts`` draws each arm's front too.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

# the analysis of the tree this file is in, not whichever one the environment installed
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

NAME = re.compile(r"(fp32|bf16|emu)-g([0-9.]+)-s([0-9]+)$")
ARMS = {"bf16": "bf16 autocast, the CPU's own kernels",
        "emu": "bf16, emulated (float32 sums rounded once)"}
STYLE = {"fp32": ("o", "tab:blue"), "bf16": ("s", "tab:orange"), "emu": ("^", "tab:green")}


def fail(message: str) -> None:
    print(f"table.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def read(runs: Path) -> pd.DataFrame:
    """One row per finished run: its arm (fp32, bf16 or emu), gamma, seed and trial-level
    results, from parity.sh's ``trainer.train`` folders and from sweep folders (every
    finished compress trial of a ``sweep.run`` folder's trials.parquet)."""
    rows = []
    for folder in sorted(runs.iterdir()):
        m = NAME.match(folder.name)
        if not (folder / "trials.parquet").is_file():
            continue
        t = pd.read_parquet(folder / "trials.parquet")
        arm = None
        if m:
            t, arm = t.iloc[:1], m.group(1)
            trained = t["precision"].iloc[0]
            if trained != ("bf16" if arm == "emu" else arm):
                fail(f"{folder} trained in {trained}, its name says {arm}")
            if (arm == "emu") != (folder / "emulated.json").is_file():
                fail(f"{folder}: emulate.py's runs, and only they, hold emulated.json; "
                     f"name it {'emu' if arm != 'emu' else 'bf16'}-... or train it again")
        else:  # a sweep's folder
            t = t[(t.status == "TERMINATED") & (t.kind == "compress")]
        for r in t.itertuples():
            rows.append({"precision": arm or r.precision, "gamma": float(r.gamma),
                         "seed": int(r.seed), "accuracy": 100 * r.test_accuracy,
                         "bits": 100 * r.bits_fraction, "weights": 100 * r.weights_kept_fraction,
                         "time_s": r.train_time_s, "code": r.code_version, "cpu": r.cpu_model,
                         "folder": folder.name})
    df = pd.DataFrame(rows)
    twice = df[df.duplicated(["precision", "gamma", "seed"], keep=False)] if rows else df
    if not twice.empty:
        r = twice.iloc[0]
        same = twice[(twice.precision == r.precision) & (twice.gamma == r.gamma)
                     & (twice.seed == r.seed)]
        fail(f"{r.precision} at γ {r.gamma:g} seed {r.seed} was trained twice "
             f"({', '.join(same.folder)}): keep one")
    return df


def pairs(runs: pd.DataFrame, arm: str = "bf16") -> pd.DataFrame:
    """A row per (γ, seed) that ``arm`` and fp32 both finished: each one's figures under
    ``_fp32`` and ``_arm``, and the differences arm - fp32."""
    both = runs[runs.precision.isin(["fp32", arm])]
    if set(both.precision) != {"fp32", arm}:
        return pd.DataFrame()
    wide = both.pivot_table(index=["gamma", "seed"], columns="precision",
                            values=["accuracy", "bits", "weights", "time_s"], aggfunc="first")
    wide.columns = [f"{v}_{'fp32' if p == 'fp32' else 'arm'}" for v, p in wide.columns]
    wide = wide.dropna().reset_index()
    for v in ("accuracy", "bits", "weights"):
        wide[f"d_{v}"] = wide[f"{v}_arm"] - wide[f"{v}_fp32"]
    wide["bits_ratio"] = wide["bits_arm"] / wide["bits_fp32"]
    return wide


def markdown(p: pd.DataFrame, arm: str = "bf16") -> str:
    lines = [f"| γ | seed | fp32: accuracy, bits, weights | {arm}: accuracy, bits, weights "
             f"| {arm} − fp32: accuracy (points) | bits ({arm} / fp32) |",
             "|---:|---:|---|---|---:|---:|"]
    for r in p.itertuples():
        lines.append(f"| {r.gamma:g} | {r.seed} | {r.accuracy_fp32:.2f} %, {r.bits_fp32:.3f} %, "
                     f"{r.weights_fp32:.2f} % | {r.accuracy_arm:.2f} %, {r.bits_arm:.3f} %, "
                     f"{r.weights_arm:.2f} % | {r.d_accuracy:+.2f} | {r.bits_ratio:.3f} |")
    if len(p) > 1:
        d, b = p["d_accuracy"], p["bits_ratio"]
        lines.append(f"| all | {len(p)} pairs | | | mean {d.mean():+.2f}, sd {d.std():.2f} "
                     f"| mean {b.mean():.3f}, sd {b.std():.3f} |")
    return "\n".join(lines)


def fronts(p: pd.DataFrame, arm: str) -> list[str]:
    """For each seed with three or more pairs: the hypervolume of fp32's and the arm's
    points (decades of bits × accuracy points above chance, analysis.frontier)."""
    from analysis.frontier import hypervolume

    lines = []
    for seed, s in p.groupby("seed"):
        if len(s) < 3:
            continue
        hv = {side: hypervolume((s[f"bits_{side}"] / 100).tolist(),
                                (s[f"accuracy_{side}"] / 100).tolist())
              for side in ("fp32", "arm")}
        lines.append(f"seed {seed}, {len(s)} γs: hypervolume fp32 {hv['fp32']:.2f}, {arm} "
                     f"{hv['arm']:.2f} ({arm} / fp32 {hv['arm'] / hv['fp32']:.4f})")
    return lines


def plot(runs: pd.DataFrame, paired: dict[str, pd.DataFrame], path: str,
         draw_fronts: bool = False) -> None:
    """Every run, each arm's pairs (``paired``, from pairs()) joined to fp32 by a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.pareto import pareto_front

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for p in paired.values():
        for r in p.itertuples():
            ax.plot([r.bits_fp32, r.bits_arm], [r.accuracy_fp32, r.accuracy_arm], color="0.7",
                    lw=1, zorder=1)
    seeds = runs.seed.nunique() > 1
    for k, (prec, label) in enumerate((("fp32", "fp32"), *ARMS.items())):
        sub = runs[runs.precision == prec]
        if sub.empty:
            continue
        marker, color = STYLE[prec]
        ax.scatter(sub.bits, sub.accuracy, marker=marker, color=color, label=label, zorder=2)
        if draw_fronts:
            front = sub.iloc[pareto_front(sub.bits.tolist(), sub.accuracy.tolist())]
            ax.step(front.bits, front.accuracy, where="post", color=color, lw=1, alpha=0.7)
            continue
        for r in sub.itertuples():  # fp32 labelled on the left, the others on the right
            ax.annotate(f"γ {r.gamma:g}" + (f" s{r.seed}" if seeds else ""),
                        (r.bits, r.accuracy), fontsize=7, color=color,
                        xytext=(-4, -3) if k == 0 else (4, -3 - 6 * (k - 1)),
                        textcoords="offset points", ha="right" if k == 0 else "left")
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel("bits kept (% of the float network's)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("cpu preset: bf16 against fp32, same γ and seed")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--plot", metavar="PNG")
    ap.add_argument("--fronts", action="store_true",
                    help="with --plot: draw each arm's Pareto front instead of γ labels")
    args = ap.parse_args()
    if args.fronts and not args.plot:
        ap.error("--fronts draws on --plot's figure: give --plot PNG too")
    if not args.runs.is_dir():
        ap.error(f"{args.runs}: no such folder; give parity.sh's output folder")
    runs = read(args.runs)
    if runs.empty:
        ap.error(f"{args.runs}: no finished parity.sh run in it")
    paired = {arm: p for arm in ARMS if not (p := pairs(runs, arm)).empty}
    for arm, p in paired.items():
        print(f"\n{ARMS[arm]} against fp32:\n\n{markdown(p, arm)}")
        hypervolumes = fronts(p, arm)
        if hypervolumes:
            print("\n" + "\n".join(hypervolumes))
    print(f"\n{len(runs)} runs finished; code {', '.join(sorted(set(runs.code)))}; "
          f"CPU {', '.join(sorted(set(runs.cpu)))}")
    if args.plot and paired:
        plot(runs, paired, args.plot, args.fronts)


if __name__ == "__main__":
    main()
