"""Command line of ``python -m sweep.run``: flags to a SweepConfig, plus which were given."""

from __future__ import annotations

import argparse
from fractions import Fraction

from sweep.config import (
    EXPORTS,
    FIXED_BITS,
    GAMMA_RANGE,
    GAMMA_RANGES,
    NARROW_FRACTIONS,
    OBJECTIVES,
    REFERENCES,
    SAMPLERS,
    SEARCHES,
    STARTS,
    SweepConfig,
)
from sweep.params import SWEEPABLE
from trainer.cli import OneLineParser
from trainer.config import DATASETS, PRESET_NAMES

PROG = "scnn sweep"

HELP = """\
Sweep the compression factor gamma, and any other training field, of self-compressing
ResNet-9s on a Ray cluster.

Every trial trains one network with loss CE + gamma * Q (Q = size in bits per original
weight); gamma is drawn log-uniformly between --gamma-min and --gamma-max, so the sweep
traces accuracy against size. --space and --param vary other fields of the recipe too, and
--search optuna lets an Optuna study choose the points, aiming at the accuracy-size front.
A float baseline and a floor trial (one channel per layer) run too, for reference;
--references full adds the two obvious alternatives to self-compression, narrower float
networks and networks held at one bit depth, so the plots draw their fronts beside the
sweep's. Without --address the sweep starts a Ray
cluster on this machine and prints its dashboard's address. Results go to
RESULTS_DIR/NAME/ as trials.parquet, epochs.parquet and layers.parquet, rewritten while
the sweep runs; draw them with `python -m analysis.plots`. Every trial's epochs also go to
TensorBoard files there (tensorboard --logdir RESULTS_DIR/NAME), and with --mlflow to
MLflow. A stopped or killed sweep continues with --resume.

examples:
  python -m sweep.run --preset demo --dataset synthetic --num-samples 8    # a first look
  python -m sweep.run --num-samples 64 --data-dir ../shared/data           # a real sweep
  python -m sweep.run --references full --data-dir ../shared/data          # and its rivals
  python -m sweep.run --num-samples 16 --seeds 3 --refine 8 --data-dir ../shared/data
  python -m sweep.run --space space.yaml --search optuna --data-dir ../shared/data
  python -m sweep.run --param 'min_bits=[0, 2, 3, 4]' --num-samples 16 # and the floor
  python -m sweep.run --address 10.0.0.1:6379 --data-dir /shared/cifar     # on a cluster
  python -m sweep.run --num-samples 64 --name big --mlflow                 # and in MLflow
  python -m sweep.run --start baseline --data-dir ../shared/data  # compress a float baseline
  python -m sweep.run --init-from results/baseline --data-dir ../shared/data  # or your own
  python -m sweep.run --resume --name sweep-20250101-120000                # after a kill
  python -m sweep.run --export front --data-dir ../shared/data   # then export its front
"""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sweep.run", description=HELP, error_prefix=PROG,
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      argument_default=argparse.SUPPRESS)  # only given flags reach the config
    d = SweepConfig()
    search = p.add_argument_group("what to sweep")
    search.add_argument("--num-samples", type=int, metavar="N",
                        help=f"gamma values to try (default {d.num_samples})")

    def preset_default(end: int) -> str:  # e.g. "0.0003 for cpu, 0.003 for demo, else 0.0001"
        named = [f"{r[end]:g} for {name}" for name, r in GAMMA_RANGES.items()]
        return f"default: the preset's, {', '.join(named)}, else {GAMMA_RANGE[end]:g}"

    search.add_argument("--gamma-min", type=float, metavar="G",
                        help=f"smallest gamma, about the float accuracy ({preset_default(0)})")
    search.add_argument("--gamma-max", type=float, metavar="G",
                        help=f"largest gamma, heavy compression ({preset_default(1)})")
    search.add_argument("--seed", type=int, help="the same seed draws the same gammas and "
                        f"trains with the same initial weights (default {d.seed})")
    search.add_argument("--seeds", type=int, metavar="N",
                        help="train every gamma and reference trial with N training seeds "
                        "(--seed, --seed+1, ...: weight init, data order, augmentation); the "
                        "plots draw each gamma's mean and its seeds' min-max "
                        f"(default {d.seeds})")
    search.add_argument("--refine", type=int, metavar="K",
                        help="after the --num-samples gammas have ended, choose K more, one at "
                        "a time, each at the geometric mean of the gammas of the two "
                        "neighbouring front points (per-gamma means, bits against accuracy) "
                        "with the widest gap, measured as the distance in (log10 size "
                        "fraction, accuracy fraction) (default 0)")
    search.add_argument("--space", metavar="FILE",
                        help="a YAML (or JSON) file of the TrainConfig fields to vary, W&B "
                        "style: 'parameters: {min_bits: {values: [0, 3]}, lr_quant: "
                        "{distribution: log_uniform_values, min: 0.01, max: 0.2}}'; "
                        "distributions log_uniform_values, uniform, int_uniform, or values "
                        "(a choice) or value (fixed); gamma is always varied (--gamma-min.."
                        "--gamma-max) unless the space sets it. Sweepable: "
                        f"{', '.join(SWEEPABLE)}")
    search.add_argument("--param", action="append", metavar="NAME=SPEC",
                        help="one more field to vary, SPEC as in --space in YAML flow form, "
                        "e.g. --param 'min_bits=[0, 3]' or --param 'init_bits={distribution: "
                        "uniform, min: 4, max: 8}'; repeatable, over --space")
    search.add_argument("--search", metavar="{" + ",".join(SEARCHES) + "}",
                        help="random: points drawn at random, a function of --seed; optuna: a "
                        "two-objective Optuna study (multivariate TPE with the constant liar, "
                        "seeded by --seed) through Ray Tune's OptunaSearch, maximising "
                        "accuracy and minimising --objective; it lives in NAME/optuna.db "
                        f"(optuna-dashboard reads it) (default {d.search})")
    search.add_argument("--objective", metavar="{" + ",".join(OBJECTIVES) + "}",
                        help="the size --search optuna minimises: bits (storage), weights "
                        f"(weights kept) or macs (compute) (default {d.objective})")
    search.add_argument("--sampler", metavar="{" + ",".join(SAMPLERS) + "}",
                        help="--search optuna's sampler: tpe (multivariate TPE with the "
                        "constant liar), gp (Optuna's Gaussian process, log-EHVI; about 1.5 s "
                        "a point) or random (default tpe; benchmarks.searcher compares them)")
    search.add_argument("--startup-trials", type=int, metavar="N",
                        help="--search optuna: points drawn at random before the sampler "
                        f"models the others (default {d.startup_trials})")
    refs = search.add_mutually_exclusive_group()
    refs.add_argument("--references", metavar="{" + ",".join(REFERENCES) + "}",
                      help="reference trials, trained at gamma 0 with the same recipe. "
                      "default: a float baseline and a floor trial; full: those, float "
                      f"networks at {', '.join(str(Fraction(f)) for f in NARROW_FRACTIONS)} "
                      "of the trials' width (sized against it) and networks held at "
                      f"{', '.join(map(str, FIXED_BITS))} bits; none: no reference trials "
                      f"(default: {d.references})")
    refs.add_argument("--no-references", dest="references", action="store_const",
                      const="none", help="the same as --references none")
    start = search.add_mutually_exclusive_group()
    start.add_argument("--start", metavar="{" + ",".join(STARTS) + "}",
                       help="where the compress and fixed-bits trials start. scratch: random "
                       "weights, the paper's method (training gets cheaper as it compresses); "
                       "baseline: the sweep's float-baseline trial (one per seed) trains first "
                       "and every such trial compresses its final network, in the preset's "
                       "recipe for a trained start (cpu: 3 epochs); they wait for it and "
                       f"start the moment it ends (default {d.start}; docs/sweep.md)")
    start.add_argument("--init-from", metavar="PATH",
                       help="start every compress and fixed-bits trial from your trained float "
                       "network instead: a --float-baseline run's model.pt (or its folder), or "
                       "a PyTorch state dict of the same ResNet-9; no baseline is trained, the "
                       "float-baseline row measures your network")
    train = p.add_argument_group("each trial (as in python -m trainer.train)")
    train.add_argument("--preset", metavar="{" + ",".join(PRESET_NAMES) + "}",
                       help="paper (GPU), cpu (laptop), smoke (seconds); auto = paper when "
                       "the cluster has GPUs, else cpu (default auto)")
    train.add_argument("--epochs", type=int, help="epochs per trial (default: the preset's)")
    train.add_argument("--width", type=float,
                       help="channel multiplier, 1.0 = 64-128-256-512 (default: the preset's)")
    train.add_argument("--size-term", choices=("bits", "bops"),
                       help="what Q counts: bits of the weights (storage), or bops: each "
                       "layer's bits times its output's spatial size (compute), so gamma buys "
                       "time (default bits)")
    train.add_argument("--min-bits", type=float,
                       help="a bit depth that falls below this drops to 0 at once: live "
                       "channels keep at least this many bits (default: the trainer's)")
    train.add_argument("--dataset", metavar="{" + ",".join(DATASETS) + "}",
                       help="cifar10, or synthetic: a small generated set (default cifar10)")
    train.add_argument("--data-dir", help="folder holding cifar-10-batches-py/, on every node; "
                       "default: download once per machine into ~/.cache/scnn")
    run = p.add_argument_group("where and how it runs")
    run.add_argument("--address", help="attach to a running cluster (`ray start --head` "
                     "prints it; default $RAY_ADDRESS, else start a local cluster)")
    run.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                     help="start the local cluster without Ray's dashboard (about 3 "
                     "CPU-seconds and a second less for a short sweep); the sweep's progress "
                     "still prints here")
    run.add_argument("--gpus-per-trial", type=float, metavar="G",
                     help="GPUs per trial; 0.25 packs four trials on a GPU (default: 0.25 "
                     "when the cluster has GPUs, else 0)")
    run.add_argument("--cpus-per-trial", type=float, metavar="C",
                     help="CPUs (torch threads) per trial (default: 1 on CPUs; on GPUs the "
                     "CPUs shared out among the GPU trials, at most 4)")
    run.add_argument("--max-concurrent", type=int, metavar="N",
                     help="trials running at once (default: as many as fit)")
    run.add_argument("--max-failures", type=int, metavar="N", help="retries of a trial that "
                     f"fails, from its last checkpoint (default {d.max_failures})")
    out = p.add_argument_group("results")
    out.add_argument("--export", metavar="{" + ",".join(EXPORTS) + "}",
                     help="when the sweep has finished, export (python -m trainer.export) "
                     "every trial on its Pareto front into NAME/exports/<trial_id>/: bit-packed "
                     "weights, ONNX, export.json with the re-measured accuracy and images/s "
                     f"(default: {d.export}; kept by --resume)")
    out.add_argument("--results-dir", metavar="DIR",
                     help=f"parent folder of the sweep folders (default {d.results_dir}/)")
    out.add_argument("--name", help="sweep folder name (default sweep-<date>-<time>)")
    out.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                     help="also log every trial as an MLflow run (params, metrics per epoch, "
                     "its Parquet rows), in an experiment named after the sweep; without URI "
                     "in RESULTS_DIR/NAME/mlflow.db (mlflow ui --backend-store-uri "
                     "sqlite:///RESULTS_DIR/NAME/mlflow.db)")
    out.add_argument("--resume", action="store_true", help="continue the sweep --name (default:"
                     " the newest in --results-dir) after a stop or kill, with its settings")
    return p


def parse(argv: list[str] | None = None) -> tuple[SweepConfig, frozenset[str]]:
    """The SweepConfig of the command line, and the names of the fields it set.

    Raises ConfigError for a --space or --param that cannot be read (sweep.params)."""
    given = vars(parser().parse_args(argv))
    if "space" in given or "param" in given:
        given["space"] = read_space(given.get("space"), given.pop("param", []))
    return SweepConfig(**given), frozenset(given)


def read_space(path: str | None, params: list[str]) -> dict:
    """The space of --space FILE and the --param NAME=SPEC over it, normalised."""
    from sweep.params import load_space_file, normalise_space, parse_param

    parameters = load_space_file(path) if path is not None else {}
    parameters.update(parse_param(text) for text in params)
    return normalise_space(parameters)
