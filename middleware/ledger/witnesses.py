"""The log side of C2SP tlog-witness (https://c2sp.org/tlog-witness), without any I/O.

A log asks each witness to cosign its latest checkpoint with ``POST <url>/add-checkpoint``
whose body is (tlog-witness, "add-checkpoint"):

1. ``old <size>``: the size of the checkpoint this witness last cosigned for the log (``0``
   when it has cosigned none);
2. one line per hash of the RFC 9162 §2.1.4 consistency proof from that size to the new one
   (base64; none when the old size is 0 or equal to the new one);
3. a blank line, then the signed checkpoint note.

The witness answers 200 with its cosignature lines (C2SP tlog-cosignature), 409 Conflict
with the size it holds (``text/x.tlog.size``: the size in decimal, a newline) when ``old`` is
not that size, 422 when the proof does not verify (a fork or a rollback), 403 when the log's
signature does not verify, 404 when it does not know the log.

This module builds that request, reads those answers, and appends cosignatures to a note.
A witness is configured by name, URL and its ``cosignature/v1`` verifier key
(:class:`WitnessEndpoint`); the gateway's ``witnesses`` setting is a list of them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from middleware.ledger.cosignature import WitnessKey, parse_witness_vkey
from middleware.ledger.errors import MalformedError
from middleware.ledger.note import NoteSignature, SignedNote, format_note, parse_note

__all__ = [
    "MAX_WITNESSES",
    "WitnessEndpoint",
    "add_checkpoint_body",
    "add_checkpoint_url",
    "conflict_size",
    "with_cosignatures",
    "parse_witnesses",
]

#: More witnesses than this is a configuration mistake, not a policy (each is asked each time).
MAX_WITNESSES = 32
_SIZE_LINE = re.compile(r"(0|[1-9][0-9]{0,19})\n")
_FIELDS = frozenset({"name", "url", "vkey"})


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """A witness the log submits checkpoints to: its key ``name``, the ``url`` its
    ``add-checkpoint`` lives under, and its ``vkey`` (type 0x04). Validated on construction
    (:class:`MalformedError`): the vkey parses and names ``name``; the URL is absolute
    http(s) without query or fragment."""

    name: str
    url: str
    vkey: str

    def __post_init__(self) -> None:
        key = parse_witness_vkey(self.vkey)
        if key.name != self.name:
            raise MalformedError(f"witness {self.name!r}: its vkey names {key.name!r}")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise MalformedError(f"witness {self.name!r}: url is an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise MalformedError(f"witness {self.name!r}: url has no query or fragment")

    @property
    def key(self) -> WitnessKey:
        return parse_witness_vkey(self.vkey)


def parse_witnesses(value: Any) -> tuple[WitnessEndpoint, ...]:
    """The ``witnesses`` setting: a list of tables ``{name, url, vkey}`` (TOML
    ``[[witnesses]]``, JSON in the environment); each name and public key once. Raises
    :class:`ValueError` naming the problem."""
    if isinstance(value, tuple) and all(isinstance(w, WitnessEndpoint) for w in value):
        return value
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ValueError("expected a list of tables with name, url and vkey")
    if len(value) > MAX_WITNESSES:
        raise ValueError(f"at most {MAX_WITNESSES} witnesses")
    out: list[WitnessEndpoint] = []
    for entry in value:
        if not isinstance(entry, Mapping) or set(entry) != _FIELDS:
            raise ValueError("each witness is a table with exactly name, url and vkey")
        if not all(isinstance(entry[k], str) for k in _FIELDS):
            raise ValueError("a witness's name, url and vkey are strings")
        try:
            out.append(WitnessEndpoint(entry["name"], entry["url"], entry["vkey"]))
        except MalformedError as exc:
            raise ValueError(str(exc)) from None
    names = [w.name for w in out]
    # Public-key bytes, not vkey strings: a vkey embeds its name, so one key under two
    # names would pass a string comparison and meet a quorum of 2 alone.
    if len(set(names)) != len(names) or len({w.key.public_key for w in out}) != len(out):
        raise ValueError("each witness is named once, with its own public key")
    return tuple(out)


def add_checkpoint_url(witness: WitnessEndpoint) -> str:
    """``<url>/add-checkpoint`` (the URL's trailing slash, if any, not doubled)."""
    return witness.url.rstrip("/") + "/add-checkpoint"


def add_checkpoint_body(old_size: int, proof: Iterable[bytes], note: str) -> bytes:
    """The ``add-checkpoint`` request body (module docstring), UTF-8."""
    if old_size < 0:
        raise MalformedError("an old size is not negative")
    lines = [f"old {old_size}\n"]
    lines += [base64.b64encode(h).decode("ascii") + "\n" for h in proof]
    return ("".join(lines) + "\n" + note).encode("utf-8")


def conflict_size(body: bytes) -> int:
    """The size a witness's 409 answer reports (``<decimal>\\n``); MalformedError else."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedError("a 409 answer is a tree size") from None
    if not _SIZE_LINE.fullmatch(text) or int(text) >= 2**64:
        raise MalformedError("a 409 answer is a tree size in decimal and a newline")
    return int(text)


def with_cosignatures(note: str, cosignatures: Iterable[NoteSignature]) -> str:
    """``note`` with ``cosignatures`` appended after its own signature lines, each line
    once (a line already present is not repeated). The text is unchanged."""
    parsed: SignedNote = parse_note(note)
    lines = list(parsed.signatures)
    lines += [s for s in dict.fromkeys(cosignatures) if s not in lines]
    return format_note(parsed.text, lines)
