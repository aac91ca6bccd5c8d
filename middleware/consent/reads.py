"""What a set of compiled consents can read of a resource and of the clock. Pure.

:func:`~middleware.consent.decide.decide` always reads a resource's type (per-type defaults,
``class``), its patient compartment (which consents speak) and its security labels (the
explicit-consent check of sensitive data, ``securityLabel``). Everything else it reads only
when some provision states the attribute (see :mod:`middleware.consent.match`):

* ``code`` and coded ``class`` (e.g. a LOINC document type): the resource's codes;
* ``class`` naming a type or a profile: the resource's profiles;
* ``dataPeriod``: the resource's clinical date, and only on which side of each period bound
  it lies;
* ``data``: the resource's id, authors, references and referrers;
* ``expression`` (R5 FHIRPath): the whole resource, so no decision is cached by a key.

And of the clock, only on which side of each ``period`` bound (the consent's and every
provision's) ``now`` lies: between two consecutive bounds every answer stays the same.
:class:`Reads` records that, so a summary can skip what nobody reads
(:func:`~middleware.consent.summary.summarize`) and a cached decision can be keyed by exactly
what it depends on (:mod:`middleware.consent.decisions`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from middleware.consent.model import Period, Policy, Provision

__all__ = ["EVERYTHING", "Reads", "reads_of", "window"]


@dataclass(frozen=True, slots=True)
class Reads:
    """The resource attributes (beyond type, compartment and labels) some consent reads, and
    the sorted instants at which an answer can change: ``instants`` for ``now`` (``period``
    bounds), ``date_bounds`` for the clinical date (``dataPeriod`` bounds)."""

    codes: bool = False
    profiles: bool = False
    clinical_date: bool = False
    data: bool = False
    expression: bool = False
    instants: tuple[datetime, ...] = ()
    date_bounds: tuple[datetime, ...] = ()

    def __or__(self, other: Reads) -> Reads:
        return Reads(
            codes=self.codes or other.codes,
            profiles=self.profiles or other.profiles,
            clinical_date=self.clinical_date or other.clinical_date,
            data=self.data or other.data,
            expression=self.expression or other.expression,
            instants=tuple(sorted({*self.instants, *other.instants})),
            date_bounds=tuple(sorted({*self.date_bounds, *other.date_bounds})),
        )


#: Every attribute: what a summary holds when nobody says what is read.
EVERYTHING = Reads(codes=True, profiles=True, clinical_date=True, data=True, expression=True)


def reads_of(policies: Iterable[Policy]) -> Reads:
    """What ``policies`` can read, over every provision of every policy (whatever its status:
    a conservative over-approximation never makes a key too coarse)."""
    flags = dict.fromkeys(("codes", "profiles", "clinical_date", "data", "expression"), False)
    instants: set[datetime] = set()
    dates: set[datetime] = set()
    for policy in policies:
        _bounds(policy.period, instants)
        stack: list[Provision] = [policy.root]
        while stack:
            p = stack.pop()
            stack.extend(p.children)
            _bounds(p.period, instants)
            if p.codes or p.class_codings:
                flags["codes"] = True
            if p.class_names:
                flags["profiles"] = True
            if p.data_period is not None:
                flags["clinical_date"] = True
                _bounds(p.data_period, dates)
            if p.data:
                flags["data"] = True
            if p.expression is not None:
                flags["expression"] = True
    return Reads(**flags, instants=tuple(sorted(instants)), date_bounds=tuple(sorted(dates)))


def window(bounds: Sequence[datetime], instant: datetime | None) -> int:
    """Which of the half-open intervals cut by the sorted ``bounds`` holds ``instant`` (-1:
    no instant). Every :class:`~middleware.consent.model.Period` made of these bounds
    (``start <= t < end``) contains either every instant of an interval or none of them."""
    return -1 if instant is None else bisect_right(bounds, instant)


def _bounds(period: Period | None, into: set[datetime]) -> None:
    if period is not None:
        if period.start is not None:
            into.add(period.start)
        if period.end is not None:
            into.add(period.end)
