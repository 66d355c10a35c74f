"""Keep a CPU train loop's freed temporaries resident between steps, within a bound (glibc only).

XLA:CPU allocates each step's temporary buffers (activations, gradients, logits: hundreds of MB to GB)
with ``malloc`` and frees them at the end of the step. glibc serves such large blocks with fresh ``mmap``
pages and unmaps them on ``free``, so every step page-faults all of its temporaries in again: measured on
a 2-core machine, 0.40 M page faults and a fifth of the MiniLM fine-tuning step
(``benchmarks/train_throughput.py``). Inside :class:`KeptHeap`, large blocks come from the heap and freed
pages stay there, so later steps reuse the same pages (0 faults per step).

A heap that is never trimmed keeps every hole that loading, compiling, evaluation or checkpointing left
behind, and a step's temporaries landing beside the last ones grow it by a whole step's worth: a loop
held 3x the memory of glibc's defaults (10.5 GB against 3.3 GB for one MiniLM fine-tune). So the
heap is trimmed (``malloc_trim``: free pages go back to the kernel) when the loop starts, after each
compile of the train step, and whenever, between steps, the freed memory it holds resident (the resident
set less malloc's allocations, ``mallinfo2``, and less what lies outside the heap) passes about one
step's temporaries (XLA's own count); on exit glibc's defaults come back. Measured with
``benchmarks/train_throughput.py``: peak RSS growth 1.9-3.5 GB (MiniLM) and 5.9-6.7 GB (SmolLM2, once 11.1), compiling
included, against PyTorch's 1.7 and 5.8 GB, with 0 page faults per step. Set ``ADAPT_SYSTEM_MALLOC=1`` to leave glibc
alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>
_KEEP = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # no mmap-served blocks, no trimming (mallopt(3))
_GLIBC = ((_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 * 1024))  # glibc's defaults (malloc/malloc.c)


class _Mallinfo2(ctypes.Structure):  # glibc's struct mallinfo2 (<malloc.h>, glibc 2.33 on)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _libc():
    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    return libc


def _enabled(environ=os.environ):
    return None if environ.get("ADAPT_SYSTEM_MALLOC") == "1" else _libc()


def _mallopt(libc, settings) -> None:
    for param, value in settings:
        if libc.mallopt(param, value) != 1:  # mallopt returns 1 on success
            raise OSError(f"glibc mallopt({param}, {value}) failed")


def use_kept_heap(environ=os.environ) -> bool:
    """Serve every thread from glibc's main arena (``mallopt(M_ARENA_MAX, 1)``), for the whole process, so
    that XLA's worker threads, too, reuse the freed pages that :class:`KeptHeap` keeps. Only threads that have
    not allocated yet follow it: call it first thing, before JAX computes anything (the scripts call it in
    ``adapt.core.cli.run``). True when the setting was made; a no-op with ``ADAPT_SYSTEM_MALLOC=1`` or a libc other
    than glibc.

    Without it (a library user who never calls it) a CPU train loop still runs in a :class:`KeptHeap`,
    whose settings are restored on exit, but glibc gives threads arenas of their own (up to 8 per core), whose
    heaps are at most 64 MB: blocks of that size or more, allocated on such a thread, are still mapped afresh
    and page-faulted in on every step."""
    libc = _enabled(environ)
    return libc is not None and libc.mallopt(_M_ARENA_MAX, 1) == 1


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _allocated_bytes(libc) -> int:
    """Bytes that malloc has handed out and not had back: heap chunks in use plus mmap-served blocks."""
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class KeptHeap:
    """Context for a loop of CPU train steps: freed blocks stay resident, and :meth:`check` between steps
    trims the heap when the freed memory it holds resident passed the slack, 1.25x the largest step's
    temporaries declared with :meth:`allow`: room for the last step's freed pages. A no-op when not
    ``enabled`` (a GPU or TPU mesh, whose temporaries live on the device), with ``ADAPT_SYSTEM_MALLOC=1``,
    or with a libc other than glibc."""

    def __init__(self, enabled: bool = True, environ=os.environ):
        self.libc = _enabled(environ) if enabled else None
        self.active, self.slack, self.outside, self.trims = False, 0, 0, 0

    def __enter__(self) -> KeptHeap:
        if self.libc is not None:
            _mallopt(self.libc, _KEEP)
            self.active = True
            self.trim()  # what loading and compiling left behind
        return self

    def allow(self, temp_bytes: int) -> None:
        """A step with ``temp_bytes`` of temporaries was just compiled: widen the slack, drop the compiler's
        leftovers."""
        self.slack = max(self.slack, int(1.25 * temp_bytes))
        self.trim()

    def held(self) -> int:
        """Resident bytes that are neither allocated by malloc nor outside its heap: freed memory kept."""
        return resident_bytes() - _allocated_bytes(self.libc) - self.outside

    def check(self) -> None:
        if self.active and self.held() > self.slack:
            self.trim()

    def trim(self) -> None:
        self.libc.malloc_trim(0)
        self.trims += 1
        # What a trim leaves resident beyond malloc's allocations: code, Python's and XLA's own mappings.
        self.outside = resident_bytes() - _allocated_bytes(self.libc)

    def __exit__(self, *exc) -> None:
        if self.active:
            _mallopt(self.libc, _GLIBC)
            self.libc.malloc_trim(0)
            self.active = False
