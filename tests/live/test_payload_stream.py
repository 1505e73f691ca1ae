"""Streamed request bodies end to end: real curl (HTTP/1.1 chunked `-T -`, HTTP/2) and Python clients upload
through a real tlsgate to an upstream that records exactly which body bytes reached it.

A chunked body past mitmproxy's 1 MiB streaming threshold is inspected as it passes, up to `max_bytes`; a
blocked one reaches the server as its head and not one byte of its body; report mode forwards it intact."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import httpx
import pytest
import zstandard

from tests.certgen import Chain
from tests.harness import Tlsgate, eventually
from tests.tlsservers import BodyRecorder

pytestmark = pytest.mark.live

STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak
MiB = 1 << 20
POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: report
rules:
  - name: uploads
    hosts: api.test
    payload: {secrets: block, max_bytes: 4194304}
  - name: uploads-watched
    hosts: www.test
    mode: report
    payload: {secrets: block, max_bytes: 4194304}
  - name: uploads-large-window
    hosts: cdn.test
    mode: report
    payload: {secrets: block, max_bytes: 8388608}
"""


def upload_body(size: int, secret_at: int | None, noisy: bool = False) -> bytes:
    """JSON lines of telemetry-like records, `size` bytes, with a provider key in the record at `secret_at`;
    `noisy` records carry random hex digests (so the body stays large when compressed)."""
    if noisy:
        rng = random.Random(24)
        lines = [b'{"event": "frame", "digest": "%s"}\n' % rng.randbytes(32).hex().encode() for _ in range(size // 90 + 1)]
        body = bytearray(b"".join(lines))
    else:
        line = b'{"event": "frame", "ts": 1733500000, "note": "' + b"n" * 180 + b'"}\n'
        body = bytearray(line * (size // len(line) + 1))
    if secret_at is not None:
        record = b'{"event": "config", "stripe_key": "' + STRIPE.encode() + b'"}\n'
        at = body.index(b"\n", secret_at) + 1
        body[at : at + len(record)] = record
    return bytes(body[:size])


@pytest.fixture
def recorder(pki: tuple[Chain, Path, Path, Path], request: pytest.FixtureRequest) -> Iterator[BodyRecorder]:
    _, _, cert_file, key_file = pki
    server = BodyRecorder(cert_file, key_file, h2=getattr(request, "param", False)).start()
    yield server
    server.stop()


@pytest.fixture
def gate(tlsgate, recorder: BodyRecorder) -> Tlsgate:
    return tlsgate(POLICY, resolve={"api.test": recorder.port, "www.test": recorder.port, "cdn.test": recorder.port})


def curl_upload(gate: Tlsgate, url: str, body: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """curl reading the body from stdin: HTTP/1.1 sends it chunked (no length known), HTTP/2 as DATA frames."""
    cmd = ["curl", "-sS", "--noproxy", "", "-x", gate.proxy_url, "--cacert", str(gate.ca_cert), "--max-time", "60"]
    cmd += ["-o", "-", "-w", "\n%{http_code}", "-T", "-", "-H", "Content-Type: application/json", *extra, url]
    return subprocess.run(cmd, input=body, capture_output=True, timeout=90)


def status_of(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.rsplit(b"\n", 1)[-1].decode()


@pytest.mark.parametrize(("recorder", "version"), [(False, "--http1.1"), (True, "--http2")], indirect=["recorder"])
def test_a_secret_past_1_mib_in_a_chunked_upload_blocks_it_and_the_server_gets_no_body_byte(
    gate: Tlsgate, recorder: BodyRecorder, version: str
) -> None:
    body = upload_body(6 * MiB, secret_at=2 * MiB)  # past mitmproxy's threshold, inside the 4 MiB window
    done = curl_upload(gate, f"https://api.test:{recorder.port}/v1/upload", body, version, "-H", "Transfer-Encoding: chunked")
    assert status_of(done) == "403" and b"Blocked by tlsgate: payload" in done.stdout, done  # while still sending
    (finding,) = [f for f in gate.wait_findings(1) if f["check"] == "payload"]
    assert finding["action"] == "blocked" and finding["evidence"]["keys"][0]["format"] == "stripe_secret_key"
    assert finding["evidence"]["inspected_bytes"] == 4 * MiB and "streamed" not in finding["evidence"]
    # what the server may have had: the head (mitmproxy sends it when it starts streaming); no body byte
    assert eventually(lambda: all(seen.closed or seen.reset for seen in recorder.received))
    assert [(len(seen.body), seen.complete) for seen in recorder.received] == [(0, False)], recorder.received
    if version == "--http2":
        assert recorder.received[0].reset and not recorder.received[0].closed  # HTTP/2: its stream reset only
    else:
        assert recorder.received[0].closed  # HTTP/1: its connection closed
    assert "Traceback" not in gate.output and "crashed" not in gate.output, gate.output


@pytest.mark.parametrize(("recorder", "version"), [(False, "--http1.1"), (True, "--http2")], indirect=["recorder"])
def test_report_mode_forwards_a_chunked_upload_intact_and_records_the_secret(
    gate: Tlsgate, recorder: BodyRecorder, version: str
) -> None:
    body = upload_body(6 * MiB, secret_at=3 * MiB)
    done = curl_upload(gate, f"https://www.test:{recorder.port}/v1/upload", body, version, "-H", "Transfer-Encoding: chunked")
    assert status_of(done) == "200", done
    answer = json.loads(done.stdout.rsplit(b"\n", 1)[0])
    assert answer == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}  # every byte, in order
    (finding,) = [f for f in gate.wait_findings(1) if f["check"] == "payload"]
    assert finding["action"] == "reported" and finding["evidence"]["keys"][0]["format"] == "stripe_secret_key"


def test_a_chunked_upload_with_nothing_to_find_passes_intact(gate: Tlsgate, recorder: BodyRecorder) -> None:
    body = upload_body(3 * MiB, secret_at=None)
    done = curl_upload(gate, f"https://api.test:{recorder.port}/v1/upload", body, "-H", "Transfer-Encoding: chunked")
    assert status_of(done) == "200", done
    assert json.loads(done.stdout.rsplit(b"\n", 1)[0])["sha256"] == hashlib.sha256(body).hexdigest()
    assert [f for f in gate.findings() if f["check"] == "payload"] == []


COMPRESS = {"br": brotli.compress, "zstd": lambda data: zstandard.ZstdCompressor().compress(data)}


@pytest.mark.parametrize("encoding", ["br", "zstd"])
@pytest.mark.parametrize("size", [200_000, 3 * MiB])  # held whole by mitmproxy; streamed by its Content-Length
def test_brotli_and_zstd_bodies_are_decoded_and_their_secrets_blocked(
    gate: Tlsgate, recorder: BodyRecorder, encoding: str, size: int
) -> None:
    body = COMPRESS[encoding](upload_body(size, secret_at=size // 2, noisy=True))
    assert (len(body) > MiB) == (size > MiB)  # the large one is past mitmproxy's threshold compressed, too
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), timeout=30) as client:
        status = client.post(f"https://api.test:{recorder.port}/v1/batch", content=body, headers=headers).status_code
        clean = COMPRESS[encoding](upload_body(size, secret_at=None, noisy=True))
        passed = client.post(f"https://api.test:{recorder.port}/v1/batch", content=clean, headers=headers)
    assert status == 403 and passed.status_code == 200
    (finding,) = [f for f in gate.wait_findings(1) if f["check"] == "payload"]
    assert finding["action"] == "blocked" and finding["evidence"]["keys"][0]["format"] == "stripe_secret_key"
    # held whole by mitmproxy: nothing of it reached the server; streamed: its head did, and no body byte
    assert [len(seen.body) for seen in recorder.received if not seen.complete] == ([] if size < MiB else [0])
    assert [hashlib.sha256(seen.body).digest() for seen in recorder.completed()] == [hashlib.sha256(clean).digest()]


def test_a_50_mb_chunked_upload_being_inspected_does_not_starve_another_client(gate: Tlsgate, recorder: BodyRecorder) -> None:
    """While one client's upload is under way (fed in halves, the second only after the other client's
    requests), another client's small requests are answered: progress is asserted by order, not by time."""
    cmd = ["curl", "-sS", "--noproxy", "", "-x", gate.proxy_url, "--cacert", str(gate.ca_cert), "--max-time", "120"]
    cmd += ["-o", "-", "-w", "\n%{http_code}", "-T", "-", "-H", "Transfer-Encoding: chunked"]
    upload = subprocess.Popen([*cmd, f"https://www.test:{recorder.port}/v1/big"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    half = upload_body(25 * MiB, secret_at=MiB)
    assert upload.stdin is not None
    feeder = threading.Thread(target=upload.stdin.write, args=(half,))
    feeder.start()
    feeder.join(60)
    assert eventually(lambda: any(seen.path == "/v1/big" for seen in recorder.received), timeout=30)
    answered = []
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), timeout=30) as other:
        for n in range(5):
            response = other.post(f"https://api.test:{recorder.port}/v1/ping", content=b'{"n": %d}' % n)
            answered.append((response.status_code, any(seen.complete and seen.path == "/v1/big" for seen in recorder.received)))
    assert answered == [(200, False)] * 5  # each answered while the upload was still going
    out, _ = upload.communicate(upload_body(25 * MiB, secret_at=None), timeout=120)
    assert out.rsplit(b"\n", 1)[-1] == b"200"
    big = next(seen for seen in recorder.received if seen.path == "/v1/big")
    assert big.complete and len(big.body) == 50 * MiB
    payload = [f for f in gate.wait_findings(1) if f["check"] == "payload"]
    assert [(f["action"], f["evidence"]["inspected_bytes"]) for f in payload] == [("reported", 4 * MiB)]


def test_a_fast_upload_into_an_8_mib_window_arrives_whole_and_another_client_is_answered_meanwhile(
    gate: Tlsgate, recorder: BodyRecorder
) -> None:
    """A client writing a large window (8 MiB) as fast as it can: another client's request, on a connection made
    before, is answered before the upload's verdict (the window's bytes reach the server only at the verdict).
    Ordering only, no timing. Should the client outrun the sliced scan (twice the window held), its reading
    pauses and the scan goes on in slices (tests/unit/test_payload_stream.py pins that path)."""
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), timeout=30) as other:
        assert other.post(f"https://api.test:{recorder.port}/v1/ping", content=b'{"n": 0}').status_code == 200
        cmd = ["curl", "-sS", "--noproxy", "", "-x", gate.proxy_url, "--cacert", str(gate.ca_cert), "--max-time", "120"]
        cmd += ["-o", "-", "-w", "\n%{http_code}", "-T", "-", "-H", "Transfer-Encoding: chunked"]
        upload = subprocess.Popen(
            [*cmd, "-H", "Content-Type: application/json", f"https://cdn.test:{recorder.port}/v1/fast"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        body = upload_body(24 * MiB, secret_at=MiB)
        done: list[bytes] = []
        feeder = threading.Thread(target=lambda: done.append(upload.communicate(body)[0]))
        feeder.start()

        def fast() -> list:
            return [seen for seen in recorder.received if seen.path == "/v1/fast"]

        assert eventually(lambda: bool(fast()), timeout=30, interval=0.002)  # its head went upstream: window filling
        response = other.post(f"https://api.test:{recorder.port}/v1/ping", content=b'{"n": 1}')
        judged = len(fast()[0].body) > 0
        feeder.join(120)
    assert (response.status_code, judged) == (200, False)  # answered before the upload's verdict
    assert done and done[0].rsplit(b"\n", 1)[-1] == b"200"
    big = fast()[0]
    assert big.complete and big.body == body
    payload = [f for f in gate.wait_findings(1) if f["check"] == "payload"]
    assert [(f["action"], f["evidence"]["inspected_bytes"]) for f in payload] == [("reported", 8 * MiB)]


def test_the_stream_benchmark_runs() -> None:
    """benchmarks/payload_stream.py --quick: every proxy carries every upload whole (speed is printed, not asserted)."""
    import re
    import sys

    from tests.harness import REPO

    done = subprocess.run(
        [sys.executable, "benchmarks/payload_stream.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = re.findall(r"^\| (mitmdump|tlsgate [^|]+) \| [\d.]+ \| [\d.]+x \| [\d.]+x \|", done.stdout, re.M)
    assert len(rows) == 4, done.stdout
