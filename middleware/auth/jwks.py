"""The I/O edge of token verification: an issuer's JWK Set, fetched, cached and rotated.

A :class:`JwksCache` reads a JWK Set (RFC 7517 §5) from a file or an http(s) URL through an
injected ``httpx.AsyncClient`` and keeps the parsed :class:`~middleware.auth.keys.KeyTable`:

* the table is reloaded when older than ``ttl`` seconds;
* a ``kid`` not in the table triggers one reload, but reloads are at least
  ``refresh_interval`` seconds apart, however many tokens name unknown keys (an attacker cannot
  make us hammer the issuer); still unknown after that: refused;
* when a reload fails the previous table stays in use for up to ``max_stale`` seconds past its
  ``ttl``; with no usable table :class:`JwksUnavailable` is raised (the gateway answers 503:
  it is not the client's fault).

Concurrent callers share one reload (an ``asyncio.Lock``). httpx, OS and JSON errors are
translated here into :class:`JwksUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import httpx
from joserfc.jwk import Key

from middleware.auth.keys import InvalidJwks, KeyTable, parse_jwks
from middleware.logging import get_logger

__all__ = ["MAX_JWKS_BYTES", "JwksCache", "JwksUnavailable", "StaticJwks"]

#: Largest JWK Set document we read (a few dozen keys fit in a few KiB).
MAX_JWKS_BYTES: Final = 256 * 1024
_ACCEPT: Final = "application/jwk-set+json, application/json;q=0.9"


class JwksUnavailable(Exception):
    """No usable JWK Set: the source cannot be read and nothing fresh enough is cached."""


class StaticJwks:
    """A fixed key table (e.g. the development issuer's own keys); never reloads."""

    def __init__(self, document: object) -> None:
        self.table = parse_jwks(document)

    async def find(self, kid: str, alg: str) -> Key | None:
        """The key named ``kid`` that fits ``alg``, or None."""
        return self.table.find(kid, alg)


class JwksCache:
    """An issuer's keys from ``source`` (a :class:`~pathlib.Path`, or an http(s) URL string).

    ``clock`` is monotonic seconds. A URL source needs ``client``; the cache never creates
    or closes clients.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        client: httpx.AsyncClient | None = None,
        ttl: float = 300.0,
        refresh_interval: float = 30.0,
        max_stale: float = 3600.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = get_logger("consentry.auth")
        if isinstance(source, str):
            if not source.startswith(("https://", "http://")):
                raise ValueError("a JWKS URL must be http(s); give a file as a Path")
            if client is None:
                raise ValueError("a JWKS URL needs an httpx.AsyncClient")
            if source.startswith("http://"):
                self._log.warning("jwks fetched over plain http", reason="configured http URL")
        self._source = source
        self._client = client
        self._ttl = ttl
        self._refresh_interval = refresh_interval
        self._max_stale = max_stale
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._table: KeyTable | None = None
        self._loaded_at = 0.0
        self._attempted_at: float | None = None

    @property
    def table(self) -> KeyTable | None:
        """The table in use (None before the first successful load)."""
        return self._table

    async def find(self, kid: str, alg: str) -> Key | None:
        """The key named ``kid`` that fits ``alg``, reloading as the module docstring says;
        None when it is still unknown. Raises :class:`JwksUnavailable`."""
        if self._table is None or self._clock() - self._loaded_at >= self._ttl:
            await self.reload()
        key = self._usable().find(kid, alg)
        if key is None:
            # Rotation: the issuer may have published a new key since we last looked.
            await self.reload()
            key = self._usable().find(kid, alg)
        return key

    async def reload(self) -> bool:
        """Read the source again unless the last attempt is under ``refresh_interval`` old;
        True when a new table was installed. Failures are logged, not raised."""
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._refresh_interval:
                return False
            self._attempted_at = now
            try:
                table = parse_jwks(await self._read())
            except (JwksUnavailable, InvalidJwks) as exc:
                self._log.warning(
                    "jwks reload failed", error=str(exc), error_type=type(exc).__name__
                )
                return False
            if table.ignored:
                self._log.info("jwks keys ignored", reason="; ".join(table.ignored))
            self._table, self._loaded_at = table, now
            return True

    def _usable(self) -> KeyTable:
        if self._table is None:
            raise JwksUnavailable("the issuer's signing keys could not be loaded")
        if self._clock() - self._loaded_at > self._ttl + self._max_stale:
            raise JwksUnavailable("the issuer's signing keys are stale and cannot be reloaded")
        return self._table

    async def _read(self) -> object:
        if isinstance(self._source, Path):
            try:
                data = await asyncio.to_thread(self._source.read_bytes)
            except OSError as exc:
                raise JwksUnavailable(f"cannot read the JWKS file: {exc.strerror}") from exc
        else:
            data = await self._fetch(self._source)
        if len(data) > MAX_JWKS_BYTES:
            raise JwksUnavailable("the JWKS document is too large")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise JwksUnavailable("the JWKS document is not JSON") from exc

    async def _fetch(self, url: str) -> bytes:
        assert self._client is not None  # checked in __init__
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._client.stream(
                "GET", url, headers={"accept": _ACCEPT}, timeout=self._timeout
            ) as response:
                if response.status_code != httpx.codes.OK:
                    raise JwksUnavailable(f"the JWKS URL answered {response.status_code}")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_JWKS_BYTES:
                        raise JwksUnavailable("the JWKS document is too large")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"cannot fetch the JWKS: {type(exc).__name__}") from exc
        return b"".join(chunks)
