"""What tlsgate knows about one client connection, in one object every add-on shares.

Keyed by mitmproxy's `Client` in a weak dictionary, the way mitmproxy's own
`proxyauth` keeps per-connection state, so nothing outlives the connection.
The host the client asked for and the policy match for it are settled once:
both sides of one connection (the app's hello and the upstream handshake) are
judged under one policy even when a reload lands in between.
"""

from __future__ import annotations

import ipaddress
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import connection, http

from proxy.policy import Match, Policy
from proxy.policy.hosts import host_only, split_host_port

if TYPE_CHECKING:
    from proxy.addons.policy import PolicyStore
    from proxy.checks.upstream import HandshakeFacts
    from proxy.sinks.findings import Finding


@dataclass(eq=False)
class ServerSide:
    """One upstream TLS connection of this client: facts until its handshake ends, then the verdict."""

    match: Match
    facts: HandshakeFacts
    issues: list | None = None  # set once the leaf has been judged
    done: bool = False  # the handshake ended (established or failed) and was recorded
    blocked: Finding | None = None  # why requests on this server connection are refused


@dataclass(eq=False)
class ConnState:
    policy: Policy
    client: connection.Client
    host: str | None = None  # the host the client asked for, once known
    match: Match | None = None  # the one policy match for `host`
    connect_host: str | None = None  # the CONNECT authority's host, a fallback for the asked-for host
    device: str | None = None
    servers: dict[str, ServerSide] = field(default_factory=dict)  # server connection id -> state
    audit: object | None = None  # the client audit's own record (proxy.addons.client_audit.Audit)

    def settle(self, host: str) -> Match:
        """Fix the asked-for host and its match; a later, different guess does not move it."""
        if self.match is None:
            self.host = host_only(host)
            self.match = self.policy.match(self.host)
        return self.match

    def match_for(self, host: str, current: Policy | None) -> Match:
        """The match for a host this connection talks to: the settled one for its own host under an unchanged policy.

        A plain-HTTP proxy connection may send requests for many hosts, and a
        request after a reload is judged under the new policy.
        """
        policy = current or self.policy
        name = host_only(host)
        if self.match is not None and name == self.host and policy is self.policy:
            return self.match
        return policy.match(name)


class Connections:
    """The shared table; `of(client)` creates a connection's state on first use."""

    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        self._states: weakref.WeakKeyDictionary[connection.Client, ConnState] = weakref.WeakKeyDictionary()

    def of(self, client: connection.Client) -> ConnState | None:
        """None only before any policy is loaded."""
        state = self._states.get(client)
        if state is None:
            policy = self.store.policy
            if policy is None:
                return None
            device = policy.device_for(client.peername[0]) if client.peername else None
            state = ConnState(policy, client, device=device)
            self._states[client] = state
        return state

    def peek(self, client: connection.Client) -> ConnState | None:
        return self._states.get(client)

    def client_disconnected(self, client: connection.Client) -> None:
        """Loaded after every add-on that reads the state, so this runs last for each connection."""
        self._states.pop(client, None)

    def __len__(self) -> int:
        return len(self._states)


def request_host(request: http.Request) -> str:
    """The name the app asked for: in transparent mode the target is an IP and the Host header has the name."""
    host = request.host
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    header = request.host_header
    return split_host_port(header)[0] if header else host


def server_host(server: connection.Server) -> str:
    """The upstream's name as the client gave it: SNI, else the address it asked to reach."""
    return server.sni or (server.address[0] if server.address else "")
