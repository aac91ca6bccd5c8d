"""The ledger's key file: its signing key and the origin of the log that key signs.

The file is the ledger's identity on disk, three lines::

    PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>
    origin: gw.example/fhir/ledger
    data: <base64 of 32 bytes>

The first line is the C2SP/Go signed-note signing key (tools of that ecosystem read it with
``head -1``); the second is the C2SP tlog-checkpoint origin line every checkpoint of the log
carries. The origin is chosen once, when the file is written, and never derived again from
the address the gateway listens on, so restarts on another host, port or public URL sign the
same log. A file of the first line only (written by earlier versions) names no origin: its
origin is the key's name, as C2SP tlog-checkpoint recommends and as those versions made it.

The third line is the data secret every stored secret is derived from
(:func:`~middleware.ledger.signing.derive_box_key`: evidence key wrapping, pseudonym lookups,
outbox MACs, mapped ids, cursors, idempotency tags). It is not the signing key, so
``consentry keys rotate`` carries it over unchanged (:meth:`LedgerKey.succeeded_by`) and what
the gateway stored before a rotation still opens after it. A new file gets 32 random bytes; a
file without the line (earlier versions) has its seed as data secret, the secret everything
was derived from then, and its successor names that secret on the line.

The embedded default must start with one command, so a missing key file is created (mode
0600) and the creation is logged; an unreadable or malformed one stops the gateway
(:class:`~middleware.errors.SettingsError`). The gateway creates it only once its store has
opened and accepted the key (:func:`new_ledger_key`, then :func:`save_new_ledger_key`), so a
start that fails on its store leaves no key file naming an origin of that failed start.
Parsing and generation of keys stay in :mod:`middleware.ledger.signing`.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from middleware.errors import SettingsError
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import MalformedError
from middleware.ledger.signing import BOX_KEY_SIZE, SigningKey, new_box_key
from middleware.logging import get_logger

__all__ = [
    "LedgerKey",
    "generate_ledger_key",
    "load_or_create_ledger_key",
    "new_ledger_key",
    "parse_ledger_key",
    "read_ledger_key",
    "save_new_ledger_key",
    "write_ledger_key",
]

_ORIGIN = "origin: "
_DATA = "data: "


@dataclass(frozen=True, slots=True)
class LedgerKey:
    """A signing key and the origin of the log it signs; validated on construction
    (:class:`MalformedError` for an origin no checkpoint can carry).

    ``stated`` is False when the origin was not written in the key file but taken from the
    key's name (a one-line file of an earlier version). ``secret`` is the data secret written
    in the file (32 bytes), None when the file names none (earlier versions):
    :attr:`data_secret` is then the key's seed.
    """

    key: SigningKey
    origin: str
    stated: bool = True
    secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        Checkpoint(self.origin, 0, bytes(32))  # one non-empty line: a checkpoint's origin
        if self.secret is not None and len(self.secret) != BOX_KEY_SIZE:
            raise MalformedError(f"a data secret is {BOX_KEY_SIZE} bytes")

    @property
    def data_secret(self) -> bytes:
        """What every stored secret is derived from (``derive_box_key``): the file's data
        secret, or for a file naming none its seed (what earlier versions derived from)."""
        return self.key.seed if self.secret is None else self.secret

    def succeeded_by(self, successor: SigningKey, origin: str) -> LedgerKey:
        """The key file of ``successor`` after a rotation: the log ``origin`` and this file's
        data secret, unchanged, so what was stored under keys derived from it still opens."""
        return LedgerKey(successor, origin, secret=self.data_secret)

    def text(self) -> str:
        """The key file's contents (secret: the signing key's seed and the data secret)."""
        data = "" if self.secret is None else f"{_DATA}{base64.b64encode(self.secret).decode()}\n"
        return f"{self.key.skey()}\n{_ORIGIN}{self.origin}\n{data}"


def parse_ledger_key(text: str) -> LedgerKey:
    """Parse a key file's contents (see the module docstring); :class:`MalformedError`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise MalformedError("the file is empty")
    key = SigningKey.from_skey(lines[0])
    if len(lines) == 1:
        return LedgerKey(key, key.name, stated=False)
    if len(lines) > 3 or not lines[1].startswith(_ORIGIN):
        raise MalformedError(f"the line after the key is '{_ORIGIN}<the log's origin>'")
    origin = lines[1][len(_ORIGIN) :].strip()
    if len(lines) == 2:
        return LedgerKey(key, origin)
    return LedgerKey(key, origin, secret=_data_secret(lines[2]))


def _data_secret(line: str) -> bytes:
    if not line.startswith(_DATA):
        raise MalformedError(f"the line after the origin is '{_DATA}<base64 data secret>'")
    try:
        secret = base64.b64decode(line[len(_DATA) :].strip(), validate=True)
    except binascii.Error:
        raise MalformedError("the data secret is not base64") from None
    if len(secret) != BOX_KEY_SIZE:
        raise MalformedError(f"the data secret is {BOX_KEY_SIZE} bytes")
    return secret


def read_ledger_key(path: Path) -> LedgerKey:
    """The key file at ``path``; :class:`SettingsError` naming the file when it cannot be read
    or holds no key (a missing file raises :class:`FileNotFoundError`)."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"ledger_key_file: cannot read {path}: {exc}") from exc
    try:
        return parse_ledger_key(text)
    except MalformedError as exc:
        raise SettingsError(f"ledger_key_file: {path} does not hold a signing key: {exc}") from exc


def write_ledger_key(path: Path, ledger_key: LedgerKey) -> None:
    """Write ``ledger_key`` to ``path`` readable by its owner only; refuse to overwrite a file
    (:class:`FileExistsError`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(ledger_key.text())


def generate_ledger_key(path: Path, origin: str, *, name: str | None = None) -> LedgerKey:
    """Create a new key file at ``path`` for the log ``origin`` and return its key.

    The key is named ``name``, by default the origin (C2SP tlog-checkpoint: the log's key name
    should be its origin). Raises :class:`MalformedError` for an origin or name a signed note
    cannot carry, :class:`FileExistsError` when ``path`` exists (a key is never replaced: the
    log it signed would stop verifying; ``consentry keys rotate`` retires a key).
    """
    ledger_key = LedgerKey(SigningKey.generate(name or origin), origin, secret=new_box_key())
    write_ledger_key(path, ledger_key)
    return ledger_key


def load_or_create_ledger_key(path: Path, *, configured: str, default: str) -> LedgerKey:
    """The key file at ``path``, or a new one written there when it does not exist
    (:func:`new_ledger_key` then :func:`save_new_ledger_key`)."""
    ledger_key, new = new_ledger_key(path, configured=configured, default=default)
    if new:
        save_new_ledger_key(path, ledger_key)
    return ledger_key


def new_ledger_key(path: Path, *, configured: str, default: str) -> tuple[LedgerKey, bool]:
    """The key file at ``path`` and False, or, when there is none, a new key (not written
    yet: :func:`save_new_ledger_key`) and True.

    ``configured`` is the ``ledger_origin`` setting ("" when unset): a new key gets it, and an
    existing file must agree with it (else :class:`SettingsError` saying which origin each
    names). ``default`` is the origin of a new key when nothing is configured.
    """
    try:
        ledger_key = read_ledger_key(path)
    except FileNotFoundError:
        origin = configured or default
        try:
            return LedgerKey(SigningKey.generate(origin), origin, secret=new_box_key()), True
        except MalformedError as exc:
            raise SettingsError(f"ledger_origin: {exc}") from exc
    return _agreeing(path, ledger_key, configured), False


def save_new_ledger_key(path: Path, ledger_key: LedgerKey) -> None:
    """Write the new ``ledger_key`` to ``path`` (mode 0600) and log it. A file that appeared
    there meanwhile (another process of the same deployment starting at once) is accepted
    when it holds this very key; any other key stops this start with :class:`SettingsError`
    (the log may be signed by one key only: starting again reads the file that won)."""
    try:
        write_ledger_key(path, ledger_key)
    except FileExistsError:
        if read_ledger_key(path).key.vkey() != ledger_key.key.vkey():
            raise SettingsError(
                f"ledger_key_file: {path} was created by another process while this one "
                "started; start again to use it"
            ) from None
        return
    except OSError as exc:
        raise SettingsError(f"ledger_key_file: cannot write {path}: {exc}") from exc
    get_logger("consentry.ledger").warning(
        "ledger signing key created", reason=f"{path} (origin {ledger_key.origin})"
    )


def _agreeing(path: Path, ledger_key: LedgerKey, configured: str) -> LedgerKey:
    if not ledger_key.stated and configured:  # an earlier version's file: the setting says
        try:
            # Only the origin changes (replace runs the checks of __post_init__ again).
            return replace(ledger_key, origin=configured)
        except MalformedError as exc:
            raise SettingsError(f"ledger_origin: {exc}") from exc
    if configured and configured != ledger_key.origin:
        raise SettingsError(
            f"ledger_origin is {configured!r} but the key file {path} is for the log "
            f"{ledger_key.origin!r}: remove ledger_origin, or set it to {ledger_key.origin!r} "
            "(a log keeps its origin; a new origin needs a new key file and a new store)"
        )
    return ledger_key
