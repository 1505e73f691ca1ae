"""gRPC end to end: a real grpcio client, through a real tlsgate (HTTP CONNECT, TLS, HTTP/2), to a real grpcio server.

Calls whose protobuf fields carry a provider secret or AES-ECB ciphertext (plain, gzip-compressed, client
streaming) are refused with the gRPC status the client library reads (`PERMISSION_DENIED`, the rule in its
details) and the refused message never reaches the server; ordinary calls do. gRPC-Web (binary and base64 text) from an HTTP/2
client gets the same answer in its own framing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.harness import Tlsgate, eventually
from tests.tlsservers import GrpcServer, NginxH2
from tlsgate.payload.grpc import encode, frame

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
RULE_LINE = "policy.yaml:6"
STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak
KEY = b"mysecretkey12345"


def aes_ecb(plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    return encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()


def profile(user: str, secret: str | None = None) -> bytes:
    """{1: user id, 2: {1: display name, 2: updated_at}, 3: {1: api key}}: a profile update as an app sends it."""
    fields: list[tuple[int, int | bytes | str]] = [(1, user), (2, encode([(1, "Jane Tester"), (2, 1732000000)]))]
    if secret is not None:
        fields.append((3, encode([(1, secret)])))
    return encode(fields)


def telemetry(count: int) -> bytes:
    """A batch of same-shaped events, encrypted whole with AES-ECB into a bytes field: its blocks repeat."""
    events = [{"event": "screen_view", "screen": "home", "seq": i % 2, "props": {"theme": "dark"}} for i in range(count)]
    return encode([(1, "device-7"), (4, aes_ecb(json.dumps(events).encode()))])


@pytest.fixture
def nginx_h2(tmp_path: Path, pki: tuple[object, Path, Path, Path]) -> Iterator[NginxH2]:
    _, _, cert_file, key_file = pki
    directory = tmp_path / "nginx"
    directory.mkdir()
    server = NginxH2(directory, cert_file, key_file).start()
    yield server
    server.stop()


@pytest.fixture
def grpc_server(pki: tuple[object, Path, Path, Path]) -> Iterator[GrpcServer]:
    _, _, cert_file, key_file = pki
    server = GrpcServer(cert_file, key_file).start()
    yield server
    server.stop()


def channel(gate: Tlsgate, port: int) -> grpc.Channel:
    """A grpcio channel to api.test through tlsgate (HTTP CONNECT), trusting tlsgate's CA."""
    credentials = grpc.ssl_channel_credentials(root_certificates=gate.ca_cert.read_bytes())
    return grpc.secure_channel(f"api.test:{port}", credentials, options=[("grpc.http_proxy", gate.proxy_url)])


def call(chan: grpc.Channel, message: bytes, compression: grpc.Compression | None = None) -> bytes:
    method = chan.unary_unary(f"/{GrpcServer.SERVICE}/Push")  # no serializers: raw protobuf bytes
    return method(message, timeout=20, compression=compression)  # type: ignore[no-any-return]


def test_grpc_calls_with_secrets_or_ecb_get_permission_denied_and_never_reach_the_server(
    tlsgate, grpc_server: GrpcServer
) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": grpc_server.port})
    with channel(gate, grpc_server.port) as chan:
        assert call(chan, profile("user-42")) == b"\x08\x01"
        refused: list[grpc.RpcError] = []
        for message, compression in (
            (profile("user-43", STRIPE), None),
            (profile("user-44", STRIPE), grpc.Compression.Gzip),
            (telemetry(12), grpc.Compression.Deflate),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                call(chan, message, compression)
            refused.append(raised.value)
        upload = chan.stream_unary(f"/{GrpcServer.SERVICE}/Upload")
        with pytest.raises(grpc.RpcError) as streamed:
            upload(iter([profile("user-45"), profile("user-46"), profile("user-47", STRIPE)]), timeout=20)
        refused.append(streamed.value)
        assert call(chan, profile("user-48")) == b"\x08\x01"  # the connection carries on after a refused call
    for error in refused:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
        details = error.details()
        assert details.startswith("blocked by tlsgate: payload for api.test"), details
        assert RULE_LINE in details and ("secrets: ignore" in details or "ecb: ignore" in details), details
    users = [message for _, message in grpc_server.received]
    # a streaming call is judged message by message: its messages before the refused one went on as they passed
    # (tests/live/test_grpc_streams.py); the refused message and the refused unary calls never reach the server
    expected = [profile("user-42"), profile("user-45"), profile("user-46"), profile("user-48")]
    assert users == expected, "a refused message must not reach the server"
    assert eventually(lambda: len(gate.findings()) >= 4)
    found = [(f["action"], f["evidence"]["kind"], f["rule"].endswith(RULE_LINE)) for f in gate.findings()]
    assert found == [("blocked", "provider_key", True)] * 2 + [("blocked", "ecb", True), ("blocked", "provider_key", True)]
    fields = [f["evidence"].get("keys", f["evidence"].get("fields"))[0]["field"] for f in gate.findings()]
    assert fields == ["grpc[0].3.1", "grpc[0].3.1", "grpc[0].4", "grpc[2].3.1"]
    everything = gate.findings_path.read_text() + gate.output
    assert STRIPE not in everything and "user-4" not in everything


def test_grpc_web_from_an_http2_client_gets_the_status_in_its_own_framing(tlsgate, nginx_h2: NginxH2) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": nginx_h2.port})
    url = f"https://api.test:{nginx_h2.port}/{GrpcServer.SERVICE}"
    secret = frame(profile("user-51", STRIPE))
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), http2=True, timeout=20) as client:
        ordinary = client.post(
            f"{url}/Ordinary", content=frame(profile("user-50")), headers={"content-type": "application/grpc-web+proto"}
        )
        binary = client.post(
            f"{url}/Binary", content=secret, headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
        )
        text = client.post(f"{url}/Text", content=base64.b64encode(secret), headers={"content-type": "application/grpc-web-text"})
    assert ordinary.status_code == 200 and ordinary.http_version == "HTTP/2"
    assert [r.status_code for r in (binary, text)] == [200, 200]
    assert binary.headers["grpc-status"] == "7" and binary.headers["content-type"] == "application/grpc-web+proto"
    trailers = binary.content
    assert trailers[0] == 0x80 and int.from_bytes(trailers[1:5], "big") == len(trailers) - 5
    message = re.search(rb"grpc-message:(.*)\r\n", trailers)
    assert message and RULE_LINE in unquote(message.group(1).decode())
    assert base64.b64decode(text.content) == trailers
    assert nginx_h2.requests() == [f"POST /{GrpcServer.SERVICE}/Ordinary HTTP/2.0 HTTP/2.0"], "refused calls never reach it"
