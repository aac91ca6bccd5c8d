"""The recipient directory: names and addresses of the people and organizations data goes to.

45 CFR 164.528(b)(2)(ii) asks the accounting of disclosures for "the name of the entity or
person who received the protected health information and, if known, the address of such
entity or person". The audit trail knows the recipient only by reference (the agent's
``fhirUser`` or ``<issuer>#<subject>``, the organization claim); the directory, a TOML file
named by the ``recipient_directory_file`` setting, supplies the name and the address::

    [recipients."Practitioner/pr1"]
    name = "Dr. Jane Roe"
    address = "1 Main Street, Springfield"

    [recipients."Organization/acme"]
    name = "Acme Health Plan"

Each key is an agent reference or an organization (reference or plain name) exactly as the
audit index holds it; ``name`` is required, ``address`` optional. The accounting looks the
agent up first, then the organization (:func:`middleware.audit.accounting.account`); a
recipient the directory does not know keeps its reference.

:func:`parse_directory` and :func:`load_directory` are strict: an unknown key, a missing or
empty name, a value that is not printable text (an address may span lines) is refused with
one :class:`~middleware.errors.SettingsError` naming every problem, so the gateway and the
command line refuse to start rather than print a wrong recipient.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from middleware.audit.accounting import RecipientInfo
from middleware.errors import SettingsError

__all__ = ["TEXT_MAX", "load_directory", "parse_directory"]

#: Longest key, name or address accepted (they are printed in every accounting).
TEXT_MAX: Final = 512
_FIELDS: Final = frozenset({"name", "address"})


def load_directory(path: Path) -> Mapping[str, RecipientInfo]:
    """The directory in the TOML file at ``path``; :class:`SettingsError` when the file cannot
    be read or is not a valid directory (the message names the file, never a recipient's
    address)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"recipient_directory_file: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"recipient_directory_file: {path} is not TOML: {exc}") from None
    return parse_directory(data, where=f"recipient_directory_file {path}")


def parse_directory(
    data: Mapping[str, Any], *, where: str = "recipients"
) -> Mapping[str, RecipientInfo]:
    """The directory a parsed TOML document describes (module docstring), read-only."""
    problems: list[str] = [f"unknown key {key!r}" for key in data if key != "recipients"]
    table = data.get("recipients", {})
    found: dict[str, RecipientInfo] = {}
    if not isinstance(table, Mapping):
        problems.append("recipients: expected a table")
        table = {}
    for key, entry in table.items():
        at = f"recipients.{key!r}"
        if not _text(key, lines=False):
            problems.append(f"{at}: the key must be printable text of 1..{TEXT_MAX} characters")
            continue
        if not isinstance(entry, Mapping):
            problems.append(f"{at}: expected a table with name and address")
            continue
        problems += [f"{at}.{field}: unknown field" for field in entry if field not in _FIELDS]
        name, address = entry.get("name"), entry.get("address")
        if not _text(name, lines=False):
            problems.append(f"{at}.name: required, printable text of 1..{TEXT_MAX} characters")
        if address is not None and not _text(address, lines=True):
            problems.append(f"{at}.address: expected printable text of 1..{TEXT_MAX} characters")
        if isinstance(name, str) and (address is None or isinstance(address, str)):
            found[key] = RecipientInfo(name=name, address=address)
    if problems:
        raise SettingsError(f"{where}: invalid recipient directory:\n  " + "\n  ".join(problems))
    return MappingProxyType(found)


def _text(value: object, *, lines: bool) -> bool:
    """Printable, not blank, bounded; with ``lines``, line breaks are allowed (addresses)."""
    if not isinstance(value, str) or not value.strip() or len(value) > TEXT_MAX:
        return False
    text = value.replace("\r\n", "\n").replace("\n", " ") if lines else value
    return text.isprintable()
