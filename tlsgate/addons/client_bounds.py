"""Clients that would hold the proxy: ClientHello record floods, endless request heads, clients that never finish.

Three bounds, each a finding and a metric when it closes a connection (evidence: counts, never bytes):

- ClientHello: mitmproxy re-parses the whole buffer on every TLS record, so a
  hello in 200,000 one-byte records stalled the event loop for every client
  for seconds. `HelloGate` sits in front of mitmproxy's TLS layers, counts
  each byte once (`tlsgate.tls.hellometer`) and hands mitmproxy the hello in one
  piece; past `tlsgate_max_hello_bytes` or `tlsgate_max_hello_records`, or
  when the bytes are not a hello at all, it closes the connection instead.
- Request heads: mitmproxy reads a head until its blank line, however long
  (a 31 MiB head was held whole). Past `tlsgate_max_request_head` the client
  is answered 431 and closed, plain or inside TLS; nothing is forwarded
  (`mitm_internals.bound_request_heads`).
- Slow clients: mitmproxy's idle timeout is 600 s and a byte now and then
  resets it. From the moment the proxy waits on a new TCP connection
  (connect, and each answer it gave: the CONNECT 200, a server's greeting,
  its side of the TLS handshake) the client has `tlsgate_client_head_timeout`
  seconds for its next step (CONNECT head, ClientHello, first request head,
  first bytes in a non-HTTP tunnel), until its first request is complete.
  Client bytes alone never restart the clock, so dribbling a head does not
  help. The clock is an asyncio timer per connection started in
  `client_connected`, so a client that never sends a byte is covered too;
  closing it (as mitmproxy's own idle watchdog does) closes the upstream
  connections it opened. Later requests on a kept-alive connection, and
  HTTP/2 connections once their handshake is done, are bounded by
  `tcp_timeout`, as in mitmproxy.

These protect the proxy, not the app's traffic from itself: they refuse in
every mode, under `mode: report` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Generator
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, dns, exceptions, http, tcp, tls
from mitmproxy.net.http.http1 import assemble_response
from mitmproxy.proxy import commands, events, layer, layers, server_hooks
from mitmproxy.proxy.context import Context

from tlsgate.addons import mitm_internals
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.state import Connections, server_host
from tlsgate.addons.verdicts import block_response, client_label, fail_closed, record
from tlsgate.checks.client_bounds import STAGES, judge_hello, judge_request_head, judge_slow_client
from tlsgate.checks.model import Issue
from tlsgate.tls.hellometer import Hello, HelloMeter

logger = logging.getLogger("tlsgate.client_bounds")

# A real ClientHello is 0.5-2 KB (a post-quantum X25519MLKEM768 key share adds 1.2 KB), rarely past 4 KB even with
# PSK tickets and two hybrid shares, in one record. 64 KiB is Squid's request_header_max_size, the same room as the
# request-head bound. Records: TLS lets a hello be split anywhere, and censorship-evasion tools do split it (ByeDPI's
# --tlsrec into 2; Xray's fragment setting typically into 100-200-byte pieces; 10-byte pieces would make ~200 of a 2 KB
# hello). Platform TLS stacks (Android, iOS, OkHttp, BoringSSL, OpenSSL) send it in one record.
DEFAULT_MAX_HELLO_BYTES = 65536
DEFAULT_MAX_HELLO_RECORDS = 256
DEFAULT_MAX_REQUEST_HEAD = 65536  # Squid's request_header_max_size; nginx: 4 x 8 KiB lines by default
DEFAULT_HEAD_TIMEOUT = 30  # nginx's client_header_timeout is 60 s, Apache's RequestReadTimeout header 20-40 s

OPTIONS = ("tlsgate_max_hello_bytes", "tlsgate_max_hello_records", "tlsgate_max_request_head", "tlsgate_client_head_timeout")


@dataclass(eq=False)
class Progress:
    """How far one client connection is towards its first request, for its head-timeout clock."""

    last: float = field(default_factory=time.monotonic)  # the last time the proxy started waiting on the client
    stage: str = "request_head"
    host: str | None = None  # the CONNECT authority's host, once read
    done: bool = False  # the first request (or tunnel message) is complete: tcp_timeout governs from here
    timer: asyncio.TimerHandle | None = None


class ClientBounds:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink
        self.progress: weakref.WeakKeyDictionary[connection.Client, Progress] = weakref.WeakKeyDictionary()

    def load(self, loader) -> None:
        loader.add_option(
            "tlsgate_max_hello_bytes",
            int,
            DEFAULT_MAX_HELLO_BYTES,
            "TLS handshake bytes a client may send before its ClientHello is complete (0: no bound).",
        )
        loader.add_option(
            "tlsgate_max_hello_records",
            int,
            DEFAULT_MAX_HELLO_RECORDS,
            "TLS records a client's ClientHello may be split into (0: no bound).",
        )
        loader.add_option(
            "tlsgate_max_request_head",
            int,
            DEFAULT_MAX_REQUEST_HEAD,
            "Bytes of an HTTP/1 request line and headers; a longer head is answered 431 and closed (0: no bound).",
        )
        loader.add_option(
            "tlsgate_client_head_timeout",
            int,
            DEFAULT_HEAD_TIMEOUT,
            "Seconds a new connection may take for each step to its first complete request (0: no limit).",
        )
        mitm_internals.bound_request_heads(self._head_limit, self._refuse_head)

    def configure(self, updated: set[str]) -> None:
        for name in OPTIONS:
            if name in updated and getattr(ctx.options, name) < 0:
                raise exceptions.OptionsError(f"{name} must be 0 (no bound) or more")
        if "tlsgate_max_hello_bytes" in updated and 0 < ctx.options.tlsgate_max_hello_bytes < 512:
            raise exceptions.OptionsError("tlsgate_max_hello_bytes below 512 would refuse ordinary ClientHellos")

    # -- layers -------------------------------------------------------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        chosen = nextlayer.layer
        context = nextlayer.context
        if chosen is None or context.client.transport_protocol != "tcp":
            return
        if isinstance(chosen, layers.ServerTLSLayer | layers.ClientTLSLayer) and _client_tls(chosen):
            nextlayer.layer = self.gate_hello(context, chosen)

    def gate_hello(self, context: Context, tls_layer: layer.Layer) -> layer.Layer:
        """`tls_layer` (mitmproxy's TLS stack for a client) behind a `HelloGate`; also for STARTTLS upgrades, which
        build that stack themselves (tlsgate.addons.cleartext)."""
        meter = HelloMeter(ctx.options.tlsgate_max_hello_bytes, ctx.options.tlsgate_max_hello_records)
        self._mark(context.client, "tls_hello", restart=False)
        return HelloGate(context, tls_layer, meter, self)

    # -- progress towards the first request ---------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        timeout = ctx.options.tlsgate_client_head_timeout
        if client.transport_protocol != "tcp" or not timeout or client.error:
            return
        progress = Progress()
        self.progress[client] = progress
        progress.timer = asyncio.get_running_loop().call_later(timeout, self._check, weakref.ref(client), timeout)

    def client_disconnected(self, client: connection.Client) -> None:
        progress = self.progress.pop(client, None)
        if progress is not None and progress.timer is not None:
            progress.timer.cancel()

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._mark(flow.client_conn, "tunnel_data")
        if (progress := self.progress.get(flow.client_conn)) is not None:
            progress.host = flow.request.host

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._done(flow.client_conn)

    def response(self, flow: http.HTTPFlow) -> None:
        self._mark(flow.client_conn)  # an answer to a CONNECT (or an error page): the client's turn

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._mark(data.client)  # the CONNECT 200 (or the server's greeting) follows: the client's turn

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        self._mark(data.context.client, "request_head")

    def tls_established_server(self, data: tls.TlsData) -> None:
        self._mark(data.context.client)  # tlsgate answers the client's hello only now

    def tls_established_client(self, data: tls.TlsData) -> None:
        """HTTP/2 clients (gRPC channels, browsers' preconnects) open a connection ahead of their first request and
        may leave it idle: for them the handshake is the end of the head timeout, `tcp_timeout` governs the rest."""
        if data.conn.alpn == b"h2":
            self._done(data.context.client)
        else:
            self._mark(data.context.client)

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        if flow.messages and flow.messages[-1].from_client:
            self._done(flow.client_conn)
        else:
            self._mark(flow.client_conn)  # a server that speaks first (SMTP, IMAP): the client's turn

    def dns_request(self, flow: dns.DNSFlow) -> None:
        self._done(flow.client_conn)

    def _mark(self, client: connection.Client, stage: str | None = None, restart: bool = True) -> None:
        progress = self.progress.get(client)
        if progress is not None and not progress.done:
            if restart:
                progress.last = time.monotonic()
            if stage is not None:
                progress.stage = stage

    def _done(self, client: connection.Client) -> None:
        progress = self.progress.get(client)
        if progress is not None and not progress.done:
            progress.done = True
            if progress.timer is not None:
                progress.timer.cancel()

    def _check(self, ref: weakref.ref[connection.Client], timeout: int) -> None:
        client = ref()
        progress = self.progress.get(client) if client is not None else None
        if client is None or progress is None or progress.done or not client.connected:
            return
        waited = time.monotonic() - progress.last
        if waited < timeout:
            progress.timer = asyncio.get_running_loop().call_later(timeout - waited, self._check, ref, timeout)
            return
        progress.done, progress.timer = True, None
        logger.info(
            "tlsgate: closing %s: no %s %d s after it was expected (tlsgate_client_head_timeout)",
            client_label(client),
            STAGES.get(progress.stage, progress.stage),
            round(waited),
        )
        self.head_expired(client, progress, waited, timeout)
        if not mitm_internals.close_client(client):
            logger.warning("tlsgate: could not find %s's connection to close it", client_label(client))

    # -- verdicts -------------------------------------------------------------------------------------

    def _record(self, context: Context, issue: Issue) -> None:
        """The finding, which also counts `tlsgate_client_bounds_total`; a failure is logged, the connection closes anyway."""
        state = self.connections.of(context.client)
        if state is None:
            return
        host = state.host or server_host(context.server) or (context.client.peername or ("?",))[0]
        match = state.match_for(host, self.connections.store.policy)
        port = context.server.address[1] if context.server.address else None
        record(self.sink, state, context.client, issue, match, port)

    def hello_refused(self, context: Context, meter: HelloMeter) -> None:
        try:
            issue = judge_hello(meter, client_label(context.client) or "?", _host(context))
            if issue is not None:
                self._record(context, issue)
        except Exception:  # noqa: BLE001 - the connection is closed whatever happens here
            logger.exception("tlsgate: recording a refused ClientHello failed")

    def head_expired(self, client: connection.Client, progress: Progress, waited: float, limit: int) -> None:
        try:
            state = self.connections.of(client)
            if state is None:
                return
            host = state.host or progress.host or state.connect_host or (client.peername or ("?",))[0]
            issue = judge_slow_client(waited, limit, progress.stage, client_label(client) or "?", host)
            record(self.sink, state, client, issue, state.match_for(host, self.connections.store.policy), None)
        except Exception:  # noqa: BLE001 - the connection is closed whatever happens here
            logger.exception("tlsgate: recording a slow client failed")

    @staticmethod
    def _head_limit() -> int:
        return int(getattr(ctx.options, "tlsgate_max_request_head", DEFAULT_MAX_REQUEST_HEAD))

    def _refuse_head(self, context: Context, size: int, limit: int) -> bytes:
        """What a client whose request head passed the bound is told: the block page, as 431, and the connection closes."""
        issue = judge_request_head(size, limit, client_label(context.client) or "?", _host(context))
        state = self.connections.of(context.client)
        if state is None:
            raise LookupError("no policy loaded")
        host = _host(context)
        match = state.match_for(host, self.connections.store.policy)
        port = context.server.address[1] if context.server.address else None
        finding = record(self.sink, state, context.client, issue, match, port)
        response = block_response(finding, "")
        response.status_code = 431
        response.reason = "Request Header Fields Too Large"
        response.headers["Connection"] = "close"
        return assemble_response(response)


def _client_tls(chosen: layer.Layer) -> bool:
    """The chosen layer reads a ClientHello from the client: mitmproxy's ClientTLSLayer, alone or under ServerTLSLayer."""
    if isinstance(chosen, layers.ClientTLSLayer):
        return True
    return isinstance(getattr(chosen, "child_layer", None), layers.ClientTLSLayer)


def _host(context: Context) -> str:
    host = server_host(context.server) if context.server.address or context.server.sni else ""
    if host:
        return host
    return (context.client.peername or ("?",))[0]


class HelloGate(layer.Layer):
    """In front of mitmproxy's TLS layers until the ClientHello is complete, which they then get in one piece.

    Not in `context.layers`, like mitmproxy's own NextLayer, so the stack the
    next-layer decisions match on is the one mitmproxy built.
    """

    def __init__(self, context: Context, child: layer.Layer, meter: HelloMeter, bounds: ClientBounds) -> None:
        super().__init__(context)
        context.layers.remove(self)
        self.child = child
        self.meter = meter
        self.bounds = bounds
        self.held: list[bytes] = []
        self.passing = False
        self.refused = False

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, object, None]:
        if self.passing:
            yield from self.child.handle_event(event)
            return
        if self.refused:
            return
        if isinstance(event, events.DataReceived) and event.connection is self.context.client:
            try:
                state = self.meter.feed(event.data)
            except Exception:  # noqa: BLE001 - fail closed: a hello that cannot be measured is not passed on
                logger.exception("tlsgate: measuring a ClientHello failed; closing the connection")
                self.meter.state, self.meter.problem = Hello.MALFORMED, "could not be measured (tlsgate error)"
                state = Hello.MALFORMED
            self.held.append(event.data)
            if state is Hello.PARTIAL:
                return
            data, self.held = b"".join(self.held), []
            if state is Hello.COMPLETE:
                self.passing = True
                yield from self.child.handle_event(events.DataReceived(self.context.client, data))
                return
            self.refused = True
            logger.info(
                "tlsgate: closed %s: ClientHello %s (%d records, %d bytes)",
                client_label(self.context.client),
                self.meter.problem,
                self.meter.records,
                self.meter.hello_bytes,
            )
            self.bounds.hello_refused(self.context, self.meter)
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
            return
        if isinstance(event, events.ConnectionClosed) and event.connection is self.context.client and self.held:
            self.passing = True  # the client gave up mid-hello: mitmproxy ends the handshake as it would have
            yield from self.child.handle_event(events.DataReceived(self.context.client, b"".join(self.held)))
            self.held = []
        yield from self.child.handle_event(event)
