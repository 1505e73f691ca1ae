"""The fallback glue under mitmproxy's test context: the recording path feeds the watch, the cleartext add-on reads it."""

from __future__ import annotations

import json
from pathlib import Path

from mitmproxy.test import tflow, tutils

from tests.addonkit import wired
from tlsgate.addons.cleartext import CleartextGuard
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.state import Connections
from tlsgate.addons.verdicts import record
from tlsgate.checks.model import Check, Effect, Issue, Severity

POLICY = "version: 1\ndevices:\n  127.0.0.1: test-phone\n"


def findings(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def refused_tls(kit, tls: bool = True) -> None:
    """A pin mismatch blocked on a TLS connection of the device to api.test, recorded the one way findings are."""
    flow = tflow.tflow()
    flow.client_conn.tls = tls
    state = kit.get(Connections).of(flow.client_conn)
    issue = Issue(Check.PIN, "pin_mismatch", Effect.ENFORCED, Severity.HIGH, "pin mismatch")
    record(kit.get(FindingsSink), state, flow.client_conn, issue, state.settle("api.test"), 443)


def plain_request(kit, url: str = "http://api.test/v1/login") -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.url = url
    kit.get(CleartextGuard).request(flow)
    return flow


def test_a_plain_retry_after_a_blocked_tls_connection_gets_a_linked_finding(tmp_path: Path) -> None:
    with wired(POLICY, tmp_path) as kit:
        refused_tls(kit)
        flow = plain_request(kit)
        assert flow.response is not None and flow.response.status_code == 403  # blocked as cleartext, as before
        checks = [(f["check"], f["evidence"]["kind"]) for f in findings(kit.findings)]
        assert checks == [("pin", "pin_mismatch"), ("cleartext", "plain_http"), ("fallback", "insecure_fallback")]
        fallback = findings(kit.findings)[-1]
        assert fallback["action"] == "blocked" and fallback["device"] == "test-phone"
        assert fallback["evidence"]["after"]["check"] == "pin" and fallback["evidence"]["after"]["port"] == 443


def test_only_tls_connections_are_events(tmp_path: Path) -> None:
    with wired(POLICY, tmp_path) as kit:
        refused_tls(kit, tls=False)
        plain_request(kit)
        assert "fallback" not in [f["check"] for f in findings(kit.findings)]


def test_an_https_request_that_got_through_clears_a_handshake_event(tmp_path: Path) -> None:
    with wired(POLICY, tmp_path) as kit:
        refused_tls(kit)
        ok = tflow.tflow(resp=tutils.tresp())
        ok.request.url = "https://api.test/v1/items"
        kit.get(CleartextGuard).response(ok)
        plain_request(kit)
        assert "fallback" not in [f["check"] for f in findings(kit.findings)]


def test_where_cleartext_is_allowed_the_retry_is_forwarded_and_reported(tmp_path: Path) -> None:
    """No false block: a host the policy lets through in the clear is not blocked because TLS failed first."""
    with wired(POLICY + "defaults:\n  cleartext: allow\n", tmp_path) as kit:
        refused_tls(kit)
        flow = plain_request(kit)
        assert flow.response is None  # forwarded, as before
        (fallback,) = [f for f in findings(kit.findings) if f["check"] == "fallback"]
        assert fallback["action"] == "reported" and fallback["evidence"]["after"]["kind"] == "pin_mismatch"
        assert flow.metadata["tlsgate"]["check"] == "fallback"  # mitmweb shows why the flow is marked
