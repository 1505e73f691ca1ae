"""Holds live traffic to what the app declares (`app:` rules) and runs the pinning assertion (`app.must_pin`).

The server against the app's pins, declared minimum version and forward
secrecy is an upstream judge of the established phase
(`tlsgate.checks.conformance.app_server_judge`, run by `UpstreamTls`); its
blocking verdict is the server connection's one verdict (`ServerSide.blocked`),
and this add-on refuses that connection's requests at their headers, after the
pinning assertion has recorded what the app sent.

Reads the facts the other add-ons leave on the shared `ConnState` (the client
audit's ClientHello) and adds its own from the client side of each
connection, in mitmproxy's order:

- `tls_clienthello` (after `ClientAudit`): the app's best offered version
  against its declared minimum.
- `tls_established_client` / `tls_failed_client` / `requestheaders` /
  `client_disconnected`: what the app did with tlsgate's normal certificate
  (probe connections are the client audit's): sent data (accepted), or
  refused it during or right after the handshake. On a `must_pin` host an
  acceptance is `not_pinned` (403 in enforce mode); a refusal is judged
  against what the same device did for other hosts.
- plain `http://` requests: `cleartext_forbidden` where the app forbids it.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import connection, http, tcp, tls
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.state import Audit, Connections, ConnState, request_host, request_url, server_host
from tlsgate.addons.verdicts import block_at_headers, fail_closed, mark, record_once
from tlsgate.checks import conformance as verdicts
from tlsgate.checks.conformance import ONCE_KINDS
from tlsgate.checks.model import Action, Effect, Issue, remedy_for
from tlsgate.checks.probes import CLOSED_AFTER_HANDSHAKE, client_rejection
from tlsgate.checks.registry import Phase
from tlsgate.policy import Match, Mode
from tlsgate.policy.sections.app import APP, AppRules
from tlsgate.sinks import redact
from tlsgate.sinks.findings import Finding
from tlsgate.tls.plaintext import classify
from tlsgate.tls.recent import Once

logger = logging.getLogger("tlsgate.conformance")
STARTTLS_PROTOCOLS = ("smtp", "imap", "pop3", "ftp", "xmpp")  # cleartext first, TLS after the upgrade: not judged here
PENDING_HOSTS = 16  # must-pin refusals per device waiting for evidence; the oldest is dropped (already said as undetermined)


@dataclass(eq=False)
class ClientSide:
    """One client connection shown tlsgate's normal certificate, from handshake to first data or hang-up."""

    host: str
    match: Match
    device: str
    port: int | None
    handshake_done: bool = False
    sent: bool = False
    verdict: Finding | None = None  # not_pinned, once the app sent data over tlsgate's certificate


class Conformance:
    def __init__(self, connections: Connections, sink: FindingsSink, limit: int = 4096) -> None:
        self.connections = connections
        self.sink = sink
        self.trust = verdicts.DeviceTrust(limit)
        self._clients: weakref.WeakKeyDictionary[connection.Client, ClientSide] = weakref.WeakKeyDictionary()
        # device -> host -> a must-pin refusal said as undetermined, waiting for the device to show more
        self._pending: OrderedDict[str, dict[str, tuple[ConnState, AppRules, str, int | None]]] = OrderedDict()
        self._limit = limit
        self._streams: Once[str] = Once(limit)  # plain TCP flows already judged (their first bytes)

    # -- the client --------------------------------------------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        state = self.connections.peek(data.context.client)
        audit = _audit(state)
        if state is None or audit is None or state.match is None:
            return
        for issue in verdicts.judge_client_version(_app(state.match), audit.hello.best_version_word):
            self._record(state, state.match, issue, audit.port)

    def tls_established_client(self, data: tls.TlsData) -> None:
        client = data.conn
        state = self.connections.peek(client) if isinstance(client, connection.Client) else None
        if state is None or state.match is None or _probing(state):
            return
        device = _device(state)
        audit = _audit(state)
        self._clients[state.client] = ClientSide(state.match.host, state.match, device, audit.port if audit else None, True)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        client = data.conn
        state = self.connections.peek(client) if isinstance(client, connection.Client) else None
        if state is None or state.match is None or _probing(state):
            return
        rejection = client_rejection(data.conn.error)
        if rejection is None:
            return
        audit = _audit(state)
        self._refused(state, state.match, rejection, audit.port if audit else None)

    def client_disconnected(self, client: connection.Client) -> None:
        side = self._clients.pop(client, None)
        state = self.connections.peek(client)
        if side is None or state is None or not side.handshake_done or side.sent:
            return
        # Pinning libraries check pins after the handshake, before the first request: silence is a refusal.
        self._refused(state, side.match, CLOSED_AFTER_HANDSHAKE, side.port, weak=True)

    def _refused(self, state: ConnState, match: Match, rejection: str, port: int | None, weak: bool = False) -> None:
        """A refusal of tlsgate's certificate: a verdict on a must-pin host, evidence about the device elsewhere.

        A silent hang-up after the handshake (`weak`) counts only on must-pin
        hosts: elsewhere it is as often a speculative connection left unused,
        and must not make a device look as if tlsgate's CA were missing.
        """
        device, host, app = _device(state), match.host, _app(match)
        if app is None or not app.must_pin:
            if not weak:
                self.trust.refused(device, host, rejection)
                self._settle_pending(device, host)
            return
        accepted, refused = self.trust.evidence(device, host)
        if not accepted and not refused:
            # Said now (tlsgate may stop before more is known), and said again once the device shows more.
            self._record(state, match, verdicts.undetermined(app, host, rejection), port, once=False)
            waiting = self._pending.setdefault(device, {})
            waiting[host] = (state, app, rejection, port)
            while len(waiting) > PENDING_HOSTS:
                del waiting[next(iter(waiting))]
            self._pending.move_to_end(device)
            while len(self._pending) > self._limit:
                self._pending.popitem(last=False)
            return
        self._record(state, match, verdicts.refused(app, host, rejection, accepted, refused), port, once=False)

    def _accepted(self, state: ConnState, side: ClientSide) -> None:
        self.trust.accepted(side.device, side.host)
        self._settle_pending(side.device, side.host)

    def _settle_pending(self, device: str, other: str) -> None:
        """Refusals waiting for evidence: this device just showed what it does with tlsgate's CA elsewhere."""
        waiting = self._pending.get(device)
        for host in [h for h in waiting or {} if h != other]:
            state, app, rejection, port = waiting.pop(host)  # type: ignore[union-attr]
            accepted, refused = self.trust.evidence(device, host)
            match = state.match_for(host, None)
            self._record(state, match, verdicts.refused(app, host, rejection, accepted, refused), port, once=False)
        if waiting == {}:
            del self._pending[device]

    # -- requests ----------------------------------------------------------------------------------

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.method == "CONNECT" or flow.response is not None or not flow.live:
            return
        state = self.connections.of(flow.client_conn)
        if state is None:
            return
        if not flow.client_conn.tls_established and flow.request.scheme == "http":
            self._cleartext(flow, state)
            return
        side = self._clients.get(flow.client_conn)
        finding = None
        if side is not None:  # said before any block: sending this over tlsgate's certificate is a fact either way
            finding = self._sent(state, side, f"{flow.request.method} {redact.redact_url(request_url(flow.request))}")
        blocked = _refused_once_established(state, flow.server_conn)
        if finding is not None and finding.action == Action.BLOCKED:
            block_at_headers(flow, finding)
        elif blocked is not None:
            block_at_headers(flow, blocked)
        elif finding is not None:
            mark(flow, finding)

    def _sent(self, state: ConnState, side: ClientSide, shown: str) -> Finding | None:
        """The app sent data over tlsgate's normal certificate: it trusts tlsgate's CA for this host."""
        if not side.sent:
            side.sent = True
            self._accepted(state, side)
            app = _app(side.match)
            for issue in verdicts.judge_user_cas(app, side.host):
                self._record(state, side.match, issue, side.port)
            if app is not None and app.must_pin:
                side.verdict = self._record(state, side.match, verdicts.not_pinned(app, side.host, shown), side.port, once=False)
        return side.verdict

    def _cleartext(self, flow: http.HTTPFlow, state: ConnState) -> None:
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        shown = f"{flow.request.method} {redact.redact_url(request_url(flow.request))}"
        for issue in verdicts.judge_cleartext(_app(match), match.host, shown):
            finding = self._record(state, match, issue, flow.request.port, once=False)
            if finding is not None and finding.action == Action.BLOCKED:
                block_at_headers(flow, finding)
            elif finding is not None:
                mark(flow, finding)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Not HTTP inside tlsgate's certificate on a must-pin host, in enforce mode: nothing is relayed.

        mitmproxy 12 relays a raw TCP flow even after `flow.kill()`, and a server
        that speaks first gets a TCP layer before the app has sent a byte; so the
        layer is replaced by `FirstByte`, which relays nothing and reads the app's
        first byte as not_pinned and a hang-up without one as a refusal. In report
        mode the stream flows and `tcp_message` records what the app sent.
        """
        side = self._clients.get(nextlayer.context.client)
        state = self.connections.peek(nextlayer.context.client)
        if side is None or state is None or nextlayer.layer is None or isinstance(nextlayer.layer, layers.HttpLayer):
            return
        app = _app(side.match)
        if app is None or not app.must_pin or side.match.settings.mode is not Mode.ENFORCE:
            return
        nextlayer.layer = FirstByte(nextlayer.context, lambda size: self._sent(state, side, f"{size} bytes (not HTTP)"))

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        state = self.connections.peek(flow.client_conn)
        if state is None or not flow.messages or not flow.messages[-1].from_client:
            return
        if not flow.client_conn.tls_established:
            self._cleartext_stream(flow, state)
            return
        side = self._clients.get(flow.client_conn)
        if side is not None and not side.sent:
            self._sent(state, side, f"{len(flow.messages[-1].content)} bytes (not HTTP)")

    def _cleartext_stream(self, flow: tcp.TCPFlow, state: ConnState) -> None:
        """The first client bytes of a plain TCP stream the cleartext gate let through (report mode, or allowed)."""
        if not self._streams.first(flow.id):
            return
        sent = b"".join(m.content for m in flow.messages if m.from_client)
        protocol = classify(sent, b"".join(m.content for m in flow.messages if not m.from_client)).protocol
        if protocol in STARTTLS_PROTOCOLS or protocol == "tls":
            return  # may upgrade in a moment; the cleartext check follows such streams to the end
        host = server_host(flow.server_conn)
        if not host:
            return
        match = state.match_for(host, self.connections.store.policy)
        port = flow.server_conn.address[1] if flow.server_conn.address else None
        for issue in verdicts.judge_cleartext_stream(_app(match), match.host, protocol):
            self._record(state, match, issue, port, once=False)

    # -- recording ---------------------------------------------------------------------------------

    def _record(self, state: ConnState, match: Match, issue: Issue, port: int | None, once: bool = True) -> Finding | None:
        """A finding; the kinds that describe the app or server rather than one connection, once per device and host."""
        counted = once and issue.kind in ONCE_KINDS and issue.effect is Effect.RECORD
        key = ("conformance", _device(state), match.host, issue.kind) if counted else None
        remedy = issue.remedy
        if issue.effect is Effect.ENFORCED:  # what lets the traffic through while the app is being fixed
            relax = remedy_for(match, "mode: report")
            remedy = f"{remedy}; or {relax}" if remedy else relax
        return record_once(self.sink, key, state, state.client, issue, match, port, remedy=remedy)


class FirstByte(layer.Layer):
    """Stands in for a non-HTTP layer on a must-pin host in enforce mode: relays nothing, either way.

    The app's first byte means it accepted tlsgate's certificate (`on_data` is
    told its size, and both sides are closed); a hang-up without one is how a
    pinning app refuses after the handshake, which `client_disconnected` reads.
    """

    def __init__(self, context: Context, on_data: Callable[[int], object]) -> None:
        super().__init__(context)
        self.on_data = on_data

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and event.connection == self.context.client:
            self.on_data(len(event.data))
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
        elif (
            isinstance(event, events.ConnectionClosed)
            and event.connection == self.context.client
            and self.context.server.connected
        ):
            yield commands.CloseConnection(self.context.server)


def _app(match: Match | None) -> AppRules | None:
    return APP.get(match.settings) if match is not None else None


def _refused_once_established(state: ConnState, server: connection.Server | None) -> Finding | None:
    """The server's verdict when it was taken on the established connection (the app's declaration): the connection
    was left up, so its requests are refused here, at their headers. A verdict taken in the handshake closed the
    connection itself, and `UpstreamTls` answers its requests."""
    side = state.servers.get(server.id) if server is not None else None
    return side.blocked if side is not None and side.blocked_in is Phase.ESTABLISHED else None


def _audit(state: ConnState | None) -> Audit | None:
    return state.audit if state is not None else None


def _probing(state: ConnState) -> bool:
    """A probe connection was shown a bad certificate on purpose: the client audit judges it, not this add-on."""
    audit = _audit(state)
    return audit is not None and audit.run is not None


def _device(state: ConnState) -> str:
    if state.device:
        return state.device
    return state.client.peername[0] if state.client.peername else "?"
