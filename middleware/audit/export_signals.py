"""Signals while an export is made in parts (:mod:`middleware.audit.export_parallel`): what
makes a kill of the command end its workers too, so that no worker outlives it.

- :func:`terminations_interrupt`: in the command, SIGTERM and SIGHUP (what systemd,
  ``kubectl delete``, ``timeout`` and a closed ssh session send) raise :class:`Terminated`,
  an interrupt like Ctrl-C's, so that every ``finally`` runs (the workers killed and joined,
  the parts closed); :meth:`Terminated.deliver` then ends the process as the signal would
  have (exit status 128 + its number), once the caller has removed what it made.
- :func:`blocked`: those signals held back while workers are forked, so that none arrives
  between a fork and the worker's own dispositions (a worker starts with them blocked).
- :func:`die_with_parent`: in a worker, SIGKILL when the command dies, however it dies
  (Linux's ``prctl(PR_SET_PDEATHSIG)``, man 2 PR_SET_PDEATHSIG; elsewhere not available),
  and an exit at once if it is already gone (the worker then has another parent).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

__all__ = ["Terminated", "blocked", "die_with_parent", "terminations_interrupt"]

#: The signals that end the command as an interrupt while it has workers.
TERMINATIONS = (signal.SIGTERM, signal.SIGHUP)
#: ``<linux/prctl.h>``: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP received while an export was being made in parts."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def deliver(self) -> None:
        """The signal sent again to this process, under the disposition it had before (the
        default ends the process: exit status 128 + the signal's number)."""
        signal.raise_signal(self.signum)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminations_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` inside the block; the handlers it found
    are restored after. A signal ignored stays ignored (``nohup`` ignores SIGHUP so that a
    closed session does not end the command). Only the main thread may set handlers (the
    caller's to check)."""
    before = {
        signum: signal.signal(signum, _raise)
        for signum in TERMINATIONS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """SIGTERM and SIGHUP held back inside the block (a fork's child inherits the mask); one
    that came meanwhile is delivered on leaving it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATIONS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATIONS)


def die_with_parent(parent: int) -> None:
    """In a worker forked (with :func:`blocked`) by ``parent``: the default dispositions of
    SIGTERM and SIGHUP (the command's handler raises, which would be a worker's failure),
    SIGKILL when ``parent`` dies, an exit now if it is gone already, then the signals let
    through."""
    for signum in TERMINATIONS:
        signal.signal(signum, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc found: no such guard
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl: nothing would kill us
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATIONS)
