"""The Ray Tune trainable: one trial is one ``trainer.train()`` run, reported per epoch.

Every epoch goes to Tune with a checkpoint: the trainer's full state (weights with their
live-channel layout, optimizer and RNG state) and a small ``meta.json`` naming the trial and
the epoch. A trial that starts again (a retry, a resumed sweep, or a trial Tune re-creates
because its last snapshot predates it) continues from the latest checkpoint of the same
trial: Tune's own, or a newer one on disk that Tune's snapshot forgot. Once training is
complete the trial reports one summary, with the epoch history and the per-layer rows that
the driver writes to Parquet; a trial found already complete only reports that summary.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sweep.checkpoints import META_FILE, STATE_FILE, baseline_file
from sweep.search import is_baseline
from sweep.space import train_config, trial_key

# Ray's live table shows the first four scalar metrics of a report, so these come first
# (its `iter` column is the epoch; gamma is not a Tune domain, the searcher sets it).
KEY_METRICS = ("gamma", "test_accuracy", "bits_fraction", "weights_kept_fraction")
FAIL_ENV = "SCNN_TEST_FAIL_GAMMA_ABOVE"  # test only: trials with a larger γ raise at start


def run_trial(config: dict) -> None:
    """Tune function trainable: train one network, resuming from its latest checkpoint."""
    import torch
    from ray import tune

    from trainer.train import train

    # Ray logs a line per checkpoint and trial; the trial folders list them anyway.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    quiet_stop()
    threads = assigned_cpus()
    torch.set_num_threads(threads)
    device = claim_device()
    fail_if_asked(config["gamma"])
    key = trial_key(config)
    resume = load_latest(checkpoint_dirs(), key)
    folder = Path(tune.get_context().get_storage().experiment_fs_path)
    train_cfg = with_baseline_file(train_config(config, device, threads), folder)
    keep = baseline_file(folder, train_cfg.seed) if is_baseline(config) else None

    def on_epoch(metrics: dict, state) -> None:
        if keep is not None and metrics["epoch"] == state.config.epochs:
            keep_baseline(state, keep)  # before the checkpoint that ends the trial
        report_epoch(metrics, state, key)

    result = train(train_cfg, on_epoch=on_epoch, resume=resume, verbose=False)
    tune.report(summary_report(result))


def with_baseline_file(train_cfg, folder: Path):
    """A trial that starts from the sweep's own float baseline (``init_from`` BASELINE) starts
    from that baseline's file for its seed; ConfigError, saying why, when it has none."""
    from sweep.config import BASELINE
    from trainer.config import ConfigError

    if train_cfg.init_from != BASELINE:
        return train_cfg
    path = baseline_file(folder, train_cfg.seed)
    if not path.is_file():
        raise ConfigError(f"this trial starts from the sweep's float baseline of seed "
                          f"{train_cfg.seed}, which ended without a network ({path}): see "
                          "its error in trials.parquet")
    return train_cfg.replace(init_from=str(path))


def keep_baseline(state, path: Path) -> None:
    """Write the float baseline's final network where --start baseline trials find it, whole
    or not at all (a trial waiting for it starts the moment the file appears)."""
    from trainer.network import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_model(tmp, state)
    tmp.replace(path)


def quiet_stop() -> None:
    """A stopped sweep (Ctrl-C, SIGTERM) ends its trials' workers with SIGTERM, whose Ray
    handler raises SystemExit wherever the worker is. Inside a weakref callback Python can
    only print that ("Exception ignored in ... SystemExit: 1", with a traceback), and Ray
    forwards it to the sweep's terminal, as if something had failed. Drop exactly that."""
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            default(unraisable)

    sys.unraisablehook = hook


def assigned_cpus() -> int:
    """The CPUs Ray gave this trial, as a torch thread count (at least 1)."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def claim_device() -> str:
    """``cuda`` when Ray assigned this trial a GPU (share), else ``cpu``.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU, but trials without a GPU may still
    see every GPU, so the device comes from Ray's assignment, not torch.cuda.is_available().
    A fractional share is only logical in Ray: cap this process's memory to it.
    """
    import ray
    import torch

    if not ray.get_gpu_ids():
        return "cpu"
    share = ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0)
    if share < 1:
        torch.cuda.set_per_process_memory_fraction(share, 0)
    return "cuda"


def fail_if_asked(gamma: float) -> None:
    """Test only: a trial whose γ is above the environment's ``FAIL_ENV`` raises, so the
    tests can watch retries and errors (the sweep's environment reaches the workers of the
    cluster it starts)."""
    limit = os.environ.get(FAIL_ENV)
    if limit is not None and float(gamma) > float(limit):
        raise RuntimeError(f"test failure: gamma {gamma:.4g} is above {FAIL_ENV}={limit}")


def report_epoch(metrics: dict, state, key: dict) -> None:
    """Report one epoch's metrics to Tune with a checkpoint of the whole training state."""
    import torch
    from ray import tune

    values = {**metrics, "gamma": key["gamma"], "kind": key["kind"]}
    report = {**{k: values[k] for k in KEY_METRICS}, **values}
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state.state_dict(), os.path.join(folder, STATE_FILE))
        meta = {"epoch": metrics["epoch"], "trial": key}
        Path(folder, META_FILE).write_text(json.dumps(meta))
        # report() copies the folder into the trial's storage before it returns.
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def summary_report(result: dict) -> dict:
    """The trainer's trial-level result, key metrics first; ``layers`` marks it as the last."""
    values = {**result["history"][-1], **result}  # gamma and kind are the trial's own
    return {**{k: values[k] for k in KEY_METRICS}, **result}


def checkpoint_dirs() -> list[Path]:
    """Tune's latest checkpoint of this trial first, then every checkpoint of the sweep."""
    from ray import tune

    dirs = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        dirs.append(Path(checkpoint.path))
    experiment = Path(tune.get_context().get_storage().experiment_fs_path)
    return dirs + sorted(experiment.glob("*/checkpoint_*"))


def latest(dirs: Iterable[Path], key: dict) -> list[tuple[int, Path]]:
    """``(epoch, dir)`` of the checkpoints of the trial ``key``, latest first (ties: first)."""
    found = []
    for order, folder in enumerate(dirs):
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, being written, or deleted by Tune's num_to_keep meanwhile
        if meta.get("trial") == key:
            found.append((-int(meta["epoch"]), order, folder))
    return [(-neg_epoch, folder) for neg_epoch, _, folder in sorted(found)]


def load_latest(dirs: Iterable[Path], key: dict) -> dict | None:
    """The latest readable checkpoint of the trial ``key`` as the trainer's state dict.

    Read with ``weights_only=True``: a checkpoint holds only dicts, lists, numbers, strings
    and tensors (``TrainState.state_dict``), so loading one never runs code from the file; a
    file that holds anything else is skipped like a damaged one.
    """
    import torch

    for _, folder in latest(dirs, key):
        try:
            return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception:  # missing, cut short by a kill while Tune copied it, or not ours
            continue  # Tune deletes the one before only once this one is complete
    return None
