"""How a refused command reports itself: ``<prog>: <file or key>: <problem>`` on stderr, one
line, and the traceback only when asked for (``ablate --debug`` or ``ABLATE_DEBUG=1``); and a full
disk found anywhere in an exception's chain, named by the file being written."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator, Optional

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


def no_space_left(err: BaseException) -> Optional[OSError]:
    """The ``OSError`` with errno ``ENOSPC`` in ``err``'s chain (``err`` itself, its causes and
    contexts), or None. ``torch.save`` on a full disk raises a ``RuntimeError`` from its zip writer
    (``[enforce fail at inline_container.cc:...]``), with the disk's error only in its context."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return err
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around a write of ``path``: a full disk met inside (anywhere in the exception's chain) is
    raised again as ``OSError(ENOSPC, ..., path)``, so that the error names the file being written
    (a failed ``write()`` or ``torch.save`` does not)."""
    try:
        yield
    except Exception as err:
        full = no_space_left(err)
        if full is None or (full is err and full.filename is not None):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err

