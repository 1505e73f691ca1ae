"""Hostile clients (issue 11) against a real tlsgate: hello record floods, huge and slow heads, fuzz, fd exhaustion.

Each test sends the hostile input over real sockets, checks the bound that
stopped it (the finding's counts, the 431, the close), that nothing reached
the upstream, and that an ordinary client is served afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import Tlsgate, Upstream, curl, eventually, read_head

POLICY = "version: 1\nrules:\n  - hosts: [api.test]\n    cleartext: allow\n"


def client_hello(host: str = "api.test") -> bytes:
    """A real ClientHello from Python's ssl module, as the handshake message (no record header)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=host)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    record = outgoing.read()
    assert record[0] == 0x16 and len(record) == 5 + int.from_bytes(record[3:5], "big"), "one record expected"
    return record[5:]


def records(body: bytes, size: int) -> bytes:
    """`body` as TLS handshake records of `size` bytes each."""
    return b"".join(
        b"\x16\x03\x01" + len(body[i : i + size]).to_bytes(2, "big") + body[i : i + size] for i in range(0, len(body), size)
    )


def connect_tunnel(port: int, authority: str, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def send_until_closed(sock: socket.socket, data: bytes, chunk: int = 4096) -> tuple[int, bytes]:
    """Send `data` in chunks until the peer answers or closes: (bytes the kernel accepted, the start of the answer)."""
    sent = 0
    try:
        while sent < len(data):
            if select.select([sock], [], [], 0)[0] and (early := _pending(sock)) is not None:
                return sent, early  # the proxy answered (or closed): stop, so the answer can still be read
            sent += sock.send(data[sent : sent + chunk])
    except OSError:  # reset, broken pipe, or TLS's EOF: the proxy closed
        pass
    return sent, b""


def _pending(sock: socket.socket) -> bytes | None:
    """What can be read now without waiting; None when nothing (a TLS 1.3 session ticket is not an answer)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return None
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)


def closed_by_peer(sock: socket.socket, timeout: float = 10) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def served(gate: Tlsgate, upstream: Upstream) -> bool:
    done = curl(gate.proxy_url, f"https://api.test:{upstream.port}/ok", "--cacert", str(gate.ca_cert), timeout=10)
    return done.status == 200


def metric(gate: Tlsgate, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in gate.scrape().splitlines():
        if line.startswith(f"{name}{{{wanted}}}"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not exposed")


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PREFIXES = (b"", b"\x16\x03\x01", b"\x16\x03\x03\x02\x00\x01\x00\x01\xfc\x03\x03", b"CONNECT ", b"GET / HTTP/1.1\r\n", H2_PREFACE)


def mutated(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(5, len(out))] = rng.randrange(256)
    return bytes(out)


def fuzz_inputs(count: int, seed: int = 11) -> list[bytes]:
    """Seeded random connections: a protocol-looking prefix (TLS record, CONNECT, request line, HTTP/2 preface)
    followed by 0-4 KiB of random bytes, or a real ClientHello with a few bytes changed."""
    rng = random.Random(seed)
    hello = records(client_hello(), 16384)
    inputs = []
    for _ in range(count):
        if rng.random() < 0.4:
            inputs.append(mutated(hello, rng))
        else:
            inputs.append(rng.choice(PREFIXES) + rng.randbytes(rng.choice((0, 1, 5, 64, 700, 4096))))
    return inputs


def fuzz_one(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.5)
            while sock.recv(65536):
                pass
        except OSError:
            pass


def fuzz(port: int, inputs: list[bytes], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda data: fuzz_one(port, data), inputs))


def open_fds(gate: Tlsgate) -> int:
    assert gate.proc is not None
    return len(os.listdir(f"/proc/{gate.proc.pid}/fd"))


def tls_in_tunnel(port: int, upstream: Upstream, ca: Path) -> ssl.SSLSocket:
    sock = connect_tunnel(port, f"api.test:{upstream.port}")
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(sock, server_hostname="api.test")


def request_status(sock: socket.socket, path: str) -> int:
    """One keep-alive request on an open connection; its status (the body is read, so the next one can follow)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    response.begin()
    response.read()
    return response.status


def answer(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while len(data) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError, ssl.SSLError):
        pass
    return data


# -- 1. ClientHello floods ----------------------------------------------------------------------------


def test_a_hello_in_one_byte_records_is_closed_at_the_record_bound(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port})
    sock = connect_tunnel(gate.port, f"api.test:{https_upstream.port}")
    with sock:
        send_until_closed(sock, records(client_hello(), 1), chunk=6)
        assert closed_by_peer(sock), "the flooding client was not closed"
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["host"]) == ("client_hello", "blocked", "api.test")
    evidence = finding["evidence"]
    assert evidence["kind"] == "fragmented_hello" and evidence["records"] == 257 and evidence["max_records"] == 256
    assert finding["client"].startswith("127.0.0.1:") and finding["rule"].endswith("policy.yaml:3")
    assert https_upstream.requests == []
    assert metric(gate, "tlsgate_client_bounds_total", bound="hello_records") == 1
    assert served(gate, https_upstream), "an ordinary client was not served after the flood"


def test_a_hello_declaring_200000_bytes_is_closed_at_once_while_others_are_served(tlsgate, https_upstream: Upstream) -> None:
    """The issue's flood: 200,000 one-byte records. The bound closes it at the fourth record; an ordinary client
    is served while the flood is still being sent (no timing asserted, only that it is served)."""
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port})
    body = b"\x01" + (200_000 - 4).to_bytes(3, "big") + bytes(200_000 - 4)
    sock = connect_tunnel(gate.port, f"api.test:{https_upstream.port}")
    flood = records(body, 1)
    outcome: list[tuple[bytes, bool]] = []

    def flood_then_wait() -> None:
        # Only this thread touches the socket (two threads reading one socket raced in CI). The 1.2 MB flood can
        # fit whole into loopback's socket buffers before tlsgate reads its fourth record (CI saw that), so what
        # is asserted is that tlsgate closed the connection; the finding's record count says where it stopped.
        sent, early = send_until_closed(sock, flood, 600)
        outcome.append((early, sent < len(flood) or closed_by_peer(sock, 30)))

    flooding = threading.Thread(target=flood_then_wait)
    flooding.start()
    try:
        assert served(gate, https_upstream)
        flooding.join(timeout=60)
        assert not flooding.is_alive() and outcome, "the flooding thread never finished"
        early, closed = outcome[0]
        assert closed and early == b"", ("tlsgate never closed the flooding connection", early[:50])
    finally:
        flooding.join(timeout=60)
        sock.close()
    (finding,) = gate.wait_findings(1)
    assert finding["evidence"]["kind"] == "oversized_hello"
    assert (finding["evidence"]["records"], finding["evidence"]["declared_bytes"]) == (4, 200_000)
    assert "Cannot parse ClientHello" not in gate.output


CLEARTEXT_POLICY = "version: 1\ndefaults:\n  cleartext: block\nrules:\n  - hosts: [api.test]\n"
MQTT_LOGIN = b"\x10\x1c\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03dev\x00\x04user\x00\x06secret"


def established(port: int) -> int:
    """tlsgate's client sockets that are still ESTABLISHED, as `ss` lists them."""
    listed = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    )
    return sum(1 for line in listed.stdout.splitlines() if line.strip())


@pytest.mark.parametrize("refused", ["oversized_hello", "cleartext_stream"])
def test_200_refused_clients_leave_no_socket_or_descriptor_behind(tlsgate, https_upstream: Upstream, refused: str) -> None:
    """200 clients each send what tlsgate refuses (a hello declaring 200,000 bytes; MQTT with a password in the clear)
    with 100 KB more behind it, and never hang up: only tlsgate can end their connections. mitmproxy reads on while
    the next_layer hook completes, so the close lands while the connection waits for its event lock; before
    `mitm_internals.close_connections_however_they_end` every one of them stayed ESTABLISHED, its descriptor held
    for good (the flaky test above was one such client)."""
    policy = POLICY if refused == "oversized_hello" else CLEARTEXT_POLICY
    gate = tlsgate(policy, resolve={"api.test": https_upstream.port})
    assert served(gate, https_upstream)
    assert eventually(lambda: established(gate.port) == 0, timeout=10)
    baseline = open_fds(gate)
    if refused == "oversized_hello":
        body = b"\x01" + (200_000 - 4).to_bytes(3, "big") + bytes(200_000 - 4)
        start = records(body, 1)[:100_000]
    else:
        start = MQTT_LOGIN + bytes(100_000)

    def refused_client(_: int) -> socket.socket:
        sock = connect_tunnel(gate.port, f"api.test:{https_upstream.port}")
        with contextlib.suppress(OSError):  # tlsgate may close before it has taken everything
            sock.sendall(start)
        return sock

    with ThreadPoolExecutor(16) as pool:
        clients = list(pool.map(refused_client, range(200)))
    try:
        gone = eventually(lambda: established(gate.port) == 0 and open_fds(gate) <= baseline, timeout=30, interval=0.5)
        assert gone, f"{established(gate.port)} refused clients still ESTABLISHED, {open_fds(gate) - baseline} descriptors held"
        assert all(closed_by_peer(sock, timeout=5) for sock in clients)
    finally:
        for sock in clients:
            sock.close()
    if refused == "oversized_hello":
        assert metric(gate, "tlsgate_client_bounds_total", bound="hello_bytes") == 200
    else:
        assert metric(gate, "tlsgate_cleartext_total", action="blocked", protocol="mqtt") == 200
    assert len(https_upstream.requests) == 1, "only the first ordinary client's request went upstream"
    assert served(gate, https_upstream)


# -- 2. Huge request heads ----------------------------------------------------------------------------

HUGE = 31 << 20


def test_a_31_mib_plain_request_head_is_answered_431_and_never_forwarded(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": http_upstream.port})
    head = f"GET http://api.test:{http_upstream.port}/ HTTP/1.1\r\nHost: api.test\r\nCookie: ".encode() + b"a" * HUGE
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sent, early = send_until_closed(sock, head, chunk=65536)
        reply = early + answer(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"X-Tlsgate-Check: request" in reply and sent < HUGE
    (finding,) = gate.wait_findings(1)
    assert finding["evidence"]["kind"] == "oversized_request_head"
    assert 65536 < finding["evidence"]["received_bytes"] <= 65536 + 65535  # the bound plus at most one read
    assert http_upstream.connections == 0 and http_upstream.requests == []
    assert metric(gate, "tlsgate_client_bounds_total", bound="request_head") == 1


def test_a_huge_head_inside_tls_is_answered_431_too(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port}, args=("--set", "tlsgate_max_request_head=16384"))
    with tls_in_tunnel(gate.port, https_upstream, gate.ca_cert) as tls:
        head = b"GET /in-tls HTTP/1.1\r\nHost: api.test\r\nX-Pad: " + b"a" * (4 << 20)
        _, early = send_until_closed(tls, head, chunk=16384)
        reply = early + answer(tls)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    (finding,) = gate.wait_findings(1)
    assert (finding["host"], finding["evidence"]["max_bytes"]) == ("api.test", 16384)
    assert https_upstream.requests == []
    assert served(gate, https_upstream)


# -- 3. Slow and half-open clients --------------------------------------------------------------------


def test_slow_clients_are_closed_and_their_descriptors_freed(tlsgate, https_upstream: Upstream) -> None:
    """20 silent connections, 20 half-sent heads, 20 idle CONNECT tunnels (each holding an upstream connection):
    all closed after the head timeout, the proxy's descriptors back to where they were; a client that finished its
    request and keeps the connection idle is left alone."""
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port}, args=("--set", "tlsgate_client_head_timeout=3"))
    keep_alive = tls_in_tunnel(gate.port, https_upstream, gate.ca_cert)
    keep_alive.settimeout(10)
    assert request_status(keep_alive, "/first") == 200
    baseline = open_fds(gate)
    silent = [socket.create_connection(("127.0.0.1", gate.port), timeout=10) for _ in range(20)]
    half = [socket.create_connection(("127.0.0.1", gate.port), timeout=10) for _ in range(20)]
    for sock in half:
        sock.sendall(b"GET http://api.test/ HTTP/1.1\r\nHost: api.te")
    tunnels = [connect_tunnel(gate.port, f"api.test:{https_upstream.port}") for _ in range(20)]
    held = silent + half + tunnels
    try:
        assert eventually(lambda: open_fds(gate) >= baseline + 80, timeout=10), open_fds(gate)  # 60 clients, 20 upstreams
        assert all(closed_by_peer(sock, timeout=20) for sock in held)
        assert eventually(lambda: open_fds(gate) <= baseline, timeout=10), (baseline, open_fds(gate))
        findings = gate.wait_findings(60)
        assert sorted({f["evidence"]["stage"] for f in findings}) == ["request_head", "tunnel_data"]
        assert all(f["evidence"]["kind"] == "slow_client" and f["action"] == "blocked" for f in findings)
        assert metric(gate, "tlsgate_client_bounds_total", bound="head_timeout") == 60
        assert request_status(keep_alive, "/second") == 200, "an idle keep-alive connection was closed"
        assert len(https_upstream.requests) == 2
    finally:
        for sock in [*held, keep_alive]:
            sock.close()


# -- 4. Fuzz and contained crashes --------------------------------------------------------------------


def test_fuzzed_connections_leave_no_traceback_and_the_proxy_serves(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port})
    fuzz(gate.port, fuzz_inputs(300, seed=11))
    assert served(gate, https_upstream)
    assert "Traceback" not in gate.output and "has crashed" not in gate.output
    assert max(len(line) for line in gate.lines) < 4096, "a console line quotes what a client sent at length"


CRASHING_ADDON = """
from mitmproxy.proxy import events, layer


class Boom(layer.Layer):
    def _handle_event(self, event):
        if isinstance(event, events.DataReceived):
            raise RuntimeError("boom\\n[CRITICAL] forged")
        yield from ()


def next_layer(nextlayer):
    if nextlayer.data_client().startswith(b"BOOM"):
        nextlayer.layer = Boom(nextlayer.context)
"""


def test_a_crash_inside_mitmproxy_is_one_folded_line_and_a_metric(tlsgate, https_upstream: Upstream, tmp_path: Path) -> None:
    """A layer that raises on client bytes (loaded as a mitmproxy script, the way a real mitmproxy bug would
    surface): mitmdump prints a traceback per connection; tlsgate prints one line per 10 s and counts them all."""
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_ADDON)
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port}, args=("--set", f"scripts={script}"))
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as sock:
            sock.sendall(b"BOOM\r\n")
    assert eventually(lambda: metric(gate, "tlsgate_internal_errors_total", where="connection") == 30, timeout=10)
    assert "Traceback" not in gate.output
    contained = [line for line in gate.lines if "contained an error inside mitmproxy" in line]
    assert 1 <= len(contained) <= 2, contained  # one line, plus one more if the 30 straddled a 10 s window
    assert "RuntimeError: boom\\x0a[CRITICAL] forged" in contained[0]
    assert not any(line.lstrip().startswith("[CRITICAL] forged") for line in gate.lines)
    assert served(gate, https_upstream)


# -- 5. Out of file descriptors -----------------------------------------------------------------------


def test_running_out_of_descriptors_logs_a_few_lines_and_recovers(tmp_path: Path, pki, https_upstream: Upstream) -> None:
    """At 128 descriptors (soft and hard, so tlsgate cannot raise them), 200 CONNECTs exhaust them. mitmdump logs a
    traceback per failed accept (33,000 lines in 10 s here); tlsgate one line per 10 s, and serves once they close."""
    root: Path = pki[1]
    (tmp_path / "policy.yaml").write_text(POLICY)
    command = [
        "prlimit", "--nofile=128:128", sys.executable, "-m", "tlsgate", "run", "--listen-port", "0", "--metrics-port", "0",
        "--confdir", str(tmp_path / "certs"), "--findings", "", "--policy", str(tmp_path / "policy.yaml"),
        "--upstream-ca", str(root), "--resolve", f"api.test:{https_upstream.port}:127.0.0.1",
        "--set", "tlsgate_max_client_connections=0",
    ]  # fmt: skip
    gate = Tlsgate(tmp_path, command=command).start()
    held: list[socket.socket] = []
    try:
        for _ in range(200):
            try:
                sock = socket.create_connection(("127.0.0.1", gate.port), timeout=2)
                sock.sendall(f"CONNECT api.test:{https_upstream.port} HTTP/1.1\r\n\r\n".encode())
            except OSError:
                break
            held.append(sock)
        assert eventually(lambda: "out of system resource" in gate.output, timeout=10), "descriptors never ran out"
        time.sleep(3)  # unbounded, asyncio would log hundreds of tracebacks a second here
        assert "Traceback" not in gate.output
        assert 1 <= sum("out of system resource" in line for line in gate.lines) <= 2
    finally:
        for sock in held:
            sock.close()
    try:
        assert eventually(lambda: served(gate, https_upstream), timeout=30), "no recovery after the clients closed"
        assert metric(gate, "tlsgate_internal_errors_total", where="accept") > 10  # every failed accept, counted
    finally:
        gate.stop()
