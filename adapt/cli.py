"""What every entry point in ``scripts/`` shares: the kept heap for train loops on the CPU, and bad input
ending the run with one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from adapt.errors import AdaptError
from adapt.host_memory import use_kept_heap


def run(main: Callable[[], None]) -> None:
    use_kept_heap()  # before main starts JAX's threads: see adapt/host_memory.py
    try:
        main()
    except AdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
