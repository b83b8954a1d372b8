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
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

from ray.tune.search import Searcher

from analysis.frontier import gamma_means, next_gamma

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


class PointSearcher(Searcher):
    """What the sweep's searchers share: they count their own live trials against the
    ConcurrencyLimiter's limit, and their state (the attributes named in ``STATE_KEYS``)
    goes into Tune's snapshots as a pickle."""

    STATE_KEYS: tuple[str, ...] = ()
    max_concurrent = 0  # 0: no limit of its own

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """The ConcurrencyLimiter's limit: this searcher counts its live trials itself."""
        self.max_concurrent = max_concurrent
        return True

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
        point = self.queue.pop(0)
        self.live[trial_id] = point
        return dict(point)

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
        path = Path(self.folder) / REFINE_FILE
        tmp = path.with_name(f".{REFINE_FILE}.tmp")
        tmp.write_text("".join(f"{g!r}\n" for g in self.refine_gammas))  # repr: exact
        tmp.replace(path)
