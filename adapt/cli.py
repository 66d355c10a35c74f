"""What every entry point in ``scripts/`` shares: bad input ends the run with one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from adapt.errors import AdaptError


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except AdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
