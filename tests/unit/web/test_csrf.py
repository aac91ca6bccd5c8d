"""CSRF checks: the form token and the request's origin."""

from __future__ import annotations

import pytest

from middleware.web.csrf import Refused, check, check_origin, origin_of
from middleware.web.session import WebSession

OWN = "https://gateway.example"
SESSION = WebSession(kind="patient", token="t", subject="Patient/p1", csrf="secret", expires=9e9)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"origin": OWN}, id="origin"),
        pytest.param({"origin": "HTTPS://Gateway.Example"}, id="origin-case"),
        pytest.param({"referer": OWN + "/portal/x?y"}, id="referer"),
    ],
)
def test_own_origin_passes(headers: dict[str, str]) -> None:
    check_origin(headers, OWN)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"origin": "null"}, id="null"),
        pytest.param({"origin": "https://evil.example"}, id="foreign"),
        pytest.param({"origin": "http://gateway.example"}, id="other-scheme"),
        pytest.param({"origin": "https://gateway.example:8443"}, id="other-port"),
        pytest.param({"origin": "https://gateway.example.evil"}, id="suffix"),
        pytest.param({"referer": "https://evil.example/https://gateway.example"}, id="referer"),
        pytest.param({"origin": "https://evil.example", "referer": OWN + "/"}, id="origin-wins"),
    ],
)
def test_other_origins_refused(headers: dict[str, str]) -> None:
    with pytest.raises(Refused):
        check_origin(headers, OWN)


def test_no_own_origin_refuses_everything() -> None:
    with pytest.raises(Refused):
        check_origin({"origin": ""}, "")


@pytest.mark.parametrize("form", [{}, {"csrf": ""}, {"csrf": "secre"}, {"csrf": "secret2"}])
def test_wrong_token_refused(form: dict[str, str]) -> None:
    with pytest.raises(Refused):
        check(form, SESSION)


def test_right_token_passes() -> None:
    check({"csrf": "secret"}, SESSION)


def test_origin_of() -> None:
    assert origin_of("https://Gateway.Example:8443/portal/?x") == "https://gateway.example:8443"
    assert origin_of("/relative") == ""
