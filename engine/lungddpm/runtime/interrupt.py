"""Clean interruption: SIGINT (Ctrl-C) and SIGTERM end a command with one line on stderr and exit 130 / 143.

``exits_cleanly`` wraps the command line's entry point. While it runs, SIGTERM raises ``Terminated``
in the main thread as SIGINT raises KeyboardInterrupt, so every ``finally`` runs and the atomic writes
of ``io.atomic`` remove their temporaries. The line says what the command leaves behind: "nothing was
written", or what it last declared with ``leaves`` (generate: its finished cases; train: its checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec

NOTHING_WRITTEN = "nothing was written"
_P = ParamSpec("_P")
_outcome = NOTHING_WRITTEN  # what an interruption now leaves behind; set by leaves()


class Terminated(BaseException):
    """SIGTERM as an exception; a BaseException like KeyboardInterrupt, so `except Exception` lets it through."""


def leaves(outcome: str) -> None:
    """Say what an interruption from now on leaves behind, e.g. 'kept 3 finished cases of 8 in <folder>'."""
    global _outcome
    _outcome = outcome


def exits_cleanly(main: Callable[_P, int]) -> Callable[_P, int]:
    """Wrap an entry point: on SIGINT or SIGTERM print 'lungddpm: interrupted; <outcome>' and return 130 / 143."""

    @functools.wraps(main)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> int:
        leaves(NOTHING_WRITTEN)
        try:
            with _sigterm_raises():
                return main(*args, **kwargs)
        except (KeyboardInterrupt, Terminated) as interruption:
            signum = signal.SIGTERM if isinstance(interruption, Terminated) else signal.SIGINT
            start = "\n" if sys.stderr.isatty() else ""  # after a progress bar or the terminal's ^C
            print(f"{start}lungddpm: interrupted; {_outcome}", file=sys.stderr, flush=True)
            return 128 + signum  # the shell's status of a process ended by a signal

    return wrapper


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated in this process (main thread only; children it forks just end)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def terminate(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked child (a data loader worker) ends as SIGTERM ends any process
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
