"""Training configuration: one frozen dataclass, and the presets that fill it in.

Fields left at ``None`` are taken from the preset (``paper``, ``cpu``, ``smoke``, ``demo``); a value
given explicitly always wins. ``resolve()`` returns a config with every field set.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

# compress: the method. The others are references, trained with the same recipe:
# float-baseline: no quantization; narrow-float: the same at a narrower width (sizes against
# full_width); fixed-bits: every channel held at fixed_bits bits, exponents learned, no size
# term; floor: one channel per layer (the cost of everything but the network).
KINDS = ("compress", "float-baseline", "narrow-float", "fixed-bits", "floor")
QUANTIZED_KINDS = ("compress", "fixed-bits")
DATASETS = ("cifar10", "synthetic")
PRESET_NAMES = ("paper", "cpu", "smoke", "demo", "auto")
# What a step computes in (trainer.precision): fp32, or bf16 autocast (convolutions and
# activations in bfloat16; parameters, optimizer state, quantizer and loss in float32);
# auto: bf16 on a CUDA GPU, fp32 on a CPU (also one with native bf16 units, until bf16's
# speed is measured on one: docs/train.md, "Precision"). resolve() turns auto into
# the one it chose, so a recipe.json or a checkpoint records what ran, and a later change of
# auto's rule cannot reach a sweep that began under this one.
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A user-facing configuration mistake; the CLIs print it on one line and exit 2."""


@dataclass(frozen=True)
class TrainConfig:
    # --- what to train ---
    gamma: float = 0.01  # weight of the size term: loss = CE + gamma * Q, Q in bits/weight
    kind: str = "compress"  # one of KINDS (above): the method or a reference
    preset: str = "auto"  # paper | cpu | smoke | demo | auto (paper on a GPU, else cpu)
    seed: int = 0  # seeds weight init, data order and augmentation
    init_from: str | None = None  # start from this trained float network (its model.pt or a
    #   checkpoint; trainer.network.read_start) instead of random weights, with the preset's
    #   recipe for a trained start (START_RECIPES)
    # --- filled in by the preset when None ---
    epochs: int | None = None  # passes over the training set
    width: float | None = None  # channel multiplier on 64-128-256-512 (1.0 = Page's ResNet-9)
    full_width: float | None = None  # width whose weights (N0) sizes are measured against
    #   (None: the trial's own width); a narrow reference sets the preset's width here
    fixed_bits: float | None = None  # fixed-bits kind only: the bit depth every channel keeps
    batch_size: int | None = None  # images per step
    lr: float | None = None  # peak SGD learning rate of the weights (piecewise-linear schedule)
    lr_quant: float | None = None  # peak Adam learning rate of bit depths b and exponents e
    warmup_fraction: float | None = None  # fraction of training spent ramping the lr up from 0
    train_subset: int | None = None  # use the first N training images (0 = all)
    test_subset: int | None = None  # evaluate on the first N test images (0 = all)
    # --- method ---
    init_bits: float = 8.0  # initial bit depth b of every channel
    lr_exp: float | None = None  # peak Adam learning rate of the exponents e (None: lr_quant)
    gamma_ramp: float | None = None  # fraction of training over which gamma ramps up
    #   linearly from 0 (0 = off; the cpu preset: 0.5, docs/ablation.md)
    snap_bits: bool = True  # after the last step, store each b in the smallest form that
    #   gives the same weights (b in (k, ~k+0.3) -> k): same network, ceil(b) one bit less
    half_exponents: bool = True  # after the last step (with snap_bits, before the final
    #   test), round every exponent e to the nearest float16, which an export stores in 2 bytes
    integer_exponents: bool = True  # after half_exponents (before the final test), round
    #   every conv exponent to an integer, which an export stores in 1 byte, and fold the
    #   factor 2^(e - round(e)) into the BatchNorm that follows: the same eval-mode network
    skip_one_bit: bool = True  # a b falling into the one-bit zone (0, 1.58), where the
    #   quantizer holds only {-1, 0}, goes to 0 at once: the channel dies (is drained and cut)
    #   instead of crossing it as a one-sign channel (docs/method.md §2, docs/ablation.md)
    min_bits: float = 3.0  # a b falling below this goes to 0 (the channel dies): live
    #   channels keep at least 3 bits, so the size term buys cut channels rather than coarser
    #   ones (0: only skip_one_bit's 1.58; docs/method.md §2, docs/ablation.md)
    fade: bool = False  # with min_bits >= 2: a b that falls below the floor fades the
    #   channel out over one bit (a gate b - (min_bits - 1) on its BatchNorm's output, which
    #   the cross-entropy sees) instead of dying at once; folded away after the last step
    ration: float | None = None  # the largest share of a conv's live channels that may die
    #   in one epoch: the rest of those whose b falls below the floor wait at it, the highest
    #   b first (1: no limit; the cpu preset: 0.5, docs/method.md §2)
    hold_range: bool = True  # learn (b, clipping range e+b-1) instead of (b, e): the size
    #   term then drops low-order bits instead of clipping the largest weights (docs/method.md §2)
    size_term: str = "bits"  # what Q counts: bits (storage) | bops (bits x uses per image)
    momentum: float = 0.9  # SGD Nesterov momentum of the weights
    weight_decay: float = 5e-4  # L2 on weights and BatchNorm parameters (not on b, e)
    label_smoothing: float = 0.2  # cross-entropy label smoothing (Page's recipe)
    dead_l1: float = 0.05  # L1 weight on 0-bit channels' constant output: drains it to 0
    cut_every: int = 10  # check for cuttable channels every N steps (and at every epoch end)
    cut_align: int = 1  # cuts leave each conv a multiple of this many channels (8: what a
    #   GPU's bf16 convolutions take in one group; 1: cut every dead channel at once)
    # --- data and device ---
    dataset: str = "cifar10"  # cifar10 | synthetic (small generated set for tests)
    data_dir: str | None = None  # holds cifar-10-batches-py/ (or is it); None = download cache
    synthetic_size: int = 2048  # training images of the synthetic set (test set: a quarter)
    cutout: int = 8  # side of the cutout square in pixels (0 = off)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # what a step computes in: fp32 | bf16 (autocast) | auto (bf16 on
    #   a GPU, fp32 on a CPU); resolve() replaces auto by the one chosen (PRECISIONS, above)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    cuda_graphs: bool = False  # a CUDA GPU only: capture the training step in a CUDA graph,
    #   re-captured after each cut (trainer.graphs); unmeasured, so not on the CLI yet:
    #   benchmarks.gpu_check --cuda-graphs runs it

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Presets fill only the fields that are None. Numbers chosen from measurement: docs/train.md.
PRESETS: dict[str, dict] = {
    # Page's DAWNBench recipe at full width; ~10 s/epoch-scale work on a modern GPU.
    "paper": dict(epochs=24, width=1.0, batch_size=512, lr=0.4, lr_quant=0.02,
                  warmup_fraction=5 / 24, gamma_ramp=0.0, ration=1.0, train_subset=0,
                  test_subset=0),
    # Quarter width and few epochs: a full-CIFAR-10 trial in about 10 minutes on 2 CPU cores.
    # γ ramps up over the first half: the same front as without, and no cliff up to γ 0.1
    # (docs/ablation.md, "γ ramped over the first half"); a conv loses at most half its live
    # channels per epoch: past 0.1 the accuracy falls gradually instead of over a cliff
    # (docs/ablation.md, "A ration on each conv's deaths").
    "cpu": dict(epochs=5, width=0.25, batch_size=512, lr=0.4, lr_quant=0.05,
                warmup_fraction=0.2, gamma_ramp=0.5, ration=0.5, train_subset=0, test_subset=0),
    # Seconds: tiny network on a slice of the data, for tests and a first look.
    "smoke": dict(epochs=2, width=0.125, batch_size=256, lr=0.4, lr_quant=0.05,
                  warmup_fraction=0.2, gamma_ramp=0.0, ration=1.0, train_subset=4096,
                  test_subset=1024),
    # The first look: smoke's network and data, one more epoch and a quantizer that learns
    # ten times faster, so that a sweep over gamma 3e-3..0.3 (its default range) spans
    # 100 % accuracy at about 15 % of the bits down to chance below 0.1 % (docs/train.md).
    "demo": dict(epochs=3, width=0.125, batch_size=256, lr=0.4, lr_quant=0.5,
                 warmup_fraction=0.2, gamma_ramp=0.0, ration=1.0, train_subset=4096,
                 test_subset=1024),
}


# What a run that starts from a trained float network (--init-from) changes in its preset:
# the float features exist, so fewer epochs compress them (docs/ablation.md, "Compressing a
# trained network"). A field given explicitly still wins. Presets not listed: unchanged.
START_RECIPES: dict[str, dict] = {
    "cpu": dict(epochs=3),
    "smoke": dict(epochs=1),
    "demo": dict(epochs=2),
}
# Kinds a trained float network can start: those of its widths (narrow-float and floor
# trials have other widths and train from scratch).
STARTABLE_KINDS = ("compress", "fixed-bits", "float-baseline")


def ramp_words(c: TrainConfig) -> str:
    """How the size term's weight is ramped, for a start line ("" when it is not)."""
    return f"ramped up over the first {c.gamma_ramp:.0%} of steps" if c.gamma_ramp else ""


def ration_words(c: TrainConfig) -> str:
    """How a conv's deaths are rationed, for a start line ("" when they are not)."""
    if c.ration is None or c.ration >= 1:
        return ""
    return f"at most {c.ration:.0%} of a conv's live channels die per epoch"


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def auto_precision(has_gpu: bool) -> str:
    """What ``--precision auto`` computes in: bf16 on a CUDA GPU, fp32 on any CPU (native
    bf16 or not, until bf16's speed is measured on one: docs/train.md, "Precision")."""
    return "bf16" if has_gpu else "fp32"


def resolve(config: TrainConfig, has_gpu: bool | None = None) -> TrainConfig:
    """Validate ``config`` and fill every ``None`` field from its preset.

    ``preset="auto"`` becomes ``paper`` when a GPU is usable, else ``cpu``;
    ``precision="auto"`` becomes ``bf16`` when a GPU is usable, else ``fp32``.
    Raises ConfigError with a message that says what to do.
    """
    if config.preset not in PRESET_NAMES:
        raise ConfigError(
            f"unknown preset {config.preset!r}: choose one of {', '.join(PRESET_NAMES)}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {config.precision!r}: choose auto (bf16 on a "
                          "GPU, fp32 on a CPU), fp32 or bf16")
    preset = config.preset
    if (preset == "auto" or config.precision == "auto") and has_gpu is None:
        has_gpu = gpu_available() and config.device != "cpu"
    if preset == "auto":
        preset = "paper" if has_gpu else "cpu"
    if config.precision == "auto":
        config = config.replace(precision=auto_precision(has_gpu))
    if config.fade and config.ration is None:  # the preset's ration is for channels that die
        config = config.replace(ration=1.0)   # at the floor, not for those that fade below it
    recipe = {**PRESETS[preset], **(START_RECIPES.get(preset, {}) if config.init_from else {})}
    filled = {k: v for k, v in recipe.items() if getattr(config, k) is None}
    config = config.replace(preset=preset, **filled)
    if config.kind == "narrow-float" and config.full_width is None:
        # A narrow reference is measured against the network the preset compresses.
        config = config.replace(full_width=PRESETS[preset]["width"])
    validate(config)
    return config


def validate(c: TrainConfig) -> None:
    """Raise ConfigError on values no training run can use."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(c.kind in KINDS, f"unknown kind {c.kind!r}: choose one of {', '.join(KINDS)}")
    need(c.dataset in DATASETS,
         f"unknown dataset {c.dataset!r}: choose one of {', '.join(DATASETS)}")
    need(math.isfinite(c.gamma) and c.gamma >= 0,
         f"--gamma must be a number >= 0, got {c.gamma}: try --gamma 0.01")
    need(c.epochs is not None and (c.epochs >= 1 or c.epochs == 0 and c.init_from),
         f"--epochs must be at least 1 (0 with --init-from: measure the loaded network), "
         f"got {c.epochs}")
    need(c.width is not None and c.width > 0 and math.isfinite(c.width),
         f"--width must be > 0, got {c.width}: 1.0 is Page's 64-128-256-512 ResNet-9")
    need(c.batch_size is not None and c.batch_size >= 1,
         f"--batch-size must be at least 1, got {c.batch_size}")
    need(c.lr is not None and c.lr > 0, f"--lr must be > 0, got {c.lr}")
    need(c.lr_quant is not None and c.lr_quant >= 0, f"--lr-quant must be >= 0, got {c.lr_quant}")
    need(0 < c.init_bits <= 32, f"--init-bits must be in (0, 32], got {c.init_bits}")
    need(0 <= c.min_bits <= 16 and math.isfinite(c.min_bits),
         f"--min-bits must be in [0, 16], got {c.min_bits}: e.g. --min-bits 3")
    need(c.kind != "compress" or c.min_bits == 0 or c.min_bits < c.init_bits,
         f"--init-bits {c.init_bits:g} is not above --min-bits {c.min_bits:g}: every channel "
         "would die at the first step; lower --min-bits (0 turns it off) or raise --init-bits")
    need(not c.fade or c.min_bits >= 2,
         f"--fade needs a floor of at least 2 bits to fade below, got --min-bits "
         f"{c.min_bits:g}: e.g. --min-bits 3 --fade")
    need(0 < c.ration <= 1 and math.isfinite(c.ration),
         f"--ration must be in (0, 1], got {c.ration}: e.g. --ration 0.5 (1: no limit)")
    need(c.ration == 1 or not c.fade,
         f"--ration {c.ration:g} and --fade are two ways to slow a layer's deaths: choose one "
         "(--fade with --ration 1)")
    need(c.lr_exp is None or c.lr_exp >= 0, f"--lr-exp must be >= 0, got {c.lr_exp}")
    need(c.size_term in ("bits", "bops"),
         f"unknown --size-term {c.size_term!r}: choose bits (storage) or bops (compute)")
    need(0 <= c.gamma_ramp <= 1, f"--gamma-ramp must be in [0, 1], got {c.gamma_ramp}")
    need(c.full_width is None or (c.full_width > 0 and math.isfinite(c.full_width)),
         f"--full-width must be > 0, got {c.full_width}")
    need((c.kind == "fixed-bits") == (c.fixed_bits is not None),
         "--fixed-bits N goes with the fixed-bits kind (and it needs one): "
         "e.g. --kind fixed-bits --fixed-bits 4")
    need(c.fixed_bits is None or 1 <= c.fixed_bits <= 32,
         f"--fixed-bits must be in [1, 32], got {c.fixed_bits}")
    need(c.warmup_fraction is not None and 0 <= c.warmup_fraction < 1,
         f"warmup_fraction must be in [0, 1), got {c.warmup_fraction}")
    need(c.cut_every >= 1, f"--cut-every must be at least 1, got {c.cut_every}")
    need(c.cut_align >= 1, f"--cut-align must be at least 1, got {c.cut_align}: e.g. 8 on a GPU")
    need(c.precision in PRECISIONS[1:],
         f"precision must be fp32 or bf16 once resolved, got {c.precision!r}")
    need(c.threads >= 0, f"--threads must be >= 0 (0: torch's choice), got {c.threads}")
    need(c.init_from is None or c.kind in STARTABLE_KINDS,
         f"--init-from starts a network of the trained one's widths; a {c.kind} trial has "
         f"others: drop --init-from, or train one of {', '.join(STARTABLE_KINDS)}")
    need(c.synthetic_size >= 16, f"--synthetic-size must be at least 16, got {c.synthetic_size}")
    need((c.train_subset or 0) >= 0 and (c.test_subset or 0) >= 0,
         "--train-subset / --test-subset must be >= 0 (0 = all)")


def check_writable_folder(path: str | Path, flag: str) -> None:
    """ConfigError unless ``path`` is a folder that exists and can be written, or one that
    can be made: its nearest existing parent is a writable folder. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file: give a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path} cannot be written: give a folder you can write")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path} cannot be made: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} cannot be made: {parent} cannot be written")


def widths(width: float, kind: str = "compress") -> tuple[int, int, int, int]:
    """Channel counts of prep, layer1, layer2, layer3 for a width multiplier."""
    if kind == "floor":
        return (1, 1, 1, 1)
    return tuple(max(1, round(c * width)) for c in (64, 128, 256, 512))  # type: ignore[return-value]
