"""Let the C heap keep freed memory for reuse (glibc on Linux), for the Explorer's repeated computations.

An occlusion map allocates and frees a few hundred megabytes of tensors per call, in blocks of a
few to tens of megabytes. With glibc's default settings much of it goes back to the operating system
as soon as it is freed (the top of the heap is trimmed, blocks above the adaptive mmap threshold are
unmapped), so the next batch faults every page in again: about 140,000 page faults (550 MB) in one
refined occlusion call on the shipped model, about 0.5 s of its 3.5 s on a 2-core CPU (measured side
by side in one process: 3.58 s and about 126,000 faults with the defaults, 3.11 s and no faults once
the heap keeps its memory). PyTorch's CPU guides recommend jemalloc or tcmalloc for the same reason;
this gets the same effect without preloading a library.

:func:`keep_freed_memory` raises glibc's trim threshold to :data:`TRIM_THRESHOLD`, fixes its mmap
threshold at :data:`MMAP_THRESHOLD` (glibc's own adaptive ceiling) and lets threads created from then
on share the main heap (one arena): the Explorer computes in a new worker thread per request, and a
thread's own arena returns its memory when the thread ends whatever the thresholds (measured: 40,000
to 180,000 page faults per refined request with the thresholds alone, none with one arena). Applied
once per process. The cost is memory: the process keeps up to its peak heap instead of returning it
(for the shipped model, a few hundred megabytes), and threads that allocate at the same time share
one lock. It is process-wide and cannot be undone, so only the Explorer applies it, and the
environment variable ``SSL_WIDGETS_KEEP_FREED_MEMORY=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import os
import platform
import threading

__all__ = ["ENV_VARIABLE", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

ENV_VARIABLE = "SSL_WIDGETS_KEEP_FREED_MEMORY"
TRIM_THRESHOLD = 512 << 20  #: free memory at the top of the heap kept before trimming (bytes)
MMAP_THRESHOLD = 32 << 20  #: blocks at least this large are mapped separately (glibc's adaptive ceiling)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameter numbers (malloc.h)

_LOCK = threading.Lock()
_APPLIED: bool | None = None  # None: not tried yet in this process


def keep_freed_memory() -> bool:
    """Apply the heap settings above once per process; returns whether they are in effect.

    Nothing is done (``False``) off Linux, without glibc, or when ``SSL_WIDGETS_KEEP_FREED_MEMORY`` is
    ``0``/``false``/``no``.

    Examples:
        >>> keep_freed_memory() in (True, False)
        True
    """
    global _APPLIED
    with _LOCK:
        if _APPLIED is None:
            _APPLIED = _apply()
        return _APPLIED


def _apply() -> bool:
    if os.environ.get(ENV_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return (bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            and bool(mallopt(_M_ARENA_MAX, 1)))
