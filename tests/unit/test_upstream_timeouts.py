"""UpstreamTimeouts' options and decisions, and the fault words in tlsgate.checks.faults (live: tests/live/test_upstream_stalls.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, exceptions, http, tls
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.test import taddons, tflow, tutils

from tlsgate.addons import make_addons
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.policy import PolicyStore
from tlsgate.addons.upstream_timeouts import FlowWatch, UpstreamTimeouts, Watch
from tlsgate.addons.verdicts import mark
from tlsgate.checks import faults
from tlsgate.checks.upstream import judge_failure
from tlsgate.policy.sections.tls import TlsRules
from tlsgate.sinks.findings import Finding

POLICY = """\
version: 1
defaults:
  mode: report
  cleartext: block
rules:
  - hosts: [legacy.test]
    cleartext: allow
"""


class Gate:
    def __init__(self, tctx: taddons.context, addons: list[object], findings_path: Path) -> None:
        self.tctx = tctx
        self.timeouts = next(a for a in addons if isinstance(a, UpstreamTimeouts))
        self.findings_path = findings_path

    def findings(self) -> list[dict[str, Any]]:
        if not self.findings_path.exists():
            return []
        return [json.loads(line) for line in self.findings_path.read_text().splitlines()]


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    addons = make_addons()
    (tmp_path / "policy.yaml").write_text(POLICY)
    with taddons.context(*addons) as tctx:
        store = next(a for a in addons if isinstance(a, PolicyStore))
        sink = next(a for a in addons if isinstance(a, FindingsSink))
        tctx.configure(store, tlsgate_policy=[str(tmp_path / "policy.yaml")])
        tctx.configure(sink, tlsgate_findings=str(tmp_path / "findings.jsonl"))
        try:
            yield Gate(tctx, addons, tmp_path / "findings.jsonl")
        finally:
            sink.done()


def flow_to(host: str, port: int = 80, scheme: str = "http") -> http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(host=host, port=port, scheme=scheme.encode(), headers=http.Headers(host=host)))
    flow.response = None
    flow.server_conn = connection.Server(address=(host, port))
    return flow


# -- options ---------------------------------------------------------------------------------------------


def test_every_clock_is_an_option_with_its_documented_default(gate: Gate) -> None:
    options = gate.tctx.options
    assert (options.tlsgate_connect_timeout, options.tlsgate_tls_handshake_timeout) == (10, 15)
    assert (options.tlsgate_response_head_timeout, options.tlsgate_response_idle_timeout) == (120, 60)
    gate.tctx.configure(gate.timeouts, tlsgate_response_head_timeout=2)
    assert gate.timeouts.timeout(faults.RESPONSE_HEAD) == 2.0


@pytest.mark.parametrize("value", [0, -1, 86401])
def test_a_clock_that_could_never_or_always_run_out_is_refused(gate: Gate, value: int) -> None:
    with pytest.raises(exceptions.OptionsError, match="tlsgate_connect_timeout must be 1 to 86400 seconds"):
        gate.tctx.configure(gate.timeouts, tlsgate_connect_timeout=value)
    assert gate.tctx.options.tlsgate_connect_timeout == 10  # rolled back
    assert gate.timeouts.timeout(faults.CONNECT) == 10.0


def test_loading_takes_over_mitmproxys_answer_to_a_broken_upstream(gate: Gate) -> None:
    assert hasattr(HttpStream.handle_protocol_error, "tlsgate_original")


# -- clocks ----------------------------------------------------------------------------------------------


def test_each_phase_arms_its_own_clock_and_the_next_phase_disarms_it(gate: Gate) -> None:
    gate.tctx.configure(gate.timeouts, tlsgate_connect_timeout=3, tlsgate_tls_handshake_timeout=4)
    gate.tctx.configure(gate.timeouts, tlsgate_response_head_timeout=5, tlsgate_response_idle_timeout=6)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        client = tflow.tclient_conn()
        server = connection.Server(address=("api.test", 443))
        data = server_hooks.ServerConnectionHookData(server, client)
        gate.timeouts.server_connect(data)
        watch = gate.timeouts.watches[server]
        assert watch.timer is not None and round(watch.timer.when() - loop.time()) == 3
        gate.timeouts.server_connected(data)
        assert watch.timer is None and watch.hooks_done
        tls_data = tls.TlsData(server, Context(client, gate.tctx.options))
        gate.timeouts.tls_start_server(tls_data)
        assert watch.timer is not None and round(watch.timer.when() - loop.time()) == 4
        gate.timeouts.tls_established_server(tls_data)
        assert watch.timer is None

        flow = flow_to("api.test", 443, "https")
        flow.server_conn = server
        gate.timeouts.request(flow)
        head = gate.timeouts.flows[flow]
        assert head.timer is not None and round(head.timer.when() - loop.time()) == 5
        flow.response = tutils.tresp()
        gate.timeouts.responseheaders(flow)
        assert head.timer is not None and round(head.timer.when() - loop.time()) == 6
        gate.timeouts.body_bytes(flow, 10)
        gate.timeouts.body_bytes(tflow.tflow(), 99)  # another flow's bytes are not this one's progress
        assert head.received == 10
        gate.timeouts.response(flow)
        assert head.timer is None and flow not in gate.timeouts.flows

    asyncio.run(scenario())
    assert gate.findings() == []


def test_a_closed_connection_leaves_nothing_behind(gate: Gate) -> None:
    """tlsgate runs for days: a watch must not keep its server (its own key) alive."""

    async def scenario() -> None:
        server = connection.Server(address=("api.test", 443))
        data = server_hooks.ServerConnectionHookData(server, tflow.tclient_conn())
        gate.timeouts.server_connect(data)
        gate.timeouts.server_connected(data)
        gate.timeouts.server_disconnected(data)
        assert len(gate.timeouts.watches) == 1
        del server, data

    asyncio.run(scenario())
    gc.collect()
    assert len(gate.timeouts.watches) == 0


@pytest.mark.parametrize("error", ["tlsgate refused: the proxy host itself", "client disconnected", "connection cancelled"])
def test_a_connect_ended_by_tlsgate_itself_or_by_the_app_leaving_is_no_fault(gate: Gate, error: str) -> None:
    server = connection.Server(address=("127.0.0.1", 80), error=error)
    gate.timeouts.server_connect_error(server_hooks.ServerConnectionHookData(server, tflow.tclient_conn()))
    assert gate.findings() == []


def test_a_failed_connect_is_one_fault_finding_and_a_connect_page_reuses_it(gate: Gate) -> None:
    client = tflow.tclient_conn()
    server = connection.Server(address=("api.test", 443), error="[Errno 111] Connect call failed ('127.0.0.1', 443)")
    gate.timeouts.server_connect_error(server_hooks.ServerConnectionHookData(server, client))
    flow = tflow.tflow(client_conn=client, server_conn=server, req=tutils.treq(method=b"CONNECT", host="api.test", port=443))
    flow.response = http.Response.make(502, b"Cannot connect to api.test:443: ...")
    gate.timeouts.http_connect_error(flow)
    assert flow.response.status_code == 502 and flow.response.headers["x-tlsgate-check"] == "fault"
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("fault", "failed", "refused")
    assert finding["evidence"]["phase"] == "connect"


def watch_for(client: connection.Client, server: connection.Server, timed_out: faults.Limit | None = None) -> Watch:
    connect, handshake = faults.Limit(faults.CONNECT, 10.0), faults.Limit(faults.TLS_HANDSHAKE, 15.0)
    return Watch(client, weakref.ref(server), connect, handshake, timed_out=timed_out)


def test_a_handshake_the_clock_ended_is_named_a_timeout_for_upstream_tls(gate: Gate) -> None:
    client = tflow.tclient_conn()
    server = connection.Server(address=("api.test", 443), error="connection closed")
    watch = watch_for(client, server, faults.Limit(faults.TLS_HANDSHAKE, 15.0))
    gate.timeouts.watches[server] = watch
    gate.timeouts.tls_failed_server(tls.TlsData(server, Context(client, gate.tctx.options)))
    assert server.error == "timed out: no completed TLS handshake within 15 s (tlsgate_tls_handshake_timeout)"
    issue = judge_failure(server.error, None, [], TlsRules())
    assert (issue.check, issue.kind, issue.evidence["phase"], issue.evidence["timeout_s"]) == (
        "fault",
        "timeout",
        "tls_handshake",
        15.0,
    )
    assert "--set tlsgate_tls_handshake_timeout=" in issue.remedy
    assert faults.timeout_from_text("timed out") is None and faults.timeout_from_text("connection closed") is None


# -- per-host limits and apps that give up first ---------------------------------------------------------

HOST_LIMITS = """\
version: 1
defaults:
  mode: report
  timeouts: {response_idle: 30}
rules:
  - hosts: slow.test
    timeouts:
      connect: 3
      response_head: 300
"""


def use_policy(gate: Gate, tmp_path: Path, text: str) -> None:
    (tmp_path / "limits.yaml").write_text(text)
    store = next(a for a in gate.tctx.master.addons.chain if isinstance(a, PolicyStore))
    gate.tctx.configure(store, tlsgate_policy=[str(tmp_path / "limits.yaml")])


def test_a_hosts_own_limits_arm_its_clocks_and_other_hosts_keep_the_options(gate: Gate, tmp_path: Path) -> None:
    use_policy(gate, tmp_path, HOST_LIMITS)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        client = tflow.tclient_conn()
        for host, connect, handshake in (("slow.test", 3, 15), ("other.test", 10, 15)):
            server = connection.Server(address=(host, 443))
            gate.timeouts.server_connect(server_hooks.ServerConnectionHookData(server, client))
            watch = gate.timeouts.watches[server]
            assert watch.timer is not None and round(watch.timer.when() - loop.time()) == connect
            assert (watch.connect.seconds, watch.handshake.seconds) == (connect, handshake)
        slow = flow_to("slow.test", 443, "https")
        gate.timeouts.request(slow)
        watch = gate.timeouts.flows[slow]
        assert watch.timer is not None and round(watch.timer.when() - loop.time()) == 300
        assert watch.head.source.startswith("timeouts.response_head at ") and watch.head.source.endswith("/limits.yaml:9")
        assert watch.body.source.startswith("timeouts.response_idle at ") and watch.body.source.endswith("/limits.yaml:4")
        other = flow_to("other.test", 443, "https")
        gate.timeouts.request(other)
        assert (gate.timeouts.flows[other].head.seconds, gate.timeouts.flows[other].head.source) == (
            120.0,
            "tlsgate_response_head_timeout",
        )

    asyncio.run(scenario())


@pytest.mark.parametrize(("waited", "recorded"), [(6.0, True), (1.0, False)])
def test_an_app_that_hangs_up_after_waiting_gave_up_and_one_that_cancels_at_once_did_not(
    gate: Gate, waited: float, recorded: bool
) -> None:
    flow = flow_to("legacy.test")
    head = faults.Limit(faults.RESPONSE_HEAD, 120.0)
    gate.timeouts.flows[flow] = FlowWatch(head, faults.Limit(faults.RESPONSE_BODY, 60.0), time.monotonic() - waited)
    gate.timeouts.client_gave_up(flow, "Client disconnected.")
    if not recorded:
        assert gate.findings() == [] and "tlsgate" not in flow.metadata
        return
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("fault", "failed", "client_gave_up")
    assert finding["evidence"]["phase"] == "response_head" and finding["evidence"]["timeout_s"] == 120.0
    assert 6.0 <= finding["evidence"]["waited_s"] < 7.0
    assert "tlsgate would have waited 120 s (tlsgate_response_head_timeout)" in finding["detail"]
    assert flow.metadata["tlsgate"]["action"] == "failed"  # metrics count it as the failed request it is
    gate.timeouts.client_gave_up(flow, "Client disconnected.")  # once per request
    assert len(gate.findings()) == 1


def test_an_app_that_hangs_up_while_its_upstream_is_still_connecting_gave_up(gate: Gate) -> None:
    async def scenario() -> None:
        client = tflow.tclient_conn()
        server = connection.Server(address=("api.test", 443))
        gate.timeouts.server_connect(server_hooks.ServerConnectionHookData(server, client))
        gate.timeouts.watches[server].started -= 6
        gate.timeouts.client_disconnected(client)
        del server

    asyncio.run(scenario())
    (finding,) = gate.findings()
    assert (finding["evidence"]["kind"], finding["evidence"]["phase"], finding["evidence"]["timeout_s"]) == (
        "client_gave_up",
        "connect",
        10.0,
    )


def test_a_cancel_is_not_a_timeout_and_a_short_limit_lowers_the_bar() -> None:
    head = faults.Limit(faults.RESPONSE_HEAD, 120.0)
    assert not faults.app_gave_up(faults.GAVE_UP_AFTER - 0.1, head) and faults.app_gave_up(faults.GAVE_UP_AFTER, head)
    short = faults.Limit(faults.RESPONSE_HEAD, 4.0)
    assert faults.app_gave_up(2.0, short) and not faults.app_gave_up(1.9, short)


# -- the answer ------------------------------------------------------------------------------------------


def test_garbage_is_answered_502_with_a_fault_finding_that_quotes_none_of_it(gate: Gate) -> None:
    flow = flow_to("legacy.test")
    response = gate.timeouts.answer(
        flow, "Cannot parse HTTP response: Bad HTTP response line: b'token=abc123'", "GENERIC_SERVER_ERROR"
    )
    assert response is not None and response.status_code == 502
    assert response.headers["x-tlsgate-check"] == "fault" and b"abc123" not in response.content
    assert flow.metadata["tlsgate"] == {"check": "fault", "action": "failed", "rule": flow.metadata["tlsgate"]["rule"]}
    (finding,) = gate.findings()
    assert finding["evidence"]["kind"] == "not_http" and finding["evidence"]["phase"] == "response_head"
    assert finding["action"] == "failed"  # report mode forwards verdicts; a broken answer has nothing to forward
    assert "abc123" not in json.dumps(finding)


def test_a_stalled_server_is_answered_504_naming_the_phase_and_option(gate: Gate) -> None:
    flow = flow_to("legacy.test")
    head = faults.Limit(faults.RESPONSE_HEAD, 120.0)
    gate.timeouts.flows[flow] = FlowWatch(head, faults.Limit(faults.RESPONSE_BODY, 60.0), 0.0, timed_out=head)
    response = gate.timeouts.answer(flow, faults.timeout_text(head), "GENERIC_SERVER_ERROR")
    assert response is not None and response.status_code == 504
    (finding,) = gate.findings()
    assert finding["evidence"] == {
        "kind": "timeout",
        "phase": "response_head",
        "timeout_s": 120.0,
        "option": "tlsgate_response_head_timeout",
    }
    assert "--set tlsgate_response_head_timeout=" in finding["remedy"]


def test_a_reported_flow_that_meets_garbage_still_gets_the_fault_page(gate: Gate) -> None:
    flow = flow_to("api.test")  # cleartext in report mode: forwarded, marked "reported"
    mark(flow, Finding("cleartext", "reported", "high", "api.test", 80, None, "policy.yaml:2", "plain HTTP"))
    response = gate.timeouts.answer(flow, "server closed connection", "GENERIC_SERVER_ERROR")
    assert response is not None and response.status_code == 502
    assert flow.metadata["tlsgate"]["action"] == "failed"
    assert [f["evidence"]["kind"] for f in gate.findings()] == ["closed"]


def test_tlsgates_own_refusals_and_answered_flows_are_left_alone(gate: Gate) -> None:
    flow = flow_to("legacy.test")
    assert gate.timeouts.answer(flow, "Connection killed: tlsgate refused: the proxy host", "CONNECT_FAILED") is None
    mark(flow, Finding("cleartext", "blocked", "high", "legacy.test", 80, None, "p.yaml:2", "plain HTTP"))  # a block page
    assert gate.timeouts.answer(flow, "server closed connection", "GENERIC_SERVER_ERROR") is None
    assert gate.findings() == []


# -- words -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Cannot parse HTTP response: Bad HTTP response line: b'hello'", "not_http"),
        ("unexpected server response: b'HTTP/1.1 200 OK\\r\\n'", "not_http"),
        ("server closed connection", "closed"),
        ("HTTP/1 protocol error: peer closed connection without sending complete message body: received 3 bytes", "truncated"),
        ("HTTP/1 protocol error: illegal chunk header", "malformed_body"),
        ("peer closed connection", "closed"),  # HTTP/2: mitmproxy's h2 client closes on garbage and says only this
        ("HTTP/2 protocol error: <ProtocolError>", "protocol_error"),
        ("something nobody foresaw", "bad_response"),
    ],
)
def test_response_faults_are_named_by_kind(message: str, kind: str) -> None:
    issue = faults.response_fault(message, "response_head")
    assert (issue.check, issue.kind) == ("fault", kind)
    assert "b'" not in issue.detail and "b'" not in issue.evidence["error"]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("[Errno 111] Connect call failed ('127.0.0.1', 9)", "refused"),
        ("[Errno -2] Name or service not known", "dns"),
        ("[Errno 101] Network is unreachable", "unreachable"),
        (faults.timeout_text(faults.Limit(faults.CONNECT, 10)), "timeout"),
        ("connection cancelled", "connect_failed"),
    ],
)
def test_connect_faults_are_named_by_kind(message: str, kind: str) -> None:
    assert faults.connect_fault(message).kind == kind


def test_a_held_body_must_make_real_progress_a_streamed_one_any() -> None:
    assert faults.held_body_stalled(0, streamed=True) and not faults.held_body_stalled(1, streamed=True)
    assert faults.held_body_stalled(faults.HELD_BODY_PROGRESS - 1, streamed=False)
    assert not faults.held_body_stalled(faults.HELD_BODY_PROGRESS, streamed=False)


def test_only_a_silent_close_after_a_failed_or_long_upstream_wait_is_excused() -> None:
    assert faults.silent_close_excused(upstream_failed=True, waited=0.1)
    assert faults.silent_close_excused(upstream_failed=False, waited=faults.UPSTREAM_WAIT_EXCUSES)
    assert not faults.silent_close_excused(upstream_failed=False, waited=0.5)
    assert not faults.silent_close_excused(upstream_failed=False, waited=None)
