"""What a run reports: per-epoch metrics, per-layer rows, and the console table.

The metric names are those of docs/method.md §1 and of the Parquet schemas in
``trainer.results``; the sweep reports the same dicts to Tune.
"""

from __future__ import annotations

import math
import sys

import torch

from trainer.model import LAYER_NAMES, ResNet9


@torch.no_grad()
def size_metrics(model: ResNet9) -> dict[str, float]:
    """Exact size of the network now: size_bits, bits_fraction, weights_kept_fraction, ..."""
    size = model.size()
    bits, live = float(size.bits), float(size.live_weights)
    return {
        "size_bits": bits,
        "bits_fraction": bits / (32 * model.n0),
        "weights_kept_fraction": live / model.n0,
        "mean_bits": bits / live if live else 0.0,
        "macs_kept_fraction": float(size.macs) / model.macs0,
    }


@torch.no_grad()
def channels(model: ResNet9) -> dict[str, int]:
    """Live output channels per conv layer (0 for a removed branch)."""
    live = {name: int((~block.dead()).sum()) for name, block in model.blocks()}
    return {name: live.get(name, 0) for name in LAYER_NAMES if name != "head"}


@torch.no_grad()
def layer_rows(model: ResNet9) -> list[dict]:
    """One row per layer for layers.parquet: channels and weights before and after."""
    present = {name: (layer, live_in) for name, layer, live_in in model.live_inputs()}
    rows = []
    for name in LAYER_NAMES:
        o0, i0, *kernel = model.initial_shapes[name]
        per_in = math.prod(kernel)  # k*k for a conv, 1 for the head
        out_f = in_f = 0
        mean_bits = 0.0
        if name in present:
            layer, live_in = present[name]
            live_out = layer.live_out() if name == "head" else ~model.get_submodule(
                name).dead()
            out_f, in_f = int(live_out.sum()), int(live_in.sum())
            bits = torch.ceil(torch.relu(layer.b))[live_out] if layer.quantized else None
            mean_bits = float(bits.mean()) if bits is not None and bits.numel() else (
                32.0 if not layer.quantized else 0.0)
        rows.append({"layer": name, "out_channels_initial": o0, "out_channels_final": out_f,
                     "in_channels_initial": i0, "in_channels_final": in_f,
                     "mean_bits": mean_bits, "weights_initial": o0 * i0 * per_in,
                     "weights_final": out_f * in_f * per_in})
    return rows


COLUMNS = [  # (metric, header, format)
    ("epoch", "epoch", "{:>5d}"),
    ("train_loss", "loss", "{:>6.3f}"),
    ("test_accuracy", "acc %", "{:>6.2%}"),
    ("bits_fraction", "bits %", "{:>7.3%}"),
    ("weights_kept_fraction", "kept %", "{:>7.2%}"),
    ("mean_bits", "bits/w", "{:>6.2f}"),
    ("channels_kept", "chans", "{:>6d}"),
    ("epoch_time_s", "epoch s", "{:>7.1f}"),
    ("time_total_s", "total s", "{:>7.1f}"),
    ("lr", "lr", "{:>7.4f}"),
]


def table_header() -> str:
    return "  ".join(f"{h:>{len(f.format(0) if 'd' in f else f.format(0.0))}}"
                     for _, h, f in COLUMNS)


def table_row(metrics: dict) -> str:
    return "  ".join(f.format(metrics[k]) for k, _, f in COLUMNS)


class Progress:
    """A one-line progress counter within an epoch, shown only on a terminal."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.enabled = stream.isatty()

    def update(self, step: int, epoch: int) -> None:
        if self.enabled and (step % 5 == 0 or step == self.total):
            self.stream.write(f"\r  epoch {epoch}: step {step}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()
