"""Golden cases: input / expected-output pairs that pin what a profile does.

A case file (``mappings/golden/<profile>/<name>.json``)::

    {"description": "...", "operation": "response" | "write" | "search",
     "resourceType": "Observation",            # search only
     "input": <resource> | [[name, value], ...],
     "expected": <resource> | [[name, value], ...] | {"error": {"status": 422}},
     "validate": true}                         # optional: check both with fhir.resources

Files are decoded with :mod:`middleware.fhir.jsoncodec`, so decimals keep their text, and an
expected resource must equal the output *byte for byte* once both are encoded: same values,
same key order, same number text. Input and output are validated with fhir.resources in the
FHIR version of the input (the upstream's for answers, the client's for writes) until the
R4<->R5 converter exists; the model instances are thrown away.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import pydantic
from fhir.resources import get_fhir_model_class as r5_model
from fhir.resources.R4B import get_fhir_model_class as r4_model

from middleware.errors import GatewayError
from middleware.fhir import jsoncodec
from middleware.mapping.model import Operation
from middleware.mapping.profile import Profile
from middleware.mapping.resource import map_response, prepare_write
from middleware.mapping.search import map_search

__all__ = ["GoldenCase", "load_cases", "parse_case", "run_case", "run_golden", "validate_resource"]

_KEYS: Final = frozenset(
    {"description", "operation", "resourceType", "input", "expected", "validate"}
)


@dataclass(frozen=True, slots=True)
class GoldenCase:
    name: str
    description: str
    operation: Operation
    resource_type: str | None
    input: Any
    expected: Any
    validate: bool = True


def parse_case(name: str, raw: Any) -> GoldenCase:
    """Check a decoded case file's shape; raises ValueError naming the fault."""
    if not isinstance(raw, Mapping) or set(raw) - _KEYS or not {"input", "expected"} <= set(raw):
        raise ValueError(f"{name}: needs operation, input and expected (and nothing unknown)")
    operation = raw.get("operation")
    if operation not in ("response", "write", "search"):
        raise ValueError(f"{name}: operation {operation!r} is not response, write or search")
    if operation == "search" and not isinstance(raw.get("resourceType"), str):
        raise ValueError(f"{name}: a search case needs resourceType")
    return GoldenCase(
        name=name,
        description=str(raw.get("description", "")),
        operation=cast(Operation, operation),
        resource_type=raw.get("resourceType"),
        input=raw["input"],
        expected=raw["expected"],
        validate=raw.get("validate", True) is True,
    )


def load_cases(directory: Path) -> list[GoldenCase]:
    """Every ``*.json`` case in ``directory``, sorted by name (the loader at the edge)."""
    return [
        parse_case(path.stem, jsoncodec.decode(path.read_bytes()))
        for path in sorted(directory.glob("*.json"))
    ]


def run_golden(profile: Profile, root: Path) -> list[str]:
    """Run every case of ``profile`` (its ``golden`` folder below ``root``); list the failures."""
    if profile.golden is None:
        return [f"{profile.id}: names no golden folder"]
    cases = load_cases(root / profile.golden)
    if not cases:
        return [f"{profile.id}: {profile.golden} holds no cases"]
    return [failure for case in cases for failure in run_case(profile, case)]


def run_case(profile: Profile, case: GoldenCase) -> list[str]:
    """Run one case; every way its output differs from the expected one is a failure."""
    expected_error = case.expected.get("error") if isinstance(case.expected, Mapping) else None
    try:
        actual = _run(profile, case)
    except GatewayError as exc:
        if isinstance(expected_error, Mapping) and expected_error.get("status") == exc.status:
            return []
        return [f"{case.name}: raised {exc.status} {exc.diagnostics!r}"]
    if expected_error is not None:
        return [f"{case.name}: expected an error {dict(expected_error)}, got an answer"]
    failures: list[str] = []
    if jsoncodec.encode(actual) != jsoncodec.encode(case.expected):
        where = _difference(actual, case.expected, "") or "(key order)"
        failures.append(f"{case.name}: output differs at {where}")
    if case.validate and case.operation != "search":
        version = (
            profile.upstream_version if case.operation == "response" else profile.client_version
        )
        for label, resource in (("input", case.input), ("output", actual)):
            failures += [f"{case.name}: {label}: {p}" for p in validate_resource(resource, version)]
    return failures


def _run(profile: Profile, case: GoldenCase) -> Any:
    if case.operation == "search":
        pairs = [(str(n), str(v)) for n, v in case.input]
        mapped = map_search(cast(str, case.resource_type), pairs, profile)
        return [list(pair) for pair in mapped.params]
    run = map_response if case.operation == "response" else prepare_write
    return run(case.input, profile).resource


def validate_resource(resource: Any, version: str) -> list[str]:
    """Every fhir.resources validation error of ``resource`` in ``version`` (R4/R4B/R5)."""
    plain = json.loads(jsoncodec.encode(resource))
    kind = plain.get("resourceType") if isinstance(plain, dict) else None
    try:
        model = (r5_model if version == "R5" else r4_model)(str(kind))
    except (ValueError, KeyError):
        return [f"{kind!r} is not a resource type in {version}"]
    try:
        model.model_validate(plain)
    except pydantic.ValidationError as exc:
        return [
            f"{'.'.join(map(str, e['loc']))}: {' '.join(e['msg'].split())}" for e in exc.errors()
        ]
    return []


def _difference(actual: Any, expected: Any, path: str) -> str | None:
    if isinstance(actual, dict) and isinstance(expected, dict):
        for key in dict.fromkeys([*expected, *actual]):
            if key not in actual or key not in expected:
                return f"{path}.{key} (missing on one side)"
            found = _difference(actual[key], expected[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(actual, list) and isinstance(expected, list):
        if len(actual) != len(expected):
            return f"{path} (length {len(actual)}, expected {len(expected)})"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            found = _difference(a, e, f"{path}[{i}]")
            if found:
                return found
        return None
    got, want = jsoncodec.encode(actual), jsoncodec.encode(expected)
    return f"{path or '.'}: {got.decode()} != {want.decode()}" if got != want else None
