"""WebSocket messages end to end: a real wsproto client through a real tlsgate to a real wss:// server that
records every message it gets. A blocked message never reaches the server; both sides see a 1008 close naming
the rule; report mode forwards; server messages are judged and recorded; ws:// stays a cleartext verdict."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.certgen import Chain
from tests.harness import REPO, Tlsgate
from tests.wspeers import WsClient, WsServer, server_context, wait_received

POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: report
devices:
  127.0.0.1: test-phone
identifiers:
  test-phone:
    email: Jane.Tester@example.org
rules:
  - name: chat
    hosts: api.test
    payload: {ecb: block, secrets: block}
  - name: web
    hosts: www.test
    mode: report
    payload: block
  - name: plain
    hosts: cdn.test
    cleartext: allow
"""
KEY = b"mysecretkey12345"


def aes_ecb(plaintext: bytes) -> str:
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    data = encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()
    return base64.b64encode(data).decode()


REPEATING = b'{"user":"alice","pad":"' + b"A" * 9 + b"0123456789abcdef" * 2 + b'"}'


@pytest.fixture
def wss_server(pki: tuple[Chain, Path, Path, Path]) -> Iterator[WsServer]:
    _, _, cert_file, key_file = pki
    server = WsServer(server_context(cert_file, key_file), reply="ok").start()
    yield server
    server.stop()


@pytest.fixture
def gate(tlsgate, wss_server: WsServer) -> Tlsgate:
    return tlsgate(POLICY, resolve={host: wss_server.port for host in ("api.test", "www.test", "cdn.test")})


def test_a_chat_message_with_ecb_is_never_relayed_and_both_sides_get_1008_naming_the_rule(
    gate: Tlsgate, wss_server: WsServer
) -> None:
    client = WsClient(gate.port, "api.test", gate.ca_cert, wss_server.port)
    assert client.upgraded
    hello = json.dumps({"type": "join", "room": "general"})
    client.send(hello)
    assert client.messages(1) == ["ok"]
    secret = aes_ecb(REPEATING)
    client.send(json.dumps({"type": "msg", "body": secret}), fragments=3)  # reassembled, then judged whole
    close = client.close_seen()
    assert close is not None and close.code == 1008
    assert "ecb" in (close.reason or "") and (close.reason or "").endswith("policy.yaml:11")
    assert wait_received(wss_server, 1) and wss_server.received == [hello]  # never one byte of the blocked one
    time.sleep(0.5)
    assert wss_server.received == [hello] and wss_server.closes == [(1008, close.reason)]
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["host"]) == ("payload", "blocked", "api.test")
    assert finding["evidence"]["kind"] == "ecb" and finding["evidence"]["direction"] == "client_to_server"
    assert finding["evidence"]["websocket"]["index"] == 2  # join, ok, then this one
    assert finding["rule"].endswith("policy.yaml:11") and "ecb: ignore" in finding["remedy"]
    assert secret not in gate.findings_path.read_text()


def test_report_mode_forwards_the_message_and_records_it(gate: Tlsgate, wss_server: WsServer) -> None:
    client = WsClient(gate.port, "www.test", gate.ca_cert, wss_server.port)
    message = json.dumps({"type": "msg", "body": aes_ecb(REPEATING)})
    client.send(message)
    assert client.messages(1) == ["ok"]
    assert wss_server.received == [message]
    (finding,) = gate.wait_findings(1)
    assert (finding["action"], finding["evidence"]["kind"], finding["evidence"]["websocket"]["index"]) == ("reported", "ecb", 0)
    client.close()


def test_a_server_message_is_judged_and_recorded_and_still_delivered(tlsgate, pki: tuple[Chain, Path, Path, Path]) -> None:
    _, _, cert_file, key_file = pki
    update = json.dumps({"event": "sync", "blob": aes_ecb(REPEATING)})
    server = WsServer(server_context(cert_file, key_file), reply=update).start()
    try:
        gate = tlsgate(POLICY, resolve={"api.test": server.port})
        client = WsClient(gate.port, "api.test", gate.ca_cert, server.port)
        client.send(json.dumps({"type": "sync"}))
        assert client.messages(1) == [update]
        (finding,) = gate.wait_findings(1)
        assert finding["action"] == "reported" and finding["evidence"]["direction"] == "server_to_client"
        assert finding["evidence"]["websocket"]["index"] == 1
        client.close()
    finally:
        server.stop()


def test_binary_frames_with_a_provider_key_are_blocked(gate: Tlsgate, wss_server: WsServer) -> None:
    client = WsClient(gate.port, "api.test", gate.ca_cert, wss_server.port)
    frame = b"\x08\x01\x12\x14" + ("AKIA" + "IOSFODNN7EXAMPLQ").encode() + b"\x18\x02"  # a protobuf with a key in field 2
    client.send(frame)
    close = client.close_seen()
    assert close is not None and close.code == 1008 and "provider_key" in (close.reason or "")
    time.sleep(0.3)
    assert wss_server.received == []
    (finding,) = gate.wait_findings(1)
    assert finding["evidence"]["websocket"] == {"index": 0, "type": "binary", "bytes": len(frame)}


def test_ws_cleartext_stays_a_cleartext_verdict(gate: Tlsgate, wss_server: WsServer) -> None:
    client = WsClient(gate.port, "api.test", None, wss_server.port)
    assert not client.upgraded
    (finding,) = gate.wait_findings(1)
    assert (finding["check"], finding["action"], finding["host"]) == ("cleartext", "blocked", "api.test")


def test_the_flood_benchmark_runs_and_finds_nothing_in_ordinary_messages() -> None:
    """benchmarks/websocket.py --quick: every message of the flood arrives through each proxy (speed is printed,
    not asserted), and the ordinary flood gets no finding."""
    done = subprocess.run(
        [sys.executable, "benchmarks/websocket.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^\| payload-report \| \d+ \| [\d.]+x \|", done.stdout, re.M), done.stdout
    assert "findings with inspection on: 0 " in done.stdout
