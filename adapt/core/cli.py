"""What every entry point in ``scripts/`` shares: the kept heap for train loops on the CPU, JAX's distributed
runtime started when the environment describes a multi-process job (:mod:`adapt.core.distributed`), bad input
ending the run with one line and exit code 2, and JAX's persistent compilation cache. How a study's table is
shown is :mod:`adapt.analysis.report`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from adapt.core import distributed
from adapt.core.errors import AdaptError
from adapt.core.host_memory import use_kept_heap


def run(main: Callable[[], None]) -> None:
    """Runs a script's ``main``: a multi-process job's runtime started first (a partial cluster environment is
    a one-line error), an :class:`~adapt.core.errors.AdaptError` printed as one line with exit code 2."""
    use_kept_heap()  # before JAX's threads start: see adapt/core/host_memory.py
    try:
        distributed.initialize()  # imports JAX only for a multi-process job
        main()
    except AdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def compile_cache(folder: str) -> None:
    """JAX's persistent compilation cache in ``folder/jax_cache``: a run's trials with the same shapes, and a rerun
    of the same command, compile each program once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(folder), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
