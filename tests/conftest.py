"""Shared test helpers: where the real CIFAR-10 copy lives, if anywhere; one torch thread
per test process when several share the machine."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The test processes (pyproject's -n) and the Ray trials they start share the cores:
    # one torch thread each, set before torch is imported, so that they take turns on the
    # cores instead of spinning against each other. Subprocesses inherit it; a trial sets
    # its own count (the CPUs Ray gave it).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def cifar_dir() -> Path:
    """The CIFAR-10 copy beside the repo (../shared/data); skip the test when absent."""
    if not (SHARED_DATA / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"no CIFAR-10 copy at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_head(tmp_path_factory):
    """One ``ray start --head`` cluster per test process (no authentication, no dashboard)
    for the tests that attach their sweeps with ``--address``: ``(env, address)``. Each of
    them is spared starting a cluster (about 10 CPU-seconds on two cores), and both test
    processes take such tests (one head each: a group pinned to one process made them the
    suite's longest queue); the tests of embedded clusters (the smoke sweep, the
    SIGTERM/SIGKILL sweep, the failing trials, bad input) still start their own, with two
    trials at a time. This one offers one CPU: its sweeps run their trials one after
    another in one worker process, which imports torch once instead of twice (about 4
    CPU-seconds)."""
    from tests.test_sweep import free_port, ray_environment, start_head, stop_head

    root = tmp_path_factory.mktemp("shared-head")
    with ray_environment(root) as env:
        port = free_port()
        head = start_head(env, port, cpus=1)
        try:
            yield env, f"127.0.0.1:{port}"
        finally:
            stop_head(head, env)


@pytest.fixture(scope="session")  # built once per process, however its tests interleave
def smoke(tmp_path_factory):
    """One real smoke sweep (2 gammas and the references, MLflow on), shared by the tests
    that read what it wrote (the ``smoke-sweep`` group): ``(folder, stdout, stderr)``."""
    from tests.test_sweep import SMOKE, ray_environment, sweep

    root = tmp_path_factory.mktemp("smoke")
    with ray_environment(root) as env:
        out = sweep(env, root, *SMOKE, "--num-samples", "2", "--name", "smoke",
                    "--results-dir", "results",  # relative: trials run in their own folders
                    "--mlflow")
    return root / "results" / "smoke", out.stdout, out.stderr
