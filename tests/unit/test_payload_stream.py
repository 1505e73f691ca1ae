"""Streamed request bodies: Content-Encoding decoded as it arrives within the limit (gzip, deflate, br, zstd,
stacked), decompression bombs stopped with bounded memory, and the held window that keeps a body's first
`max_bytes` from the server until they are judged."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from tests.addonkit import wired
from tlsgate.addons.payload import PayloadInspector, StreamWindow
from tlsgate.payload.bounds import Decoder, Steps, bounded_body
from tlsgate.payload.window import OVERHOLD, HeldWindow, WindowGate

STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak
GiB = 1 << 30

CODECS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("encoding", [*CODECS, "gzip, br", "br, zstd", "zstd, gzip, deflate"])
def test_every_encoding_and_stacks_of_them_decode_whole_and_cut_at_the_limit(encoding: str) -> None:
    data = json.dumps([{"user": f"u{i}", "note": "hello world"} for i in range(2000)]).encode()
    body = data
    for name in (n.strip() for n in encoding.split(",")):  # applied in the order listed, as RFC 9110 says
        body = CODECS[name](body)
    assert bounded_body(body, encoding, 1 << 20) == (data, True)
    assert bounded_body(body, encoding, 1000) == (data[:1000], False)


def test_a_body_that_is_not_what_its_encoding_says_is_judged_as_its_bytes() -> None:
    assert bounded_body(b"plain text, not brotli", "br", 1 << 20) == (b"plain text, not brotli", True)
    assert bounded_body(b"plain text, not zstd", "zstd", 5) == (b"plain", False)
    assert bounded_body(b"as is", "compress", 100) == (b"as is", True)  # an encoding tlsgate does not decode


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """1 GiB of zeros in each codec, made in pieces (the test never holds the gigabyte)."""
    zeros = b"\0" * (16 << 20)
    gz = zlib.compressobj(9, wbits=31)
    zs = zstandard.ZstdCompressor(level=3).compressobj()
    br = brotli.Compressor(quality=4)
    out = {"gzip": b"", "zstd": b"", "br": b""}
    for _ in range(GiB // len(zeros)):
        out["gzip"] += gz.compress(zeros)
        out["zstd"] += zs.compress(zeros)
        out["br"] += br.process(zeros)
    out["gzip"] += gz.flush()
    out["zstd"] += zs.flush()
    out["br"] += br.finish()
    out["gzip, br"] = brotli.compress(out["gzip"])
    return out


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "gzip, br"])
def test_a_decompression_bomb_stops_at_the_limit_with_bounded_memory(bombs: dict[str, bytes], encoding: str) -> None:
    bomb = bombs[encoding]
    assert len(bomb) < 2 << 20  # a gigabyte in at most 2 MiB (gzip: about 1 MiB; br and zstd: a few KB)
    tracemalloc.start()
    try:
        data, complete = bounded_body(bomb, encoding, 65536)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) == 65536 and not complete
    assert peak < len(bomb) + (4 << 20), peak  # the input's copy plus a few MiB, never the gigabyte

    window = HeldWindow(65536, encoding)  # the same bomb arriving as a stream, in 16 KiB chunks
    tracemalloc.start()
    try:
        for at in range(0, len(bomb), 16384):
            window.add(bomb[at : at + 16384])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(window.data) == 65536 and window.ready and not window.undecodable
    assert peak < 2 * len(bomb) + (4 << 20), peak  # the raw chunks held, and one decoder pull


def test_the_decoder_produces_only_what_is_pulled() -> None:
    decoder = Decoder("zstd")
    decoder.push(zstandard.ZstdCompressor().compress(b"\0" * (256 << 20)))
    assert len(decoder.pull(1000)) < 1 << 20  # at most one feed's worth (4 zstd blocks) past what was asked
    assert not decoder.done


# -- the held window -------------------------------------------------------------------------------------


def gate_of(judge: Callable[[HeldWindow, list[str]], Steps[bool]], wanted: int = 1000, encoding: str = "") -> WindowGate:
    failures: list[Exception] = []
    gate = WindowGate(wanted, encoding, judge, lambda n: n, lambda n: None, failures.append)
    gate.failures = failures  # type: ignore[attr-defined]
    return gate


def verdict(refuse: bool, seen: list[bytes] | None = None) -> Callable[[HeldWindow, list[str]], Steps[bool]]:
    def judge(window: HeldWindow, capped: list[str]) -> Steps[bool]:
        if seen is not None:
            seen.append(bytes(window.data))
        yield None
        return refuse

    return judge


def test_the_window_is_held_until_judged_then_passed_in_order() -> None:
    seen: list[bytes] = []
    gate = gate_of(verdict(False, seen))
    assert gate(b"a" * 600) == [] and gate(b"b" * 300) == []  # 900 of 1000 held: nothing goes upstream
    assert gate(b"c" * 300) == [b"a" * 600, b"b" * 300, b"c" * 300]  # the window filled: judged, all of it passes
    assert seen == [b"a" * 600 + b"b" * 300 + b"c" * 100]
    assert gate(b"d" * 5000) == [b"d" * 5000] and gate(b"") == []  # past the window: not inspected, passed as is


def test_a_refused_window_forwards_nothing_ever() -> None:
    gate = gate_of(verdict(True))
    assert gate(b"secret" * 100) == [] and gate(b"x" * 1000) == []
    assert gate.blocked and gate(b"more") == [] and gate(b"") == []
    assert gate.window is not None and gate.window.held == [] and gate.window.held_bytes == 0  # dropped


def test_a_short_body_is_judged_at_its_end_and_never_yields_an_empty_chunk() -> None:
    gate = gate_of(verdict(False))
    assert gate(b"short") == [] and gate(b"") == []  # the end: held until judged (in the request hook)
    steps = list(gate.ending())  # what the add-on's request hook runs, in slices, while the end waits
    assert steps and gate.passed and gate.flush() == [b"short"] and gate.flush() == []
    blocked = gate_of(verdict(True))
    assert blocked(b"short") == [] and blocked(b"") == []  # b"" would be a last chunk (HTTP/1 chunked): never sent
    blocked.finish()  # what mitm_internals does if the hook did not judge it
    assert blocked.blocked and blocked.flush() == [] and blocked(b"") == []


def test_a_judge_that_raises_refuses() -> None:
    def broken(window: HeldWindow, capped: list[str]) -> Steps[bool]:
        raise RuntimeError("boom")
        yield None

    gate = gate_of(broken)
    assert gate(b"x" * 2000) == [] and gate.blocked
    assert [type(exc) for exc in gate.failures] == [RuntimeError]  # type: ignore[attr-defined]


def test_a_slow_scan_holds_at_most_overhold_windows_then_finishes() -> None:
    steps = 0

    def slow(window: HeldWindow, capped: list[str]) -> Steps[bool]:
        nonlocal steps
        for _ in range(100):
            steps += 1
            time.sleep(0.002)
            yield None
        return False

    gate = gate_of(slow)
    out: list[bytes] = []
    for _ in range(10):
        out += gate(b"z" * 400)  # each chunk's call scans one slice (5 ms), then hands the event loop back
    assert steps == 100 and gate.passed  # finished once the held chunks passed OVERHOLD windows
    assert gate.held_peak <= OVERHOLD * 1000 + 400
    assert b"".join(out) == b"z" * 4000


def test_a_compressed_window_is_judged_on_the_decoded_bytes() -> None:
    seen: list[bytes] = []
    gate = gate_of(verdict(False, seen), wanted=100, encoding="br")
    body = brotli.compress(b"{" + b'"k": "v", ' * 1000 + b"}")
    out = [piece for at in range(0, len(body), 7) for piece in gate(body[at : at + 7])]
    out += gate(b"")
    assert seen == [(b"{" + b'"k": "v", ' * 1000)[:100]] and b"".join(out) == body  # judged once 100 bytes decoded


# -- the add-on's glue ---------------------------------------------------------------------------------

POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: report
rules:
  - hosts: block.test
    payload: {secrets: block}
"""


@pytest.fixture
def inspector(tmp_path: Path) -> Iterator[tuple[PayloadInspector, Path]]:
    with wired(POLICY, tmp_path) as kit:
        yield kit.get(PayloadInspector), kit.findings


def streamed(host: str, encoding: str = "", chunked: bool = False) -> http.HTTPFlow:
    headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    headers += [(b"transfer-encoding", b"chunked")] if chunked else [(b"content-length", str(5 << 20).encode())]
    headers += [(b"content-encoding", encoding.encode())] if encoding else []
    request = tutils.treq(host=host, port=443, scheme=b"https", path=b"/up", headers=http.Headers(headers), content=b"")
    flow = tflow.tflow(req=request)
    flow.client_conn.peername = ("127.0.0.1", 50000)
    flow.request.content = None
    flow.request.stream = not chunked  # mitmproxy streams a Content-Length body past its threshold from the start
    return flow


@pytest.mark.parametrize("encoding", ["", "br", "zstd", "gzip, br"])
def test_a_secret_in_a_streamed_body_blocks_it_before_the_server_gets_a_byte(
    inspector: tuple[PayloadInspector, Path], encoding: str
) -> None:
    addon, findings = inspector
    flow = streamed("block.test", encoding)
    addon.requestheaders(flow)
    window = flow.request.stream
    assert isinstance(window, StreamWindow)
    body = json.dumps({"pad": "x" * 30000, "key": STRIPE, "more": "y" * 90000}).encode()
    for name in [n.strip() for n in encoding.split(",") if n.strip()]:
        body = CODECS[name](body)
    sent = [piece for at in range(0, len(body), 4096) for piece in window(body[at : at + 4096])]
    sent += window(b"")  # the end: nothing handed over before it is judged
    window.finish()
    sent += window.flush()
    assert sent == []  # nothing of the window (nor anything after it) went upstream
    response = window.refusal()
    assert response is not None and response.status_code == 403
    (finding,) = [json.loads(line) for line in findings.read_text().splitlines()]
    assert finding["action"] == "blocked" and finding["evidence"]["keys"][0]["format"] == "stripe_secret_key"
    assert flow.error is not None  # killed: mitmproxy's own handling never forwards it


def test_a_chunked_body_gets_a_window_that_costs_nothing_until_mitmproxy_streams_it(
    inspector: tuple[PayloadInspector, Path],
) -> None:
    addon, _ = inspector
    flow = streamed("report.test", chunked=True)
    addon.requestheaders(flow)
    assert flow.request.stream is False  # still buffered: mitm_internals switches to the window past 1 MiB
    assert addon.holdings.held == 0
    flow.request.content = b'{"a": 1}'  # it stayed small: judged whole in the request hook, as before
    addon.request(flow)
    assert flow.response is None and addon.holdings.held == 0


def test_a_grpc_call_is_not_held(inspector: tuple[PayloadInspector, Path]) -> None:
    """A bidirectional gRPC call may wait for the server's answers mid-body: holding it could stall the call."""
    addon, _ = inspector
    flow = streamed("block.test")
    flow.request.headers["content-type"] = "application/grpc+proto"
    addon.requestheaders(flow)
    assert flow.request.stream is True


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip"])
def test_a_compressed_body_gets_a_window_of_max_bytes_decoded_not_of_its_length(
    inspector: tuple[PayloadInspector, Path], encoding: str
) -> None:
    """A 4 KB compressed body that decodes to 60 KB: its Content-Length said nothing of how much to inspect."""
    addon, findings = inspector
    body = CODECS[encoding](json.dumps({"pad": "x" * 50_000, "key": STRIPE, "more": "y" * 5000}).encode())
    flow = streamed("block.test", encoding)
    flow.request.headers["content-length"] = str(len(body))
    addon.requestheaders(flow)
    window = flow.request.stream
    assert isinstance(window, StreamWindow) and len(body) < 4096
    assert window(body) == [] and window(b"") == []
    window.finish()
    assert window.blocked and window.window is not None and window.window.limit == 65536
    (finding,) = [json.loads(line) for line in findings.read_text().splitlines()]
    assert finding["action"] == "blocked" and finding["evidence"]["inspected_bytes"] > 50_000


def slow_judge(counter: list[int], steps: int = 60) -> Callable[[HeldWindow, list[str]], Steps[bool]]:
    def slow(window: HeldWindow, capped: list[str]) -> Steps[bool]:
        for _ in range(steps):
            counter[0] += 1
            time.sleep(0.002)
            yield None
        return False

    return slow


def test_an_overheld_window_pauses_a_client_that_can_be_paused_and_finishes_in_slices() -> None:
    """A client sending faster than its window is judged: past OVERHOLD windows its reading pauses and the scan
    goes on a slice per turn of the event loop (`resume`, as mitm_internals' HeldResume calls it), never at once;
    reading goes on once judged, and the held chunks pass in order."""
    steps = [0]
    pauses: list[bool] = []
    wakes: list[int] = []
    out: list[bytes] = []

    async def run() -> None:
        gate = gate_of(slow_judge(steps))
        gate.pause = lambda paused: pauses.append(paused) is None  # paused (a TCP client)
        gate.wake = lambda: wakes.append(steps[0]) is None or True
        for _ in range(10):
            out.extend(gate(b"z" * 400))  # 4000 bytes: past OVERHOLD (2) windows of 1000 while the scan runs
        assert not gate.passed and steps[0] < 60  # not scanned to its end at once
        assert gate.paused and pauses == [True]
        while not gate.passed:
            await asyncio.sleep(0)
            if wakes:
                wakes.clear()
                out.extend(gate.resume())
        assert gate.at_once == 0 and gate.deferred > 1 and pauses == [True, False] and not gate.paused

    asyncio.run(run())
    assert steps[0] == 60 and b"".join(out) == b"z" * 4000


def test_an_overheld_window_of_a_client_that_cannot_be_paused_finishes_at_once() -> None:
    """HTTP/3 and WireGuard clients are UDP-borne: their reading cannot pause, so the rest is scanned at once."""
    steps = [0]

    async def run() -> WindowGate:
        gate = gate_of(slow_judge(steps))
        gate.pause = lambda paused: False
        gate.wake = lambda: True
        out: list[bytes] = []
        for _ in range(10):
            out.extend(gate(b"z" * 400))
        assert b"".join(out) == b"z" * 4000
        return gate

    gate = asyncio.run(run())
    assert steps[0] == 60 and gate.passed and gate.at_once == 1 and gate.deferred == 0 and not gate.paused


def test_a_paused_window_whose_stream_is_gone_drops_what_it_held_and_reads_on() -> None:
    steps = [0]
    pauses: list[bool] = []

    async def run() -> WindowGate:
        gate = gate_of(slow_judge(steps))
        gate.pause = lambda paused: pauses.append(paused) is None
        gate.wake = lambda: False  # the stream ended meanwhile
        for _ in range(10):
            gate(b"z" * 400)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return gate

    gate = asyncio.run(run())
    assert gate.blocked and pauses == [True, False] and gate.window is not None and gate.window.held_bytes == 0
