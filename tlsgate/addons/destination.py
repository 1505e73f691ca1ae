"""Refuses connections that would reach the proxy host itself or its link (see tlsgate.tls.addresses).

Checked where every mode's server connection is opened (`server_connect`), so
regular, socks5, transparent, WireGuard and QUIC connections are all covered;
a CONNECT is answered earlier with the block page. A name is resolved here and
the connection pinned to the address that was checked, so a second lookup (DNS
rebinding) cannot point it at 127.0.0.1 after the check. Addresses chosen by
the operator with `--resolve`, and connections through an upstream proxy, are
the operator's own choice and pass.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from mitmproxy import connection, ctx, http
from mitmproxy.proxy import mode_specs, server_hooks

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.state import NAMED_TARGETS, Connections, server_host
from tlsgate.addons.verdicts import block_at_headers, fail_closed, record
from tlsgate.checks.destination import judge_destination
from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.policy.hosts import Redirects, host_only, is_address
from tlsgate.sinks.findings import Finding
from tlsgate.tls.addresses import local_kind

logger = logging.getLogger("tlsgate.destination")


async def addresses_of(host: str, port: int) -> list[str]:
    """The addresses a connection to `host` would use, in the resolver's order; [] when it does not resolve."""
    if is_address(host):
        return [host.strip("[]")]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return []  # mitmproxy's own connect fails the same way and says so
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def transparent_ports() -> frozenset[int]:
    """The ports tlsgate's transparent listeners are bound to (with `--listen-port 0`, the one the kernel chose)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    ports: set[int] = set()
    for server in getattr(proxyserver, "servers", []):
        if isinstance(server.mode, mode_specs.TransparentMode):
            ports.update(address[1] for address in server.listen_addrs)
    return frozenset(ports)


def is_own_listener(client: connection.Client, port: int, listener_ports: frozenset[int]) -> bool:
    """A transparent connection to one of the proxy host's own addresses on a transparent listener's port: not a
    server the gateway redirected, but tlsgate itself, which a device with a proxy setting sends to.

    mitmproxy sets a transparent client's `sockname` to the original destination, so the socket it arrived on
    says nothing; the listeners' ports do. A redirected connection to another service on the gateway (another
    port) is an ordinary local destination, which `local_destinations: allow` may let through.
    """
    return isinstance(client.proxy_mode, mode_specs.TransparentMode) and port in listener_ports


class DestinationGuard:
    def __init__(self, connections: Connections, sink: FindingsSink, redirects: Redirects) -> None:
        self.connections = connections
        self.sink = sink
        self.redirects = redirects  # the operator's --resolve choices (filled by the `Resolve` add-on)

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT to the proxy host gets the block page (403) rather than mitmproxy's 502."""
        if flow.response is None and flow.live:
            await self._refuse_early(flow)

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A proxy request (`GET http://127.0.0.1/`) gets the block page too, before its body is read."""
        if flow.response is not None or not flow.live or flow.request.method == "CONNECT":
            return
        if flow.server_conn.timestamp_start is not None:
            return  # already connected, and checked when it was
        # Only what needs no DNS is judged here: resolving every proxied name before the other checks ran made a
        # blocked plain-HTTP request cost a lookup (and tell the resolver the name), and slow lookups for many
        # distinct names filled the resolver's threads until every client stalled. A name is judged when
        # tlsgate connects for it (`server_connect`), which only a request that is let through does.
        name = host_only(flow.request.host).lower()
        if is_address(name) or name == "localhost" or name.endswith(".localhost"):
            await self._refuse_early(flow)

    async def _refuse_early(self, flow: http.HTTPFlow) -> None:
        host, port = flow.request.host, flow.request.port
        if self.redirects.mapped(host_only(host), port) is not None:
            return  # the operator pointed this name here with --resolve
        finding, _ = await self._judge(flow.client_conn, host, port)
        if finding is not None:
            block_at_headers(flow, finding)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.address is None or server.via is not None or server.error:
            return
        host, port = server.address[0], server.address[1]
        if server.sni and self.redirects.mapped(host_only(server.sni), port) == host:
            return  # the operator pointed this name here with --resolve
        finding, pinned = await self._judge(data.client, host, port, server)
        if finding is not None:
            server.error = f"tlsgate refused: {finding.detail} (rule {finding.rule}); {finding.remedy}"
        elif pinned is not None and pinned != host:
            if server.sni is None:  # certificate checks keep using the name, as with --resolve
                server.sni = host
            server.address = (pinned, port)

    async def _judge(
        self, client: connection.Client, host: str, port: int, server: connection.Server | None = None
    ) -> tuple[Finding | None, str | None]:
        """(the blocking finding, or None and the checked address to connect to)."""
        state = self.connections.of(client)
        if state is None:
            return None, None
        name = server_host(server) if server is not None else host
        match = state.match_for(name, self.connections.store.policy)
        try:
            addresses = await addresses_of(host_only(host), port)
            resolvable = isinstance(client.proxy_mode, NAMED_TARGETS)
            for address in addresses:
                kind = local_kind(address)
                own = kind is not None and is_own_listener(client, port, transparent_ports())
                issue = judge_destination(kind, address, port, match, resolvable=resolvable, own_listener=own)
                if issue is not None:
                    return record(self.sink, state, client, issue, match, port), None
            return None, addresses[0] if addresses else None
        except Exception:  # fail closed: a destination tlsgate could not check is not connected to
            logger.exception("tlsgate: could not check a destination; refusing the connection")
            detail = "tlsgate could not check this destination"
            issue = Issue(Check.DESTINATION, "check_failed", Effect.ALWAYS, Severity.HIGH, detail)
            return record(self.sink, state, client, issue, match, port), None
