"""Sweep configuration: one frozen dataclass, its validation, and the TrainConfig it implies.

``SweepConfig`` holds what defines a sweep (saved as ``sweep.json`` in the sweep folder, so
``--resume`` continues with the same settings) and how this invocation runs it (cluster
address, resume). ``prepare()`` validates a config and makes its paths absolute before any
Ray process starts, so bad input costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from sweep.lock import check_free
from trainer.config import (
    START_RECIPES,
    ConfigError,
    TrainConfig,
    check_writable_folder,
    resolve,
)

BASELINE = "baseline"  # a trial's init_from when it starts from the sweep's own float baseline
#   (sweep.checkpoints.baseline_file), resolved to the file by the trial
SWEEP_FILE = "sweep.json"  # the sweep's settings, in its results folder
RECIPE_FILE = "recipe.json"  # the TrainConfig its trials start from, as resolved when it began
# TrainConfig fields added since recipe.json began, whose preset value differs from what
# training did before them: a recorded recipe without one trained with this value (cpu's
# ration is 0.5 since 2026-12-03; no limit before).
ADDED_SINCE_RECIPE = {"ration": 1.0}
# What a sweep begun before recipe.json existed trained with, where a preset has changed
# since: its resume trains with these instead of today's preset (cpu's gamma_ramp was 0).
BEFORE_RECIPE = {"gamma_ramp": 0.0, **ADDED_SINCE_RECIPE}


def precision_before(gpu: bool) -> str:
    """What a trial trained in before TrainConfig.precision existed (2026-12): bf16 autocast
    on a GPU, fp32 on every CPU. A recipe.json or a trial's saved config without the field
    resumes in this, named as fp32 or bf16 rather than as "auto": auto's CPU rule is to change
    once bf16's speed is measured on a CPU with bf16 units (docs/train.md, "Precision"), and
    a resumed sweep trains in what it began in."""
    return "bf16" if gpu else "fp32"
MLFLOW_DB = "mlflow.db"  # the default MLflow store of --mlflow without a URI, in the sweep folder
# Fields that say how this invocation runs, not what the sweep is: never saved, free on resume.
RUNTIME_FIELDS = ("address", "dashboard", "results_dir", "name", "resume")
# Saved fields that --resume may change (given on its command line, the new value is saved).
FREE_ON_RESUME = ("export",)
# Fields a sweep fills from its preset when it settles (sweep.run.settle), each with the field
# of the space that sets the same thing. Where the space sets it, the filled value is not the
# sweep's (every trial takes the space's), the user cannot have given it (check_combinations),
# so it is neither saved nor, from an older sweep.json, taken for the user's on --resume.
FILLED_BY_PRESET = {"gamma_min": "gamma", "gamma_max": "gamma", "epochs": "epochs",
                    "width": "width"}
# The default gamma range is the preset's: a longer run compresses more at the same gamma.
# cpu, measured with --min-bits 3 (the default since the sweep cpu-mb3) on the CIFAR-10 copy
# (5 epochs, seed 0, float 81.05 %; docs/results.md): 0.001 gives 80.8 % at 14 % of the float bits
# and 93 % of the weights, 0.0056 80.0 % at 5.8 % and 42 %, 0.02 about 2 % of the weights;
# hence 3e-4 (near the float accuracy) to 0.03 (about 1.5 % of the bits). With γ ramped over
# the first half (the cpu preset's gamma_ramp 0.5 since the sweep cpu-ramp) 0.03 keeps 76 %
# at about 2 % of the bits and 0.1 66 % at 0.5 %, where without the ramp it fell to 29 % at
# 0.08 % (two seeds each); past 0.1 it still fell off a cliff (45 % at 0.15, chance at 0.2,
# seed 0). With a conv's deaths rationed to half its channels per epoch (the cpu preset's
# ration 0.5 since the sweep cpu-ration) it falls gradually instead: 72 % at 0.1, 67 % at
# 0.2, 62 % at 0.3 (0.23 % of the bits), 54 % at 0.5, 38 % at 1 (seed 0; docs/ablation.md);
# hence up to 0.3, past which each trial buys less. Without the floor
# (only skip-one-bit) the same points took 10x the gamma (3e-3 to 0.3). paper and smoke are
# unmeasured with the floor: on one GPU the paper preset without it spanned 91-25 % of the
# weights over gamma 0.005-0.05 (docs/results.md), so 10x lower here, with a decade of margin.
# demo (the first look, synthetic data): 3e-3 keeps 100 % at about 15 % of the bits, 0.03
# about 99.6 % at 2.7 %, 0.1 about 38 % at 0.45 %, 0.3 chance at 0.06 % (docs/train.md).
GAMMA_RANGES = {"cpu": (3e-4, 0.3), "demo": (3e-3, 0.3)}
GAMMA_RANGE = (1e-4, 0.1)  # every other preset
# --references: which reference trials run besides the compress trials, all at gamma 0.
# default: float-baseline and floor; full: also the two obvious alternatives to the method,
# narrow-float networks and fixed bit depths (their fronts); none: no reference trials.
REFERENCES = ("default", "full", "none")
REFERENCE_KINDS = ("float-baseline", "floor")  # the reference trials of --references default
NARROW_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 3 / 4)  # narrow-float widths, of the sweep's width
FIXED_BITS = (2, 3, 4, 6, 8)  # bit depths of the fixed-bits trials (at the sweep's width)
# --start: where the compress and fixed-bits trials start. scratch: random weights (the
# paper's method: training itself gets cheaper as it compresses); baseline: the final
# weights of the sweep's float-baseline trial of the same seed, which runs first.
STARTS = ("scratch", "baseline")
# --export: what the sweep exports (python -m trainer.export) once it has finished.
# none: nothing; front: every trial on its Pareto front of bits against accuracy.
EXPORTS = ("none", "front")
EXPORTS_DIR = "exports"  # in the sweep folder: exports/<trial_id>/
SEARCHES = ("random", "optuna")  # --search
SAMPLERS = ("tpe", "gp", "random")  # --sampler of --search optuna (sweep.study.make_sampler)
OBJECTIVES = ("bits", "weights", "macs")  # --objective: the size axis of --search optuna


@dataclass(frozen=True)
class SweepConfig:
    # --- the search ---
    num_samples: int = 64  # compress trials, gamma drawn log-uniformly from [gamma_min, gamma_max]
    gamma_min: float | None = None  # smallest gamma (weight of the size term in CE + gamma * Q)
    gamma_max: float | None = None  # largest gamma (None: the preset's, see gamma_range)
    seed: int = 0  # seeds the gamma sampler and the first training seed (same seed, same γs)
    seeds: int = 1  # training seeds per gamma and reference trial: seed, seed+1, ...
    refine: int = 0  # gammas chosen after the samples, one at a time, in the front's widest gap
    references: str = "default"  # reference trials: default | full | none (see REFERENCES)
    start: str = "scratch"  # where compress and fixed-bits trials start (see STARTS):
    #   scratch: random weights | baseline: the sweep's float-baseline trial, trained first
    init_from: str | None = None  # or a trained float network's file (made absolute): every
    #   such trial starts from it, and the float-baseline reference measures it
    start_recipe: dict | None = None  # filled when the sweep settles (start_fields), saved:
    #   {"trials": fields its compress and fixed-bits points set, "baseline": its
    #   float-baseline point's}; None: from scratch
    space: dict | None = None  # fields varied besides γ's default range, normalised
    #   (sweep.params: field -> {distribution, min, max} | {values} | {value}); None: γ only
    search: str = "random"  # random: seeded draws | optuna: a two-objective study (sweep.study)
    objective: str = "bits"  # --search optuna's size axis: bits | weights | macs
    sampler: str = "tpe"  # --search optuna's sampler: tpe | gp | random (sweep.study)
    startup_trials: int = 10  # --search optuna: random points before the sampler's model
    # --- passed through to every trial's TrainConfig (None: the preset decides) ---
    preset: str = "auto"  # paper | cpu | smoke | auto (paper when the cluster has GPUs, else cpu)
    epochs: int | None = None  # passes over the training set per trial
    width: float | None = None  # channel multiplier on 64-128-256-512
    size_term: str = "bits"  # what Q counts: bits (storage) | bops (bits x uses per image)
    min_bits: float | None = None  # a b falling below this goes to 0 (None: the trainer's)
    dataset: str = "cifar10"  # cifar10 | synthetic (small generated set for tests)
    data_dir: str | None = None  # folder holding cifar-10-batches-py/ (made absolute); None = cache
    export: str = "none"  # once finished: none | front (each front trial into exports/<id>/)
    # --- resources and retries (None: chosen from the cluster, see cluster.trial_resources) ---
    gpus_per_trial: float | None = None  # GPUs per trial; fractions pack trials on one GPU
    cpus_per_trial: float | None = None  # CPUs per trial, also its torch threads
    max_concurrent: int = 0  # trials running at once (0 = as many as the resources allow)
    max_failures: int = 1  # retries of a trial that raised, from its last checkpoint
    # --- where trials are also logged (TensorBoard files are always written) ---
    mlflow: str | None = None  # MLflow tracking URI; "" = sqlite:///<sweep folder>/mlflow.db
    # --- this invocation ---
    address: str | None = None  # Ray cluster to attach to (host:port); None = embedded cluster
    dashboard: bool = True  # the embedded cluster runs Ray's dashboard (--no-dashboard: not)
    results_dir: str = "results"  # parent of the sweep folders (made absolute by prepare)
    name: str | None = None  # sweep folder name; None = sweep-<timestamp>
    resume: bool = False  # continue the sweep ``name`` with its saved settings

    def replace(self, **changes) -> SweepConfig:
        return dataclasses.replace(self, **changes)

    @property
    def folder(self) -> Path:
        """The sweep folder: Ray's experiment state, checkpoints and the Parquet files."""
        return Path(self.results_dir) / str(self.name)

    @property
    def full_space(self) -> dict:
        """The space trials are drawn from: ``space``, with γ log-uniform in
        [gamma_min, gamma_max] unless it sets γ (needs the γ range resolved)."""
        from sweep.params import full_space

        return full_space(self.space, self.gamma_min, self.gamma_max)

    @property
    def num_trials(self) -> int:
        """Trials the finished sweep holds: samples, refine γs and references, per seed."""
        points = self.num_samples + self.refine + len(reference_trials(self.references, 1.0))
        return points * self.seeds


def reference_trials(references: str, width: float) -> list[dict]:
    """The TrainConfig fields each reference trial sets, in the order they run (gamma 0).

    ``width`` is the sweep's: narrow-float trials train at fractions of it and are sized
    against it; fixed-bits trials train at it. The number of trials does not depend on it.
    """
    if references == "none":
        return []
    trials = [{"kind": kind} for kind in REFERENCE_KINDS]
    if references == "full":
        trials += [{"kind": "narrow-float", "width": f * width, "full_width": width}
                   for f in NARROW_FRACTIONS]
        trials += [{"kind": "fixed-bits", "fixed_bits": float(b)} for b in FIXED_BITS]
    return trials


def validate(c: SweepConfig) -> None:
    """Raise ConfigError, saying what to do, on settings no sweep can use."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(c.num_samples >= 1, f"--num-samples must be at least 1, got {c.num_samples}")
    need(c.export in EXPORTS, f"unknown --export {c.export!r}: choose front (export every "
         f"trial on the sweep's Pareto front into {EXPORTS_DIR}/ when it ends) or none")
    need(c.seeds >= 1, f"--seeds must be at least 1 (training seeds per gamma), got {c.seeds}")
    need(c.refine >= 0, f"--refine must be >= 0 (gammas chosen after the samples), "
         f"got {c.refine}")
    need(c.references in REFERENCES, f"unknown --references {c.references!r}: choose default "
         "(float baseline and floor), full (also narrow-float and fixed-bits) or none")
    for flag, value in (("--gamma-min", c.gamma_min), ("--gamma-max", c.gamma_max)):
        need(value is None or (math.isfinite(value) and value > 0),
             f"{flag} must be > 0 (gamma is sampled log-uniformly), got {value}")
    if c.gamma_min is not None and c.gamma_max is not None:
        check_gamma_order(c, "")
    need(c.gpus_per_trial is None or 0 <= c.gpus_per_trial,
         f"--gpus-per-trial must be >= 0, got {c.gpus_per_trial}")
    need(c.cpus_per_trial is None or 0 < c.cpus_per_trial,
         f"--cpus-per-trial must be > 0, got {c.cpus_per_trial}")
    need(c.max_concurrent >= 0, f"--max-concurrent must be >= 0 (0 = no limit), "
         f"got {c.max_concurrent}")
    need(c.max_failures >= 0, f"--max-failures must be >= 0, got {c.max_failures}")
    need(c.name is None or (c.name.strip() and "/" not in c.name and c.name not in (".", "..")),
         f"--name must be a plain folder name, got {c.name!r}")
    need(c.search in SEARCHES, f"unknown --search {c.search!r}: choose random (seeded draws) "
         "or optuna (a study that aims at the accuracy-size front)")
    need(c.objective in OBJECTIVES, f"unknown --objective {c.objective!r}: choose bits, "
         "weights or macs (the size axis --search optuna minimises)")
    need(c.sampler in SAMPLERS, f"unknown --sampler {c.sampler!r}: choose tpe (multivariate "
         "TPE with the constant liar), gp (Gaussian process, log-EHVI) or random")
    need(c.startup_trials >= 0, f"--startup-trials must be >= 0, got {c.startup_trials}")
    need(c.start in STARTS, f"unknown --start {c.start!r}: choose scratch (random weights) or "
         "baseline (the sweep's float baseline, trained first)")
    check_combinations(c)
    resolve(base_train_config(c), has_gpu=False)  # preset, dataset, epochs, width


def check_combinations(c: SweepConfig) -> None:
    """ConfigError for settings that have no meaning together, saying which and why."""
    from sweep.params import swept

    if c.refine and c.search == "optuna":
        raise ConfigError("--refine places γs in the gaps of a γ-only front, and --search "
                          "optuna chooses every point itself: drop --refine")
    if c.refine and swept(c.space) != ["gamma"]:
        raise ConfigError(f"--refine chooses γs alone, but the space also varies "
                          f"{', '.join(n for n in swept(c.space) if n != 'gamma')}: drop "
                          "--refine, or use --search optuna")
    flags = {"epochs": c.epochs, "width": c.width, "min_bits": c.min_bits,
             "size_term": None if c.size_term == "bits" else c.size_term}
    for name, value in flags.items():
        if c.space and name in c.space and value is not None:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{name} is given twice, by {flag} and in the space: keep one")
    if c.init_from and c.start != "scratch":
        raise ConfigError("--init-from starts every trial from your network, --start baseline "
                          "from the sweep's own float baseline: choose one")
    if c.start == "baseline" and c.references == "none":
        raise ConfigError("--start baseline compresses the sweep's float-baseline trial, which "
                          "--no-references leaves out: drop --no-references (or use "
                          "--references default)")
    if c.space and "gamma" in c.space and (c.gamma_min is not None or c.gamma_max is not None):
        raise ConfigError("γ's range is given twice, in the space and by --gamma-min/--gamma-"
                          "max: keep one")


def check_space(c: SweepConfig) -> None:
    """ConfigError when some corner of the sweep's space is a TrainConfig the trainer would
    refuse (needs the γ range resolved)."""
    from sweep.params import check_space as check

    if c.gamma_min is None or c.gamma_max is None:  # --preset auto: as on this machine
        c = with_gamma_range(c, resolve(base_train_config(c), has_gpu=False).preset)
    check(c.full_space, base_train_config(c))


def gamma_range(preset: str) -> tuple[float, float]:
    """The default (gamma_min, gamma_max) of a resolved preset (see GAMMA_RANGES)."""
    return GAMMA_RANGES.get(preset, GAMMA_RANGE)


def check_gamma_order(c: SweepConfig, preset: str) -> None:
    """ConfigError unless gamma_max > gamma_min; ``preset`` names the one a default came from."""
    if c.gamma_max > c.gamma_min:
        return
    lo, hi = gamma_range(preset)
    source = f" (the {preset} preset's range is {lo:g} to {hi:g})" if preset else ""
    raise ConfigError(f"--gamma-max ({c.gamma_max:g}) must be above --gamma-min "
                      f"({c.gamma_min:g}){source}: pass both, e.g. --gamma-min {lo:g} "
                      f"--gamma-max {hi:g}")


def with_gamma_range(c: SweepConfig, preset: str) -> SweepConfig:
    """``c`` with the preset's default for a gamma bound not given; ConfigError if unordered."""
    lo, hi = gamma_range(preset)
    c = c.replace(gamma_min=lo if c.gamma_min is None else c.gamma_min,
                  gamma_max=hi if c.gamma_max is None else c.gamma_max)
    check_gamma_order(c, preset)
    return c


def base_train_config(c: SweepConfig) -> TrainConfig:
    """The TrainConfig every trial starts from; trials set gamma, kind, device and threads."""
    chosen = {"epochs": c.epochs, "width": c.width, "data_dir": c.data_dir,
              "min_bits": c.min_bits}
    return TrainConfig(preset=c.preset, seed=c.seed, dataset=c.dataset, size_term=c.size_term,
                       **{k: v for k, v in chosen.items() if v is not None})


def prepare(c: SweepConfig, given: Collection[str] = ()) -> SweepConfig:
    """Validate, make paths absolute, name the sweep, check the folder and the data.

    For ``resume``, the saved settings of the sweep are loaded; ``given`` names the fields
    set on the command line, which must agree with them (see ``merge_saved``). A folder a
    running driver holds (sweep.lock) is refused first, with or without ``resume``.
    Raises ConfigError or trainer.cifar10.DataError with a message that says what to do.
    """
    c = c.replace(results_dir=str(Path(c.results_dir).expanduser().resolve()))
    check_writable_folder(c.results_dir, "--results-dir")
    if c.data_dir:
        c = c.replace(data_dir=str(Path(c.data_dir).expanduser().resolve()))
    if c.init_from:
        c = c.replace(init_from=str(Path(c.init_from).expanduser().resolve()))
    validate(c)
    if c.resume:
        folder = find_resumable(c)
        check_free(folder)  # a driver runs it: say so, whatever else this command says
        c = merge_saved(with_mlflow_uri(c, folder), folder, given)
        validate(c)
    else:
        c = c.replace(name=c.name or default_name(Path(c.results_dir)))
        check_free(c.folder)
        if (c.folder / SWEEP_FILE).exists():
            raise ConfigError(f"a sweep named {c.name!r} already exists in {c.results_dir}: "
                              "add --resume to continue it, or pick another --name")
        c = with_mlflow_uri(c, c.folder)
    for flag in ("objective", "sampler", "startup_trials"):
        if flag in given and c.search != "optuna":
            name = "--" + flag.replace("_", "-")
            raise ConfigError(f"{name} sets up --search optuna's study; the random search has "
                              f"none: drop {name} or add --search optuna")
    if c.preset != "auto":  # else settled once the cluster says whether trials get GPUs
        c = with_gamma_range(c, c.preset)
    check_space(c)
    check_data(c)
    check_start(c)
    return c


def default_name(results_dir: Path) -> str:
    """sweep-<date>-<time>, with -2, -3, ... when a sweep of that second exists."""
    stamp = time.strftime("sweep-%Y%m%d-%H%M%S")
    return next(name for name in (stamp, *(f"{stamp}-{i}" for i in range(2, 1000)))
                if not (results_dir / name).exists())


def check_start(c: SweepConfig) -> None:
    """ConfigError now, not in every trial, when --init-from's file cannot start this sweep's
    networks (trainer.network.read_start)."""
    if c.init_from:
        from trainer.network import read_start

        train = resolve(base_train_config(c).replace(init_from=c.init_from), has_gpu=False)
        read_start(c.init_from, train)


def start_fields(c: SweepConfig) -> tuple[dict | None, dict | None]:
    """The fields a settled sweep's compress and fixed-bits points, and its float-baseline
    point, set over the shared recipe (``start_recipe``); (None, None) from scratch."""
    recipe = c.start_recipe or {}
    return recipe.get("trials"), recipe.get("baseline")


def with_start_recipe(c: SweepConfig, preset: str) -> SweepConfig:
    """``c`` (as given: fields the preset fills still None) with its ``start_recipe`` for the
    resolved ``preset``: what a compress or fixed-bits point, and the float-baseline point,
    set over the shared recipe when the sweep starts from a trained network:
    ``init_from`` (a path, or ``BASELINE``: the sweep's own float baseline of the trial's
    seed) and the fields of the preset's recipe for a trained start (START_RECIPES; a value
    the sweep was given wins). (None, None) for a sweep from scratch."""
    if c.start == "scratch" and not c.init_from or c.start_recipe is not None:
        return c  # from scratch, or settled before (a resume keeps what it began with)
    source = c.init_from or BASELINE
    recipe = resolve(base_train_config(c).replace(preset=preset, init_from=source),
                     has_gpu=False)
    trials = {"init_from": source,
              **{k: getattr(recipe, k) for k in START_RECIPES.get(recipe.preset, {})}}
    # --init-from: the baseline is the given network, measured (0 epochs), not trained
    baseline = {"init_from": source, "epochs": 0} if c.init_from else None
    return c.replace(start_recipe={"trials": trials, "baseline": baseline})


def with_mlflow_uri(c: SweepConfig, folder: Path) -> SweepConfig:
    """``c`` with ``--mlflow`` given no URI resolved to the SQLite store in ``folder``, and a
    SQLite path made absolute.

    ConfigError when --mlflow is asked for and mlflow is not installed.
    """
    if c.mlflow is None:
        return c
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("--mlflow needs the mlflow package: pip install 'mlflow>=2.10' "
                          "(or pip install -e '.[dev]' in this repository)")
    if not c.mlflow:
        return c.replace(mlflow=f"sqlite:///{folder.resolve() / MLFLOW_DB}")
    if c.mlflow.startswith("sqlite:///"):  # a relative path: from here, not a trial's folder
        return c.replace(mlflow="sqlite:///" + str(Path(c.mlflow[10:]).resolve()))
    return c


def check_data(c: SweepConfig) -> None:
    """Fail now, not in every trial, on data the trainer would reject (trainer.data)."""
    from trainer.cifar10 import check_cifar10

    if c.dataset == "cifar10":
        check_cifar10(c.data_dir)  # no data_dir: download once here; other nodes fill their own


def find_resumable(c: SweepConfig) -> Path:
    """The folder of the sweep to resume: ``--name``, else the newest sweep in results_dir."""
    root = Path(c.results_dir)
    if c.name:
        if not (c.folder / SWEEP_FILE).is_file():
            raise ConfigError(f"no sweep named {c.name!r} in {root} (no {SWEEP_FILE}): check "
                              "--name and --results-dir, or drop --resume to start a new sweep")
        return c.folder
    saved = sorted(root.glob(f"*/{SWEEP_FILE}"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise ConfigError(f"no sweep to resume in {root}: pass --results-dir and --name of "
                          "the sweep, or drop --resume to start a new one")
    return saved[-1].parent


def merge_saved(c: SweepConfig, folder: Path, given: Collection[str]) -> SweepConfig:
    """The saved sweep in ``folder``, with this invocation's runtime fields.

    Settings given on the command line must agree with the saved ones (a resumed sweep
    cannot change its search), so a differing one is an error, never silently ignored.
    """
    saved = load_saved(folder)
    for key, value in saved.items():
        if key == "preset" and c.preset == "auto":
            continue  # settled when the sweep began: the saved preset is what auto chose
        if key in given and key not in FREE_ON_RESUME and getattr(c, key) != value:
            if key == "space":
                raise ConfigError(f"sweep {folder.name!r} was started with another search "
                                  "space; --resume continues it with its own: drop --space "
                                  "and --param")
            flag = "--" + key.replace("_", "-")
            drop = "--references / --no-references" if key == "references" else flag
            started = f"with {flag} {value}" if value is not None else f"without {flag}"
            asked = getattr(c, key)
            asked = f"{flag} {asked}" if asked is not None else f"without {flag}"
            raise ConfigError(f"sweep {folder.name!r} was started {started}, not {asked}; "
                              f"--resume continues it with its own settings: drop {drop}")
    changed = {k: getattr(c, k) for k in FREE_ON_RESUME if k in given}
    return c.replace(**{**saved, **changed}, name=folder.name, results_dir=str(folder.parent))


def load_saved(folder: Path) -> dict:
    """The settings in ``folder``'s sweep.json, in today's terms."""
    saved = json.loads((folder / SWEEP_FILE).read_text())
    saved.pop("fail_gamma_above", None)  # older code: a test hook, now FAIL_ENV (trainable)
    if isinstance(saved.get("references"), bool):  # older code: true = float-baseline + floor
        saved["references"] = "default" if saved["references"] else "none"
    saved.setdefault("mlflow", None)  # older code: no MLflow (its pickled callbacks have none)
    # Older code swept γ alone, at random.
    saved = {"space": None, "search": "random", "objective": "bits", **saved}
    # Studies started before --sampler: TPE after 4 random points.
    saved = {"sampler": "tpe", "startup_trials": 4, **saved}
    # Older code trained one seed and refined nothing: a resume cannot add either; its
    # trials started from random weights.
    saved = {"seeds": 1, "refine": 0, "start": "scratch", "init_from": None,
             "start_recipe": None, **saved}
    return without_filled_by_space(saved)  # older code saved the preset's γ range beside γ


def without_filled_by_space(fields: dict) -> dict:
    """``fields`` (of a SweepConfig) with the values its preset filled in for what its space
    sets (FILLED_BY_PRESET) back to None: not the user's, and no trial uses them."""
    space = fields.get("space") or {}
    return {**fields, **{k: None for k, name in FILLED_BY_PRESET.items() if name in space}}


def save(c: SweepConfig) -> None:
    """Write the sweep-defining fields to ``sweep.json`` in the sweep folder (not the values
    its preset filled in for fields its space sets)."""
    fields = {k: v for k, v in dataclasses.asdict(c).items() if k not in RUNTIME_FIELDS}
    fields = without_filled_by_space(fields)
    write_text_atomic(c.folder / SWEEP_FILE, json.dumps(fields, indent=1) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader, or a kill, finds the old file or the new
    one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_recipe(folder: Path, train: TrainConfig) -> None:
    """Record the resolved TrainConfig every trial of a sweep starts from (``recipe.json``),
    so that a preset changed between a stop and ``--resume`` does not reach its trials."""
    write_text_atomic(folder / RECIPE_FILE, json.dumps(dataclasses.asdict(train), indent=1) + "\n")


def load_recipe(folder: Path, gpu: bool) -> dict | None:
    """The recipe ``folder``'s sweep recorded (fields this code no longer knows dropped,
    fields added since at ``ADDED_SINCE_RECIPE``, a precision it lacks at what its trials
    trained in then: ``precision_before(gpu)``, ``gpu``: whether its trials get GPUs), or
    None for a sweep older than the record. ConfigError if the file cannot be read."""
    path = folder / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path} ({err}): restore it, or delete it to resume "
                          "with this code's preset") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {**ADDED_SINCE_RECIPE, "precision": precision_before(gpu),
            **{k: v for k, v in recorded.items() if k in names}}
