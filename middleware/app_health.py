"""Start-up checks, readiness and the upstream probe: what the gateway depends on, checked.

Kept beside ``app.py`` (as ``app_enforcement.py`` is) so the app module stays about routing.

- **Start-up** (:func:`open_stores`): the ledger and the consent store are opened, the log
  replayed, before the gateway accepts a request. A store that cannot be opened stops start-up
  with :class:`StartupFailure`, whose message names the store (a PostgreSQL DSN without its
  password) and the cause (``sqlite:/srv/x.db: ledger store unavailable: unable to open
  database file (OperationalError); the directory /srv does not exist``): the gateway never
  runs answering 503 to every FHIR request while ``/healthz`` says it is fine.
- **Upstream at start-up** (:func:`probe_upstream`): an upstream that does not answer is
  logged with its cause but does not stop the gateway (containers start in any order);
  ``/readyz`` reports it until it answers.
- **Readiness** (:func:`readiness`): ``/readyz`` is 200 only when the ledger can commit, the
  consent store answers a ping and the upstream answers ``GET [base]/metadata`` with 200, each
  within :data:`READY_TIMEOUT` seconds; a failed check is logged with its cause. "Can commit"
  is :meth:`~middleware.ledger.service.LedgerService.check_commit`: the log store answers a
  ping, its writer is running (a crashed one is replaced), and a batch or probe committed within
  ``ready_commit_age`` seconds with no failed batch since, else a probe write
  (:meth:`~middleware.storage.ledger_base.LogStore.probe_commit`) commits now. A ping alone
  is answered by a database that can no longer commit (a full disk, a write lock held
  elsewhere). Nor is it ready while write outcomes wait in the audit outbox
  (:mod:`middleware.audit.outbox`): each check replays what it can first. ``/healthz`` is
  liveness only: the process is up and serving HTTP.

Causes are rendered by :func:`middleware.ops.causes.describe`: class names, errno texts and
hosts, never a URL path or query (they can name a patient).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from middleware.consent.service import ConsentService
from middleware.errors import GatewayError, ServiceUnavailable, SettingsError
from middleware.ledger.service import LedgerService
from middleware.logging import get_logger
from middleware.ops.causes import Cause, describe, store_label
from middleware.proxy.handler import ProxyHandler
from middleware.proxy.reconcile import reconcile
from middleware.proxy.upstream import UpstreamRequest
from middleware.settings import Settings

__all__ = ["READY_TIMEOUT", "StartupFailure", "open_stores", "probe_upstream", "readiness"]

#: Seconds each ``/readyz`` check may take (a container HEALTHCHECK typically allows 3).
READY_TIMEOUT: Final = 2.0


class StartupFailure(Exception):
    """A dependency the gateway cannot run without is unusable; the message says which and why
    (no traceback needed)."""


async def open_stores(
    settings: Settings, ledger: LedgerService, consents: ConsentService | None
) -> str:
    """Open (and replay) the log store, then the consent store; return the store's name.
    Raises :class:`StartupFailure` naming the store and the cause, or, when the store refused
    the configuration (a :class:`~middleware.errors.SettingsError` such as a log another key
    signed), in that refusal's own words."""
    try:
        store = await ledger.store()
        if consents is not None:
            await consents.registry()
    except GatewayError as exc:
        if isinstance(exc.__cause__, SettingsError):
            raise StartupFailure(str(exc.__cause__)) from exc.__cause__
        raise StartupFailure(_store_message(settings.store, exc)) from exc
    return store.name


def _store_message(url: str, exc: BaseException) -> str:
    cause = describe(exc)
    message = f"store {store_label(url)}: {cause.error} ({cause.error_type})"
    hint = _sqlite_hint(url)
    return f"{message}; {hint}" if hint else message


def _sqlite_hint(url: str) -> str | None:
    """Why SQLite's "unable to open database file" happened, when the file system says."""
    if not url.startswith("sqlite:"):
        return None
    directory = Path(url.removeprefix("sqlite:")).parent
    if not directory.is_dir():
        return f"the directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"the directory {directory} is not writable by this user"
    return None


async def probe_upstream(proxy: ProxyHandler, settings: Settings) -> bool:
    """Ask the upstream for its CapabilityStatement once; log the outcome (info when it
    answers, warning with the cause when it does not). Never raises."""
    log = get_logger("consentry.upstream")
    host = _host(settings.upstream)
    try:
        status = await _metadata_status(proxy, settings)
    except (GatewayError, TimeoutError) as exc:
        log.warning("upstream unreachable", host=host, **_cause(exc).fields())
        return False
    if status != 200:
        log.warning("upstream not ready", host=host, status=status)
        return False
    log.info("upstream answers", host=host)
    return True


async def readiness(
    settings: Settings,
    ledger: LedgerService,
    consents: ConsentService | None,
    proxy: ProxyHandler,
) -> dict[str, str]:
    """``{"store": ..., "audit_outbox": ..., "upstream": ...}``, each ``"ok"`` or
    ``"unavailable"`` (module docstring)."""
    log = get_logger("consentry.ready")
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await (await ledger.store()).ping()
            await ledger.check_commit(settings.ready_commit_age)
            if consents is not None:
                await (await consents.store()).ping()
        checks["store"] = "ok"
    except (GatewayError, TimeoutError) as exc:
        log.warning("store not ready", store=store_label(settings.store), **_cause(exc).fields())
        checks["store"] = "unavailable"
    # Write outcomes waiting in the audit outbox (audit.outbox), and interrupted writes not
    # reconciled yet (proxy.reconcile): the audit is incomplete until the ledger has them;
    # this does what it can now.
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            waiting = await reconcile(proxy.enforcement.recorder, proxy.forwarder)
    except TimeoutError:
        waiting = -1
    if waiting:
        log.warning("audit outbox not empty", entries=waiting)
    checks["audit_outbox"] = "unavailable" if waiting else "ok"
    try:
        status = await _metadata_status(proxy, settings)
    except (GatewayError, TimeoutError) as exc:
        log.warning("upstream not ready", host=_host(settings.upstream), **_cause(exc).fields())
        checks["upstream"] = "unavailable"
    else:
        if status != 200:
            log.warning("upstream not ready", host=_host(settings.upstream), status=status)
        checks["upstream"] = "ok" if status == 200 else "unavailable"
    return checks


async def _metadata_status(proxy: ProxyHandler, settings: Settings) -> int:
    async with asyncio.timeout(READY_TIMEOUT):
        response = await proxy.forwarder.upstream.send(
            UpstreamRequest(
                "GET",
                f"{settings.upstream.rstrip('/')}/metadata",
                [("accept", "application/fhir+json")],
            )
        )
        await response.aclose()
    return response.status


def _cause(exc: BaseException) -> Cause:
    if isinstance(exc, TimeoutError):
        exc = ServiceUnavailable(f"no answer within {READY_TIMEOUT} s")
    return describe(exc)


def _host(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]
