"""A patient a shred erased is judged closed (``consent.shredded.erased_policy``), whatever
the jurisdiction default, until they record a new consent.

The attack it closes: under ``opt-out`` the no-consent default permits, so erasing a patient's
opt-out (a deny consent) released their data at once.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from middleware.consent import Defaults, Principal
from middleware.consent.records import canonical_consent
from middleware.consent.registry import ConsentRegistry
from middleware.consent.shredded import ERASED_CONSENT, erased_policy
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.storage.consent_base import ConsentRecord
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.contract.helpers import PSEUDONYMS, SIGN
from tests.unit.consent.builders import ACTION_SYSTEM, PATIENT, ask, consent

ACTIONS = [(ACTION_SYSTEM, code) for code in ("access", "collect", "correct", "use", "disclose")]
PRINCIPALS = {
    "ehr": Principal(),
    "practitioner": Principal(reference="Practitioner/dr"),
    "the-patient": Principal(reference=PATIENT, patient=PATIENT),
    "another-patient": Principal(reference="Patient/p2", patient="Patient/p2"),
}
SETTINGS = list(itertools.product(("opt-in", "opt-out"), ("permit", "jurisdiction")))


@pytest.mark.parametrize(
    ("jurisdiction", "collect"), SETTINGS, ids=[f"{j}-collect-{c}" for j, c in SETTINGS]
)
@pytest.mark.parametrize("who", PRINCIPALS, ids=str)
@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a[1])
def test_the_erased_policy_denies_every_action_but_collect_which_keeps_the_default(
    jurisdiction: str, collect: str, who: str, action: Any
) -> None:
    """Every action but ``collect`` is denied under both jurisdictions (under opt-in that is
    the default's answer, under opt-out it is what the shred must not open); ``collect``
    (new data written into the record) gets the same answer as with no consent at all."""
    defaults = Defaults(jurisdiction=jurisdiction, collect=collect)  # type: ignore[arg-type]
    principal = PRINCIPALS[who]
    erased = ask([erased_policy(PATIENT)], who=principal, action=action, defaults=defaults)
    if action[1] == "collect":
        none = ask([], who=principal, action=action, defaults=defaults)
        assert erased.effect == none.effect
    else:
        assert erased.effect == "deny"
        assert erased.trace[0].consent_id == ERASED_CONSENT


class Shredded:
    """A ledger and consent store where a shred erased Patient/p1 (tombstone under the
    store's lookup of them, as ``consentry audit shred`` leaves it)."""

    def __init__(self) -> None:
        self.log = MemoryLogStore()
        self.store = MemoryConsentStore()

    async def shred(self, patient: str = PATIENT) -> None:
        await self.log.shred(PSEUDONYMS[0], link=self.store.lookup(patient))

    async def record(self, body: dict[str, Any]) -> None:
        data = canonical_consent(body)
        pseudonym = await self.store.pseudonym_for(body["subject"]["reference"], PSEUDONYMS[1])
        new = NewEntry.create(EntryKind.CONSENT, data, recorded_us=7, pseudonym=pseudonym)
        (result,) = await self.log.append([new], sign=SIGN)
        record = ConsentRecord(result.index, body["id"], PATIENT, body["status"], False, 7, data)
        await self.store.record(record)


async def test_a_shredded_patient_without_a_consent_gets_the_erased_policy() -> None:
    world = Shredded()
    await world.shred()
    registry = ConsentRegistry(world.store, world.log)
    assert await registry.policies(PATIENT) == (erased_policy(PATIENT),)
    assert await registry.policies("Patient/p2") == ()  # never shredded: the default


async def test_a_new_consent_after_the_shred_is_enforced_instead() -> None:
    world = Shredded()
    await world.shred()
    await world.record(consent("R5", "permit", consent_id="new"))
    policies = await ConsentRegistry(world.store, world.log).policies(PATIENT)
    assert [p.consent_id for p in policies] == ["new"]


async def test_another_ledger_keys_tombstone_is_not_this_patients() -> None:
    """The tombstone is found by the store's keyed lookup: a shred made under another lookup
    key (another gateway's ledger key) does not close this store's patient."""
    world = Shredded()
    other = MemoryConsentStore(lookup_key=bytes(range(32)))
    await world.log.shred(PSEUDONYMS[0], link=other.lookup(PATIENT))
    assert await ConsentRegistry(world.store, world.log).policies(PATIENT) == ()
