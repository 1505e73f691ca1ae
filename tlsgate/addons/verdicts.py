"""The one place add-ons turn an issue into a finding, a flow mark and, when blocked, a block response.

Keeping this shared means every check reports the same fields and every block
page names check, host, rule and remedy the same way.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from mitmproxy import connection, http, version

from tlsgate import __version__
from tlsgate.addons import mitm_internals
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.state import ConnState
from tlsgate.checks.fallback import Trigger, is_trigger, request_key
from tlsgate.checks.model import Action, Check, Effect, Issue, Severity, decide
from tlsgate.policy import Match
from tlsgate.sinks.blockpage import (
    DEADLINE_EXCEEDED,
    PERMISSION_DENIED,
    UNAVAILABLE,
    Block,
    grpc_answer,
    render,
)
from tlsgate.sinks.findings import Finding
from tlsgate.tls import mastg
from tlsgate.tls.grpc_calls import grpc_call


def client_label(client: connection.Client | None) -> str | None:
    if client is None or not client.peername:
        return None
    host, port = client.peername[0], client.peername[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def record(
    sink: FindingsSink,
    state: ConnState | None,
    client: connection.Client | None,
    issue: Issue,
    match: Match,
    port: int | None,
    evidence: dict[str, Any] | None = None,
    remedy: str | None = None,
    device: str | None = None,
    address: str | None = None,
) -> Finding:
    """Record `issue` against the rule that matched the host (or the defaults block), decided by the host's mode.

    Every finding passes here, so this is where it is stamped with the MASTG tests and MASVS controls it
    evidences (tlsgate/tls/mastg.py): one table, read by the findings file, the reports and the gate alike.
    """
    action = str(decide(issue, match.settings.mode))
    evidence = {"kind": issue.kind, **issue.evidence} if evidence is None else evidence
    evidenced = mastg.refs(str(issue.check), issue.kind, evidence, action)
    finding = Finding(
        check=str(issue.check),
        action=action,
        severity=str(issue.severity),
        host=match.host,
        port=port,
        client=client_label(client) or address,  # `device`/`address`: a finding about a device, not a connection
        device=state.device if state is not None else device,
        rule=match.rule_ref,
        detail=issue.detail,
        remedy=issue.remedy if remedy is None else remedy,
        evidence=evidence,
        mastg=evidenced.as_dict() if evidenced else None,
    )
    sink.record(finding)
    _tls_event(sink, state, client, match, finding)
    return finding


def _tls_event(
    sink: FindingsSink, state: ConnState | None, client: connection.Client | None, match: Match, finding: Finding
) -> None:
    """A failed, refused or blocked TLS connection is remembered for the device: a plain http:// retry of it is an
    insecure fallback (`tlsgate.checks.fallback`). Only connections on which the client spoke TLS count."""
    if state is None or client is None or not client.tls or not is_trigger(finding.check, finding.action):
        return
    who = state.who
    if who is None:
        return
    sent = finding.evidence.get("sent") if isinstance(finding.evidence, dict) else None
    request = None
    if isinstance(sent, dict) and isinstance(sent.get("method"), str) and isinstance(sent.get("url"), str):
        request = request_key(sent["method"], sent["url"])
    kind = finding.evidence.get("kind") if isinstance(finding.evidence, dict) else None
    trigger = Trigger(
        finding.check,
        kind if isinstance(kind, str) else "",
        finding.action,
        sink.fallback.clock(),
        finding.time,
        finding.client,
        finding.port,
        request,
    )
    sink.fallback.tls_event(who, match.host, trigger)


def record_once(
    sink: FindingsSink,
    key: Hashable | None,
    state: ConnState | None,
    client: connection.Client | None,
    issue: Issue,
    match: Match,
    port: int | None,
    evidence: dict[str, Any] | None = None,
    remedy: str | None = None,
) -> Finding | None:
    """`record`, once per `key`: later occurrences are counted against the first finding (`Repeats`), None returned.

    For a standing problem (the app's TLS stack, a server, a payload habit) that
    every connection or request shows again. `key` None records every time.
    """
    if key is not None and sink.repeats.again(key):
        return None
    finding = record(sink, state, client, issue, match, port, evidence, remedy)
    if key is not None:
        sink.repeats.first(key, finding)
    return finding


# The verdict each flow was last marked with: what add-ons ask (`verdict_of`) instead of reading metadata back.
_VERDICTS: weakref.WeakKeyDictionary[http.HTTPFlow, Finding] = weakref.WeakKeyDictionary()


def mark(flow: http.HTTPFlow, finding: Finding) -> None:
    """Tie the verdict to this flow, and show it to mitmproxy's own tools (metadata, mark, comment)."""
    _VERDICTS[flow] = finding
    flow.metadata["tlsgate"] = {"check": finding.check, "action": finding.action, "rule": finding.rule}
    # mitmweb's flow list shows marks and comments, not metadata: say why there too.
    flow.marked = FLOW_MARKS.get(finding.action, flow.marked)
    note = f"tlsgate {finding.action}: {finding.check} ({finding.rule}): {finding.detail}"
    flow.comment = "\n".join(filter(None, (flow.comment, note)))[-2000:]


def verdict_of(flow: http.HTTPFlow) -> Finding | None:
    """The finding this flow was last marked with, None when no check objected.

    Read from the record itself, not from `flow.metadata`, which is there for
    people and scripts and which any script may change.
    """
    return _VERDICTS.get(flow)


def answered(flow: http.HTTPFlow) -> bool:
    """Whether tlsgate answered this flow itself (a block or a fault); a reported verdict still forwards."""
    finding = verdict_of(flow)
    return finding is not None and finding.action in (Action.BLOCKED, Action.FAILED)


FLOW_MARKS: dict[str, str] = {Action.BLOCKED: ":no_entry:", Action.FAILED: ":warning:", Action.REPORTED: ":eyes:"}


def block(flow: http.HTTPFlow, finding: Finding) -> None:
    """Answer the request here: it never reaches the upstream."""
    mark(flow, finding)
    flow.response = answer_for(finding, flow.request)


BODY_SAMPLE = 65536  # the most of a body any check reads (redact.body_credentials)


def body_may_stream(request: http.Request) -> bool:
    """Whether mitmproxy may stream this request's body upstream before the `request` hook runs.

    mitmproxy streams a body above `stream_large_bodies` (tlsgate sets 1 MiB),
    deciding from Content-Length at the headers or, for a chunked body, once
    the buffered part passes the limit; the `request` hook only runs after a
    streamed body was sent. Such a request must be decided at its headers.
    """
    if request.stream:
        return True
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit():
        return int(length) > BODY_SAMPLE
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def block_at_headers(flow: http.HTTPFlow, finding: Finding, status: int | None = None) -> None:
    """Refuse from a `requestheaders`/`http_connect` hook without reading the body.

    mitmproxy cannot answer before reading a body it might stream (setting a
    response on a streamed request raises inside its HTTP layer), so such a
    request is refused by closing the connection; the finding says why.
    """
    if flow.request.method != "CONNECT" and body_may_stream(flow.request):
        mark(flow, finding)
        flow.kill()
        return
    block(flow, finding)
    if status is not None and flow.response is not None:
        flow.response.status_code = status


def apply(flow: http.HTTPFlow, finding: Finding) -> None:
    """Mark the flow, and answer it with the block page when the finding blocked (or the upstream failed)."""
    if finding.action in (Action.BLOCKED, Action.FAILED):
        block(flow, finding)
    else:
        mark(flow, finding)


def answer_for(finding: Finding, request: http.Request) -> http.Response:
    """tlsgate's answer to `request`: by its Accept header (HTML, JSON) or, for a gRPC call, its content type."""
    return block_response(finding, request.headers.get("accept", ""), request.headers.get("content-type", ""))


UNJUDGED = b"refused by tlsgate: a check failed (see the proxy log)\n"  # the answer when even the finding failed


def refusal_of(flow: http.HTTPFlow) -> http.Response:
    """The answer to a flow a held body's gate refused: the answer for its finding, a bare 403 when there is none."""
    finding = verdict_of(flow)
    return http.Response.make(403, UNJUDGED) if finding is None else answer_for(finding, flow.request)


def block_response(finding: Finding, accept: str, content_type: str = "") -> http.Response:
    """The block page, or for a gRPC call (by the request's `content_type`) a gRPC status its client can read."""
    page = Block(finding.check, finding.host, finding.rule, finding.detail, finding.remedy, finding.evidence)
    server = {"Server": f"tlsgate/{__version__} ({version.MITMPROXY})", **page.headers()}
    call = grpc_call(content_type)
    if call is not None:
        answer = grpc_answer(page, call, grpc_status_for(finding))
        response = http.Response.make(200, answer.body, {**answer.headers, **server})
        if not answer.body:
            del response.headers["content-length"]  # trailers-only: HEADERS with END_STREAM, no DATA
        return response
    body, content_type = render(page, accept)
    headers = {"Content-Type": content_type, **server}
    return http.Response.make(status_for(finding), body, headers)


def grpc_status_for(finding: Finding) -> int:
    """PERMISSION_DENIED for a verdict; a network fault is UNAVAILABLE (DEADLINE_EXCEEDED on a timeout), as 502/504."""
    if finding.action != Action.FAILED:
        return PERMISSION_DENIED
    return DEADLINE_EXCEEDED if finding.evidence.get("kind") == "timeout" else UNAVAILABLE


def status_for(finding: Finding) -> int:
    """403 for a verdict; a network fault is the gateway's failure, as mitmdump says it (502, 504 on a timeout),
    so apps do not take it for an authorisation error and the blocks alert does not fire on network trouble."""
    if finding.action != Action.FAILED:
        return 403
    return 504 if finding.evidence.get("kind") == "timeout" else 502


logger = logging.getLogger("tlsgate.verdicts")
HTTP_VERDICT_HOOKS = ("http_connect", "requestheaders", "request")


def fail_closed(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an HTTP verdict hook so an exception inside it blocks the request instead of letting it through.

    mitmproxy logs an add-on's exception and carries on, which for a verdict
    hook means forwarding a request the policy may block (a 0xff byte in a
    Host header once did exactly that). Every HTTP verdict hook wears this;
    a contract test checks it.
    """
    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def guarded_async(addon: Any, flow: http.HTTPFlow) -> None:
            try:
                await hook(addon, flow)
            except Exception as exc:  # noqa: BLE001 - the point of the wrapper
                refuse_unjudged(addon, flow, hook.__qualname__, exc)

        guarded_async.tlsgate_fail_closed = True  # type: ignore[attr-defined]
        return guarded_async

    return _guarded(hook, refuse_unjudged)


Refuse = Callable[[Any, http.HTTPFlow, str, Exception], None]


def _guarded(hook: Callable[..., Any], refuse: Refuse) -> Callable[..., Any]:
    """`hook` with any exception, now or in the awaitable it returns, turned into `refuse` (one wrapper for the
    HTTP hooks and the WebSocket message hook: only what refusing means differs)."""

    @functools.wraps(hook)
    def guarded(addon: Any, flow: http.HTTPFlow) -> Any:
        try:
            result = hook(addon, flow)
        except Exception as exc:  # noqa: BLE001 - the point of the wrapper
            refuse(addon, flow, hook.__qualname__, exc)
            return None
        if inspect.isawaitable(result):  # judged now when that is quick, else finished later (mitmproxy awaits it)
            return _guard_awaitable(addon, flow, hook.__qualname__, result, refuse)
        return result

    guarded.tlsgate_fail_closed = True  # type: ignore[attr-defined]
    return guarded


async def _guard_awaitable(addon: Any, flow: http.HTTPFlow, where: str, pending: Any, refuse: Refuse) -> None:
    try:
        await pending
    except Exception as exc:  # noqa: BLE001 - the point of the wrapper
        refuse(addon, flow, where, exc)


def _check_failed(what: str, where: str, exc: Exception, done: str) -> Issue:
    return Issue(
        Check.REQUEST,
        "check_failed",
        Effect.ALWAYS,
        Severity.HIGH,
        f"tlsgate could not judge {what} ({where}: {type(exc).__name__}); {done}",
        {"where": where, "error": type(exc).__name__},
        "report this as a tlsgate bug, with the log line above",
    )


def _record_on(addon: Any, flow: http.HTTPFlow, issue: Issue) -> Finding:
    """Record `issue` under the flow's policy match; raises when there is none (the caller still refuses)."""
    state = addon.connections.of(flow.client_conn)
    host = flow.request.pretty_host.encode("ascii", "backslashreplace").decode()[:255]
    match = state.policy.match(host) if state is not None else None
    if state is None or match is None:
        raise LookupError("no policy state")
    return record(addon.sink, state, flow.client_conn, issue, match, flow.request.port)


def refuse_unjudged(addon: Any, flow: http.HTTPFlow, where: str, exc: Exception) -> None:
    """Block `flow` because a check raised: with a finding when one can be built, with a bare 403 otherwise."""
    logger.error(f"tlsgate: {where} failed ({type(exc).__name__}); the request is refused, not forwarded", exc_info=exc)
    issue = _check_failed("this request", where, exc, "it was refused, not forwarded")
    try:
        block_at_headers(flow, _record_on(addon, flow, issue))
    except Exception:  # noqa: BLE001 - even the finding failed: still refuse
        logger.exception("tlsgate: could not record the refusal; refusing without a finding")
        try:
            if body_may_stream(flow.request):
                flow.kill()
            else:
                flow.response = http.Response.make(403, UNJUDGED)
        except Exception:  # noqa: BLE001
            flow.kill()


# -- WebSocket messages ----------------------------------------------------------------------------------------

WEBSOCKET_INTERNAL_ERROR = 1011  # RFC 6455 7.4.1: "an unexpected condition prevented it from fulfilling the request"


def block_message(flow: http.HTTPFlow, finding: Finding, code: int, reason: str) -> None:
    """Hold back the WebSocket message the `websocket_message` hook is looking at, and close both sides with
    `code` and `reason` before anything else on the connection is relayed."""
    assert flow.websocket is not None
    flow.websocket.messages[-1].drop()
    mark(flow, finding)
    mitm_internals.close_websocket(flow, code, reason)


def fail_closed_message(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`fail_closed` for the `websocket_message` hook: an exception while judging a message holds it back and
    closes the connection (1011), with a `check_failed` finding when one can be built."""
    return _guarded(hook, refuse_message)


def refuse_message(addon: Any, flow: http.HTTPFlow, where: str, exc: Exception) -> None:
    logger.error(f"tlsgate: {where} failed ({type(exc).__name__}); the message is held back, the WebSocket closed", exc_info=exc)
    reason = f"tlsgate could not judge a message ({type(exc).__name__}): see its log"[:123]
    issue = _check_failed("a WebSocket message", where, exc, "it was held back and the connection closed")
    try:
        block_message(flow, _record_on(addon, flow, issue), WEBSOCKET_INTERNAL_ERROR, reason)
    except Exception:  # noqa: BLE001 - even the finding failed: still hold the message back and close
        logger.exception("tlsgate: could not record the refusal; closing without a finding")
        if flow.websocket is not None and flow.websocket.messages:
            flow.websocket.messages[-1].drop()
        mitm_internals.close_websocket(flow, WEBSOCKET_INTERNAL_ERROR, reason)


# -- counted, not written ---------------------------------------------------------------------------
# Decisions that are not findings (an allowed connection has none) still go through the recording path,
# so the sinks behind it are wired in one place (`FindingsSink.metrics`) and no add-on holds `Metrics`.


def upstream_decided(sink: FindingsSink, block: Finding | None, issues: Sequence[Issue] = (), transport: str = "tcp") -> None:
    """An upstream connection's verdict: the blocking finding's action and check, else reported or allowed."""
    if sink.metrics is None:
        return
    objection = block.check if block else next((str(i.check) for i in issues), None)
    decision = block.action if block else "reported" if issues else "allowed"
    sink.metrics.upstream_connection(decision, objection, transport)


def pin_set_checked(sink: FindingsSink, issues: Sequence[Issue]) -> None:
    """A chain held to a pin set: mismatch, expired (the pin set), or match."""
    if sink.metrics is None:
        return
    kinds = {i.kind for i in issues}
    sink.metrics.pin_check("mismatch" if "pin_mismatch" in kinds else "expired" if "pin_set_expired" in kinds else "match")


def chain_seen(sink: FindingsSink, host_pattern: str | None, not_after: Iterable[float]) -> None:
    """The earliest expiry in an upstream chain, for a host pattern the policy names."""
    if sink.metrics is not None:
        sink.metrics.certificate_expiry(host_pattern, not_after)


def quic_decided(sink: FindingsSink, decision: str) -> None:
    """A QUIC connection refused, inspected or reported (its finding is written once per client and host)."""
    if sink.metrics is not None:
        sink.metrics.quic_connection(decision)


def error_contained(sink: FindingsSink, where: str) -> None:
    """An exception tlsgate contained instead of letting it become a traceback (connection, accept, asyncio)."""
    if sink.metrics is not None:
        sink.metrics.internal_error(where)
