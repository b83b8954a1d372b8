"""The search space: what a trial's Tune config holds, and the seeded searcher that fills it.

A trial's config is ``{"kind", "gamma", "train"}`` (plus the test-only
``fail_gamma_above``): ``train`` holds the resolved TrainConfig fields shared by every
trial, so a trial rebuilds exactly the config the driver resolved (and ``params.json``
records it). The reference trials are the searcher's first points, so they run first and
exactly once.
"""

from __future__ import annotations

import dataclasses

from sweep.config import REFERENCE_KINDS, SweepConfig
from trainer.config import TrainConfig

# Set per trial, not shared: gamma and kind by the search, device and threads by the trainable.
PER_TRIAL_FIELDS = ("gamma", "kind", "device", "threads")


def param_space(c: SweepConfig, train: TrainConfig) -> dict:
    """Tune's param_space: gamma log-uniform, everything else fixed."""
    from ray import tune

    shared = {k: v for k, v in dataclasses.asdict(train).items() if k not in PER_TRIAL_FIELDS}
    space = {"kind": "compress", "gamma": tune.loguniform(c.gamma_min, c.gamma_max),
             "train": shared}
    if c.fail_gamma_above is not None:  # test only: kept out of users' trial tables
        space["fail_gamma_above"] = c.fail_gamma_above
    return space


def reference_points(c: SweepConfig) -> list[dict]:
    """The float-baseline and floor trials, as points the searcher proposes first."""
    return [{"kind": kind, "gamma": 0.0} for kind in REFERENCE_KINDS] if c.references else []


def searcher(c: SweepConfig):
    """Seeded: the same --seed draws the same gammas, also for trials re-drawn on resume.

    The concurrency limit goes here, not in TuneConfig: Tune ignores
    ``max_concurrent_trials`` when a searcher instance is given.
    """
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=reference_points(c), random_state=c.seed,
                                 max_concurrent=c.max_concurrent)


def train_config(trial: dict, device: str, threads: int) -> TrainConfig:
    """The TrainConfig of one trial, from its Tune config."""
    return TrainConfig(**trial["train"], gamma=float(trial["gamma"]), kind=trial["kind"],
                       device=device, threads=threads)


def trial_key(trial: dict) -> dict:
    """What identifies a trial's training, as JSON would store it: matches its checkpoints."""
    return {"kind": trial["kind"], "gamma": float(trial["gamma"]), "train": dict(trial["train"])}


def sampled_trials(c: SweepConfig, train: TrainConfig) -> list[tuple[str, float]]:
    """``(kind, gamma)`` of every trial the sweep ``c`` runs, in order; needs no cluster."""
    from ray.tune.experiment import Experiment

    def run_trial(config: dict) -> None:  # the trainable's name, registered; never called
        raise NotImplementedError

    search = searcher(c)
    search.add_configurations([Experiment("sampled", run_trial, config=param_space(c, train),
                                          num_samples=c.num_trials)])
    return [(t.config["kind"], float(t.config["gamma"])) for t in iter(search.next_trial, None)]
