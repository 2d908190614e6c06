"""What the command-line entry points share."""
from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def exit_on(*errors: type[BaseException]):
    """Report ``errors`` (the problems a user can fix: bad input, bad files) as one ``error: ...``
    line on stderr and exit with status 2, without a traceback."""
    try:
        yield
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
