"""One driver per sweep folder: a lock on the folder, held while its driver lives.

``python -m sweep.run`` takes an exclusive ``flock`` on ``NAME/driver.lock`` before it writes
anything in the sweep folder and holds it until it exits. The kernel drops the lock with the
process, so a ``kill -9`` leaves nothing that stops a resume. ``driver.json`` beside it says
who holds it (host, pid, since when, the command), for the one line a second driver is
refused with. A driver that ends by itself removes both files. Readers (``analysis.plots``,
``trainer.export``) take no lock.

Where ``flock`` does not reach other machines (an NFS mount with ``nolock``), a driver.json
left by a driver on another host is the only trace of it: the lock is then refused too,
until its owner says that driver is gone by deleting the file (docs/sweep.md).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from trainer.config import ConfigError

LOCK_FILE = "driver.lock"  # in the sweep folder: flock'ed by its driver
DRIVER_FILE = "driver.json"  # beside it: {"host", "pid", "since", "command"} of that driver


def this_driver() -> dict:
    """What driver.json says of this process."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def read_driver(folder: Path) -> dict | None:
    """The driver.json in ``folder``, or None when there is none (or it cannot be read)."""
    try:
        driver = json.loads((folder / DRIVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return driver if isinstance(driver, dict) else None


def running_message(folder: Path, driver: dict | None) -> str:
    """One line: who runs the sweep in ``folder``, and what to do."""
    if driver is None:
        return (f"sweep {folder.name!r} in {folder.parent} is being run by another driver (it "
                f"has not said which: no {DRIVER_FILE}): wait for it to end, or stop it "
                "(Ctrl-C, or kill PID), then --resume")
    host, pid = driver.get("host", "?"), driver.get("pid", "?")
    return (f"sweep {folder.name!r} in {folder.parent} is being run by another driver (host "
            f"{host}, pid {pid}, since {driver.get('since', '?')}): wait for it to end, or "
            f"stop it (Ctrl-C in its terminal, or kill {pid} on {host}), then --resume")


def check_free(folder: Path) -> None:
    """ConfigError naming the driver that runs the sweep in ``folder``, if one does.

    Takes nothing: this lets a second driver stop before it starts Ray; FolderLock.acquire
    is what keeps it out."""
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file: no driver (one that ended by itself removed it)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts with a driver's LOCK_EX
    except BlockingIOError:
        raise ConfigError(running_message(folder, read_driver(folder))) from None
    except OSError:  # storage without locks: acquire says so
        pass
    finally:
        os.close(fd)


class FolderLock:
    """The lock of one sweep folder, held by this process between acquire and release."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fd: int | None = None  # the open lock file while held

    def acquire(self) -> None:
        """Take the lock (making the folder) and write driver.json; ConfigError, naming the
        other driver, when one holds it. Taking it twice is taking it once."""
        if self.fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(running_message(self.folder, read_driver(self.folder))) \
                    from None
            except OSError as err:
                os.close(fd)
                raise ConfigError(f"cannot lock {path} ({err.strerror}): this storage has no "
                                  "file locks, which keep a second driver off a running "
                                  "sweep; put --results-dir on storage that has them") from None
            try:  # a driver that released it meanwhile unlinked the file we locked: again
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        self.check_left_behind()
        from sweep.config import write_text_atomic

        write_text_atomic(self.folder / DRIVER_FILE, json.dumps(this_driver(), indent=1) + "\n")

    def check_left_behind(self) -> None:
        """ConfigError (releasing the lock) when driver.json names a driver on another host
        that did not end by itself: the lock may not reach that host (NFS without locks), so
        it may still run. One on this host is gone, or it would hold the lock."""
        driver = read_driver(self.folder)
        if driver is None or driver.get("host") == socket.gethostname():
            return
        self.release(remove=False)
        raise ConfigError(
            f"{DRIVER_FILE} in {self.folder} names a driver on host {driver.get('host')} (pid "
            f"{driver.get('pid')}, since {driver.get('since')}) that did not end by itself, "
            "and file locks may not reach that host: if it no longer runs the sweep there, "
            f"delete {self.folder / DRIVER_FILE} and run this again")

    def release(self, remove: bool = True) -> None:
        """Let go of the lock; ``remove``: and remove driver.json and the lock file, which a
        driver that ends by itself leaves no trace of."""
        if self.fd is None:
            return
        if remove:  # unlinked while still held: a driver locking it meanwhile tries again
            for name in (DRIVER_FILE, LOCK_FILE):
                (self.folder / name).unlink(missing_ok=True)
        os.close(self.fd)  # closing the file drops the lock
        self.fd = None
