"""Refuses (400) requests with ambiguous header fields before anything else reads them (see tlsgate.checks.request)."""

from __future__ import annotations

from mitmproxy import http

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.state import Connections, request_host
from tlsgate.addons.verdicts import block_at_headers, fail_closed, record
from tlsgate.checks.request import judge_header_fields


class RequestHygiene:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        state = self.connections.of(flow.client_conn)
        if state is None:
            return
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        issue = judge_header_fields(flow.request.headers.fields, match)
        if issue is None:
            return
        block_at_headers(flow, record(self.sink, state, flow.client_conn, issue, match, flow.request.port), status=400)
