"""The network a config trains, and its files: ``model.pt`` and checkpoints rebuilt.

``model_for`` builds the ResNet-9 of a resolved ``TrainConfig`` before any cut;
``save_model`` writes config, live-channel layout and weights (``model.pt``), and
``load_model`` / ``model_from`` rebuild the shrunken network from such a file or from a
checkpoint (``TrainState.state_dict``), which holds the same three keys.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from trainer.config import QUANTIZED_KINDS, TrainConfig, widths
from trainer.model import ResNet9, build_model
from trainer.surgery import apply_layout


def model_for(config: TrainConfig) -> ResNet9:
    """The network a resolved ``config`` trains, before any cut (seed set by the caller)."""
    full = widths(config.full_width) if config.full_width else None
    fixed = config.kind == "fixed-bits"
    model = build_model(widths(config.width, config.kind),
                        quantized=config.kind in QUANTIZED_KINDS,
                        init_bits=config.fixed_bits if fixed else config.init_bits,
                        full_widths=full)
    for _, layer in model.quant_layers():
        if fixed:  # bit depths held; the exponents still learn
            layer.b.requires_grad_(False)
        layer.hold_range = config.hold_range and not fixed
        layer.skip_one_bit = config.skip_one_bit and not fixed
        layer.min_bits = 0.0 if fixed else config.min_bits
        layer.fade = config.fade and not fixed
    return model


def save_model(path: str | os.PathLike, state) -> None:
    """An export that rebuilds the shrunken network: config, layout and weights (of a
    ``train.TrainState``)."""
    torch.save({"config": dataclasses.asdict(state.config), "layout": state.model.layout(),
                "model": state.model.state_dict()}, path)


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> ResNet9:
    """Rebuild a network saved by ``save_model`` (or a checkpoint) with its live channels."""
    return model_from(torch.load(path, map_location=map_location, weights_only=True))


def model_from(saved: dict) -> ResNet9:
    """The network (eval mode) of a loaded ``save_model`` file or checkpoint.

    The file holds only dicts, lists, tensors and numbers (the config as a dict), so it is
    read with ``weights_only=True``: loading it never runs code from the file.
    """
    model = model_for(TrainConfig(**saved["config"]))
    apply_layout(model, saved["layout"])
    model.load_state_dict(saved["model"])
    return model.eval()
