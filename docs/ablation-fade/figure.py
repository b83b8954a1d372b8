"""Draw the fade ablation (docs/ablation.md, "A channel fades out below the floor").

    python docs/ablation-fade/figure.py    # writes docs/ablation-fade/fade.png

and prints every run beside the other recipe's front at its size (interpolated linearly
in log size; blank outside its range), on each budget.

Top row: the proxy budget (hand runs in this folder, trial_id p-base-… and p-fade-…);
bottom row: the `cpu` preset (the sweeps cpu-ramp, without fade, with the seed-0 hand runs
of docs/ablation-ramp; and cpu-fade, with it, stopped after 6 of its 12 trials, with the
hand runs c-fade-… beyond its range).
Left: test accuracy against γ; right: accuracy against the bits kept.
"""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent.parent))  # docs/: the shared drawing
from recipe_figure import draw, finished  # noqa: E402

HERE = Path(__file__).parent
RECIPES = {"fade": ("--fade", "tab:orange"), "base": ("today (no fade)", "tab:blue")}
SWEEPS = {"base": "cpu-ramp", "fade": "cpu-fade"}  # docs/, seed 0


def budgets() -> dict[str, dict[str, pd.DataFrame]]:
    """{budget: {recipe: its runs}}: the proxy's hand runs (p-…), and on the cpu preset
    the sweeps with the hand runs beyond them (c-…)."""
    hand = pd.read_parquet(HERE / "trials.parquet")
    parts = hand["trial_id"].str.extract(r"^(p|c)-(base|fade)-g")
    hand["budget"], hand["recipe"] = parts[0], parts[1]
    proxy, cpu = hand[hand["budget"] == "p"], hand[hand["budget"] == "c"]
    return {
        "proxy (batch 128, 12,800 images, 5 epochs)":
            {r: finished(proxy[proxy["recipe"] == r]) for r in RECIPES},
        "cpu preset (full CIFAR-10, 5 epochs)":
            {r: finished(pd.concat([pd.read_parquet(HERE.parent / s / "trials.parquet"),
                                    cpu[cpu["recipe"] == r], RAMP_RUNS[r]()]))
             for r, s in SWEEPS.items()}}


def ramp_runs() -> pd.DataFrame:
    """The seed-0 hand runs of today's cpu recipe (docs/ablation-ramp, r0.5-g…-s0)."""
    runs = pd.read_parquet(HERE.parent / "ablation-ramp" / "trials.parquet")
    return runs[runs["trial_id"].str.match(r"^r0\.5-g[0-9.]+-s0$")]


RAMP_RUNS = {"base": ramp_runs, "fade": pd.DataFrame}


if __name__ == "__main__":
    draw(budgets(), RECIPES,
         "Fading a channel out below the 3-bit floor (--fade), seed 0, one thread per run",
         HERE / "fade.png")
