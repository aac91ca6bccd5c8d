"""Progress of a long CLI run: a tqdm bar with rate and ETA on a terminal, silent when piped.

The bar goes to standard error, so standard output (the report, the export) stays clean;
when standard error is not a terminal (a pipe, a file, CI) nothing is drawn at all. Either
way :attr:`Progress.rate` gives the rows per second the command reports at the end.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]  # no stubs published

__all__ = ["Progress"]


class _Bar(tqdm):  # type: ignore[misc,unused-ignore]
    """tqdm without its monitor thread (it only retunes ``miniters`` of bars stepped by an
    iterator; ours are updated in counts): a CLI command leaves no thread alive behind it."""

    monitor_interval = 0


class Progress:
    """Count ``done`` of ``total`` (None: unknown) things called ``unit``; a context manager.

    ``stream`` defaults to standard error; ``show`` defaults to whether it is a terminal."""

    def __init__(
        self,
        description: str,
        *,
        total: int | None = None,
        unit: str = "rows",
        stream: TextIO | None = None,
        show: bool | None = None,
    ) -> None:
        out = sys.stderr if stream is None else stream
        visible = out.isatty() if show is None else show
        self.done = 0
        self._started = time.perf_counter()
        self._bar = _Bar(
            total=total,
            desc=description,
            unit=unit,
            unit_scale=True,
            file=out,
            disable=not visible,
            dynamic_ncols=True,
            mininterval=0.25,
        )

    def update(self, count: int) -> None:
        """``count`` more done."""
        self.done += count
        self._bar.update(count)

    @property
    def seconds(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self._started

    @property
    def rate(self) -> float:
        """Things per second so far (0 before any time has passed)."""
        seconds = self.seconds
        return self.done / seconds if seconds > 0 else 0.0

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
