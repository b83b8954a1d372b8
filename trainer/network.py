"""The network a config trains, and its files: ``model.pt`` and checkpoints rebuilt.

``model_for`` builds the ResNet-9 of a resolved ``TrainConfig`` before any cut;
``save_model`` writes config, live-channel layout and weights (``model.pt``), and
``load_model`` / ``model_from`` rebuild the shrunken network from such a file or from a
checkpoint (``TrainState.state_dict``), which holds the same three keys. ``read_start`` and
``load_start`` give a run the weights of a trained float network to start from (--init-from).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

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


START_FILES = ("model.pt", "state.pt")  # what --init-from looks for in a folder: a run's
#   --out, or a sweep trial's checkpoint folder (sweep.checkpoints.STATE_FILE)


def read_start(path: str | os.PathLike, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The float weights (a state dict) that ``config`` starts from: ``path`` is a float
    network's ``model.pt``, a checkpoint of this project, a folder holding one, or a plain
    PyTorch state dict of the float ResNet-9. ConfigError, on one line, for anything
    else: a missing or unreadable file, a quantized or cut network, other widths."""
    from trainer.config import ConfigError

    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in START_FILES if (path / name).is_file()]
        if not found:
            raise ConfigError(f"--init-from {path}: the folder holds no {' or '.join(START_FILES)}"
                              ": give a --float-baseline run's model.pt")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"--init-from {path}: no such file: give a --float-baseline run's "
                          "model.pt (python -m trainer.train --float-baseline --out DIR)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, cut short, or holding code
        raise ConfigError(f"--init-from {path} cannot be read as a PyTorch file "
                          f"({type(err).__name__}): give a --float-baseline run's model.pt") \
            from None
    if isinstance(saved, dict) and "model" in saved and "config" in saved:
        kind = saved["config"].get("kind")
        if kind != "float-baseline":
            raise ConfigError(f"--init-from {path} holds a {kind} network; it takes a float "
                              "one: a --float-baseline run's model.pt")
        weights = saved["model"]
    elif isinstance(saved, dict) and saved and all(torch.is_tensor(v) for v in saved.values()):
        weights = saved  # a plain state dict, e.g. a ResNet-9 of this shape trained elsewhere
    else:
        raise ConfigError(f"--init-from {path} is neither a model.pt, a checkpoint nor a "
                          "state dict of a ResNet-9: give a --float-baseline run's model.pt")
    check_start(path, weights, config)
    return weights


def float_keys(config: TrainConfig) -> dict[str, torch.Size]:
    """Name and shape of every entry of the float state dict of ``config``'s network."""
    float_config = config.replace(kind="float-baseline", fixed_bits=None, init_from=None)
    return {k: v.shape for k, v in model_for(float_config).state_dict().items()}


def check_start(path: Path, weights: dict[str, torch.Tensor], config: TrainConfig) -> None:
    """ConfigError unless ``weights`` are the uncut float network ``config`` trains."""
    from trainer.config import ConfigError

    want = float_keys(config)
    quantized = sorted(k for k in weights if k.endswith((".b", ".e")))
    if quantized:
        raise ConfigError(f"--init-from {path} holds quantized layers ({quantized[0]}); it "
                          "takes a float network: a --float-baseline run's model.pt")
    missing = sorted(set(want) - set(weights))
    extra = sorted(set(weights) - set(want))
    if missing or extra:
        name = (missing or extra)[0]
        raise ConfigError(f"--init-from {path} is not a ResNet-9 of this project ("
                          f"{'no' if missing else 'an unknown'} entry {name!r}): give a "
                          "--float-baseline run's model.pt")
    shapes = [k for k in want if tuple(weights[k].shape) != tuple(want[k])]
    if shapes:
        have = width_of(weights)
        need_w = "-".join(map(str, widths(config.width, config.kind)))
        raise ConfigError(f"--init-from {path} holds a ResNet-9 of widths {have}, this run "
                          f"trains {need_w}: give the run's --width, or a network of this width")
    idx = [k for k in want if k.endswith(("out_idx", "in_idx"))]
    if any(not torch.equal(weights[k], torch.arange(len(weights[k]))) for k in idx):
        raise ConfigError(f"--init-from {path} holds a network with channels cut: it takes an "
                          "uncut float network (a --float-baseline run's model.pt)")


def width_of(weights: dict[str, torch.Tensor]) -> str:
    """E.g. ``16-32-64-128``: the output channels of prep, layer1, layer2, layer3."""
    names = ("prep", "layer1", "layer2", "layer3")
    return "-".join(str(weights[f"{n}.conv.weight"].shape[0]) if f"{n}.conv.weight" in weights
                    else "?" for n in names)


@torch.no_grad()
def load_start(model: ResNet9, weights: dict[str, torch.Tensor]) -> None:
    """Load a float network's ``weights`` into ``model`` (fresh, of the same widths): every
    weight, bias, BatchNorm statistic and the head; each quantized channel keeps its bit
    depth b and takes the exponent e that fits its loaded weights (quant.initial_exponent),
    so the quantized network starts computing what the float one computes."""
    from trainer.quant import initial_exponent

    result = model.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # check_start ran
    assert all(k.endswith((".b", ".e")) for k in result.missing_keys), result.missing_keys
    for _, layer in model.quant_layers():
        if layer.quantized:
            layer.e.copy_(initial_exponent(layer.weight, float(layer.b.max())))
