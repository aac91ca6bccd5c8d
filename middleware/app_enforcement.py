"""Wiring of the enforcement pipeline: the stage :func:`middleware.app.create_app` hands the edge.

Kept beside ``app.py`` so that the app module stays about routing: this one builds the
:class:`~middleware.pipeline.flow.Flow` (consents through the consent service's registry,
cursors sealed under a key derived from the ledger key, search guards, the consent defaults),
its write and Bundle halves and the :class:`~middleware.pipeline.dispatch.Pipeline` over them,
and the audit recorder over the ledger and the consent store's pseudonyms; each part once,
handed what it calls (nothing is wired after construction). Every part reads the consent
service's wall clock (injectable in ``create_app``).
"""

from __future__ import annotations

import time
from pathlib import Path

from middleware.app_export import build_exports
from middleware.audit.evidence import EVIDENCE_PURPOSE, PatientKeys
from middleware.audit.parts import AgentInfo
from middleware.audit.recorder import AuditRecorder
from middleware.consent.model import Policy
from middleware.consent.service import ConsentService
from middleware.ledger.leaf import new_pseudonym
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import derive_box_key
from middleware.mapping.ids_table import build_resolver
from middleware.mapping.loader import folder_reader, load_profile_with_digest
from middleware.mapping.references import ReferenceRewriter
from middleware.ops.metrics import Metrics
from middleware.pipeline.breakglass import BreakGlass
from middleware.pipeline.bundles import Bundles
from middleware.pipeline.cursor import CursorCodec
from middleware.pipeline.directory import DirectoryGuard
from middleware.pipeline.dispatch import Pipeline
from middleware.pipeline.flow import Flow
from middleware.pipeline.guards import DEFAULT_PATIENT_REFUSED, GuardPolicy
from middleware.pipeline.idmap import IdEdge
from middleware.pipeline.mapper import Mapper
from middleware.pipeline.membership_ids import TranslatedDirectory
from middleware.pipeline.memberships import Directory, Memberships
from middleware.pipeline.writes import Writes
from middleware.proxy.enforcement import Enforcement, TokenCheck
from middleware.proxy.exchange_audit import ExchangeAudit
from middleware.proxy.forwarder import UpstreamForwarder
from middleware.proxy.membership_reads import UpstreamDirectory
from middleware.settings import Settings
from middleware.storage.audit_outbox import SqliteOutbox, outbox_path
from middleware.storage.breakglass_open import session_board
from middleware.storage.breakglass_sqlite import BOARD_PURPOSE

__all__ = ["GATEWAY_NAME", "build_enforcement"]

#: How the gateway names itself in AuditEvents (``source.site``, agent displays).
GATEWAY_NAME = "consentry"


def _guards(settings: Settings) -> GuardPolicy:
    """The search guards: every inference family refused to the configured caller contexts
    (patient-context callers by default), ``_sort`` refused on the configured params."""
    contexts = settings.inference_guard_contexts
    families = DEFAULT_PATIENT_REFUSED
    return GuardPolicy(
        patient=families if "patient" in contexts else frozenset(),
        user=families if "user" in contexts else frozenset(),
        system=families if "system" in contexts else frozenset(),
        sensitive_sort=frozenset(
            p.strip() for p in settings.sensitive_sort_params.split(",") if p.strip()
        ),
        count_max_resources=settings.count_max_resources,
        count_max_walked=settings.count_max_walked,
        count_max_pages=settings.count_max_pages,
        count_page_size=settings.count_page_size,
        count_deadline_seconds=settings.count_deadline_seconds,
        count_max_concurrent=settings.count_max_concurrent,
    )


def _mapper(settings: Settings) -> Mapper | None:
    """The mapping stage of ``settings.mapping_profile`` (a profile file in a ``mappings/``
    folder), validated now: a bad mapping stops the gateway at start (SettingsError)."""
    if not settings.mapping_profile:
        return None
    profile, digest = load_profile_with_digest(Path(settings.mapping_profile))
    return Mapper(profile, digest)


def _id_edge(settings: Settings, mapper: Mapper | None, secret: bytes) -> IdEdge | None:
    """Client ids at the upstream edge when the profile's ``patients`` section asks for a
    resolver (``{"resolver": "opaque"}`` or a table); none otherwise."""
    if mapper is None or not mapper.profile.patients:
        return None
    profiles_dir = Path(settings.mapping_profile).resolve().parent.parent
    resolver = build_resolver(
        [mapper.profile], derive_box_key(secret, "ids"), folder_reader(profiles_dir)
    )
    bases = (settings.upstream.rstrip("/"), settings.gateway_base_url)
    rewriter = ReferenceRewriter(resolver, mapper.profile.upstream, bases=bases)
    return IdEdge(rewriter, settings.upstream)


def _memberships(
    settings: Settings, forwarder: UpstreamForwarder, ids: IdEdge | None
) -> Memberships:
    """What callers act for, read from the upstream by the gateway itself where a consent
    names an organization, role, care team, group or related person (pipeline.memberships);
    with ``ids``, asked in the upstream's ids and answered in the client's."""
    directory: Directory = UpstreamDirectory(
        lambda: forwarder.upstream,
        base=forwarder.base,
        headers=settings.upstream_headers,
        timeout=settings.membership_timeout,
        ttl=settings.membership_cache_seconds,
        size=settings.membership_cache_size,
        clock=time.monotonic,
    )
    if ids is not None:
        directory = TranslatedDirectory(directory, ids.rewriter)
    deadline = settings.membership_timeout
    if settings.membership_unresolved == "unavailable":
        return Memberships(directory, unresolved="unavailable", deadline=deadline)
    return Memberships(directory, unresolved="deny", deadline=deadline)


def build_enforcement(
    settings: Settings,
    forwarder: UpstreamForwarder,
    *,
    consents: ConsentService,
    ledger: LedgerService,
    secret: bytes,
    verifier: TokenCheck,
    metrics: Metrics,
    export_schema: str = "public",
) -> Enforcement:
    """The enforcement stage (see the module docstring), reaching the upstream through
    ``forwarder``; ``secret`` is the ledger key file's data secret
    (``LedgerKey.data_secret``), which every key here derives from; ``export_schema``: where
    a PostgreSQL store's export jobs are (the log store's schema)."""

    mapper = _mapper(settings)
    ids = _id_edge(settings, mapper, secret)

    async def policies(patient: str) -> tuple[Policy, ...]:
        return await (await consents.registry()).policies(patient)

    async def pseudonym_of(patient: str) -> bytes:
        return await (await consents.store()).pseudonym_for(patient, new_pseudonym())

    async def audit_key(pseudonym: bytes, candidate: bytes) -> bytes:
        return await (await ledger.store()).audit_key(pseudonym, candidate)

    async def audit_key_get(pseudonym: bytes) -> bytes | None:
        return await (await ledger.store()).audit_key_get(pseudonym)

    flow = Flow(
        policies=policies,
        cursors=CursorCodec(derive_box_key(secret, "cursor"), settings.cursor_ttl_seconds),
        guards=_guards(settings),
        defaults=consents.defaults,
        rebaser=forwarder.rebaser,
        base_urls=(settings.upstream.rstrip("/"), settings.gateway_base_url),
        allow_unknown=settings.unknown_patient_contexts,
        wall_clock=consents.wall_clock,
        # Shared by the worker processes of one SQLite store, or by every replica of a
        # PostgreSQL one (pipeline.breakglass, storage.breakglass_open).
        break_glass=BreakGlass(
            settings.break_glass_minutes,
            board=session_board(
                settings.store, derive_box_key(secret, BOARD_PURPOSE), log_store=ledger.store
            ),
        ),
        mapper=mapper,
        memberships=_memberships(settings, forwarder, ids),
        operations=settings.operation_table,
    )
    recorder = AuditRecorder(
        ledger,
        pseudonym_of,
        gateway=AgentInfo(base_url=settings.gateway_base_url, name=GATEWAY_NAME),
        wall_clock=consents.wall_clock,
        # A write's outcome the ledger cannot take waits here, durably (audit.outbox).
        outbox=SqliteOutbox(outbox_path(settings.audit_outbox, settings.store)),
        # A write in flight is not reconciled: it may outlast its upstream exchange a little.
        live_for=2 * settings.upstream_deadline,
        # Outbox rows are MACed under a key of the ledger key's: replayed only if they verify.
        row_key=derive_box_key(secret, "outbox"),
        # Evidence is sealed under per-patient keys, stored wrapped under this ledger key's.
        keys=PatientKeys(
            audit_key, derive_box_key(secret, EVIDENCE_PURPOSE), audit_key_get=audit_key_get
        ),
    )
    # Built in the order they call one another, each handed what it calls: the audit of an
    # exchange, the read half, the write half on it, the Bundle half on both, the pipeline
    # over the three, the enforcement stage over the pipeline and the forwarder.
    audit = ExchangeAudit(recorder, ids_mapped=ids is not None)
    writes = Writes(
        flow,
        audit.record,
        intend=audit.intend,
        # Idempotency tags nobody without the ledger key can compute; the same on every replica.
        tag_key=derive_box_key(secret, "idempotency"),
        # Who may write the records memberships are read from (pipeline.directory).
        directory=DirectoryGuard(settings.directory_admin_role),
    )
    exports = build_exports(
        settings,
        flow,
        audit.record,
        secret=secret,
        wall_clock=consents.wall_clock,
        schema=export_schema,
    )
    pipeline = Pipeline(flow, writes, Bundles(writes, base_path=settings.base_path), exports)
    return Enforcement(
        verifier=verifier,
        pipeline=pipeline,
        audit=audit,
        forwarder=forwarder,
        metrics=metrics,
        gateway_base=settings.gateway_base_url,
        ids=ids,
        admit=ledger.admit,
    )
