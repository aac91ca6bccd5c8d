"""The order of an export's entry lines and, for a per-patient export, its pseudonym chain.

Lines come in strictly ascending ledger index (a repeated index is ``duplicate``, a smaller one
``order``); a ``before`` line only first, nothing after the ``after`` line (``role``). With a
chain (the patient's pseudonym, from the header), every line's leaf must carry that pseudonym
(``chain-foreign``) and name the line before it as its ``previous`` entry
(:mod:`middleware.ledger.leaf`; the store fills it in when it sequences the entry): a leaf that
names a later index than the line before lost the entries between (``chain-gap``, naming the
missing index), one that names an earlier index or none follows a line it does not know
(``chain-inserted``).

Links point backwards, so they cannot show that entries after the last line were not dropped.
The end of the chain is proved by an ``after`` line (the patient's first entry after the
period, which names the last one in it), or, when the chain ends inside the period, by
``tail`` lines: every index after the chain's last line up to the checkpoint's size, each
with its inclusion proof and none of them the patient's (``chain-tail`` otherwise). Without
either, ``chain-tail-unproven``: rows at the end, or all of them, may have been dropped. A
header whose chain is ``export.NO_CHAIN`` (the audit index names no entry of the patient)
holds no lines and gets ``chain-none-unproven``: nothing in a file can prove it. Pure.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from middleware.ledger.leaf import LeafFields

__all__ = ["AddFinding", "LineOrder"]

#: ``add(code, message, line, index)``: how findings are reported (``ExportReport.add``).
AddFinding = Callable[[str, str, "int | None", "int | None"], None]


class LineOrder:
    """Checks lines one at a time (:meth:`feed`), then :meth:`finish`."""

    def __init__(self, add: AddFinding, chain: bytes | None, *, size: int | None = None) -> None:
        """``size``: the checkpoint's tree size (None: unknown, the tail is not judged)."""
        self.add = add
        self.chain = chain
        self.size = size
        self.last: tuple[int, int, str] | None = None  # (line, index, role) of the line before
        self.seen_after = False
        self.tail_from: int | None = None  # the index of the first tail line

    def feed(self, number: int, role: str, index: int, leaf: LeafFields) -> None:
        """Check the entry line ``number`` (its ``role``, ledger ``index`` and ``leaf``)."""
        add, last = self.add, self.last
        if last is not None and index <= last[1]:
            code = "duplicate" if index == last[1] else "order"
            add(code, f"index {index} after index {last[1]} (line {last[0]})", number, index)
        if self.seen_after:
            add("role", "a line after the chain's 'after' line", number, index)
        if role == "before" and last is not None:
            add("role", "'before' is the first entry line", number, index)
        self.seen_after |= role == "after"
        if role == "tail":
            self._tail(number, index, leaf)
        elif self.tail_from is not None:
            add("role", "a chain line after the 'tail' lines", number, index)
        elif self.chain is not None:
            self._link(number, role, index, leaf)
        self.last = (number, index, role)

    def _tail(self, number: int, index: int, leaf: LeafFields) -> None:
        add, last = self.add, self.last
        if self.chain is None or last is None:
            add("role", "'tail' lines follow a patient's chain", number, index)
            return
        if self.tail_from is None:
            self.tail_from = index
        if index != last[1] + 1:
            add("chain-tail", f"the tail skips from index {last[1]} to {index}", number, index)
        if leaf.pseudonym is not None and hmac.compare_digest(leaf.pseudonym, self.chain):
            add("chain-tail", "an entry of the patient's chain among the tail", number, index)

    def _link(self, number: int, role: str, index: int, leaf: LeafFields) -> None:
        add, last = self.add, self.last
        if leaf.pseudonym is None or not hmac.compare_digest(leaf.pseudonym, self.chain or b""):
            add("chain-foreign", "the entry is not in the patient's chain", number, index)
            return
        previous = leaf.previous
        if last is None:
            if role != "before" and previous is not None:
                add(
                    "chain-gap",
                    f"entry {previous} of the chain, before this one, is missing",
                    number,
                    index,
                )
            return
        if previous == last[1]:
            return
        if previous is not None and previous > last[1]:
            add("chain-gap", f"entry {previous} of the chain is missing (dropped)", number, index)
        else:
            add(
                "chain-inserted",
                f"the line before (line {last[0]}, index {last[1]}) is not this entry's "
                f"previous ({previous}): inserted",
                number,
                index,
            )

    def finish(self) -> str | None:
        """After the last line: a per-patient export lists at least one entry and proves its
        end. Returns how the end was proved: ``after``, ``end-of-log`` (tail lines, or the
        chain's last line is the tree's last leaf), ``unproven``; None without a chain."""
        if self.chain is None:
            return None
        if self.last is None:
            if not self.chain:  # export.NO_CHAIN: the exporter found no entry of the patient
                self.add(
                    "chain-none-unproven",
                    f"the export names no chain: no audit entry of the patient at size "
                    f"{self.size}, its exporter says; no file can prove that (pseudonyms are "
                    "not linkable offline)",
                    None,
                    None,
                )
                return "unproven"
            self.add("chain-gap", "a per-patient export with no entry line", None, None)
            return "unproven"
        if self.seen_after:
            return "after"
        if self.size is None:
            return "unproven"  # no trusted checkpoint: already a finding
        if self.last[1] == self.size - 1:
            return "end-of-log"
        self.add(
            "chain-tail-unproven",
            f"no 'after' line and no tail up to the checkpoint's size {self.size}: entries of "
            f"the chain after index {self.last[1]} may have been left out",
            None,
            None,
        )
        return "unproven"
