"""Keep a CPU training step's large tensors on the heap (glibc), instead of fresh pages.

glibc's malloc serves every block above its mmap threshold (at most 32 MB) with a fresh
mmap and unmaps it when freed. A `cpu`-preset step at batch 512 allocates and frees many
tensors above that size every step (a 32-channel 32x32 activation is 67 MB, and its
gradient, its BatchNorm and ReLU outputs as many), so each of them comes back as new
pages that the kernel faults in and zeroes: a copy of such a tensor ran at 2 GB/s here,
against 9 GB/s with the memory kept. With mmap off and a high trim threshold, freed blocks
stay in the heap and the next step reuses them (the retired ``benchmarks.heap`` measured
the step: docs/benchmarks-history.md). The process keeps its peak memory until it ends,
which a training process does anyway.

Only the main thread's arena follows these settings for blocks above 64 MB: a thread with
an arena of its own (glibc gives threads their own, up to 8 per core) still maps them
fresh. Ray Tune runs a trial's function in such a thread, so its worker processes need
``MALLOC_ARENA_MAX=1`` from their start (``WORKER_ENV``; ``sweep.cluster`` sets it for the
cluster it starts), which puts every thread on the main arena.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory at the heap's top kept up to this many bytes
M_MMAP_MAX = -4  # <malloc.h>: at most this many blocks served by mmap (0: none)
TRIM_KEPT = 1 << 30  # bytes of freed memory the heap keeps (a step needs a few hundred MB)
# For processes whose training runs outside the main thread (Ray workers): read by glibc
# at the process's start, so it has to be in the environment the process starts with.
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones (glibc). Returns whether it
    applied: False where the C library is not glibc (macOS, musl), which keeps its own."""
    try:  # the symbols this process already has: the C library's own, without a search
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_KEPT))
