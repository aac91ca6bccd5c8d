"""The compliance toolkit's benchmarks, one after the other, with one command:

    python -m bench.compliance [--quick]

Runs, each in its own process so one's memory and caches do not colour the next:

- ``bench.audit_hot``: the audit's CPU on an enforced read (facts, sealing, index row, entry);
- ``bench.audit_index``: rebuilding the audit index and one patient's six-year accounting read
  among ``--rows`` index rows on SQLite (1,000,000 by default; the issue's goal is stated for
  10,000,000, which ``python -m bench.audit_index --rows 10000000`` measures);
- ``bench.report_pdf``: a 1,000-line accounting PDF and a 1,000-row access report PDF;
- ``bench.audit_export``: export, verify-export, reindex and bulk AuditEvent export rates.

Each prints its own table with its goal; this module only sequences them and stops at the
first that fails. ``--quick`` runs small sizes (a smoke run, not figures to quote).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

__all__ = ["main"]


def _runs(quick: bool) -> list[list[str]]:
    """The benchmark commands, in order (module and arguments)."""
    if quick:
        return [
            ["bench.audit_hot", "--reads", "2000", "--repeat", "2"],
            ["bench.audit_index", "--rows", "20000", "--backends", "sqlite"],
            ["bench.report_pdf", "--rows", "200", "--repeat", "1"],
            ["bench.audit_export", "--entries", "2000"],
        ]
    return [
        ["bench.audit_hot"],
        ["bench.audit_index", "--rows", "1000000", "--backends", "sqlite"],
        ["bench.report_pdf"],
        ["bench.audit_export", "--entries", "20000"],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    for module, *rest in _runs(args.quick):
        print(f"== python -m {module} {' '.join(rest)}".rstrip(), flush=True)
        done = subprocess.run([sys.executable, "-m", module, *rest], check=False)
        if done.returncode != 0:
            print(f"{module} failed with exit status {done.returncode}", file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
