"""Settings: defaults < TOML file < ``CONSENTRY_*`` environment < command-line overrides.

:func:`load_settings` reads and validates everything once, at start, and raises one
:class:`~middleware.errors.SettingsError` listing every bad value. Nothing reads the
environment at import time; :class:`Settings` is frozen and passed to ``create_app``.

Each setting's environment variable is ``CONSENTRY_`` + its name in upper case
(``upstream`` -> ``CONSENTRY_UPSTREAM``); mapping-valued settings take JSON there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from middleware.audit.accounting import AccountingRules, RecipientInfo, parse_exempt
from middleware.audit.recipients import load_directory
from middleware.audit.reports import AfterHours
from middleware.audit.retention import (
    DEFAULT_YEARS,
    RetentionRules,
    check_covers_accounting,
    parse_retention,
)
from middleware.auth.settings import AuthSettings
from middleware.consent.labels import DEFAULT_PART2_NOTICE, LabelRules, parse_labels
from middleware.consent.limits import CEILING, DEFAULT_LIMITS
from middleware.errors import SettingsError
from middleware.fhir.limits import DEFAULT_MAX_JSON_DEPTH, HARD_MAX_JSON_DEPTH
from middleware.ledger.witnesses import WitnessEndpoint, parse_witnesses
from middleware.ops.scrape import DEFAULT_METRICS_CLIENTS, MIN_TOKEN_LENGTH, parse_networks
from middleware.pipeline.operation_table import OperationTable, parse_operations
from middleware.proxy.headers import header_problems

__all__ = ["ENV_PREFIX", "Settings", "load_settings"]

ENV_PREFIX = "CONSENTRY_"
_UPSTREAM_CLIENTS = ("native", "aiohttp", "httpx")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated gateway settings; see docs/configuration.md for each one."""

    upstream: str
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/fhir"
    public_url: str = ""
    store: str = "sqlite:consentry.db"
    max_request_bytes: int = 16 * 1024 * 1024
    max_xml_body_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    consent_max_depth: int = DEFAULT_LIMITS.max_depth
    consent_max_provisions: int = DEFAULT_LIMITS.max_provisions
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    upstream_deadline: float = 60.0
    ready_commit_age: float = 10.0
    ready_cache_seconds: float = 1.0
    upstream_pool_size: int = 100
    upstream_client: str = "native"
    upstream_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    metadata_ttl: float = 300.0
    gzip_min_bytes: int = 1024
    trust_forwarded_headers: bool = False
    # Proxies whose X-Forwarded-For names the client (middleware.forwarded; configuration.md).
    forwarded_allow_ips: str = ""
    log_level: str = "info"
    access_log: bool = True
    metrics_clients: str = DEFAULT_METRICS_CLIENTS
    metrics_token: str = ""
    # Traces (middleware.ops.tracing, docs/operations.md "Traces"): off while otlp_endpoint is
    # empty; the OTLP/HTTP traces URL, its request headers, the ratio of new traces sampled.
    otlp_endpoint: str = ""
    otlp_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    trace_sample_ratio: float = 1.0
    ledger_key_file: str = "consentry-ledger.key"
    ledger_origin: str = ""
    ledger_max_batch: int = 256
    ledger_max_pending: int = 10_000
    ledger_max_wait_ms: float = 0.0
    # Witnesses that cosign the ledger's checkpoints (docs/ledger.md, "Witnessed checkpoints"):
    # [[witnesses]] name, url, vkey; the cosignatures /ledger/checkpoint waits for; their timeout.
    witnesses: tuple[WitnessEndpoint, ...] = ()
    witness_quorum: int = 0
    witness_timeout_seconds: float = 10.0
    audit_outbox: str = ""
    consent_admin_role: str = "consent-admin"
    ledger_auditor_role: str = "ledger-auditor"
    audit_role: str = "ledger-auditor"
    audit_max_count: int = 200
    consent_jurisdiction: str = "opt-in"
    consent_collect_default: str = "permit"
    consent_uncovered_labels: str = "deny"
    # "patient-key": every consent change signed by the patient's registered key (consent.signers)
    consent_signatures: str = "off"
    # who makes a patient's first signing-key registration: "admin" or also "patient"
    consent_key_enrolment: str = "admin"
    # Labels on data (docs/consent-api.md, "Labels on data"): labels beyond 42CFRPart2 that
    # mark 42 CFR Part 2 data, and the notice its release carries.
    part_two_labels: str = ""
    part_two_notice: str = DEFAULT_PART2_NOTICE
    # Purpose-of-use labels read as tags, not restrictions (HTEST marks test data).
    purpose_labels_ignored: str = "HTEST"
    cursor_ttl_seconds: int = 900
    membership_timeout: float = 5.0
    membership_cache_seconds: float = 300.0
    membership_cache_size: int = 10_000
    membership_unresolved: str = "deny"
    directory_admin_role: str = ""
    break_glass_minutes: int = 60
    mapping_profile: str = ""
    unknown_patient_allowed_for: str = ""
    inference_guards_for: str = "patient"
    sensitive_sort_params: str = ""
    # Counts answered by the gateway (pipeline.counting): the caller's cap on matches released,
    # hard limits on the upstream walk (also refilling a page), its deadline, counts at once.
    count_max_resources: int = 10_000
    count_max_walked: int = 100_000
    count_max_pages: int = 1_000
    count_page_size: int = 1_000
    count_deadline_seconds: float = 20.0
    count_max_concurrent: int = 4
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 10_000
    workers: int = 1
    rate_limit_per_principal: float = 2000.0
    rate_limit_per_principal_burst: int = 4000
    rate_limit_unauthenticated: float = 5.0
    rate_limit_unauthenticated_burst: int = 50
    accounting_lookback_years: int = 6
    accounting_exempt_purposes: str = ""
    accounting_internal_organizations: str = ""
    recipient_directory_file: str = ""
    # Bulk Data $export of patient data (pipeline.export, proxy.export_http)
    export_max_running: int = 2
    export_max_resources: int = 1_000_000
    export_resources_per_file: int = 10_000
    export_keep_seconds: float = 3600.0
    export_page_count: int = 100
    export_max_group_members: int = 10_000
    export_max_bytes: int = 256 * 1024 * 1024
    export_bytes_per_file: int = 64 * 1024 * 1024
    export_max_seconds: float = 3600.0
    export_max_running_per_owner: int = 1
    access_report_lookback_years: int = 3
    audit_retention_years: int = 6
    audit_retention_by_kind: str = ""
    report_after_hours: str = "19:00-07:00"
    report_timezone: str = "UTC"
    # The operations table (docs/consent-api.md, "Operations"): rows over the default table,
    # or instead of it with operations_replace_defaults.
    operations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    operations_replace_defaults: bool = False
    auth: AuthSettings = field(default_factory=AuthSettings)

    @property
    def gateway_base_url(self) -> str:
        """The absolute FHIR base clients see (``public_url``, else built from host/port)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}{self.base_path}"

    @property
    def unknown_patient_contexts(self) -> frozenset[str]:
        """The caller contexts a resource with an undeterminable patient is released to."""
        return frozenset(
            c.strip() for c in self.unknown_patient_allowed_for.split(",") if c.strip()
        )

    @property
    def inference_guard_contexts(self) -> frozenset[str]:
        """The caller contexts refused the search families that can infer hidden values."""
        return _contexts(self.inference_guards_for)

    @property
    def label_rules(self) -> LabelRules:
        """What counts as 42 CFR Part 2 data and its notice (validated at load)."""
        return LabelRules(
            parse_labels(self.part_two_labels),
            self.part_two_notice,
            _codes(self.purpose_labels_ignored),
        )

    @property
    def operation_table(self) -> OperationTable:
        """The operations table in force (validated at load)."""
        return parse_operations(self.operations, replace_defaults=self.operations_replace_defaults)

    @property
    def checkpoint_origin(self) -> str:
        """The origin a *new* ledger key file gets: ``ledger_origin``, else the public host +
        path. The log keeps the origin stored in its key file; this is never consulted again
        (see :mod:`middleware.ledger.keyfile`)."""
        if self.ledger_origin:
            return self.ledger_origin
        parts = urlsplit(self.gateway_base_url)
        return f"{parts.netloc}{parts.path}/ledger"

    @property
    def accounting_rules(self) -> AccountingRules:
        """The 45 CFR 164.528 accounting rules these settings configure (docs/audit.md)."""
        return AccountingRules(
            exempt=parse_exempt(self.accounting_exempt_purposes),
            lookback_years=self.accounting_lookback_years,
            internal_organizations=_contexts(self.accounting_internal_organizations),
        )

    def recipient_directory(self) -> Mapping[str, RecipientInfo]:
        """The recipients' names and addresses for the accounting (45 CFR 164.528(b)(2)(ii)),
        read from ``recipient_directory_file`` (empty without one); :class:`SettingsError`
        when the file is unreadable or invalid. Read once by each caller, at start."""
        if not self.recipient_directory_file:
            return MappingProxyType({})
        return load_directory(Path(self.recipient_directory_file))

    @property
    def retention_rules(self) -> RetentionRules:
        """How long each audit kind keeps its evidence (``consentry audit retention``)."""
        return RetentionRules(
            default_years=self.audit_retention_years,
            by_kind=parse_retention(self.audit_retention_by_kind),
        )

    @property
    def after_hours(self) -> AfterHours:
        """The after-hours window the reports highlight, in ``report_timezone``."""
        return AfterHours.parse(self.report_after_hours, ZoneInfo(self.report_timezone))


def _contexts(text: str) -> frozenset[str]:
    return frozenset(c.strip() for c in text.split(",") if c.strip())


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources, validate every value, and return :class:`Settings`.

    Raises :class:`SettingsError` naming every unknown key and bad value at once.
    """
    raw: dict[str, Any] = {}
    problems: list[str] = []
    if config_file is not None:
        try:
            if str(config_file) == "-":  # `--config -`: the TOML comes on standard input
                data = tomllib.load(sys.stdin.buffer)
            else:
                with config_file.open("rb") as fh:
                    data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {config_file}: {exc}") from exc
        for key, value in data.items():
            if key not in _FIELDS:
                problems.append(f"{config_file}: unknown setting {key!r}")
            else:
                raw[key] = value
    for key, text in (env or {}).items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            problems.append(f"environment: unknown setting {key}")
            continue
        try:
            raw[name] = _from_text(name, text)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})

    values: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            values[name] = _coerce(name, value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{name}: {exc}")
    if "upstream" not in values and "upstream" not in raw:
        problems.append(
            "upstream: required (the upstream FHIR base URL, e.g. http://host:8103/fhir)"
        )
    problems.extend(_check(values))
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
    return Settings(**values)


def _from_text(name: str, text: str) -> Any:
    kind = _kind(name)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if kind in (dict, AuthSettings, tuple):  # witnesses: a JSON array of objects
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON object: {exc.msg}") from exc
    return text


def _kind(name: str) -> type:
    if name == "auth":
        return AuthSettings
    if name == "witnesses":
        return tuple
    spec = _FIELDS[name]
    if spec.default_factory is not dataclasses.MISSING:
        return dict
    default = spec.default
    if default is dataclasses.MISSING:
        return str
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    return dict


def _coerce(name: str, value: Any) -> Any:
    kind = _kind(name)
    if kind is tuple:
        return parse_witnesses(value)
    if kind is AuthSettings:
        if isinstance(value, AuthSettings):
            return value
        if not isinstance(value, Mapping):
            raise TypeError("expected a table")
        try:
            return AuthSettings.from_mapping(value)
        except SettingsError as exc:
            raise ValueError(str(exc)) from exc
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected a boolean, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if kind is dict:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise TypeError("expected a table of strings")
        return MappingProxyType(dict(value))
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _check(values: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for name in ("upstream", "public_url"):
        url = values.get(name)
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.append(f"{name}: expected an absolute http(s) URL, got {url!r}")
            elif parts.query or parts.fragment:
                problems.append(f"{name}: must not have a query or fragment")
    base = values.get("base_path", "/fhir")
    if base and (not base.startswith("/") or base.endswith("/") or "//" in base):
        problems.append(f"base_path: expected '' or '/segment[/segment]', got {base!r}")
    port = values.get("port", 8080)
    if not 0 <= port <= 65535:
        problems.append(f"port: expected 0..65535, got {port}")
    for name in (
        "max_request_bytes",
        "max_xml_body_bytes",
        "max_response_bytes",
        "upstream_pool_size",
        "ledger_max_batch",
        "ledger_max_pending",
    ):
        if name in values and values[name] < 1:
            problems.append(f"{name}: must be positive")
    for name in ("connect_timeout", "read_timeout", "upstream_deadline", "ready_commit_age"):
        # `not 0 < x < inf` also refuses nan (every comparison with nan is false): a nan or
        # infinite timeout is no timeout at all.
        if name in values and not 0 < values[name] < math.inf:
            problems.append(f"{name}: must be positive and finite (seconds)")
    for name in ("metadata_ttl", "gzip_min_bytes", "ledger_max_wait_ms", "ready_cache_seconds"):
        if name in values and not 0 <= values[name] < math.inf:
            problems.append(f"{name}: must be a finite number, not negative")
    problems.extend(
        f"upstream_headers: {problem}"
        for problem in header_problems(values.get("upstream_headers", {}))
    )
    for name in ("header_timeout", "body_timeout"):
        if name in values and not 0 < values[name] < math.inf:
            problems.append(f"{name}: must be positive and finite (seconds)")
    for name in ("rate_limit_per_principal", "rate_limit_unauthenticated"):
        if name in values and not 0 <= values[name] < math.inf:
            problems.append(f"{name}: must be a finite number of requests per second, >= 0")
    for name in (
        "max_connections",
        "rate_limit_per_principal_burst",
        "rate_limit_unauthenticated_burst",
    ):
        if name in values and values[name] < 1:
            problems.append(f"{name}: must be positive")
    workers = values.get("workers", 1)
    if not 0 <= workers <= 1024:
        problems.append(f"workers: expected 0 (one per CPU) to 1024, got {workers}")
    elif workers > 1 and values.get("store", "").startswith("memory:"):
        problems.append("workers: a memory: store lives in one process; use 1 worker")
    if values.get("upstream_client", "native") not in _UPSTREAM_CLIENTS:
        problems.append(f"upstream_client: expected one of {', '.join(_UPSTREAM_CLIENTS)}")
    if values.get("log_level", "info") not in _LOG_LEVELS:
        problems.append(f"log_level: expected one of {', '.join(_LOG_LEVELS)}")
    if values.get("consent_jurisdiction", "opt-in") not in ("opt-in", "opt-out"):
        problems.append("consent_jurisdiction: expected opt-in or opt-out")
    if values.get("consent_collect_default", "permit") not in ("permit", "jurisdiction"):
        problems.append("consent_collect_default: expected permit or jurisdiction")
    if values.get("consent_uncovered_labels", "deny") not in ("deny", "redact"):
        problems.append("consent_uncovered_labels: expected deny or redact")
    if values.get("consent_signatures", "off") not in ("off", "patient-key"):
        problems.append("consent_signatures: expected off or patient-key")
    if values.get("consent_key_enrolment", "admin") not in ("admin", "patient"):
        problems.append("consent_key_enrolment: expected admin or patient")
    try:
        LabelRules(
            parse_labels(values.get("part_two_labels", "")),
            values.get("part_two_notice", "x"),
            _codes(values.get("purpose_labels_ignored", "HTEST")),
        )
    except ValueError as exc:
        problems.append(f"part_two_labels / part_two_notice / purpose_labels_ignored: {exc}")
    if not 0 < values.get("break_glass_minutes", 60) <= 24 * 60:
        problems.append("break_glass_minutes: expected 1..1440")
    if not 0 < values.get("cursor_ttl_seconds", 900) <= 86_400:
        problems.append("cursor_ttl_seconds: expected 1..86400")
    if not 0 < values.get("membership_timeout", 5.0) <= 60:
        problems.append("membership_timeout: expected more than 0, at most 60 (seconds)")
    if not 0 <= values.get("membership_cache_seconds", 300.0) <= 86_400:
        problems.append("membership_cache_seconds: expected 0..86400")
    if not 1 <= values.get("membership_cache_size", 10_000) <= 1_000_000:
        problems.append("membership_cache_size: expected 1..1000000")
    if values.get("membership_unresolved", "deny") not in ("deny", "unavailable"):
        problems.append("membership_unresolved: expected deny or unavailable")
    for name, default in (("unknown_patient_allowed_for", ""), ("inference_guards_for", "patient")):
        if _contexts(values.get(name, default)) - {"patient", "user", "system"}:
            problems.append(f"{name}: expected a comma list of patient, user, system")
    depth = values.get("max_json_depth", DEFAULT_MAX_JSON_DEPTH)
    if not 1 <= depth <= HARD_MAX_JSON_DEPTH:
        problems.append(f"max_json_depth: expected 1..{HARD_MAX_JSON_DEPTH}, got {depth}")
    for name, most in (
        ("consent_max_depth", CEILING.max_depth),
        ("consent_max_provisions", CEILING.max_provisions),
    ):
        if name in values and not 1 <= values[name] <= most:
            problems.append(f"{name}: expected 1..{most}, got {values[name]}")
    if values.get("consent_admin_role", "consent-admin") == "":
        problems.append("consent_admin_role: must not be empty")
    if values.get("ledger_auditor_role", "ledger-auditor") == "":
        problems.append("ledger_auditor_role: must not be empty")
    if values.get("audit_role", "ledger-auditor") == "":
        problems.append("audit_role: must not be empty")
    directory_admin = values.get("directory_admin_role", "")
    if directory_admin != directory_admin.strip():
        problems.append("directory_admin_role: a role name has no surrounding spaces")
    for name, low in (
        ("export_max_running", 1),
        ("export_max_resources", 1),
        ("export_resources_per_file", 1),
        ("export_max_group_members", 1),
        ("export_max_bytes", 1),
        ("export_bytes_per_file", 1),
        ("export_max_running_per_owner", 1),
    ):
        if values.get(name, low) < low:
            problems.append(f"{name}: expected at least {low}")
    if not 1 <= values.get("export_page_count", 100) <= 1000:
        problems.append("export_page_count: expected 1..1000")
    if not values.get("export_keep_seconds", 3600.0) > 0:
        problems.append("export_keep_seconds: expected more than 0")
    if not 0 < values.get("export_max_seconds", 3600.0) < math.inf:  # nan, inf: no limit
        problems.append("export_max_seconds: must be positive and finite (seconds)")
    if not 1 <= values.get("audit_max_count", 200) <= 1000:
        problems.append("audit_max_count: expected 1..1000")
    for bound, usual, most in (
        ("count_max_resources", 10_000, 10_000_000),
        ("count_max_walked", 100_000, 100_000_000),
        ("count_max_pages", 1_000, 100_000),
        ("count_page_size", 1_000, 10_000),
        ("count_max_concurrent", 4, 10_000),
    ):
        if not 1 <= values.get(bound, usual) <= most:
            problems.append(f"{bound}: expected 1..{most}")
    if values.get("count_max_walked", 100_000) <= values.get("count_max_resources", 10_000):
        # The walk's limit must sit far above the caller's cap: padding a count with visible
        # matches up to the cap must not bring the walk's refusal within reach (security.md).
        problems.append("count_max_walked: expected more than count_max_resources")
    if not 0 < values.get("count_deadline_seconds", 20.0) <= 3600:
        problems.append("count_deadline_seconds: expected more than 0, at most 3600")
    for networks, default in (
        ("metrics_clients", DEFAULT_METRICS_CLIENTS),
        ("forwarded_allow_ips", ""),
    ):
        try:
            parse_networks(values.get(networks, default))
        except ValueError as exc:
            problems.append(f"{networks}: {exc}")
    token = values.get("metrics_token", "")
    printable = token.isascii() and token.isprintable() and " " not in token
    if token and (len(token) < MIN_TOKEN_LENGTH or not printable):
        problems.append(
            f"metrics_token: expected at least {MIN_TOKEN_LENGTH} printable ASCII characters"
            " without spaces"
        )
    problems.extend(_tracing_problems(values))
    try:
        by_kind = parse_retention(values.get("audit_retention_by_kind", ""))
    except ValueError as exc:
        problems.append(f"audit_retention_by_kind: {exc}")
    else:
        try:
            check_covers_accounting(
                RetentionRules(values.get("audit_retention_years", DEFAULT_YEARS), by_kind),
                lookback_years=values.get("accounting_lookback_years", DEFAULT_YEARS),
            )
        except (TypeError, ValueError) as exc:
            problems.append(f"audit_retention_years / audit_retention_by_kind: {exc}")
    for years in (
        "accounting_lookback_years",
        "access_report_lookback_years",
        "audit_retention_years",
    ):
        if years in values and not 1 <= values[years] <= 100:
            problems.append(f"{years}: expected 1..100 years")
    try:
        parse_exempt(values.get("accounting_exempt_purposes", ""))
    except ValueError as exc:
        problems.append(f"accounting_exempt_purposes: {exc}")
    try:
        zone = ZoneInfo(values.get("report_timezone", "UTC"))
        AfterHours.parse(values.get("report_after_hours", "19:00-07:00"), zone)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        problems.append(f"report_after_hours / report_timezone: {exc}")
    if values.get("recipient_directory_file"):  # refuse to start on a bad directory
        try:
            load_directory(Path(values["recipient_directory_file"]))
        except SettingsError as exc:
            problems.append(str(exc))
    try:
        parse_operations(
            values.get("operations", {}),
            replace_defaults=values.get("operations_replace_defaults", False),
        )
    except ValueError as exc:
        problems.extend(f"operations: {line}" for line in str(exc).splitlines())
    quorum, witnesses = values.get("witness_quorum", 0), values.get("witnesses", ())
    if not 0 <= quorum <= len(witnesses):
        problems.append(f"witness_quorum: expected 0..{len(witnesses)} (the witnesses configured)")
    if not 0 < values.get("witness_timeout_seconds", 10.0) <= 300:
        problems.append("witness_timeout_seconds: expected more than 0, at most 300")
    store = values.get("store", "sqlite:consentry.db")
    if not (store.startswith(("sqlite:", "postgresql://", "postgres://")) or store == "memory:"):
        problems.append("store: expected sqlite:PATH, postgresql://... or memory:")
    return problems


def _tracing_problems(values: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    endpoint = values.get("otlp_endpoint", "")
    parts = urlsplit(endpoint)
    if endpoint and (parts.scheme not in ("http", "https") or not parts.netloc):
        problems.append("otlp_endpoint: expected an absolute http(s) URL (.../v1/traces)")
    problems.extend(
        f"otlp_headers: {problem}" for problem in header_problems(values.get("otlp_headers", {}))
    )
    if not 0.0 <= values.get("trace_sample_ratio", 1.0) <= 1.0:
        problems.append("trace_sample_ratio: expected 0..1")
    return problems


def _codes(text: str) -> frozenset[str]:
    """Comma-separated codes, blanks dropped."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())
