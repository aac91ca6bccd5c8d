"""The public CapabilityStatement: the one answer released without a token or a decision.

SMART App Launch 2.x makes ``GET [base]/metadata`` public, so the ASGI edge
(:mod:`middleware.proxy.handler`) serves it through :class:`Capabilities` rather than through
the enforced pipeline: fetched from the upstream by the forwarder
(:mod:`middleware.proxy.forwarder`), rebased, rewritten to describe the gateway
(:func:`~middleware.proxy.capability.describe_gateway`) and kept for ``metadata_ttl``. Asked
with parameters (``mode=terminology``...) it is forwarded as asked and never cached; only a
CapabilityStatement or TerminologyCapabilities is released (never another resource: nothing
here is audited, so nothing here may hold patient data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from middleware import __version__
from middleware.auth.smart import authorization_server, gateway_root, oauth_uris
from middleware.errors import UpstreamError
from middleware.fhir import jsoncodec
from middleware.pipeline.exchange import Upstreamed
from middleware.proxy.capability import describe_gateway
from middleware.proxy.exchange_log import ExchangeLog
from middleware.proxy.forwarder import UpstreamForwarder, decode_upstream
from middleware.settings import Settings

__all__ = ["Capabilities"]

#: What ``GET /metadata?...`` may answer (FHIR R4 capabilitystatement.html, ``mode=terminology``).
_CAPABILITY_TYPES: Final = frozenset({"CapabilityStatement", "TerminologyCapabilities"})


class Capabilities:
    """The gateway's CapabilityStatement (module docstring); ``clock`` returns seconds for
    the cache's age."""

    def __init__(
        self, settings: Settings, forwarder: UpstreamForwarder, *, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self._forwarder = forwarder
        self._clock = clock
        self._cached: tuple[float, bytes] | None = None

    async def statement(self, rid: str | None = None) -> bytes:
        """The gateway's CapabilityStatement, fetched from the upstream at most once per TTL."""
        now = self._clock()
        if self._cached is not None and now - self._cached[0] < self.settings.metadata_ttl:
            return self._cached[1]
        status, raw = await self._forwarder.fetch_metadata(rid)
        if status != 200:
            raise UpstreamError("upstream server did not return its CapabilityStatement")
        document = decode_upstream(raw, self.settings.max_json_depth)
        if not isinstance(document, dict) or document.get("resourceType") != "CapabilityStatement":
            raise UpstreamError("upstream server did not return a CapabilityStatement")
        rebaser = self._forwarder.rebaser
        rebaser.rewrite(document, rebaser.occurrences(raw))
        self._describe(document)
        body = jsoncodec.encode(document)
        self._cached = (now, body)
        return body

    async def asked(
        self, target: str, *, client: Mapping[str, str], client_host: str | None, log: ExchangeLog
    ) -> Upstreamed:
        """The CapabilityStatement asked with parameters: forwarded as asked, rebased, never
        cached; anything but a capability answer is the upstream's failure (502)."""
        up = await self._forwarder.forward(
            "GET", target, client=client, client_host=client_host, log=log
        )
        document = up.document
        if (
            up.status != 200
            or not isinstance(document, dict)
            or document.get("resourceType") not in _CAPABILITY_TYPES
        ):
            raise UpstreamError("upstream server did not return its capabilities")
        rebaser = self._forwarder.rebaser
        rebaser.rewrite(document, rebaser.occurrences(up.raw))
        if document["resourceType"] == "CapabilityStatement":
            # ``_format=json`` (HAPI's encodedJson) and other parameters ask the same question:
            # the answer describes the gateway, as the plain one does.
            self._describe(document)
        return up

    def _describe(self, document: dict[str, Any]) -> None:
        """Rewrite the upstream's CapabilityStatement (rebased) to describe the gateway."""
        auth = self.settings.auth
        root = gateway_root(self.settings.gateway_base_url, self.settings.base_path)
        describe_gateway(
            document,
            gateway_base=self.settings.gateway_base_url,
            version=__version__,
            smart=bool(auth.issuers) or auth.dev_issuer_enabled,
            oauth_uris=oauth_uris(authorization_server(auth, gateway_root=root)),
            operations=self.settings.operation_table,
        )
