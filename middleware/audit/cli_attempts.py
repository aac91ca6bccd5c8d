"""``consentry audit consent-attempts``: who tried to read or change one patient's consents.

    consentry audit consent-attempts --patient Patient/x [--suspect Patient/y ...]
        --store sqlite:consentry.db --key-file consentry-ledger.key

Every call to the consent API is an ``admin`` ledger entry on the chain of the patient it
concerns (:mod:`middleware.consent.service`); these are not accesses to the record, so the
access report leaves them out. This command lists the attempts on the patient's current
chain, oldest first, as JSON: ledger index, time, operation, outcome (HTTP status), consent
id, request id and ``caller``, rendered by :func:`caller_text`:

* another patient, who named their tag (``patientTag``, derived from their own evidence key):
  ``Patient/<id>`` while the gateway resolves it
  (:class:`~middleware.consent.callers.CallerResolver`: one of ``--suspect``, or a patient a
  consent entry names), else ``patient (pseudonymous) <hex>``, which is all that is left once
  that patient was crypto-shredded (their key is gone: nothing computes the tag again);
* the patient themself, when the attempt says the caller is the chain's patient
  (``ownChain``; a patient caller is named by the entry's pseudonym only);
* anyone else by ``fhirUser`` or ``issuer#subject``, and their roles;
* an attempt naming none of these (written before callers were named: another patient's
  probe, a clinician's EHR launch, the patient's own, all recorded alike) as ``a
  patient-context caller, not named``: never blamed on the chain's patient.

The output names patients: it is for the compliance officer (write it to a private file with
``--out``). An attempt whose evidence a shred removed shows ``evidence removed``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

from middleware.audit.cli_common import Usage, opened, read_key, write_output
from middleware.audit.evidence import EVIDENCE_PURPOSE, unwrap_key
from middleware.consent.access import CALLER_CHAIN, CALLER_OWN, CALLER_TAG
from middleware.consent.callers import CallerResolver, attempt_tag
from middleware.consent.records import ATTEMPT_TYPE
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import derive_box_key
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.consent_open import open_consent_store

__all__ = ["PSEUDONYMOUS", "UNNAMED", "caller_text", "consent_attempts"]

#: How a patient caller whose tag resolves to nobody is shown (then its hex).
PSEUDONYMOUS: Final = "patient (pseudonymous)"
#: How an attempt that names no caller and does not say it is the patient's own is shown.
UNNAMED: Final = "a patient-context caller, not named"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def caller_text(principal: Mapping[str, Any], patient: str, resolved: str | None) -> str:
    """Who made an attempt on ``patient``'s chain, from its evidence's ``principal`` and the
    resolution of the tag it names (``resolved``, None when it names none or nobody).
    ``patient`` is named only when the principal says the caller is the chain's patient
    (``ownChain``): an attempt written before callers were named may be another patient's
    probe or a clinician's, and is shown :data:`UNNAMED`. Pure."""
    tag = principal.get(CALLER_TAG)
    if isinstance(tag, str):
        return resolved if resolved is not None else f"{PSEUDONYMOUS} {tag}"
    legacy = principal.get(CALLER_CHAIN)  # a pseudonym in the clear, before tags: not resolved
    if isinstance(legacy, str):
        return f"{PSEUDONYMOUS} {legacy}"
    who = principal.get("fhirUser")
    if not isinstance(who, str):
        sub = principal.get("sub")
        who = f"{principal.get('iss')}#{sub}" if isinstance(sub, str) else None
    if who is None:
        return f"{patient} (the patient)" if principal.get(CALLER_OWN) is True else UNNAMED
    roles = principal.get("roles")
    if isinstance(roles, list) and roles:
        return f"{who} ({', '.join(str(r) for r in roles)})"
    return who


def consent_attempts(args: argparse.Namespace, out: TextIO) -> int:
    """The command (module docstring)."""
    ledger_key = read_key(args.key_file)
    suspects: Sequence[str] = args.suspect or ()
    for name in (args.patient, *suspects):
        if not name.startswith("Patient/") or name == "Patient/":
            raise Usage(f"{name!r} is not a Patient/<id> reference")

    async def run() -> dict[str, object]:
        lookup = derive_box_key(ledger_key.data_secret, LOOKUP_PURPOSE)
        wrap = derive_box_key(ledger_key.data_secret, EVIDENCE_PURPOSE)
        consents = await open_consent_store(args.store, lookup_key=lookup, schema=args.schema)
        lines: list[dict[str, object]] = []
        try:
            async with opened(args) as store:

                async def key_of(pseudonym: bytes) -> bytes | None:
                    wrapped = await store.audit_key_get(pseudonym)
                    return None if wrapped is None else unwrap_key(wrap, wrapped)

                callers = CallerResolver(store, consents, key_of, suspects)
                chain = await consents.pseudonym(args.patient)
                for index in [] if chain is None else await store.chain(chain):
                    (raw,) = await store.leaves(index, index + 1)
                    leaf = decode_leaf(raw)
                    if leaf.kind is not EntryKind.ADMIN:
                        continue
                    stored = await store.evidence(index)
                    line: dict[str, object] = {"index": index, "recorded": _time(leaf.recorded_us)}
                    if stored is None:
                        line["caller"] = "evidence removed"
                    else:
                        record = _attempt(stored.data)
                        if record is None:
                            continue  # another admin entry (a shred's record)
                        tag = attempt_tag(stored.data)
                        resolved = None if tag is None else await callers.resolve(tag)
                        principal = record.get("principal")
                        line.update(_fields(record))
                        line["caller"] = caller_text(
                            principal if isinstance(principal, dict) else {},
                            args.patient,
                            resolved,
                        )
                    lines.append(line)
        finally:
            await consents.close()
        return {"patient": args.patient, "attempts": lines}

    write_output(args, out, json.dumps(asyncio.run(run()), indent=2) + "\n")
    return 0


def _attempt(data: bytes) -> dict[str, Any] | None:
    """The attempt record ``data`` holds, None for other admin evidence."""
    try:
        record = jsoncodec.decode(data, max_depth=STORED_MAX_JSON_DEPTH)
    except jsoncodec.DecodeError:
        return None
    return record if isinstance(record, dict) and record.get("type") == ATTEMPT_TYPE else None


def _fields(record: Mapping[str, Any]) -> dict[str, object]:
    names = (("operation", "operation"), ("outcome", "outcome"), ("consent", "consent"))
    fields = {key: record[name] for key, name in names if name in record}
    if "requestId" in record:
        fields["requestId"] = record["requestId"]
    return fields


def _time(recorded_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=recorded_us)).isoformat().replace("+00:00", "Z")
