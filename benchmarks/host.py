"""The host's time per training step, phase by phase: what a GPU step waits on.

On a GPU a compress step waited on the host (benchmarks/README.md, the H100 figures): the
Python, autograd and dispatcher work of its operations, not their arithmetic. This times
one step of a network so thin (width 0.03: 2-4-8-15 channels) at batch 1 on one thread
that the arithmetic is next to nothing, float and compress interleaved, as the trainer's
``Step`` runs it (``host_ms_*``, best of ``--reps`` rounds of ``--steps`` steps) and phase by
phase (zero_grad, forward, loss, backward, optimizers; median milliseconds of the steps;
``Step``'s own phase methods, timed one by one). ``opt_ms_fused`` and
``opt_ms_foreach``: the compress step's optimizer phase with the trainer's fused
optimizers and with the foreach form they replaced, interleaved.

``ratio`` = host_ms_compress / host_ms_float: how much more host a compress step needs.

    python -m benchmarks.host [--reps 5] [--steps 50]

(Its comparison with commit 0432bd1's trainer: docs/benchmarks-history.md.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from benchmarks.common import count, emit, model_for, parser
from trainer.config import TrainConfig, resolve
from trainer.heap import keep_freed_memory
from trainer.train import Step, make_optimizers

PHASES = ("zero", "forward", "loss", "backward", "optimizers")


def build(kind: str, width: float) -> Step:
    """The trainer's ``Step`` of a seeded smoke network (no autocast on a CPU)."""
    config = resolve(TrainConfig(preset="smoke", kind=kind, width=width), has_gpu=False)
    model = model_for("smoke", kind=kind, width=width)  # seeded, channels_last
    step = Step(model, make_optimizers(model, config), config, nullcontext, torch.zeros(()))
    step.gamma.fill_(config.gamma)
    return step


def whole_step(kind: str, width: float, x, y) -> Callable[[], None]:
    """The trainer's own ``Step`` (zero_grad, then the step)."""
    step = build(kind, width)

    def run() -> None:
        step.zero_grad()
        step(x, y)
    return run


def phased_step(kind: str, width: float, x, y, times: dict[str, list[float]],
                foreach: bool = False) -> Callable[[], None]:
    """``Step``'s phases, one by one, with a clock between them (``foreach``: the
    optimizers in the foreach form instead of fused)."""
    step = build(kind, width)
    if foreach:
        for group in (g for o in step.opts for g in o.param_groups):
            group["fused"], group["foreach"] = False, True

    def run() -> None:
        t = [time.perf_counter()]
        step.zero_grad()
        t.append(time.perf_counter())
        logits = step.forward(x)
        t.append(time.perf_counter())
        loss, _ = step.loss(logits, y)
        t.append(time.perf_counter())
        step.backward(loss)
        t.append(time.perf_counter())
        step.optimize()
        t.append(time.perf_counter())
        for name, a, b in zip(PHASES, t, t[1:], strict=False):
            times[name].append((b - a) * 1e3)
    return run


def best_ms(fns: dict[str, Callable[[], None]], reps: int, steps: int) -> dict[str, float]:
    """Milliseconds per call of each function: the best of ``reps`` interleaved rounds of
    ``steps`` calls (after one round of warm-up)."""
    best = {name: float("inf") for name in fns}
    for r in range(reps + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            if r:
                best[name] = min(best[name], (time.perf_counter() - start) / steps * 1e3)
    return best


def main() -> None:
    p = parser("host", __doc__)
    p.add_argument("--reps", type=count, default=5, help="interleaved rounds (%(default)s)")
    p.add_argument("--steps", type=count, default=50, help="steps per round (%(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as the trainer runs on a CPU
    width = 0.03
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (1,))
    whole = best_ms({k: whole_step(k, width, x, y) for k in ("float-baseline", "compress")},
                    args.reps, args.steps)
    phases = {k: {n: [] for n in PHASES} for k in ("float", "compress", "compress_foreach")}
    best_ms({"float": phased_step("float-baseline", width, x, y, phases["float"]),
             "compress": phased_step("compress", width, x, y, phases["compress"]),
             "compress_foreach": phased_step("compress", width, x, y,
                                             phases["compress_foreach"], foreach=True)},
            args.reps, args.steps)
    med = {k: {n: round(statistics.median(v[args.steps:]), 3) for n, v in ph.items()}
           for k, ph in phases.items()}  # [steps:]: not the warm-up round
    emit("host", {"ratio": round(whole["compress"] / whole["float-baseline"], 3),
                  "host_ms_float": round(whole["float-baseline"], 3),
                  "host_ms_compress": round(whole["compress"], 3),
                  "phases_ms_float": med["float"], "phases_ms_compress": med["compress"],
                  "opt_ms_fused": med["compress"]["optimizers"],
                  "opt_ms_foreach": med["compress_foreach"]["optimizers"],
                  "width": width, "batch": 1, "reps": args.reps, "steps": args.steps})


if __name__ == "__main__":
    main()
