"""Matching one request against one consent's provision tree.

The rule (http://hl7.org/fhir/R5/consent.html#provisions, "Provisions"): a provision matches when
every attribute it states matches (AND), an attribute matching when any of its values does (OR);
an absent attribute places no condition. Within one consent the most specific matching provision
decides: :func:`resolve` walks down through matching provisions and the deepest match on each
path wins. Siblings are alternatives ("matching any of the sibling provisions at one level
constitutes an exception"); when matching siblings end in different effects, deny wins, so one
consent never yields both.

Dimension by dimension (``p`` the provision, ``r`` the request):

* ``period``: ``now`` in ``p.period``.
* ``actor``: an actor reference equals the principal's reference or one of its memberships, or an
  actor identifier is one of the principal's identifiers, or a role-only actor's role is one of
  the principal's roles.
* ``action`` / ``purpose``: the request's action is listed / a purpose of use of the request is.
* ``class`` (R4) / ``resourceType`` + ``documentType`` (R5): the resource type or a profile is
  named, or a coded class (e.g. a LOINC document type) is among the resource's codes.
* ``code``: a listed coding is among the resource's codes.
* ``securityLabel``: see "Security labels" in :mod:`middleware.consent.decide`.
* ``dataPeriod``: the resource's clinical date lies in it; an unknown date matches denies only.
* ``data``: ``instance`` the resource itself; ``related`` the resource or one the named resource
  refers to; ``dependents`` the resource or one that refers to the named resource;
  ``authoredby`` a resource the named party authored (ConsentDataMeaning).
* ``expression`` (R5): the FHIRPath expression is true on the resource; an unknown answer
  (error, empty or non-boolean result) matches denies only (:mod:`middleware.consent.expression`).
"""

from __future__ import annotations

from datetime import datetime

from middleware.consent.expression import holds
from middleware.consent.model import DENY, PERMIT, Coding, Effect, Provision
from middleware.consent.request import Principal, ResourceSummary

__all__ = ["Request", "matches", "resolve"]


class Request:
    """One access request, flattened for the matching loop (built once per decision)."""

    __slots__ = ("action", "now", "principal", "purposes", "resource")

    def __init__(
        self,
        principal: Principal,
        action: Coding,
        purposes: frozenset[Coding],
        resource: ResourceSummary,
        now: datetime,
    ) -> None:
        self.principal = principal
        self.action = action
        self.purposes = purposes
        self.resource = resource
        self.now = now


def matches(p: Provision, r: Request) -> bool:
    """True if every condition ``p`` states holds for ``r``."""
    if p.unconditional:
        return True
    if p.period is not None and not p.period.contains(r.now):
        return False
    principal, resource = r.principal, r.resource
    if p.actors and not (
        not p.actor_refs.isdisjoint(principal.references)
        or not p.actor_identifiers.isdisjoint(principal.identifiers)
        or p.actor_roles.matches_any(principal.roles)
    ):
        return False
    if p.actions and not p.actions.matches(r.action):
        return False
    if p.purposes and not p.purposes.matches_any(r.purposes):
        return False
    if (
        p.classes
        and p.class_names.isdisjoint(resource.class_keys)
        and not p.class_codings.matches_any(resource.codes)
    ):
        return False
    if p.codes and not p.codes.matches_any(resource.codes):
        return False
    if p.security_labels and not _labels_match(p, resource):
        return False
    if p.data_period is not None:
        when = resource.clinical_date
        if when is None:
            if p.effect != DENY:
                return False
        elif not p.data_period.contains(when):
            return False
    if p.data and not _data_matches(p, resource):
        return False
    if p.expression is not None:
        verdict = holds(p.expression, resource.source)
        return p.effect == DENY if verdict is None else verdict
    return True


def _labels_match(p: Provision, resource: ResourceSummary) -> bool:
    bound = p.confidentiality_bound
    if bound is not None:
        rank = resource.confidentiality
        if rank <= bound if p.effect == PERMIT else rank >= bound:
            return True
    return p.other_labels.matches_any(resource.security_labels)


def _data_matches(p: Provision, resource: ResourceSummary) -> bool:
    ref = resource.reference
    return (
        (ref is not None and ref in p.data_self)
        or not p.data_related.isdisjoint(resource.referenced_by)
        or not p.data_dependents.isdisjoint(resource.references)
        or not p.data_authors.isdisjoint(resource.authors)
    )


def resolve(node: Provision, r: Request) -> tuple[Effect | None, tuple[Provision, ...]]:
    """Effect of a provision already known to match, and the provisions that decided it.

    The deciders are the deepest matching provisions whose effect stands (several when
    siblings agree); ``node`` itself when no child matches. The effect is None only when no
    provision below a root without a base decision matches.
    """
    denies: list[Provision] = []
    permits: list[Provision] = []
    for child in node.children:
        if matches(child, r):
            effect, deciders = resolve(child, r)
            if effect == DENY:
                denies.extend(deciders)
            elif effect == PERMIT:
                permits.extend(deciders)
    if denies:
        return DENY, tuple(denies)
    if permits:
        return PERMIT, tuple(permits)
    return node.effect, (node,)
