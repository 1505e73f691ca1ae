"""What tlsgate knows about one client connection, in one object every add-on shares.

Keyed by mitmproxy's `Client` in a weak dictionary, the way mitmproxy's own
`proxyauth` keeps per-connection state, so nothing outlives the connection.
The host the client asked for and the policy match for it are settled once:
both sides of one connection (the app's hello and the upstream handshake) are
judged under one policy even when a reload lands in between.
"""

from __future__ import annotations

import ipaddress
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mitmproxy import connection, dns, http
from mitmproxy.proxy import mode_specs

from tlsgate.checks.model import Issue
from tlsgate.checks.probes import ProbeRun
from tlsgate.checks.registry import Found, HandshakeFacts, Phase, UpstreamJudge
from tlsgate.policy import Location, Match, Policy
from tlsgate.policy.hosts import RequestName, host_only, is_address, name_request
from tlsgate.sinks import redact
from tlsgate.sinks.findings import Finding
from tlsgate.tls.clienthello import ClientHello
from tlsgate.tls.probes import ProbeCertificate
from tlsgate.tls.recent import Recent
from tlsgate.tls.transport import TRANSPORT_QUIC, TRANSPORT_TCP, transport_of


class PolicySource(Protocol):
    """What the shared state needs of the add-on that holds the policy (`tlsgate.addons.policy.PolicyStore`):
    the policy in force, and word of each reload. A protocol, so that state depends on no other add-on."""

    @property
    def policy(self) -> Policy | None: ...

    def subscribe(self, listener: Callable[[str, Policy | None], None]) -> None: ...


@dataclass(eq=False)
class ServerSide:
    """One upstream TLS connection of this client: facts until its handshake ends, then the one verdict on it."""

    match: Match
    facts: HandshakeFacts
    found: list[Found] = field(default_factory=list)  # what the judges of the phases so far found
    phases: set[Phase] = field(default_factory=set)  # the phases judged so far (`tlsgate.checks.registry`)
    deferred: list[UpstreamJudge] = field(default_factory=list)  # judges waiting for the established connection
    done: bool = False  # the handshake ended (established or failed) and was recorded
    blocked: Finding | None = None  # why requests on this server connection are refused
    blocked_in: Phase | None = None  # when that verdict was taken

    @property
    def issues(self) -> list[Issue]:
        return [found.issue for found in self.found]


@dataclass(eq=False)
class Audit:
    """The client audit's part of a connection's state (`tlsgate.addons.client_audit`); `Conformance` reads
    its hello and port, so it is shared state, typed, rather than one add-on's private record."""

    hello: ClientHello
    port: int | None
    pending: list[Issue] = field(default_factory=list)  # hello findings, recorded once the User-Agent is known
    refuse: bool = False
    floor: str | None = None  # client-side TLS floor, when it differs from mitmproxy's
    probe: ProbeCertificate | None = None
    run: ProbeRun | None = None
    probes_from: Location | None = None  # the `devices:` entry whose own probe list chose this connection's probe
    accepted: Finding | None = None  # the critical finding, once the client used a probe connection
    user_agent: str | None = None
    quic: bool = False  # a QUIC connection: the hello came in an Initial packet, the handshake is aioquic's
    hello_at: float = field(default_factory=time.monotonic)
    waited: float | None = None  # seconds the app's handshake waited for tlsgate's upstream handshake

    def evidence(self) -> dict[str, Any]:
        return {
            "sni": self.hello.sni,
            "best_offered_version": self.hello.best_version_word,
            **self.hello.fingerprint(self.quic),
            "user_agent": self.user_agent,
            "transport": TRANSPORT_QUIC if self.quic else TRANSPORT_TCP,
        }


@dataclass(eq=False)
class ConnState:
    policy: Policy
    client: connection.Client
    host: str | None = None  # the host the client asked for, once known
    match: Match | None = None  # the one policy match for `host`
    connect_host: str | None = None  # the CONNECT authority's host, a fallback for the asked-for host
    device: str | None = None
    servers: dict[str, ServerSide] = field(default_factory=dict)  # server connection id -> state
    audit: Audit | None = None  # the client audit's record, once the app's hello was judged
    quic_refused: bool = False  # a QUIC connection refused under `quic: refuse` (tlsgate.addons.quic)
    names: DnsNames | None = None  # what tlsgate's own DNS told this client (WireGuard and DNS modes)

    @property
    def who(self) -> str | None:
        """The device, as memories across connections key it: its `devices:` name, else its address."""
        if self.device:
            return self.device
        return self.client.peername[0] if self.client.peername else None

    def name_of(self, host: str) -> str:
        """The asked-for name for `host`: itself, unless it is a bare address tlsgate's own DNS gave this client for a name.

        Callers pass the best name they have (SNI, else the Host header, else the
        CONNECT authority, else the destination address); only the last can be
        an address. In transparent and WireGuard modes that address is all a
        connection without SNI or Host header carries, and a rule for
        `api.example.com` must still apply to it.
        """
        name = host_only(host)
        if self.names is None or not self.client.peername or not is_address(name):
            return name
        return self.names.name_for(self.client.peername[0], name) or name

    def settle(self, host: str) -> Match:
        """Fix the asked-for host and its match; a later, different guess does not move it."""
        if self.match is None:
            self.host = self.name_of(host)
            self.match = self.policy.match(self.host)
        return self.match

    def match_for(self, host: str, current: Policy | None) -> Match:
        """The match for a host this connection talks to: the settled one for its own host under an unchanged policy.

        A plain-HTTP proxy connection may send requests for many hosts, and a
        request after a reload is judged under the new policy.
        """
        policy = current or self.policy
        name = self.name_of(host)
        if self.match is not None and name == self.host and policy is self.policy:
            return self.match
        return policy.match(name)


class Connections:
    """The shared table; `of(client)` creates a connection's state on first use."""

    def __init__(self, store: PolicySource) -> None:
        self.store = store
        self.names = DnsNames()
        self._states: weakref.WeakKeyDictionary[connection.Client, ConnState] = weakref.WeakKeyDictionary()

    def of(self, client: connection.Client) -> ConnState | None:
        """None only before any policy is loaded."""
        state = self._states.get(client)
        if state is None:
            policy = self.store.policy
            if policy is None:
                return None
            device = policy.device_for(client.peername[0]) if client.peername else None
            device = device or peer_device(client, policy)  # WireGuard: by the peer's IPv4 entry, else its name
            state = ConnState(policy, client, device=device, names=self.names)
            self._states[client] = state
        return state

    def peek(self, client: connection.Client) -> ConnState | None:
        return self._states.get(client)

    def dns_response(self, flow: dns.DNSFlow) -> None:
        """Remember which name each address answered to tlsgate's own DNS was for (WireGuard's 10.0.0.53, `--mode dns`)."""
        if flow.response is None or flow.request.question is None or not flow.client_conn.peername:
            return
        name = flow.request.question.name
        for answer in flow.response.answers:
            if answer.type in (dns.types.A, dns.types.AAAA):
                try:
                    address = str(answer.ipv4_address if answer.type == dns.types.A else answer.ipv6_address)
                except (ValueError, TypeError):  # a malformed answer says nothing about names
                    continue
                self.names.remember(flow.client_conn.peername[0], address, name)

    def client_disconnected(self, client: connection.Client) -> None:
        """Loaded after every add-on that reads the state, so this runs last for each connection."""
        self._states.pop(client, None)

    def __len__(self) -> int:
        return len(self._states)


# Modes whose targets arrive as names tlsgate looks up (and so can redirect with --resolve, and must check after
# resolving); in the others the device resolved the name and connects to an address.
NAMED_TARGETS = (mode_specs.RegularMode, mode_specs.Socks5Mode, mode_specs.UpstreamMode, mode_specs.ReverseMode)

# Tunnel address (IPv4 and IPv6) -> (peer name, the peer's IPv4 address), for the peers the running WireGuard
# server accepts: filled by `tlsgate.addons.wireguard` when it starts, read here to name a connection's device.
TUNNEL_DEVICES: dict[str, tuple[str, str]] = {}


def peer_device(client: connection.Client, policy: Policy) -> str | None:
    """The device name of a WireGuard connection, by its tunnel source address.

    A `devices:` entry for the peer's IPv4 address names its IPv6 traffic too
    (one device, two address families); with no entry, the peer's own name.
    """
    if not isinstance(client.proxy_mode, mode_specs.WireGuardMode) or not client.peername:
        return None
    try:
        address = str(ipaddress.ip_address(client.peername[0]))
    except ValueError:
        return None
    found = TUNNEL_DEVICES.get(address)
    if found is None:
        return None
    name, ipv4 = found
    return policy.device_for(ipv4) or name


class DnsNames:
    """(client address, answered address) -> the name asked for; bounded, least recently answered forgotten first.

    Keyed by client too, because two devices may be told different things for
    one address (CDNs), and one's answer must never name the other's traffic.
    """

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self._names: Recent[tuple[str, str], str] = Recent(limit)

    def remember(self, client: str, address: str, name: str) -> None:
        self._names.put((client, host_only(address)), host_only(name))

    def name_for(self, client: str, address: str) -> str | None:
        return self._names.peek((client, host_only(address)))

    def __len__(self) -> int:
        return len(self._names)


# Each request's name, with what it was read from: add-ons ask in several hooks, and an add-on between them
# (RequestHygiene, a user's map_remote) may rewrite the target or the Host header, which the key notices.
_NAMES: weakref.WeakKeyDictionary[http.Request, tuple[tuple[object, ...], RequestName]] = weakref.WeakKeyDictionary()


def request_name(request: http.Request) -> RequestName:
    """The request's host and URL as the app asked for them (`tlsgate.policy.hosts.name_request`), once per request."""
    data = request.data
    read = (data.method, data.host, data.port, data.scheme, data.authority, data.path, data.headers.fields)
    known = _NAMES.get(request)
    if known is not None and known[0] == read:
        return known[1]
    name = name_request(request.scheme, request.host, request.port, request.path, request.url, request.host_header)
    _NAMES[request] = (read, name)
    return name


def request_url(request: http.Request) -> str:
    """The request's URL as the app asked for it: in transparent modes mitmproxy's has the destination address."""
    return request_name(request).url


def request_host(request: http.Request) -> str:
    """The name the app asked for; `ConnState.name_of` turns a remaining bare address into its DNS name."""
    return request_name(request).host


def credentials_in(request: http.Request, with_body: bool = True) -> list[redact.Credential]:
    """The credentials a request carries (`tlsgate.sinks.redact.request_credentials`), read off the flow."""
    body = request.raw_content if with_body else None
    return redact.request_credentials(
        request.headers.items(multi=True), request.url, request.headers.get("content-type", ""), body
    )


def is_quic(conn: connection.Connection) -> bool:
    """mitmproxy marks a QUIC connection (client or server side) as UDP with TLS (`transport_of` says so)."""
    return transport_of(conn) == TRANSPORT_QUIC


def server_host(server: connection.Server) -> str:
    """The upstream's name as the client gave it: SNI, else the address it asked to reach."""
    return server.sni or (server.address[0] if server.address else "")
