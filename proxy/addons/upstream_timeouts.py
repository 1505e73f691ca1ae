"""Bounds on how long an upstream may keep an app waiting, and a clean answer when it breaks the exchange.

mitmproxy itself has one clock, `tcp_timeout` (600 s of no traffic on the
whole client connection), so a server that accepts and stays silent, or
trickles a byte a second, holds the app for as long as the app waits, and a
server that answers garbage gets mitmproxy's bare 502 with no finding. Here
every upstream connection gets four clocks (`proxy.checks.faults.PHASES`):

- connect: from the TCP connect to the server's SYN-ACK;
- TLS handshake: from tlsgate's ClientHello to a completed handshake;
- response head: from the end of the app's request to the complete response head;
- response body: each idle window must bring progress (any byte for a streamed
  body, 1 KiB for one tlsgate holds whole, which the app sees only at the end).

When one runs out the connection is closed (mitmproxy's own way, see
`mitm_internals.end_server_connection`) and the app gets a 504 naming the
phase, the host and the option, with a `fault` finding of kind `timeout`. A
failed connect or an answer that is not HTTP (no status line, a head cut
short, a body cut short) gets a 502 and a `fault` finding of its kind; nothing
of the broken answer is passed on, and the connection is never reused.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import server_hooks

from proxy.addons.findings import FindingsSink
from proxy.addons.mitm_internals import answer_upstream_errors, count_server_bytes, end_server_connection, server_reading
from proxy.addons.state import Connections, request_host, server_host
from proxy.addons.verdicts import block_response, fail_closed, mark, record
from proxy.checks import faults
from proxy.checks.model import Action, Issue
from proxy.sinks.findings import Finding
from proxy.sinks.metrics import Metrics

logger = logging.getLogger("tlsgate.timeouts")

REFUSED_BY_TLSGATE = "tlsgate refused"  # DestinationGuard's server.error: a verdict already recorded, not a fault
# mitmproxy's words when it cancels a connect itself because the app left: the server did nothing wrong.
CLIENT_GONE = ("client disconnected", "connection cancelled")
CONNECT_FAULTS_KEPT = 32  # per client connection: a plain-HTTP proxy connection may try many hosts


@dataclass(eq=False)
class Watch:
    """One upstream connection's clocks and what came of them (the server only weakly: it is this entry's key)."""

    client: connection.Client
    server: weakref.ref[connection.Server]
    timer: asyncio.TimerHandle | None = None
    hooks_done: bool = False  # server_connected has run: the connection's task is past mitmproxy's hooks
    received: int = 0  # bytes from the server so far
    timed_out: faults.Phase | None = None
    seconds: float = 0.0
    finding: Finding | None = None  # the fault recorded for this connection, once

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass(eq=False)
class FlowWatch:
    timer: asyncio.TimerHandle | None = None
    mark: int = 0  # Watch.received at the start of the current idle window
    server: connection.Server | None = None

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass
class ConnectFaults:
    """A client's failed connects by error text: the HTTP layer reports them by text only."""

    by_error: dict[str, Finding] = field(default_factory=dict)


class UpstreamTimeouts:
    def __init__(self, connections: Connections, sink: FindingsSink, metrics: Metrics | None = None) -> None:
        self.connections = connections
        self.sink = sink
        self.metrics = metrics
        self.watches: weakref.WeakKeyDictionary[connection.Server, Watch] = weakref.WeakKeyDictionary()
        self.flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowWatch] = weakref.WeakKeyDictionary()
        self.connect_faults: weakref.WeakKeyDictionary[connection.Client, ConnectFaults] = weakref.WeakKeyDictionary()
        self.seconds = {phase.option: phase.default for phase in faults.PHASES}

    # -- options -----------------------------------------------------------------------------------

    def load(self, loader) -> None:
        for phase in faults.PHASES:
            loader.add_option(phase.option, int, int(phase.default), _HELP[phase.name])
        answer_upstream_errors(self.answer)

    def configure(self, updated: set[str]) -> None:
        for phase in faults.PHASES:
            if phase.option in updated:
                try:
                    self.seconds[phase.option] = faults.parse_timeout(phase.option, getattr(ctx.options, phase.option))
                except ValueError as exc:
                    raise exceptions.OptionsError(str(exc)) from None

    def timeout(self, phase: faults.Phase) -> float:
        return self.seconds[phase.option]

    # -- connect -----------------------------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Loaded after DestinationGuard and Resolve: the clock starts once the address is settled."""
        server = data.server
        if server.error or server.transport_protocol != "tcp" or server.address is None:
            return
        watch = Watch(data.client, weakref.ref(server))
        self.watches[server] = watch
        self._arm(watch, faults.CONNECT, self.timeout(faults.CONNECT))

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        watch = self.watches.get(data.server)
        if watch is None:
            return
        watch.disarm()
        watch.hooks_done = True

        def counted(n: int) -> None:
            watch.received += n

        count_server_bytes(data.client, data.server, counted)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Every failed connect, in every mode, is a `fault` finding; the HTTP answer reuses it (by error text)."""
        watch = self.watches.pop(data.server, None)
        if watch is not None:
            watch.disarm()
        error = data.server.error or ""
        timed_out = watch is not None and watch.timed_out is faults.CONNECT
        if REFUSED_BY_TLSGATE in error or (error in CLIENT_GONE and not timed_out):
            return
        connect_timeout = faults.timeout_issue(faults.CONNECT, watch.seconds) if watch is not None and timed_out else None
        issue = connect_timeout or faults.connect_fault(error)
        finding = self._record_server(data.client, data.server, issue)
        if finding is None:
            return
        if watch is not None:
            watch.finding = finding
        remembered = self.connect_faults.setdefault(data.client, ConnectFaults()).by_error
        remembered[error] = finding
        while len(remembered) > CONNECT_FAULTS_KEPT:
            del remembered[next(iter(remembered))]
        if self.metrics is not None:
            self.metrics.upstream_connection(finding.action, finding.check, "tcp")

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """The eager connect for a CONNECT failed: tlsgate's page (504 on a timeout) instead of mitmproxy's 502."""
        if answered(flow) or flow.response is None or flow.response.status_code != 502:
            return
        finding = self._connect_finding(flow.client_conn, flow.server_conn)
        if finding is not None:
            mark(flow, finding)
            flow.response = block_response(finding, flow.request.headers.get("accept", ""))

    def _connect_finding(self, client: connection.Client, server: connection.Server) -> Finding | None:
        faults_of = self.connect_faults.get(client)
        return faults_of.by_error.get(server.error or "") if faults_of is not None else None

    # -- TLS handshake -----------------------------------------------------------------------------

    def tls_start_server(self, data: tls.TlsData) -> None:
        watch = self._watch_of(data.conn)
        if watch is not None and not data.is_dtls:
            self._arm(watch, faults.TLS_HANDSHAKE, self.timeout(faults.TLS_HANDSHAKE))

    def tls_established_server(self, data: tls.TlsData) -> None:
        watch = self._watch_of(data.conn)
        if watch is not None:
            watch.disarm()

    def tls_failed_server(self, data: tls.TlsData) -> None:
        """Loaded before UpstreamTls: a handshake this clock ended is named a timeout there, not "connection closed"."""
        watch = self._watch_of(data.conn)
        if watch is None:
            return
        watch.disarm()
        if watch.timed_out is faults.TLS_HANDSHAKE:
            data.conn.error = faults.timeout_text(faults.TLS_HANDSHAKE, watch.seconds)

    # -- the response --------------------------------------------------------------------------------

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """The app's request is complete: the server now has `tlsgate_response_head_timeout` to answer (a clock
        that cannot be started refuses the request: an unbounded wait is what this add-on exists to prevent)."""
        if flow.response is not None or not flow.live or flow.request.method == "CONNECT" or flow.websocket:
            return
        if flow.client_conn.transport_protocol != "tcp":
            return
        watch = FlowWatch()
        self.flows[flow] = watch
        seconds = self.timeout(faults.RESPONSE_HEAD)
        watch.timer = asyncio.get_running_loop().call_later(seconds, self._head_expired, flow, seconds)

    def _head_expired(self, flow: http.HTTPFlow, seconds: float) -> None:
        watch = self.flows.get(flow)
        if watch is None or flow.response is not None or not flow.live:
            return
        server = self.watches.get(flow.server_conn)
        if server is None:  # not a connection these clocks watch (an upstream proxy's, a closed one)
            return
        if not server.hooks_done:  # still connecting (its own clock runs), or queued behind others
            watch.timer = asyncio.get_running_loop().call_later(1.0, self._head_expired, flow, seconds)
            return
        self._expire(server, faults.RESPONSE_HEAD, seconds)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and faults.is_live_stream(flow.response.headers.get("content-type", "")):
            # Server-sent events and gRPC streams are read as they come: held until 1 MiB, an app saw none of
            # its events, and a heartbeat under 1 KiB a window would read as a stalled body.
            flow.response.stream = True
        watch = self.flows.get(flow)
        if watch is None:
            return
        watch.disarm()
        if answered(flow):  # tlsgate's own answer (a block set in the request hook): no server
            del self.flows[flow]
            return
        server = self.watches.get(flow.server_conn)
        if server is None or flow.response is None:
            return
        watch.server = flow.server_conn
        watch.mark = server.received
        seconds = self.timeout(faults.RESPONSE_BODY)
        watch.timer = asyncio.get_running_loop().call_later(seconds, self._body_window, flow, seconds)

    def _body_window(self, flow: http.HTTPFlow, seconds: float) -> None:
        watch = self.flows.get(flow)
        server = self.watches.get(watch.server) if watch is not None and watch.server is not None else None
        if watch is None or server is None or not flow.live or server.timed_out is not None:
            return
        progress = server.received - watch.mark
        streamed = bool(flow.response is not None and flow.response.stream)
        if not faults.held_body_stalled(progress, streamed) or not server_reading(server.client, watch.server):
            watch.mark = server.received
            watch.timer = asyncio.get_running_loop().call_later(seconds, self._body_window, flow, seconds)
            return
        self._expire(server, faults.RESPONSE_BODY, seconds)
        if server.timed_out is faults.RESPONSE_BODY:
            # Marked now, before the layers see the close: every `response` hook (metrics among them) must see a
            # body ended by this close as the fault it is, even where HTTP/1.0 takes a close for the body's end.
            finding = self._timeout_finding(server, flow)
            if finding is not None:
                mark(flow, finding)

    def response(self, flow: http.HTTPFlow) -> None:
        """A close-delimited body ends at the close this add-on caused: that is a timeout, never a complete answer."""
        watch = self.flows.pop(flow, None)
        if watch is None:
            return
        watch.disarm()
        server = self.watches.get(watch.server) if watch.server is not None else None
        if server is None or server.timed_out is not faults.RESPONSE_BODY:
            return
        finding = self._timeout_finding(server, flow)
        if finding is None:
            flow.kill()
        elif flow.response is not None and not flow.response.stream:
            mark(flow, finding)
            flow.response = block_response(finding, flow.request.headers.get("accept", ""))
        else:
            mark(flow, finding)
            flow.kill()  # the head went out already: the app must see the body cut, not a complete one

    def error(self, flow: http.HTTPFlow) -> None:
        """A streamed response cut by a clock: the app saw the connection close; the finding says why."""
        watch = self.flows.pop(flow, None)
        if watch is None:
            return
        watch.disarm()
        server = self.watches.get(flow.server_conn)
        if server is not None and server.timed_out is not None:
            finding = self._timeout_finding(server, flow)
            if finding is not None:
                mark(flow, finding)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        watch = self.watches.get(data.server)
        if watch is not None:
            watch.disarm()

    def client_disconnected(self, client: connection.Client) -> None:
        self.connect_faults.pop(client, None)

    # -- the answer when mitmproxy's HTTP layer gives up on the server --------------------------------

    def answer(self, flow: http.HTTPFlow, message: str, code: str) -> http.Response | None:
        """tlsgate's 502/504 page for a failed exchange, with its `fault` finding (see mitm_internals)."""
        server = self.watches.get(flow.server_conn)
        timed_out = code != "CONNECT_FAILED" and server is not None and server.timed_out is not None
        if answered(flow) and not timed_out:  # a clock of this add-on marks its flow before the layers react
            return None
        watch = self.flows.pop(flow, None)
        if watch is not None:
            watch.disarm()
        if code == "CONNECT_FAILED":
            if REFUSED_BY_TLSGATE in message:
                return None
            faults_of = self.connect_faults.get(flow.client_conn)
            finding = faults_of.by_error.get(message) if faults_of is not None else None
            if finding is None:
                finding = self._record_flow(flow, faults.connect_fault(message))
        else:
            if server is not None and timed_out:
                finding = self._timeout_finding(server, flow)
            else:
                phase = faults.RESPONSE_BODY if flow.response is not None else faults.RESPONSE_HEAD
                finding = self._record_flow(flow, faults.response_fault(message, phase.name))
        if finding is None:
            return None
        mark(flow, finding)
        return block_response(finding, flow.request.headers.get("accept", ""))

    # -- helpers -----------------------------------------------------------------------------------

    def _watch_of(self, conn: connection.Connection) -> Watch | None:
        return self.watches.get(conn) if isinstance(conn, connection.Server) else None

    def _arm(self, watch: Watch, phase: faults.Phase, seconds: float) -> None:
        watch.disarm()
        watch.timer = asyncio.get_running_loop().call_later(seconds, self._expire, watch, phase, seconds)

    def _expire(self, watch: Watch, phase: faults.Phase, seconds: float) -> None:
        """The clock ran out: close the connection; the layers' reaction to the close brings the answer."""
        watch.timer = None
        server = watch.server()
        if watch.timed_out is not None or server is None:
            return
        reason = faults.timeout_text(phase, seconds)
        outcome = end_server_connection(watch.client, server, reason, watch.hooks_done)
        if outcome == "later":  # bounded: the connections it queues behind have clocks of their own
            watch.timer = asyncio.get_running_loop().call_later(1.0, self._expire, watch, phase, seconds)
            return
        if outcome == "gone":
            return
        watch.timed_out, watch.seconds = phase, seconds
        logger.info(f"tlsgate: {server_host(server)}: {reason}; the connection was closed")

    def _timeout_finding(self, watch: Watch, flow: http.HTTPFlow) -> Finding | None:
        if watch.finding is None and watch.timed_out is not None:
            received = watch.received if watch.timed_out is faults.RESPONSE_BODY else None
            watch.finding = self._record_flow(flow, faults.timeout_issue(watch.timed_out, watch.seconds, received))
        return watch.finding

    def _record_flow(self, flow: http.HTTPFlow, issue: Issue) -> Finding | None:
        state = self.connections.of(flow.client_conn)
        if state is None:
            return None
        host = request_host(flow.request)
        match = state.match_for(host, self.connections.store.policy)
        return record(self.sink, state, flow.client_conn, issue, match, flow.request.port)

    def _record_server(self, client: connection.Client, server: connection.Server, issue: Issue) -> Finding | None:
        state = self.connections.of(client)
        if state is None:
            return None
        match = state.match_for(server_host(server), self.connections.store.policy)
        return record(self.sink, state, client, issue, match, server.address[1] if server.address else None)


def answered(flow: http.HTTPFlow) -> bool:
    """Whether tlsgate already answered this flow itself (a block or a fault); a reported verdict still forwards."""
    return (flow.metadata.get("tlsgate") or {}).get("action") in (Action.BLOCKED, Action.FAILED)


_HELP: dict[str, str] = {
    "connect": "Seconds an upstream may take to accept a TCP connection (after its name resolved); then 504.",
    "tls_handshake": "Seconds an upstream may take to complete the TLS handshake tlsgate starts; then 504.",
    "response_head": "Seconds an upstream may take, after the app's request was sent, to send a complete response "
    "head; then 504. Long enough for long-polling APIs.",
    "response_body": "Seconds an upstream's response body may go without progress (any byte for a streamed body, "
    "1 KiB for one held whole); then 504, or the stream is cut.",
}
