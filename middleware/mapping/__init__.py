"""Code and identifier mapping between an upstream and its clients (pure; the loader reads files).

A :class:`Profile` (``mappings/profiles/*.json``, loaded by :func:`load_profile`) pins
ConceptMaps by ``url|version`` and says where they apply. :func:`map_response` adds translated
codings to answers and renames identifier systems; :func:`prepare_write` strips what the
gateway added and translates a client's codes back; :func:`map_search` rewrites token and
identifier search parameters. :func:`translate` is the single-code primitive under all three.
A bad mapping raises :class:`~middleware.errors.SettingsError` at load, never per request.
"""

from middleware.mapping.conceptmap import ConceptMap, InvalidConceptMap, parse_conceptmap
from middleware.mapping.golden import GoldenCase, run_case, run_golden
from middleware.mapping.identifiers import AliasTable
from middleware.mapping.index import Index, Indexes, Irreversible, build
from middleware.mapping.loader import load_profile, load_profiles
from middleware.mapping.model import (
    MARKER_URL,
    Concept,
    Relationship,
    Status,
    Target,
    Translation,
    inverse,
)
from middleware.mapping.profile import Binding, Profile, build_profile
from middleware.mapping.resource import (
    Mapped,
    Note,
    is_added,
    map_response,
    prepare_write,
    strip_added,
)
from middleware.mapping.search import SearchMapped, map_search
from middleware.mapping.translate import translate

__all__ = [
    "MARKER_URL",
    "AliasTable",
    "Binding",
    "Concept",
    "ConceptMap",
    "GoldenCase",
    "Index",
    "Indexes",
    "InvalidConceptMap",
    "Irreversible",
    "Mapped",
    "Note",
    "Profile",
    "Relationship",
    "SearchMapped",
    "Status",
    "Target",
    "Translation",
    "build",
    "build_profile",
    "inverse",
    "is_added",
    "load_profile",
    "load_profiles",
    "map_response",
    "map_search",
    "parse_conceptmap",
    "prepare_write",
    "run_case",
    "run_golden",
    "strip_added",
    "translate",
]
