"""One device cannot starve the others: connections per client address are capped.

With a 256-descriptor limit, one client's 124 idle tunnels locked every other
client out. Each client address may hold at most `tlsgate_max_client_connections`
open connections; the next one is closed at once (mitmproxy's `client.error`),
and the refusal is logged at most once a minute per address.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time
import weakref
from collections import Counter

from mitmproxy import connection, ctx, exceptions

logger = logging.getLogger("tlsgate.limits")

DEFAULT_MAX_CLIENT_CONNECTIONS = 512

# Not globally routable by Python's `is_global` (so mitmproxy's `block_global` lets them in), yet a device lab
# never has clients there: documentation ranges appear only in spoofed or misconfigured traffic, and Teredo and
# 6to4 addresses are tunnels from anywhere on the internet. Refused with the public ones; CGNAT (100.64.0.0/10)
# stays allowed: carrier and overlay VPNs (Tailscale) put real lab devices there.
NOT_LAB_CLIENTS = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "2001::/32", "2002::/16")
)


def outside_the_lab(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in NOT_LAB_CLIENTS if net.version == ip.version)


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
        self._said: dict[str, float] = {}

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
        if not client.peername:
            return
        address = client.peername[0]
        if getattr(ctx.options, "block_global", True) and outside_the_lab(address):
            client.error = f"tlsgate: client {address} is in a documentation or tunnel range (see --allow-public-clients)"
            logger.warning(client.error)
            return
        cap = ctx.options.tlsgate_max_client_connections
        if cap and self.open[address] >= cap:
            client.error = f"tlsgate: {address} already holds {cap} connections (tlsgate_max_client_connections)"
            now = time.monotonic()
            if now - self._said.get(address, -60.0) >= 60:
                self._said[address] = now
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
