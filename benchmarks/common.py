"""Shared by the benchmarks: interleaved timing, FLOP counts, and the JSON they print."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

import trainer
from trainer.cli import OneLineParser, fail
from trainer.config import TrainConfig, resolve
from trainer.model import SPATIAL, ResNet9
from trainer.network import load_model
from trainer.network import model_for as trainer_model
from trainer.results import code_version
from trainer.train import Step, make_optimizers


def parser(name: str, doc: str) -> OneLineParser:
    """The benchmark's argparse: its docstring as help, one-line exit-2 errors."""
    return OneLineParser(prog=f"python -m benchmarks.{name}", description=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         error_prefix=f"benchmarks.{name}")


def count(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int = 1) -> dict:
    """Time each function ``reps`` times, alternating between them; median seconds each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def conv_macs(model: ResNet9) -> int:
    """Multiply-accumulates of one forward pass on one 32x32 image, as the network is now."""
    return sum(SPATIAL[name] ** 2 * layer.weight.numel() for name, layer in model.quant_layers())


def load_trained(path: str, prog: str, flag: str) -> tuple[ResNet9, TrainConfig]:
    """(the network saved at ``path`` by ``trainer.train --out``, channels_last, and its
    config); one line and exit 2, naming ``flag``, for a missing file or another kind."""
    if not os.path.isfile(path):
        fail(f"{flag} {path}: no such file; give the model.pt of a trainer.train --out folder",
             prog=prog)
    try:
        model = load_model(path)
        config = TrainConfig(**torch.load(path, map_location="cpu", weights_only=True)["config"])
    except Exception as err:  # not a model.pt of ours
        fail(f"{flag} {path}: not a network saved by trainer.train ({type(err).__name__})",
             prog=prog)
    return model.to(memory_format=torch.channels_last), config


def model_for(preset: str, kind: str = "compress", seed: int = 0, **overrides) -> ResNet9:
    """A fresh network of ``preset``, built and laid out (channels_last) as the trainer does."""
    config = resolve(TrainConfig(preset=preset, kind=kind, **overrides), has_gpu=False)
    torch.manual_seed(seed)
    return trainer_model(config).to(memory_format=torch.channels_last)


def train_step_fn(model: ResNet9, x: torch.Tensor, y: torch.Tensor, gamma: float = 0.01,
                  config: TrainConfig | None = None,
                  autocast: Callable = nullcontext) -> Callable[[], None]:
    """One full training step, the trainer's own ``Step`` (zero_grad, forward, loss with the
    size term for a quantized network, backward, both optimizers); ``config``: the `cpu`
    preset's recipe by default, of the network's kind; ``autocast``: the trainer's for the
    step's precision (``trainer.precision.autocast_for``; none: fp32)."""
    kind = "compress" if model.quantized else "float-baseline"
    config = config or resolve(TrainConfig(preset="cpu", kind=kind), has_gpu=False)
    step = Step(model, make_optimizers(model, config), config, autocast,
                torch.zeros((), device=x.device))
    step.gamma.fill_(gamma)
    model.train()
    x = x.contiguous(memory_format=torch.channels_last)  # as trainer.data hands batches over

    def run() -> None:  # as trainer.train's loop runs it
        step.zero_grad()
        step(x, y)
    return run


def machine() -> dict:
    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cpu", "code_version": code_version(),
            "trainer": os.path.dirname(os.path.abspath(trainer.__file__))}  # which one ran


def emit(name: str, figures: dict) -> None:
    """Print the benchmark's one JSON object (``ratio`` first: the headline)."""
    context = {k: v for k, v in machine().items() if k not in figures}  # a GPU run says so
    print(json.dumps({"benchmark": name, **figures, **context}, indent=None))
