"""The verdict of ``verify-export`` (:mod:`middleware.audit.verify_export`): the findings,
each a stable code with the file line and the ledger index (at most :data:`MAX_FINDINGS`
kept, the rest counted), and the counts and scope of what was checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_FINDINGS", "ExportFinding", "ExportReport"]

#: Findings kept in a report (more are counted): one dropped line can break every later link.
MAX_FINDINGS = 1000


@dataclass(frozen=True, slots=True)
class ExportFinding:
    """One thing that does not verify: a stable ``code`` (docs/audit.md lists them), the
    file ``line`` (1-based; None for the file as a whole), the ledger ``index``, a message."""

    code: str
    message: str
    line: int | None = None
    index: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        if self.index is not None:
            out["index"] = self.index
        return out


@dataclass
class ExportReport:
    """The verdict: ``ok`` when nothing was found; counts of lines and rows checked."""

    kind: str = "export"
    report: str | None = None
    size: int | None = None
    lines: int = 0
    rows: int = 0
    shredded: int = 0
    findings: list[ExportFinding] = field(default_factory=list)
    omitted: int = 0
    #: What the file claims and was checked against: patient, agent, since, until, size,
    #: chain (hex), tail (``after``, ``end-of-log``, ``unproven``, None without a chain).
    scope: dict[str, Any] = field(default_factory=dict)
    #: The inclusion rules applied (an accounting's exemption rules), None: none or given.
    rules: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.findings and not self.omitted

    def add(self, code: str, message: str, line: int | None, index: int | None = None) -> None:
        if len(self.findings) >= MAX_FINDINGS:
            self.omitted += 1
        else:
            self.findings.append(ExportFinding(code, message, line, index))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "kind": self.kind,
            "report": self.report,
            "size": self.size,
            "lines": self.lines,
            "rows": self.rows,
            "shredded": self.shredded,
            "findings": [f.to_json() for f in self.findings],
            "findings_omitted": self.omitted,
            "scope": self.scope,
            "rules": self.rules,
        }
