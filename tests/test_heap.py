"""A CPU training process serves large tensors from the heap (trainer/heap.py, glibc only)."""

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


def mmapped_bytes(train: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE.format(train=train)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def test_a_cpu_training_process_keeps_large_tensors_on_the_heap():
    assert mmapped_bytes("") >= 64 << 20  # glibc's default: a fresh mapping
    assert mmapped_bytes(TRAIN) == 0  # after train() on a CPU: from the heap


def test_keep_freed_memory_says_it_applied():
    code = "from trainer.heap import keep_freed_memory\nassert keep_freed_memory()"
    assert mmapped_bytes(code) == 0
