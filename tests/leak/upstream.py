"""A small in-memory FHIR R4 server behind respx: the upstream the leak tests attack through.

It answers like a lenient HAPI server would: reads and vreads with ``ETag``/``Last-Modified``
(and ``304`` to a matching ``If-None-Match``), 404 OperationOutcomes that name the missing
record, searchsets with ``total``, ``_include``/``_revinclude`` entries, ``_summary``/``_elements``
subsetting, ``_offset`` and ``next`` links on its own host (``?_getpages=``), instance/type/system history,
``Patient/[id]/$everything``, compartment searches, writes (conditional ones too) and
batch/transaction Bundles (conditional writes resolve on their criteria alone, ignoring result
parameters such as ``_offset``). XML when asked for it. Unknown search parameters are ignored, as
lenient servers do: an attack the gateway does not stop reaches the data.

Every resource of patient ``p1`` carries :data:`SECRET` and an id containing ``p1``, so a leak
is visible in any form the gateway could release it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

__all__ = ["GATEWAY", "SECRET", "UPSTREAM", "FakeFhir", "Json"]

UPSTREAM: Final = "http://upstream.test:8103/fhir"
GATEWAY: Final = "http://gateway.test/fhir"
#: Carried by every resource of patient p1 (text, notes, names).
SECRET: Final = "SECRET-P1"
_PREFIX: Final = urlsplit(UPSTREAM).path
_FHIR_JSON: Final = "application/fhir+json;charset=UTF-8"
_LOINC: Final = "http://loinc.org"
_IDS: Final = "urn:ids"
#: Search parameters the fake understands, and the element of a resource each one reads.
_REFERENCE_PARAMS: Final = {
    "subject": ("subject",),
    "patient": ("subject", "patient"),
    "encounter": ("encounter",),
    "performer": ("performer",),
}

Json = dict[str, Any]


def _div(text: str) -> Json:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}


def _ref(reference: str) -> Json:
    return {"reference": reference}


def _hemoglobin() -> Json:
    return {"coding": [{"system": _LOINC, "code": "718-7", "display": "Hemoglobin"}]}


def _observation(rid: str, patient: str, note: str, **extra: Any) -> Json:
    return {
        "resourceType": "Observation",
        "id": rid,
        "text": _div(note),
        "identifier": [{"system": _IDS, "value": rid}],
        "status": "final",
        "code": _hemoglobin(),
        "subject": _ref(patient),
        "valueQuantity": {"value": 13.2, "unit": "g/dL"},
        "note": [{"text": note}],
        **extra,
    }


def seed() -> list[Json]:
    """The records of p1 (denied to the practitioner) and p2 (no consent: visible)."""
    p1_note = f"{SECRET}: positive HIV screen"
    return [
        {
            "resourceType": "Patient",
            "id": "p1",
            "text": _div(SECRET),
            "identifier": [{"system": _IDS, "value": "mrn-p1"}],
            "name": [{"family": SECRET, "given": ["Alice"]}],
            "birthDate": "1970-01-01",
        },
        {
            "resourceType": "Patient",
            "id": "p2",
            "text": _div("Bob Visible"),
            "identifier": [{"system": _IDS, "value": "mrn-p2"}],
            "name": [{"family": "Visible", "given": ["Bob"]}],
            "birthDate": "1980-02-02",
        },
        {
            "resourceType": "Encounter",
            "id": "enc-a",  # p1's, though p2's obs-p2 names it too
            "text": _div(SECRET),
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": _ref("Patient/p1"),
        },
        {
            "resourceType": "Encounter",
            "id": "enc-p2",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": _ref("Patient/p2"),
        },
        _observation("obs-p2", "Patient/p2", "visible", encounter=_ref("Encounter/enc-a")),
        _observation("obs-p1", "Patient/p1", p1_note, encounter=_ref("Encounter/enc-a")),
        _observation("obs-p2b", "Patient/p2", "visible too"),
        # An observation of p1 recorded during p2's encounter: a _revinclude of p2's
        # encounters brings it along.
        _observation("obs-p1-enc", "Patient/p1", p1_note, encounter=_ref("Encounter/enc-p2")),
        {
            "resourceType": "DiagnosticReport",
            "id": "rep-p2",
            "status": "final",
            "code": _hemoglobin(),
            "subject": _ref("Patient/p2"),
            # p1's result filed inside p2's report.
            "contained": [_observation("cont-p1", "Patient/p1", p1_note)],
            "result": [_ref("#cont-p1")],
        },
        {
            "resourceType": "Bundle",
            "id": "bun-p2",
            "type": "collection",
            "entry": [
                {"fullUrl": f"{UPSTREAM}/Observation/obs-p2", "resource": None},
                # Looks like p2's (fullUrl), is p1's.
                {"fullUrl": f"{UPSTREAM}/Observation/obs-p2c", "resource": None},
            ],
        },
        {
            "resourceType": "Bundle",
            "id": "doc-p2",
            "type": "document",
            "entry": [
                {
                    "fullUrl": "urn:uuid:0c3b1c4e-1d8a-4a0f-9a59-1b1f4c1d2e01",
                    "resource": {
                        "resourceType": "Composition",
                        "id": "comp-p2",
                        "status": "final",
                        "type": {"text": "summary"},
                        "subject": _ref("Patient/p2"),
                        "date": "2024-01-01",
                        "author": [_ref("Practitioner/dr")],
                        "title": "Summary",
                    },
                },
                {"fullUrl": f"{UPSTREAM}/Observation/obs-p1", "resource": None},
            ],
        },
        {
            "resourceType": "AuditEvent",
            "id": "ae-p1",
            "type": {"code": "rest"},
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": _ref("Practitioner/dr"), "requestor": True}],
            "source": {"observer": {"display": "ehr"}},
            "entity": [{"what": _ref("Patient/p1"), "description": SECRET}],
        },
        {
            "resourceType": "Consent",
            "id": "upstream-consent-p2",
            "status": "active",
            "scope": {"text": "patient-privacy"},
            "category": [{"text": "upstream copy"}],
            "patient": _ref("Patient/p2"),
        },
    ]


class FakeFhir:
    """The upstream server (module docstring); ``handle`` is the respx side effect.

    ``versions`` maps ``Type/id`` to its versions, oldest first (``None``: deleted).
    ``writes`` lists ``(method, path)`` of every write the server applied.
    """

    def __init__(self) -> None:
        self.versions: dict[str, list[Json | None]] = {}
        self.pages: dict[str, list[Json]] = {}
        self.writes: list[tuple[str, str]] = []
        self._next_id = 0
        for resource in seed():
            self.put(resource)
        self._fill_bundles()
        # obs-moved: filed under p1 by mistake (version 1), moved to p2 (version 2).
        self.put(_observation("obs-moved", "Patient/p1", f"{SECRET}: misfiled"))
        self.put(_observation("obs-moved", "Patient/p2", "moved to p2"))

    # -- the store -------------------------------------------------------------------------

    def put(self, resource: Json | None, key: str | None = None) -> Json | None:
        """Store a new version of ``resource`` (``None`` with ``key``: a deletion)."""
        if resource is not None:
            key = f"{resource['resourceType']}/{resource['id']}"
        assert key is not None
        versions = self.versions.setdefault(key, [])
        if resource is not None:
            resource = copy.deepcopy(resource)
            resource["meta"] = {
                "versionId": str(len(versions) + 1),
                "lastUpdated": f"2024-03-0{min(len(versions) + 1, 9)}T10:00:00Z",
            }
        versions.append(resource)
        return resource

    def current(self, key: str) -> Json | None:
        versions = self.versions.get(key)
        return copy.deepcopy(versions[-1]) if versions else None

    def _fill_bundles(self) -> None:
        bundle = self.versions["Bundle/bun-p2"][-1]
        assert bundle is not None
        p2 = self.current("Observation/obs-p2")
        p1 = _observation("obs-p2c", "Patient/p1", f"{SECRET}: filed as p2")
        bundle["entry"][0]["resource"] = p2
        bundle["entry"][1]["resource"] = p1
        document = self.versions["Bundle/doc-p2"][-1]
        assert document is not None
        document["entry"][1]["resource"] = self.current("Observation/obs-p1")

    def live(self, rtype: str | None = None) -> Iterator[Json]:
        for key, versions in self.versions.items():
            if (rtype is None or key.split("/")[0] == rtype) and versions[-1] is not None:
                yield copy.deepcopy(versions[-1])

    # -- HTTP ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        assert path == _PREFIX or path.startswith(_PREFIX + "/"), path
        segments = [s for s in path[len(_PREFIX) :].split("/") if s]
        params = parse_qsl(request.url.query.decode("ascii"), keep_blank_values=True)
        wants_xml = "xml" in request.headers.get("accept", "") or any(
            n == "_format" and "xml" in v for n, v in params
        )
        response = self._route(request, segments, params)
        if wants_xml and response.status_code == 200:
            return httpx.Response(
                200,
                content=f"<Resource><text>{response.text}</text></Resource>".encode(),
                headers={"content-type": "application/fhir+xml;charset=UTF-8"},
            )
        return response

    def _route(
        self, request: httpx.Request, segments: list[str], params: list[tuple[str, str]]
    ) -> httpx.Response:
        method = request.method
        count = len(segments)
        if count == 0:
            if method == "POST":
                return self._bundle_request(json.loads(request.content))
            if any(n == "_getpages" for n, _ in params):
                return self._page(params)
            types: list[str | None] = [t for n, v in params if n == "_type" for t in v.split(",")]
            found = [r for t in types or [None] for r in self.live(t)]
            return self._searchset(found, params)
        if segments == ["metadata"]:
            return _json(200, {"resourceType": "CapabilityStatement", "status": "active"})
        if segments == ["_history"]:
            return self._history(list(self.versions))
        rtype = segments[0]
        if count == 1:
            if method == "GET":
                return self._searchset(self._search(rtype, params), params)
            if method == "POST":
                return self._create(rtype, json.loads(request.content))
            return self._conditional(request, rtype, params)
        if count == 2 and segments[1] == "_history":
            return self._history([k for k in self.versions if k.startswith(rtype + "/")])
        key = f"{rtype}/{segments[1]}"
        if count == 2:
            return self._instance(request, key)
        if segments[2] == "_history":
            if count == 3:
                return self._history([key]) if key in self.versions else _missing(key)
            return self._vread(key, segments[3])
        if segments[2] == "$everything":
            return self._everything(segments[1], params)
        if rtype == "Patient" and count == 3:  # compartment search
            found = [
                r for r in self._search(segments[2], params) if _names(r, f"Patient/{segments[1]}")
            ]
            return self._searchset(found, params)
        return _outcome(400, "not supported")

    # -- reads -----------------------------------------------------------------------------

    def _instance(self, request: httpx.Request, key: str) -> httpx.Response:
        resource = self.current(key)
        method = request.method
        if method == "GET":
            if resource is None:
                return _gone(key) if key in self.versions else _missing(key)
            etag = f'W/"{resource["meta"]["versionId"]}"'
            if request.headers.get("if-none-match") == etag:
                return httpx.Response(304, headers={"etag": etag})
            return _resource(200, resource)
        if method == "DELETE":
            if resource is None:
                return _missing(key)
            self.writes.append((method, key))
            self.put(None, key)
            return _outcome(200, f"Successfully deleted {key}", severity="information")
        body = json.loads(request.content) if method == "PUT" else resource
        if body is None:
            return _missing(key)
        self.writes.append((method, key))
        stored = self.put(body)
        assert stored is not None
        return _resource(201 if resource is None else 200, stored)

    def _vread(self, key: str, vid: str) -> httpx.Response:
        versions = self.versions.get(key, [])
        if not vid.isdigit() or not 0 < int(vid) <= len(versions):
            return _missing(f"{key}/_history/{vid}")
        version = versions[int(vid) - 1]
        return _gone(key) if version is None else _resource(200, version)

    def _history(self, keys: list[str]) -> httpx.Response:
        entries: list[Json] = []
        for key in keys:
            for number, version in enumerate(self.versions[key], start=1):
                url = f"{UPSTREAM}/{key}"
                if version is None:
                    request = {"method": "DELETE", "url": key}
                    entries.append({"fullUrl": url, "request": request})
                    continue
                entry = {
                    "fullUrl": url,
                    "resource": version,
                    "request": {"method": "PUT" if number > 1 else "POST", "url": key},
                    "response": {"status": "200 OK", "etag": f'W/"{number}"'},
                }
                entries.append(entry)
        bundle = {"resourceType": "Bundle", "type": "history", "total": len(entries)}
        return _json(
            200, {**bundle, "link": [_link("self", f"{UPSTREAM}/_history")], "entry": entries}
        )

    def _everything(self, pid: str, params: list[tuple[str, str]]) -> httpx.Response:
        patient = self.current(f"Patient/{pid}")
        if patient is None:
            return _missing(f"Patient/{pid}")
        found = [patient, *(r for r in self.live() if _names(r, f"Patient/{pid}"))]
        return self._searchset(found, params)

    # -- searches --------------------------------------------------------------------------

    def _search(self, rtype: str, params: list[tuple[str, str]]) -> list[Json]:
        found = list(self.live(rtype))
        for name, value in params:
            code = name.partition(":")[0]
            wanted = value.split(",")
            if code == "_id":
                found = [r for r in found if r["id"] in wanted]
            elif code == "identifier":
                found = [r for r in found if _identified(r, wanted)]
            elif code == "code":
                found = [r for r in found if _coded(r, wanted)]
            elif rtype == "AuditEvent" and code == "patient":
                refs = {v if "/" in v else f"Patient/{v}" for v in wanted}
                found = [r for r in found if any(_audited(r, ref) for ref in refs)]
            elif code in _REFERENCE_PARAMS and rtype != "Patient":
                refs = {v if "/" in v else f"Patient/{v}" for v in wanted}
                found = [r for r in found if any(_names(r, ref, code) for ref in refs)]
        return found

    def _searchset(self, found: list[Json], params: list[tuple[str, str]]) -> httpx.Response:
        values = dict(params)
        if values.get("_summary") == "count":
            return _json(200, {"resourceType": "Bundle", "type": "searchset", "total": len(found)})
        subset = values.get("_elements")
        matches = [self._subset(r, subset) for r in found]
        includes = self._includes(found, params)
        size = int(values.get("_count", "50"))
        entries = [_entry(r, "match") for r in matches][int(values.get("_offset", "0")) :]
        rest = entries[size:]
        page = entries[:size] + [_entry(r, "include") for r in includes]
        links = [_link("self", f"{UPSTREAM}?{urlencode(params)}")]
        if rest:
            token = f"page{len(self.pages) + 1}"
            self.pages[token] = rest
            links.append(_link("next", _page_url(token, size)))
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
        return _json(200, {**bundle, "link": links, "entry": page})

    def _page(self, params: list[tuple[str, str]]) -> httpx.Response:
        values = dict(params)
        remaining = self.pages.get(values["_getpages"], [])
        size = int(values.get("_count", "50"))
        links = []
        if remaining[size:]:
            token = f"page{len(self.pages) + 1}"
            self.pages[token] = remaining[size:]
            links.append(_link("next", _page_url(token, size)))
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": 99}
        return _json(200, {**bundle, "link": links, "entry": remaining[:size]})

    def _includes(self, found: list[Json], params: list[tuple[str, str]]) -> list[Json]:
        out: list[Json] = []
        for name, value in params:
            if name == "_include" and ":" in value:
                element = value.split(":")[1]
                for resource in found:
                    for ref in _refs(resource.get(element)):
                        target = self.current(ref)
                        if target is not None:
                            out.append(target)
            elif name == "_revinclude" and ":" in value:
                rtype, element = value.split(":")[:2]
                keys = {f"{r['resourceType']}/{r['id']}" for r in found}
                out.extend(r for r in self.live(rtype) if set(_refs(r.get(element))) & keys)
        return out

    @staticmethod
    def _subset(resource: Json, elements: str | None) -> Json:
        if elements is None:
            return resource
        keep = {"resourceType", "id", "meta", *elements.split(",")}
        return {k: v for k, v in resource.items() if k in keep}

    # -- writes ----------------------------------------------------------------------------

    def _create(self, rtype: str, body: Json) -> httpx.Response:
        self._next_id += 1
        body = {**body, "id": f"new-{self._next_id}"}
        self.writes.append(("POST", rtype))
        stored = self.put(body)
        assert stored is not None
        location = f"{UPSTREAM}/{rtype}/{stored['id']}/_history/1"
        return _resource(201, stored, location=location)

    def _conditional(
        self, request: httpx.Request, rtype: str, params: list[tuple[str, str]]
    ) -> httpx.Response:
        matches = self._search(rtype, params)
        if len(matches) > 1:
            return _outcome(412, f"Multiple resources match: {[m['id'] for m in matches]}")
        key = f"{rtype}/{matches[0]['id']}" if matches else None
        if request.method == "DELETE":
            if key is None:
                return _outcome(200, "nothing to delete", severity="information")
            self.writes.append(("DELETE", key))
            self.put(None, key)
            return _outcome(200, f"Successfully deleted {key}", severity="information")
        if request.method == "PUT":
            body = json.loads(request.content)
            if key is None:
                return self._create(rtype, body)
            self.writes.append(("PUT", key))
            stored = self.put({**body, "id": key.split("/")[1]})
            assert stored is not None
            return _resource(200, stored)
        return _outcome(400, "conditional patch is not supported")

    def _bundle_request(self, bundle: Json) -> httpx.Response:
        kind = bundle.get("type")
        answers: list[Json] = []
        for entry in bundle.get("entry", []):
            spec = entry["request"]
            url = f"{UPSTREAM}/{spec['url']}"
            content = json.dumps(entry["resource"]).encode() if "resource" in entry else b""
            sub = httpx.Request(spec["method"], url, content=content)
            split = urlsplit(url)
            segments = [s for s in split.path[len(_PREFIX) :].split("/") if s]
            params = parse_qsl(split.query, keep_blank_values=True)
            response = self._route(sub, segments, params)
            answer: Json = {"response": {"status": str(response.status_code)}}
            if response.content:
                answer["resource"] = response.json()
            answers.append(answer)
        kind_out = "transaction-response" if kind == "transaction" else "batch-response"
        return _json(200, {"resourceType": "Bundle", "type": kind_out, "entry": answers})


# -- helpers -------------------------------------------------------------------------------


def _refs(value: Any) -> Iterator[str]:
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict) and isinstance(item.get("reference"), str):
            yield item["reference"]


def _names(resource: Json, reference: str, param: str = "patient") -> bool:
    """Whether ``resource`` names ``reference`` in the elements ``param`` reads."""
    elements: tuple[str, ...] = _REFERENCE_PARAMS.get(param, ("subject", "patient"))
    return any(reference in _refs(resource.get(e)) for e in elements)


def _audited(resource: Json, reference: str) -> bool:
    return any(reference in _refs(e.get("what")) for e in resource.get("entity", []))


def _identified(resource: Json, wanted: list[str]) -> bool:
    values = {i.get("value") for i in resource.get("identifier", [])}
    return any(w.rpartition("|")[2] in values for w in wanted)


def _coded(resource: Json, wanted: list[str]) -> bool:
    codes = {c.get("code") for c in resource.get("code", {}).get("coding", [])}
    return any(w.rpartition("|")[2] in codes for w in wanted)


def _entry(resource: Json, mode: str) -> Json:
    return {
        "fullUrl": f"{UPSTREAM}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


def _link(relation: str, url: str) -> Json:
    return {"relation": relation, "url": url}


def _page_url(token: str, size: int) -> str:
    query = urlencode([("_getpages", token), ("_getpagesoffset", str(size)), ("_count", str(size))])
    return f"{UPSTREAM}?{query}&_bundletype=searchset"


def _json(status: int, document: Json, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        content=json.dumps(document).encode(),
        headers={"content-type": _FHIR_JSON, **headers},
    )


def _resource(status: int, resource: Json, **extra: str) -> httpx.Response:
    meta = resource.get("meta", {})
    headers = {
        "etag": f'W/"{meta.get("versionId", "1")}"',
        "last-modified": "Fri, 01 Mar 2024 10:00:00 GMT",
        **extra,
    }
    return _json(status, resource, **headers)


def _outcome(status: int, text: str, *, severity: str = "error") -> httpx.Response:
    issue = {"severity": severity, "code": "processing", "diagnostics": text}
    return _json(status, {"resourceType": "OperationOutcome", "issue": [issue]})


def _missing(key: str) -> httpx.Response:
    return _outcome(404, f"Resource {key} is not known")


def _gone(key: str) -> httpx.Response:
    return _outcome(410, f"Resource {key} was deleted")
