"""Ray's overhead on a sweep: ``python -m benchmarks.sweep_overhead``.

Times a sweep of N smoke trials on synthetic data (``python -m sweep.run`` on an embedded
cluster, 1 CPU per trial, no reference trials) against the same trials, the same gammas,
run one after another without Ray (``trainer.train`` in one process, torch's default
threads). Both are timed as whole commands, interpreter start included. Prints one JSON
object: ``ratio`` = sweep time / sequential time (medians over the repetitions), both
figures and every run, with the machine and versions (``benchmarks.common.emit``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from benchmarks.common import count, emit, parser

SEQUENTIAL = """\
import json, sys
from trainer.config import TrainConfig
from trainer.train import train
epochs, gammas = int(sys.argv[1]), json.loads(sys.argv[2])
for gamma in gammas:
    train(TrainConfig(preset="smoke", dataset="synthetic", epochs=epochs, gamma=gamma),
          verbose=False)
"""


@dataclass(frozen=True)
class BenchConfig:
    trials: int = 4  # compress trials per sweep
    epochs: int = 2  # epochs per trial (smoke preset, synthetic data)
    repeats: int = 3  # runs of each side; the medians are compared
    seed: int = 0  # gamma sampler seed


def gammas(b: BenchConfig) -> list[float]:
    """The gammas the sweep draws, so the sequential side trains exactly the same trials."""
    from sweep.config import SweepConfig, base_train_config, with_gamma_range
    from sweep.space import sampled_trials
    from trainer.config import resolve

    c = with_gamma_range(SweepConfig(num_samples=b.trials, seed=b.seed, references="none",
                                     preset="smoke", dataset="synthetic", epochs=b.epochs),
                         "smoke")
    return [g for _, g in sampled_trials(c, resolve(base_train_config(c), has_gpu=False))]


def timed(command: list[str]) -> float:
    """Wall time of ``command`` in seconds; its output is dropped unless it fails."""
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"benchmark: {' '.join(command[:4])} failed:\n{out.stderr[-3000:]}")
    return elapsed


def sweep_once(b: BenchConfig) -> float:
    with tempfile.TemporaryDirectory(prefix="scnn-bench-") as results:
        return timed([sys.executable, "-m", "sweep.run", "--preset", "smoke", "--dataset",
                      "synthetic", "--epochs", str(b.epochs), "--num-samples", str(b.trials),
                      "--seed", str(b.seed), "--no-references", "--cpus-per-trial", "1",
                      "--results-dir", results, "--name", "bench"])


def sequential_once(b: BenchConfig, values: list[float]) -> float:
    return timed([sys.executable, "-c", SEQUENTIAL, str(b.epochs), json.dumps(values)])


def run(b: BenchConfig) -> dict:
    """Alternate the two sides so that a change in the machine's load hits both."""
    import ray

    values = gammas(b)
    sweeps, sequential = [], []
    for _ in range(b.repeats):
        sweeps.append(sweep_once(b))
        sequential.append(sequential_once(b, values))
    sweep_s, sequential_s = statistics.median(sweeps), statistics.median(sequential)
    return {"ratio": round(sweep_s / sequential_s, 3), "sweep_s": round(sweep_s, 2),
            "sequential_s": round(sequential_s, 2), "sweep_runs_s": [round(t, 2) for t in sweeps],
            "sequential_runs_s": [round(t, 2) for t in sequential], "trials": b.trials,
            "epochs": b.epochs, "repeats": b.repeats, "preset": "smoke", "gammas": values,
            "ray": ray.__version__}


def main(argv: list[str] | None = None) -> None:
    d = BenchConfig()
    p = parser("sweep_overhead", __doc__)
    p.add_argument("--trials", type=count, default=d.trials, help="trials per sweep (%(default)s)")
    p.add_argument("--epochs", type=count, default=d.epochs, help="epochs per trial (%(default)s)")
    p.add_argument("--repeats", type=count, default=d.repeats, help="runs per side (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="gamma seed (%(default)s)")
    args = p.parse_args(argv)
    emit("sweep_overhead", run(BenchConfig(**vars(args))))


if __name__ == "__main__":
    main()
