"""pipeline.directory: who may write the records consent memberships are read from.

The guard's table (caller context and roles against the configured role), and the tie between
:data:`DIRECTORY_TYPES` and what the memberships directory actually reads on the upstream: a
type it reads that the guard does not cover is a record a member could rewrite to escape a
deny.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest
import respx

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.errors import Forbidden, SettingsError
from middleware.pipeline.caller import Caller, caller_of
from middleware.pipeline.directory import DIRECTORY_TYPES, REFUSED, DirectoryGuard
from middleware.pipeline.memberships import Unresolved
from middleware.proxy.httpx_upstream import HttpxUpstream
from middleware.proxy.membership_reads import UpstreamDirectory
from middleware.settings import load_settings

BASE = "http://up.example/fhir"


def _caller(scopes: str, roles: frozenset[str] = frozenset(), **extra: Any) -> Caller:
    identity = Identity(
        subject="s",
        issuer="https://idp",
        expires_at=4e9,
        scopes=parse_scopes(scopes).scopes,
        roles=roles,
        **extra,
    )
    return caller_of(identity)


ADMIN = frozenset({"directory-admin"})

# (admin_role, caller, may write the directory)
CASES = [
    # -- nobody by default ---------------------------------------------------------------
    ("", _caller("user/*.cruds", ADMIN, fhir_user="Practitioner/dr"), False),
    ("", _caller("system/*.cruds", ADMIN), False),
    # -- the role, in a user or system context ---------------------------------------------
    ("directory-admin", _caller("user/*.cruds", ADMIN, fhir_user="Practitioner/dr"), True),
    ("directory-admin", _caller("system/*.cruds", ADMIN), True),
    # -- without the role ----------------------------------------------------------------
    ("directory-admin", _caller("user/*.cruds", fhir_user="Practitioner/dr"), False),
    (
        "directory-admin",
        _caller("user/*.cruds", frozenset({"consent-admin"}), fhir_user="Practitioner/dr"),
        False,
    ),
    ("directory-admin", _caller("system/*.cruds"), False),
    # -- the role in a patient-context launch writes for its patient, not the directory ----
    ("directory-admin", _caller("launch/patient patient/*.cruds", ADMIN, patient="p1"), False),
]
IDS = [
    "default-user",
    "default-system",
    "role-user",
    "role-system",
    "no-role-user",
    "other-role",
    "no-role-system",
    "role-patient-context",
]


@pytest.mark.parametrize(("role", "caller", "admitted"), CASES, ids=IDS)
def test_only_the_directory_admin_writes_the_directory(
    role: str, caller: Caller, admitted: bool
) -> None:
    guard = DirectoryGuard(role)
    assert guard.admits(caller) is admitted
    for rtype in sorted(DIRECTORY_TYPES):
        if admitted:
            guard.check(caller, rtype)
        else:
            with pytest.raises(Forbidden) as refused:
                guard.check(caller, rtype)
            assert refused.value.status == 403
            assert refused.value.diagnostics == REFUSED


@pytest.mark.parametrize(
    "types",
    [
        ("Observation",),
        ("Practitioner",),
        ("RelatedPerson",),
        ("Patient", None),
        (None, {"resourceType": "Organization"}),  # not a type name: ignored
        (),
    ],
    ids=["observation", "practitioner", "related-person", "patient", "not-a-type", "none"],
)
def test_other_types_are_left_to_the_other_checks(types: tuple[object, ...]) -> None:
    DirectoryGuard("").check(_caller("user/*.cruds", fhir_user="Practitioner/dr"), *types)


@pytest.mark.parametrize(
    "types",
    [("Observation", "PractitionerRole"), ("PractitionerRole", "Observation"), (None, "Group")],
    ids=["body-is-directory", "url-is-directory", "body-only"],
)
def test_a_directory_type_in_either_place_is_refused(types: tuple[object, ...]) -> None:
    with pytest.raises(Forbidden):
        DirectoryGuard("").check(_caller("system/*.cruds"), *types)


async def test_every_type_the_memberships_directory_reads_is_guarded() -> None:
    """Ask the directory everything it can be asked and record the types of what it reads
    on the upstream: each is a directory type."""
    read: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        rtype = request.url.path.removeprefix("/fhir/").split("/")[0]
        read.add(rtype)
        if request.url.path.endswith("/PractitionerRole"):
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})
        return httpx.Response(404)

    router = respx.Router(assert_all_called=False, base_url=BASE)
    router.route().mock(side_effect=answer)
    upstream = HttpxUpstream.from_transport(httpx.MockTransport(router.handler))
    directory = UpstreamDirectory(lambda: upstream, base=BASE, clock=lambda: 0.0)
    for user in (
        "Practitioner/x",
        "PractitionerRole/x",
        "Person/x",
        "RelatedPerson/x",
        "Patient/x",
    ):
        # a 404 of a role or person is unresolved: what was read is what counts here
        with contextlib.suppress(Unresolved):
            await directory.affiliations(user)
    await directory.parents("Organization/x")
    for party in ("CareTeam/x", "Group/x"):
        await directory.members(party)
    assert {"PractitionerRole", "Organization", "CareTeam", "Group"} <= read
    assert read <= DIRECTORY_TYPES, read - DIRECTORY_TYPES


@pytest.mark.parametrize("role", [" directory-admin", "directory-admin ", " "])
def test_a_role_name_with_surrounding_spaces_stops_the_gateway(role: str) -> None:
    """It could never equal a token's role: the operator would believe it set one."""
    with pytest.raises(SettingsError, match="directory_admin_role"):
        load_settings(overrides={"upstream": BASE, "directory_admin_role": role})


def test_nobody_writes_the_directory_by_default() -> None:
    assert load_settings(overrides={"upstream": BASE}).directory_admin_role == ""
