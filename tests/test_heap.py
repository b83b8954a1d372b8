"""A CPU training process serves large tensors from the heap (trainer/heap.py, glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's malloc")

# Prints how many bytes glibc serves by mmap for a fresh 64 MiB tensor, after TRAIN (code).
PROBE = """
import ctypes, torch
{train}
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblkhd
t = torch.empty(64 << 20, dtype=torch.uint8)
print(libc.mallinfo2().hblkhd - before)
"""
TRAIN = ("from trainer.config import TrainConfig\nfrom trainer.train import train\n"
         "train(TrainConfig(preset='smoke', dataset='synthetic', epochs=1, device='cpu', "
         "synthetic_size=64), verbose=False)")


def mmapped_bytes(train: str, env: dict | None = None, thread: bool = False) -> int:
    """What PROBE prints in a fresh process (``thread``: PROBE run in a second thread, as
    Ray Tune runs a trial), with ``env`` as its environment (None: this one's)."""
    code = PROBE.format(train=train)
    if thread:  # the whole probe, training included, in a thread of its own
        code = ("import threading\ndef probe():\n" + "".join(
            f"    {line}\n" for line in code.strip().splitlines())
            + "t = threading.Thread(target=probe)\nt.start()\nt.join()\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env).stdout
    return int(out.strip().splitlines()[-1])


def test_a_cpu_training_process_keeps_large_tensors_on_the_heap():
    assert mmapped_bytes("") >= 64 << 20  # glibc's default: a fresh mapping
    assert mmapped_bytes(TRAIN) == 0  # after train() on a CPU: from the heap


def test_keep_freed_memory_says_it_applied():
    code = "from trainer.heap import keep_freed_memory\nassert keep_freed_memory()"
    assert mmapped_bytes(code) == 0


def test_in_a_thread_it_takes_one_malloc_arena_from_the_start():
    from trainer.heap import WORKER_ENV

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert mmapped_bytes(TRAIN, env=clean, thread=True) >= 64 << 20  # the thread's own arena
    assert mmapped_bytes(TRAIN, env={**clean, **WORKER_ENV}, thread=True) == 0
