"""CIFAR-10 held whole on the device, augmented in batches there.

Sources, in order: ``--data-dir`` (a folder holding ``cifar-10-batches-py/``, or that
folder), else torchvision's download into a cache folder (once per machine, under a file
lock), or ``--dataset synthetic`` (a small generated set for tests). Finding and reading the
files is ``trainer.cifar10``'s (torch-free).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from trainer.cifar10 import (  # noqa: F401  (DataError: what this module's loaders raise)
    BATCH_FILES,
    TEST_FILE,
    DataError,
    default_cache,
    download,
    find_batches,
    read_batch,
)

if TYPE_CHECKING:
    from trainer.config import TrainConfig

MEAN = (125.31, 122.95, 113.87)  # per-channel pixel mean of the CIFAR-10 training set
STD = (62.99, 62.09, 66.70)
PAD = 4  # random-crop padding in pixels


def load_cifar10(data_dir: str | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test): uint8 (N, 3, 32, 32) images and int64 labels."""
    folder = find_batches(data_dir) if data_dir else download(default_cache())
    parts = [read_batch(folder / f) for f in BATCH_FILES]
    x_test, y_test = read_batch(folder / TEST_FILE)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return (torch.from_numpy(x_train), torch.from_numpy(y_train),
            torch.from_numpy(x_test), torch.from_numpy(y_test))


def load_cifar10_test(data_dir: str | None) -> tuple[Tensor, Tensor]:
    """(x_test, y_test) of CIFAR-10 alone, as ``load_cifar10`` gives them."""
    folder = find_batches(data_dir) if data_dir else download(default_cache())
    x_test, y_test = read_batch(folder / TEST_FILE)
    return torch.from_numpy(x_test), torch.from_numpy(y_test)


def test_set(config: TrainConfig, data_dir: str | None) -> tuple[Tensor, Tensor]:
    """The test images (uint8) and labels the run of ``config`` was evaluated on, on the
    host (the export and the benchmarks measure accuracy again on them)."""
    if config.dataset == "synthetic":
        x, y = make_synthetic(config.synthetic_size, config.seed)[2:]
    else:
        x, y = load_cifar10_test(data_dir or config.data_dir)
    n = config.test_subset or len(y)
    return x[:n], y[:n]


def train_sample(config: TrainConfig, data_dir: str | None, n: int) -> Tensor:
    """``n`` training images (uint8) of the run of ``config``, drawn without replacement from
    the images it trained on (its ``train_subset``), by a generator seeded with its seed:
    the same images every time (the export calibrates its int8 file on them)."""
    if config.dataset == "synthetic":
        x = make_synthetic(config.synthetic_size, config.seed)[0]
    else:
        x = load_cifar10(data_dir or config.data_dir)[0]
    x = x[:config.train_subset or len(x)]
    pick = np.random.default_rng(config.seed).choice(len(x), min(n, len(x)), replace=False)
    return x[torch.from_numpy(np.sort(pick))]


def batches(x: torch.Tensor, size: int = 1000) -> Iterator[Tensor]:
    """Normalised float32 batches of uint8 images, as the training's test batches."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    for i in range(0, len(x), size):
        yield (x[i:i + size].float() - mean) / std



def make_synthetic(n_train: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A learnable 10-class set: a smooth random template per class plus noise, as uint8."""
    g = torch.Generator().manual_seed(10_000 + seed)
    coarse = torch.rand(10, 3, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear") * 160 + 48

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = templates[y] + torch.randn(n, 3, 32, 32, generator=g) * 40
        return x.clamp(0, 255).to(torch.uint8), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(max(n_train // 4, 16))
    return x_train, y_train, x_test, y_test


@dataclass
class DeviceData:
    """The whole dataset on one device: uint8 images, padded once for random crops."""

    train_padded: Tensor  # (N, 3, 32+2*PAD, 32+2*PAD) uint8, reflect-padded
    y_train: Tensor  # (N,) int64
    x_test: Tensor  # (M, 3, 32, 32) uint8
    y_test: Tensor  # (M,)
    mean: Tensor  # (1, 3, 1, 1) float
    std: Tensor

    @property
    def n_train(self) -> int:
        return self.y_train.numel()


def _reflect_pad(x: Tensor, pad: int) -> Tensor:
    """Reflect-pad the last two dims of a uint8 tensor by indexing (F.pad wants floats)."""
    n = x.shape[-1]
    idx = torch.cat([torch.arange(pad, 0, -1), torch.arange(n),
                     torch.arange(n - 2, n - 2 - pad, -1)])
    return x.index_select(2, idx).index_select(3, idx)


def to_device(arrays: tuple[Tensor, Tensor, Tensor, Tensor], device: torch.device,
              train_subset: int = 0, test_subset: int = 0) -> DeviceData:
    """Move a (x_train, y_train, x_test, y_test) tuple to ``device``, keeping subsets."""
    x_train, y_train, x_test, y_test = arrays
    if train_subset:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    if test_subset:
        x_test, y_test = x_test[:test_subset], y_test[:test_subset]
    stat = dict(device=device, dtype=torch.float32)
    return DeviceData(train_padded=_reflect_pad(x_train, PAD).to(device),
                      y_train=y_train.to(device),
                      x_test=x_test.to(device), y_test=y_test.to(device),
                      mean=torch.tensor(MEAN, **stat).view(1, 3, 1, 1),
                      std=torch.tensor(STD, **stat).view(1, 3, 1, 1))


def normalize(x: Tensor, data: DeviceData) -> Tensor:
    return (x.float() - data.mean) / data.std


def _crop(x: Tensor, dy: Tensor, dx: Tensor, size: int = 32) -> Tensor:
    """Per-image crop of ``size`` x ``size`` at offsets (dy, dx) from (B, C, H, W), by gather."""
    ar = torch.arange(size, device=x.device)
    rows = (dy[:, None] + ar).view(-1, 1, size, 1).expand(-1, x.shape[1], -1, x.shape[3])
    x = torch.gather(x, 2, rows)  # (B, C, size, W)
    cols = (dx[:, None] + ar).view(-1, 1, 1, size).expand(-1, x.shape[1], size, -1)
    return torch.gather(x, 3, cols)  # (B, C, size, size)


def _cutout(x: Tensor, cy: Tensor, cx: Tensor, side: int) -> Tensor:
    """Zero (the mean, after normalising) a side x side square centred at (cy, cx)."""
    ar = torch.arange(x.shape[-1], device=x.device)
    inside_y = (ar[None, :] - cy[:, None]).abs() * 2 < side  # (B, H)
    inside_x = (ar[None, :] - cx[:, None]).abs() * 2 < side  # (B, W)
    square = inside_y[:, :, None] & inside_x[:, None, :]
    return x.masked_fill(square[:, None], 0.0)


def train_batches(data: DeviceData, batch_size: int, gen: torch.Generator, cutout: int,
                  channels_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of augmented (x, y) batches: random crop (pad 4), flip, cutout.

    Randomness comes from ``gen`` (a CPU generator) so a seed gives the same epoch on any
    device. The last partial batch is dropped when there is at least one full batch.
    """
    draws = epoch_draws(data.n_train, batch_size, gen)
    # (6, N) on the device in one copy per epoch: torch waits for the GPU before each copy
    # from host memory, so copies per batch kept the GPU from running ahead of the host
    packed = torch.cat([d for _, d in draws], dim=1).to(data.y_train.device)
    start = 0
    for b, _ in draws:
        idx, r, flip, centre = (packed[0, start:start + b], packed[1:3, start:start + b],
                                packed[3, start:start + b].bool(), packed[4:6, start:start + b])
        start += b
        x = _crop(data.train_padded[idx], r[0], r[1])
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = normalize(x, data)
        if cutout:
            x = _cutout(x, centre[0], centre[1], cutout)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, data.y_train[idx]


def epoch_draws(n: int, batch_size: int, gen: torch.Generator) -> list[tuple[int, Tensor]]:
    """Every batch's (size, (6, size) int64: image index, crop offsets y and x, flip, cutout
    centre y and x) of one epoch, drawn from ``gen`` batch by batch in that order."""
    perm = torch.randperm(n, generator=gen)
    draws = []
    for i in range(max(n // batch_size, 1)):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        b = idx.numel()
        r = torch.randint(0, 2 * PAD + 1, (2, b), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5
        centre = torch.randint(0, 32, (2, b), generator=gen)
        draws.append((b, torch.cat([idx[None], r, flip[None].long(), centre])))
    return draws


def test_batches(data: DeviceData, batch_size: int = 1000,
                 channels_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """The test set in order, normalised, without augmentation."""
    for i in range(0, data.y_test.numel(), batch_size):
        x = normalize(data.x_test[i:i + batch_size], data)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, data.y_test[i:i + batch_size]
