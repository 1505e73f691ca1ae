"""`PayloadInspector` inside mitmproxy's test harness: the add-ons of `make_addons()`, a policy file, real flows.

Findings are read back from the JSON-lines file, and every planted value is
searched for in it: what a tester would see is what is asserted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from proxy.addons import make_addons
from proxy.addons.findings import FindingsSink
from proxy.addons.metrics import MetricsExporter
from proxy.addons.payload import PayloadInspector, Tap, bounded_body
from proxy.addons.policy import PolicyStore
from tests.payload_corpus import ecb

POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: report
devices:
  127.0.0.1: pixel-7
identifiers:
  pixel-7:
    email: Tester.Person@example.com
    imei: "356938035643809"
rules:
  - hosts: api.test
    payload: {ecb: block, secrets: block}
  - hosts: report.test
    mode: report
    payload: block
  - hosts: noid.test
    payload: {identifiers: ignore}
"""
KEY = b"mysecretkey12345"
EMAIL = "Tester.Person@example.com"


def settle(result: object) -> None:
    """A hook's verdict: at once for a quick scan, or from the coroutine it hands mitmproxy for a long one."""
    if inspect.isawaitable(result):
        asyncio.run(result)  # type: ignore[arg-type]


class Gate:
    def __init__(self, tctx: taddons.context, inspector: PayloadInspector, exporter: MetricsExporter, path: Path) -> None:
        self.tctx = tctx
        self.inspector = inspector
        self.exporter = exporter
        self.path = path

    def findings(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.exists() else []

    def raw(self) -> str:
        return self.path.read_text() if self.path.exists() else ""

    def run(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        self.inspector.requestheaders(flow)
        if flow.response is None and not flow.error and flow.live:
            settle(self.inspector.request(flow))
        return flow


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    addons = make_addons()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    findings = tmp_path / "findings.jsonl"
    with taddons.context(*addons) as tctx:
        (store,) = [a for a in addons if isinstance(a, PolicyStore)]
        (sink,) = [a for a in addons if isinstance(a, FindingsSink)]
        (inspector,) = [a for a in addons if isinstance(a, PayloadInspector)]
        (exporter,) = [a for a in addons if isinstance(a, MetricsExporter)]
        tctx.configure(store, tlsgate_policy=[str(policy)])
        tctx.configure(sink, tlsgate_findings=str(findings))
        yield Gate(tctx, inspector, exporter, findings)


def https(host: str, path: str = "/v1/data", body: bytes = b"", ctype: str = "application/json", **headers: str) -> http.HTTPFlow:
    hdrs = http.Headers([(b"host", host.encode()), (b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())])
    for name, value in headers.items():
        hdrs[name.replace("_", "-")] = value
    flow = tflow.tflow(req=tutils.treq(host=host, port=443, scheme=b"https", path=path.encode(), headers=hdrs, content=body))
    flow.client_conn.peername = ("127.0.0.1", 50000)
    return flow


def ecb_b64(plaintext: bytes) -> str:
    return base64.b64encode(ecb(KEY, plaintext)).decode()


REPEATING = b'{"user":"alice","pad":"' + b"A" * 9 + b"0123456789abcdef" * 2 + b'"}'  # 32-byte prefix, two equal blocks


def test_ecb_in_a_json_field_is_blocked_before_upstream_where_the_policy_says_block(gate: Gate) -> None:
    value = ecb_b64(REPEATING)
    flow = gate.run(https("api.test", body=json.dumps({"payload": {"data": value}}).encode()))
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["X-Tlsgate-Check"] == "payload"
    (finding,) = gate.findings()
    assert finding["action"] == "blocked" and finding["severity"] == "high" and finding["device"] == "pixel-7"
    (item,) = finding["evidence"]["fields"]
    assert item == {"field": "json.payload.data", "encoding": "base64", "length": 80, "blocks": 5, "repeated_blocks": 1,
                    "basis": "repeated_block"}
    assert finding["rule"].endswith("policy.yaml:12") and "ecb: ignore" in finding["remedy"]
    assert value not in gate.raw()


def test_report_mode_and_report_setting_forward_and_record(gate: Gate) -> None:
    body = f"encryptedData={ecb_b64(REPEATING)}".encode()
    for host in ("report.test", "other.test"):
        flow = gate.run(https(host, body=body, ctype="application/x-www-form-urlencoded"))
        assert flow.response is None
    assert [(f["host"], f["action"], f["evidence"]["kind"]) for f in gate.findings()] == [
        ("report.test", "reported", "ecb"),
        ("other.test", "reported", "ecb"),
    ]
    gate.run(https("other.test", body=body, ctype="application/x-www-form-urlencoded"))
    assert len(gate.findings()) == 2  # a repeated report is recorded once


def test_ecb_in_a_header_and_in_a_raw_binary_body_is_found(gate: Gate) -> None:
    flow = https("other.test", body=ecb(KEY, REPEATING), ctype="application/octet-stream", x_payload=ecb(KEY, REPEATING).hex())
    gate.run(flow)
    (finding,) = gate.findings()
    assert {(i["field"], i["encoding"]) for i in finding["evidence"]["fields"]} == {("header.x-payload", "hex"), ("body", "binary")}


def test_aes_gcm_and_random_data_pass_without_a_finding(gate: Gate) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    for _ in range(3):
        nonce = os.urandom(12)
        sealed = base64.b64encode(nonce + AESGCM(KEY).encrypt(nonce, REPEATING, None)).decode()
        flow = gate.run(https("api.test", body=json.dumps({"data": sealed, "n": os.urandom(4).hex()}).encode()))
        assert flow.response is None
    assert gate.findings() == []


def test_the_same_blocks_across_requests_are_caught_when_no_single_request_shows_them(gate: Gate) -> None:
    first = ecb_b64(b'{"event":"open","screen":"home","user":"alice00000001"}')
    again = ecb_b64(b'{"batch":[1,2,3],"event":"open","screen":"home","user":"alice00000001"}')
    assert gate.run(https("api.test", body=json.dumps({"d": first}).encode())).response is None
    flow = gate.run(https("api.test", body=json.dumps({"d": again}).encode()))
    assert flow.response is not None and flow.response.status_code == 403
    (finding,) = gate.findings()
    assert finding["evidence"]["fields"][0]["basis"] == "moved_block"


def test_secrets_in_urls_unsigned_jwts_and_provider_keys_are_named_never_valued(gate: Gate) -> None:
    token = "s3cr3t-" + os.urandom(8).hex()
    stripe = "sk" + "_live_" + os.urandom(12).hex()
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    claims = base64.urlsafe_b64encode(b'{"sub":"42","role":"admin"}').decode().rstrip("=")
    unsigned = f"{header}.{claims}."
    flow = gate.run(https("other.test", path=f"/v1/me?access_token={token}&page=2", body=json.dumps({"k": stripe}).encode(),
                          authorization=f"Bearer {unsigned}"))
    assert flow.response is None
    kinds = {f["evidence"]["kind"]: f for f in gate.findings()}
    assert set(kinds) == {"secret_in_url", "unsigned_jwt", "provider_key"}
    assert kinds["secret_in_url"]["evidence"]["credentials"] == [{"kind": "query", "name": "access_token"}]
    assert kinds["unsigned_jwt"]["evidence"]["tokens"] == [{"field": "header.authorization", "alg": "none", "length": len(unsigned)}]
    assert kinds["provider_key"]["evidence"]["keys"][0]["format"] == "stripe_secret_key"
    for planted in (token, stripe, unsigned, claims):
        assert planted not in gate.raw()
    blocked = gate.run(https("api.test", path=f"/login?password={token}"))
    assert blocked.response is not None and blocked.response.status_code == 403


def test_signed_urls_and_oauth_redirects_are_not_credentials_in_urls(gate: Gate) -> None:
    for path in (
        "/bucket/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA" + "IOSFODNN7EXAMPLE%2F20261124%2Fus-east-1"
        "&X-Amz-Signature=0123abcd",
        "/o/a.jpg?X-Goog-Signature=0123abcd&X-Goog-Credential=svc",
        "/a.jpg?Policy=eyJTdGF0ZW1lbnQiOltdfQ__&Signature=abc~def&Key-Pair-Id=K2JCJMDEHXQW5F",
        "/c/a.jpg?sv=2022-11-02&se=2026-12-01&sp=r&sig=abcdEFGH%2B%3D",
        "/callback?code=4%2F0AX4XfWh&state=xyz123abc",
    ):
        gate.run(https("cdn.other.test", path=path))
    assert gate.findings() == []
    gate.run(https("cdn.other.test", path="/a.jpg?Signature=abc&token=t0k3n-value"))  # not a signed-URL scheme
    assert {c["name"] for c in gate.findings()[0]["evidence"]["credentials"]} == {"Signature", "token"}


def test_seeded_values_are_masked_even_where_identifiers_are_not_searched_for(gate: Gate) -> None:
    gate.run(https("noid.test", path="/u/356938035643809/x?token=t0k3n-t0k3n-t0k3n"))
    (finding,) = gate.findings()
    assert finding["evidence"]["kind"] == "secret_in_url"
    assert finding["evidence"]["url"] == "https://noid.test/u/[REDACTED]/x?token=[REDACTED]"
    assert "356938035643809" not in gate.raw()


def test_basic_auth_counts_only_for_hosts_no_rule_names(gate: Gate) -> None:
    basic = "Basic " + base64.b64encode(b"svc:hunter2-hunter2").decode()
    gate.run(https("api.test", authorization=basic))
    assert gate.findings() == []
    gate.run(https("cdn.other.test", authorization=basic))
    (finding,) = gate.findings()
    assert finding["evidence"]["kind"] == "basic_auth_third_party" and finding["evidence"]["third_party"] is True
    assert "hunter2" not in gate.raw() and base64.b64encode(b"svc:hunter2-hunter2").decode() not in gate.raw()


def test_seeded_identifiers_are_found_hashed_and_encoded_with_the_receiving_host_flagged(gate: Gate) -> None:
    sha = hashlib.sha256(EMAIL.lower().encode()).hexdigest()
    md5 = hashlib.md5(EMAIL.lower().encode()).hexdigest()
    imei_b64 = base64.b64encode(b"356938035643809").decode()
    body = json.dumps({"ud": {"em": sha, "md": md5}, "device": {"i": imei_b64}, EMAIL: 1}).encode()
    flow = gate.run(https("tracker.test", path=f"/collect?e={EMAIL}", body=body))
    assert flow.response is None
    (finding,) = gate.findings()
    evidence = finding["evidence"]
    assert evidence["kind"] == "identifier" and evidence["third_party"] is True and finding["severity"] == "medium"
    assert evidence["identifier_kinds"] == ["email", "imei"]
    seen = {(i["field"], i["encoding"]) for i in evidence["identifiers"]}
    assert {("json.ud.em", "sha256-hex"), ("json.ud.md", "md5-hex"), ("json.device.i", "base64"), ("query.e", "plain")} <= seen
    assert ("json.[REDACTED]", "plain") in seen  # a key that is the identifier is not shown as one
    text = gate.raw()
    for planted in (EMAIL, EMAIL.lower(), sha, md5, imei_b64, "356938035643809", "tester.person"):
        assert planted.lower() not in text.lower()
    assert gate.exporter.metrics.registry.get_sample_value(
        "tlsgate_payload_findings_total", {"kind": "identifier", "action": "reported", "third_party": "true"}
    ) == 1


def test_console_and_log_lines_mask_the_seeded_identifiers_of_the_policy_in_force(gate: Gate) -> None:
    from proxy.sinks.redact import redact_text

    line = f"127.0.0.1:50000: GET https://tracker.test/u/356938035643809/p (for {EMAIL.upper()})"
    shown = redact_text(line)
    assert "356938035643809" not in shown and EMAIL.lower() not in shown.lower() and "tracker.test/u/" in shown


def test_a_large_body_is_judged_at_its_headers_and_tapped_not_buffered(gate: Gate) -> None:
    token = "s3cr3t-" + os.urandom(8).hex()
    flow = https("api.test", path=f"/upload?api_key={token}", body=b"")
    flow.request.headers["content-length"] = str(5 << 20)
    flow.request.stream = True  # what mitmproxy sets before `requestheaders` for a body above stream_large_bodies
    gate.inspector.requestheaders(flow)
    assert flow.error is not None or flow.response is not None  # refused at the headers: the body is never read
    assert gate.findings()[0]["evidence"]["kind"] == "secret_in_url"

    streamed = https("other.test", path="/upload", body=b"")
    streamed.request.headers["content-length"] = str(5 << 20)
    streamed.request.stream = True
    gate.inspector.requestheaders(streamed)
    tap = streamed.request.stream
    assert isinstance(tap, Tap)
    chunk = json.dumps({"d": ecb_b64(REPEATING)}).encode() + b" " * 70000
    assert tap(chunk) == chunk and tap(b"x" * 100000) == b"x" * 100000  # every byte passes unchanged
    assert len(tap.data) == 65536 and tap.total == len(chunk) + 100000  # the copy stops at max_bytes
    streamed.request.content = None
    settle(gate.inspector.request(streamed))
    finding = gate.findings()[-1]
    assert finding["evidence"]["kind"] == "ecb" and finding["evidence"]["streamed"] is True and finding["action"] == "reported"


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    import gzip

    data, complete = bounded_body(gzip.compress(b"a" * 10_000_000), "gzip", 65536)
    assert len(data) == 65536 and not complete  # a bomb inflates no further than the limit
    assert bounded_body(gzip.compress(b"hello"), "gzip", 65536) == (b"hello", True)
    assert bounded_body(b"not gzip", "gzip", 4) == (b"not ", False)


def test_ecb_in_a_response_is_recorded_and_the_response_passes(gate: Gate) -> None:
    flow = https("other.test")
    gate.run(flow)
    flow.response = tutils.tresp(content=json.dumps({"data": ecb_b64(REPEATING)}).encode())
    flow.response.headers["content-type"] = "application/json"
    settle(gate.inspector.response(flow))
    (finding,) = gate.findings()
    assert finding["evidence"]["direction"] == "response" and finding["evidence"]["kind"] == "ecb"
    assert flow.response.status_code == 200


def test_a_failing_payload_check_refuses_the_request(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr("proxy.addons.payload.scan_steps", broken)
    flow = gate.run(https("other.test", body=b'{"a": 1}'))
    assert flow.response is not None and flow.response.status_code == 403
    assert gate.findings()[0]["evidence"]["kind"] == "check_failed"
