"""All page text, in one catalog per language (``text/en.json``), so it can be translated.

Templates and page code never hold words: they call ``t("key", name=value)``, which looks the
key up and fills ``{name}`` placeholders (:meth:`str.format_map`). A missing key is a
programming fault and raises ``KeyError`` (a unit test checks every key used exists and every
key in the catalog is used). Values are plain text; the templates' autoescape escapes them.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Final

__all__ = ["LANGUAGE", "catalog", "t"]

#: The one language shipped; the catalog file is ``text/<LANGUAGE>.json``.
LANGUAGE: Final = "en"


@cache
def catalog(language: str = LANGUAGE) -> dict[str, str]:
    """The ``key -> text`` catalog of ``language`` (read once from the package)."""
    raw = resources.files("middleware.web").joinpath("text", f"{language}.json").read_text("utf-8")
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"text/{language}.json: expected an object of strings")
    return data


def t(key: str, /, **values: object) -> str:
    """The text of ``key`` with its ``{name}`` placeholders filled from ``values``."""
    text = catalog()[key]
    return text.format_map(values) if values else text
