"""The HTTP client against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from harvester.client import ApiClient, TransportError
from harvester.config import ApiConfig


def test_a_get_is_never_sent_again_behind_the_limiter_after_a_disconnect() -> None:
    """aiohttp retries a GET once, silently, when a kept-alive connection turns out closed: every
    attempt must go through our limiter and retry policy, so that retry is off."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if len(seen) == 2:
            assert request.transport is not None
            request.transport.abort()  # the server drops the reused connection without an answer
        return web.json_response({"ok": True})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port: int = runner.addresses[0][1]  # (host, port) of the site just started
        try:
            async with ApiClient(ApiConfig(url=f"http://127.0.0.1:{port}/v1", key="k"), 1) as client:
                assert (await client.get("/a")).status == 200  # opens the connection, kept alive
                with pytest.raises(TransportError):
                    await client.get("/b")
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert seen == ["/v1/a", "/v1/b"]  # /v1/b once: no silent second attempt
