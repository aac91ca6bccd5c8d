"""The text catalog: every key the pages use exists, and every key in it is used."""

from __future__ import annotations

import re
from pathlib import Path

import middleware.web
from middleware.web.text import catalog, t

WEB = Path(middleware.web.__file__).parent
# t("key") / t('key') in templates and page code
_CALL = re.compile(r"""\bt\(\s*["']([A-Za-z0-9_.\-]+)["']""")
# a key named as a plain string in page code (tables of keys, e.g. sign-in problems)
_LITERAL = re.compile(r"""["']([a-z_]+(?:\.[a-z0-9_]+)+)["']""")


def _sources() -> list[tuple[Path, str]]:
    # text.py itself only shows the call in its docstring
    files = sorted(WEB.rglob("*.html")) + [
        p for p in sorted(WEB.rglob("*.py")) if p.name != "text.py"
    ]
    return [(f, f.read_text("utf-8")) for f in files]


def test_every_key_used_exists() -> None:
    keys = catalog()
    missing = {
        (path.name, key)
        for path, text in _sources()
        for key in _CALL.findall(text)
        if key not in keys
    }
    assert not missing


def test_every_key_is_used() -> None:
    used: set[str] = set()
    for _path, text in _sources():
        used.update(_CALL.findall(text))
        used.update(_LITERAL.findall(text))
    assert sorted(set(catalog()) - used) == []


def test_placeholders_are_filled() -> None:
    assert t("site.signed_in_as", who="Patient/p1") == "Signed in as Patient/p1"


def test_catalog_is_plain_text() -> None:
    for key, value in catalog().items():
        assert value.strip() == value, key
        assert "<" not in value, key
