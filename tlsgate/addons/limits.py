"""One device cannot starve the others: connections per client address are capped.

With a 256-descriptor limit, one client's 124 idle tunnels locked every other
client out. Each client address may hold at most `tlsgate_max_client_connections`
open connections; the next one is closed at once (mitmproxy's `client.error`),
and the refusal is logged at most once a minute per address.
"""

from __future__ import annotations

import logging
import resource
import time
import weakref
from collections import Counter

from mitmproxy import connection, ctx, exceptions

from tlsgate.tls.recent import Recent

logger = logging.getLogger("tlsgate.limits")

DEFAULT_MAX_CLIENT_CONNECTIONS = 512
MAX_SAID = 4096  # addresses whose last refusal log time is remembered; a forgotten one may be logged again sooner


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one (where the OS allows); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


class ClientLimits:
    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self._counted: weakref.WeakSet[connection.Client] = weakref.WeakSet()
        self._said: Recent[str, float] = Recent(MAX_SAID)  # address -> when its refusal was last logged

    def load(self, loader) -> None:
        loader.add_option(
            "tlsgate_max_client_connections",
            int,
            DEFAULT_MAX_CLIENT_CONNECTIONS,
            "Open connections one client address may hold (0: no cap). Devices behind one NAT share an address.",
        )

    def configure(self, updated: set[str]) -> None:
        if "tlsgate_max_client_connections" in updated and ctx.options.tlsgate_max_client_connections < 0:
            raise exceptions.OptionsError("tlsgate_max_client_connections must be 0 (no cap) or more")

    def running(self) -> None:
        before, after = raise_fd_limit()
        if after > before:
            logger.info(f"tlsgate: open-files limit raised from {before} to {after}")

    def client_connected(self, client: connection.Client) -> None:
        if not client.peername or client.error:  # refused already (ClientAccess): never counted
            return
        address = client.peername[0]
        cap = ctx.options.tlsgate_max_client_connections
        if cap and self.open[address] >= cap:
            client.error = f"tlsgate: {address} already holds {cap} connections (tlsgate_max_client_connections)"
            now = time.monotonic()
            last = self._said.peek(address)
            if last is None or now - last >= 60:
                self._said.put(address, now)
                logger.warning(f"{client.error}; refusing more until some close")
            return
        self.open[address] += 1
        self._counted.add(client)

    def client_disconnected(self, client: connection.Client) -> None:
        if not client.peername or client not in self._counted:
            return
        self._counted.discard(client)
        address = client.peername[0]
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
