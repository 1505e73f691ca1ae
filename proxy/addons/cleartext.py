"""Blocks (or reports) plain http:// and ws:// requests by policy.

The request hook runs before mitmproxy opens any upstream connection for the
request, so answering here means not one byte reaches the server.
"""

from __future__ import annotations

from mitmproxy import http

from proxy import redact
from proxy.addons.findings import FindingsSink
from proxy.addons.policy import PolicyStore
from proxy.addons.verdicts import block_response, enforced, remedy_for, report, request_host
from proxy.policy import Cleartext


def credentials_in(request: http.Request) -> list[redact.Credential]:
    found = redact.header_credentials(request.headers.items(multi=True))
    found += redact.url_credentials(request.url)
    if request.raw_content:
        found += redact.body_credentials(request.headers.get("content-type", ""), request.raw_content)
    return redact.dedupe(found)


class CleartextGuard:
    def __init__(self, store: PolicyStore, sink: FindingsSink) -> None:
        self.store = store
        self.sink = sink

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.request.scheme != "http" or flow.request.method == "CONNECT":
            return
        policy = self.store.policy
        if policy is None:
            return
        match = policy.match(request_host(flow.request))
        if match.settings.cleartext is Cleartext.ALLOW:
            return
        websocket = flow.request.headers.get("upgrade", "").lower() == "websocket"
        scheme = "ws" if websocket else "http"
        creds = credentials_in(flow.request)
        detail = f"plain {scheme}:// request to {match.host} ({flow.request.method})"
        if creds:
            detail += f" carrying credentials in cleartext: {', '.join(sorted({c.kind for c in creds}))}"
        finding = report(
            self.sink,
            policy,
            flow.client_conn,
            check="cleartext",
            match=match,
            port=flow.request.port,
            severity="high" if creds else "medium",
            detail=detail,
            remedy=f"use {scheme}s:// in the app; or, to let this host through, {remedy_for(match, 'cleartext: allow')}",
            evidence={
                "method": flow.request.method,
                "url": redact.redact_url(flow.request.url),
                "protocol": scheme,
                "credentials": [c.as_dict() for c in creds],
                "user_agent": flow.request.headers.get("user-agent", "")[:200],
            },
        )
        flow.metadata["tlsgate"] = {"check": "cleartext", "action": finding.action, "rule": finding.rule}
        if enforced(match):
            flow.response = block_response(finding, flow.request.headers.get("accept", ""))
