"""WebSocket messages through `PayloadInspector.websocket_message`: the add-ons of `make_addons()`, a policy, real
mitmproxy WebSocket flows; findings read back from the JSON-lines file, planted values searched for in it.

The close itself (1008 to both sides, nothing relayed after) is mitmproxy's layer's work, driven by
`tests/unit/test_websocket_layer.py` and proven end to end in `tests/live/test_websocket.py`.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from tests.addonkit import wired
from tests.payload_corpus import ecb
from tests.unit.test_payload_addon import KEY, POLICY, REPEATING
from tlsgate.addons import make_addons, mitm_internals
from tlsgate.addons.payload import PayloadInspector
from tlsgate.checks.payload import CLOSE_REASON_BYTES, close_reason


def settle(result: object) -> None:
    if inspect.isawaitable(result):
        asyncio.run(result)  # type: ignore[arg-type]


class Gate:
    def __init__(self, inspector: PayloadInspector, path: Path) -> None:
        self.inspector = inspector
        self.path = path

    def findings(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.exists() else []

    def raw(self) -> str:
        return self.path.read_text() if self.path.exists() else ""

    def send(self, flow: http.HTTPFlow, content: bytes | str, from_client: bool = True) -> WebSocketMessage:
        """One message arriving, as mitmproxy's layer hands it to the hook."""
        assert flow.websocket is not None
        data = content.encode() if isinstance(content, str) else content
        kind = Opcode.TEXT if isinstance(content, str) else Opcode.BINARY
        message = WebSocketMessage(kind, from_client, data)
        flow.websocket.messages.append(message)
        settle(self.inspector.websocket_message(flow))
        return message


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    with wired(POLICY, tmp_path) as kit:
        yield Gate(kit.get(PayloadInspector), kit.findings)


def wss(host: str) -> http.HTTPFlow:
    flow = tflow.twebsocketflow(messages=False)
    flow.request.host = host
    flow.request.headers["host"] = host
    flow.request.scheme = "https"
    flow.request.port = 443
    flow.client_conn.peername = ("127.0.0.1", 50000)
    assert flow.websocket is not None
    flow.websocket.messages = []
    return flow


def ecb_b64(plaintext: bytes) -> str:
    return base64.b64encode(ecb(KEY, plaintext)).decode()


def closing(flow: http.HTTPFlow) -> tuple[int, str] | None:
    return mitm_internals._ws_closing.get(flow)


def test_ecb_in_a_chat_message_is_held_back_and_the_connection_closed_with_1008_naming_the_rule(gate: Gate) -> None:
    flow = wss("api.test")
    hello = gate.send(flow, json.dumps({"type": "hello", "room": "general"}))
    value = ecb_b64(REPEATING)
    bad = gate.send(flow, json.dumps({"type": "msg", "body": value}))
    assert not hello.dropped and bad.dropped
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["host"]) == ("payload", "blocked", "api.test")
    assert finding["evidence"]["kind"] == "ecb" and finding["evidence"]["direction"] == "client_to_server"
    assert finding["evidence"]["websocket"] == {"index": 1, "type": "text", "bytes": len(bad.content)}
    assert finding["evidence"]["fields"][0]["field"] == "json.body"
    assert finding["detail"].startswith("a WebSocket message from the app to api.test carries AES-ECB")
    assert finding["rule"].endswith("policy.yaml:12") and "ecb: ignore" in finding["remedy"]
    code, reason = closing(flow) or (0, "")
    assert code == 1008 and reason.endswith("policy.yaml:12") and "ecb" in reason
    assert len(reason.encode()) <= CLOSE_REASON_BYTES
    assert value not in gate.raw()


def test_ecb_across_messages_is_caught_by_the_device_memory_as_across_requests(gate: Gate) -> None:
    """Neither message repeats a block; the same 16-byte plaintext block at another position in the next message
    gives the same cipher block moved: what BlockMemory remembers, per device, host and field."""
    flow = wss("api.test")
    first = gate.send(flow, json.dumps({"t": "m", "c": ecb_b64(b"room=general;seq" + b"user=alice;hello")}))
    assert not first.dropped and gate.findings() == []
    second = gate.send(flow, json.dumps({"t": "m", "c": ecb_b64(b"user=alice;hello" + b"how are you, bob")}))
    assert second.dropped
    (finding,) = gate.findings()
    assert finding["action"] == "blocked" and finding["evidence"]["websocket"]["index"] == 1


def test_report_mode_forwards_and_records_once_per_habit(gate: Gate) -> None:
    flow = wss("report.test")
    for _ in range(5):  # the same habit in every message: one finding, then counted like repeated requests
        message = gate.send(flow, json.dumps({"body": ecb_b64(REPEATING)}))
        assert not message.dropped and closing(flow) is None
    (finding,) = gate.findings()
    assert finding["action"] == "reported" and finding["evidence"]["websocket"]["index"] == 0


def test_a_server_message_is_judged_and_recorded_not_blocked(gate: Gate) -> None:
    flow = wss("api.test")
    message = gate.send(flow, json.dumps({"event": "update", "blob": ecb_b64(REPEATING)}), from_client=False)
    assert not message.dropped and closing(flow) is None
    (finding,) = gate.findings()
    assert finding["action"] == "reported" and finding["evidence"]["direction"] == "server_to_client"
    assert "from api.test to the app" in finding["detail"] and "recorded, not blocked" in finding["detail"]


def test_binary_frames_and_secrets_and_identifiers(gate: Gate) -> None:
    flow = wss("other.test")
    gate.send(flow, ecb(KEY, REPEATING))  # a binary frame of ECB ciphertext
    gate.send(flow, json.dumps({"op": "identify", "email": "Tester.Person@example.com"}))
    gate.send(flow, "42" + json.dumps(["auth", {"key": "AKIA" + "IOSFODNN7EXAMPLQ", "x": 1}]))  # Socket.IO framing
    kinds = {(f["evidence"]["kind"], f["evidence"]["websocket"]["index"]) for f in gate.findings()}
    assert ("ecb", 0) in kinds and ("identifier", 1) in kinds and ("provider_key", 2) in kinds
    assert "Tester.Person" not in gate.raw() and "IOSFODNN7" not in gate.raw()


def test_a_message_past_max_bytes_is_cut_and_the_finding_says_so(gate: Gate) -> None:
    flow = wss("report.test")
    value = ecb_b64(REPEATING)
    big = json.dumps({"body": value}) + " " * (70 * 1024)  # past the default 64 KiB
    gate.send(flow, "x " + value + " " + big)
    (finding,) = gate.findings()
    assert finding["evidence"]["capped"] == ["max_bytes"]
    assert finding["evidence"]["inspected_bytes"] == 64 * 1024 and finding["evidence"]["body_bytes"] > 70 * 1024


def test_ordinary_chat_is_forwarded_without_findings(gate: Gate) -> None:
    flow = wss("api.test")
    for i in range(50):
        message = gate.send(flow, json.dumps({"type": "msg", "id": i, "text": f"hello number {i}", "ts": 1700000000 + i}))
        assert not message.dropped
    gate.send(flow, json.dumps({"type": "ack", "id": 3}), from_client=False)
    assert gate.findings() == [] and closing(flow) is None


def test_an_exception_while_judging_holds_the_message_back_and_closes(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    monkeypatch.setattr("tlsgate.addons.payload.message_field_steps", broken)
    flow = wss("other.test")  # payload: report: without the guard the message would be relayed
    message = gate.send(flow, json.dumps({"hello": "world"}))
    assert message.dropped
    assert (closing(flow) or (0, ""))[0] == 1011
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("request", "blocked", "check_failed")
    assert "websocket_message" in finding["detail"]


def test_every_websocket_message_hook_of_every_add_on_fails_closed() -> None:
    # verdict add-ons (they record findings); Lifetime only notes the activity
    hooks = [type(addon) for addon in make_addons() if hasattr(addon, "sink") and hasattr(type(addon), "websocket_message")]
    assert PayloadInspector in hooks
    for kind in hooks:
        assert getattr(kind.websocket_message, "tlsgate_fail_closed", False), kind.__name__


def test_close_reason_fits_a_close_frame_and_keeps_the_line() -> None:
    rule = "/very/long/" + "directory/" * 30 + "policy.yaml:12"
    reason = close_reason("deterministic_encryption", rule)
    assert len(reason.encode()) <= CLOSE_REASON_BYTES and reason.endswith("policy.yaml:12")
    assert close_reason("ecb", "p.yaml:3") == "tlsgate blocked (ecb) by p.yaml:3"
    wide = close_reason("ecb", "/ü" * 100 + ".yaml:7")
    assert len(wide.encode()) <= CLOSE_REASON_BYTES and wide.endswith(".yaml:7")


@pytest.mark.parametrize(
    ("framed", "field"),
    [
        ('42/chat,7["secure",{"ct":"%s"}]', "json.[1].ct"),  # Socket.IO: packet type, namespace, ack id
        ('451-["upload",{"ct":"%s","file":{"_placeholder":true,"num":0}}]', "json.[1].ct"),  # a binary event
        ('{"type":1,"target":"Send","arguments":["%s"]}\x1e{"type":6}\x1e', "json.arguments.[0]"),  # SignalR records
        ('["1","5","room:1","new_msg",{"ct":"%s"}]', "json.[4].ct"),  # Phoenix
    ],
)
def test_framings_are_taken_off_so_findings_name_the_json_field(gate: Gate, framed: str, field: str) -> None:
    flow = wss("report.test")
    gate.send(flow, framed % ecb_b64(REPEATING))
    (finding,) = gate.findings()
    assert [item["field"] for item in finding["evidence"]["fields"]] == [field]


def test_message_indexes_survive_the_trimmed_message_list(gate: Gate) -> None:
    """mitmproxy keeps every message of a connection; with no capture configured nothing reads them back, so
    only the newest is kept (a flood must not grow the proxy), and the index still counts every message."""
    flow = wss("report.test")
    assert flow.websocket is not None
    for i in range(30):
        gate.send(flow, json.dumps({"type": "msg", "n": i}), from_client=i % 2 == 0)
    assert len(flow.websocket.messages) == 1
    gate.send(flow, json.dumps({"body": ecb_b64(REPEATING)}))
    (finding,) = gate.findings()
    assert finding["evidence"]["websocket"]["index"] == 30


def test_a_large_message_is_judged_in_slices_the_event_loop_gets_back(tmp_path: Path) -> None:
    """A message that takes more than one 5 ms slice is judged by a coroutine mitmproxy awaits (the message is
    held meanwhile), which hands the loop back between slices: other devices' traffic keeps moving."""
    policy = POLICY.replace("payload: {identifiers: ignore}", "payload: {identifiers: ignore, max_bytes: 8388608}")
    with wired(policy.replace("noid.test", "big.test"), tmp_path) as kit:
        gate = Gate(kit.get(PayloadInspector), kit.findings)
        flow = wss("big.test")
        assert flow.websocket is not None
        big = " ".join(base64.b64encode(bytes([i % 251]) * 48).decode() for i in range(60000))  # ~4 MiB of tokens
        flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, True, (ecb_b64(REPEATING) + " " + big).encode()))
        pending = gate.inspector.websocket_message(flow)
        assert inspect.isawaitable(pending)  # not judged at once: the rest runs in slices

        async def judge_beside_a_ticker() -> int:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0)
                    ticks += 1

            task = asyncio.create_task(ticker())
            await pending  # type: ignore[misc]
            task.cancel()
            return ticks

        assert asyncio.run(judge_beside_a_ticker()) > 1  # the loop ran other work while the message was judged
        (finding,) = gate.findings()
        assert finding["evidence"]["kind"] == "ecb" and finding["evidence"]["inspected_bytes"] > 3_800_000


def test_a_capture_keeps_every_message(tmp_path: Path) -> None:
    """With `--set save_stream_file=` the capture writes the connection's messages when it ends: none is trimmed."""
    from mitmproxy.addons import save

    with wired(POLICY, tmp_path) as kit:
        saver = save.Save()
        kit.tctx.master.addons.add(saver)
        kit.tctx.configure(saver, save_stream_file=str(tmp_path / "capture.mitm"))
        gate = Gate(kit.get(PayloadInspector), kit.findings)
        flow = wss("report.test")
        assert flow.websocket is not None
        for i in range(5):
            gate.send(flow, json.dumps({"n": i}))
        assert len(flow.websocket.messages) == 5
        kit.tctx.configure(saver, save_stream_file=None)
