"""Shared test helpers: where the real CIFAR-10 copy lives, if anywhere."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def cifar_dir() -> Path:
    """The CIFAR-10 copy beside the repo (../shared/data); skip the test when absent."""
    if not (SHARED_DATA / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"no CIFAR-10 copy at {SHARED_DATA}")
    return SHARED_DATA
