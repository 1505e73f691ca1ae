"""Blocks (or reports) unencrypted traffic by policy: plain http:// and ws:// requests, and TCP streams that are not TLS.

HTTP: the request hook runs before mitmproxy opens any upstream connection for
the request, so answering here means not one byte reaches the server.

Other protocols (MQTT, SMTP, IMAP, POP3, FTP, XMPP, Redis, anything unknown):
mitmproxy relays them with its TCPLayer, whose `tcp_message` hook cannot stop a
message or close the client (killing a TCP flow is ignored by that layer). So
the `next_layer` hook puts a `StreamGate` in front of the TCPLayer on every
stream whose client side is not TLS, in every mode (a CONNECT tunnel, socks5,
transparent, WireGuard). The gate holds each client chunk until
`tlsgate.tls.plaintext` has named the protocol, then forwards it, or closes both
sides without forwarding it. Server bytes always pass: protocols where the
server greets first (SMTP, IMAP, POP3, FTP) are named from the banner
(tlsgate runs with connection_strategy=eager, so the upstream is connected, and
its banner read, before the client has said anything), and the client's
capability and STARTTLS commands pass so STARTTLS keeps working; its first
command beyond those (AUTH, LOGIN, USER, MAIL, ...) is what gets blocked.

STARTTLS (SMTP/IMAP STARTTLS, POP3 STLS, FTP AUTH TLS, XMPP <starttls/>): once
the client's TLS handshake follows its upgrade command, the gate drops the
cleartext TCPLayer and stacks what mitmproxy's next_layer stacks for direct
TLS: ServerTLSLayer over ClientTLSLayer over a layer chosen by `next_layer`.
The rest of the stream is then judged exactly like direct TLS: the ClientHello
by the client audit (findings, probes), the upstream by `UpstreamTls` (pins,
validation, certificate rules, suites). With connection_strategy=eager, the
server handshake (and so its verdict) completes before the client's handshake
does, so no post-upgrade client byte can reach a refused server; the layer
chosen inside answers such a client in its protocol and closes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Generator

from mitmproxy import connection, ctx, flow, http
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.tcp import TcpEndHook

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.state import Connections, ConnState, credentials_in, request_host, request_url, server_host
from tlsgate.addons.verdicts import (
    answered,
    apply,
    block_at_headers,
    body_may_stream,
    fail_closed,
    mark,
    record,
    record_once,
)
from tlsgate.checks.cleartext import CleartextRequest, judge_cleartext, judge_stream, refusal, upstream_refusal
from tlsgate.checks.fallback import StripSchedule, judge_fallback, judge_strip
from tlsgate.checks.model import Action, Issue, decide
from tlsgate.policy import Match
from tlsgate.policy.hosts import is_address
from tlsgate.policy.sections.cleartext import CLEARTEXT, strips_starttls
from tlsgate.sinks import redact
from tlsgate.sinks.findings import Finding
from tlsgate.tls.plaintext import INSPECT_LIMIT, STREAM_PROTOCOLS, Sighting, classify, starts_like_tls
from tlsgate.tls.starttls import Stripper, client_command

logger = logging.getLogger("tlsgate.cleartext")
MAX_LOOKS = 64  # client chunks a stream is looked at before it is judged on what it has shown
UPGRADING = ("smtp", "imap", "pop3", "ftp", "xmpp")  # text protocols with STARTTLS: a chunk opening a TLS record is one


def h2c_preface(request: http.Request) -> bool:
    """The HTTP/2 connection preface mitmproxy's HTTP/1 reader makes of a prior-knowledge h2c client."""
    return request.method == "PRI" and request.path == "*" and request.http_version == "HTTP/2.0"


class CleartextGuard:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink
        self.strips = StripSchedule()  # `cleartext: {strip_starttls: true}`: which streams still get stripped

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        """The tunnel's name, for what inside it names no host (an h2c preface has no :authority yet)."""
        state = self.connections.of(flow.client_conn)
        if state is not None and state.connect_host is None:
            state.connect_host = flow.request.host

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A request whose body mitmproxy may stream (large or chunked) is decided now: the `request` hook
        would only run after the body went upstream, and a 64 MiB POST to a blocked URL was read whole before
        its 403. Small bodies (the logins apps post) are read first, so the finding names their credentials.

        HTTP/2 by prior knowledge (h2c: the `PRI * HTTP/2.0` preface) is judged here too, before mitmproxy's
        DisableH2C kills it in its `request` hook without a word: the finding says why the app's connection
        closed."""
        if body_may_stream(flow.request) or h2c_preface(flow.request):
            self._judge(flow, with_body=False)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """Forwarded (allowed or reported) requests are recorded with the credentials their body carries."""
        self._judge(flow, with_body=True)

    def _judge(self, flow: http.HTTPFlow, with_body: bool) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.request.scheme != "http" or flow.request.method == "CONNECT":
            return
        state = self.connections.of(flow.client_conn)
        if state is None:
            return
        h2c = h2c_preface(flow.request)
        host = (state.connect_host or request_host(flow.request)) if h2c else request_host(flow.request)  # the tunnel's name
        match = state.match_for(host, self.connections.store.policy)
        url = f"http://{match.host}:{flow.request.port}/" if h2c else request_url(flow.request)
        facts = CleartextRequest(
            method=flow.request.method,
            websocket=flow.request.headers.get("upgrade", "").lower() == "websocket",
            redacted_url=redact.redact_url(url),
            credentials=[c.as_dict() for c in credentials_in(flow.request, with_body)],
            user_agent=redact.redact_user_agent(flow.request.headers.get("user-agent", "")),
            h2c=h2c,
        )
        issue = judge_cleartext(facts, match)
        blocked = issue is not None and decide(issue, match.settings.mode) is Action.BLOCKED
        if not with_body and not blocked:
            return  # forwarded: recorded once, in `request`, with what its body carries
        trigger = self.sink.fallback.cleartext(state.who or "?", match.host, flow.request.method, facts.redacted_url)
        if issue is None:
            if trigger is not None:  # allowed in the clear: the retry is reported, not blocked
                fallback = judge_fallback(trigger, match.host, flow.request.method, facts.redacted_url, False)
                mark(flow, record(self.sink, state, flow.client_conn, fallback, match, flow.request.port))
            return
        finding = record(self.sink, state, flow.client_conn, issue, match, flow.request.port)
        if trigger is not None:
            fallback = judge_fallback(trigger, match.host, flow.request.method, facts.redacted_url, blocked)
            record(self.sink, state, flow.client_conn, fallback, match, flow.request.port)
        if facts.h2c:  # an h2c client reads no HTTP/1 page: its connection is closed, the finding says why
            mark(flow, finding)
            if blocked:
                flow.kill()
        elif with_body:
            apply(flow, finding)
        else:
            block_at_headers(flow, finding)

    def response(self, flow: http.HTTPFlow) -> None:
        """An https:// request the upstream answered: the device got through over TLS, so a handshake it failed
        before is not what its next plain request retries (`tlsgate.checks.fallback`)."""
        if flow.request.scheme != "https" or answered(flow) or flow.response is None:
            return
        state = self.connections.of(flow.client_conn)
        if state is None or state.who is None or not self.sink.fallback.knows(state.who):
            return
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        self.sink.fallback.tls_request(state.who, match.host)

    # -- UDP that is neither QUIC nor DNS ----------------------------------------------------------

    def _gate_udp(self, nextlayer: layer.NextLayer) -> None:
        """Raw UDP (CoAP, syslog, a custom protocol) in the modes that carry UDP is unknown cleartext to tlsgate:
        judged like an unknown TCP stream, so under `cleartext: block` not one datagram is relayed."""
        context = nextlayer.context
        state = self.connections.of(context.client)
        try:
            if state is None:
                raise LookupError("no policy loaded")
            port = context.server.address[1] if context.server.address else None
            match = state.match_for(server_host(context.server), self.connections.store.policy)
            issue = judge_stream(Sighting("unknown", details={"transport": "udp"}), match, port)
            if issue is None:
                return
            key = ("cleartext_udp", context.client.peername[0] if context.client.peername else "?", match.host, port)
            evidence = {"kind": issue.kind, **issue.evidence}  # one line per client, host and port; later flows are counted
            record_once(self.sink, key, state, context.client, issue, match, port, evidence=evidence)
            blocked = decide(issue, match.settings.mode) is Action.BLOCKED
        except Exception:  # noqa: BLE001 - fail closed: a datagram flow that cannot be judged is not relayed
            logger.exception("tlsgate: could not judge a UDP flow; dropping it")
            blocked = True
        if blocked:
            nextlayer.layer = Refuse(context, b"")

    # -- TCP streams that are not TLS -------------------------------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Gate every relayed stream whose client side is not TLS (a TLS stream is judged by the TLS add-ons)."""
        chosen = nextlayer.layer
        context = nextlayer.context
        if context.client.transport_protocol == "udp" and isinstance(chosen, layers.UDPLayer):
            self._gate_udp(nextlayer)
            return
        if context.client.tls and context.client.transport_protocol == "tcp":
            self._inside_starttls(nextlayer)
            return
        if chosen is None or context.client.transport_protocol != "tcp":
            return
        data = nextlayer.data_client()
        if starts_like_tls(data):
            return
        if isinstance(chosen, layers.HttpLayer):
            # A text command with a space in its first line ("AUTH secret", "HELLO 3 AUTH ...") looks like HTTP to
            # mitmproxy; inside a tunnel, relay (and judge) it as the protocol it is instead of answering 400.
            if chosen.mode is not HTTPMode.transparent or classify(data).protocol not in STREAM_PROTOCOLS[:-1]:
                return
            context.layers.remove(chosen)
            chosen = layers.TCPLayer(context)
        elif not isinstance(chosen, layers.TCPLayer):
            return
        state = self.connections.of(context.client)
        host = server_host(context.server)
        match = None
        try:
            if state is not None and host:
                match = state.settle(host) if state.match is None else state.match_for(host, self.connections.store.policy)
        except Exception:  # noqa: BLE001 - without a match the gate blocks: fail closed, and say why in the log
            logger.exception("no policy match for cleartext stream to %s; it will be blocked", host)
        port = context.server.address[1] if context.server.address else None
        inspector = StreamInspector(self.sink, state, context.client, match, port)
        who = state.who if state is not None else None
        if match is not None and who is not None and strips_starttls(CLEARTEXT.get(match.settings)):
            key = (who, match.host, port)
            if self.strips.due(*key):
                inspector.strip = Stripper()
                inspector.strip_answered = lambda: self.strips.answered(*key)
        context.layers.remove(chosen)
        gate = StreamGate(context, chosen, inspector)
        context.layers.append(chosen)
        nextlayer.layer = gate

    def _inside_starttls(self, nextlayer: layer.NextLayer) -> None:
        """The layer inside TLS a gate upgraded to: a relay if the upstream passed, else the protocol's "no" and a close.

        mitmproxy would take the client's first command (`EHLO name`) for HTTP;
        it is the protocol the gate already named. An upstream that failed or
        was refused gets nothing: the client is told why, in its protocol, over
        the TLS it just set up with tlsgate.
        """
        context = nextlayer.context
        gate = next((x for x in context.layers if isinstance(x, StreamGate) and x.upgraded), None)
        if gate is None:
            return
        chosen = nextlayer.layer
        if chosen is not None and chosen in context.layers:
            context.layers.remove(chosen)
        message = b""
        try:
            state = self.connections.peek(context.client)
            side = state.servers.get(context.server.id) if state is not None else None
            blocked = side.blocked if side is not None else None
            if context.server.tls_established and blocked is None:
                nextlayer.layer = chosen if isinstance(chosen, layers.TCPLayer) else layers.TCPLayer(context)
                return
            protocol = gate.inspector.sighting.protocol if gate.inspector.sighting else "unknown"
            check, rule = (blocked.check, blocked.rule) if blocked is not None else ("tls", "")
            message = upstream_refusal(protocol, check, rule)
        except Exception:  # noqa: BLE001 - fail closed: a stream whose upstream verdict cannot be read relays nothing
            logger.exception("choosing the layer inside an upgraded STARTTLS stream failed; closing it")
        nextlayer.layer = Refuse(context, message)


class Refuse(layer.Layer):
    """Inside an upgraded stream whose upstream failed or was refused: say so in the protocol, close, relay nothing."""

    def __init__(self, context: Context, message: bytes) -> None:
        super().__init__(context)
        self.message = message

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, object, None]:
        if isinstance(event, events.Start):
            if self.message:
                yield commands.SendData(self.context.client, self.message)
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)


class Step(enum.Enum):
    HOLD = "hold the bytes: the protocol is not known yet"
    FORWARD = "forward, and keep looking (capability and STARTTLS commands, or a report still gathering facts)"
    PASS = "forward, and stop looking"
    UPGRADE = "TLS follows the client's STARTTLS: hand the stream to mitmproxy's TLS layers, judged as direct TLS"
    BLOCK = "close both sides, forward nothing"


class StreamInspector:
    """The verdict on one stream, taken on the client's bytes as they arrive; recorded once per stream."""

    def __init__(
        self,
        sink: FindingsSink,
        state: ConnState | None,
        client: connection.Client,
        match: Match | None,
        port: int | None,
    ) -> None:
        self.sink = sink
        self.state = state
        self.client_conn = client
        self.match = match
        self.port = port
        self.client = bytearray()
        self.server = bytearray()
        self.client_total = 0
        self.looks = 0
        self.sighting: Sighting | None = None
        self.pending: Issue | None = None  # a reported issue still gathering facts, recorded when the stream settles
        self.finding: Finding | None = None
        self.refusal = b""  # the protocol's own "no" for the app, sent before a block closes the stream
        self.strip: Stripper | None = None  # removes the server's STARTTLS offer (`cleartext: {strip_starttls: true}`)
        self.strip_answered: Callable[[], None] = lambda: None  # the schedule hears the client's answer
        self.strip_finding: Finding | None = None

    def shown(self, data: bytes) -> bytes:
        """What of the server's bytes the client gets now: all of them, unless an offer of STARTTLS is being stripped."""
        if self.strip is None:
            return data
        try:
            return self.strip.feed(data)
        except Exception:  # noqa: BLE001 - `feed` never raises; if it did, the bytes go on unchanged and stripping stops
            logger.exception("stripping STARTTLS failed; forwarding the server's bytes unchanged")
            held = self.strip.stop()
            self.strip = None
            return held + data

    def released(self) -> bytes:
        """Server bytes the stripper still held once it stopped (the client answered, or the stream passed)."""
        if self.strip is None or self.strip.active:
            return b""
        return self.strip.stop()

    def _stripped(self, sighting: Sighting, closed: bool = False) -> Step | None:
        """The client's answer to a removed STARTTLS offer: recorded once; BLOCK when it went on in the clear."""
        if self.strip is None or not self.strip.removed or self.strip_finding is not None or self.match is None:
            return None
        command = client_command(sighting.protocol, bytes(self.client))
        issue = judge_strip(sighting, command, self.match.host, self.port, closed)
        if issue is None:
            return None
        self.strip.active = False  # held server bytes are released by the gate (`released`)
        evidence = {"kind": issue.kind, **issue.evidence, "client_bytes": self.client_total}
        self.strip_finding = record(self.sink, self.state, self.client_conn, issue, self.match, self.port, evidence=evidence)
        self.strip_answered()
        if decide(issue, self.match.settings.mode) is Action.BLOCKED:
            self.finding = self.strip_finding
            self.refusal = refusal(sighting, self.match.rule_ref)
            return Step.BLOCK
        return None

    def server_data(self, data: bytes) -> None:
        room = INSPECT_LIMIT - len(self.server)
        if room > 0:
            self.server += data[:room]

    def client_data(self, data: bytes, final: bool = False) -> Step:
        """What to do with the client bytes held so far; any error blocks (and is logged)."""
        try:
            return self._client_data(data, final)
        except Exception:  # noqa: BLE001 - fail closed: a verdict that cannot be reached blocks
            logger.exception("cleartext stream verdict failed; closing the stream")
            return Step.BLOCK

    def _client_data(self, data: bytes, final: bool) -> Step:
        self.client_total += len(data)
        self.looks += 1
        room = INSPECT_LIMIT - len(self.client)
        if room > 0:
            self.client += data[:room]
        # Each look re-reads everything kept (up to 130 us at 16 KiB): a client dribbling bytes gets 64 looks, not 16,384.
        full = final or len(self.client) >= INSPECT_LIMIT or self.looks >= MAX_LOOKS
        sighting = classify(bytes(self.client), bytes(self.server))
        self.sighting = sighting
        if self.strip is not None and (sighting.complete or full) and self._stripped(sighting) is Step.BLOCK:
            return Step.BLOCK  # went on in the clear after tlsgate removed STARTTLS: not one byte of that line goes on
        if sighting.upgraded:
            if not sighting.starttls_accepted:
                logger.info("%s client starts TLS the server did not accept; its TLS handshake will decide", sighting.protocol)
            return Step.UPGRADE
        if not sighting.complete and not full:
            return Step.HOLD
        if sighting.negotiation_only and not full:
            return Step.FORWARD
        if self.match is None:  # no policy loaded yet: nothing can allow this
            return Step.BLOCK
        issue = judge_stream(sighting, self.match, self.port)
        if issue is None:
            return Step.PASS
        if decide(issue, self.match.settings.mode) is Action.BLOCKED:
            self._record(issue)
            self.refusal = refusal(sighting, self.match.rule_ref)
            return Step.BLOCK
        if sighting.settled or full:
            self._record(issue)
            return Step.PASS
        self.pending = issue
        return Step.FORWARD

    def closed(self) -> None:
        try:
            self._closed()
        except Exception:  # noqa: BLE001 - the stream is ending anyway; a recording slip must not break the connection
            logger.exception("recording a cleartext stream failed")

    def _closed(self) -> None:
        """The client is done: a report still gathering facts is recorded with what was seen.

        So is a stream that only ever negotiated (EHLO, CAPABILITY) under report
        mode; under enforce nothing was stopped, so there is no block to record.
        """
        if self.strip is not None and self.sighting is not None:
            self._stripped(self.sighting, closed=True)
        if self.finding is not None or self.match is None or not self.client_total:
            return
        issue = judge_stream(classify(bytes(self.client), bytes(self.server)), self.match, self.port) or self.pending
        if issue is not None and (self.pending is not None or decide(issue, self.match.settings.mode) is not Action.BLOCKED):
            self._record(issue)

    def _record(self, issue: Issue) -> None:
        if self.finding is not None or self.match is None:
            return
        evidence = {"kind": issue.kind, **issue.evidence, "client_bytes": self.client_total}
        self.finding = record(self.sink, self.state, self.client_conn, issue, self.match, self.port, evidence=evidence)
        self.pending = None


class StreamGate(layer.Layer):
    """In front of mitmproxy's TCPLayer: client bytes reach it (and the server) only once the inspector says so.

    It never yields a blocking command itself, so the TCPLayer's hooks pause
    only the TCPLayer, as with any parent layer in mitmproxy.
    """

    def __init__(self, context: Context, child: layer.Layer, inspector: StreamInspector) -> None:
        super().__init__(context)
        self.child = child
        self.inspector = inspector
        self.looking = True
        self.held = b""
        self.closed = False
        self.upgraded = False  # the child is now mitmproxy's TLS stack: the stream is judged as direct TLS
        self.retired: layer.Layer | None = None  # the cleartext TCPLayer, still owed the answers to its hooks
        self.watching = False  # passed, but a protocol that can still upgrade: a later TLS handshake is not relayed blind

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, object, None]:
        if self.closed:
            return
        if self.retired is not None and isinstance(event, events.CommandCompleted) and event.command.blocking is self.retired:
            yield from self.retired.handle_event(event)  # e.g. the tcp_message hook of the last cleartext line
            return
        if self.looking and isinstance(event, events.DataReceived):
            if event.connection is self.context.client:
                step = self.inspector.client_data(event.data)
                self.held += event.data
                if step is Step.BLOCK:
                    yield from self._close()
                    return
                yield from self._release_server(stop=step in (Step.PASS, Step.UPGRADE))
                if step is Step.HOLD:
                    return
                if step is Step.UPGRADE:
                    yield from self._upgrade()
                    return
                self.looking = step is not Step.PASS
                sighting = self.inspector.sighting
                self.watching = not self.looking and sighting is not None and sighting.protocol in UPGRADING
                event = events.DataReceived(self.context.client, self.held)
                self.held = b""
            else:
                self.inspector.server_data(event.data)  # the server's own bytes: what `classify` reads
                shown = self.inspector.shown(event.data)  # what the client gets (STARTTLS stripped, when on)
                if not shown:
                    return
                event = events.DataReceived(event.connection, shown)
        elif (
            self.watching
            and isinstance(event, events.DataReceived)
            and event.connection is self.context.client
            and starts_like_tls(event.data)
        ):
            # A text protocol passed earlier (allowed, or reported and settled) that now starts TLS: STARTTLS after all.
            self.held = event.data
            self.watching = False
            yield from self._upgrade(split=0)
            return
        elif self.looking and isinstance(event, events.ConnectionClosed) and event.connection is self.context.client:
            # The client is done sending: judge what it held back, and record a report still gathering facts.
            # (A server closing first changes nothing: the client's later bytes are still looked at.)
            if self.held:
                if self.inspector.client_data(b"", final=True) is Step.BLOCK:
                    yield from self._close()
                    return
                yield from self.child.handle_event(events.DataReceived(self.context.client, self.held))
                self.held = b""
            self.inspector.closed()
            self.looking = False
        yield from self.child.handle_event(event)

    def _release_server(self, stop: bool) -> Generator[commands.Command, object, None]:
        """Server bytes the stripper held back go to the client once stripping is over (or the stream passed)."""
        strip = self.inspector.strip
        if strip is None:
            return
        held = strip.stop() if stop else self.inspector.released()
        if held:
            yield from self.child.handle_event(events.DataReceived(self.context.server, held))

    def _upgrade(self, split: int | None = None) -> Generator[commands.Command, object, None]:
        """Cleartext up to the client's STARTTLS line goes to the TCPLayer; from its TLS handshake on, to the TLS stack.

        The stack is the one mitmproxy's next_layer builds for direct TLS, so
        tlsconfig, `UpstreamTls` and the client audit run on it unchanged. The
        upstream's name is the host this connection settled on (CONNECT or SOCKS
        authority, DNS name), as for direct TLS, unless it already has one.
        """
        try:
            if split is None:  # where the inspector saw the handshake start, relative to the bytes held
                sighting = self.inspector.sighting
                offset = sighting.tls_offset if sighting is not None and sighting.tls_offset is not None else 0
                start = self.inspector.client_total - len(self.held)  # stream offset of the first held byte
                split = min(max(offset - start, 0), len(self.held))
            cleartext, handshake = self.held[:split], self.held[split:]
            server = self.context.server
            host = self.inspector.state.host if self.inspector.state is not None else None
            if server.sni is None and host and not is_address(host):
                server.sni = host
            old = self.child
            if old in self.context.layers:
                self.context.layers.remove(old)
            server_tls = layers.ServerTLSLayer(self.context)
            server_tls.child_layer = layers.ClientTLSLayer(self.context)
            bounds = ctx.master.addons.get("clientbounds")  # the ClientHello bounds hold after STARTTLS too
            gated = bounds.gate_hello(self.context, server_tls) if bounds is not None else server_tls
        except Exception:  # noqa: BLE001 - fail closed: a stream that cannot be judged as TLS is not relayed blind
            logger.exception("handing a STARTTLS stream to the TLS layers failed; closing it")
            yield from self._close()
            return
        self.held = b""
        self.looking = False
        if cleartext:  # the STARTTLS line came with the handshake: the line still goes in the clear, before it
            yield from old.handle_event(events.DataReceived(self.context.client, cleartext))
        self.retired, self.child, self.upgraded = old, gated, True
        logger.debug("STARTTLS to %s: judging the upgraded stream as TLS", server.sni or server.address)
        tcp_flow = getattr(old, "flow", None)
        if tcp_flow is not None and tcp_flow.live:  # the cleartext part ends here, as mitmproxy would end it
            tcp_flow.live = False
            yield TcpEndHook(tcp_flow)
        yield from self.child.handle_event(events.Start())
        yield from self.child.handle_event(events.DataReceived(self.context.client, handshake))

    def _close(self) -> Generator[commands.Command, object, None]:
        self.closed = True
        self.held = b""
        tcp_flow = getattr(self.child, "flow", None)
        if tcp_flow is not None and tcp_flow.live:
            tcp_flow.error = flow.Error("blocked by tlsgate: cleartext stream")
            tcp_flow.live = False
        if self.inspector.refusal:
            yield commands.SendData(self.context.client, self.inspector.refusal)
        yield commands.CloseConnection(self.context.client)
        if self.context.server.connected:
            yield commands.CloseConnection(self.context.server)
