"""Looks inside every decrypted request (and response) for what TLS hides from the network but not from tlsgate.

AES-ECB and deterministic ciphertext, credentials in URLs, unsigned JWTs,
Basic auth to hosts no rule names, provider API keys, and the device's seeded
identifiers in any of their wire forms: judged by `tlsgate.checks.payload` under
the host's `payload:` settings, in every mode and transport that ends in an
HTTP flow (regular, socks5, transparent, WireGuard, HTTP/2, HTTP/3).

Cost is bounded by `payload.max_bytes` (64 KiB by default):

* a body mitmproxy buffers (up to its 1 MiB streaming threshold) is judged in
  the `request` hook, before any byte of it goes upstream, on its first
  `max_bytes` bytes (gzip, deflate, br and zstd decoded, stacked encodings in
  turn, never past that many bytes: `tlsgate.payload.bounds.Decoder`);
* a request whose body may stream has its URL and headers judged at
  `requestheaders`, where a block refuses it before the body is read; its body,
  if mitmproxy streams it (by its Content-Length from the first byte; chunked,
  or HTTP/2 and 3 without a length, once 1 MiB is buffered), goes through a
  `StreamWindow`: the first `max_bytes` (decoded) are held back from the server
  until judged, a slice of scanning per chunk. Passed, they go on at once and
  the rest streams uninspected; blocked, the server has the request's head and
  no byte of its body: its request is cancelled (HTTP/2: the stream reset;
  HTTP/1: the upstream connection closed), the app gets the block page, and
  what it still sends is dropped (`mitm_internals.hold_request_body`). Memory
  per such request: at most 2 x `max_bytes` plus one chunk, within `Holdings`;
* a gRPC call over HTTP/2 or 3 streams from its headers on (a bidirectional
  call waits for answers mid-body) and is judged message by message
  (`GrpcCall`, `tlsgate.payload.grpc_gate`): each message held until judged.

Responses are looked at for ECB only, and recorded: the request has already
reached the server, and what must change is the app's crypto.

A reported finding is written once per (device, host, kind, detail), then
counted: follow-up lines carry how often it recurred (`tlsgate.sinks.findings.Repeats`);
blocked ones are written every time, since each block must say why.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.mitm_internals import (
    answer_at_headers,
    close_websockets_on_request,
    hold_request_body,
    pause_client_reading,
    resume_held_body,
)
from tlsgate.addons.state import Connections, ConnState, request_host, request_url
from tlsgate.addons.verdicts import (
    block,
    block_at_headers,
    block_message,
    body_may_stream,
    fail_closed,
    fail_closed_message,
    mark,
    record_once,
    refusal_of,
    refuse_unjudged,
    verdict_of,
)
from tlsgate.checks.model import Action, Issue, decide
from tlsgate.checks.payload import (
    POLICY_VIOLATION,
    TO_APP,
    TO_SERVER,
    PayloadFacts,
    close_reason,
    judge_payload,
    rules_of,
)
from tlsgate.payload.bounds import Budget, Steps, drain, inflate_steps
from tlsgate.payload.exemptions import exempt_params, without_exempt_keys
from tlsgate.payload.fields import Field, body_field_steps, grpc_message_steps, header_fields, url_fields
from tlsgate.payload.grpc import Piece
from tlsgate.payload.grpc_gate import MessageGate
from tlsgate.payload.identifiers import Form, mask
from tlsgate.payload.messages import message_field_steps
from tlsgate.payload.recall import BlockMemory
from tlsgate.payload.scan import scan_steps
from tlsgate.payload.window import HeldWindow, Judge, WindowGate
from tlsgate.policy import Match, Policy
from tlsgate.policy.sections.payload import DEFAULT_MAX_BYTES, PAYLOAD, PayloadAction, PayloadRules
from tlsgate.sinks import redact
from tlsgate.sinks.findings import Finding
from tlsgate.tls.grpc_calls import grpc_call

logger = logging.getLogger("tlsgate.payload")
HEADS_JUDGED = "tlsgate_payload_heads"
TAP = "tlsgate_payload_tap"
SLICE = 0.005  # seconds of scanning before the event loop is handed back to every other connection
HELD_LIMIT = 64 * 1024 * 1024  # body bytes held for inspection at once, beyond what mitmproxy buffers itself


WS_NAMES = 256  # field names (of at most 128 characters) whose shown form one connection keeps, then starts afresh


@dataclass(slots=True)
class WsConnection:
    """Per WebSocket connection, for as long as its flow lives: about 100 KB at most (`WS_NAMES` shown names)."""

    policy: Policy | None
    state: ConnState
    match: Match
    rules: PayloadRules
    hidden: list[Form]
    url: str
    messages: int = 0  # messages seen so far: the next one's index (mitmproxy's list may have been trimmed)
    names: dict[str, str] = field(default_factory=dict)


class Holdings:
    """The bytes tlsgate holds to inspect bodies (tapped streams, inflated bodies), across every request at once.

    Each request may hold up to its `max_bytes`, while the total stays under
    `limit`; past it, a request still gets the default 64 KiB, and its finding
    says its inspection was cut (`capped: ["held_bytes"]`).
    """

    def __init__(self, limit: int = HELD_LIMIT, floor: int = DEFAULT_MAX_BYTES) -> None:
        self.limit = limit
        self.floor = floor
        self.held = 0

    def reserve(self, wanted: int, floor: int | None = None) -> int:
        floor = self.floor if floor is None else floor
        granted = max(min(wanted, self.limit - self.held), min(wanted, floor))
        self.held += granted
        return granted

    def release(self, size: int) -> None:
        self.held = max(0, self.held - size)


class StreamWindow(WindowGate):
    """A streamed request body's first `max_bytes`, held from the server until judged (`WindowGate`), and the
    block answer `mitm_internals.hold_request_body` sends the app when they are refused."""

    def __init__(self, flow: http.HTTPFlow, addon: Any, wanted: int, judge: Judge, holdings: Holdings, encoding: str):
        super().__init__(
            wanted, encoding, judge, lambda size: holdings.reserve(size, 2 * holdings.floor), holdings.release,
            lambda exc: refuse_unjudged(addon, flow, "payload.StreamWindow", exc),
            lambda paused: pause_client_reading(flow, paused), lambda: resume_held_body(flow),
        )  # fmt: skip
        self.flow = flow

    def refusal(self) -> http.Response | None:
        return refusal_of(self.flow) if self.blocked else None


class GrpcCall(MessageGate):
    """A gRPC call's `request.stream` (`mitm_internals.HeldBody`): messages held until judged (`MessageGate`),
    and the gRPC status the app gets when one is refused."""

    def __init__(
        self, flow: http.HTTPFlow, limit: int, judge: Callable[[Piece], bool], fail: Callable[[Exception], None]
    ) -> None:
        super().__init__(limit, judge, fail, lambda paused: pause_client_reading(flow, paused), lambda: resume_held_body(flow))
        self.flow = flow
        self._refusal: http.Response | None = None

    def refusal(self) -> http.Response | None:
        """`grpc-status: 7` and the rule (trailers-only: HTTP/2 HEADERS ending the stream) once a message was refused."""
        if not self.blocked:
            return None
        if self._refusal is None:
            self._refusal = refusal_of(self.flow)
        return self._refusal

    def closing(self) -> http.Headers | None:
        """The refusal as trailers, for an answer that had begun: only between two of the server's messages (a
        status after part of a message is a framing error to the client, which then sees INTERNAL, not why);
        else None, and the app's stream is reset (grpcio: INTERNAL, "RST_STREAM with error code 2")."""
        refusal = self.refusal()
        if refusal is None or not self.answers.between or "grpc-status" not in refusal.headers:
            return None
        return http.Headers(
            **{name: refusal.headers[name] for name in ("grpc-status", "grpc-message") if name in refusal.headers}
        )


def stepped(steps: Steps[Any], label: str) -> Coroutine[Any, Any, None] | None:
    """Run `steps` now for up to `SLICE`; what is left runs as a coroutine that hands the event loop back every
    `SLICE`, so one large body never holds up other devices' requests. mitmproxy awaits a hook's awaitable
    result before the flow moves on, so the request is still held until its verdict."""
    deadline = time.perf_counter() + SLICE
    for _ in steps:
        if time.perf_counter() >= deadline:
            return _finish(steps, label)
    return None


async def _finish(steps: Steps[Any], label: str) -> None:
    logger.debug(f"tlsgate: {label}: scanning in slices")
    deadline = time.perf_counter() + SLICE
    for _ in steps:
        if time.perf_counter() >= deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + SLICE


class PayloadInspector:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink
        self.memory = BlockMemory()
        self.holdings = Holdings()
        self._masked: object | None = None  # the seed index whose wire forms the console and logs mask
        self._ws: weakref.WeakKeyDictionary[http.HTTPFlow, WsConnection] = weakref.WeakKeyDictionary()
        connections.store.subscribe(self._on_reload)

    def _on_reload(self, result: str, policy: Policy | None) -> None:
        """A new policy's seeded identifiers are masked in console and log lines from the moment it is in force."""
        if policy is not None:
            self._mask_seeded(PAYLOAD.of(policy.defaults))

    # -- requests -----------------------------------------------------------------------------------

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A body that may stream is not waited for: URL and headers are judged now, and a Content-Length body
        mitmproxy streams is tapped up to `max_bytes` on its way."""
        streaming_call = _streaming_call(flow.request)
        context = self._context(flow)
        if context is None:
            if streaming_call and self._unjudged_call(flow):
                flow.request.stream = True  # nothing to judge: a bidirectional call must not wait for its body's end
            return
        state, match, rules = context
        if streaming_call:
            self._stream_grpc_call(flow, state, match, rules)
            return
        if not body_may_stream(flow.request):
            if "content-length" not in flow.request.headers and flow.request.method not in ("GET", "HEAD"):
                # HTTP/2 and 3 say no length for a body of any size: held whole unless it passes the threshold
                self._hold_streamed_body(flow, state, match, rules, heads=True)
            return
        flow.metadata[HEADS_JUDGED] = True
        if drain(self._judge(flow, state, match, rules, heads=True, body=None, at_headers=True)):
            return
        self._hold_streamed_body(flow, state, match, rules, heads=False)

    def _unjudged_call(self, flow: http.HTTPFlow) -> bool:
        """A live call no check answered, whose host's payload inspection is off."""
        if flow.response or flow.error or not flow.live:
            return False
        state = self.connections.of(flow.client_conn)
        return state is not None

    def _stream_grpc_call(self, flow: http.HTTPFlow, state: ConnState, match: Match, rules: PayloadRules) -> None:
        """A gRPC call streams from its headers on, each message held until judged (`tlsgate.addons.grpc_stream`):
        a bidirectional call gets its answers while it still sends. Its URL and headers are judged first; refused,
        the call is answered with its gRPC status at once (a bidirectional call would otherwise wait for its
        deadline: mitmproxy answers when the body ends), and nothing of it reaches the server."""
        flow.metadata[HEADS_JUDGED] = True
        if drain(self._judge(flow, state, match, rules, heads=True, body=None, at_headers=True)):
            if flow.response is not None:
                answer_at_headers(flow)
            return
        call = GrpcCall(
            flow, rules.max_bytes, self._grpc_judge(flow, state, match, rules),
            lambda exc: refuse_unjudged(self, flow, "payload.GrpcCall", exc),
        )  # fmt: skip
        flow.metadata[TAP] = call
        flow.request.stream = call
        hold_request_body(flow, call)

    def _grpc_judge(self, flow: http.HTTPFlow, state: ConnState, match: Match, rules: PayloadRules) -> Callable[[Piece], bool]:
        """Judge one message of a streaming call (True: refused), with what every message of the call shares worked
        out once: a stream of 100,000 small messages must not pay for host matching and URL redaction each time.
        Detector memory (`BlockMemory`) is the device's, across messages as across requests: the index is folded
        out of `grpc[i].n` there, so ECB across one stream's messages is caught."""
        request = flow.request
        wants = rules.wanted()
        forms = rules.seeds.forms_for(state.device) if wants["identifiers"] and rules.seeds else []
        hidden = rules.seeds.all_forms if rules.seeds else []
        url = mask(redact.redact_url(request_url(request)), hidden)
        encoding = request.headers.get("grpc-encoding", "")
        method = request.method[:16]
        client = client_key(state)
        names: dict[str, str] = {}

        def judge(piece: Piece) -> bool:
            if not (wants["ecb"] or wants["secrets"] or wants["identifiers"]):
                return False
            if len(names) > WS_NAMES:
                names.clear()
            data = piece.message or b""
            budget = Budget()
            found = drain(
                scan_steps(
                    grpc_message_steps(piece.wire, piece.index, not piece.cut, piece.framed, budget, encoding, rules.max_bytes),
                    host=match.host,
                    namer=lambda path: shown_path(path, hidden, names if all(len(p) <= 128 for p in path) else None),
                    ecb=wants["ecb"],
                    secrets=wants["secrets"],
                    forms=forms,
                    memory=self.memory,
                    budget=budget,
                    client=client,
                )
            )
            if not (found.ecb or found.deterministic or found.unsigned_jwts or found.keys or found.identifiers):
                return False  # nothing to say: the common case, spared building facts per message
            facts = PayloadFacts(
                method=method,
                url=url,
                inspected_bytes=len(data),
                ecb=found.ecb,
                deterministic=found.deterministic,
                unsigned_jwts=found.unsigned_jwts,
                keys=found.keys,
                identifiers=found.identifiers,
                capped=sorted({*found.capped, *(("max_bytes",) if piece.length > rules.max_bytes else ())}),
                message={"index": piece.index, "type": "grpc", "bytes": piece.length},
            )
            return self._verdict(flow, state, match, judge_payload(facts, match), at_headers=True)

        return judge

    def _hold_streamed_body(self, flow: http.HTTPFlow, state: ConnState, match: Match, rules: PayloadRules, heads: bool) -> None:
        """The body's first `max_bytes` are held from the server until judged (with the URL and headers when
        `heads`: not judged yet), if mitmproxy streams it: by its Content-Length from the first byte (`stream` is
        already True), or, chunked or length-less, once it has buffered past its threshold (`StreamWindow`)."""
        request = flow.request
        if request.stream is not True and request.stream is not False:
            return  # another add-on's stream callable (gRPC, ...) has this body
        if request.headers.get("content-type", "").lower().startswith("application/grpc"):
            return  # a bidirectional call may wait for answers mid-body: holding its messages could stall it
        length = request.headers.get("content-length", "")
        known = int(length) if length.isascii() and length.isdigit() else None
        encoded = bool(request.headers.get("content-encoding", "").strip())  # its length says nothing of the decoded size
        wanted = min(rules.max_bytes, known) if known is not None and not encoded else rules.max_bytes

        def judge(window: HeldWindow, capped: list[str]) -> Steps[bool]:
            total = window.total if window.ended else known
            body = (window.data, window.complete, total, False)  # held: still refusable
            return self._judge(flow, state, match, rules, heads, body, True, capped)

        encoding = request.headers.get("content-encoding", "")
        held = StreamWindow(flow, self, wanted, judge, self.holdings, encoding)
        flow.metadata[TAP] = held
        if request.stream is True:
            request.stream = held
        hold_request_body(flow, held)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Everything not judged yet; a buffered body is judged before any byte of it goes upstream.

        A scan that outlasts one slice finishes as a coroutine mitmproxy awaits (the request is held meanwhile)."""
        heads_judged = bool(flow.metadata.pop(HEADS_JUDGED, False))
        tap = flow.metadata.pop(TAP, None)
        context = self._context(flow)
        if context is None:
            return None
        state, match, rules = context
        return stepped(self._request_steps(flow, state, match, rules, heads_judged, tap), "request")

    def _request_steps(
        self, flow: http.HTTPFlow, state: ConnState, match: Match, rules: PayloadRules, heads_judged: bool, tap: object
    ) -> Steps[bool]:
        capped: list[str] = []
        held = 0
        try:
            if isinstance(tap, GrpcCall):
                yield from tap.ending()  # judged message by message as they passed; a message cut by the end, now
                return False
            if isinstance(tap, StreamWindow) and tap.used:
                yield from tap.ending()  # judged as it passed, or now, in slices, while its end waits
                return False  # a refusal cuts it (`mitm_internals.hold_request_body`): there is nothing to answer
            body: tuple[bytes | bytearray, bool, int | None, bool] | None
            if flow.request.stream:
                body = (b"", True, None, True)  # streamed unheld (a gRPC call past 1 MiB): judged at its headers only
            else:
                raw = flow.request.raw_content or b""
                encoding = flow.request.headers.get("content-encoding", "")
                limit = rules.max_bytes
                if encoding and len(raw) < limit:  # an inflated body is held beside the raw one: within `holdings`
                    held = limit = self.holdings.reserve(limit)
                data, complete = yield from inflate_steps(raw, encoding, limit)
                if limit < rules.max_bytes and not complete:
                    capped.append("held_bytes")
                body = (data, complete, len(raw), False)
            return (yield from self._judge(flow, state, match, rules, not heads_judged, body, False, capped))
        finally:
            self.holdings.release(held)

    def _context(self, flow: http.HTTPFlow) -> tuple[ConnState, Match, PayloadRules] | None:
        if flow.response or flow.error or not flow.live or flow.request.method == "CONNECT":
            return None
        state = self.connections.of(flow.client_conn)
        if state is None:
            return None
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        rules = rules_of(match)
        self._mask_seeded(rules)
        return None if rules.off else (state, match, rules)

    def _mask_seeded(self, rules: PayloadRules) -> None:
        """Before mitmproxy's flow line for this request is printed, the console knows what to hide."""
        if rules.seeds is None or rules.seeds is self._masked:
            return
        self._masked = rules.seeds
        redact.mask_seeded(form.needle for form in rules.seeds.all_forms)

    def _judge(
        self,
        flow: http.HTTPFlow,
        state: ConnState,
        match: Match,
        rules: PayloadRules,
        heads: bool,
        body: tuple[bytes | bytearray, bool, int | None, bool] | None,
        at_headers: bool,
        capped: list[str] | None = None,
    ) -> Steps[bool]:
        """Record what the request shows; True when it was refused. Steps: see `tlsgate.payload.bounds`."""
        request = flow.request
        wants = rules.wanted()
        forms = rules.seeds.forms_for(state.device) if wants["identifiers"] and rules.seeds else []
        hidden = rules.seeds.all_forms if rules.seeds else []  # masked in names and URLs even where not searched for
        url = request_url(request)
        budget = Budget()
        fields: list[Field] = []
        if heads:
            fields += url_fields(url) + header_fields(request.headers.items(multi=True))
        data, complete, total, streamed = body if body is not None else (b"", True, None, False)
        if not fields and not data:
            return False
        names: dict[str, str] = {}  # field names repeat (event batches): each is vetted once per request
        found = yield from scan_steps(
            itertools.chain(fields, _body_steps(request, data, complete, budget, rules.max_bytes)),
            host=match.host,
            namer=lambda path: shown_path(path, hidden, names),
            ecb=wants["ecb"],
            secrets=wants["secrets"],
            forms=forms,
            memory=self.memory,
            budget=budget,
            client=client_key(state),
            body_bytes=total if not request.headers.get("content-encoding") else None,
        )
        credentials: list[dict[str, str]] = []
        basic = False
        keys = found.keys
        if heads and wants["secrets"]:
            exempt = exempt_params(url)
            keys = without_exempt_keys(keys, exempt)
            credentials = [
                {"kind": c.kind, "name": shown_name(c.name, hidden)}
                for c in redact.dedupe(redact.url_credentials(url))
                if c.name.lower() not in exempt
            ]
            basic = match.rule is None and any(
                v.strip().lower().startswith("basic ") for v in request.headers.get_all("authorization")
            )
        facts = PayloadFacts(
            method=request.method[:16],
            url=mask(redact.redact_url(url), hidden),
            streamed=streamed and body is not None,
            inspected_bytes=len(data),
            body_bytes=total,
            ecb=found.ecb,
            deterministic=found.deterministic,
            url_credentials=credentials,
            unsigned_jwts=found.unsigned_jwts,
            basic_auth=basic,
            keys=keys,
            identifiers=found.identifiers,
            capped=sorted({*found.capped, *(capped or ())}),
        )
        return self._verdict(flow, state, match, judge_payload(facts, match), at_headers)

    def _verdict(self, flow: http.HTTPFlow, state: ConnState, match: Match, issues: list[Issue], at_headers: bool) -> bool:
        refused = self._record(flow, state, match, issues, mark_reported=True)
        if refused is None:
            return False
        if at_headers:
            block_at_headers(flow, refused)
        else:
            block(flow, refused)
        return True

    def _record(
        self, flow: http.HTTPFlow, state: ConnState, match: Match, issues: list[Issue], mark_reported: bool
    ) -> Finding | None:
        """Record each issue (a reported one once per device, host, kind and detail, then counted: `Repeats`; a block
        every time, since each must say why); the first blocking finding, None when nothing blocks. With
        `mark_reported`, the first reported finding marks an HTTP flow nothing blocked."""
        refused = None
        for issue in issues:
            action = decide(issue, match.settings.mode)
            key = _said_key(state, match, issue) if action is not Action.BLOCKED else None  # a block is said every time
            finding = record_once(self.sink, key, state, flow.client_conn, issue, match, flow.request.port)
            if finding is None:
                continue  # said before for this device, host, kind and detail: counted (`Repeats`)
            if action is Action.BLOCKED and refused is None:
                refused = finding
            elif mark_reported and verdict_of(flow) is None:
                mark(flow, finding)
        return refused

    # -- responses ----------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A streaming call's answer streams as it comes (a bidirectional call's answers while the app still sends),
        its message boundaries noted, so a message refused later can end it with a gRPC status."""
        call = flow.request.stream
        if isinstance(call, GrpcCall) and flow.response is not None:
            flow.response.stream = call.response

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """ECB in what the server sends back: recorded, never blocked (the request already reached it)."""
        return stepped(self._guarded_response(flow), "response")

    def _guarded_response(self, flow: http.HTTPFlow) -> Steps[None]:
        try:
            yield from self._response(flow)
        except Exception:  # noqa: BLE001 - a failed look at a response must not break it; it was never a verdict
            logger.exception("tlsgate: inspecting a response for ECB failed; the response is passed unjudged")

    def _response(self, flow: http.HTTPFlow) -> Steps[None]:
        response = flow.response
        if response is None or response.stream or not response.raw_content:
            return
        if (verdict := verdict_of(flow)) is not None and verdict.action == "blocked":
            return  # tlsgate's own block page
        state = self.connections.peek(flow.client_conn)
        if state is None:
            return
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        rules = rules_of(match)
        if rules.action("ecb") is PayloadAction.IGNORE:
            return
        raw = response.raw_content
        encoding = response.headers.get("content-encoding", "")
        held = self.holdings.reserve(rules.max_bytes) if encoding and len(raw) < rules.max_bytes else 0
        try:
            data, complete = yield from inflate_steps(raw, encoding, held or rules.max_bytes)
            budget = Budget()
            hidden = rules.seeds.all_forms if rules.seeds else []
            found = yield from scan_steps(
                _body_steps(response, data, complete, budget, rules.max_bytes),
                host=match.host,
                namer=lambda path: shown_path(path, hidden),
                secrets=False,
                budget=budget,
            )
        finally:
            self.holdings.release(held)
        if not found.ecb:
            return
        facts = PayloadFacts(
            method=flow.request.method[:16],
            url=mask(redact.redact_url(request_url(flow.request)), hidden),
            direction="response",
            streamed=True,  # the exchange has happened: recorded only
            inspected_bytes=len(data),
            body_bytes=len(raw),
            ecb=found.ecb,
            capped=found.capped,
        )
        for issue in judge_payload(facts, match):
            record_once(self.sink, _said_key(state, match, issue), state, flow.client_conn, issue, match, flow.request.port)

    # -- WebSocket messages -------------------------------------------------------------------------

    def load(self, loader: object) -> None:
        close_websockets_on_request()  # so a blocked message can end its connection with a close code

    @fail_closed_message
    def websocket_message(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Every message, either way, judged like a request body before mitmproxy relays it (it waits for this
        hook, and for the coroutine a long scan hands it): the first `max_bytes` bytes of the reassembled message.

        What the app sends can be blocked: the message is held back and both sides get a 1008 close naming the
        rule. What the server sends is recorded: it has been sent, and what must change is the crypto of both.
        """
        if flow.websocket is None or not flow.websocket.messages:
            return None
        message = flow.websocket.messages[-1]
        if message.injected:
            return None  # written by the tester (`inject.websocket`), not by the app
        conn = self._ws_connection(flow)
        if conn is None or conn.rules.off:
            return None
        index = conn.messages
        conn.messages += 1
        if not _captured():
            del flow.websocket.messages[:-1]  # nothing reads past messages back: memory per connection stays flat
        return stepped(self._message_steps(flow, message, index, conn), "websocket message")

    def _ws_connection(self, flow: http.HTTPFlow) -> WsConnection | None:
        """What every message of one connection shares, worked out once per connection (and again after a policy
        reload): a flood of small messages must not pay for host matching and URL redaction each time."""
        policy = self.connections.store.policy
        conn = self._ws.get(flow)
        if conn is not None and conn.policy is policy:
            return conn
        state = self.connections.of(flow.client_conn)
        if state is None:
            return None
        match = state.match_for(request_host(flow.request), policy)
        rules = rules_of(match)
        self._mask_seeded(rules)
        hidden = rules.seeds.all_forms if rules.seeds else []
        url = mask(redact.redact_url(request_url(flow.request)), hidden)
        counted = conn.messages if conn is not None else len(flow.websocket.messages) - 1 if flow.websocket else 0
        conn = self._ws[flow] = WsConnection(policy, state, match, rules, hidden, url, counted)
        return conn

    def _message_steps(self, flow: http.HTTPFlow, message: WebSocketMessage, index: int, conn: WsConnection) -> Steps[None]:
        state, match, rules, hidden = conn.state, conn.match, conn.rules, conn.hidden
        to_server = message.from_client
        wants = rules.wanted()
        if not (wants["ecb"] or wants["secrets"] or wants["identifiers"]):
            return
        forms = rules.seeds.forms_for(state.device) if to_server and wants["identifiers"] and rules.seeds else []
        content = message.content
        complete = len(content) <= rules.max_bytes
        data = content if complete else content[: rules.max_bytes]
        budget = Budget()
        if len(conn.names) > WS_NAMES:
            conn.names.clear()
        names = conn.names

        def namer(path: tuple[str, ...]) -> str:  # only short names are kept: a hostile key must not grow the cache
            return shown_path(path, hidden, names if all(len(part) <= 128 for part in path) else None)

        found = yield from scan_steps(
            message_field_steps(data, message.is_text, complete, budget),
            # what the server sends is remembered apart: its values are compared with its own, not the app's
            host=match.host if to_server else f"{match.host} (from the server)",
            namer=namer,
            ecb=wants["ecb"],
            secrets=wants["secrets"],
            forms=forms,
            memory=self.memory,
            budget=budget,
            client=client_key(state),
            body_bytes=len(content),
        )
        facts = PayloadFacts(
            method="WEBSOCKET",
            url=conn.url,
            direction=TO_SERVER if to_server else TO_APP,
            inspected_bytes=len(data),
            body_bytes=len(content),
            ecb=found.ecb,
            deterministic=found.deterministic,
            unsigned_jwts=found.unsigned_jwts,
            keys=found.keys,
            identifiers=found.identifiers,
            capped=sorted({*found.capped, *(() if complete else ("max_bytes",))}),
            message={"index": index, "type": "text" if message.is_text else "binary", "bytes": len(content)},
        )
        refused = self._record(flow, state, match, judge_payload(facts, match), mark_reported=False)
        if refused is not None:
            reason = close_reason(str(refused.evidence.get("kind", "payload")), refused.rule or "the defaults")
            block_message(flow, refused, POLICY_VIOLATION, reason)


def _streaming_call(request: http.Request) -> bool:
    """A gRPC call over HTTP/2 or 3 (gRPC-Web is unary or server-streaming: its body is buffered and judged whole)."""
    return (
        request.method == "POST"
        and request.http_version.startswith(("HTTP/2", "HTTP/3"))
        and grpc_call(request.headers.get("content-type", "")) == "grpc"
    )


def _captured() -> bool:
    """Whether a capture (`--set save_stream_file=` or `hardump=`) will write each WebSocket message at the end."""
    return any(getattr(ctx.options, name, None) for name in ("save_stream_file", "hardump"))


def _body_steps(
    message: http.Message, data: bytes | bytearray, complete: bool, budget: Budget, limit: int
) -> Iterator[Field | None]:
    """A body's fields by its content type; a gRPC body's messages decompressed by its `grpc-encoding`."""
    ctype, encoding = message.headers.get("content-type", ""), message.headers.get("grpc-encoding", "")
    return body_field_steps(ctype, data, complete, budget, encoding, limit)


_MESSAGE_INDEX = re.compile(r"grpc\[\d+\]")


def _said_key(state: ConnState, match: Match, issue: Issue) -> tuple[str, ...]:
    """A habit is said once: the same field of every message of a gRPC stream (`grpc[i].4`) is one field."""
    return ("payload", state.device or "", match.host, issue.kind, _MESSAGE_INDEX.sub("grpc[]", issue.detail))


def client_key(state: ConnState) -> str:
    """Whose values are compared with each other: the device, else the client's address (a device farm's phones
    each have their own device IDs and keys in front of their ciphertext)."""
    if state.device:
        return state.device
    peer = state.client.peername
    return str(peer[0]) if peer else ""


def shown_name(name: str, forms: list[Form]) -> str:
    """A field name as findings may show it: names that could be secrets or identifiers themselves are withheld."""
    if not redact.PLAIN_NAME.fullmatch(name) or redact.looks_like_token(name) or redact.TOKEN_SEGMENT.fullmatch(name):
        return redact.REDACTED
    return mask(name, forms) if forms else name


def shown_path(path: tuple[str, ...], forms: list[Form], cache: dict[str, str] | None = None) -> str:
    if cache is None:
        return ".".join(shown_name(part, forms) for part in path)[:200]
    parts = []
    for part in path:
        shown = cache.get(part)
        if shown is None:
            shown = cache[part] = shown_name(part, forms)
        parts.append(shown)
    return ".".join(parts)[:200]
