"""The study searcher's own cost per trial, and which sampler finds a front in few trials.

``cost``: the seconds ``sweep.study.StudySearcher`` spends per point (Optuna's suggest, the
tell, the SQLite storage) over a sweep of ``--trials`` points run two at a time, for each
sampler, against a ``cpu``-preset trial's training time (``--trial-s``, default the median
of docs/cpu-mb3: the ratio is what the searcher adds to a sweep).

``quality``: each sampler's hypervolume after ``--trials`` points, two suggested before each
tell (as two concurrent trials ask), on two small two-objective problems: ZDT1 in four
dimensions, and the same with a three-way choice that shifts the front (like ``min_bits``);
median over ``--repeats`` seeds, as a fraction of the true front's hypervolume. A proxy, not
our training: it says which sampler learns from a dozen points, not what our front will be.

    python -m benchmarks.searcher --trials 12 --repeats 8
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine
from sweep.params import normalise_space

SAMPLERS = ("random", "tpe", "tpe10", "gp")  # tpe10: TPE with Optuna's 10 random starts
SPACE = {"gamma": {"distribution": "log_uniform_values", "min": 3e-4, "max": 3e-2},
         "lr_quant": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.1},
         "init_bits": {"distribution": "uniform", "min": 5, "max": 8},
         "min_bits": {"values": [2, 3, 4]}}
CPU_TRIAL_S = 650.0  # median train_time_s of docs/cpu-mb3's eight trials (2-core VM)


def problem(x: dict, mixed: bool) -> tuple[float, float]:
    """ZDT1 on the space's four fields mapped to [0, 1]; ``mixed``: min_bits moves the
    front (3 best, 4 worse, 2 worst). Returns (accuracy-like, size-like): max, min."""
    u = [math.log(x["gamma"] / 3e-4) / math.log(100), math.log(x["lr_quant"] / 0.01) /
         math.log(10), (x["init_bits"] - 5) / 3]
    f1 = u[0]
    g = 1 + 9 * (abs(u[1] - 0.3) + abs(u[2] - 0.7)) / 2
    if mixed:
        g += {3.0: 0.0, 4.0: 0.5, 2.0: 1.5}[float(x["min_bits"])]
    f2 = g * (1 - math.sqrt(f1 / g))
    return -f2, f1  # maximise -f2 (accuracy), minimise f1 (size)


CORNER = -2.0  # the hypervolume's worst accuracy-like value (ZDT1's f2 = 2)
BEST_HV = 1 - CORNER - 1 / 3  # the true front's (f2 = 1 - sqrt(f1)): the integral to 1


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated in (minimise size, maximise accuracy) up to the corner (1, CORNER),
    as a fraction of the true front's."""
    front = sorted((s, a) for a, s in points if s <= 1 and a >= CORNER)
    area = 0.0
    for i, (s, _) in enumerate(front):
        best = max(a for _, a in front[:i + 1])
        right = front[i + 1][0] if i + 1 < len(front) else 1.0
        area += (right - s) * (best - CORNER)
    return area / BEST_HV


def run_study(name: str, seed: int, trials: int, mixed: bool, folder: Path) -> tuple[float,
                                                                                      float]:
    """(hypervolume, searcher seconds per point) of one study through StudySearcher."""
    from sweep.study import STARTUP_TRIALS, StudySearcher

    kind, startup = ("tpe", 10) if name == "tpe10" else (name, STARTUP_TRIALS)
    search = StudySearcher([], [None], trials, normalise_space(SPACE), "bits", seed,
                           str(folder), f"b{seed}", sampler=kind, startup=startup)
    values, spent, done = [], 0.0, 0
    while done < trials:
        start = time.perf_counter()
        batch = [search.suggest(f"t{done + k}") for k in range(min(2, trials - done))]
        spent += time.perf_counter() - start
        for k, point in enumerate(batch):
            acc, size = problem({"gamma": point["gamma"], **point["params"]}, mixed)
            values.append((acc, size))
            start = time.perf_counter()
            search.on_trial_complete(f"t{done + k}", {"test_accuracy": acc,
                                                      "bits_fraction": size, "layers": []})
            spent += time.perf_counter() - start
        done += len(batch)
    return hypervolume(values), spent / trials


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=12, help="points per study (default 12)")
    p.add_argument("--repeats", type=int, default=8, help="seeds per sampler (default 8)")
    p.add_argument("--trial-s", type=float, default=CPU_TRIAL_S,
                   help=f"a cpu trial's seconds, for the ratio (default {CPU_TRIAL_S:g})")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    args = p.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = {"benchmark": "searcher", **machine(), "trials": args.trials,
           "repeats": args.repeats, "samplers": {}}
    for mixed in (False, True):
        results = {}
        for name in args.samplers.split(","):
            runs = []
            for seed in range(args.repeats):
                with tempfile.TemporaryDirectory() as folder:
                    runs.append(run_study(name, seed, args.trials, mixed, Path(folder)))
            results[name] = runs
        for name, runs in results.items():
            entry = out["samplers"].setdefault(name, {})
            entry["hv_mixed" if mixed else "hv_zdt1"] = round(
                statistics.median(h for h, _ in runs), 3)
            entry.setdefault("searcher_s_per_point", []).extend(s for _, s in runs)
    for entry in out["samplers"].values():
        cost = statistics.median(entry.pop("searcher_s_per_point"))
        entry["searcher_s_per_point"] = round(cost, 4)
        entry["ratio_to_cpu_trial"] = float(f"{cost / args.trial_s:.2g}")
    out["ratio"] = out["samplers"].get("tpe", {}).get("ratio_to_cpu_trial")
    print(json.dumps(out))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
