"""Consent decisions cached by exactly what they depend on. Pure (no I/O, no clock of its own).

:func:`~middleware.consent.decide.decide` is a function of the principal, the action, the
purposes, the policies, the deployment defaults, the parts of the resource summary the policies
read and the clock. A :class:`DecisionCache` (one per gateway, for its one
:class:`~middleware.consent.decide.Defaults`) keeps its answers under a key made of those
inputs, narrowed to what can change the answer (:mod:`middleware.consent.reads`):

* **policies**: the tuple of compiled policies the registry handed out, *by identity*. The
  registry (:class:`~middleware.consent.registry.ConsentRegistry`) syncs with the ledger's
  consent position before every lookup and builds a new tuple whenever a patient's consents
  changed, on every replica; a tuple of frozen policies never changes. So a consent change is
  a new key and the old entries are never read again (they age out of the LRU). The cache
  holds each tuple it keys by, so its ``id`` cannot be reused while the entry lives.
* **caller, action, purposes**: the principal (reference, roles, identifiers, memberships,
  launch patient), compared by value.
* **clock**: not the instant but which interval between two consecutive ``period`` bounds of
  the policies it falls in (:func:`~middleware.consent.reads.window`): the answer cannot
  change inside one, and it is a new key once ``now`` crosses a bound (a provision's period
  ending). A miss decides with the ``now`` of the request that missed; any other instant of
  the interval gives the same decision.
* **resource**: type, patient compartment and security labels always; codes, profiles, the
  clinical date's interval between ``dataPeriod`` bounds, id, authors and references only
  when some provision reads them. A provision ``expression`` (FHIRPath) can read anything:
  then nothing is cached (:meth:`Decider.decide` decides every time).

The cached :class:`~middleware.consent.decide.Decision` is the object the uncached call would
have returned for every request under the same key, its trace included: the trace names
consents, provision paths, the resource type and labels, all part of the key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from datetime import datetime
from typing import Final

from middleware.consent.decide import Decision, Defaults, decide
from middleware.consent.model import Coding, Policy
from middleware.consent.reads import Reads, reads_of, window
from middleware.consent.request import Principal, ResourceSummary
from middleware.consent.summary import Facts
from middleware.recent import RecentByIdentity

__all__ = ["DecisionCache", "Decider"]

#: A slot pins its policies tuple (a few KB a consent): 1,024 bounds what stale ones hold.
_MAX_SLOTS: Final = 1024
_MAX_ENTRIES: Final = 256


class Decider:
    """Decisions for one patient's ``policies``, one caller, action and purposes, at one
    clock interval: :meth:`decide` is :func:`~middleware.consent.decide.decide` with those
    arguments, memoised by the parts of the summary the policies read."""

    __slots__ = ("_args", "_dates", "_entries", "_max", "reads")

    def __init__(
        self,
        args: tuple[Principal, Coding, frozenset[Coding], tuple[Policy, ...], Defaults, datetime],
        reads: Reads,
        max_entries: int,
    ) -> None:
        self._args = args
        self.reads = reads
        self._dates = reads.date_bounds
        self._entries: dict[Hashable, Decision] = {}
        self._max = max_entries

    def decide(self, found: Facts) -> Decision:
        """The decision on the resource ``found`` describes (:func:`~middleware.consent.
        summary.facts`, given this decider's :attr:`reads` or more): cached when the same key
        was decided before; only a miss builds the :class:`ResourceSummary`."""
        reads = self.reads
        if reads.expression:
            principal, action, purposes, policies, defaults, now = self._args
            summary = ResourceSummary(*found)
            return decide(
                principal, action, purposes, summary, policies, defaults=defaults, now=now
            )
        key = (
            found.resource_type,
            found.patients,
            found.security_labels,
            found.codes if reads.codes else None,
            found.profiles if reads.profiles else None,
            window(self._dates, found.clinical_date) if reads.clinical_date else None,
            (found.id, found.authors, found.references, found.referenced_by)
            if reads.data
            else None,
        )
        decision = self._entries.get(key)
        if decision is not None:
            return decision
        principal, action, purposes, policies, defaults, now = self._args
        summary = ResourceSummary(*found)
        decision = decide(
            principal, action, purposes, summary, policies, defaults=defaults, now=now
        )
        if len(self._entries) >= self._max:
            self._entries.clear()  # bounded; refilled by the next decisions
        self._entries[key] = decision
        return decision


class DecisionCache:
    """Bounded LRU of :class:`Decider` for one deployment's ``defaults`` (see the module
    docstring): at most ``max_slots`` (patient policies, caller, action, purposes, clock
    interval) slots, each holding at most ``max_entries`` decisions."""

    def __init__(
        self,
        defaults: Defaults,
        *,
        max_slots: int = _MAX_SLOTS,
        max_entries: int = _MAX_ENTRIES,
    ) -> None:
        if max_slots < 1 or max_entries < 1:
            raise ValueError("cache sizes must be positive")
        self.defaults = defaults
        self._max_slots = max_slots
        self._max_entries = max_entries
        # key -> (the policies tuple, pinned so its id stays unique; the decider)
        self._slots: OrderedDict[Hashable, tuple[tuple[Policy, ...], Decider]] = OrderedDict()
        # What each policies tuple reads, made once per tuple object (the registry's tuples
        # are frozen and a new one stands for any change).
        self._reads: RecentByIdentity[tuple[Policy, ...], Reads] = RecentByIdentity(
            reads_of, max_slots
        )

    def reads(self, policies: tuple[Policy, ...]) -> Reads:
        """What ``policies`` read (:func:`~middleware.consent.reads.reads_of`), computed once
        per tuple."""
        return self._reads.made(policies)

    def decider(
        self,
        policies: tuple[Policy, ...],
        principal: Principal,
        action: Coding,
        purposes: frozenset[Coding],
        now: datetime,
    ) -> Decider:
        """The :class:`Decider` for these arguments (``now`` aware)."""
        reads = self.reads(policies)
        key = (id(policies), principal, action, purposes, window(reads.instants, now))
        slot = self._slots.get(key)
        if slot is not None and slot[0] is policies:
            self._slots.move_to_end(key)
            return slot[1]
        args = (principal, action, purposes, policies, self.defaults, now)
        decider = Decider(args, reads, self._max_entries)
        self._slots[key] = (policies, decider)
        while len(self._slots) > self._max_slots:
            self._slots.popitem(last=False)
        return decider
