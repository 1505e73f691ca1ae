"""A gRPC call's messages cut out of its body as chunks arrive (`tlsgate.payload.grpc.Splitter`), and the stream
callable that holds each until judged (`tlsgate.payload.grpc_gate.MessageGate`, `tlsgate.addons.payload.GrpcCall`)."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.test import tflow

from tlsgate.addons.payload import GrpcCall
from tlsgate.payload.grpc import Boundaries, Piece, Splitter, frame, frames


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def split(data: bytes, cuts: list[int], limit: int) -> tuple[list[Piece], int]:
    splitter = Splitter(limit)
    pieces: list[Piece] = []
    peak = 0
    for chunk in chunked(data, cuts):
        pieces += splitter.feed(chunk)
        peak = max(peak, splitter.held_bytes)
    return pieces + splitter.end(), peak


messages = st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_any_chunking_gives_the_messages_whole_parsing_gives(batch: list[tuple[bytes, bool]], cuts: list[int]) -> None:
    body = b"".join(frame(gzip.compress(m) if c else m, compressed=c) for m, c in batch)
    pieces, peak = split(body, cuts, 4096)
    assert b"".join(p.wire for p in pieces) == body, "every byte forwarded, once, in order"
    whole = frames(body, "gzip", 1 << 20, True)
    assert whole is not None
    assert [p.index for p in pieces] == list(range(len(batch)))
    assert [(frame(p.message or b"", p.compressed)) for p in pieces] == [p.wire for p in pieces]
    assert [gzip.decompress(p.message or b"") if p.compressed else p.message for p in pieces] == [m for m, _ in whole.messages]
    assert not any(p.cut for p in pieces)
    assert peak <= 5 + 300 + 40  # one incomplete message (gzip adds its header and trailer)


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=0, max_value=(1 << 32) - 1), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=10),
    st.integers(min_value=0, max_value=3000),
)
def test_huge_or_truncated_lengths_stay_bounded(lengths: list[int], cuts: list[int], tail: int) -> None:
    """A header may claim up to 4 GiB: at most `limit` of it is ever held, the rest passes as it comes."""
    limit = 1024
    body = b"".join(bytes([0]) + n.to_bytes(4, "big") for n in lengths) + bytes(tail)
    pieces, peak = split(body, cuts, limit)
    assert b"".join(p.wire for p in pieces) == body
    assert peak < 5 + limit, "between chunks, at most one incomplete message's header and first `limit` bytes"
    judged = [p for p in pieces if p.message is not None]
    assert all(len(p.message or b"") <= limit for p in judged)
    assert all(p.cut for p in judged if p.length > limit)


def test_a_message_longer_than_the_limit_is_judged_on_its_first_limit_bytes_and_its_rest_passes() -> None:
    splitter = Splitter(8)
    body = frame(b"A" * 20) + frame(b"bb")
    pieces = splitter.feed(body[:10]) + splitter.feed(body[10:20]) + splitter.feed(body[20:]) + splitter.end()
    assert [(p.message, p.cut, p.length) for p in pieces] == [
        (b"A" * 8, True, 20),  # held until its first 8 bytes were in, then judged
        (None, False, 7),  # the rest of it passes as it comes, unjudged
        (None, False, 5),
        (b"bb", False, 2),
    ]
    assert [p.index for p in pieces if p.message is not None] == [0, 1]


def test_bytes_that_are_not_grpc_framing_are_judged_as_bytes_as_they_come() -> None:
    splitter = Splitter(4)
    pieces = splitter.feed(frame(b"ok") + b"\x42not framing")
    assert [(p.message, p.framed) for p in pieces] == [(b"ok", True), (b"\x42not", False), (b" fra", False), (b"ming", False)]
    assert splitter.held_bytes == 0, "nothing waits for more: the app may be waiting for an answer"


def test_boundaries_know_whether_a_status_may_follow() -> None:
    seen = Boundaries()
    assert seen.between
    body = frame(b"hello") + frame(b"")
    for byte in range(len(body)):
        seen.feed(body[byte : byte + 1])
        assert seen.between == (byte + 1 in (10, 15))


def secret(piece: Piece) -> bool:
    return piece.message is not None and b"secret" in piece.message


def call(judge: Callable[[Piece], bool] = secret) -> GrpcCall:
    flow = tflow.tflow()
    flow.request.headers["content-type"] = "application/grpc"
    failures: list[Exception] = []
    grpc_call = GrpcCall(flow, 1024, judge, failures.append)
    grpc_call.failures = failures  # type: ignore[attr-defined]
    return grpc_call


def test_a_message_is_forwarded_only_once_whole_and_judged_and_nothing_after_a_refused_one() -> None:
    messages = [frame(b"one"), frame(b"two"), frame(b"a secret"), frame(b"four")]
    body = b"".join(messages)
    stream = call()
    assert stream(body[:6]) == []  # message 0 is not complete: nothing goes
    assert stream(body[6:]) == messages[:2]
    assert stream.blocked and stream(frame(b"five")) == []
    stream.finish()
    assert stream.flush() == []


def test_an_exception_in_the_verdict_blocks() -> None:
    def broken(piece: Piece) -> bool:
        raise ValueError("boom")

    stream = call(broken)
    assert stream(frame(b"x")) == []
    assert stream.blocked and len(stream.failures) == 1  # type: ignore[attr-defined]
    assert stream.refusal() is not None


def test_a_message_the_body_ends_inside_is_judged_at_the_end() -> None:
    stream = call()
    assert stream(frame(b"ok") + frame(b"a secret!")[:-1]) == [frame(b"ok")]
    stream.finish()
    assert stream.blocked and stream.flush() == []


def test_judging_past_a_slice_waits_for_later_turns_and_keeps_the_order() -> None:
    asyncio.run(judged_in_slices())


async def judged_in_slices() -> None:
    """A read's worth of messages is judged a slice per turn of the event loop; what waits goes out in order."""

    def slow(piece: Piece) -> bool:
        time.sleep(0.002)
        return False

    stream = call(slow)
    stream._wake = lambda: None  # type: ignore[method-assign]  # no HttpStream here: `resume` is called below
    messages = [frame(bytes([i])) for i in range(20)]
    out = list(stream(b"".join(messages[:10])))
    assert 0 < len(out) < 10 and stream.pending, "the rest waits for a later turn"
    out += stream(b"".join(messages[10:]))  # behind the waiting ones, never before
    while stream.pending:
        await asyncio.sleep(0)
        out += stream.resume()
    assert out == messages and stream.deferred >= 1


def test_messages_waiting_past_the_pending_limit_are_judged_at_once() -> None:
    """A client whose reading cannot be paused (UDP-borne) must not grow the backlog without bound."""
    from tlsgate.payload import grpc_gate

    stream = call()
    stream._wake = lambda: None  # type: ignore[method-assign]
    stream.pending.append(Piece(frame(b"first"), b"first", 0))  # as if a slice had run out
    stream.pending_bytes = grpc_gate.PENDING_LIMIT
    out = stream(frame(b"next"))
    assert out == [frame(b"first"), frame(b"next")] and not stream.pending
