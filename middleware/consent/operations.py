"""The consent API's operations, one handler each (run by :meth:`ConsentService.handle`).

==========  =======================================  ============================================
operation   request                                  rule
==========  =======================================  ============================================
create      ``POST Consent``                         server-assigned id (FHIR R4 http.html#create:
                                                     a client id is ignored); 201 + Location
update      ``PUT Consent/{id}``                     body id = URL id; the patient never changes;
                                                     an unknown id is created (update as create,
                                                     needs the create permission); moving into a
                                                     revoked status is a revocation
revoke      ``POST Consent/{id}/$revoke``            records the current version with status
                                                     ``inactive``; 409 if it is not in force
read        ``GET Consent/{id}``                     the current version
vread       ``GET Consent/{id}/_history/{vid}``      one version
history     ``GET Consent/{id}/_history``            Bundle ``history``, newest first
search      ``GET Consent?patient=[&status=]``       Bundle ``searchset``: each consent's current
                                                     version; ``patient`` defaults to the
                                                     caller's own for a patient token
explain     ``POST Consent/$explain``                the decision and its trace
register    ``POST Consent/$register-key``           the patient's consent-signing key
                                                     (:mod:`middleware.consent.signers`)
==========  =======================================  ============================================

Authorization is :mod:`middleware.consent.access`. A patient's change to another patient's
consent is refused with 403; a read of one is answered 404, as if it did not exist (a denied
read must not tell what exists, ``errors.NotFound``). ``If-Match: W/"<version>"`` on update
and revoke must name the current version (412); under ``consent_signatures = "patient-key"``
it is required. A detached Ed25519 signature (``PUT`` and ``$revoke``) must verify over the
canonical bytes that are recorded with ``meta.versionId`` the version replaced
(:func:`~middleware.consent.records.signed_change`), else 422; on a create, whose id the
gateway assigns, over the canonical bytes of the Consent as submitted without ``id``. Under
``patient-key`` a create names its own id instead, covered by the signature and used once
(409 when it exists), so no signed change applies twice. Changes of one id are serialised
(:mod:`middleware.consent.serial`). Ids
beginning ``signer-key-`` are reserved for registered keys (:mod:`middleware.consent.keyrecord`):
no operation here reaches one (404).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from middleware.auth.identity import Identity
from middleware.consent.access import Acting, Operation, authorize, check_patient
from middleware.consent.changes import commit_change, resource_result
from middleware.consent.decide import Decision, TraceStep, decide
from middleware.consent.explainio import parse_explain, render_explanation
from middleware.consent.keyrecord import KEY_STATUS, is_key_id
from middleware.consent.labels import purpose_refusal
from middleware.consent.model import DENY, Policy, Provision, normalize_reference
from middleware.consent.parse import InvalidConsent, parse_consent
from middleware.consent.principals import principal_of
from middleware.consent.records import (
    REVOKED_STATUSES,
    bundle,
    canonical_consent,
    is_revocation,
    revoked,
)
from middleware.consent.service import Call, ConsentService, Handler, Result, Trail
from middleware.consent.signers import register_key
from middleware.consent.summary import summarize
from middleware.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    UnprocessableEntity,
)
from middleware.fhir import jsoncodec
from middleware.fhir.compartment import Kind, patients_of
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.ledger.leaf import EntryKind
from middleware.storage.consent_base import ConsentRecord

__all__ = ["HANDLERS"]

_SEARCH_PARAMS: Final = frozenset({"patient", "status"})
_VERSION: Final = re.compile(r"[1-9][0-9]{0,8}")
_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 datatypes.html#id
_ETAG: Final = re.compile(r'\s*(?:W/)?"(?P<version>[^"]*)"\s*')


async def create(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    acting = _authorize(svc, identity, "create", trail)
    resource = _consent_body(call.body)
    if svc.signatures == "patient-key":
        return await _create_signed(svc, acting, resource, call, trail)
    resource.pop("id", None)  # a create assigns the id (FHIR R4 http.html#create)
    submitted = canonical_consent(resource)  # what a create's signature covers
    resource["id"] = trail.consent_id = str(uuid.uuid4())
    policy = parse_consent(resource, limits=svc.limits)
    trail.patient = policy.patient
    check_patient(acting, policy.patient)
    record = await commit_change(
        svc,
        EntryKind.CONSENT,
        resource,
        policy,
        previous=None,
        call=call,
        trail=trail,
        signed=submitted,
    )
    return resource_result(svc, record, 201, location=True)


async def _create_signed(
    svc: ConsentService, acting: Acting, resource: dict[str, Any], call: Call, trail: Trail
) -> Result:
    """A create under ``patient-key``: the client names the id and the signature covers it,
    so the signed bytes create one consent, once (a replay finds the id taken: 409)."""
    cid = resource.get("id")
    if not isinstance(cid, str) or not _ID.fullmatch(cid) or is_key_id(cid):
        raise UnprocessableEntity(
            "Consent.id: a signed create names a new id of its own (e.g. a random UUID), "
            "covered by the signature and used once"
        )
    trail.consent_id = cid
    policy = parse_consent(resource, limits=svc.limits)
    trail.patient = policy.patient
    check_patient(acting, policy.patient)
    async with svc.serial.hold(cid):
        if await (await svc.store()).current(cid) is not None:
            raise Conflict(f"Consent/{cid} exists: a signed create's id is used once")
        record = await commit_change(
            svc, EntryKind.CONSENT, resource, policy, previous=None, call=call, trail=trail
        )
    return resource_result(svc, record, 201, location=True)


async def update(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    cid = _consent_id(call)
    async with svc.serial.hold(cid):  # the version checked is the version replaced
        return await _update(svc, identity, call, trail, cid)


async def _update(
    svc: ConsentService, identity: Identity, call: Call, trail: Trail, cid: str
) -> Result:
    current = await (await svc.store()).current(cid)
    acting = _authorize(svc, identity, "create" if current is None else "update", trail)
    if current is None:
        if call.if_match is not None:
            raise PreconditionFailed("If-Match names a version of a consent that does not exist")
    else:
        trail.patient = current.patient
        check_patient(acting, current.patient)
        _check_if_match(svc, call, current)
    resource = _consent_body(call.body)
    if resource.get("id") != cid:
        raise BadRequest("the Consent's id must equal the id in the URL (FHIR R4 http.html#update)")
    policy = parse_consent(resource, limits=svc.limits)
    trail.patient = trail.patient or policy.patient
    if current is not None and policy.patient != current.patient:
        raise UnprocessableEntity(
            "a consent's patient cannot change: revoke it and create a new consent"
        )
    check_patient(acting, policy.patient)
    previous = current.status if current is not None else None
    kind = EntryKind.CONSENT_REVOKE if is_revocation(previous, policy.status) else EntryKind.CONSENT
    record = await commit_change(
        svc,
        kind,
        resource,
        policy,
        previous=current,
        call=call,
        trail=trail,
        replaces=None if current is None else current.version,
    )
    return resource_result(svc, record, 200 if current is not None else 201, location=True)


async def revoke(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    acting = _authorize(svc, identity, "revoke", trail)
    if call.body:
        given = _json(call.body)
        if not isinstance(given, Mapping) or given.get("resourceType") != "Parameters":
            raise BadRequest("$revoke takes no input, or an empty Parameters resource")
    cid = _consent_id(call)
    async with svc.serial.hold(cid):  # the version checked is the version replaced
        return await _revoke(svc, acting, call, trail, await _existing(svc, cid))


async def _revoke(
    svc: ConsentService, acting: Acting, call: Call, trail: Trail, current: ConsentRecord
) -> Result:
    trail.patient = current.patient
    check_patient(acting, current.patient)
    _check_if_match(svc, call, current)
    if current.status in REVOKED_STATUSES:
        raise Conflict(f"the consent is not in force (status {current.status})")
    resource = revoked(jsoncodec.decode(current.data, max_depth=STORED_MAX_JSON_DEPTH))
    try:
        policy = parse_consent(resource)
    except InvalidConsent:
        # Stored before the write-time limits (or under an older parser), so it no longer
        # compiles: revoking it must still work, and needs only what the store knows. The
        # revoked version is not in force, so it is never enforced either way.
        policy = Policy(
            consent_id=current.consent_id,
            patient=current.patient,
            status=str(resource["status"]),
            version="R5" if "decision" in resource else "R4",
            period=None,
            root=Provision(path="Consent", effect=None),
        )
    record = await commit_change(
        svc,
        EntryKind.CONSENT_REVOKE,
        resource,
        policy,
        previous=current,
        call=call,
        trail=trail,
        replaces=current.version,
    )
    return resource_result(svc, record, 200, location=False)


async def read(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    acting = _authorize(svc, identity, "read", trail)
    record = _visible(acting, await _existing(svc, _consent_id(call)), trail)
    return resource_result(svc, record, 200, location=False)


async def vread(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    acting = _authorize(svc, identity, "vread", trail)
    cid = _consent_id(call)
    version = call.version or ""
    number = int(version) if _VERSION.fullmatch(version) else 0
    found = await (await svc.store()).version(cid, number) if number else None
    if found is None:
        raise NotFound(f"Consent/{cid} has no version {version}")
    record = _visible(acting, found, trail)
    return resource_result(svc, record, 200, location=False)


async def history(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    acting = _authorize(svc, identity, "history", trail)
    cid = _consent_id(call)
    records = await (await svc.store()).history(cid)
    if not records:
        raise NotFound(f"Consent/{cid} is not known")
    _visible(acting, records[-1], trail)
    entries = [(r, svc.receipt_url(r.ledger_index)) for r in reversed(records)]
    body = bundle("history", entries, base=svc.base_url, self_link=call.self_link)
    return 200, [], jsoncodec.encode(body)


async def search(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    acting = _authorize(svc, identity, "search", trail)
    params: dict[str, str] = {}
    for name, value in call.query:
        if name not in _SEARCH_PARAMS:
            raise BadRequest(f"Consent search supports patient and status, not {name!r}")
        if name in params:
            raise BadRequest(f"{name} may be given once")
        params[name] = value
    given = params.get("patient")
    if given is None and acting.patient is None:
        raise BadRequest("patient is required (Consent?patient=Patient/<id>)")
    patient = acting.patient if given is None else _patient_param(given)
    assert patient is not None  # one of the two branches above
    trail.patient = patient
    check_patient(acting, patient)
    records = [r for r in await (await svc.store()).for_patient(patient) if r.status != KEY_STATUS]
    if "status" in params:
        wanted = set(params["status"].split(","))
        records = [r for r in records if r.status in wanted]
    entries = [(r, svc.receipt_url(r.ledger_index)) for r in records]
    query = urlencode(
        {"patient": patient, **({"status": params["status"]} if "status" in params else {})}
    )
    body = bundle(
        "searchset", entries, base=svc.base_url, self_link=f"{svc.base_url}/Consent?{query}"
    )
    return 200, [], jsoncodec.encode(body)


async def explain(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    acting = _authorize(svc, identity, "explain", trail)
    query = parse_explain(_json(call.body))
    refs = patients_of(query.resource, base_urls=(svc.base_url,))
    patients = sorted(refs.references)
    if acting.patient is not None and (
        patients != [acting.patient] or refs.unresolved or refs.kind is not Kind.PATIENT_DATA
    ):
        raise Forbidden("a patient may only ask about resources of their own compartment")
    trail.patient = patients[0] if len(patients) == 1 else None
    registry = await svc.registry()
    policies: list[Policy] = []
    for patient in patients:
        policies.extend(await registry.policies(patient))
    # The caller as enforcement decides them: fhirUser and the memberships of the token.
    principal = query.principal or principal_of(identity)
    decision = decide(
        principal,
        query.action,
        query.purposes,
        summarize(query.resource, patients=patients),
        policies,
        defaults=svc.defaults,
        now=datetime.fromtimestamp(svc.wall_clock(), UTC),
    )
    refusal = purpose_refusal(query.resource, query.purposes, svc.defaults.labels)
    if refusal is not None:  # the enforcer withholds it before any consent is asked
        decision = Decision(DENY, (), (*decision.trace, TraceStep(None, None, None, refusal)))
    body = render_explanation(
        decision, patients, parameters=query.parameters, principal=principal, policies=policies
    )
    headers = [] if query.parameters else [("content-type", "application/json")]
    return 200, headers, jsoncodec.encode(body)


HANDLERS: Final[Mapping[Operation, Handler]] = {
    "create": create,
    "update": update,
    "revoke": revoke,
    "read": read,
    "vread": vread,
    "history": history,
    "search": search,
    "explain": explain,
    "register-key": register_key,
}


# -- helpers -----------------------------------------------------------------------------------


def _authorize(svc: ConsentService, identity: Identity, op: Operation, trail: Trail) -> Acting:
    acting = authorize(identity, op, admin_role=svc.admin_role)
    trail.acting_as = acting.as_
    return acting


def _consent_id(call: Call) -> str:
    if call.consent_id is None:  # the router always sets it for these operations
        raise NotFound("no consent id")
    if is_key_id(call.consent_id):  # a registered key's record, no Consent
        raise NotFound(f"Consent/{call.consent_id} is not known (ids signer-key-* are reserved)")
    return call.consent_id


async def _existing(svc: ConsentService, cid: str) -> ConsentRecord:
    record = await (await svc.store()).current(cid)
    if record is None:
        raise NotFound(f"Consent/{cid} is not known")
    return record


def _visible(acting: Acting, record: ConsentRecord, trail: Trail) -> ConsentRecord:
    trail.patient = record.patient
    if acting.patient is not None and record.patient != acting.patient:
        raise NotFound(f"Consent/{record.consent_id} is not known")
    return record


def _json(body: bytes) -> Any:
    if not body:
        raise BadRequest("a JSON body is required")
    try:
        return jsoncodec.decode(body)
    except jsoncodec.DecodeError as exc:
        raise BadRequest("the body is not valid JSON") from exc


def _consent_body(body: bytes) -> dict[str, Any]:
    resource = _json(body)
    if not isinstance(resource, dict):
        raise BadRequest("the body must be a FHIR Consent resource")
    return resource


def _patient_param(value: str) -> str:
    ref = normalize_reference(value)
    if "/" not in ref:
        ref = f"Patient/{ref}"
    if not ref.startswith("Patient/") or not re.fullmatch(r"Patient/[A-Za-z0-9\-.]{1,64}", ref):
        raise BadRequest("patient must be a Patient id or reference")
    return ref


def _check_if_match(svc: ConsentService, call: Call, current: ConsentRecord) -> None:
    if call.if_match is None:
        if svc.signatures == "patient-key":  # a signed change names the version it replaces
            raise PreconditionFailed(
                f'this deployment requires If-Match: W/"{current.version}" on a change of an '
                "existing consent (the version the signature covers as meta.versionId)"
            )
        return
    match = _ETAG.fullmatch(call.if_match)
    if match is None or match["version"] != str(current.version):
        raise PreconditionFailed(
            f'If-Match does not name the current version (W/"{current.version}")'
        )
