"""Read mapping profiles from the ``mappings/`` folder: the one place this package does I/O.

Paths inside a profile are relative to the mappings folder and may not leave it. JSON is read
strictly: a key repeated in one object is an error (the last one would silently win), and
numbers with a fraction are read as :class:`decimal.Decimal` so that nothing is rounded
before fhir.resources sees it.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from pathlib import Path
from typing import Any

from middleware.errors import SettingsError
from middleware.mapping.profile import Profile, Reader, ReadFailed, build_profile

__all__ = ["folder_reader", "load_profile", "load_profile_with_digest", "load_profiles"]


def load_profile(path: Path, *, root: Path | None = None) -> Profile:
    """Load ``path``; the files it names are relative to ``root`` (default: the folder above
    ``profiles/``) and must stay inside it."""
    base = (root or path.parent.parent).resolve()
    reader = folder_reader(base)
    try:
        raw = reader(str(path.resolve().relative_to(base)))
    except (ReadFailed, ValueError) as exc:
        raise SettingsError(f"invalid mapping profile {path}: {exc}") from exc
    return build_profile(raw, name=str(path), read=reader)


def load_profile_with_digest(path: Path, *, root: Path | None = None) -> tuple[Profile, str]:
    """:func:`load_profile` and ``sha256:<hex>`` of the files it read (the profile and every
    ConceptMap and alias table it names, each as ``path NUL bytes NUL`` in path order): what
    an exchange's audit record names as the mapping it went through."""
    base = (root or path.parent.parent).resolve()
    inner = folder_reader(base)
    seen: dict[str, bytes] = {}

    def read(relative: str) -> Any:
        value = inner(relative)  # validates the path first
        seen[relative] = (base / relative).resolve().read_bytes()
        return value

    try:
        raw = read(str(path.resolve().relative_to(base)))
    except (ReadFailed, ValueError) as exc:
        raise SettingsError(f"invalid mapping profile {path}: {exc}") from exc
    profile = build_profile(raw, name=str(path), read=read)
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\x00" + seen[name] + b"\x00")
    return profile, f"sha256:{digest.hexdigest()}"


def load_profiles(root: Path) -> dict[str, Profile]:
    """Every ``root/profiles/*.json``, keyed by id."""
    profiles = [load_profile(p, root=root) for p in sorted((root / "profiles").glob("*.json"))]
    return {p.id: p for p in profiles}


def folder_reader(base: Path) -> Reader:
    """A :data:`Reader` for files below ``base``."""

    def read(relative: str) -> Any:
        target = (base / relative).resolve()
        if not target.is_relative_to(base):
            raise ReadFailed(f"is outside the mappings folder {base}")
        try:
            text = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReadFailed(f"cannot be read ({exc.strerror})") from exc
        try:
            return json.loads(text, parse_float=decimal.Decimal, object_pairs_hook=_no_duplicates)
        except ValueError as exc:
            raise ReadFailed(f"is not valid JSON: {exc}") from exc

    return read


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out
