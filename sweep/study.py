"""``--search optuna``: a Tune searcher that aims at the accuracy-size front.

``StudySearcher`` runs the reference trials first (as the random search does), then asks
Ray Tune's ``OptunaSearch`` for ``num_samples`` compress points with two objectives, test
accuracy (maximised) and size on the ``--objective`` axis (minimised). Each point trains
once per training seed; the study is told the seeds' means once all of them have ended.

Where OptunaSearch fails silently, this class does not (read in Ray 2.60's and Optuna 5's
code):

- ``metric`` and ``mode`` are lists on OptunaSearch alone; the TuneConfig sets neither (one
  there would silently make the study single-objective), and Tune's ``set_search_properties``
  never reaches it.
- A point whose trials all failed, or reported a NaN or no objective, is told FAIL. (Ray
  would tell it COMPLETE, Optuna would refuse the NaN, Ray would log a warning, and the
  point would stay RUNNING in the study for the rest of the sweep, a pending point to the
  constant liar.)
- The reference trials never enter the study: they are not draws from its space.

The study lives in ``optuna.db`` (SQLite) in the sweep folder, so ``optuna.load_study`` and
optuna-dashboard read it while the sweep runs. This searcher's own state (what it queued,
what runs, which seeds of a point have ended) goes into Tune's snapshots; the OptunaSearch
inside is rebuilt from the database after a restore. A point asked for after Tune's last
snapshot (a ``kill -9`` in between) is still RUNNING in the database: a restored searcher
adopts it and trains it, under the same study trial, unless Tune's own snapshot already
holds its trials (``PointSearcher.agree_with``), so no point is asked or trained twice, or
lost; its trials find their checkpoints by their config (sweep.trainable). The restored study's
sampler is seeded from ``--seed`` and the number of points in the study (``resumed_seed``):
seeded as at the start, it would propose the study's first points again.
"""

from __future__ import annotations

import math
from pathlib import Path

from ray.tune.search import Searcher

from sweep.search import PointSearcher, seeded

STUDY_FILE = "optuna.db"  # the study's SQLite storage, in the sweep folder
OBJECTIVES = {"bits": "bits_fraction", "weights": "weights_kept_fraction",
              "macs": "macs_kept_fraction"}  # --objective -> the reported size column
ACCURACY = "test_accuracy"
STATE_KEYS = ("queue", "live", "points", "asked", "max_concurrent")
SAMPLERS = ("tpe", "gp", "random")  # the study's sampler (see make_sampler; benchmarks.searcher)
STARTUP_TRIALS = 10  # random points before the sampler's model takes over (Optuna's default;
#   SweepConfig.startup_trials sets a sweep's)


def storage_url(folder: str | Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / STUDY_FILE}"


def make_sampler(name: str, seed: int, startup: int = STARTUP_TRIALS):
    """The study's sampler, seeded: multivariate TPE with the constant liar (the default,
    benchmarks.searcher), Optuna's GP sampler (log-EHVI), or random."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup,
                                         warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def resumed_seed(seed: int, asked: int) -> int:
    """The sampler's seed for a study resumed with ``asked`` points in it: a function of
    both, so a resumed sweep draws new points, the same ones for the same history."""
    import numpy as np

    return int(np.random.SeedSequence([seed, asked]).generate_state(1)[0])


class StudySearcher(PointSearcher):
    """Reference points, then ``num_samples`` points from a two-objective Optuna study."""

    STATE_KEYS = STATE_KEYS

    def __init__(self, references: list[dict], seeds: list[int | None], num_samples: int,
                 space: dict, objective: str, seed: int, folder: str, study_name: str,
                 sampler: str = "tpe", startup: int = STARTUP_TRIALS):
        super().__init__()
        self.seeds = list(seeds)
        self.queue = [p for point in references for p in seeded({**point, "refined": False},
                                                                  self.seeds)]
        self.live: dict[str, dict] = {}  # Tune trial id -> its point, proposed, not ended
        self.points: dict[str, dict] = {}  # study point key -> seeds left and results so far
        self.asked = 0  # points taken from the study
        self.max_concurrent = 0  # 0: no limit of its own
        self.num_samples, self.space, self.objective = num_samples, space, objective
        self.seed, self.folder, self.study_name = seed, folder, study_name
        self.sampler, self.startup = sampler, startup
        self._search = None  # the OptunaSearch, built on first use (not pickled)

    # --- Tune's searcher interface ---

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        if not self.queue and self.asked < self.num_samples:
            self._ask()
        if not self.queue:
            return Searcher.FINISHED if not self.live else None
        return self.propose(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        point = self.live.pop(trial_id, None)
        if point is None or point.get("study_point") is None:
            return
        record = self.points[point["study_point"]]
        ok = result is not None and not error and "layers" in result  # its last report
        values = [float(result.get(k, math.nan)) for k in (ACCURACY, OBJECTIVES[
            self.objective])] if ok else [math.nan, math.nan]
        record["results"].append(values)
        record["left"] -= 1
        if record["left"] == 0:
            self._tell(point["study_point"], record["results"])

    # --- the study ---

    @property
    def study_search(self):
        """Ray Tune's OptunaSearch over the study in the sweep folder (built once)."""
        if self._search is None:
            self._search = self._build()
        return self._search

    def _build(self):
        from optuna.storages import RDBStorage
        from ray.tune.search.optuna import OptunaSearch

        from sweep.params import optuna_space

        varying, _ = optuna_space(self.space)
        search = OptunaSearch(space=varying, metric=[ACCURACY, OBJECTIVES[self.objective]],
                              mode=["max", "min"],
                              sampler=make_sampler(self.sampler, self.seed, self.startup),
                              study_name=self.study_name,
                              storage=RDBStorage(storage_url(self.folder)))
        asked = len(search._ot_study.get_trials(deepcopy=False))
        if asked:  # restored: a sampler seeded as at the start would draw its first points again
            search._ot_study.sampler = make_sampler(self.sampler, resumed_seed(self.seed, asked),
                                                    self.startup)
        return search

    def _ask(self) -> None:
        """Take the next point from the study and queue it once per training seed."""
        key = f"point-{self.asked}"
        params = self.study_search.suggest(key)
        number = self.study_search._ot_trials[key].number
        self._queue_point(key, number, params)

    def _queue_point(self, key: str, number: int, params: dict) -> None:
        from sweep.params import optuna_space

        _, fixed = optuna_space(self.space)
        values = {**fixed, **params}
        point = {"kind": "compress", "gamma": float(values.pop("gamma")), "width": None,
                 "full_width": None, "fixed_bits": None, "refined": False,
                 "study_point": key, "study_trial": number}
        if values:
            point["params"] = dict(values)
        self.points[key] = {"number": number, "left": len(self.seeds), "results": []}
        self.queue += seeded(point, self.seeds)
        self.asked += 1

    def _tell(self, key: str, results: list[list[float]]) -> None:
        """Tell the study the seeds' mean objectives, or FAIL when none is finite."""
        from optuna.trial import TrialState

        search = self.study_search
        frozen = search._ot_study._storage.get_trial(search._ot_trials[key]._trial_id)
        if frozen.state != TrialState.RUNNING:  # told before a kill, re-reported after it
            return
        good = [r for r in results if all(math.isfinite(v) for v in r)]
        if not good:
            search.on_trial_complete(key, result=None, error=True)  # FAIL, not a zombie
            return
        means = [sum(r[i] for r in good) / len(good) for i in range(2)]
        search.on_trial_complete(key, result=dict(zip(search.metric, means, strict=True)))

    def _adopt(self) -> None:
        """After a restore: reattach the study's running points to the OptunaSearch, and
        queue those asked for after this searcher's snapshot (unknown to it) once more;
        ``agree_with`` then takes off the queue those whose trials Tune restores."""
        import optuna
        from optuna.trial import TrialState

        search = self.study_search
        study = search._ot_study
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for key, record in self.points.items():  # told or not: _tell looks at its state
            search._ot_trials[key] = optuna.trial.Trial(study,
                                                        by_number[record["number"]]._trial_id)
        known = {r["number"] for r in self.points.values()}
        for number, frozen in sorted(by_number.items()):
            if number not in known and frozen.state == TrialState.RUNNING:
                key = f"point-{self.asked}"  # asked after the snapshot: train it now
                trial = optuna.trial.Trial(study, frozen._trial_id)
                self._queue_point(key, number, self._draw_missing(trial, dict(frozen.params)))
                search._ot_trials[key] = trial
        self.asked = max(self.asked, len(by_number))  # and those told after the snapshot

    def _draw_missing(self, trial, params: dict) -> dict:
        """The point's values, drawn by the sampler where the kill came before the study
        had stored them all (Optuna stores a new trial, then its values one by one)."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        from sweep.params import optuna_space

        varying, _ = optuna_space(self.space)
        for name, dist in varying.items():
            if name in params:
                continue
            if isinstance(dist, CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step,
                                                 log=dist.log)
            else:
                params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step,
                                                   log=dist.log)
        return params

    # --- snapshots ---

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._search = None
        self._adopt()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_search": None}  # the study lives in its database
