"""The sweep's Tune searcher: reference points, the seeded γs, then ``--refine`` γs, each
trained once per training seed.

``GammaSearcher`` proposes, in order: every reference point, then the ``num_samples`` γs
drawn log-uniformly with numpy's generator seeded by ``--seed`` (so the pre-drawn part is a
function of the sweep's settings, and ``sampled_configs`` can list it without a cluster),
each point once per training seed (``--seed`` .. ``--seed + seeds - 1``, back to back). Once
every one of those trials has ended it chooses the ``refine`` more γs one at a time, each
when the previous one's seeds have ended, where the compress front (per-γ means over seeds,
bits against accuracy) has its widest gap (analysis.frontier.next_gamma); then it is done.

Its state (what it proposed, what ended, the γs it chose) goes into Tune's experiment
snapshots through ``save``/``restore``, so ``Tuner.restore`` continues with it. The refine
γs are also written to ``refine.txt`` in the sweep folder the moment they are chosen: a
sweep killed after choosing one but before Tune's next snapshot proposes the same γ again.
(Not a .json or .pkl file: on restore Tune copies those from the sweep folder into its
staging folder and uploads them back at every snapshot, over anything written since.)

Tune writes its list of trials and then the searcher's snapshot, and copies both into the
sweep folder, so a ``kill -9`` can leave either a step behind the other. A restored
searcher therefore makes its state agree with the trials Tune restores
(``PointSearcher.agree_with``): a point Tune already runs is not proposed again, a trial
Tune never recorded has its point proposed again, a trial that ended unseen is counted.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

from ray.tune.search import Searcher

from analysis.frontier import gamma_means, next_gamma

STARTED_KINDS = ("compress", "fixed-bits")  # the trials a trained start applies to
REFINE_FILE = "refine.txt"  # the refine γs in the order chosen, one per line, in the sweep folder
STATE_KEYS = ("queue", "live", "ended", "refine_left", "refine_gammas", "max_concurrent")


def draw_gammas(n: int, low: float, high: float, seed: int) -> list[float]:
    """``n`` γs log-uniform in [low, high], a function of ``seed`` alone."""
    from sweep.params import draw_field

    return draw_field("gamma", {"distribution": "log_uniform_values", "min": low, "max": high},
                      n, seed)


def seeded(point: dict, seeds: list[int | None]) -> list[dict]:
    """The point once per training seed (None: the sweep's own, set by its shared config)."""
    return [{**point, "seed": s} for s in seeds]


@dataclass(frozen=True)
class TuneTrial:
    """A trial as Tune's experiment state records it."""

    trial_id: str
    finished: bool  # TERMINATED: Tune will not run it again
    point: dict  # its config without the shared "train" part: what a searcher proposed
    last_result: dict | None


def tune_trials(folder: str | Path | None) -> list[TuneTrial] | None:
    """The trials of the newest experiment state in the sweep folder, the one
    ``Tuner.restore`` restores (read with Tune's own decoder); None when there is none."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.experiment.trial import Trial

    try:
        from ray.tune.utils.serialization import _loads_with_cloudpickle as loads
    except ImportError:  # an older Ray without the helper: its state is JSON for this decoder
        import json

        from ray.tune.utils.serialization import TuneFunctionDecoder

        def loads(text):
            return json.loads(text, cls=TuneFunctionDecoder)

    if not folder or not Path(folder).is_dir():
        return None
    path = _find_newest_experiment_checkpoint(str(folder))
    if path is None or not Path(path).is_file():
        return None
    trials = []
    for state, metadata in loads(Path(path).read_text())["trial_data"]:
        trial = Trial.from_json_state(state, stub=True)
        trial.restore_run_metadata(metadata)
        trials.append(TuneTrial(trial.trial_id, trial.status == Trial.TERMINATED,
                                {k: v for k, v in trial.config.items() if k != "train"},
                                trial.run_metadata.last_result or None))
    return trials


def is_baseline(point: dict) -> bool:
    """The float-baseline reference point (the one a trained start compresses)."""
    return point["kind"] == "float-baseline" and point.get("width") is None


def same_point(queued: dict, proposed: dict) -> bool:
    """Whether a queued point is the one a trial was proposed with (the study's key for a
    point is this searcher's own name for it, and may differ after a restore)."""
    return all(proposed.get(k) == v for k, v in queued.items() if k != "study_point")


class PointSearcher(Searcher):
    """What the sweep's searchers share: they count their own live trials against the
    ConcurrencyLimiter's limit, their state (the attributes named in ``STATE_KEYS``) goes
    into Tune's snapshots as a pickle, and a restored one agrees with Tune's trials."""

    STATE_KEYS: tuple[str, ...] = ()
    max_concurrent = 0  # 0: no limit of its own
    folder: str | None = None  # the sweep folder, where Tune's experiment state is
    # A sweep that starts from a trained network (--start baseline, --init-from): the fields
    # its compress and fixed-bits points, and its float-baseline point, set over the shared
    # recipe (sweep.config.start_fields); None: from scratch (and searchers pickled before).
    start: dict | None = None
    baseline_start: dict | None = None
    base_seed = 0  # the sweep's --seed: the training seed of a point whose seed is None
    queue: list[dict]  # points to propose, in order
    live: dict[str, dict]  # Tune trial id -> its point, proposed and not ended

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """The ConcurrencyLimiter's limit: this searcher counts its live trials itself."""
        self.max_concurrent = max_concurrent
        return True

    def set_start(self, start: dict | None, baseline_start: dict | None, seed: int) -> None:
        self.start, self.baseline_start, self.base_seed = start, baseline_start, seed

    def propose(self, trial_id: str) -> dict | None:
        """The first queued point that can start now, with its start fields, taken from the
        queue into ``live``; None when every queued point waits for its baseline."""
        at = next((i for i, p in enumerate(self.queue) if self.ready(p)), None)
        if at is None:
            return None
        point = self.queue.pop(at)
        fields = self.baseline_start if is_baseline(point) else (
            self.start if point["kind"] in STARTED_KINDS else None)
        if fields:
            point = {**point, "start": dict(fields)}
        self.live[trial_id] = point
        return dict(point)

    def ready(self, point: dict) -> bool:
        """Whether ``point`` can start: it does not start from the sweep's own baseline, or
        that baseline's network is on disk, or its trial ended without one (then the point's
        trial fails, saying so, instead of waiting for ever)."""
        from sweep.checkpoints import baseline_file
        from sweep.config import BASELINE

        if (self.start or {}).get("init_from") != BASELINE or point["kind"] not in STARTED_KINDS:
            return True
        seed = self.seed_of(point)
        if self.folder is None or baseline_file(self.folder, seed).is_file():
            return True
        return not any(is_baseline(p) and self.seed_of(p) == seed
                       for p in [*self.queue, *self.live.values()])

    def seed_of(self, point: dict) -> int:
        return self.base_seed if point.get("seed") is None else int(point["seed"])

    def get_state(self) -> dict:
        return {k: getattr(self, k) for k in self.STATE_KEYS}

    def set_state(self, state: dict) -> None:
        for k in self.STATE_KEYS:
            setattr(self, k, state[k])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
        trials = tune_trials(self.folder)
        if trials is not None:
            self.agree_with(trials)

    def agree_with(self, trials: list[TuneTrial]) -> None:
        """Make a restored state agree with the trials Tune restores (see the module's
        docstring): Tune's list is what runs, this searcher's may be a step older or newer."""
        known = {t.trial_id for t in trials}
        lost = [trial_id for trial_id in self.live if trial_id not in known]
        self.queue[:0] = [self.live.pop(trial_id) for trial_id in lost]  # propose again
        for trial in trials:
            if trial.trial_id in self.live:
                continue
            at = next((i for i, p in enumerate(self.queue) if same_point(p, trial.point)),
                      None)
            if at is None:
                continue  # ended before this searcher's snapshot
            self.live[trial.trial_id] = self.queue.pop(at)  # proposed after it
            if trial.finished:
                self.on_trial_complete(trial.trial_id, trial.last_result,
                                       error=trial.last_result is None)


class GammaSearcher(PointSearcher):
    """Proposes the sweep's points (see the module's docstring); driven by ended trials."""

    STATE_KEYS = STATE_KEYS

    def __init__(self, points: list[dict], seeds: list[int | None], refine: int,
                 max_concurrent: int = 0, folder: str | None = None):
        super().__init__()
        self.seeds = list(seeds)
        self.queue = [p for point in points for p in seeded({**point, "refined": False},
                                                             self.seeds)]
        self.live: dict[str, dict] = {}  # trial id -> its point, proposed and not ended
        self.ended: list[tuple[dict, float, float]] = []  # point, accuracy, bits (NaN: failed)
        self.refine_left = refine
        self.refine_gammas: list[float] = []
        self.max_concurrent = max_concurrent  # 0: no limit of its own
        self.folder = folder  # where refine.txt goes; None: nowhere (sampled_configs)

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        if not self.queue and self.refine_left > 0:
            if self.live:  # refine once every trial before has ended
                return None
            self._choose_refine_gamma()
        if not self.queue:
            return Searcher.FINISHED if not self.live else None
        return self.propose(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        point = self.live.pop(trial_id, None)
        if point is None:
            return
        summary = result is not None and not error and "layers" in result  # its last report
        self.ended.append((point, float(result["test_accuracy"]) if summary else math.nan,
                           float(result["bits_fraction"]) if summary else math.nan))

    def _choose_refine_gamma(self) -> None:
        """Queue the next refine γ once per seed: the one refine.txt holds, else a new one."""
        chosen = self._recorded()
        if len(chosen) > len(self.refine_gammas):
            gamma, why = chosen[len(self.refine_gammas)], "as chosen before the sweep stopped"
        else:
            done = [(p["gamma"], b, a) for p, a, b in self.ended if p["kind"] == "compress"]
            means = gamma_means(*zip(*done, strict=True)) if done else []
            gamma, why = next_gamma([m[0] for m in means], [m[1] for m in means],
                                    [m[2] for m in means], [p["gamma"] for p, _, _ in self.ended
                                                            if p["kind"] == "compress"])
        self.refine_gammas.append(gamma)
        self.refine_left -= 1
        self._record()
        print(f"scnn sweep: refine {len(self.refine_gammas)}: γ {gamma:.4g}, {why}", flush=True)
        self.queue = seeded({"kind": "compress", "gamma": gamma, "width": None,
                             "full_width": None, "fixed_bits": None, "refined": True},
                            self.seeds)

    def _recorded(self) -> list[float]:
        if self.folder is None or not (Path(self.folder) / REFINE_FILE).is_file():
            return []
        return [float(g) for g in (Path(self.folder) / REFINE_FILE).read_text().split()]

    def _record(self) -> None:
        if (self.folder is None or not Path(self.folder).is_dir()  # moved since: no record
                or len(self._recorded()) >= len(self.refine_gammas)):
            return
        from sweep.config import write_text_atomic

        write_text_atomic(Path(self.folder) / REFINE_FILE,
                          "".join(f"{g!r}\n" for g in self.refine_gammas))  # repr: exact
