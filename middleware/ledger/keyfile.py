"""The ledger's signing key on disk: one line, the C2SP/Go ``PRIVATE+KEY+...`` string.

The embedded default must start with one command, so a missing key file is created (mode
0600) with a fresh key and the creation is logged; an unreadable or malformed one stops the
gateway. Parsing and generation stay in :mod:`middleware.ledger.signing`.
"""

from __future__ import annotations

import os
from pathlib import Path

from middleware.errors import SettingsError
from middleware.ledger.errors import MalformedError
from middleware.ledger.signing import SigningKey
from middleware.logging import get_logger

__all__ = ["load_or_create_signing_key", "write_signing_key"]


def write_signing_key(path: Path, key: SigningKey) -> None:
    """Write ``key`` to ``path`` readable by its owner only; refuse to overwrite a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.skey() + "\n")


def load_or_create_signing_key(path: Path, name: str) -> SigningKey:
    """The key stored at ``path``; a new one named ``name`` when the file does not exist."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = SigningKey.generate(name)
        write_signing_key(path, key)
        get_logger("consentry.ledger").warning("ledger signing key created", reason=str(path))
        return key
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"ledger_key_file: cannot read {path}: {exc}") from exc
    try:
        return SigningKey.from_skey(text)
    except MalformedError as exc:
        raise SettingsError(f"ledger_key_file: {path} does not hold a signing key: {exc}") from exc
