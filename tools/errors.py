"""How a refused command reports itself: ``<prog>: <file or key>: <problem>`` on stderr, one
line, and the traceback only when asked for (``ablate --debug`` or ``ABLATE_DEBUG=1``)."""

from __future__ import annotations

import os
import sys
import traceback

DEBUG_ENV = "ABLATE_DEBUG"


def debugging() -> bool:
    """True when ``ABLATE_DEBUG`` is set to anything but empty or ``0`` (``ablate --debug`` sets
    it, so that the processes a sweep starts inherit it)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report_error(prog: str, err: BaseException) -> None:
    """One line on stderr naming the command and the problem; the traceback first when debugging."""
    if debugging():
        traceback.print_exception(err, file=sys.stderr)
    print(f"{prog}: {err}", file=sys.stderr)
