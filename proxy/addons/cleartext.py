"""Blocks (or reports) plain http:// and ws:// requests by policy.

The request hook runs before mitmproxy opens any upstream connection for the
request, so answering here means not one byte reaches the server.
"""

from __future__ import annotations

from mitmproxy import http

from proxy.addons.findings import FindingsSink
from proxy.addons.state import Connections, request_host
from proxy.addons.verdicts import apply, record
from proxy.checks.cleartext import CleartextRequest, judge_cleartext
from proxy.sinks import redact


def credentials_in(request: http.Request) -> list[redact.Credential]:
    found = redact.header_credentials(request.headers.items(multi=True))
    found += redact.url_credentials(request.url)
    if request.raw_content:
        found += redact.body_credentials(request.headers.get("content-type", ""), request.raw_content)
    return redact.dedupe(found)


class CleartextGuard:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.request.scheme != "http" or flow.request.method == "CONNECT":
            return
        state = self.connections.of(flow.client_conn)
        if state is None:
            return
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        facts = CleartextRequest(
            method=flow.request.method,
            websocket=flow.request.headers.get("upgrade", "").lower() == "websocket",
            redacted_url=redact.redact_url(flow.request.url),
            credentials=[c.as_dict() for c in credentials_in(flow.request)],
            user_agent=flow.request.headers.get("user-agent", ""),
        )
        issue = judge_cleartext(facts, match)
        if issue is None:
            return
        finding = record(self.sink, state, flow.client_conn, issue, match, flow.request.port, evidence=issue.evidence)
        apply(flow, finding)
