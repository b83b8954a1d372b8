"""CIFAR-10's files: where they are, a download into a cache folder, and reading a batch.

No torch here, so a sweep's driver can refuse bad data (``check_cifar10``) without importing
it; ``trainer.data`` turns the arrays into tensors. The python-version pickles are read
directly, so copies whose md5 sums differ from the original still load.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"


class DataError(RuntimeError):
    """The data cannot be found or read; the message says what to do."""


def default_cache() -> Path:
    return Path(os.environ.get("SCNN_DATA_CACHE", Path.home() / ".cache" / "scnn"))


def find_batches(data_dir: str | os.PathLike) -> Path:
    """The ``cifar-10-batches-py`` folder at or under ``data_dir``, or DataError."""
    root = Path(data_dir).expanduser().resolve()
    for folder in (root / FOLDER, root):
        if all((folder / f).is_file() for f in [*BATCH_FILES, TEST_FILE]):
            return folder
    raise DataError(f"--data-dir {data_dir} does not hold CIFAR-10: expected {FOLDER}/ with "
                    f"{', '.join(BATCH_FILES)} and {TEST_FILE} (the python version from "
                    "https://www.cs.toronto.edu/~kriz/cifar.html); or omit --data-dir to "
                    "download it")


def download(cache: Path) -> Path:
    """Download CIFAR-10 once into ``cache`` (guarded by a file lock: trials start at once)."""
    from filelock import FileLock
    from torchvision.datasets import CIFAR10

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".cifar10.lock")):
        try:
            return find_batches(cache)
        except DataError:
            pass
        try:
            CIFAR10(str(cache), train=True, download=True)
        except Exception as err:  # offline, proxy, disk full: all end the same way
            raise DataError(f"could not download CIFAR-10 into {cache} ({err}); pass "
                            "--data-dir with a local copy of cifar-10-batches-py/") from err
    return find_batches(cache)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        return x, y
    except Exception as err:
        raise DataError(f"cannot read {path} as a CIFAR-10 batch ({err}): "
                        "replace the file with an intact copy") from err


def check_cifar10(data_dir: str | None) -> Path:
    """The ``cifar-10-batches-py`` folder, every batch read as training reads it.

    Raises DataError for whatever ``load_cifar10`` would reject, so a sweep can refuse bad
    data in its driver (a few seconds) instead of failing every trial. Without ``data_dir``
    it downloads into the cache first, as training does.
    """
    folder = find_batches(data_dir) if data_dir else download(default_cache())
    for name in [*BATCH_FILES, TEST_FILE]:
        read_batch(folder / name)
    return folder
