"""What each ledger entry of an audited exchange names (pure): its patient and the resources
its BALP RESTful event lists as Domain Resource entities. The one place this is decided, in
two steps:

* :func:`named_resources`, when the exchange is made (``proxy.exchange_audit.exchange_of``):
  an exchange names the resources released or written one by one only for a read, a vread,
  a history of one record and a write; a search's answer is named by its query instead (BALP
  Query), and any other interaction by its request.
* :func:`entries`, when the exchange is planned (:func:`middleware.audit.plan.plan`), per
  patient of the exchange (in order) or for the one entry without a patient, by phase:

  ========  ===================================================================
  phase     resources the entry names
  ========  ===================================================================
  exchange  the exchange's, for a patient whose data was disclosed (status below
            400, the patient released) and for the entry without a patient; none
            for a patient whose data was withheld: the resources released belong
            to other patients, so its event names what was asked for (the
            request's own target, :func:`middleware.audit.facts.row_of`)
  decision  the exchange's (a write's, before it is forwarded)
  outcome   the exchange's (a write's, once upstream answered, whatever the status)
  ========  ===================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Final, Literal

from middleware.audit.parts import patient_reference
from middleware.consent.decide import Decision
from middleware.fhir.request import Interaction

__all__ = ["NAMED_RESOURCES", "Entry", "Phase", "entries", "named_resources"]

Phase = Literal["exchange", "decision", "outcome"]
"""``exchange``: reads, searches and every denied or failed request, once answered;
``decision``: a write, before it is forwarded; ``outcome``: a write, once upstream answered."""

Entry = tuple[str | None, Decision | None, bool, tuple[str, ...]]
"""One entry of an exchange: its patient (``Patient/<id>``, None for the one entry of an
exchange without patients), the consent decision taken for it (None when none was needed),
whether its data was disclosed (phase ``exchange`` only, else False), the ``Type/id`` its
RESTful event names (empty: the request's own target). A plain tuple: made per patient on
every audited request."""

#: Interactions whose audit events list the released or written resources one by one.
NAMED_RESOURCES: Final = frozenset(
    {
        Interaction.READ,
        Interaction.VREAD,
        Interaction.HISTORY_INSTANCE,
        Interaction.CREATE,
        Interaction.UPDATE,
        Interaction.PATCH,
        Interaction.DELETE,
    }
)
_NONE: Final[tuple[str, ...]] = ()


def named_resources(interaction: Interaction, refs: Iterable[str]) -> tuple[str, ...]:
    """The ``Type/id`` an exchange of ``interaction`` names of the resources it released or
    wrote (``refs``, order kept): all of them for :data:`NAMED_RESOURCES`, else none."""
    return tuple(refs) if interaction in NAMED_RESOURCES else _NONE


def entries(
    phase: Phase,
    status: int,
    decisions: Mapping[str, Decision | None],
    released: AbstractSet[str],
    resource_refs: Sequence[str],
) -> list[Entry]:
    """The entries of an exchange in ``phase``, answered ``status``: one per patient of
    ``decisions`` in order (bare ids or ``Patient/<id>``), else one without a patient.
    ``released``: the patients whose data reached the client; ``resource_refs``: those the
    exchange names (:func:`named_resources`). Raises :class:`ValueError` for a patient that
    is no FHIR id or ``Patient/<id>``."""
    # Every released patient is checked, whatever the phase and status (a malformed one raises),
    # and its reference kept by the form it came in: a patient usually comes in the same form
    # in both (the judge's ``Patient/<id>``), so its reference is made once, not twice.
    # The test only skips building an empty dict (`or True` is an equivalent mutant).
    shown = {p: patient_reference(p) for p in released} if released else {}
    refs = tuple(resource_refs)  # the same tuple when it is one (an Exchange's is)
    if phase != "exchange":
        return [
            (shown.get(p) or patient_reference(p), d, False, refs) for p, d in decisions.items()
        ] or [(None, None, False, refs)]
    if not decisions:
        return [(None, None, status < 400, refs)]
    if status >= 400:  # nothing was disclosed
        return [
            (shown.get(p) or patient_reference(p), d, False, _NONE) for p, d in decisions.items()
        ]
    out: list[Entry] = []
    others: set[str] | None = None  # the references released, once a patient needs them
    for p, d in decisions.items():
        q = shown.get(p)
        if q is None:
            q = patient_reference(p)
            if others is None:
                others = set(shown.values())
            if q not in others:
                out.append((q, d, False, _NONE))
                continue
        out.append((q, d, True, refs))
    return out
