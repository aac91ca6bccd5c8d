"""The mapping stage: the upstream's codes and identifier systems on one side, the client's on
the other (issue #6), around the enforcement stages.

Where it sits (architecture: classify, identify, decide, forward, filter, **map**, audit):

- **searches**: the client's token and identifier parameters are rewritten into the
  upstream's (:func:`~middleware.mapping.map_search`) after the guards and the patient pin
  ran on the client's own query, before it is forwarded;
- **writes**: the client's resource becomes the upstream's (codings the gateway added are
  stripped, codes translated back, identifier systems renamed:
  :func:`~middleware.mapping.prepare_write`) *before* the consent check, so consent is always
  decided on what the upstream will hold;
- **answers**: after the filter (consent decided on the upstream's native resources), each
  released resource gets its translated codings added beside the source ones, marked, and
  its identifier systems renamed (:func:`~middleware.mapping.map_response`).

When the client and the upstream speak different FHIR versions (the profile's
``conversion``), answers are converted after the code mapping, upstream version to client
version, and writes before it, client version to upstream version
(:func:`~middleware.mapping.versions.convert_document`): consent is still decided on the
upstream's version. What a conversion carries or loses is counted in the operational log (no
values); a loss the profile refuses is a 422 for a write and a 502 for an answer.

Pure: no I/O; the profile was loaded and validated at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from middleware.errors import UnprocessableEntity, UpstreamError
from middleware.logging import get_logger
from middleware.mapping import Profile, map_response, map_search, prepare_write
from middleware.mapping.answer import map_answer_in_place
from middleware.mapping.versions import Release, convert_document, release_of

__all__ = ["Mapper"]

_log = get_logger("consentry.mapping")


@dataclass(frozen=True, slots=True)
class Mapper:
    """One upstream's mapping profile and the digest of the files it was loaded from."""

    profile: Profile
    digest: str

    @property
    def label(self) -> str:
        """``<profile id> <digest>``: what audit records and the response header name."""
        return f"{self.profile.id} {self.digest}"

    def search(
        self, resource_type: str | None, params: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """The query in the upstream's codes and systems (a system search is left as is)."""
        if resource_type is None:
            return params
        return list(map_search(resource_type, params, self.profile).params)

    def write(self, resource: Any) -> Any:
        """The client's resource as the upstream should store it."""
        conversion = self.profile.conversion
        if conversion is not None and isinstance(resource, dict):
            resource = self._convert(
                resource, toward="upstream", refuse=conversion.refuse_on_loss("write")
            )
        return prepare_write(resource, self.profile).resource

    def answer(self, document: Any, *, owned: bool = False) -> Any:
        """A released answer (resource or Bundle) as the client should see it; the same
        object when nothing changed.

        ``owned``: ``document`` was decoded for this answer and nobody else reads it (what
        the release stage filtered): it is mapped in one pass, in place
        (:func:`~middleware.mapping.answer.map_answer_in_place`), and a shallow copy of its
        root is returned when anything changed, so that callers can still tell.
        """
        if owned:
            return self._answer_in_place(document)
        mapped = map_response(document, self.profile).resource
        conversion = self.profile.conversion
        if conversion is None or not isinstance(mapped, dict):
            return mapped
        try:
            return self._convert(
                mapped, toward="client", refuse=conversion.refuse_on_loss("response")
            )
        except UnprocessableEntity as exc:
            # Not the client's fault: the upstream's record cannot be shown in its version.
            raise UpstreamError("the upstream's answer cannot be converted without loss") from exc

    def _answer_in_place(self, document: Any) -> Any:
        conversion = self.profile.conversion
        versions: tuple[Release, Release] | None = None
        if conversion is not None:
            client = release_of(self.profile.client_version)
            upstream = release_of(self.profile.upstream_version)
            assert client is not None  # validated at load
            assert upstream is not None
            versions = (upstream, client)
        try:
            done = map_answer_in_place(
                document,
                self.profile,
                conversion=versions,
                refuse_on_loss=conversion is not None and conversion.refuse_on_loss("response"),
            )
        except UnprocessableEntity as exc:
            raise UpstreamError("the upstream's answer cannot be converted without loss") from exc
        if done.losses:
            lost = sum(1 for loss in done.losses if loss.lost)
            _log.info(
                "version conversion",
                toward="client",
                carried=len(done.losses) - lost,
                lost=lost,
            )
        if not done.changed:
            return document
        return dict(document) if isinstance(document, dict) else list(document)

    def _convert(self, document: dict[str, Any], *, toward: str, refuse: bool) -> Any:
        conversion = self.profile.conversion
        assert conversion is not None  # callers check
        client = release_of(self.profile.client_version)
        upstream = release_of(self.profile.upstream_version)
        assert client is not None  # validated at load
        assert upstream is not None
        source, target = (client, upstream) if toward == "upstream" else (upstream, client)
        converted = convert_document(
            document,
            source=source,
            target=target,
            rules=conversion.rules,
            refuse_on_loss=refuse,
            status="raise" if toward == "upstream" else "report",
        )
        if converted.losses:
            lost = len(converted.lost)
            _log.info(
                "version conversion", toward=toward, carried=len(converted.losses) - lost, lost=lost
            )
        return converted.resource

    def entries(self, entries: Sequence[Any], *, owned: bool = False) -> list[Any]:
        """Bundle entries whose resources are mapped for the client (``owned``: in place, as
        :meth:`answer`)."""
        out: list[Any] = []
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                mapped = self.answer(entry["resource"], owned=owned)
                if mapped is not entry["resource"]:
                    entry = {**entry, "resource": mapped}  # noqa: PLW2901 - copy on write
            out.append(entry)
        return out
