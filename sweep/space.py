"""The search space: what a trial's Tune config holds, and the seeded searcher that fills it.

A trial's config is ``{"kind", "gamma", "width", "full_width", "fixed_bits", "train"}``
(plus the test-only ``fail_gamma_above``): ``train`` holds the resolved TrainConfig fields
shared by every trial, so a trial rebuilds exactly the config the driver resolved (and
``params.json`` records it). The reference trials are the searcher's first points, so they
run first and exactly once; a point sets ``width``, ``full_width`` or ``fixed_bits`` over
the shared value, which every other trial leaves at None.
"""

from __future__ import annotations

import dataclasses

from sweep.config import SweepConfig, reference_trials
from trainer.config import TrainConfig

# Set per trial, not shared: gamma and kind by the search, device and threads by the trainable.
PER_TRIAL_FIELDS = ("gamma", "kind", "device", "threads")
# Set by a reference point over the shared value (None: the shared one), see reference_trials.
OVERRIDE_FIELDS = ("width", "full_width", "fixed_bits")


def param_space(c: SweepConfig, train: TrainConfig) -> dict:
    """Tune's param_space: gamma log-uniform, everything else fixed."""
    from ray import tune

    shared = {k: v for k, v in dataclasses.asdict(train).items() if k not in PER_TRIAL_FIELDS}
    space = {"kind": "compress", "gamma": tune.loguniform(c.gamma_min, c.gamma_max),
             **dict.fromkeys(OVERRIDE_FIELDS), "train": shared}
    if c.fail_gamma_above is not None:  # test only: kept out of users' trial tables
        space["fail_gamma_above"] = c.fail_gamma_above
    return space


def reference_points(c: SweepConfig, width: float) -> list[dict]:
    """The reference trials (``width``: the sweep's), as points the searcher proposes first."""
    return [{**trial, "gamma": 0.0} for trial in reference_trials(c.references, width)]


def searcher(c: SweepConfig, train: TrainConfig):
    """Seeded: the same --seed draws the same gammas, also for trials re-drawn on resume.

    The concurrency limit goes here, not in TuneConfig: Tune ignores
    ``max_concurrent_trials`` when a searcher instance is given.
    """
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=reference_points(c, train.width),
                                 random_state=c.seed, max_concurrent=c.max_concurrent)


def overrides(trial: dict) -> dict:
    """The fields a reference trial sets over the shared ones (none for other trials)."""
    return {k: trial[k] for k in OVERRIDE_FIELDS if trial.get(k) is not None}


def train_config(trial: dict, device: str, threads: int) -> TrainConfig:
    """The TrainConfig of one trial, from its Tune config."""
    return TrainConfig(**{**trial["train"], **overrides(trial)}, gamma=float(trial["gamma"]),
                       kind=trial["kind"], device=device, threads=threads)


def trial_key(trial: dict) -> dict:
    """What identifies a trial's training, as JSON would store it: matches its checkpoints.

    Overrides count only when set, so the key of any other trial is what it always was.
    """
    return {"kind": trial["kind"], "gamma": float(trial["gamma"]),
            "train": dict(trial["train"]), **overrides(trial)}


def sampled_configs(c: SweepConfig, train: TrainConfig) -> list[dict]:
    """The Tune config of every trial the sweep ``c`` runs, in order; needs no cluster."""
    from ray.tune.experiment import Experiment

    def run_trial(config: dict) -> None:  # the trainable's name, registered; never called
        raise NotImplementedError

    search = searcher(c, train)
    search.add_configurations([Experiment("sampled", run_trial, config=param_space(c, train),
                                          num_samples=c.num_trials)])
    return [t.config for t in iter(search.next_trial, None)]


def sampled_trials(c: SweepConfig, train: TrainConfig) -> list[tuple[str, float]]:
    """``(kind, gamma)`` of every trial the sweep ``c`` runs, in order; needs no cluster."""
    return [(t["kind"], float(t["gamma"])) for t in sampled_configs(c, train)]
