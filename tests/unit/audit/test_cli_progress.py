"""The CLI's progress bar: rate and ETA on a terminal, nothing at all when piped."""

from __future__ import annotations

import io

import pytest

from middleware.audit.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "drawn"),
    [(io.StringIO(), False), (_Terminal(), True)],
    ids=["piped", "terminal"],
)
def test_the_bar_is_drawn_only_on_a_terminal(stream: io.StringIO, drawn: bool) -> None:
    with Progress("export", total=1000, stream=stream) as progress:
        for _ in range(10):
            progress.update(100)
    text = stream.getvalue()
    assert bool(text) is drawn
    if drawn:
        assert "export" in text
        assert "1.00k/1.00k" in text  # done of total, scaled
        assert "rows/s" in text  # the rate (tqdm's ETA sits beside it while running)
    assert progress.done == 1000


def test_the_rate_is_counted_even_when_nothing_is_drawn() -> None:
    with Progress("verify", stream=io.StringIO()) as progress:
        progress.update(500)
    assert progress.rate > 0
    assert progress.seconds > 0
