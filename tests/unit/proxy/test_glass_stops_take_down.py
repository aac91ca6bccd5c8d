"""A board that cannot answer a take is not asked at every request (review R7c-3).

Was: a take that raised ServiceUnavailable left the stop kept with no back-off, so every
request of the opener (``close_expired`` runs before each) took again while the board was
down: 50 requests, 50 takes (on PostgreSQL a pool reopened per request). Now the stop is
asked for again after ``HELD_RETRY`` seconds, as a row another process holds.
"""

from __future__ import annotations

from middleware.errors import ServiceUnavailable
from middleware.pipeline.breakglass import HELD_RETRY
from tests.unit.proxy.test_glass_stops import ENDS, Gateway, _open, gateway  # noqa: F401


async def test_a_down_board_is_asked_once_per_back_off(gateway: Gateway) -> None:  # noqa: F811
    opener = gateway.process()
    await _open(opener)
    board = opener.sessions._board
    assert board is not None
    real_take = board.take
    takes: list[float] = []

    async def down(*args: object) -> object:
        takes.append(gateway.now)
        raise ServiceUnavailable("board down")

    board.take = down  # type: ignore[method-assign,assignment]
    for i in range(50):  # 50 requests within one second after the end
        gateway.now = ENDS + i / 50
        assert await opener.close_expired(f"rid-{i}", None) == 0
    assert len(takes) == 1  # was 50
    assert opener.sessions.holding()  # the stop is kept, not lost
    board.take = real_take  # type: ignore[method-assign]
    gateway.now = ENDS + HELD_RETRY
    assert await opener.close_expired("rid-later", None) == 1  # asked again: recorded
    assert len(gateway.facts("break-glass-stopped")) == 1
    assert not opener.sessions.holding()
