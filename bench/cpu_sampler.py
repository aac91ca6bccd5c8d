"""A CPU-time sampler of the event loop thread's Python stacks, inside a gateway a benchmark
starts (:mod:`bench.edge_profile`).

py-spy samples wall-clock time: a thread that is runnable but not running (preempted inside a
socket ``write`` that woke the upstream on this machine's other core) counts as busy, so on a
2-core machine shared with the upstream and wrk it charges socket writes several times the CPU
they cost (perf: the kernel is 13% of the loop thread's CPU; py-spy put 25% in the two writes).
A sampler thread reading ``sys._current_frames`` is no better: it gets the GIL only where the
loop thread lets it go (SQLite calls, ``os.urandom``, the loop's poll) and charges everything
to those places.

This sampler is a CPU timer of the main thread (the event loop's) instead: a POSIX timer on
its ``CLOCK_THREAD_CPUTIME_ID`` (``timer_create`` through ctypes, ``SIGEV_THREAD_ID``: the
signal goes to that thread, never to the SQLite threads) raises SIGPROF every ``interval``
seconds of the loop thread's CPU; Python runs the handler at the thread's next bytecode
boundary and it charges the thread's CPU since the previous sample (``time.thread_time_ns``)
to the stack it interrupted. CPU spent in C code (a socket write, msgspec) is charged to the
Python frame that called it, and uvloop's own C work between callbacks to the callback it
calls next; the outermost frame (``Runner.run``) keeps what the loop did outside any
callback. Interrupted system calls restart (``siginterrupt(False)``: SA_RESTART). The
handler's own CPU is left out of the weights; at the default interval (2 ms of CPU) the
sampled runs' loop CPU per read stayed within the spread of unsampled runs of the same
gateway (bench.edge_profile prints both).

Started by ``bench/sampler_boot/sitecustomize.py`` when ``EDGE_SAMPLER`` names a path prefix
(the gateway's ``PYTHONPATH`` holds that folder): it samples while ``<prefix>.on`` exists and,
once that file is gone, writes ``<prefix>.raw`` (py-spy's raw format: ``frame;...;frame N``
with N in microseconds of CPU, read by :mod:`bench.stacks`) and then ``<prefix>.done``.
Benchmark tooling only; nothing in ``middleware`` imports it.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Final

__all__ = ["start"]

_MARKERS: Final = ("site-packages/", "python3.11/", "python3.12/", "python3.13/")


def _where(filename: str) -> str:
    for marker in _MARKERS:
        at = filename.rfind(marker)
        if at >= 0:
            return filename[at + len(marker) :]
    at = filename.rfind("/middleware/")
    return filename[at + 1 :] if at >= 0 else filename


def _stack(frame: FrameType | None) -> str:
    names: list[str] = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{code.co_qualname} ({_where(code.co_filename)}:{code.co_firstlineno})")
        frame = frame.f_back
    names.append("thread (main)")
    return ";".join(reversed(names))


_CLOCK_THREAD_CPUTIME_ID: Final = 3
_SIGEV_THREAD_ID: Final = 4


class _SigEvent(ctypes.Structure):
    """``struct sigevent`` (Linux, 64-bit): value, signal, notify, then the thread id."""

    _fields_ = (
        ("value", ctypes.c_void_p),
        ("signo", ctypes.c_int),
        ("notify", ctypes.c_int),
        ("tid", ctypes.c_int),
        ("pad", ctypes.c_int * 11),
    )


class _Spec(ctypes.Structure):
    """``struct itimerspec``: interval and first expiry, each seconds and nanoseconds."""

    _fields_ = (
        ("interval_s", ctypes.c_long),
        ("interval_ns", ctypes.c_long),
        ("value_s", ctypes.c_long),
        ("value_ns", ctypes.c_long),
    )


class _ThreadTimer:
    """A POSIX timer on the CPU clock of the thread that makes it, signalling that thread."""

    def __init__(self, signo: int) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        event = _SigEvent(None, signo, _SIGEV_THREAD_ID, threading.get_native_id())
        self._id = ctypes.c_void_p()
        made = self._libc.timer_create(
            _CLOCK_THREAD_CPUTIME_ID, ctypes.byref(event), ctypes.byref(self._id)
        )
        if made != 0:
            raise OSError(ctypes.get_errno(), "timer_create failed")

    def every(self, seconds: float) -> None:
        """Fire every ``seconds`` of the thread's CPU (0: stop)."""
        whole, ns = int(seconds), round((seconds % 1) * 1e9)
        spec = _Spec(whole, ns, whole, ns)
        if self._libc.timer_settime(self._id, 0, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timer_settime failed")


class _Sampler:
    def __init__(self, prefix: Path, interval: float) -> None:
        self.on, self.raw, self.done = (
            Path(f"{prefix}{suffix}") for suffix in (".on", ".raw", ".done")
        )
        self.interval = interval
        self.timer = _ThreadTimer(signal.SIGPROF)  # made in the main thread: its CPU clock
        self.weights: Counter[str] = Counter()
        self.last = -1

    def sample(self, signum: int, frame: FrameType | None) -> None:
        now = time.thread_time_ns()  # the main thread's: the handler runs there
        if self.last >= 0:
            self.weights[_stack(frame)] += now - self.last
        self.last = time.thread_time_ns()  # the handler's own CPU is not charged

    def watch(self) -> None:
        """Turn the timer on while the switch file exists, then write the stacks."""
        while True:
            while not self.on.exists():
                time.sleep(0.05)
            self.weights.clear()
            self.last = -1  # the first sample only starts the count
            self.timer.every(self.interval)
            while self.on.exists():
                time.sleep(0.05)
            self.timer.every(0.0)
            lines = [f"{stack} {round(ns / 1000)}" for stack, ns in self.weights.items() if ns > 0]
            self.raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
            self.done.touch()


def start(prefix: str, interval: float = 0.002) -> None:
    """Install the SIGPROF handler (call from the main thread) and start the thread that
    switches the timer (module docstring)."""
    sampler = _Sampler(Path(prefix), interval)
    signal.signal(signal.SIGPROF, sampler.sample)
    signal.siginterrupt(signal.SIGPROF, False)
    threading.Thread(target=sampler.watch, name="cpu-sampler", daemon=True).start()
