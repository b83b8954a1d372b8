"""The Ray cluster a sweep runs on: an embedded local one, or a running one it attaches to.

Embedded: the driver starts Ray itself, with the dashboard on 127.0.0.1 and Ray's token
authentication on (the default for a new local cluster). Ray 2.60 binds its other ports
(GCS, raylet, object manager, metrics) on every interface whatever node address it is
given (it rewrites 127.0.0.1 to the machine's IP), so the token is what guards them.
Attached (``--address`` or ``RAY_ADDRESS``): the driver first checks that something answers
there and which authentication the cluster uses, so that a wrong address is a one-line
error instead of a 40-second hang, and the client's auth mode matches the cluster's (a
mismatch either fails to connect or, the other way round, kills every trial's actor).
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sweep.cli import PROG
from sweep.config import SweepConfig
from trainer.config import ConfigError
from trainer.heap import WORKER_ENV

LOOPBACK = "127.0.0.1"
PROBE_TIMEOUT_S = 3.0  # TCP connect timeout when checking --address
GPU_SHARE = 0.25  # default GPUs per trial: four ResNet-9 trials share one GPU (not measured here)
MAX_AUTO_CPUS = 4  # default CPUs per GPU trial at most: the data already lives on the GPU


@dataclass(frozen=True)
class Cluster:
    """What the sweep tells the user about the cluster it runs on."""

    embedded: bool  # started by this driver, stops with it
    dashboard_url: str  # host:port, "" when the cluster has no dashboard
    token_auth: bool  # Ray token authentication on


def connect(address: str | None, dashboard: bool = True) -> Cluster:
    """``ray.init`` an embedded cluster (with its dashboard unless ``dashboard`` is False), or
    attach to ``address`` (else $RAY_ADDRESS)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and not dashboard:
        raise ConfigError("--no-dashboard is for the cluster a sweep starts; one it attaches to "
                          f"({address}, from --address or $RAY_ADDRESS) has its own (`ray "
                          "start --include-dashboard false`)")
    return attach(address) if address else embed(dashboard)


def embed(dashboard: bool = True) -> Cluster:
    """Start a local cluster, its dashboard on loopback; the token guards the rest.

    A minimal Ray (``pip install ray``, not ``ray[default]``) has no dashboard: the cluster
    then runs without one, as ``dashboard_message`` says. Its processes start with
    ``trainer.heap.WORKER_ENV`` (one malloc arena), so a CPU trial's large tensors stay on
    the heap although Tune runs it outside the worker's main thread.
    """
    import ray

    worker_environment()
    context = ray.init(address="local", include_dashboard=dashboard and has_dashboard(),
                       dashboard_host=LOOPBACK)
    restrict_token_file()
    return Cluster(True, context.dashboard_url or "", auth_mode() == "token")


def worker_environment() -> None:
    """``trainer.heap.WORKER_ENV`` into this process's environment, which the cluster it
    starts and its workers inherit; a value the user set stays."""
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)


def has_dashboard() -> bool:
    """Whether this Ray install can run its dashboard (``ray[default]``'s packages)."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


def attach(address: str) -> Cluster:
    """Attach to a running cluster, raising ConfigError when that cannot work."""
    import ray

    if address.startswith("ray://"):
        raise ConfigError(f"--address {address}: Ray Client addresses are not supported; pass "
                          "the host:port that `ray start --head` printed (port 6379 by default)")
    if address != "auto":
        check_reachable(address)
        set_auth_mode(probe_auth(address))
    try:
        context = ray.init(address=address)
    except (ConnectionError, RuntimeError) as err:
        raise ConfigError(f"could not attach to a Ray cluster at {address} ({first_line(err)}): "
                          "start one with `ray start --head`, or fix --address") from None
    return Cluster(False, context.dashboard_url or "", auth_mode() == "token")


@contextmanager
def held_back_ray_logs() -> Iterator[None]:
    """Hold Ray's start-up lines (token, dashboard) until the block ends without an error.

    Ray logs them to stderr through its ``ray`` logger when ``ray.init`` starts or attaches.
    A sweep that then stops on bad input (a one-line error, exit 2) drops them, so its
    error stands alone; otherwise they are shown when the block ends.
    """
    ray_log = logging.getLogger("ray")
    handlers = ray_log.handlers[:]
    held = logging.handlers.BufferingHandler(capacity=10_000)
    for handler in handlers:
        ray_log.removeHandler(handler)
    ray_log.addHandler(held)
    try:
        yield
    except BaseException:
        held.buffer.clear()
        raise
    finally:
        ray_log.removeHandler(held)
        for handler in handlers:
            ray_log.addHandler(handler)
        for record in held.buffer:
            ray_log.handle(record)


def check_reachable(address: str) -> None:
    """Something must accept TCP connections at ``host:port``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not host:port: pass the address that "
                          "`ray start --head` printed, e.g. 192.168.1.10:6379")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(f"no Ray cluster answers at {address} ({err.strerror or err}): start "
                          "one there with `ray start --head`, or fix --address / RAY_ADDRESS"
                          ) from None


def probe_auth(address: str) -> str:
    """``disabled`` or ``token``: the authentication the cluster at ``address`` uses."""
    from ray._raylet import AuthenticationTokenLoader, GcsClient
    from ray.exceptions import AuthenticationError

    for mode in ("disabled", "token"):
        if mode == "token" and not AuthenticationTokenLoader.instance().has_token(
                ignore_auth_mode=True):
            raise ConfigError(f"the Ray cluster at {address} uses token authentication and this "
                              "machine has no token: run `ray get-auth-token` on its head node "
                              "and put the token in ~/.ray/auth_token (or $RAY_AUTH_TOKEN)")
        set_auth_mode(mode)
        try:
            GcsClient(address=address)
            return mode
        except AuthenticationError:
            continue
        except Exception as err:  # an RpcError: something answers, but not a Ray GCS
            raise ConfigError(f"{address} answers but not as a Ray cluster ({first_line(err)}): "
                              "pass the address that `ray start --head` printed") from None
    raise ConfigError(f"the Ray cluster at {address} rejected this machine's token: put the "
                      "token that `ray get-auth-token` prints on its head node in "
                      "~/.ray/auth_token (or $RAY_AUTH_TOKEN)")


def set_auth_mode(mode: str) -> None:
    """Make this process (and ray.init) use ``mode``, as ``RAY_AUTH_MODE`` would."""
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = mode
    Config.initialize("")  # Ray caches its config; re-read the variable


def auth_mode() -> str:
    return os.environ.get("RAY_AUTH_MODE", "disabled").lower()


def restrict_token_file() -> None:
    """Ray writes a new ~/.ray/auth_token world-readable (umask 022): make it owner-only."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.is_file() and path.stat().st_mode & 0o077:
        path.chmod(0o600)


def dashboard_message(cluster: Cluster) -> str:
    """Which cluster runs the sweep, where its dashboard is and how to get in."""
    auth = "token authentication on" if cluster.token_auth else "no authentication"
    where = "a local Ray cluster" if cluster.embedded else "the running Ray cluster"
    lines = [f"{PROG}: trials run on {where} ({auth})"]
    if not cluster.dashboard_url:
        hint = "" if has_dashboard() or not cluster.embedded else (
            ": install ray[default] for one")
        return "\n".join([*lines, f"  it runs no dashboard{hint}"])
    lines.append(f"  Ray dashboard: http://{cluster.dashboard_url}")
    if cluster.token_auth:
        lines.append("  it asks for a token: paste what `ray get-auth-token` prints")
    if cluster.dashboard_url.startswith(LOOPBACK):
        port = cluster.dashboard_url.rpartition(":")[2]
        lines.append(f"  from another machine: ssh -N -L {port}:{LOOPBACK}:{port} "
                     f"{socket.gethostname()}, then open http://localhost:{port}")
    return "\n".join(lines)


def trial_resources(c: SweepConfig, total: dict, nodes: list[dict]) -> tuple[float, float]:
    """``(cpus, gpus)`` per trial: the ones given, else chosen from the cluster's resources.

    ``total`` is ``ray.cluster_resources()``; ``nodes`` the ``Resources`` of each live node.
    A trial must fit on one node, or Tune would leave it pending forever.
    """
    gpus_total = total.get("GPU", 0.0)
    gpus = c.gpus_per_trial if c.gpus_per_trial is not None else (
        GPU_SHARE if gpus_total else 0.0)
    biggest = {r: max((n.get(r, 0.0) for n in nodes), default=0.0) for r in ("CPU", "GPU")}
    if gpus > biggest["GPU"] or (gpus > 1 and gpus != int(gpus)):
        raise ConfigError(f"--gpus-per-trial {gpus:g} does not fit this cluster (largest node "
                          f"has {biggest['GPU']:g} GPUs): use --gpus-per-trial 0 on CPUs, a "
                          "fraction below 1 or a whole number of GPUs")
    if c.cpus_per_trial is not None:
        cpus = c.cpus_per_trial
    elif gpus:
        slots = gpus_total / gpus  # trials running at once, all GPUs busy
        cpus = float(max(1, min(MAX_AUTO_CPUS, math.floor(total.get("CPU", 1) / slots))))
    else:
        cpus = 1.0  # one thread per trial: more trials at once beat more threads per trial
    if cpus > biggest["CPU"]:
        raise ConfigError(f"--cpus-per-trial {cpus:g} does not fit this cluster (largest node "
                          f"has {biggest['CPU']:g} CPUs): ask for fewer")
    return cpus, gpus


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
