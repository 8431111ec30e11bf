"""Progress bars that stay readable in papermill logs."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm as _tqdm

T = TypeVar("T")


def progress(it: Iterable[T], desc: str, total: int | None = None, mininterval: float = 10.0) -> Iterable[T]:
    """Wrap ``it`` in a tqdm bar throttled to one update per ``mininterval`` seconds.

    Under papermill (no TTY) the bar prints one line per interval instead of redrawing,
    appears only once a loop has run for ``mininterval`` seconds (short inner loops stay
    silent), and nested bars never move the cursor, so executed notebooks and CI logs
    stay short.
    """
    tty = sys.stderr.isatty()
    return _tqdm(it, desc=desc, total=total, mininterval=mininterval if not tty else 0.5,
                 maxinterval=max(mininterval, 10.0), ascii=not tty, dynamic_ncols=tty,
                 file=sys.stderr, leave=True,
                 delay=0 if tty else mininterval,
                 # no TTY: nested bars stay on position 0, so no cursor-up escapes reach the log
                 position=None if tty else 0)
