"""Claims to Identity: fhirUser, patient context, purpose of use, roles, break-the-glass, kind."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.auth.identity import (
    V3_ACT_REASON,
    ClaimError,
    Identity,
    IdentityKind,
    IdentityRules,
    identity_from_claims,
    parse_fhir_user,
)

from .tokens import claims

BASE = claims(scope="", patient=None, fhirUser=None)


def build(rules: IdentityRules | None = None, **overrides: Any) -> Identity:
    return identity_from_claims({**BASE, **overrides}, rules)


# --- fhirUser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Practitioner/123", "Practitioner/123"),
        ("https://ehr.test/fhir/Practitioner/123", "Practitioner/123"),
        ("https://ehr.test/fhir/Patient/a-b.c", "Patient/a-b.c"),
        ("https://ehr.test/fhir/PractitionerRole/7/_history/3", "PractitionerRole/7"),
        ("RelatedPerson/r1", "RelatedPerson/r1"),
        ("Person/p", "Person/p"),
    ],
    ids=["relative", "absolute", "patient", "versioned", "related-person", "person"],
)
def test_fhir_user_parses(value: str, expected: str) -> None:
    assert parse_fhir_user(value, ["https://ehr.test/fhir"]) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Observation/1",
        "Practitioner",
        "Practitioner/",
        "Practitioner/a b",
        "Practitioner/" + "x" * 65,
        "https://ehr.test/fhir/Practitioner/1?x=1",
        "practitioner/1",
        7,
    ],
    ids=[
        "not-a-user-type",
        "no-id",
        "empty-id",
        "space",
        "id-too-long",
        "query",
        "lowercase",
        "not-a-string",
    ],
)
def test_fhir_user_is_refused(value: object) -> None:
    with pytest.raises(ClaimError, match="fhirUser"):
        parse_fhir_user(value)


GATEWAY = "https://gw.example/fhir"


@pytest.mark.parametrize(
    "value",
    [
        "Practitioner/../Patient/x",
        "Practitioner/./Patient/x",
        "Practitioner/1/../../Patient/x",
        "x/Practitioner/1",
        "/Practitioner/1",
        "Practitioner/1/",
        "Practitioner/..",
        "Practitioner/.",
        "Practitioner/%2e%2e",
        "https://evil.example/fhir/Practitioner/1",
        "https://gw.example/other/Practitioner/1",
        "https://gw.example/fhir/x/../Practitioner/1",
        "https://gw.example/fhir/Patient/p1/Practitioner/1",
        "https://user@gw.example/fhir/Practitioner/1",
        "https://gw.example/fhir/Practitioner/1#frag",
        "ftp://gw.example/fhir/Practitioner/1",
        "//gw.example/fhir/Practitioner/1",
        "https://gw.example.evil/fhir/Practitioner/1",
    ],
    ids=[
        "dot-dot-to-a-patient",
        "dot-segment",
        "climb-out",
        "relative-with-a-prefix",
        "leading-slash",
        "trailing-slash",
        "id-dot-dot",
        "id-dot",
        "percent-encoded",
        "any-host",
        "other-path-same-host",
        "dot-dot-in-the-base",
        "nested-under-a-patient",
        "user-info",
        "fragment",
        "not-http",
        "scheme-relative",
        "host-suffix",
    ],
)
def test_fhir_user_is_strict(value: str) -> None:
    """Attack: ``fhirUser`` was read with a loose pattern (anything, then ``Type/id`` at the
    end), so ``Practitioner/../Patient/x`` became ``Patient/x`` (whose consents and data
    rules then applied), and a URL on any host was taken as this server's user. Only exact
    relative ``Type/id`` or a URL under an accepted FHIR base is read now."""
    with pytest.raises(ClaimError, match="fhirUser"):
        parse_fhir_user(value, [GATEWAY])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://gw.example/fhir/Practitioner/1", "Practitioner/1"),
        ("HTTPS://GW.EXAMPLE/fhir/Practitioner/1", None),
        ("https://GW.example/fhir/Practitioner/1/_history/2", "Practitioner/1"),
        ("https://gw.example/fhir/Person/1.2-a", "Person/1.2-a"),
    ],
    ids=["own-base", "upper-case-scheme", "host-case", "dotted-id"],
)
def test_fhir_user_under_an_accepted_base(value: str, expected: str | None) -> None:
    """Scheme and host compare case-insensitively (RFC 3986 §6.2.2.1); our pattern takes the
    scheme in lower case only, so an upper-case one is refused rather than guessed."""
    if expected is None:
        with pytest.raises(ClaimError):
            parse_fhir_user(value, [GATEWAY])
    else:
        assert parse_fhir_user(value, [GATEWAY]) == expected


def test_an_absolute_fhir_user_needs_an_accepted_base() -> None:
    """Without any accepted base only relative references are read."""
    with pytest.raises(ClaimError, match="not under this gateway's FHIR base"):
        parse_fhir_user("https://gw.example/fhir/Practitioner/1")
    assert parse_fhir_user("Practitioner/1") == "Practitioner/1"


def test_the_rules_carry_the_bases_into_the_identity() -> None:
    rules = IdentityRules(fhir_user_bases=frozenset({GATEWAY}))
    assert build(rules, fhirUser=f"{GATEWAY}/Practitioner/7").fhir_user == "Practitioner/7"
    with pytest.raises(ClaimError, match="fhirUser"):
        build(rules, fhirUser="Practitioner/../Patient/x")


# --- purpose of use and roles -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("TREAT", ((V3_ACT_REASON, "TREAT"),)),
        (["TREAT", "HPAYMT"], ((V3_ACT_REASON, "TREAT"), (V3_ACT_REASON, "HPAYMT"))),
        ("urn:sys|ETREAT", (("urn:sys", "ETREAT"),)),
        ({"system": "urn:sys", "code": "ETREAT"}, (("urn:sys", "ETREAT"),)),
        ({"code": "TREAT"}, ((V3_ACT_REASON, "TREAT"),)),
        (
            {"coding": [{"system": "urn:a", "code": "X"}, {"code": "TREAT"}]},
            (("urn:a", "X"), (V3_ACT_REASON, "TREAT")),
        ),
        (["TREAT", {"code": "TREAT"}], ((V3_ACT_REASON, "TREAT"),)),
        ([], ()),
    ],
    ids=[
        "code",
        "codes",
        "system-bar-code",
        "coding",
        "coding-without-system",
        "codeable-concept",
        "duplicates-merged",
        "empty",
    ],
)
def test_purpose_of_use(value: Any, expected: tuple[tuple[str, str], ...]) -> None:
    assert build(purpose_of_use=value).purpose_of_use == expected


@pytest.mark.parametrize(
    "value",
    ["", "|TREAT", "urn:x|", 7, {"system": "urn:x"}, {"code": ""}, {"coding": ["TREAT"]}, [None]],
    ids=[
        "empty",
        "bar-no-system",
        "no-code",
        "number",
        "coding-no-code",
        "coding-empty-code",
        "coding-of-strings",
        "null-item",
    ],
)
def test_malformed_purpose_refuses_the_token(value: Any) -> None:
    with pytest.raises(ClaimError, match="purpose_of_use"):
        build(purpose_of_use=value)


def test_purpose_claim_name_and_default_system_are_configurable() -> None:
    rules = IdentityRules(purpose_claim="extensions.ihe_iua.purpose_of_use", purpose_system="urn:p")
    identity = build(rules, extensions={"ihe_iua": {"purpose_of_use": {"code": "PUBHLTH"}}})
    assert identity.purpose_of_use == (("urn:p", "PUBHLTH"),)


@pytest.mark.parametrize(
    ("rules", "extra", "expected"),
    [
        (IdentityRules(), {"roles": ["doctor", "nurse"]}, {"doctor", "nurse"}),
        (IdentityRules(), {"roles": "doctor"}, {"doctor"}),
        (IdentityRules(), {}, set()),
        (
            IdentityRules(roles_claim="realm_access.roles"),
            {"realm_access": {"roles": ["admin"]}},
            {"admin"},
        ),
        (
            IdentityRules(roles_claim="https://example.org/roles"),
            {"https://example.org/roles": ["x"]},
            {"x"},
        ),
    ],
    ids=["list", "string", "absent", "nested-path", "url-named-claim"],
)
def test_roles(rules: IdentityRules, extra: dict[str, Any], expected: set[str]) -> None:
    assert build(rules, **extra).roles == expected


@pytest.mark.parametrize("value", [7, [1], [""], {"a": 1}], ids=["int", "ints", "empty", "object"])
def test_malformed_roles_refuse_the_token(value: Any) -> None:
    with pytest.raises(ClaimError, match="roles"):
        build(roles=value)


# --- break the glass --------------------------------------------------------------------------

BTG = IdentityRules(break_glass_scopes=frozenset({"btg"}), break_glass_roles=frozenset({"er"}))


@pytest.mark.parametrize(
    ("rules", "extra", "allowed"),
    [
        (BTG, {"scope": "user/*.rs btg"}, True),
        (BTG, {"roles": ["er"]}, True),
        (BTG, {"scope": "user/*.rs", "roles": ["doctor"]}, False),
        (IdentityRules(), {"scope": "btg", "roles": ["er"]}, False),
    ],
    ids=["by-scope", "by-role", "neither", "not-configured"],
)
def test_break_the_glass(rules: IdentityRules, extra: dict[str, Any], allowed: bool) -> None:
    identity = build(rules, **extra)
    assert identity.break_the_glass is allowed
    if rules.break_glass_scopes:  # a configured break-the-glass scope is not "dropped"
        assert "btg" not in identity.dropped_scopes


# --- kind -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ({"patient": "123", "scope": "launch/patient patient/*.rs"}, "patient"),
        ({"patient": "123", "scope": "user/*.rs", "fhirUser": "Practitioner/1"}, "user"),
        ({"scope": "patient/*.rs"}, "none"),
        ({"fhirUser": "Practitioner/1", "scope": "openid"}, "user"),
        ({"scope": "user/Patient.r"}, "user"),
        ({"scope": "system/*.rs"}, "system"),
        ({"scope": "openid garbage"}, "none"),
    ],
    ids=[
        "patient-launch",
        "patient-context-but-user-scopes",
        "patient-scopes-without-context",
        "fhir-user",
        "user-scopes",
        "system",
        "nothing",
    ],
)
def test_kind(extra: dict[str, Any], kind: IdentityKind) -> None:
    assert build(**extra).kind == kind


# --- other claims -----------------------------------------------------------------------------


def test_client_id_falls_back_to_azp() -> None:
    assert build(client_id=None, azp="app-2").client_id == "app-2"
    assert build(client_id="app-1", azp="app-2").client_id == "app-1"


def test_scope_may_be_a_list_and_garbage_is_reported() -> None:
    identity = build(scope=["patient/Observation.rs", "patient/Foo.rs"])
    assert [s.text for s in identity.scopes] == ["patient/Observation.rs"]
    assert identity.dropped_scopes == ("patient/Foo.rs",)


@pytest.mark.parametrize(
    ("overrides", "claim"),
    [
        ({"sub": None}, "sub"),
        ({"iss": ""}, "iss"),
        ({"exp": "x"}, "exp"),
        ({"patient": 123}, "patient"),
        ({"patient": "a/b"}, "patient"),
        ({"jti": 5}, "jti"),
        ({"client_id": ""}, "client_id"),
        ({"scope": {"a": 1}}, "scope"),
    ],
    ids=["no-sub", "empty-iss", "exp", "patient-int", "patient-slash", "jti", "client-id", "scope"],
)
def test_malformed_claim_is_named(overrides: dict[str, Any], claim: str) -> None:
    with pytest.raises(ClaimError, match=claim):
        identity_from_claims({k: v for k, v in {**BASE, **overrides}.items() if v is not None})


# --- organization (the audit index's agent organization) --------------------------------------


@pytest.mark.parametrize(
    ("rules", "extra", "expected"),
    [
        (IdentityRules(), {"organization": "Organization/org-1"}, "Organization/org-1"),
        (IdentityRules(), {"organization": "Acme Health Plan"}, "Acme Health Plan"),
        (IdentityRules(), {}, None),
        (IdentityRules(), {"organization": None}, None),
        (
            IdentityRules(organization_claim="ext.org"),
            {"ext": {"org": "Organization/o2"}, "organization": "ignored"},
            "Organization/o2",
        ),
        (IdentityRules(organization_claim="ext.org"), {"organization": "Acme"}, None),
        (IdentityRules(), {"organization": "x" * 256}, "x" * 256),
    ],
    ids=["reference", "plain-name", "absent", "null", "nested-path", "other-claim", "longest"],
)
def test_organization(rules: IdentityRules, extra: dict[str, Any], expected: str | None) -> None:
    assert build(rules, **extra).organization == expected


@pytest.mark.parametrize(
    "value",
    [
        7,
        ["Organization/o1"],
        {"reference": "Organization/o1"},
        "",
        " Acme",
        "Acme\n",
        "Ac\x00me",
        "x" * 257,
        "Organization/",
        "Organization/a b",
        "Organization/..",
        "Organization/o1/_history/2",
    ],
    ids=[
        "int",
        "list",
        "object",
        "empty",
        "leading-space",
        "newline",
        "nul",
        "too-long",
        "reference-without-id",
        "reference-bad-id",
        "reference-dots",
        "reference-versioned",
    ],
)
def test_malformed_organization_refuses_the_token(value: Any) -> None:
    with pytest.raises(ClaimError, match=r"^organization: "):
        build(organization=value)


def test_a_malformed_organization_names_the_configured_claim() -> None:
    with pytest.raises(ClaimError, match=r"^ext\.org: "):
        build(IdentityRules(organization_claim="ext.org"), ext={"org": 1})
