"""Who is asking and what about: the inputs of a consent decision besides the policies.

Both are frozen values built by the pipeline before it calls
:func:`middleware.consent.decide.decide`: the principal from the verified token, the resource
summary from the resource (see :func:`middleware.consent.summary.summarize`) and the patient
compartment. Everything the decision loop compares is precomputed here, once per value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from middleware.consent.model import UNLABELLED_RANK, Coding, confidentiality_rank

__all__ = ["Principal", "ResourceSummary"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The party requesting access, as a consent ``provision.actor`` would name it.

    ``reference`` is the user's literal reference (``Practitioner/1``, ``Patient/7``) and
    ``memberships`` the references of the organisations, care teams and groups it acts for: an
    actor naming any of them matches. ``identifiers`` (``(system, value)``) match actors given by
    logical reference; ``roles`` match actors given by role only. ``patient`` is the launch
    patient context; the pipeline scopes requests with it, and :func:`decide` only asks whether
    there is one (a caller without one acts for the record holder: see ``Defaults.collect``).
    """

    reference: str | None = None
    roles: frozenset[Coding] = frozenset()
    identifiers: frozenset[tuple[str, str]] = frozenset()
    memberships: frozenset[str] = frozenset()
    patient: str | None = None

    references: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        refs = set(self.memberships)
        if self.reference:
            refs.add(self.reference)
        object.__setattr__(self, "references", frozenset(refs))


@dataclass(frozen=True, slots=True)
class ResourceSummary:
    """What a consent can test about one resource, without the resource itself.

    ``patients`` are the ``Patient/<id>`` references of the compartments the resource is in; a
    consent only speaks for its own patient. ``security_labels`` come from ``meta.security``
    (a resource without a v3-Confidentiality label counts as ``N``). ``clinical_date`` is the
    clinically relevant time tested by ``provision.dataPeriod``; None means unknown (then a deny
    provision with a dataPeriod applies and a permit does not). ``references`` are the literal
    references the resource makes, ``referenced_by`` those known to point at it, ``authors`` its
    authors: they serve ``provision.data`` meanings dependents, related and authoredby;
    ``source`` is the resource, for ``provision.expression``.
    References are normalised ``Type/id`` strings
    (:func:`~middleware.consent.model.normalize_reference`).
    """

    resource_type: str
    id: str | None = None
    patients: frozenset[str] = frozenset()
    codes: frozenset[Coding] = frozenset()
    security_labels: frozenset[Coding] = frozenset()
    profiles: frozenset[str] = frozenset()
    clinical_date: datetime | None = None
    authors: frozenset[str] = frozenset()
    references: frozenset[str] = frozenset()
    referenced_by: frozenset[str] = frozenset()
    #: The resource itself, for R5 ``provision.expression`` (FHIRPath); None when no consent
    #: decided against has one (then nothing reads it).
    source: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    reference: str | None = field(init=False, repr=False, compare=False)
    confidentiality: int = field(init=False, repr=False, compare=False)
    class_keys: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "reference", f"{self.resource_type}/{self.id}" if self.id else None)
        rank = confidentiality_rank(self.security_labels)
        put(self, "confidentiality", UNLABELLED_RANK if rank is None else rank)
        put(self, "class_keys", frozenset({self.resource_type, *self.profiles}))
