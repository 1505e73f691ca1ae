"""The response clocks hold the same over plain HTTP, HTTPS with HTTP/1.1 and HTTPS with HTTP/2; hosts get their own.

Real tlsgate, real clients (curl; httpx with HTTP/2), real loopback servers:
an HTTP/1 server (plain or TLS) and an HTTP/2 one (TLS, ALPN h2, the `h2`
library) that answer the head and then trickle the body a byte a second, or
never answer. Body progress is the response's own bytes: over TLS a one-byte
chunk is a 23-byte record (and over HTTP/2 also a 9-byte frame header), which a
clock counting the connection's bytes took for progress, so a 1 B/s body never
stalled over TLS. tlsgate runs with short clocks; the clients get far more
patience, so "the 504 arrived" proves tlsgate answered first, with no timing
assertion. An app whose own timeout comes first is recorded as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tests.certgen import Chain, make_leaf, write_server_files
from tests.docs import section as docs_section
from tests.harness import Tlsgate, curl, eventually, full_accept_queue
from tests.tlsservers import serve_on_loopback

POLICY = """\
version: 1
defaults:
  mode: enforce
  cleartext: block
rules:
  - name: plain-lab
    hosts: legacy.test
    cleartext: allow
"""
PATIENCE = 20  # the client's own limit: far beyond tlsgate's clocks here
HOLD = 30.0  # the longest a test server keeps a connection
BODY = 300  # bytes: at a byte a second the body would take five minutes
TRANSPORTS = ["http", "https-h1", "https-h2"]


@dataclass
class Upstream:
    """A loopback server that answers every request by `path`'s behaviour and remembers what it saw."""

    interval: float = 1.0  # seconds between body bytes of /trickle
    chunk: bytes = b"x"
    connections: int = 0
    sent: int = 0  # body bytes sent by /trickle
    finished: bool = False  # a trickle sent its whole body
    closed: threading.Event = field(default_factory=threading.Event)  # tlsgate closed a connection on us
    resets: list[int] = field(default_factory=list)  # HTTP/2 streams tlsgate reset
    stop: threading.Event = field(default_factory=threading.Event)
    port: int = 0


def _path(request_head: bytes) -> str:
    line = request_head.split(b"\r\n", 1)[0].split()
    return line[1].decode() if len(line) > 1 else "/"


def serve_http1(server: Upstream, context: ssl.SSLContext | None) -> socket.socket:
    def each(conn: socket.socket) -> None:
        server.connections += 1
        with contextlib.suppress(OSError, ssl.SSLError), conn:
            channel = context.wrap_socket(conn, server_side=True) if context is not None else conn
            channel.settimeout(5)
            path = _path(channel.recv(65536))
            if path == "/silent":
                _wait_for_close(channel, server, HOLD)
                return
            channel.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % BODY)
            for _ in range(BODY):
                if _wait_for_close(channel, server, server.interval):
                    return
                channel.sendall(server.chunk)
                server.sent += len(server.chunk)
            server.finished = True

    return serve_on_loopback(each, threaded=True)


def _wait_for_close(channel: socket.socket, server: Upstream, seconds: float) -> bool:
    """Wait `seconds`; True (and `server.closed` set) as soon as the peer closes the connection."""
    deadline = time.monotonic() + seconds
    while not server.stop.is_set() and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([channel], [], [], min(left, 0.1))
        if readable:
            try:
                data = channel.recv(4096)
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                server.closed.set()
                return True
    return server.stop.is_set()


def serve_http2(server: Upstream, context: ssl.SSLContext) -> socket.socket:
    """HTTP/2 by path: /silent never answers, /trickle sends its head and then `chunk` every `interval`,
    /steady sends 100 bytes every 0.2 s for 3 s, anything else answers at once."""

    def each(conn: socket.socket) -> None:
        server.connections += 1
        with contextlib.suppress(OSError, ssl.SSLError), conn:
            channel = context.wrap_socket(conn, server_side=True)
            peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            peer.initiate_connection()
            channel.sendall(peer.data_to_send())
            bodies: dict[int, list] = {}  # stream -> [next send time, interval, chunk, bytes left, counts as trickle]
            deadline = time.monotonic() + HOLD
            while not server.stop.is_set() and time.monotonic() < deadline:
                readable, _, _ = select.select([channel], [], [], 0.02)
                if readable or channel.pending():
                    data = channel.recv(65536)
                    if not data:
                        server.closed.set()
                        return
                    for event in peer.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            _answer_h2(peer, event, bodies, server)
                        elif isinstance(event, h2.events.StreamReset):
                            server.resets.append(event.stream_id)
                            bodies.pop(event.stream_id, None)
                        elif isinstance(event, h2.events.ConnectionTerminated):
                            server.closed.set()
                            return
                now = time.monotonic()
                for stream_id, body in list(bodies.items()):
                    if now >= body[0]:
                        peer.send_data(stream_id, body[2])
                        body[0], body[3] = now + body[1], body[3] - len(body[2])
                        if body[4]:
                            server.sent += len(body[2])
                        if body[3] <= 0:
                            peer.end_stream(stream_id)
                            del bodies[stream_id]
                            server.finished = server.finished or body[4]
                if out := peer.data_to_send():
                    channel.sendall(out)

    return serve_on_loopback(each, threaded=True)


def _answer_h2(peer: h2.connection.H2Connection, event: h2.events.RequestReceived, bodies: dict, server: Upstream) -> None:
    path = dict(event.headers or [])[b":path"].decode()
    if path == "/silent":
        return
    if path == "/trickle":
        length, plan = BODY, [time.monotonic() + server.interval, server.interval, server.chunk, BODY, True]
    elif path == "/steady":
        length, plan = 1500, [time.monotonic() + 0.2, 0.2, b"y" * 100, 1500, False]
    else:
        peer.send_headers(event.stream_id, [(":status", "200"), ("content-length", "3")])
        peer.send_data(event.stream_id, b"ok\n", end_stream=True)
        return
    peer.send_headers(event.stream_id, [(":status", "200"), ("content-type", "text/plain"), ("content-length", str(length))])
    bodies[event.stream_id] = plan


@pytest.fixture
def tls_context(pki: tuple[Chain, Path, Path, Path]) -> Callable[[str], ssl.SSLContext]:
    _, _, cert_file, key_file = pki

    def make(alpn: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.set_alpn_protocols([alpn])
        return context

    return make


@pytest.fixture
def upstream(tls_context: Callable[[str], ssl.SSLContext]) -> Iterator[Callable[..., Upstream]]:
    started: list[tuple[Upstream, socket.socket]] = []

    def start(transport: str, context: ssl.SSLContext | None = None, **settings: object) -> Upstream:
        server = Upstream(**settings)  # type: ignore[arg-type]
        if transport == "https-h2":
            listener = serve_http2(server, context or tls_context("h2"))
        else:
            listener = serve_http1(server, context or (tls_context("http/1.1") if transport == "https-h1" else None))
        server.port = listener.getsockname()[1]
        started.append((server, listener))
        return server

    yield start
    for server, listener in started:
        server.stop.set()
        listener.close()


def host_for(transport: str) -> str:
    return "legacy.test" if transport == "http" else "api.test"


def gate_with(tlsgate, hosts: dict[str, int], *clocks: str, policy: str = POLICY) -> Tlsgate:
    return tlsgate(policy, resolve=hosts, args=tuple(a for clock in clocks for a in ("--set", clock)))


@dataclass
class Answer:
    status: int
    check: str | None
    body: str
    http_version: str


def fetch(gate: Tlsgate, transport: str, url: str, client: str = "curl", patience: float = PATIENCE) -> Answer:
    """One request through tlsgate by a real client: curl (HTTP/1.1 or --http2), or httpx with HTTP/2."""
    if client == "httpx":
        with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), http2=True, timeout=patience) as app:
            response = app.get(url)
            return Answer(response.status_code, response.headers.get("x-tlsgate-check"), response.text, response.http_version)
    extra = ["--cacert", str(gate.ca_cert), "-w", "\n%{http_version}"]
    extra.append("--http2" if transport == "https-h2" else "--http1.1")
    result = curl(gate.proxy_url, url, *extra, timeout=patience)
    body, _, version = result.body.rpartition("\n")
    return Answer(result.status, result.headers.get("x-tlsgate-check"), body, version)


def the_fault(gate: Tlsgate, host: str, kind: str = "timeout") -> dict:
    (finding,) = [f for f in gate.wait_findings(1) if f["check"] == "fault"]
    assert (finding["action"], finding["host"], finding["evidence"]["kind"]) == ("failed", host, kind), finding
    return finding


# -- the body clock ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "client"),
    [("http", "curl"), ("https-h1", "curl"), ("https-h2", "curl"), ("https-h2", "httpx")],
)
def test_a_body_trickled_a_byte_a_second_is_a_504_over_every_transport(tlsgate, upstream, transport: str, client: str) -> None:
    """The issue's case: the server answers its head, then a byte a second; the body would take five minutes."""
    server = upstream(transport)
    host = host_for(transport)
    gate = gate_with(tlsgate, {host: server.port}, "tlsgate_response_idle_timeout=2")
    scheme = "http" if transport == "http" else "https"
    answer = fetch(gate, transport, f"{scheme}://{host}:{server.port}/trickle", client)
    trickle_done = server.finished  # read when the app had its answer
    assert (answer.status, answer.check) == (504, "fault"), answer
    assert answer.http_version in (("2", "HTTP/2") if transport == "https-h2" else ("1.1", "HTTP/1.1")), answer
    assert "Upstream failed" in answer.body and "x" * 2 not in answer.body  # nothing of the held body passed on
    assert not trickle_done and server.sent < BODY
    finding = the_fault(gate, host)
    assert (finding["evidence"]["phase"], finding["evidence"]["option"]) == ("response_body", "tlsgate_response_idle_timeout")
    # Progress is the body's own bytes, not the TLS records or HTTP/2 frames that carried them.
    assert finding["evidence"]["received_bytes"] <= server.sent, finding
    # The upstream exchange ended: HTTP/1's connection closed, HTTP/2's stream reset (its connection may serve others).
    assert eventually(lambda: server.closed.is_set() or bool(server.resets), timeout=10)
    if transport != "https-h2":
        assert server.closed.is_set()
    assert 'tlsgate_requests_total{check="fault",decision="failed",transport="tcp"} 1.0' in gate.scrape()


@pytest.mark.parametrize("transport", ["https-h1", "https-h2"])
def test_a_trickle_whose_tls_records_outweigh_a_kib_a_window_is_still_a_stall(tlsgate, upstream, transport: str) -> None:
    """40 body bytes a second: 80 a 2-second window, far under the 1 KiB a held body must bring; as TLS records
    (and HTTP/2 frames) about 1.8-2.5 KiB, which a clock counting the connection's bytes took for progress."""
    server = upstream(transport, interval=0.025)
    gate = gate_with(tlsgate, {"api.test": server.port}, "tlsgate_response_idle_timeout=2")
    answer = fetch(gate, transport, f"https://api.test:{server.port}/trickle")
    assert (answer.status, answer.check) == (504, "fault"), answer
    assert not server.finished
    finding = the_fault(gate, "api.test")
    assert finding["evidence"]["phase"] == "response_body" and finding["evidence"]["received_bytes"] < 1024


# -- the head clock -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_that_never_answers_the_request_is_a_504_over_every_transport(tlsgate, upstream, transport: str) -> None:
    server = upstream(transport)
    host = host_for(transport)
    gate = gate_with(tlsgate, {host: server.port}, "tlsgate_response_head_timeout=2")
    scheme = "http" if transport == "http" else "https"
    answer = fetch(gate, transport, f"{scheme}://{host}:{server.port}/silent")
    assert (answer.status, answer.check) == (504, "fault"), answer
    finding = the_fault(gate, host)
    assert finding["evidence"]["phase"] == "response_head" and "received_bytes" not in finding["evidence"]
    assert "within 2 s (tlsgate_response_head_timeout)" in finding["detail"]
    assert eventually(lambda: server.closed.is_set() or bool(server.resets), timeout=10)


def test_over_http2_a_stalled_request_is_reset_alone_and_the_apps_other_requests_go_on(tlsgate, upstream) -> None:
    """Phones send many requests over one HTTP/2 connection: a server that never answers one of them must get a
    reset for that stream, and a 504 for it, while a slow but steady download beside it completes."""
    server = upstream("https-h2")
    gate = gate_with(tlsgate, {"api.test": server.port}, "tlsgate_response_head_timeout=2")
    base = f"https://api.test:{server.port}"

    async def app() -> tuple[httpx.Response, httpx.Response, bool]:
        async with httpx.AsyncClient(proxy=gate.proxy_url, verify=str(gate.ca_cert), http2=True, timeout=PATIENCE) as c:
            assert (await c.get(f"{base}/ok")).http_version == "HTTP/2"  # one connection, then two streams on it
            stalled, steady = await asyncio.gather(c.get(f"{base}/silent"), c.get(f"{base}/steady"))
            # while the app still holds its connection: once it hangs up, tlsgate rightly closes the upstream too
            return stalled, steady, server.closed.is_set()

    stalled, steady, closed_meanwhile = asyncio.run(app())
    assert (stalled.status_code, stalled.headers.get("x-tlsgate-check")) == (504, "fault")
    assert steady.status_code == 200 and steady.content == b"y" * 1500
    assert server.connections == 1 and len(server.resets) == 1 and not closed_meanwhile
    (finding,) = gate.findings()
    assert (finding["evidence"]["kind"], finding["evidence"]["phase"]) == ("timeout", "response_head")


# -- per-host limits and apps that give up first --------------------------------------------------------------


def readme_timeouts_policy() -> str:
    """The policy block README's "Limits and timeouts" shows: this test runs it, as written."""
    section = docs_section("Limits and timeouts")
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return block


def test_a_rule_sets_one_hosts_head_limit_and_other_hosts_keep_the_option(
    tlsgate, upstream, pki: tuple[Chain, Path, Path, Path], tmp_path: Path
) -> None:
    """README's example: pay.example.com gets its own 8 s; another host keeps the option (6 s here). An app that
    gives up on that other host after 4 s is recorded as giving up, naming the option's limit, not as a timeout."""
    leaf = make_leaf(pki[0].intermediate, ("pay.example.com", "shop.example.com"), ())
    cert_file, key_file = write_server_files(tmp_path, leaf, pki[0].intermediate, name="example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = upstream("https-h1", context)
    policy = readme_timeouts_policy()
    hosts = {"pay.example.com": server.port, "shop.example.com": server.port}
    gate = gate_with(tlsgate, hosts, "tlsgate_response_head_timeout=6", policy=policy)
    answers: dict[str, Answer] = {}

    def ask(host: str, patience: float) -> None:
        answers[host] = fetch(gate, "https-h1", f"https://{host}:{server.port}/silent", patience=patience)

    threads = [threading.Thread(target=ask, args=a) for a in (("pay.example.com", PATIENCE), ("shop.example.com", 4))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE + 10)
    assert (answers["pay.example.com"].status, answers["pay.example.com"].check) == (504, "fault")
    assert answers["shop.example.com"].status == 0  # curl's own --max-time ended it: no answer from tlsgate
    findings = {f["host"]: f for f in gate.wait_findings(2)}
    pay, shop = findings["pay.example.com"], findings["shop.example.com"]
    line = policy.splitlines().index(next(x for x in policy.splitlines() if "response_head: 8" in x)) + 1
    assert pay["evidence"]["kind"] == "timeout" and pay["evidence"]["timeout_s"] == 8.0
    assert pay["evidence"]["set_at"] == f"policy.yaml:{line}" and pay["rule"].startswith("policy.yaml:")
    assert f"within 8 s (timeouts.response_head at policy.yaml:{line})" in pay["detail"]
    assert (shop["evidence"]["kind"], shop["evidence"]["phase"], shop["evidence"]["timeout_s"]) == (
        "client_gave_up",
        "response_head",
        6.0,
    )
    assert shop["evidence"]["option"] == "tlsgate_response_head_timeout" and "set_at" not in shop["evidence"]
    assert shop["evidence"]["waited_s"] >= 3.5 and "the app gave up after" in shop["detail"]
    assert re.search(
        r"shop\.example\.com: the app gave up after \d+\.\d s waiting for the server's complete "
        r"response head \(tlsgate's limit: 6 s, tlsgate_response_head_timeout\)",
        gate.output,
    ), gate.output


def test_an_app_that_gives_up_on_a_held_body_is_recorded_as_giving_up(tlsgate, upstream) -> None:
    """tlsgate holds a small body until it is complete, so the app sees nothing of a trickle: its own timeout
    (here curl's 7 s) comes long before the 60 s idle clock; the finding says so and counts from the request."""
    server = upstream("https-h1")
    gate = gate_with(tlsgate, {"api.test": server.port}, "tlsgate_response_idle_timeout=60")
    answer = fetch(gate, "https-h1", f"https://api.test:{server.port}/trickle", patience=7)
    assert answer.status == 0
    finding = the_fault(gate, "api.test", "client_gave_up")
    assert (finding["evidence"]["phase"], finding["evidence"]["timeout_s"]) == ("response_body", 60.0)
    assert finding["evidence"]["waited_s"] >= 6
    assert eventually(server.closed.is_set, timeout=10)  # the upstream request ended with the app's


def test_an_http2_app_that_gives_up_is_recorded_too(tlsgate, upstream) -> None:
    server = upstream("https-h2")
    gate = gate_with(tlsgate, {"api.test": server.port}, "tlsgate_response_head_timeout=30")
    with pytest.raises(httpx.ReadTimeout):
        fetch(gate, "https-h2", f"https://api.test:{server.port}/silent", client="httpx", patience=6)
    finding = the_fault(gate, "api.test", "client_gave_up")
    assert (finding["evidence"]["phase"], finding["evidence"]["timeout_s"]) == ("response_head", 30.0)


def test_an_app_that_gives_up_while_tlsgate_is_still_connecting_is_recorded_not_blamed(tlsgate) -> None:
    """The app's CONNECT waits for tlsgate's own connect (eager: the server is judged before the app is answered);
    its 6 s timeout ends it before tlsgate's 8 s connect clock: a `client_gave_up` finding in phase connect."""
    with full_accept_queue() as port:
        policy = POLICY + "  - name: slow-net\n    hosts: api.test\n    timeouts: {connect: 8}\n"
        gate = gate_with(tlsgate, {"api.test": port}, policy=policy)
        result = curl(gate.proxy_url, f"https://api.test:{port}/", "--cacert", str(gate.ca_cert), timeout=6)
        assert result.returncode == 28, result  # curl's own timeout
        finding = the_fault(gate, "api.test", "client_gave_up")
    assert (finding["evidence"]["phase"], finding["evidence"]["timeout_s"]) == ("connect", 8.0)
    assert finding["evidence"]["set_at"] == "policy.yaml:11" and finding["rule"] == "policy.yaml:9"
    assert not [f for f in gate.findings() if f["check"] == "client_trust" or f["evidence"]["kind"] == "timeout"]
