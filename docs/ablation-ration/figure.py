"""Draw the ration ablation (docs/ablation.md, "A ration on each conv's deaths").

    python docs/ablation-ration/figure.py    # writes docs/ablation-ration/ration.png

and prints every run beside the other recipe's front at its size (interpolated linearly
in log size; blank outside its range), on each budget.

Top row: the proxy budget (hand runs in this folder, trial_id p-base-… for today's code,
p-ration-… for --ration 0.5). Bottom row: the `cpu` preset, seed 0: today's front is the
sweep cpu-ramp with the seed-0 hand runs of docs/ablation-ramp (r0.5-g…-s0); --ration 0.5
the sweep cpu-ration (cpu-ramp's γs) with the hand runs c-ration-g…-s0 of this folder
(its seed-1 run, c-ration-g0.1-s1, is in the text of docs/ablation.md, not drawn).
Left: test accuracy against γ; right: accuracy against the bits kept.
"""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent.parent))  # docs/: the shared drawing
from recipe_figure import DOCS, draw, finished  # noqa: E402

HERE = Path(__file__).parent
RECIPES = {"ration": ("--ration 0.5", "tab:green"), "base": ("today (no ration)", "tab:blue")}


def budgets() -> dict[str, dict[str, pd.DataFrame]]:
    """{budget: {recipe: its seed-0 runs}}."""
    hand = finished(pd.read_parquet(HERE / "trials.parquet"))
    parts = hand["trial_id"].str.extract(r"^(p|c)-(base|ration)-g[0-9.]+(?:-s(\d+))?$")
    hand["budget"], hand["recipe"] = parts[0], parts[1]
    hand = hand[parts[2].fillna("0") == "0"]
    proxy, cpu = hand[hand["budget"] == "p"], hand[hand["budget"] == "c"]
    ramp = pd.read_parquet(DOCS / "ablation-ramp" / "trials.parquet")
    today = pd.concat([pd.read_parquet(DOCS / "cpu-ramp" / "trials.parquet"),
                       ramp[ramp["trial_id"].str.match(r"^r0\.5-g[0-9.]+-s0$")]])
    rationed = pd.concat([finished(pd.read_parquet(DOCS / "cpu-ration" / "trials.parquet")),
                          cpu[cpu["recipe"] == "ration"]])
    return {
        "proxy (batch 128, 12,800 images, 5 epochs)":
            {r: proxy[proxy["recipe"] == r] for r in RECIPES},
        "cpu preset (full CIFAR-10, 5 epochs)": {"ration": rationed, "base": finished(today)}}


def print_paired() -> None:
    """The sweeps cpu-ration and cpu-ramp drew the same γs: each pair side by side."""
    ramp, ration = (finished(pd.read_parquet(DOCS / s / "trials.parquet")).set_index("gamma")
                    for s in ("cpu-ramp", "cpu-ration"))
    print("\nthe same γ in cpu-ramp (today) and cpu-ration (--ration 0.5)\n")
    print("| γ | cpu-ramp | cpu-ration | accuracy | bits |")
    print("|---:|---|---|---:|---:|")
    for gamma in sorted(set(ramp.index) & set(ration.index)):
        a, b = ramp.loc[gamma], ration.loc[gamma]
        same = " (the same network)" if (a.test_accuracy, a.size_bits) == (
            b.test_accuracy, b.size_bits) else ""
        print(f"| {gamma:.3g} | {100 * a.test_accuracy:.2f} % at {100 * a.bits_fraction:.3g} % "
              f"of the bits, {100 * a.weights_kept_fraction:.3g} % of the weights | "
              f"{100 * b.test_accuracy:.2f} % at {100 * b.bits_fraction:.3g} %, "
              f"{100 * b.weights_kept_fraction:.3g} %{same} | "
              f"{100 * (b.test_accuracy - a.test_accuracy):+.2f} | "
              f"{b.bits_fraction / a.bits_fraction:.2f}x |")


if __name__ == "__main__":
    print_paired()
    draw(budgets(), RECIPES,
         "A ration on each conv's deaths per epoch (--ration 0.5), seed 0, one thread per run",
         HERE / "ration.png")
