"""How good a front is, and where it needs another trial: pure functions on plain numbers.

A front here is the compress trials' Pareto front of size (a fraction of the float network,
in (0, 1]) against test accuracy (a fraction), drawn through the per-γ means over seeds.
Two numbers summarise it, so two sweeps can be compared by one number each:

- **widest gap**: the largest distance between neighbouring front points, measured in the
  plane (log10 of the size fraction, accuracy as a fraction): one decade of size counts as
  much as 100 accuracy points, 0.01 is one point (or a factor 1.023 in size).
- **hypervolume**: the area the front dominates in the plane (x = -log10(size fraction),
  larger is smaller; y = accuracy), above the reference point (x = 0: the full float size,
  y = CHANCE: 10 % accuracy, a guess among CIFAR-10's ten classes), with accuracy clipped
  at the float baseline's (when known). In decades × accuracy points.

``next_gamma`` says where ``--refine`` puts its next γ: between the two neighbouring front
points with the widest gap. Nothing here imports torch, Ray or pandas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from analysis.pareto import pareto_front

CHANCE = 0.10  # accuracy of a guess among CIFAR-10's ten classes: the hypervolume's floor
SAME_GAMMA = 1e-6  # relative: a γ this close to one tried counts as tried


def gamma_means(gammas: Sequence[float], sizes: Sequence[float],
                accuracies: Sequence[float]) -> list[tuple[float, float, float]]:
    """``(γ, mean size, mean accuracy)`` per distinct γ, over its seeds, by γ; trials with a
    NaN size or accuracy (failed, unfinished) are left out."""
    groups: dict[float, list[tuple[float, float]]] = {}
    for g, s, a in zip(gammas, sizes, accuracies, strict=True):
        if not (math.isnan(s) or math.isnan(a)):
            groups.setdefault(float(g), []).append((float(s), float(a)))
    return [(g, sum(s for s, _ in p) / len(p), sum(a for _, a in p) / len(p))
            for g, p in sorted(groups.items())]


def front_gaps(sizes: Sequence[float], accuracies: Sequence[float]
               ) -> list[tuple[int, int, float]]:
    """``(i, j, distance)`` for each pair of neighbouring points on the Pareto front of the
    points (indices into the inputs, ``i`` the smaller), distance in (log10 size, accuracy)."""
    front = [i for i in pareto_front(sizes, accuracies) if sizes[i] > 0]
    return [(i, j, math.hypot(math.log10(sizes[j]) - math.log10(sizes[i]),
                              accuracies[j] - accuracies[i]))
            for i, j in zip(front, front[1:], strict=False)]


def widest_gap(sizes: Sequence[float], accuracies: Sequence[float]) -> float:
    """The widest distance between neighbouring front points; NaN with fewer than 2."""
    gaps = front_gaps(sizes, accuracies)
    return max(d for _, _, d in gaps) if gaps else math.nan


def hypervolume(sizes: Sequence[float], accuracies: Sequence[float],
                ceiling: float | None = None, floor: float = CHANCE) -> float:
    """The area the points dominate, in decades × accuracy points (see the module's docstring).

    ``ceiling`` clips accuracy (the float baseline's; None: no clip); ``floor`` is the
    reference accuracy. Points at or above the full size, or at or below the floor, add
    nothing; NaN points are left out.
    """
    points = sorted(((-math.log10(s), min(a, ceiling) if ceiling is not None else a)
                     for s, a in zip(sizes, accuracies, strict=True)
                     if not (math.isnan(s) or math.isnan(a)) and 0 < s < 1 and a > floor),
                    reverse=True)  # smallest size (largest x) first
    area, best = 0.0, floor
    for k, (x, y) in enumerate(points):
        best = max(best, y)  # the height over (next x, x]: the best of the smaller networks
        following = points[k + 1][0] if k + 1 < len(points) else 0.0
        area += (x - following) * (best - floor)
    return 100 * area


def next_gamma(gammas: Sequence[float], sizes: Sequence[float],
               accuracies: Sequence[float], tried: Sequence[float]) -> tuple[float, str]:
    """The γ to try next, and why in words.

    ``gammas``/``sizes``/``accuracies``: one point per γ (its seeds' means). The γ is the
    geometric mean of the γs of the two neighbouring front points with the widest gap; when
    that γ was tried (``tried``, within SAME_GAMMA), the next widest gap's. With fewer than two
    front points (or every gap's γ tried), it goes beyond the end of the tried γs on the side
    of the best front point: twice the largest γ, or half the smallest.
    """
    def was_tried(g: float) -> bool:
        return any(abs(g - t) <= SAME_GAMMA * max(abs(g), abs(t)) for t in tried)

    gaps = sorted(front_gaps(sizes, accuracies), key=lambda gap: -gap[2])
    for i, j, distance in gaps:
        g = math.sqrt(gammas[i] * gammas[j])
        if not was_tried(g):
            return g, (f"between γ {gammas[i]:.4g} and {gammas[j]:.4g}, the widest untried gap "
                       f"of the front ({distance:.3f})")
    if not tried:
        raise ValueError("next_gamma needs at least one tried gamma")
    front = pareto_front(sizes, accuracies)
    low, high = min(tried), max(tried)
    # Which end: the one nearer (in log γ) to the most accurate front point, else the top.
    best = gammas[front[-1]] if front else high
    upward = math.log(best) >= (math.log(low) + math.log(high)) / 2
    g = high if upward else low
    while was_tried(g):
        g = g * 2 if upward else g / 2
    return g, (f"beyond the {'largest' if upward else 'smallest'} γ tried "
               f"({high if upward else low:.4g}): the front has "
               f"{len(front)} point{'s' if len(front) != 1 else ''} and no untried gap")
