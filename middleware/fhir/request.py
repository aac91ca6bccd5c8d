"""The typed value a classified FHIR request becomes.

A :class:`FhirRequest` is what every later stage (identify, decide, forward, filter, audit) reads
instead of the raw path: it names the interaction (FHIR R4 RESTful API, http://hl7.org/fhir/R4/http.html),
its level, the resource type, id and version, the compartment of a compartment search and the
operation name. It carries the raw query string unchanged; parsing parameters is the job of the
stage that needs them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FhirRequest", "Interaction", "Level"]


class Interaction(enum.StrEnum):
    """FHIR interactions (http://hl7.org/fhir/R4/valueset-type-restful-interaction.html), plus
    ``operation`` and ``graphql`` which FHIR models separately."""

    READ = "read"
    VREAD = "vread"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    CREATE = "create"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    SEARCH_COMPARTMENT = "search-compartment"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    CAPABILITIES = "capabilities"
    BATCH = "batch"
    TRANSACTION = "transaction"
    OPERATION = "operation"
    GRAPHQL = "graphql"
    #: Not a FHIR interaction: a request refused before it could be classified (a path trick,
    #: a method-override header...). :func:`~middleware.fhir.classify.classify` never returns
    #: it; the audit trail records such refusals under it.
    INVALID = "invalid"


class Level(enum.StrEnum):
    SYSTEM = "system"
    TYPE = "type"
    INSTANCE = "instance"


#: Interactions that change data upstream (checked before forwarding, audited as writes).
WRITE_INTERACTIONS = frozenset(
    {
        Interaction.CREATE,
        Interaction.UPDATE,
        Interaction.PATCH,
        Interaction.DELETE,
        Interaction.BATCH,
        Interaction.TRANSACTION,
    }
)


@dataclass(frozen=True, slots=True)
class FhirRequest:
    """A classified FHIR request.

    ``path`` is the request path below the FHIR base, validated segment by segment (no leading
    slash; ``""`` for the base itself); forwarding rebuilds the upstream URL from it, never
    from the raw path. ``query`` is the raw query string (bytes, not decoded).
    ``conditional`` marks conditional create/update/patch/delete. ``via_post`` marks a search
    sent as ``POST .../_search`` with a form body. ``patch_format`` is ``"json-patch"`` or
    ``"fhirpath-patch"`` for patches.
    """

    interaction: Interaction
    method: str
    level: Level
    path: str
    query: bytes = b""
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    compartment: tuple[str, str] | None = None
    operation: str | None = None
    conditional: bool = False
    via_post: bool = False
    patch_format: str | None = None

    @property
    def is_write(self) -> bool:
        """True for interactions that change data upstream."""
        return self.interaction in WRITE_INTERACTIONS
