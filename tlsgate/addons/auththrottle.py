"""Slows repeated proxy-authentication failures per client address (200 wrong passwords took 0.4 s).

Runs after mitmproxy's `proxyauth` add-on has answered 407: each failure
beyond the first two from an address within a minute delays that answer,
doubling up to 5 s, so guessing a password costs minutes instead of
milliseconds. A success clears the address's count. Only the failing client
waits; the delay is an asyncio sleep, not a blocked event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http

from tlsgate.tls.recent import Recent

WINDOW = 60.0
FREE_FAILURES = 2  # a browser's first, credential-less request is answered 407 as a matter of course
MAX_DELAY = 5.0
MAX_ADDRESSES = 4096

logger = logging.getLogger("tlsgate.auth")


def delay_for(failures: int) -> float:
    return 0.0 if failures <= FREE_FAILURES else min(MAX_DELAY, 0.25 * 2 ** (failures - FREE_FAILURES - 1))


class AuthThrottle:
    def __init__(self) -> None:
        self._failures: Recent[str, tuple[int, float]] = Recent(MAX_ADDRESSES)

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        await self._after_auth(flow)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        await self._after_auth(flow)

    async def _after_auth(self, flow: http.HTTPFlow) -> None:
        if not flow.client_conn.peername:
            return
        address = flow.client_conn.peername[0]
        if flow.response is None or flow.response.status_code != 407:
            if flow.metadata.get("proxyauth"):  # mitmproxy's proxyauth accepted the credentials
                self._failures.pop(address)
            return
        now = time.monotonic()
        count, since = self._failures.get(address) or (0, now)
        if now - since > WINDOW:
            count, since = 0, now
        count += 1
        self._failures.put(address, (count, since))
        delay = delay_for(count)
        if count == FREE_FAILURES + 1:
            logger.warning(f"tlsgate: {count} failed proxy authentications from {address} within a minute; slowing its answers")
        if delay:
            await asyncio.sleep(delay)
