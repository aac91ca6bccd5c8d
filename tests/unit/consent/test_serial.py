"""KeyedLocks (one change at a time per consent id) and the key-enrolment setting."""

from __future__ import annotations

import asyncio

import pytest

from middleware.consent.serial import KeyedLocks
from middleware.errors import SettingsError
from middleware.settings import load_settings

UPSTREAM = "http://upstream.test/fhir"


async def test_one_holder_per_key_and_none_across_keys() -> None:
    locks, order = KeyedLocks(), []

    async def change(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            order.append(f"{name}-")

    await asyncio.gather(change("c1", "a"), change("c1", "b"), change("c2", "x"))
    assert order.index("a-") < order.index("b+")  # the same key: one after the other
    assert order.index("x+") < order.index("a-")  # another key: not held up
    assert len(locks) == 0  # nothing kept once nobody holds or waits


async def test_a_failed_change_releases_the_key() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("c1"):
            raise RuntimeError
    async with locks.hold("c1"):
        assert len(locks) == 1
    assert len(locks) == 0


def test_key_enrolment_defaults_to_admin_and_is_checked() -> None:
    assert load_settings(overrides={"upstream": UPSTREAM}).consent_key_enrolment == "admin"
    patient = load_settings(overrides={"upstream": UPSTREAM, "consent_key_enrolment": "patient"})
    assert patient.consent_key_enrolment == "patient"
    with pytest.raises(SettingsError, match="consent_key_enrolment"):
        load_settings(overrides={"upstream": UPSTREAM, "consent_key_enrolment": "anyone"})
