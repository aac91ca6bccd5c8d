"""The compliance dashboard's pages (``/compliance/...``): audit search, charts, reports,
ledger status and break-the-glass review, over the audit API (docs/web.md)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from middleware.web.deps import WebDeps

__all__ = ["routes"]


def routes(deps: WebDeps) -> list[BaseRoute]:
    """The dashboard's routes (its home is ``middleware.web.home``'s until it has its own)."""
    del deps
    return []
