"""The verifier's trust policy: which log, and which keys may sign which tree sizes.

A policy is a small TOML file that a verifier keeps *outside* the log (it is what makes the
log's signatures mean anything)::

    # Consentry ledger trust policy
    origin = "gateway.example/fhir/ledger"

    [[keys]]
    vkey = "gateway.example/fhir/ledger+1a2b3c4d+AeXm...="
    not_before = 0
    not_after = 1234

    [[keys]]
    vkey = "gateway.example/fhir/ledger+5e6f7a8b+AQk3...="
    not_before = 1235

Validity windows are **tree sizes**, inclusive at both ends: a checkpoint for size ``N`` is
valid only if a key whose ``not_before <= N <= not_after`` signed it (``not_after`` absent: the
key is current). Sizes rather than times because a checkpoint's size is what its signature
covers; its time is not in the signed text (C2SP tlog-checkpoint has no timestamp), so a
retired key could backdate nothing but could "sign later" undetectably under a time window.
With size windows, a retired key signing any size past its ``not_after`` is a finding.

A policy may also require witnesses (C2SP tlog-witness): ``quorum = N`` and ``[[witnesses]]``
tables, each with the witness's ``vkey`` (``cosignature/v1``, type 0x04) and optionally its
``name`` (which must be the vkey's). Verifiers then require the checkpoint they check against
to carry valid cosignatures by at least ``quorum`` of those witnesses
(:mod:`middleware.ledger.quorum`). Each witness has its own public key: one key under two
names is refused, as it would be one party counted twice. A quorum above the number of
witnesses parses, and fails every verification: a policy that can never be met trusts
nothing (as sigstore's policies treat an empty list).

``consentry keys rotate`` keeps this file in step with the key-event entries it appends
(:mod:`middleware.ledger.keyevent`). The policy must name at least one key: an empty policy
trusts nothing, and a verifier given one fails. Pure: ``tomllib`` and the note module only.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.cosignature import WitnessKey, parse_witness_vkey
from middleware.ledger.errors import MalformedError
from middleware.ledger.note import VerifierKey, parse_vkey

__all__ = ["TrustPolicy", "TrustedKey", "TrustedWitness", "format_policy", "parse_policy"]

_TOP_KEYS = frozenset({"origin", "keys", "witnesses", "quorum"})
_KEY_KEYS = frozenset({"vkey", "not_before", "not_after"})
_WITNESS_KEYS = frozenset({"vkey", "name"})
_MAX_SIZE = 2**64 - 1


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A verifier key trusted to sign tree sizes ``not_before..not_after`` (inclusive;
    ``not_after`` ``None``: no end yet). Validated on construction (MalformedError)."""

    vkey: str
    not_before: int = 0
    not_after: int | None = None

    def __post_init__(self) -> None:
        parse_vkey(self.vkey)
        if not _is_size(self.not_before):
            raise MalformedError(f"not_before must be a tree size, not {self.not_before!r}")
        if self.not_after is not None and not (
            _is_size(self.not_after) and self.not_after >= self.not_before
        ):
            raise MalformedError(f"not_after must be a tree size >= not_before ({self.vkey})")

    @property
    def key(self) -> VerifierKey:
        return parse_vkey(self.vkey)

    def covers(self, size: int) -> bool:
        """True iff this key may sign a checkpoint for ``size``."""
        return self.not_before <= size and (self.not_after is None or size <= self.not_after)

    def window(self) -> str:
        """The window as text, e.g. ``0..1234`` or ``1235..``."""
        return f"{self.not_before}..{'' if self.not_after is None else self.not_after}"


@dataclass(frozen=True, slots=True)
class TrustedWitness:
    """A witness whose ``cosignature/v1`` key is ``vkey`` (validated on construction)."""

    vkey: str

    def __post_init__(self) -> None:
        parse_witness_vkey(self.vkey)

    @property
    def key(self) -> WitnessKey:
        return parse_witness_vkey(self.vkey)


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """The log's ``origin`` (checkpoints must name it), its trusted keys (at least one,
    each verifier key once), and the ``witnesses`` of which ``quorum`` must cosign (0: no
    witness required). Validated on construction (MalformedError)."""

    origin: str
    keys: tuple[TrustedKey, ...]
    witnesses: tuple[TrustedWitness, ...] = ()
    quorum: int = 0

    def __post_init__(self) -> None:
        if not _is_size(self.quorum):
            raise MalformedError(f"a quorum is a number of witnesses, not {self.quorum!r}")
        names = [w.key.name for w in self.witnesses]
        if len(set(names)) != len(names):
            raise MalformedError("a trust policy names each witness once")
        # A vkey embeds its name: one private key listed under two names would count twice
        # toward the quorum while being one party (the quorum promises independent ones).
        public = [w.key.public_key for w in self.witnesses]
        if len(set(public)) != len(public):
            raise MalformedError("a trust policy lists each witness public key once")
        Checkpoint(self.origin, 0, bytes(32))  # an origin a checkpoint can carry
        if not self.keys:
            raise MalformedError("a trust policy names at least one key (empty trusts nothing)")
        vkeys = [k.vkey for k in self.keys]
        if len(set(vkeys)) != len(vkeys):
            raise MalformedError("a trust policy names each key once")
        ids = [(k.key.name, k.key.key_id) for k in self.keys]
        if len(set(ids)) != len(ids):
            raise MalformedError("two trusted keys share a name and key ID (ambiguous)")

    def find(self, vkey: str) -> TrustedKey | None:
        """The trusted key with this verifier key string, if any."""
        return next((k for k in self.keys if k.vkey == vkey), None)

    def lookup(self, name: str, key_id: int) -> TrustedKey | None:
        """The trusted key a signature line names (key name and key ID), if any."""
        return next((k for k in self.keys if (k.key.name, k.key.key_id) == (name, key_id)), None)

    def rotated(
        self, retired: str, retired_not_after: int, successor: str, successor_not_before: int
    ) -> TrustPolicy:
        """This policy after a rotation: ``retired`` ends at ``retired_not_after`` and
        ``successor`` starts at ``successor_not_before`` (open-ended). Idempotent: applying
        the same rotation twice gives the same policy. ``retired`` must be trusted."""
        if self.find(retired) is None:
            raise MalformedError("the retired key is not in the trust policy")
        keys = [
            replace(k, not_after=retired_not_after) if k.vkey == retired else k
            for k in self.keys
            if k.vkey != successor
        ]
        keys.append(TrustedKey(successor, successor_not_before))
        return replace(self, keys=tuple(keys))


def parse_policy(text: str) -> TrustPolicy:
    """Parse a policy file's TOML text strictly (unknown keys are errors); MalformedError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MalformedError(f"trust policy is not valid TOML: {exc}") from exc
    _only(data, _TOP_KEYS, "trust policy")
    origin = data.get("origin")
    if not isinstance(origin, str):
        raise MalformedError("trust policy: origin is a string")
    entries = data.get("keys", [])
    if not isinstance(entries, list):
        raise MalformedError("trust policy: keys is an array of tables ([[keys]])")
    witnesses = data.get("witnesses", [])
    if not isinstance(witnesses, list):
        raise MalformedError("trust policy: witnesses is an array of tables ([[witnesses]])")
    quorum = data.get("quorum", 0)
    if not _is_size(quorum):
        raise MalformedError(f"trust policy: quorum is a number of witnesses, not {quorum!r}")
    return TrustPolicy(
        origin,
        tuple(_key(entry) for entry in entries),
        tuple(_witness(entry) for entry in witnesses),
        quorum,
    )


def format_policy(policy: TrustPolicy) -> str:
    """The policy as TOML that :func:`parse_policy` reads back equal."""
    lines = ["# Consentry ledger trust policy (tree-size windows, inclusive).", ""]
    lines.append(f"origin = {_toml_string(policy.origin)}")
    if policy.quorum or policy.witnesses:  # a top-level key: before the first table
        lines.append(f"quorum = {policy.quorum}")
    for key in policy.keys:
        lines += ["", "[[keys]]", f"vkey = {_toml_string(key.vkey)}"]
        lines.append(f"not_before = {key.not_before}")
        if key.not_after is not None:
            lines.append(f"not_after = {key.not_after}")
    for witness in policy.witnesses:
        lines += ["", "[[witnesses]]", f"vkey = {_toml_string(witness.vkey)}"]
    return "\n".join(lines) + "\n"


def _key(entry: Any) -> TrustedKey:
    if not isinstance(entry, dict):
        raise MalformedError("trust policy: each [[keys]] entry is a table")
    _only(entry, _KEY_KEYS, "trust policy [[keys]]")
    vkey, not_before, not_after = (
        entry.get("vkey"),
        entry.get("not_before", 0),
        entry.get("not_after"),
    )
    if not isinstance(vkey, str):
        raise MalformedError("trust policy: vkey is a string")
    for value in (not_before, not_after):
        if value is not None and not _is_size(value):
            raise MalformedError(f"trust policy: windows are tree sizes, not {value!r}")
    return TrustedKey(vkey, not_before, not_after)


def _witness(entry: Any) -> TrustedWitness:
    if not isinstance(entry, dict):
        raise MalformedError("trust policy: each [[witnesses]] entry is a table")
    _only(entry, _WITNESS_KEYS, "trust policy [[witnesses]]")
    vkey, name = entry.get("vkey"), entry.get("name")
    if not isinstance(vkey, str):
        raise MalformedError("trust policy: a witness's vkey is a string")
    witness = TrustedWitness(vkey)
    if name is not None and name != witness.key.name:
        raise MalformedError(f"trust policy: witness {name!r} has a vkey for {witness.key.name!r}")
    return witness


def _only(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise MalformedError(f"{where}: unknown keys {', '.join(unknown)}")


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE


def _toml_string(text: str) -> str:
    # A JSON string without ASCII escaping is a valid TOML basic string: the same escapes
    # (\" \\ \n \uXXXX for control characters) and literal non-ASCII characters.
    return json.dumps(text, ensure_ascii=False)
