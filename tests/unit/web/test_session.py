"""The sealed session cookie: what opens, what does not."""

from __future__ import annotations

import pytest
from starlette.responses import Response

from middleware.ledger.signing import new_box_key
from middleware.web.session import COOKIES, SessionCodec, WebSession


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _session(kind: str = "patient", expires: float = 1_000_600.0) -> WebSession:
    return WebSession(kind=kind, token="tok", subject="Patient/p1", csrf="c" * 43, expires=expires)  # type: ignore[arg-type]


def test_round_trip() -> None:
    codec = SessionCodec(new_box_key(), secure=False, clock=Clock())
    session = _session()
    assert codec.decode(codec.encode(session), "patient") == session


def test_sealed_means_unreadable_and_unforgeable() -> None:
    codec = SessionCodec(new_box_key(), secure=False, clock=Clock())
    value = codec.encode(_session())
    assert "tok" not in value
    assert "Patient" not in value
    other = SessionCodec(new_box_key(), secure=False, clock=Clock())
    assert other.decode(value, "patient") is None


@pytest.mark.parametrize("position", [0, 10, 40, -1])
def test_any_changed_character_is_no_session(position: int) -> None:
    codec = SessionCodec(new_box_key(), secure=False, clock=Clock())
    value = codec.encode(_session())
    changed = "A" if value[position] != "A" else "B"
    tampered = (
        value[:position] + changed + value[position + 1 :]
        if position != -1
        else value[:-1] + changed
    )
    assert codec.decode(tampered, "patient") is None


def test_other_kind_and_expired_are_no_session() -> None:
    clock = Clock()
    codec = SessionCodec(new_box_key(), secure=False, clock=clock)
    value = codec.encode(_session())
    assert codec.decode(value, "auditor") is None
    clock.now = 1_000_600.0
    assert codec.decode(value, "patient") is None


@pytest.mark.parametrize("value", [None, "", "%%%", "A" * 5000, "AAAA"])
def test_junk_is_no_session(value: str | None) -> None:
    codec = SessionCodec(new_box_key(), secure=False, clock=Clock())
    assert codec.decode(value, "patient") is None


@pytest.mark.parametrize("secure", [True, False])
def test_cookie_flags(secure: bool) -> None:
    codec = SessionCodec(new_box_key(), secure=secure, clock=Clock())
    response = Response()
    codec.set_cookie(response, _session())
    header = response.headers["set-cookie"]
    flags = [f.strip().lower() for f in header.split(";")]
    # __Host- over https (RFC 6265bis §4.1.3.2: Secure, Path=/, no Domain), plain over http
    assert header.startswith(("__Host-" if secure else "") + COOKIES["patient"] + "=")
    assert not [f for f in flags if f.startswith("domain")]
    assert {"httponly", "samesite=strict", "path=/", "max-age=600"} <= set(flags)
    assert ("secure" in flags) is secure
