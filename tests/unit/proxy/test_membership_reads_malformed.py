"""UpstreamDirectory on membership records shaped as no parser foresaw: each is
:class:`~middleware.pipeline.memberships.Unresolved` (a deny, or a 503, per
``membership_unresolved``), never another error (a 500), and remembered for
:data:`~middleware.proxy.membership_reads.FAILURE_SECONDS` like any failed read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.pipeline.memberships import Unresolved
from middleware.proxy.membership_reads import UpstreamDirectory
from middleware.proxy.upstream import UpstreamRequest


class _Answer:
    status = 200

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self, limit: int) -> bytes:
        return self.body

    async def aclose(self) -> None:
        return None


class _Upstream:
    """Answers every read with ``document`` (or raises ``error``), counting the reads."""

    def __init__(self, document: object = None, error: Exception | None = None) -> None:
        self.body = json.dumps(document).encode()
        self.error = error
        self.sent = 0

    async def send(self, request: UpstreamRequest) -> _Answer:
        self.sent += 1
        if self.error is not None:
            raise self.error
        return _Answer(self.body)


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _directory(upstream: _Upstream, clock: _Clock | None = None) -> UpstreamDirectory:
    return UpstreamDirectory(
        lambda: upstream,  # type: ignore[arg-type, return-value]
        base="http://up/fhir",
        clock=clock or _Clock(),
        wall_clock=lambda: 1.7e9,
    )


Ask = Callable[[UpstreamDirectory], Awaitable[frozenset[str]]]
#: Each read the directory makes, and the resourceType it expects.
ASKS: list[tuple[str, Ask]] = [
    ("CareTeam", lambda d: d.members("CareTeam/t")),
    ("Group", lambda d: d.members("Group/g")),
    ("Bundle", lambda d: d.affiliations("Practitioner/dr")),
    ("PractitionerRole", lambda d: d.affiliations("PractitionerRole/r")),
    ("Person", lambda d: d.affiliations("Person/p")),
    ("Organization", lambda d: d.parents("Organization/o")),
]
ASK_IDS = [kind for kind, _ in ASKS]

# -- each malformed shape a reviewer or hypothesis found, by the read it breaks ----------------
MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("CareTeam", {"status": {"x": 1}}),
    ("CareTeam", {"status": ["inactive"]}),
    ("CareTeam", {"status": 7}),
    ("Group", {"active": "false"}),
    ("Group", {"member": [{"entity": {"reference": "Practitioner/a"}, "inactive": "true"}]}),
    ("PractitionerRole", {"active": "false"}),
    ("Bundle", {"entry": [{"resource": {"resourceType": "PractitionerRole", "active": 0}}]}),
]


@pytest.mark.parametrize(
    ("kind", "fields"), MALFORMED, ids=[f"{k}-{sorted(f)[0]}" for k, f in MALFORMED]
)
async def test_a_malformed_flag_or_status_is_unresolved_and_remembered(
    kind: str, fields: dict[str, Any]
) -> None:
    """A status or flag that is not a code or boolean could mean either: unresolved (a
    string "false" read as true would keep an ended team or role). Before: TypeError (500)
    for a status object or list, or read as active."""
    ask = dict(ASKS)[kind]
    upstream = _Upstream({"resourceType": kind, "id": "x", **fields})
    directory = _directory(upstream)
    for _ in range(2):
        with pytest.raises(Unresolved):
            await ask(directory)
    assert upstream.sent == 1  # the second answered from the remembered failure


async def test_any_error_of_a_read_is_unresolved_and_remembered() -> None:
    """The net under the parsers: an error nobody foresaw (here the client raising one
    that is not a GatewayError) is Unresolved, with a message naming no data, and kept
    FAILURE_SECONDS: before, it escaped as a 500 and each request read again."""
    upstream = _Upstream(error=RuntimeError("Patient/secret-id"))
    clock = _Clock()
    directory = _directory(upstream, clock)
    for _ in range(2):
        with pytest.raises(Unresolved) as raised:
            await directory.members("CareTeam/t")
        assert "secret" not in str(raised.value)
    assert upstream.sent == 1
    clock.now = 6.0  # past FAILURE_SECONDS: read again
    with pytest.raises(Unresolved):
        await directory.members("CareTeam/t")
    assert upstream.sent == 2


_KEYS = st.sampled_from(
    [
        "status", "active", "inactive", "participant", "member", "onBehalfOf", "entity",
        "period", "start", "end", "reference", "link", "target", "partOf", "organization",
        "practitioner", "entry", "resource", "resourceType", "relation", "id", "x",
    ]
)  # fmt: skip
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "inactive", "PractitionerRole", "CareTeam", "Practitioner/dr", "next",
            "http://o/fhir/Practitioner2/x", "#c", "urn:uuid:1", "2024-01-01", "2024",
            "2024-13-45T99:00:00Z", "Organization/o/_history/2",
        ]
    )
)  # fmt: skip
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(ASKS) - 1), fields=st.dictionaries(_KEYS, _JSON, max_size=6))
def test_arbitrary_json_is_an_answer_or_unresolved(index: int, fields: dict[str, Any]) -> None:
    """Whatever JSON a record holds, each read answers references or raises Unresolved;
    the parsers themselves (the error net in the cache is patched out) raise nothing else."""
    kind, ask = ASKS[index]
    upstream = _Upstream({"resourceType": kind, **fields})
    directory = _directory(upstream)

    async def bare_fill(target: str, parse: Any, now: float) -> tuple[float, frozenset[Any]]:
        return now + 1.0, await directory._read(target, parse)

    directory._fill = bare_fill  # type: ignore[method-assign]

    async def run() -> None:
        try:
            found = await ask(directory)
        except Unresolved:
            return
        assert all(isinstance(ref, str) for ref in found)

    asyncio.run(run())
