"""The HTTP client: one aiohttp.ClientSession, explicit timeouts, no secrets in errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from harvester import USER_AGENT
from harvester.config import ApiConfig
from harvester.log import redact

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """No usable response: connection reset, timeout, protocol error (retryable)."""


class ConnectError(TransportError):
    """The host could not be reached at all (DNS failure, connection refused)."""


class ApiClient:
    def __init__(self, api: ApiConfig, concurrency: int) -> None:
        self._base = api.url.rstrip("/")
        self._key_query = urlencode({"key": api.key}) if api.key else ""
        self._timeout = aiohttp.ClientTimeout(total=api.total_timeout, sock_connect=api.connect_timeout, sock_read=api.read_timeout)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            connector=aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300),
            # We classify every status ourselves (docs/architecture.md, HTTP outcomes), so no raise_for_status.
        )
        # aiohttp silently sends a GET again when a kept-alive connection turns out to be
        # closed. That second request would bypass the rate limiter, and its outcome the
        # retry policy: every attempt must be ours. There is no public switch (aiohttp
        # 3.9-3.14); tests/test_client.py fails if this attribute stops meaning that.
        self._session._retry_connection = False
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Response:
        """GET base+path (path and any query in it already encoded), with `params` and the key; raise TransportError when no response arrives."""
        assert self._session is not None, "use ApiClient as an async context manager"
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        if self._key_query:
            path += ("&" if "?" in path else "?") + self._key_query
        # Built as text and taken as encoded: yarl's update_query was a tenth of the request path's time.
        url = URL(self._base + path, encoded=True)
        try:
            async with self._session.get(url, allow_redirects=False) as r:
                return Response(r.status, r.headers, await r.read())
        except TimeoutError:
            raise TransportError("timed out") from None
        except aiohttp.ClientConnectorError as e:
            # str(e) names host and port only, but redact anyway: it's cheap.
            raise ConnectError(redact(f"cannot connect to {self._base}: {e.os_error or e}")) from None
        except aiohttp.ClientError as e:
            raise TransportError(redact(f"{type(e).__name__}: {e}")) from None
