"""Bounds on how long an upstream may keep an app waiting, and a clean answer when it breaks the exchange.

mitmproxy itself has one clock, `tcp_timeout` (600 s of no traffic on the
whole client connection), so a server that accepts and stays silent, or
trickles a byte a second, holds the app for as long as the app waits, and a
server that answers garbage gets mitmproxy's bare 502 with no finding. Here
every upstream exchange gets four clocks (`tlsgate.checks.faults.PHASES`), each
the option's seconds unless the host's policy sets its own (`timeouts:`):

- connect: from the TCP connect to the server's SYN-ACK;
- TLS handshake: from tlsgate's ClientHello to a completed handshake;
- response head: from the end of the app's request to the complete response head;
- response body: each idle window must bring progress (any byte for a streamed
  body, 1 KiB for one tlsgate holds whole, which the app sees only at the end).

The first two belong to the connection: when one runs out the connection is
closed (mitmproxy's own way, see `mitm_internals.end_server_connection`). The
last two belong to one request, and progress is the body bytes of that request
(`mitm_internals.watch_http_streams`), never the connection's raw bytes: over
TLS a 1-byte body chunk is a 23-byte record, over HTTP/2 also a frame header,
and another stream's bytes are not this one's progress. When one runs out the
request's stream is ended inside mitmproxy's layers (`end_http_stream`): over
HTTP/1 its connection is closed, over HTTP/2 the stream is reset and the app's
other requests on that connection go on. Either way the app gets a 504 naming
the phase, the host and the limit (the option, or the policy line that set
it), or, when the head already went out, its stream is cut; the `fault`
finding is of kind `timeout`. An app whose own timeout comes first (OkHttp's
10 s is far below the 120 s head limit) hangs up while tlsgate still waits:
that is a `fault` finding of kind `client_gave_up`, not a silent end.

A failed connect or an answer that is not HTTP (no status line, a head cut
short, a body cut short) gets a 502 and a `fault` finding of its kind; nothing
of the broken answer is passed on, and the connection is never reused.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import server_hooks

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.mitm_internals import (
    answer_upstream_errors,
    end_http_stream,
    end_server_connection,
    server_reading,
    watch_http_streams,
)
from tlsgate.addons.state import Connections, request_host, server_host
from tlsgate.addons.verdicts import answer_for, answered, fail_closed, mark, record, upstream_decided
from tlsgate.checks import faults
from tlsgate.checks.model import Issue
from tlsgate.policy.sections.timeouts import TIMEOUTS, TimeoutRules
from tlsgate.sinks.findings import Finding

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
    connect: faults.Limit
    handshake: faults.Limit
    timer: asyncio.TimerHandle | None = None
    running: faults.Limit | None = None  # the limit whose clock runs now
    started: float = 0.0  # time.monotonic() when it started
    hooks_done: bool = False  # server_connected has run: the connection's task is past mitmproxy's hooks
    timed_out: faults.Limit | None = None
    finding: Finding | None = None  # the fault recorded for this connection, once

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.running = None


@dataclass(eq=False)
class FlowWatch:
    """One request's clocks: the head, then each idle window of the body, and the body bytes that came."""

    head: faults.Limit
    body: faults.Limit
    started: float  # time.monotonic() at the end of the app's request
    phase: faults.Phase = faults.RESPONSE_HEAD
    timer: asyncio.TimerHandle | None = None
    received: int = 0  # body bytes of this response so far (decrypted, de-chunked, this stream's only)
    mark: int = 0  # `received` at the start of the current idle window
    progressed: float = 0.0  # time.monotonic() of the last body bytes (or the head)
    timed_out: faults.Limit | None = None
    finding: Finding | None = None

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def limit(self) -> faults.Limit:
        return self.head if self.phase is faults.RESPONSE_HEAD else self.body


@dataclass
class ConnectFaults:
    """A client's failed connects by error text: the HTTP layer reports them by text only."""

    by_error: dict[str, Finding] = field(default_factory=dict)


class UpstreamTimeouts:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink
        self.watches: weakref.WeakKeyDictionary[connection.Server, Watch] = weakref.WeakKeyDictionary()
        self.flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowWatch] = weakref.WeakKeyDictionary()
        self.connect_faults: weakref.WeakKeyDictionary[connection.Client, ConnectFaults] = weakref.WeakKeyDictionary()
        # Connections still connecting or in their handshake, per client: what an app that hangs up was waiting for.
        self.opening: weakref.WeakKeyDictionary[connection.Client, set[Watch]] = weakref.WeakKeyDictionary()
        self.seconds = {phase.option: phase.default for phase in faults.PHASES}

    # -- options and per-host limits ---------------------------------------------------------------

    def load(self, loader) -> None:
        for phase in faults.PHASES:
            loader.add_option(phase.option, int, int(phase.default), _HELP[phase.name])
        answer_upstream_errors(self.answer, self.client_gave_up)
        watch_http_streams(self)

    def configure(self, updated: set[str]) -> None:
        for phase in faults.PHASES:
            if phase.option in updated:
                try:
                    self.seconds[phase.option] = faults.parse_timeout(phase.option, getattr(ctx.options, phase.option))
                except ValueError as exc:
                    raise exceptions.OptionsError(str(exc)) from None

    def timeout(self, phase: faults.Phase) -> float:
        """The option's seconds: the limit of every host whose policy does not set its own."""
        return self.seconds[phase.option]

    def rules_for(self, client: connection.Client, host: str) -> TimeoutRules | None:
        """The `timeouts:` that apply to `host` (its rule's keys over the defaults'); None: the options decide."""
        state = self.connections.of(client)
        if state is None:
            return None
        return TIMEOUTS.get(state.match_for(host, self.connections.store.policy).settings)

    def limit(self, phase: faults.Phase, rules: TimeoutRules | None) -> faults.Limit:
        return faults.limit_for(phase, rules, self.timeout(phase))

    # -- connect -----------------------------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Loaded after DestinationGuard and Resolve: the clock starts once the address is settled."""
        server = data.server
        if server.error or server.transport_protocol != "tcp" or server.address is None:
            return
        try:
            rules = self.rules_for(data.client, server_host(server))
        except Exception:  # noqa: BLE001 - a host's own limits unknown: the options still bound it
            logger.exception("tlsgate: reading the policy's timeouts for %s failed; the options apply", server_host(server))
            rules = None
        watch = Watch(
            data.client, weakref.ref(server), self.limit(faults.CONNECT, rules), self.limit(faults.TLS_HANDSHAKE, rules)
        )
        self.watches[server] = watch
        self._arm(watch, watch.connect)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        watch = self.watches.get(data.server)
        if watch is None:
            return
        self._disarm(watch)
        watch.hooks_done = True

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Every failed connect, in every mode, is a `fault` finding; the HTTP answer reuses it (by error text)."""
        watch = self.watches.pop(data.server, None)
        if watch is not None:
            self._disarm(watch)
        error = data.server.error or ""
        timed_out = watch.timed_out if watch is not None and watch.timed_out is not None else None
        if REFUSED_BY_TLSGATE in error or (error in CLIENT_GONE and timed_out is None):
            return
        issue = faults.timeout_issue(timed_out) if timed_out is not None else faults.connect_fault(error)
        finding = self._record_server(data.client, data.server, issue)
        if finding is None:
            return
        if watch is not None:
            watch.finding = finding
        remembered = self.connect_faults.setdefault(data.client, ConnectFaults()).by_error
        remembered[error] = finding
        while len(remembered) > CONNECT_FAULTS_KEPT:
            del remembered[next(iter(remembered))]
        upstream_decided(self.sink, finding)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """The eager connect for a CONNECT failed: tlsgate's page (504 on a timeout) instead of mitmproxy's 502."""
        if answered(flow) or flow.response is None or flow.response.status_code != 502:
            return
        finding = self._connect_finding(flow.client_conn, flow.server_conn)
        if finding is not None:
            mark(flow, finding)
            flow.response = answer_for(finding, flow.request)

    def _connect_finding(self, client: connection.Client, server: connection.Server) -> Finding | None:
        faults_of = self.connect_faults.get(client)
        return faults_of.by_error.get(server.error or "") if faults_of is not None else None

    # -- TLS handshake -----------------------------------------------------------------------------

    def tls_start_server(self, data: tls.TlsData) -> None:
        watch = self._watch_of(data.conn)
        if watch is not None and not data.is_dtls:
            self._arm(watch, watch.handshake)

    def tls_established_server(self, data: tls.TlsData) -> None:
        watch = self._watch_of(data.conn)
        if watch is not None:
            self._disarm(watch)

    def tls_failed_server(self, data: tls.TlsData) -> None:
        """Loaded before UpstreamTls: a handshake this clock ended is named a timeout there, not "connection closed"."""
        watch = self._watch_of(data.conn)
        if watch is None:
            return
        self._disarm(watch)
        if watch.timed_out is not None and watch.timed_out.phase is faults.TLS_HANDSHAKE:
            data.conn.error = faults.timeout_text(watch.timed_out)

    # -- the response --------------------------------------------------------------------------------

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """The app's request is complete: the server now has the host's response-head limit to answer (a clock
        that cannot be started refuses the request: an unbounded wait is what this add-on exists to prevent)."""
        if flow.response is not None or not flow.live or flow.request.method == "CONNECT" or flow.websocket:
            return
        if flow.client_conn.transport_protocol != "tcp":
            return
        rules = self.rules_for(flow.client_conn, request_host(flow.request))
        now = time.monotonic()
        watch = FlowWatch(self.limit(faults.RESPONSE_HEAD, rules), self.limit(faults.RESPONSE_BODY, rules), now)
        self.flows[flow] = watch
        watch.timer = asyncio.get_running_loop().call_later(watch.head.seconds, self._head_expired, flow)

    def _head_expired(self, flow: http.HTTPFlow) -> None:
        watch = self.flows.get(flow)
        if watch is None or flow.response is not None or not flow.live or watch.timed_out is not None:
            return
        server = self.watches.get(flow.server_conn)
        if not flow.server_conn.connected or (server is not None and not server.hooks_done):
            # Still connecting (its own clocks run), or queued behind others for a connection slot.
            watch.timer = asyncio.get_running_loop().call_later(1.0, self._head_expired, flow)
            return
        self._end_stream(flow, watch)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and faults.is_live_stream(flow.response.headers.get("content-type", "")):
            # Server-sent events and gRPC streams are read as they come: held until 1 MiB, an app saw none of
            # its events, and a heartbeat under 1 KiB a window would read as a stalled body.
            flow.response.stream = flow.response.stream or True  # another add-on's callable (grpc_stream) stays
        watch = self.flows.get(flow)
        if watch is None:
            return
        watch.disarm()
        if answered(flow) or flow.response is None:  # tlsgate's own answer (a block set in the request hook)
            del self.flows[flow]
            return
        watch.phase = faults.RESPONSE_BODY
        watch.mark = watch.received
        watch.progressed = time.monotonic()
        watch.timer = asyncio.get_running_loop().call_later(watch.body.seconds, self._body_window, flow)

    def body_bytes(self, flow: http.HTTPFlow, size: int) -> None:
        """Called from inside mitmproxy's HTTP stream for every response body chunk (see watch_http_streams)."""
        watch = self.flows.get(flow)
        if watch is not None:
            watch.received += size
            watch.progressed = time.monotonic()

    def _body_window(self, flow: http.HTTPFlow) -> None:
        watch = self.flows.get(flow)
        if watch is None or not flow.live or watch.timed_out is not None:
            return
        progress = watch.received - watch.mark
        streamed = bool(flow.response is not None and flow.response.stream)
        if not faults.held_body_stalled(progress, streamed) or not server_reading(flow.client_conn, flow.server_conn):
            watch.mark = watch.received
            watch.timer = asyncio.get_running_loop().call_later(watch.body.seconds, self._body_window, flow)
            return
        self._end_stream(flow, watch)

    def _end_stream(self, flow: http.HTTPFlow, watch: FlowWatch) -> None:
        """The clock of `watch.phase` ran out: end this request's stream (never the app's other requests)."""
        watch.timer = None
        limit = watch.limit()
        reason = faults.timeout_text(limit)

        def confirm() -> bool:  # run inside the stream, only if it still waits in this phase
            if watch.timed_out is not None:
                return False
            watch.timed_out = limit
            host = request_host(flow.request)
            answer = "the stream was cut" if flow.response is not None and flow.response.stream else "answered 504"
            logger.info(f"tlsgate: {host}: {reason}; {answer}")
            if limit.phase is faults.RESPONSE_BODY:
                # Marked now, before the layers react: every hook after this one (metrics among them) must see
                # the fault, whether the app gets the 504 page or a cut stream.
                finding = self._timeout_finding(watch, flow)
                if finding is not None:
                    mark(flow, finding)
            return True

        if not end_http_stream(flow, limit.phase.name, reason, confirm):
            logger.debug("tlsgate: %s: %s, but its stream is gone", request_host(flow.request), reason)

    def response(self, flow: http.HTTPFlow) -> None:
        watch = self.flows.pop(flow, None)
        if watch is not None:
            watch.disarm()

    def error(self, flow: http.HTTPFlow) -> None:
        """A streamed response cut by a clock: the app saw the stream end; the finding says why."""
        watch = self.flows.pop(flow, None)
        if watch is None:
            return
        watch.disarm()
        if watch.timed_out is not None:
            finding = self._timeout_finding(watch, flow)
            if finding is not None:
                mark(flow, finding)

    def client_gave_up(self, flow: http.HTTPFlow, message: str) -> None:
        """The app ended a request tlsgate was still waiting on the server for (from inside mitmproxy's stream,
        before the `error` hook): its own timeout came first. A hang-up much sooner is a cancel, and not recorded."""
        watch = self.flows.get(flow)
        if watch is None or watch.timed_out is not None or watch.finding is not None:
            return
        streamed = watch.phase is faults.RESPONSE_BODY and flow.response is not None and bool(flow.response.stream)
        # A held answer shows the app nothing until it is complete: it has been waiting since its request.
        waited = time.monotonic() - (watch.progressed if streamed else watch.started)
        limit = watch.limit()
        if not faults.app_gave_up(waited, limit):
            return
        watch.disarm()
        watch.finding = self._record_flow(flow, faults.gave_up_issue(limit, waited))
        if watch.finding is not None:
            mark(flow, watch.finding)
        logger.info(
            f"tlsgate: {request_host(flow.request)}: the app gave up after {waited:.1f} s waiting for the server's "
            f"{limit.phase.waiting_for} (tlsgate's limit: {limit.seconds:g} s, {limit.source})"
        )

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        watch = self.watches.get(data.server)
        if watch is not None:
            self._disarm(watch)

    def client_disconnected(self, client: connection.Client) -> None:
        """An app that hangs up while its upstream connection is still being made: its own timeout came first."""
        self.connect_faults.pop(client, None)
        now = time.monotonic()
        for watch in self.opening.pop(client, set()):
            limit, server = watch.running, watch.server()
            if limit is None or server is None or watch.timed_out is not None:
                continue
            waited = now - watch.started
            if faults.app_gave_up(waited, limit):
                watch.finding = self._record_server(client, server, faults.gave_up_issue(limit, waited))
                logger.info(
                    f"tlsgate: {server_host(server)}: the app gave up after {waited:.1f} s waiting for the server's "
                    f"{limit.phase.waiting_for} (tlsgate's limit: {limit.seconds:g} s, {limit.source})"
                )

    # -- the answer when mitmproxy's HTTP layer gives up on the server --------------------------------

    def answer(self, flow: http.HTTPFlow, message: str, code: str) -> http.Response | None:
        """tlsgate's 502/504 page for a failed exchange, with its `fault` finding (see mitm_internals)."""
        watch = self.flows.get(flow)
        server = self.watches.get(flow.server_conn)
        flow_timed_out = watch is not None and watch.timed_out is not None
        server_timed_out = code != "CONNECT_FAILED" and server is not None and server.timed_out is not None
        if answered(flow) and not (flow_timed_out or server_timed_out):  # a clock marks its flow before the layers react
            return None
        if watch is not None:
            del self.flows[flow]
            watch.disarm()
        if code == "CONNECT_FAILED":
            if REFUSED_BY_TLSGATE in message:
                return None
            faults_of = self.connect_faults.get(flow.client_conn)
            finding = faults_of.by_error.get(message) if faults_of is not None else None
            if finding is None:
                finding = self._record_flow(flow, faults.connect_fault(message))
        elif watch is not None and flow_timed_out:
            finding = self._timeout_finding(watch, flow)
        elif server is not None and server.timed_out is not None and server_timed_out:
            if server.finding is None:
                server.finding = self._record_flow(flow, faults.timeout_issue(server.timed_out))
            finding = server.finding
        else:
            phase = faults.RESPONSE_BODY if flow.response is not None else faults.RESPONSE_HEAD
            finding = self._record_flow(flow, faults.response_fault(message, phase.name))
        if finding is None:
            return None
        mark(flow, finding)
        return answer_for(finding, flow.request)

    # -- helpers -----------------------------------------------------------------------------------

    def _watch_of(self, conn: connection.Connection) -> Watch | None:
        return self.watches.get(conn) if isinstance(conn, connection.Server) else None

    def _arm(self, watch: Watch, limit: faults.Limit) -> None:
        self._disarm(watch)
        watch.running, watch.started = limit, time.monotonic()
        watch.timer = asyncio.get_running_loop().call_later(limit.seconds, self._expire, watch, limit)
        self.opening.setdefault(watch.client, set()).add(watch)

    def _disarm(self, watch: Watch) -> None:
        watch.disarm()
        opening = self.opening.get(watch.client)
        if opening is not None:
            opening.discard(watch)

    def _expire(self, watch: Watch, limit: faults.Limit) -> None:
        """The connection's clock ran out: close it; the layers' reaction to the close brings the answer."""
        watch.timer = None
        server = watch.server()
        if watch.timed_out is not None or server is None:
            return
        reason = faults.timeout_text(limit)
        outcome = end_server_connection(watch.client, server, reason, watch.hooks_done)
        if outcome == "later":  # bounded: the connections it queues behind have clocks of their own
            watch.timer = asyncio.get_running_loop().call_later(1.0, self._expire, watch, limit)
            return
        self._disarm(watch)
        if outcome == "gone":
            return
        watch.timed_out = limit
        logger.info(f"tlsgate: {server_host(server)}: {reason}; the connection was closed")

    def _timeout_finding(self, watch: FlowWatch, flow: http.HTTPFlow) -> Finding | None:
        if watch.finding is None and watch.timed_out is not None:
            received = watch.received if watch.timed_out.phase is faults.RESPONSE_BODY else None
            watch.finding = self._record_flow(flow, faults.timeout_issue(watch.timed_out, received))
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


_HELP: dict[str, str] = {
    "connect": "Seconds an upstream may take to accept a TCP connection (after its name resolved); then 504. "
    "A policy's timeouts.connect overrides it per host.",
    "tls_handshake": "Seconds an upstream may take to complete the TLS handshake tlsgate starts; then 504. "
    "A policy's timeouts.handshake overrides it per host.",
    "response_head": "Seconds an upstream may take, after the app's request was sent, to send a complete response "
    "head; then 504. Long enough for long-polling APIs. A policy's timeouts.response_head overrides it per host.",
    "response_body": "Seconds an upstream's response body may go without progress (any byte for a streamed body, "
    "1 KiB for one held whole); then 504, or the stream is cut. A policy's timeouts.response_idle overrides it "
    "per host.",
}
