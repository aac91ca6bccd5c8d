"""Small builders for ConceptMaps and profiles, so each test states only what it is about."""

from __future__ import annotations

from typing import Any

from middleware.mapping.profile import Profile, Reader, ReadFailed, build_profile

LOCAL = "http://upstream.example/CodeSystem/lab"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MAP = "http://example.org/fhir/ConceptMap/lab"
CANONICAL = f"{MAP}|1"


def target(code: str, relationship: str = "equivalent", **extra: Any) -> dict[str, Any]:
    return {"code": code, "relationship": relationship, **extra}


def element(code: str, *targets: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"code": code, **extra}
    if targets:
        out["target"] = list(targets)
    return out


def group(
    *elements: dict[str, Any], source: str = LOCAL, target: str = LOINC, **extra: Any
) -> dict[str, Any]:
    return {"source": source, "target": target, "element": list(elements), **extra}


def r5_map(
    *groups: dict[str, Any], url: str = MAP, version: str = "1", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "ConceptMap",
        "url": url,
        "version": version,
        "status": "active",
        **extra,
        "group": list(groups),
    }


def r4_target(code: str | None, equivalence: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"equivalence": equivalence, **extra}
    if code is not None:
        out["code"] = code
    return out


def unit(code: str) -> list[dict[str, Any]]:
    """A ``dependsOn``/``product`` list on the UCUM unit attribute."""
    return [{"attribute": "unit", "valueCoding": {"system": UCUM, "code": code}}]


UNIT_ATTRIBUTE = [{"code": "unit", "type": "Coding"}]


def reader(files: dict[str, Any]) -> Reader:
    """A Reader over in-memory decoded JSON; a missing name reads as a missing file."""

    def read(path: str) -> Any:
        if path not in files:
            raise ReadFailed("cannot be read (No such file or directory)")
        return files[path]

    return read


def binding(**extra: Any) -> dict[str, Any]:
    return {
        "canonical": CANONICAL,
        "file": "conceptmaps/lab.json",
        "elements": ["Observation.code"],
        "search": ["Observation.code"],
        **extra,
    }


def profile_json(*bindings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "test",
        "upstream": "test-upstream",
        "fhir": {"client": "R4", "upstream": "R4"},
        "conceptmaps": list(bindings),
        **extra,
    }


def make_profile(
    conceptmap: dict[str, Any] | None = None,
    *bindings: dict[str, Any],
    files: dict[str, Any] | None = None,
    **extra: Any,
) -> Profile:
    """A profile named ``profiles/test.json`` over ``conceptmap`` (bound by :func:`binding`)."""
    all_files = {"conceptmaps/lab.json": conceptmap or r5_map(group())} | (files or {})
    raw = profile_json(*(bindings or (binding(),)), **extra)
    return build_profile(raw, name="profiles/test.json", read=reader(all_files))


def observation(*codings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": list(codings)},
        **extra,
    }


def coding(system: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"system": system, "code": code, **extra}
