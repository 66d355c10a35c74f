"""Keep freed host memory in the process instead of handing it back to the kernel (glibc only).

XLA:CPU allocates each step's temporary buffers (activations, gradients, logits: hundreds of MB) with
``malloc`` and frees them at the end of the step. glibc serves such large blocks with fresh ``mmap``
pages and unmaps them on ``free``, so every step page-faults all of its temporaries in again: measured on
a 2-core machine, 0.39 M page faults and a fifth of the MiniLM fine-tuning step, 1.5 M faults and a fifth
of the SmolLM2 step (``benchmarks/train_throughput.py``). Serving every block from one arena's heap and
never trimming it makes the second and later steps reuse the same pages (0 faults per step).

The cost is that the process keeps its peak host memory until it exits, as PyTorch's and JAX's own
device allocators do. The settings only take effect for threads that have not allocated yet, so
:func:`keep_freed_memory` runs when ``adapt`` is imported, before JAX starts its thread pools. Set
``ADAPT_SYSTEM_MALLOC=1`` to leave glibc's defaults alone (or preload tcmalloc, which reuses memory
on its own).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>


def keep_freed_memory(environ=os.environ) -> bool:
    """One malloc arena, no ``mmap``-served blocks, no trimming; True when glibc took the settings."""
    if environ.get("ADAPT_SYSTEM_MALLOC") == "1" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success; a trim threshold of -1 disables trimming (glibc's mallopt(3)).
    return all(libc.mallopt(param, value) == 1
               for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
