"""The policies of each patient, compiled once and kept until the ledger says they changed.

Invalidation is by ledger position, never by a timer (architecture invariant 3: "A consent
change takes effect for the very next request on every replica"). Every lookup first asks the
shared :class:`~middleware.storage.consent_base.ConsentStore` for the patient's
:class:`~middleware.storage.consent_base.PatientMark` (the number of consent records and the
highest ledger index among them: one indexed query). The consent API records a change in that
store *before* it answers, so once a change has been answered, every replica's next lookup
sees a new mark and recompiles. Policies are cached by ledger index too, so a change
recompiles only the consent that changed.

Nothing in this cache is needed for correctness (architecture "Scale"): a replica that
restarts, or evicts a patient, rebuilds the same policies from the store.

The architecture names PostgreSQL LISTEN/NOTIFY for broadcasting consent changes. The mark
query gives the guarantee on every backend without a listener connection and without the
window in which a notification is in flight (or lost with a dropped connection); a
notification could later let a replica skip the query, never replace it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from middleware.consent.model import Policy
from middleware.consent.parse import InvalidConsent, parse_consent
from middleware.errors import ServiceUnavailable
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.logging import get_logger
from middleware.storage.consent_base import ConsentRecord, ConsentStore, PatientMark

__all__ = ["ConsentRegistry", "UnreadableConsent"]

_DEFAULT_PATIENTS: Final = 10_000
_DEFAULT_POLICIES: Final = 100_000


class UnreadableConsent(ServiceUnavailable):
    """A recorded, active consent no longer compiles (a changed parser, a damaged store, one
    stored before the write-time limits nested deeper than the parser takes). Deciding without
    it could release what it denies, so the patient is denied entirely: every request that
    needs the patient's consents fails closed (503), whatever the jurisdiction default, until
    the consent is replaced (``PUT``) or revoked. A record that does not compile and is not in
    force is skipped: it could not permit or deny anything."""


class ConsentRegistry:
    """Compiled policies per patient over ``store``; ``max_patients`` and ``max_policies``
    bound the two LRU caches."""

    def __init__(
        self,
        store: ConsentStore,
        *,
        max_patients: int = _DEFAULT_PATIENTS,
        max_policies: int = _DEFAULT_POLICIES,
    ) -> None:
        if max_patients < 1 or max_policies < 1:
            raise ValueError("cache sizes must be positive")
        self.store = store
        self._max_patients = max_patients
        self._max_policies = max_policies
        self._patients: OrderedDict[str, tuple[PatientMark, tuple[Policy, ...]]] = OrderedDict()
        self._policies: OrderedDict[int, Policy] = OrderedDict()
        self.compiled = 0  # consents compiled so far (tests and metrics read it)

    async def policies(self, patient: str) -> tuple[Policy, ...]:
        """The policies of every consent of ``patient`` (``Patient/<id>``), in ledger order,
        as of the store's current state. Raises :class:`UnreadableConsent` or
        ``ServiceUnavailable``."""
        mark = await self.store.mark(patient)
        cached = self._patients.get(patient)
        if cached is not None and cached[0] == mark:
            self._patients.move_to_end(patient)
            return cached[1]
        records = await self.store.for_patient(patient) if mark.count else []
        compiled = (self._compile(record) for record in records)
        policies = tuple(policy for policy in compiled if policy is not None)
        self._patients[patient] = (mark, policies)
        self._patients.move_to_end(patient)
        while len(self._patients) > self._max_patients:
            self._patients.popitem(last=False)
        return policies

    def _compile(self, record: ConsentRecord) -> Policy | None:
        """The policy of ``record``; None for a record that does not compile and is not in
        force (only ``active`` consents are enforced, so skipping it changes no decision);
        :class:`UnreadableConsent` for one that does not compile and is ``active``."""
        policy = self._policies.get(record.ledger_index)
        if policy is not None:
            self._policies.move_to_end(record.ledger_index)
            return policy
        try:
            stored = jsoncodec.decode(record.data, max_depth=STORED_MAX_JSON_DEPTH)
            policy = parse_consent(stored, ledger_index=record.ledger_index)
        except (InvalidConsent, jsoncodec.DecodeError, RecursionError) as exc:
            # Logged by ledger index only: the consent's text and patient are PHI.
            log = get_logger("consentry.consent")
            if record.revoked or record.status != "active":
                log.warning(
                    "recorded consent does not compile; not in force, skipped",
                    ledger_index=record.ledger_index,
                )
                return None
            log.error("recorded consent does not compile", ledger_index=record.ledger_index)
            raise UnreadableConsent("a recorded consent cannot be read") from exc
        self.compiled += 1
        self._policies[record.ledger_index] = policy
        while len(self._policies) > self._max_policies:
            self._policies.popitem(last=False)
        return policy
