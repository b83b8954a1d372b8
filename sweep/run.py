"""Sweep gamma on Ray Tune: ``python -m sweep.run --num-samples 64``.

Checks the command line before any Ray process starts, connects to a cluster, runs (or
resumes) the Tune experiment with the Parquet callback, and ends with the Pareto-optimal
trials and the paths of the results. Exit status: 0 when the sweep finished (failed trials
included, recorded), 1 when nothing could run or an export (``--export front``) failed, 2
for bad input or a folder another driver holds (sweep.lock), 130 when it was stopped
(Ctrl-C or SIGTERM) and can be resumed. With ``--export front`` a finished sweep exports
its Pareto front in this process (``trainer.export.export_front``) into
``exports/<trial_id>/`` of its folder.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from sweep import config as sweep_config
from sweep.cli import PROG, parse
from sweep.cluster import (
    connect,
    dashboard_message,
    first_line,
    held_back_ray_logs,
    trial_resources,
)
from sweep.config import (
    EXPORTS_DIR,
    SweepConfig,
    base_train_config,
    prepare,
    reference_trials,
    with_gamma_range,
)
from sweep.lock import FolderLock
from trainer.cifar10 import DataError
from trainer.cli import fail
from trainer.config import ConfigError, TrainConfig, ramp_words, ration_words, resolve
from trainer.results import LAYERS_FILE, TRIALS_FILE

STOPPED = 130  # exit status of a sweep stopped by a signal: resume it
TUNE_ENV = {
    # Tune's loggers are passed explicitly: JSON and CSV (the ResultGrid needs them) and
    # TensorBoard narrowed to the sweep's epochs and hyper-parameters (sweep.loggers).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Keeping one checkpoint per trial makes Tune snapshot its state after every report,
    # which is what a resume wants; don't warn about it.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def main(argv: list[str] | None = None) -> None:
    try:
        config, given = parse(argv)
        config = prepare(config, given)
    except (ConfigError, DataError) as err:
        fail(str(err), prog=PROG)
    raise SystemExit(run(config))


def run(c: SweepConfig) -> int:
    """Run the sweep ``c`` (already prepared) to its end; return the exit status.

    The driver holds its sweep folder's lock (sweep.lock) until it exits: a folder that
    exists (a resume) from before Ray starts, a new one from before anything is written in
    it; a second driver on the folder gets one line and exit 2."""
    lock = FolderLock(c.folder)
    try:
        if c.folder.is_dir():
            try:
                lock.acquire()
            except ConfigError as err:
                fail(str(err), prog=PROG)
        return drive(c, lock)
    finally:
        lock.release()


def drive(c: SweepConfig, lock: FolderLock) -> int:
    """Connect, settle, and run the Tuner of ``c``, taking ``lock`` before the folder is
    written; the exit status."""
    import ray

    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    # Trials not started yet have no results to fetch when a stopped sweep ends.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    with held_back_ray_logs():  # Ray's start-up lines wait for our checks, dropped on a failure
        try:
            cluster = connect(c.address, c.dashboard)
        except ConfigError as err:
            fail(str(err), prog=PROG)
        except Exception as err:  # Ray could not start here: nothing can run
            print(f"{PROG}: error: could not start Ray ({first_line(err)})", file=sys.stderr)
            return 1
        try:
            c, train = settle(c)
            lock.acquire()  # before the first file of the sweep is written
            train = keep_recipe(c, train)
        except ConfigError as err:
            ray.shutdown()
            fail(str(err), prog=PROG)
    try:
        print(dashboard_message(cluster), flush=True)
        print(watch_message(c), flush=True)
        sweep_config.save(c)
        tuner = make_tuner(c, train)
        forward_sigterm()
        tuner.fit()
    except ConfigError as err:
        fail(str(err), prog=PROG)
    except KeyboardInterrupt:  # before Tune took over Ctrl-C
        return stopped(c)
    finally:
        ray.shutdown()
    return finish(c)


def settle(c: SweepConfig) -> tuple[SweepConfig, TrainConfig]:
    """Fix what depends on the cluster: resources per trial and the preset's values."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus, gpus = trial_resources(c, ray.cluster_resources(), nodes)
    if c.preset == "auto":
        preset = resolve(base_train_config(c), has_gpu=gpus > 0).preset
        print(f"{PROG}: --preset auto chose {preset!r} "
              f"({'trials get GPUs' if gpus else 'no GPU per trial'})")
    c, train = settled(c, cpus, gpus)
    print(f"{PROG}: {describe_sweep(c, train)}", flush=True)
    return c, train


def settled(c: SweepConfig, cpus: float, gpus: float) -> tuple[SweepConfig, TrainConfig]:
    """``c`` with what a trial of ``cpus`` and ``gpus`` makes of it filled in: the preset
    (``auto`` chosen), its epochs, width and γ range, the trained start's recipe."""
    train = resolve(base_train_config(c), has_gpu=gpus > 0)
    c = sweep_config.with_start_recipe(c, train.preset)  # before the preset fills epochs
    c = with_gamma_range(c.replace(cpus_per_trial=cpus, gpus_per_trial=gpus,
                                   preset=train.preset, epochs=train.epochs,
                                   width=train.width), train.preset)
    sweep_config.check_space(c)  # again, for the preset the cluster chose
    return c, train


def describe_sweep(c: SweepConfig, train: TrainConfig) -> str:
    """What the settled sweep trains, in one line (its γ ramp and ration of deaths unless
    the space sets them)."""
    space = c.space or {}
    ramp = ramp_words(train) if "gamma_ramp" not in space else ""
    ramp = f", gamma {ramp}" if ramp else ""
    ration = ration_words(train) if "ration" not in space and "fade" not in space else ""
    ramp += f", {ration}" if ration else ""
    return (f"{describe_points(c)}{describe_references(c.references)}{describe_search(c)}; "
            f"preset {c.preset}, {c.epochs} epochs{ramp}{describe_start(c)}; "
            f"{c.cpus_per_trial:g} CPUs and {c.gpus_per_trial:g} GPUs per trial; "
            f"results in {c.folder}")


def describe_start(c: SweepConfig) -> str:
    """E.g. ``; compress and fixed-bits trials start from the float baseline (trained first,
    per seed), 3 epochs each``; "" from scratch."""
    start, _ = sweep_config.start_fields(c)
    if start is None:
        return ""
    source = ("the float baseline (trained first, per seed)" if c.start == "baseline"
              else f"{c.init_from} (the float-baseline row measures it)")
    recipe = ", ".join(f"{v} epoch{'s' * (v != 1)} each" if k == "epochs" else f"{k} {v}"
                       for k, v in start.items() if k != "init_from")
    return f"; compress and fixed-bits trials start from {source}" + (f", {recipe}" if recipe
                                                                      else "")


def watch_message(c: SweepConfig) -> str:
    """Where to watch the trials besides the dashboard (Tune's own TensorBoard hint names its
    staging copy under /tmp, which a resumed or finished sweep no longer has)."""
    lines = [f"  TensorBoard: tensorboard --logdir {c.folder.resolve()}"]
    if c.mlflow:
        lines.append(f"  MLflow: mlflow ui --backend-store-uri {c.mlflow}")
    if c.search == "optuna":
        from sweep.study import storage_url

        lines.append(f"  Optuna: optuna-dashboard {storage_url(c.folder)}")
    return "\n".join(lines)


def describe_references(references: str) -> str:
    """E.g. `` + 11 reference trials (float-baseline, floor, 4 narrow-float, 5 fixed-bits)``."""
    kinds = [t["kind"] for t in reference_trials(references, width=1.0)]
    if not kinds:
        return ""
    counts = {kind: kinds.count(kind) for kind in kinds}  # in the order they run
    said = ", ".join(kind if n == 1 else f"{n} {kind}" for kind, n in counts.items())
    return f" + {len(kinds)} reference trial{'s' if len(kinds) > 1 else ''} ({said})"


def describe_points(c: SweepConfig) -> str:
    """E.g. ``12 points of gamma log-uniform [0.0003, 0.03], min_bits in {0, 3} (optuna,
    accuracy against bits, seed 0)``; a γ-only random sweep as it always was."""
    from sweep.params import describe

    if c.space is None and c.search == "random":
        return f"{c.num_samples} gammas in [{c.gamma_min:g}, {c.gamma_max:g}] (seed {c.seed})"
    how = (f"optuna study, accuracy against {c.objective}, {c.sampler} after "
           f"{c.startup_trials} random points" if c.search == "optuna" else "random")
    return f"{c.num_samples} points of {describe(c.full_space)} ({how}, seed {c.seed})"


def describe_search(c: SweepConfig) -> str:
    """E.g. ``, then 4 refine gammas; each trained with 3 seeds (0-2): 30 trials``."""
    refine = f", then {c.refine} refine gamma{'s' if c.refine > 1 else ''}" if c.refine else ""
    seeds = (f"; each trained with {c.seeds} seeds ({c.seed}-{c.seed + c.seeds - 1}): "
             f"{c.num_trials} trials" if c.seeds > 1 else "")
    return refine + seeds


def keep_recipe(c: SweepConfig, train: TrainConfig) -> TrainConfig:
    """A new sweep records its recipe; a resumed one trains with the recipe it recorded (a
    field added to TrainConfig since takes ``train``'s value, but for those whose value
    would change what it trains: ADDED_SINCE_RECIPE, and the precision, precision_before)."""
    gpu = (c.gpus_per_trial or 0) > 0
    recorded = sweep_config.load_recipe(c.folder, gpu) if c.resume else None
    if c.resume and recorded is None:  # older than the record: it began with the preset of
        recorded = {**sweep_config.BEFORE_RECIPE,  # its day, today's but for these fields
                    "precision": sweep_config.precision_before(gpu)}
        sweep_config.save_recipe(c.folder, train.replace(**recorded))
    if recorded is None:  # a new sweep
        sweep_config.save_recipe(c.folder, train)
        return train
    changed = [k for k, v in recorded.items() if getattr(train, k) != v]
    if changed:
        print(f"{PROG}: resuming with the recipe the sweep began with; this code's "
              f"preset now differs in {', '.join(changed)}", flush=True)
    return train.replace(**recorded)


def make_tuner(c: SweepConfig, train: TrainConfig):
    """A new Tuner, or the stopped one restored when --resume finds Tune's state."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from sweep.loggers import MLflowCallback, TensorBoardCallback
    from sweep.params import swept
    from sweep.space import param_space, searcher, trial_dirname
    from sweep.store import ParquetCallback
    from sweep.trainable import run_trial

    trainable = tune.with_resources(run_trial, {"cpu": c.cpus_per_trial,
                                                "gpu": c.gpus_per_trial})
    space = param_space(c, train)
    # Tune's state exists only after its first snapshot; a sweep killed before that starts
    # over in its folder, and its trials pick up their checkpoints from the disk.
    if c.resume and tune.Tuner.can_restore(str(c.folder)) and any(
            c.folder.glob("experiment_state-*.json")):
        print(f"{PROG}: resuming {c.folder}", flush=True)
        return tune.Tuner.restore(str(c.folder), trainable, resume_errored=True,
                                  param_space=space)
    store = ParquetCallback(str(c.folder), str(c.name), swept(c.space))
    # The store comes first: the MLflow callback attaches a finished trial's Parquet rows.
    callbacks = [store, JsonLoggerCallback(), CSVLoggerCallback(), TensorBoardCallback()]
    if c.mlflow:
        callbacks.append(MLflowCallback(c.mlflow, str(c.name), store))
    return tune.Tuner(
        trainable, param_space=space,
        # reuse_actors: a trial starts in the worker process a finished trial leaves (every
        # trial asks for the same resources), not in a new one that imports torch again;
        # each trial sets its own seed and thread count (trainer.train, run_trial).
        tune_config=tune.TuneConfig(num_samples=c.num_trials, search_alg=searcher(c, train),
                                    trial_dirname_creator=trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(
            name=c.name, storage_path=c.results_dir, callbacks=callbacks, verbose=1,
            failure_config=tune.FailureConfig(max_failures=c.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def forward_sigterm() -> None:
    """SIGTERM stops like Ctrl-C: Tune saves its state (Ray's own handler would abort)."""
    def handler(signum, frame):
        sigint = signal.getsignal(signal.SIGINT)
        if callable(sigint):
            sigint(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def stopped(c: SweepConfig) -> int:
    print(f"{PROG}: stopped; its state is saved. Continue it with:\n"
          f"  python -m sweep.run --resume --name {c.name} --results-dir {c.results_dir}",
          file=sys.stderr)
    return STOPPED


def finish(c: SweepConfig) -> int:
    """Print the Pareto table and the result paths; the exit status of the sweep."""
    import pandas as pd

    from analysis.pareto import pareto_table, to_markdown
    from analysis.quality import SEED_COLUMNS, seed_table, several_seeds

    path = c.folder / TRIALS_FILE
    trials = pd.read_parquet(path) if path.exists() else pd.DataFrame({"status": []})
    done = int((trials["status"] == "TERMINATED").sum())
    failed = int((trials["status"] == "ERROR").sum())
    if done + failed < c.num_trials:
        print(f"{PROG}: {done + failed} of {c.num_trials} trials ended.", file=sys.stderr)
        return stopped(c)
    print(f"\n{PROG}: {done} trials finished, {failed} failed "
          f"(their errors are in {TRIALS_FILE}, column error).")
    if done and several_seeds(trials):
        print("Pareto-optimal γs (mean size against mean accuracy over their seeds):\n")
        print(to_markdown(seed_table(trials), SEED_COLUMNS))
    elif done:
        print("Pareto-optimal trials (size against accuracy):\n")
        print(to_markdown(pareto_table(trials)))
    if done:
        print("\n" + front_summary(trials))
    print(f"results: {c.folder}/{{{TRIALS_FILE}, epochs.parquet, {LAYERS_FILE}}}\n"
          f"plots:   python -m analysis.plots --results {c.folder}")
    if c.export == "front" and done and not export_front(c):
        return 1
    return 0 if done else 1


def export_front(c: SweepConfig) -> bool:
    """Export the finished sweep's Pareto front into exports/; False when any export failed.

    Accuracy is re-measured on the sweep's own dataset and data folder.
    """
    from sweep.checkpoints import export_front as export
    from trainer.cifar10 import DataError
    from trainer.export.sources import ExportError

    out = c.folder / EXPORTS_DIR
    print(f"\n{PROG}: exporting the Pareto front into {out}/", flush=True)
    try:
        failed = export(c.folder, out, c.data_dir, prog=PROG)
    except (ExportError, ConfigError, DataError) as err:
        print(f"{PROG}: error: export: {err}", file=sys.stderr)
        return False
    return not failed


def front_summary(trials) -> str:
    """The widest gap and the hypervolume of the front, before and after --refine."""
    from analysis.quality import front_metrics, metrics_lines

    return "\n".join(metrics_lines(front_metrics(trials))) + "\n"


if __name__ == "__main__":
    main()
