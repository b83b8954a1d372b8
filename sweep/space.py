"""What a trial's Tune config holds, and the searcher that fills it.

A trial's config is ``{"kind", "gamma", "width", "full_width", "fixed_bits", "seed",
"refined", "train"}``, plus ``start`` (what a trial of a sweep that starts from a trained
network sets: ``init_from`` and the recipe for a trained start, sweep.config.start_fields),
``params`` (the values of the fields the sweep's space varies besides γ, sweep.params),
``study_point``/``study_trial`` (its point in an Optuna study, sweep.study): ``train`` holds
the resolved TrainConfig fields shared by every trial, so a trial rebuilds exactly the config
the driver resolved (and ``params.json`` records it). The reference trials are the
searcher's first points, so they run first and exactly once per training seed; a point sets
``width``, ``full_width``, ``fixed_bits`` or ``seed`` over the shared value (None: the
shared one, so the first seed's trials are keyed as before seeds existed). ``refined`` says
the γ was chosen by ``--refine`` (sweep.search).
"""

from __future__ import annotations

import dataclasses

from sweep.config import (
    ADDED_SINCE_RECIPE,
    SweepConfig,
    precision_before,
    reference_trials,
    start_fields,
)
from trainer.config import TrainConfig

# Set per trial, not shared: gamma and kind by the search, device and threads by the trainable.
PER_TRIAL_FIELDS = ("gamma", "kind", "device", "threads")
# Set by a reference point over the shared value (None: the shared one), see reference_trials.
OVERRIDE_FIELDS = ("width", "full_width", "fixed_bits", "seed")


def param_space(c: SweepConfig, train: TrainConfig) -> dict:
    """Tune's param_space: what every trial shares; the searcher sets kind, gamma and the
    overrides of each."""
    shared = {k: v for k, v in dataclasses.asdict(train).items() if k not in PER_TRIAL_FIELDS}
    if "width" in c.full_space and shared.get("full_width") is None:
        shared["full_width"] = train.width  # sizes against the sweep's width, not the trial's
    return {"train": shared}


def reference_points(c: SweepConfig, width: float) -> list[dict]:
    """The reference trials (``width``: the sweep's), as points the searcher proposes first."""
    return [{**trial, "gamma": 0.0} for trial in reference_trials(c.references, width)]


def training_seeds(c: SweepConfig) -> list[int | None]:
    """The seed override of each training seed: None for --seed itself, then seed+1, ..."""
    return [None] + [c.seed + k for k in range(1, c.seeds)]


def compress_point(values: dict) -> dict:
    """A compress point from a draw of the space (field -> value): γ, and ``params`` for
    the other fields (absent for γ-only sweeps, so their configs are what they always were)."""
    values = dict(values)
    point = {"kind": "compress", "gamma": float(values.pop("gamma")),
             **dict.fromkeys(OVERRIDE_FIELDS)}
    return {**point, "params": values} if values else point


def sample_points(c: SweepConfig) -> list[dict]:
    """The --num-samples compress points of the random search, a function of --seed (γ
    drawn as it always was: sweep.params.draw)."""
    from sweep.params import draw

    return [compress_point(v) for v in draw(c.full_space, c.num_samples, c.seed)]


def searcher(c: SweepConfig, train: TrainConfig, record: bool = True):
    """The sweep's searcher: seeded draws (random: the same --seed draws the same points,
    also for trials re-drawn on resume), or the Optuna study (sweep.study).

    Wrapped in a ConcurrencyLimiter, which hands its limit to the searcher (which counts
    its own live trials) and tells Tune how many trials to keep pending (one otherwise).
    ``record``: write the refine γs to the sweep folder (see sweep.search).
    """
    from ray.tune.search import ConcurrencyLimiter

    from sweep.search import GammaSearcher

    points = [{**dict.fromkeys(OVERRIDE_FIELDS), **p} for p in reference_points(c, train.width)]
    if c.search == "optuna":
        from sweep.study import StudySearcher

        search = StudySearcher(points, training_seeds(c), c.num_samples, c.full_space,
                               c.objective, c.seed, str(c.folder), str(c.name), c.sampler,
                               c.startup_trials)
    else:
        search = GammaSearcher(points + sample_points(c), training_seeds(c), c.refine,
                               folder=str(c.folder) if record else None)
    search.set_start(*start_fields(c), c.seed)
    return ConcurrencyLimiter(search, max_concurrent=c.max_concurrent or c.num_trials)


def trial_dirname(trial) -> str:
    """A trial's folder, e.g. ``run_trial_1a2b3c4d_compress_gamma=0.0104`` (``_seed=1`` for
    a second seed): Tune would name it after every parameter the searcher set."""
    c = trial.config
    name = f"{trial.trainable_name}_{trial.trial_id}_{c.get('kind')}_gamma={c.get('gamma', 0):.4g}"
    extra = {k: c.get(k) for k in ("width", "fixed_bits", "seed") if c.get(k) is not None}
    extra.update(c.get("params") or {})
    return (name + "".join(f"_{k}={v:.4g}" if isinstance(v, float) else f"_{k}={v}"
                           for k, v in extra.items()))[:200]


def overrides(trial: dict) -> dict:
    """The fields a trial sets over the shared ones: a reference trial's, and where the sweep
    starts from a trained network its ``start`` fields (init_from, and the preset's recipe for
    a trained start); none for the compress trials of a sweep from scratch."""
    return {**{k: trial[k] for k in OVERRIDE_FIELDS if trial.get(k) is not None},
            **(trial.get("start") or {})}


def swept_values(trial: dict) -> dict:
    """The values a compress trial's point sets besides γ (sweep.params), else none."""
    return dict(trial.get("params") or {})


# Recipe fields added after a sweep may have started, with the value a trial whose saved
# config lacks them trained with: a resumed sweep finishes its trials as they began.
RECIPE_BEFORE = {"skip_one_bit": False, "min_bits": 0.0, **ADDED_SINCE_RECIPE}


def train_config(trial: dict, device: str, threads: int) -> TrainConfig:
    """The TrainConfig of one trial, from its Tune config (``RECIPE_BEFORE`` for the recipe
    fields a config saved by older code lacks, and for its precision what a trial on
    ``device`` trained in then: precision_before)."""
    before = {**RECIPE_BEFORE, "precision": precision_before(device != "cpu")}
    return TrainConfig(**{**before, **trial["train"], **swept_values(trial),
                          **overrides(trial)},
                       gamma=float(trial["gamma"]), kind=trial["kind"], device=device,
                       threads=threads)


def trial_key(trial: dict) -> dict:
    """What identifies a trial's training, as JSON would store it: matches its checkpoints.

    Overrides and swept values count only when set, so the key of a trial of a γ-only
    sweep is what it always was.
    """
    params = {"params": swept_values(trial)} if swept_values(trial) else {}
    return {"kind": trial["kind"], "gamma": float(trial["gamma"]),
            "train": dict(trial["train"]), **overrides(trial), **params}


def sampled_configs(c: SweepConfig, train: TrainConfig) -> list[dict]:
    """The Tune config of every trial the sweep ``c`` runs before any --refine γ, in order;
    needs no cluster (the refine γs depend on the results)."""
    search = searcher(c, train, record=False).searcher
    space = param_space(c, train)
    return [{**space, **point} for point in search.queue]


def sampled_trials(c: SweepConfig, train: TrainConfig) -> list[tuple[str, float]]:
    """``(kind, gamma)`` of every trial the sweep ``c`` runs before any --refine γ, in order;
    needs no cluster."""
    return [(t["kind"], float(t["gamma"])) for t in sampled_configs(c, train)]
