"""Hostile clients, unit by unit: the hello meter, the verdicts, the gates, the head bound, the log containment."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import ssl
import time
from collections.abc import Generator
from typing import Any

import pytest
from mitmproxy import exceptions, tls
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import RequestHeaders
from mitmproxy.test import tflow

from tests.unit import test_addons, test_cleartext_streams
from tests.unit.test_addons import Gate
from tlsgate.addons import mitm_internals
from tlsgate.addons.client_bounds import ClientBounds, HelloGate, Progress
from tlsgate.addons.containment import ContainFailures, Folder, ServerLogFilter
from tlsgate.addons.findings import FindingsSink
from tlsgate.checks.client_bounds import judge_hello, judge_request_head, judge_slow_client
from tlsgate.checks.model import Action, Check, Effect, decide
from tlsgate.policy import Mode
from tlsgate.sinks.metrics import Metrics
from tlsgate.tls.hellometer import Hello, HelloMeter

gate = test_addons.gate  # make_addons() in a mitmproxy test context


def hello_message() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="api.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    record = outgoing.read()
    return record[5:]


HELLO = hello_message()


def records(body: bytes, size: int, version: bytes = b"\x03\x01") -> bytes:
    return b"".join(
        b"\x16" + version + len(body[i : i + size]).to_bytes(2, "big") + body[i : i + size] for i in range(0, len(body), size)
    )


def feed(meter: HelloMeter, data: bytes, chunk: int) -> Hello:
    for i in range(0, len(data), chunk):
        meter.feed(data[i : i + chunk])
    return meter.state


# -- the meter ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 5, 6, 7, 500, 100000])
def test_a_real_hello_is_complete_however_the_bytes_arrive(chunk: int) -> None:
    meter = HelloMeter(65536, 256)
    assert feed(meter, records(HELLO, 16384), chunk) is Hello.COMPLETE
    assert (meter.records, meter.hello_bytes, meter.declared) == (1, len(HELLO), len(HELLO))


def test_a_hello_in_as_many_records_as_the_bound_allows_is_complete() -> None:
    size = -(-len(HELLO) // 256)  # the smallest record size that keeps it within 256 records
    meter = HelloMeter(65536, 256)
    assert feed(meter, records(HELLO, size), 4096) is Hello.COMPLETE
    assert meter.records <= 256


def test_one_record_more_than_the_bound_is_fragmented_and_counted_exactly() -> None:
    meter = HelloMeter(65536, 256)
    assert feed(meter, records(HELLO, 1), 6) is Hello.FRAGMENTED
    assert meter.records == 257 and meter.hello_bytes == 256
    assert meter.feed(b"\x16\x03\x01\x00\x01\x00") is Hello.FRAGMENTED  # stays stopped, counts no further
    assert meter.records == 257


def test_a_hello_declaring_more_than_the_byte_bound_is_refused_at_its_fourth_byte() -> None:
    body = b"\x01" + (199_996).to_bytes(3, "big") + b"\x00" * 60
    meter = HelloMeter(65536, 0)
    assert feed(meter, records(body, 1), 6) is Hello.OVERSIZED
    assert meter.records == 4 and meter.declared == 200_000
    assert "declares 200000 bytes" in meter.problem


def test_no_bounds_lets_a_one_byte_record_hello_complete() -> None:
    meter = HelloMeter(0, 0)
    assert feed(meter, records(HELLO, 1), 4096) is Hello.COMPLETE
    assert meter.records == len(HELLO)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x17\x03\x03\x00\x05hello", "record type 0x17"),
        (b"\x16\x03\x09\x00\x05hello", "version 3.9"),
        (b"\x16\x03\x01\x00\x00", "record of 0 bytes"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "type 2, not a ClientHello"),
        (b"\x16\x03\x01\xff\xff" + b"\x01" * 10, "record of 65535 bytes"),
    ],
)
def test_bytes_that_are_not_a_client_hello_are_malformed(data: bytes, problem: str) -> None:
    meter = HelloMeter(65536, 256)
    assert meter.feed(data) is Hello.MALFORMED
    assert problem in meter.problem


def test_random_splits_give_the_same_verdict_as_one_piece() -> None:
    rng = random.Random(5)
    data = records(HELLO, 7)
    whole = HelloMeter(65536, 256)
    whole.feed(data)
    for _ in range(50):
        meter = HelloMeter(65536, 256)
        at = 0
        while at < len(data):
            step = rng.randint(1, 40)
            meter.feed(data[at : at + step])
            at += step
        assert (meter.state, meter.records, meter.hello_bytes) == (whole.state, whole.records, whole.hello_bytes)


# -- verdicts -----------------------------------------------------------------------------------------


def test_hello_verdicts_block_in_every_mode_and_carry_counts_only() -> None:
    meter = HelloMeter(65536, 256)
    feed(meter, records(HELLO, 1), 600)
    issue = judge_hello(meter, "127.0.0.1:5000", "api.test")
    assert issue is not None and (issue.check, issue.kind, issue.effect) == (
        Check.CLIENT_HELLO,
        "fragmented_hello",
        Effect.ALWAYS,
    )
    assert decide(issue, Mode.REPORT) is Action.BLOCKED
    assert issue.evidence["records"] == 257 and "127.0.0.1:5000" in issue.detail and "tlsgate_max_hello_records" in issue.remedy
    assert all(isinstance(v, int | type(None)) for v in issue.evidence.values())
    assert judge_hello(HelloMeter(65536, 256), "c", "h") is None  # partial: no verdict yet


def test_head_and_slow_client_verdicts() -> None:
    head = judge_request_head(113152, 65536, "127.0.0.1:1", "api.test")
    assert (head.check, head.kind, head.evidence) == (
        Check.REQUEST,
        "oversized_request_head",
        {"received_bytes": 113152, "max_bytes": 65536},
    )
    assert "tlsgate_max_request_head" in head.remedy and decide(head, Mode.REPORT) is Action.BLOCKED
    slow = judge_slow_client(30.2, 30, "tls_hello", "127.0.0.1:1", "api.test")
    assert (slow.check, slow.kind, slow.evidence) == (
        Check.CLIENT_HELLO,
        "slow_client",
        {"stage": "tls_hello", "timeout_seconds": 30},
    )
    assert "ClientHello" in slow.detail and "tlsgate_client_head_timeout" in slow.remedy


# -- the request-head bound ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "limit", "overflows"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b"x" * 200, 64, False),  # the head ends in time; a body follows
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 200, 64, True),
        (b"GET / HTTP/1.1\nX: a\n\n" + b"b" * 200, 64, False),  # bare LF line ends, as h11 reads them
        (b"\r\n" * 100, 64, True),  # blank lines before a head are skipped two bytes a read: they count
        (b"\r\n" * 10 + b"GET / HTTP/1.1\r\n\r\n" + b"b" * 200, 64, False),
        (b"a" * 64, 64, False),  # not past the limit yet
        (b"a" * 1000, 0, False),  # 0: no bound
    ],
)
def test_head_overflows(data: bytes, limit: int, overflows: bool) -> None:
    assert mitm_internals.head_overflows(data, limit) is overflows


def run(lay: layer.Layer, event: events.Event) -> list[commands.Command]:
    return list(lay.handle_event(event))


def test_an_oversized_head_is_answered_431_and_closed_before_mitmproxy_parses_it(gate: Gate) -> None:
    context = Context(tflow.tclient_conn(), gate.tctx.options)
    gate.tctx.options.update(tlsgate_max_request_head=1024)
    server = _http1.Http1Server(context)
    run(server, events.Start())
    first = b"GET http://api.test/ HTTP/1.1\r\nX-Pad: " + b"a" * 600
    out = run(server, events.DataReceived(context.client, first))
    assert out == []  # under the bound: mitmproxy keeps reading
    out = run(server, events.DataReceived(context.client, b"a" * 600))
    assert [type(c) for c in out] == [commands.SendData, commands.CloseConnection]
    assert out[0].data.startswith(b"HTTP/1.1 431 ") and b"X-Tlsgate-Check: request" in out[0].data
    assert len(server.buf) == 0  # the memory is let go at once
    assert run(server, events.DataReceived(context.client, b"more")) == []  # and nothing more is read
    (finding,) = gate.findings()
    assert finding["check"] == "request" and finding["evidence"] == {
        "kind": "oversized_request_head",
        "received_bytes": len(first) + 600,
        "max_bytes": 1024,
    }
    assert gate.sample("tlsgate_client_bounds_total", bound="request_head") == 1


def test_a_head_within_the_bound_with_its_body_in_the_same_read_passes(gate: Gate) -> None:
    gate.tctx.options.update(tlsgate_max_request_head=1024)
    context = Context(tflow.tclient_conn(), gate.tctx.options)
    server = _http1.Http1Server(context)
    run(server, events.Start())
    body = b"b" * 5000
    data = b"POST http://api.test/ HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5000\r\n\r\n" + body
    out = run(server, events.DataReceived(context.client, data))
    assert any(isinstance(c, ReceiveHttp) and isinstance(c.event, RequestHeaders) for c in out)
    assert not any(isinstance(c, commands.CloseConnection) for c in out)
    assert gate.findings() == []


def test_a_refusal_that_cannot_be_recorded_still_refuses(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    bounds = gate.tctx.master.addons.get("clientbounds")
    monkeypatch.setattr(bounds, "connections", None)  # recording raises
    gate.tctx.options.update(tlsgate_max_request_head=100)
    context = Context(tflow.tclient_conn(), gate.tctx.options)
    server = _http1.Http1Server(context)
    run(server, events.Start())
    out = run(server, events.DataReceived(context.client, b"GET / HTTP/1.1\r\nX: " + b"a" * 300))
    assert out[0].data == mitm_internals.HEAD_REFUSED and isinstance(out[1], commands.CloseConnection)


def test_the_wrapper_is_installed_once(gate: Gate) -> None:
    wrapped = _http1.Http1Server.read_headers
    assert getattr(wrapped, "tlsgate_original", None) is not None
    mitm_internals.bound_request_heads(lambda: 1, lambda *_: b"")
    assert _http1.Http1Server.read_headers.tlsgate_original is wrapped.tlsgate_original  # type: ignore[attr-defined]
    bounds = gate.tctx.master.addons.get("clientbounds")
    mitm_internals.bound_request_heads(bounds._head_limit, bounds._refuse_head)


# -- the hello gate -----------------------------------------------------------------------------------


class Recorder(layer.Layer):
    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.seen: list[events.Event] = []

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        self.seen.append(event)
        yield from ()


def tls_context(gate: Gate) -> Context:
    context = Context(tflow.tclient_conn(), gate.tctx.options)
    context.server = tflow.tserver_conn()
    context.server.address = ("api.test", 443)
    context.server.sni = "api.test"
    return context


def test_next_layer_puts_the_gate_in_front_of_mitmproxys_tls_layers_only(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    context = tls_context(gate)
    nextlayer = layer.NextLayer(context)
    server_tls = layers.ServerTLSLayer(context)
    server_tls.child_layer = layers.ClientTLSLayer(context)
    nextlayer.layer = server_tls
    stack = list(context.layers)
    bounds.next_layer(nextlayer)
    assert isinstance(nextlayer.layer, HelloGate) and nextlayer.layer.child is server_tls
    assert context.layers == stack  # invisible to mitmproxy's stack matching
    tcp = layers.TCPLayer(context)
    nextlayer.layer = tcp
    bounds.next_layer(nextlayer)
    assert nextlayer.layer is tcp


def test_the_gate_hands_over_the_hello_in_one_piece(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    context = tls_context(gate)
    child = Recorder(context)
    hello_gate = HelloGate(context, child, HelloMeter(65536, 256), bounds)
    run(hello_gate, events.Start())
    data = records(HELLO, 100)
    for i in range(0, len(data), 50):
        assert run(hello_gate, events.DataReceived(context.client, data[i : i + 50])) == []
    received = [e for e in child.seen if isinstance(e, events.DataReceived)]
    assert len(received) == 1 and received[0].data == data
    run(hello_gate, events.DataReceived(context.client, b"after"))
    assert child.seen[-1].data == b"after"  # type: ignore[attr-defined]
    assert gate.findings() == []


def test_the_gate_closes_a_flood_with_a_finding_and_a_metric(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    context = tls_context(gate)
    child = Recorder(context)
    hello_gate = HelloGate(context, child, HelloMeter(65536, 256), bounds)
    out = run(hello_gate, events.DataReceived(context.client, records(HELLO, 1)))
    assert [type(c) for c in out] == [commands.CloseConnection] and out[0].connection is context.client
    assert not any(isinstance(e, events.DataReceived) for e in child.seen)  # mitmproxy never parsed a byte of it
    assert run(hello_gate, events.DataReceived(context.client, b"\x16\x03\x01\x00\x01\x00")) == []
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["host"]) == ("client_hello", "blocked", "api.test")
    assert finding["evidence"]["kind"] == "fragmented_hello" and finding["evidence"]["records"] == 257
    assert gate.sample("tlsgate_client_bounds_total", bound="hello_records") == 1


def test_a_client_that_leaves_mid_hello_is_passed_to_mitmproxy_as_it_was(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    context = tls_context(gate)
    child = Recorder(context)
    hello_gate = HelloGate(context, child, HelloMeter(65536, 256), bounds)
    run(hello_gate, events.DataReceived(context.client, records(HELLO, 16384)[:100]))
    run(hello_gate, events.ConnectionClosed(context.client))
    assert [type(e) for e in child.seen] == [events.DataReceived, events.ConnectionClosed]


# -- the head timeout ---------------------------------------------------------------------------------


def test_milestones_restart_the_clock_and_the_first_request_stops_it(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    client = tflow.tclient_conn()
    bounds.progress[client] = progress = Progress(last=time.monotonic() - 100)
    flow = tflow.tflow(client_conn=client)
    flow.request.method = "CONNECT"
    bounds.http_connect(flow)
    assert progress.stage == "tunnel_data" and time.monotonic() - progress.last < 5 and progress.host == flow.request.host
    bounds.requestheaders(tflow.tflow(client_conn=client))
    assert progress.done


def test_an_expired_client_is_closed_with_a_finding(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    closed: list[object] = []
    monkeypatch.setattr(mitm_internals, "close_client", lambda c: closed.append(c) or True)
    client = tflow.tclient_conn()
    bounds.progress[client] = Progress(last=time.monotonic() - 31, stage="tls_hello", host="api.test")
    bounds._check(__import__("weakref").ref(client), 30)
    assert closed == [client]
    (finding,) = gate.findings()
    assert (finding["check"], finding["evidence"]["kind"], finding["host"]) == ("client_hello", "slow_client", "api.test")
    assert gate.sample("tlsgate_client_bounds_total", bound="head_timeout") == 1


def test_a_client_still_in_time_is_checked_again_later(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    client = tflow.tclient_conn()
    bounds.progress[client] = progress = Progress()

    async def check() -> None:
        bounds._check(__import__("weakref").ref(client), 30)
        assert progress.timer is not None and not progress.done
        progress.timer.cancel()

    asyncio.run(check())
    assert gate.findings() == []


# -- containment --------------------------------------------------------------------------------------


def crash_record(message: str = "mitmproxy has crashed!") -> logging.LogRecord:
    try:
        raise RuntimeError("boom\n[CRITICAL] forged")
    except RuntimeError:
        import sys

        info = sys.exc_info()
    record = logging.LogRecord("mitmproxy.proxy.server", logging.ERROR, __file__, 1, message, (), info)
    record.client = ("127.0.0.1", 5555)
    return record


def test_a_crash_becomes_one_line_without_traceback_and_repeats_are_folded() -> None:
    now = [0.0]
    counted: list[str] = []
    folder = Folder(every=10, clock=lambda: now[0])
    log_filter = ServerLogFilter(folder, counted.append)
    first = crash_record()
    assert log_filter.filter(first)
    assert first.exc_info is None and first.exc_text is None and "\n" not in first.getMessage()
    assert "RuntimeError: boom\\x0a[CRITICAL] forged" in first.getMessage() and "127.0.0.1:5555" in first.getMessage()
    assert not log_filter.filter(crash_record("connection handler has crashed: boom"))
    now[0] = 11
    again = crash_record()
    assert log_filter.filter(again) and "1 more like it" in again.getMessage()
    assert counted == ["connection"] * 3


def test_client_bytes_in_mitmproxys_lines_are_shortened_to_their_length() -> None:
    log_filter = ServerLogFilter(Folder(), lambda _: None)
    head = logging.LogRecord(
        "mitmproxy.proxy.server", logging.INFO, __file__, 1,
        "Client closed connection before completing request headers: %s", (repr(b"GET / HTTP/1.1\r\nAuthorization: Bearer SECRET"),), None,
    )  # fmt: skip
    assert log_filter.filter(head)
    assert "SECRET" not in head.getMessage() and "characters, not shown" in head.getMessage()
    hexed = "ab" * 5000
    hello = logging.LogRecord(
        "mitmproxy.proxy.server",
        logging.INFO,
        __file__,
        1,
        f"Client TLS handshake failed. Cannot parse ClientHello: {hexed}",
        (),
        None,
    )
    assert log_filter.filter(hello)
    assert len(hello.getMessage()) < 200 and "(5000 bytes)" in hello.getMessage()


def test_accept_failures_are_folded_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    contain = ContainFailures(FindingsSink(metrics=metrics))
    error = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.DEBUG, logger="tlsgate.containment"):
        for _ in range(1000):
            contain.handle(asyncio.new_event_loop(), {"message": "socket.accept() out of system resource", "exception": error})
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "out of system resource" in errors[0].getMessage() and errors[0].exc_info is None
    assert metrics.registry.get_sample_value("tlsgate_internal_errors_total", {"where": "accept"}) == 1000
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug and debug[0].exc_info is not None  # the traceback is there for --set termlog_verbosity=debug


def test_the_handler_goes_in_front_of_mitmproxys_and_comes_off_at_the_end() -> None:
    contain = ContainFailures(FindingsSink(metrics=Metrics()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        previous = lambda *_: None  # noqa: E731
        loop.set_exception_handler(previous)
        contain.running()
        assert loop.get_exception_handler() == contain.handle
        contain.done()
        assert loop.get_exception_handler() is previous

    asyncio.run(main())


def test_an_http2_connection_is_done_with_its_handshake_an_http1_one_is_not(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    for alpn, done in ((b"h2", True), (b"http/1.1", False), (None, False)):
        client = tflow.tclient_conn()
        client.alpn = alpn
        bounds.progress[client] = progress = Progress(last=time.monotonic() - 10)
        bounds.tls_established_client(tls.TlsData(client, Context(client, gate.tctx.options)))
        assert progress.done is done and (done or time.monotonic() - progress.last < 5)


def test_every_new_tcp_connection_gets_a_clock_and_loses_it_on_disconnect(gate: Gate) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")

    async def main() -> None:
        client = tflow.tclient_conn()
        bounds.client_connected(client)
        progress = bounds.progress[client]
        assert progress.timer is not None and progress.stage == "request_head"
        bounds.client_disconnected(client)
        assert client not in bounds.progress and progress.timer.cancelled()
        gate.tctx.options.update(tlsgate_client_head_timeout=0)
        bounds.client_connected(client)
        assert client not in bounds.progress

    asyncio.run(main())


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("tlsgate_max_hello_bytes", -1),
        ("tlsgate_max_hello_bytes", 100),
        ("tlsgate_max_hello_records", -1),
        ("tlsgate_max_request_head", -5),
        ("tlsgate_client_head_timeout", -1),
    ],
)
def test_bounds_that_make_no_sense_are_refused_at_start(gate: Gate, option: str, value: int) -> None:
    with pytest.raises(exceptions.OptionsError, match=option):
        gate.tctx.options.update(**{option: value})


def test_a_request_head_bound_of_zero_is_off(gate: Gate) -> None:
    gate.tctx.options.update(tlsgate_max_request_head=0)
    context = Context(tflow.tclient_conn(), gate.tctx.options)
    server = _http1.Http1Server(context)
    run(server, events.Start())
    assert run(server, events.DataReceived(context.client, b"GET / HTTP/1.1\r\nX: " + b"a" * 200_000)) == []
    assert gate.findings() == []


# -- after STARTTLS -------------------------------------------------------------------------------------

rig = test_cleartext_streams.rig  # make_addons() with an eager proxyserver, for the cleartext stream gate


def test_a_hello_flood_after_starttls_is_closed_like_a_direct_one(rig: test_cleartext_streams.Rig) -> None:
    """STARTTLS builds mitmproxy's TLS stack itself (not through next_layer): the hello gate goes in front of it too."""
    context, stream_gate = test_cleartext_streams.upgrade_to_tls(rig)
    out = test_cleartext_streams.run(stream_gate, events.DataReceived(context.client, records(HELLO, 1)))
    assert stream_gate.upgraded and isinstance(stream_gate.child, HelloGate)
    assert context.client in test_cleartext_streams.closed(out)
    assert test_cleartext_streams.sent_to(out, context.server) == b""  # no handshake with the server was started
    (finding,) = [f for f in rig.findings() if f["check"] == "client_hello"]
    assert finding["evidence"]["kind"] == "fragmented_hello" and finding["host"] == "mail.test"


def test_a_meter_that_raises_closes_the_connection(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    bounds: ClientBounds = gate.tctx.master.addons.get("clientbounds")
    context = tls_context(gate)
    child = Recorder(context)
    hello_gate = HelloGate(context, child, HelloMeter(65536, 256), bounds)
    monkeypatch.setattr(HelloMeter, "feed", lambda *_: 1 / 0)
    out = run(hello_gate, events.DataReceived(context.client, records(HELLO, 16384)))
    assert [type(c) for c in out] == [commands.CloseConnection] and child.seen == []
    (finding,) = gate.findings()
    assert finding["evidence"]["kind"] == "malformed_hello" and "could not be measured" in finding["detail"]
