"""gRPC streaming calls through a real tlsgate, judged message by message as they pass (real grpcio client and
server, HTTP CONNECT, TLS, HTTP/2).

A bidirectional call gets its answers while the app still sends (mitmproxy alone buffers the request body until
the app half-closes, so such a call hangs until its deadline); a message that must be blocked and everything
after it never reach the server, and the app gets PERMISSION_DENIED naming the rule; report mode forwards
every message intact; ECB across one stream's messages is caught; a stream of 100,000 small messages does not
keep another client's calls waiting.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness import eventually
from tests.live.test_grpc import KEY, RULE_LINE, STRIPE, aes_ecb, channel, profile
from tests.tlsservers import GrpcServer
from tlsgate.payload.grpc import encode

POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: report
rules:
  - name: app-api
    hosts: api.test
    payload: {ecb: block, secrets: block}
"""
REPORT = POLICY.replace("mode: enforce", "mode: report")
assert KEY


@pytest.fixture
def grpc_server(pki: tuple[object, Path, Path, Path]) -> Iterator[GrpcServer]:
    _, _, cert_file, key_file = pki
    server = GrpcServer(cert_file, key_file).start()
    yield server
    server.stop()


def received(server: GrpcServer, method: str) -> list[bytes]:
    return [message for name, message in list(server.received) if name == method]


def test_a_bidirectional_call_gets_each_answer_while_it_still_sends(tlsgate, grpc_server: GrpcServer) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": grpc_server.port})
    replies: queue.Queue[bytes] = queue.Queue()
    waited: list[int] = []

    def requests() -> Iterator[bytes]:
        for index in range(5):
            yield profile(f"user-{index}")
            replies.get(timeout=15)  # the echo of this message, before the next one is sent (the app's side stays open)
            waited.append(index)

    with channel(gate, grpc_server.port) as chan:
        chat = chan.stream_stream(f"/{GrpcServer.SERVICE}/Chat")
        answers = []
        for answer in chat(requests(), timeout=60):
            answers.append(answer)
            replies.put(answer)
    assert waited == [0, 1, 2, 3, 4], "every answer arrived while the call was still open"
    assert [a[1] for a in answers] == [0, 1, 2, 3, 4]
    assert received(grpc_server, "Chat") == [profile(f"user-{i}") for i in range(5)]


def test_a_secret_in_message_37_of_50_stops_the_call_there(tlsgate, grpc_server: GrpcServer) -> None:
    """Client streaming: the answer has not begun, so the app gets a trailers-only PERMISSION_DENIED."""
    gate = tlsgate(POLICY, resolve={"api.test": grpc_server.port})
    messages = [profile(f"user-{i}", STRIPE if i == 37 else None) for i in range(50)]
    with channel(gate, grpc_server.port) as chan:
        upload = chan.stream_unary(f"/{GrpcServer.SERVICE}/Upload")
        with pytest.raises(grpc.RpcError) as raised:
            upload(iter(messages), timeout=30)
    error = raised.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
    assert RULE_LINE in error.details() and "secrets: ignore" in error.details(), error.details()
    # tlsgate forwards 0..36 and then resets the server's stream; grpcio's server drops what it had received but not
    # yet handed to the handler when the reset comes, so the handler sees a prefix (the bidirectional test below,
    # which waits for each echo, shows all of them arrive)
    got = received(grpc_server, "Upload")
    assert got == messages[: len(got)] and len(got) <= 37, "message 37 and after never reach the server"
    assert eventually(lambda: len(gate.findings()) >= 1)
    (finding,) = gate.findings()
    assert (finding["action"], finding["evidence"]["kind"]) == ("blocked", "provider_key")
    assert finding["evidence"]["grpc"]["index"] == 37
    assert finding["evidence"]["keys"][0]["field"] == "grpc[37].3.1"
    assert STRIPE not in gate.findings_path.read_text() + gate.output


def test_a_bidirectional_call_refused_after_its_answers_began_ends_with_the_status(tlsgate, grpc_server: GrpcServer) -> None:
    """The server's answers had begun (37 echoes): the status comes as trailers after the last whole echo."""
    gate = tlsgate(POLICY, resolve={"api.test": grpc_server.port})
    replies: queue.Queue[bytes] = queue.Queue()
    messages = [profile(f"user-{i}", STRIPE if i == 37 else None) for i in range(50)]

    def requests() -> Iterator[bytes]:
        for message in messages:
            yield message
            replies.get(timeout=15)  # its echo: the server handled it before the next one is sent

    answers: list[bytes] = []
    with channel(gate, grpc_server.port) as chan:
        chat = chan.stream_stream(f"/{GrpcServer.SERVICE}/Chat")
        with pytest.raises(grpc.RpcError) as raised:
            for answer in chat(requests(), timeout=60):
                answers.append(answer)
                replies.put(answer)
    assert [a[1] for a in answers] == list(range(37))
    error = raised.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
    assert RULE_LINE in error.details(), error.details()
    assert received(grpc_server, "Chat") == messages[:37], "messages 0..36 reached the server, 37 and after never"


def test_a_bidirectional_call_refused_at_its_headers_is_answered_at_once(tlsgate, grpc_server: GrpcServer) -> None:
    """A provider key in the call's metadata: refused before anything goes upstream, answered while the app still
    holds its side open (mitmproxy answers only once the body ends: the call would wait for its deadline)."""
    gate = tlsgate(POLICY, resolve={"api.test": grpc_server.port})
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        yield profile("user-1")
        release.wait(30)  # the app's side stays open, as a listener's does

    with channel(gate, grpc_server.port) as chan:
        chat = chan.stream_stream(f"/{GrpcServer.SERVICE}/Chat")
        with pytest.raises(grpc.RpcError) as raised:
            for _ in chat(requests(), timeout=25, metadata=[("x-api-key", STRIPE)]):
                pass
        release.set()
    error = raised.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
    assert RULE_LINE in error.details(), error.details()
    assert received(grpc_server, "Chat") == []


def telemetry_batch(seq: int) -> bytes:
    """One event per message, AES-ECB with one key; a note of 0, 16 or 32 bytes in front moves the same blocks of
    the rest to other block positions from one message to the next (no block repeats within one message)."""
    event = {"note": "n" * (16 * (seq % 3)), "event": "screen_view", "screen": "home", "device": "device-7", "seq": seq}
    return encode([(1, "device-7"), (4, aes_ecb(json.dumps(event).encode()))])


def test_ecb_across_the_messages_of_one_stream_is_caught(tlsgate, grpc_server: GrpcServer) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": grpc_server.port})
    messages = [telemetry_batch(seq) for seq in range(6)]
    with channel(gate, grpc_server.port) as chan:
        upload = chan.stream_unary(f"/{GrpcServer.SERVICE}/Upload")
        with pytest.raises(grpc.RpcError) as raised:
            upload(iter(messages), timeout=30)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert eventually(lambda: len(gate.findings()) >= 1)
    (finding,) = gate.findings()
    assert finding["action"] == "blocked" and finding["check"] == "payload", finding
    assert finding["evidence"]["grpc"]["index"] == 1, "caught by comparing message 1 with message 0 of the stream"
    assert finding["evidence"]["fields"][0]["basis"] == "moved_block", finding["evidence"]
    got = received(grpc_server, "Upload")
    assert got == messages[: len(got)] and len(got) <= 1, "message 1 and after never reach the server"


def test_report_mode_forwards_every_message_intact_and_records(tlsgate, grpc_server: GrpcServer) -> None:
    gate = tlsgate(REPORT, resolve={"api.test": grpc_server.port})
    messages = [profile(f"user-{i}", STRIPE if i in (3, 7) else None) for i in range(20)]
    with channel(gate, grpc_server.port) as chan:
        upload = chan.stream_unary(f"/{GrpcServer.SERVICE}/Upload")
        assert upload(iter(messages), timeout=30) == b"\x08\x02"
    assert received(grpc_server, "Upload") == messages
    batches = [telemetry_batch(seq) for seq in range(6)]
    with channel(gate, grpc_server.port) as chan:
        upload = chan.stream_unary(f"/{GrpcServer.SERVICE}/Upload")
        assert upload(iter(batches), timeout=30) == b"\x08\x02"
    assert received(grpc_server, "Upload") == messages + batches
    assert eventually(lambda: len(gate.findings()) >= 2)
    found = [(f["action"], f["evidence"]["kind"], f["evidence"]["grpc"]["index"]) for f in gate.findings()]
    # a habit is written once per device, host and kind (then counted), whichever message shows it again
    assert found == [("reported", "provider_key", 3), ("reported", "ecb", 1)], found


def test_a_stream_of_100000_small_messages_does_not_starve_another_client(tlsgate, grpc_server: GrpcServer) -> None:
    """While one call streams 100,000 messages, each judged, another client's unary calls are answered: each
    answer comes back while the server has received only part of the stream (what tlsgate forwarded so far)."""
    gate = tlsgate(POLICY, resolve={"api.test": grpc_server.port})
    total = 100_000
    progress: list[int] = []  # messages of the stream the server had when the other client got each answer
    done = threading.Event()

    def flood() -> Iterator[bytes]:
        for index in range(total):
            yield encode([(1, index), (2, "evt"), (3, 1_732_000_000 + index)])

    def other_client() -> None:
        with channel(gate, grpc_server.port) as chan:
            push = chan.unary_unary(f"/{GrpcServer.SERVICE}/Push")
            while not done.is_set() and len(progress) < 50:
                assert push(profile("other"), timeout=60) == b"\x08\x01"
                progress.append(len(received(grpc_server, "Upload")))

    with channel(gate, grpc_server.port) as chan:
        upload = chan.stream_unary(f"/{GrpcServer.SERVICE}/Upload")
        future = upload.future(flood(), timeout=600)
        assert eventually(lambda: len(received(grpc_server, "Upload")) >= 1000, timeout=120)
        worker = threading.Thread(target=other_client)
        worker.start()
        assert future.result() == b"\x08\x02"
        done.set()
        worker.join(timeout=60)
    stream = received(grpc_server, "Upload")
    assert len(stream) == total and stream[-1] == encode([(1, total - 1), (2, "evt"), (3, 1_732_000_000 + total - 1)])
    during = [count for count in progress if count < total]
    assert len(during) >= 3, progress  # answered again and again while the stream was still passing through
    assert during == sorted(during)
