"""Process settings for the long-running CLIs on CPU: glibc's allocator and torch's thread count.

Why these two. Measured on the server under load (2 cores, the fine-tuned fixture, a client process beside it;
serve README, "Server under load"): a continuous-batching decoding step took 11–21 ms from one run to the next
with the same rows, and 10–12 ms every time with :func:`tune_malloc`; the server's engine with torch's default
of 2 threads took 23–31 ms per step against 11–14 ms with 1. Both come from how the CPU path works, not from the
model:

* Every decoding step grows each layer's KV cache by concatenation, so every step frees and allocates buffers of
  a few hundred KiB to a few MiB. glibc maps a buffer above its mmap threshold with ``mmap``, and raises
  that threshold only to the size of a mapped buffer freed before — each step's buffer is a little larger — and
  returns the top of its heap to the OS past a trim threshold; either way a step's fresh buffers are new pages
  that fault in and are zeroed. Fixing both thresholds (``mallopt``) keeps freed
  buffers in the heap for the next step. Fixing only one of the two made steps slower (~24 ms).
* torch's intra-op threads spin while they wait for work. A server's HTTP side (uvicorn's loop, tokenization, the
  chat template) needs a core of its own; a torch thread on that core makes every small op wait for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["engine_threads", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest allowed mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): buffers below it come from the heap
MMAP_THRESHOLD = 32 << 20
#: freed memory the heap keeps before it trims (returns pages to the OS)
TRIM_THRESHOLD = 256 << 20


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module docstring); True if both were set.

    A no-op (False) off Linux, on a libc that is not glibc, or with ``ADNANNY_SERVE_MALLOC=default``. Call it once
    at process start, before the model is loaded; it changes no result, only where freed memory goes.
    """
    if os.environ.get("ADNANNY_SERVE_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def engine_threads(requested: int, device: str) -> int | None:
    """torch CPU threads for a server's engine: ``requested`` if > 0, else all cores but one (at least 1) on CPU.

    None on CUDA with ``requested`` 0: the GPU does the work, and torch's default is left alone.
    """
    if requested > 0:
        return requested
    if device.startswith("cuda"):
        return None
    return max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) - 1)
