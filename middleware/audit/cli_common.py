"""What the ``consentry audit`` commands share: times, the store, the key, paging, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from middleware.audit import paging
from middleware.audit.row import AuditQuery, AuditRow
from middleware.ledger.errors import LedgerError
from middleware.ledger.keyfile import LedgerKey, parse_ledger_key
from middleware.ledger.leaf import micros
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_open import open_log_store

__all__ = [
    "PAGE",
    "Usage",
    "all_rows",
    "now_us",
    "opened",
    "parse_time",
    "print_json",
    "private_file",
    "read_key",
    "write_output",
]

#: Index rows read per query page.
PAGE = 5000
_DAY = timedelta(days=1)


class Usage(Exception):
    """A problem that stops a command before it could do anything (exit status 2)."""


def parse_time(text: str | None, *, end: bool = False) -> int | None:
    """``2026-01-31`` (the day's first microsecond, or with ``end`` its last) or an RFC 3339
    time with an offset, as microseconds since the epoch; None stays None."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return micros(day + _DAY) - 1 if end else micros(day)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Usage(f"{text!r} is not a date (2026-01-31) or an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise Usage(f"{text!r} names no time zone (add Z or an offset)")
    return micros(moment)


def now_us() -> int:
    return micros(datetime.now(UTC))


@asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[LogStore]:
    """The log store ``--store``/``--schema`` name, closed afterwards."""
    store = await open_log_store(args.store, schema=args.schema)
    try:
        yield store
    finally:
        await store.close()


async def all_rows(store: LogStore, query: AuditQuery) -> list[AuditRow]:
    """Every row ``query`` matches, page by page (keyset), in its order."""
    return await paging.all_rows(store, replace(query, limit=PAGE, after=None))


def read_key(path: Path) -> LedgerKey:
    try:
        return parse_ledger_key(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise Usage(f"cannot read {path}: {exc}") from exc
    except LedgerError as exc:
        raise Usage(f"{path} does not hold a ledger key: {exc}") from exc


def write_output(args: argparse.Namespace, out: TextIO, content: str | bytes) -> None:
    """``content`` to ``--out`` (atomically replaced) or, text only, to ``out``."""
    path: Path | None = args.out
    if path is None:
        if isinstance(content, bytes):
            raise Usage("this format is binary: name a file with --out")
        out.write(content)
        return
    temporary = private_file(path)
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    with temporary.open("wb") as sink:
        sink.write(data)
    temporary.replace(path)


def private_file(path: Path) -> Path:
    """A new, empty ``<path>.tmp`` readable by its owner only (reports and exports hold PHI),
    to be filled and then moved onto ``path``."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return temporary


def print_json(out: TextIO, body: dict[str, Any]) -> None:
    out.write(json.dumps(body, indent=2) + "\n")


def warn(message: str) -> None:
    print(message, file=sys.stderr)
