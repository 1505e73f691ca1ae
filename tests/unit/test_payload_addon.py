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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from tests.addonkit import wired
from tests.payload_corpus import ecb
from tests.seeded import urandom
from tlsgate.addons.metrics import MetricsExporter
from tlsgate.addons.payload import PayloadInspector, StreamWindow
from tlsgate.payload.bounds import bounded_body

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
    with wired(POLICY, tmp_path) as kit:
        yield Gate(kit.tctx, kit.get(PayloadInspector), kit.get(MetricsExporter), kit.findings)


def https(host: str, path: str = "/v1/data", body: bytes = b"", ctype: str = "application/json", **headers: str) -> http.HTTPFlow:
    hdrs = http.Headers(
        [(b"host", host.encode()), (b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    )
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
    assert item == {
        "field": "json.payload.data",
        "encoding": "base64",
        "length": 80,
        "blocks": 5,
        "repeated_blocks": 1,
        "basis": "repeated_block",
    }
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
    assert {(i["field"], i["encoding"]) for i in finding["evidence"]["fields"]} == {
        ("header.x-payload", "hex"),
        ("body", "binary"),
    }


def test_aes_gcm_and_random_data_pass_without_a_finding(gate: Gate) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    for _ in range(3):
        nonce = urandom(12)
        sealed = base64.b64encode(nonce + AESGCM(KEY).encrypt(nonce, REPEATING, None)).decode()
        flow = gate.run(https("api.test", body=json.dumps({"data": sealed, "n": urandom(4).hex()}).encode()))
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
    token = "s3cr3t-" + urandom(8).hex()
    stripe = "sk" + "_live_" + urandom(12).hex()
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    claims = base64.urlsafe_b64encode(b'{"sub":"42","role":"admin"}').decode().rstrip("=")
    unsigned = f"{header}.{claims}."
    flow = gate.run(
        https(
            "other.test",
            path=f"/v1/me?access_token={token}&page=2",
            body=json.dumps({"k": stripe}).encode(),
            authorization=f"Bearer {unsigned}",
        )
    )
    assert flow.response is None
    kinds = {f["evidence"]["kind"]: f for f in gate.findings()}
    assert set(kinds) == {"secret_in_url", "unsigned_jwt", "provider_key"}
    assert kinds["secret_in_url"]["evidence"]["credentials"] == [{"kind": "query", "name": "access_token"}]
    assert kinds["unsigned_jwt"]["evidence"]["tokens"] == [
        {"field": "header.authorization", "alg": "none", "length": len(unsigned)}
    ]
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


JWT = ".".join(
    base64.urlsafe_b64encode(part).decode().rstrip("=")
    for part in (b'{"alg":"RS256","kid":"k1"}', b'{"sub":"1234567890","aud":"app"}', urandom(64))
)


@pytest.mark.parametrize(
    "path",
    [
        # Google: the account index, the hosted domain, the consent prompt, the granted scopes, the issuer
        "/cb?state=St4te&iss=https%3A%2F%2Faccounts.google.com&code=4%2F0AeanS0b&scope=email+profile+openid"
        "+https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fuserinfo.email&authuser=0&hd=example.com&prompt=consent",
        # Microsoft: client_info (base64 JSON of the user and tenant IDs), session_state
        "/cb?code=0.AXoAxyz&client_info=eyJ1aWQiOiIxMjMiLCJ1dGlkIjoiNDU2In0&state=St4te&session_state=3f2c8a1e-5b7d",
        # Facebook: what the user granted and denied; the login dialog's own options
        "/cb?code=AQBx&state=St4te&granted_scopes=email%2Cpublic_profile&denied_scopes=",
        "/v18.0/dialog/oauth?client_id=123&auth_type=rerequest&return_scopes=true&e2e=%7B%7D&sdk=android-17.0.0",
        # Auth0: the SDK's base64 JSON self-description; Okta: the IdP and the login hint
        "/authorize?response_type=code&auth0Client=eyJuYW1lIjoiQXV0aDAuQW5kcm9pZCJ9&connection=google-oauth2&prompt=login",
        "/oauth2/default/v1/authorize?idp=0oa1b2c3&login_hint=a%40b.c&acr_values=urn%3Aokta%3Aloa%3A1fa%3Aany",
        # GitHub, Apple, Keycloak, Cognito: code and state, and Keycloak's session_state and iss
        "/cb?code=0a1b2c3d4e5f6a7b8c9d&state=St4te",
        "/cb?state=St4te&session_state=3f2c8a1e&iss=https%3A%2F%2Fsso.example%2Frealms%2Fapp&code=a.b.c",
        # OAuth 1.0a callback (X/Twitter): the request token and its verifier
        "/cb?oauth_token=NPcudxy0yU5T3tBzho7iCotZ3cnetKwcTIRlX0iwRl0&oauth_verifier=uw7NjWHT6OJ1MpJOXsHfNxoAhPKpgI8B",
        # Pagination tokens of real APIs (Twitter, AWS, Google)
        "/2/users/1/tweets?max_results=100&pagination_token=7140dibdnow9c7btw3w29grvxfhlo6kzkzl9r",
        "/v1/items?MaxResults=100&NextToken=AAMA-EFRSURBSGhJSnpwZz09&pageToken=CiAKGjBpNDd2",
        # S3 and GCS V2 signed URLs
        "/legacy/a.mp3?AWSAccessKeyId=AKIA" + "IOSFODNN7EXAMPLE&Expires=1732003600&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D",
        "/bucket/a.png?GoogleAccessId=signer%40p.iam.gserviceaccount.com&Expires=1732003600&Signature=BCd%2Fe%3D%3D",
    ],
)
def test_identity_provider_callbacks_and_pagination_tokens_are_not_credentials_in_urls(gate: Gate, path: str) -> None:
    assert gate.run(https("api.test", path=path)).response is None
    assert gate.findings() == []


@pytest.mark.parametrize(
    ("path", "names"),
    [
        (f"/logout?id_token_hint={JWT}&post_logout_redirect_uri=https%3A%2F%2Fapp", {"id_token_hint"}),  # an ID token
        ("/me?access_token=EAAGm0PX4ZCpsBA&fields=id", {"access_token"}),
        ("/x?auth=s3cr3t-t0k3n&x-api-key=k3y-k3y-k3y&sessionToken=20111h0ZlxjyJ", {"auth", "x-api-key", "sessionToken"}),
    ],
)
def test_credentials_in_urls_are_still_found(gate: Gate, path: str, names: set[str]) -> None:
    flow = gate.run(https("api.test", path=path))
    assert flow.response is not None and flow.response.status_code == 403
    assert {c["name"] for c in gate.findings()[0]["evidence"]["credentials"]} == names


def test_uploads_past_the_limit_are_not_ciphertext(gate: Gate) -> None:
    """The tester's first finding: files cut at 65,536 bytes (a whole number of blocks by accident of the limit)
    share their format's header blocks, which look random (`same_prefix`, blocked)."""
    import random

    from tests.payload_files import CAMERAS, jpeg, screenshot_png

    rng = random.Random(1)
    files = [screenshot_png(rng, 393, 852, photo_rows=160) for _ in range(3)] + [jpeg(rng, 150_000, CAMERAS[0]) for _ in range(3)]
    for index, data in enumerate(files):
        assert len(data) > 65536
        flow = gate.run(https("api.test", path=f"/u/{index}?X-Amz-Signature=ab12", body=data, ctype="application/octet-stream"))
        assert flow.response is None
    assert gate.findings() == []


def test_a_content_hash_in_a_check_and_a_commit_request_is_not_ciphertext(gate: Gate) -> None:
    digest = hashlib.sha256(urandom(1000)).hexdigest()
    for step in ("check", "commit"):
        body = json.dumps({"path": "/Notes/a.md", "sha256": digest, "step": step, "ts": urandom(4).hex()}).encode()
        assert gate.run(https("api.test", path=f"/sync/{step}", body=body)).response is None
    assert gate.findings() == []


def test_gcm_with_a_fixed_nonce_is_blocked_at_any_length(gate: Gate) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = b"fixed-nonce!"
    bodies = [
        json.dumps({"name": name, "email": f"{name}@example.com", "city": city, "note": "first login"}).encode()
        for name, city in (("alice", "Berlin"), ("bob", "Lagos"), ("carol", "Lima"))
    ]
    flows = [
        gate.run(
            https(
                "api.test", body=json.dumps({"data": base64.b64encode(AESGCM(KEY).encrypt(nonce, body, None)).decode()}).encode()
            )
        )
        for body in bodies
    ]
    assert flows[0].response is None
    assert any(f.response is not None and f.response.status_code == 403 for f in flows[1:])
    finding = gate.findings()[0]
    assert finding["evidence"]["kind"] == "deterministic_encryption" and finding["severity"] == "high"
    (item,) = finding["evidence"]["fields"]
    assert item["basis"] == "keystream_reuse" and item["evidence_bits"] >= 41 and item["length"] % 16


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
    assert (
        gate.exporter.metrics.registry.get_sample_value(
            "tlsgate_payload_findings_total", {"kind": "identifier", "action": "reported", "third_party": "true"}
        )
        == 1
    )


def test_console_and_log_lines_mask_the_seeded_identifiers_of_the_policy_in_force(gate: Gate) -> None:
    from tlsgate.sinks.redact import redact_text

    line = f"127.0.0.1:50000: GET https://tracker.test/u/356938035643809/p (for {EMAIL.upper()})"
    shown = redact_text(line)
    assert "356938035643809" not in shown and EMAIL.lower() not in shown.lower() and "tracker.test/u/" in shown


def test_a_large_body_is_judged_at_its_headers_and_tapped_not_buffered(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    # the window judges a 5 ms slice per chunk: on a loaded machine that can end before the verdict, and the chunk
    # is (rightly) still held; this test is about what happens once it is judged, so the slice is made ample
    monkeypatch.setattr("tlsgate.payload.window.SLICE", 60.0)
    token = "s3cr3t-" + urandom(8).hex()
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
    window = streamed.request.stream
    assert isinstance(window, StreamWindow)
    chunk = json.dumps({"d": ecb_b64(REPEATING)}).encode() + b" " * 70000
    assert window(chunk) == [chunk]  # held until the 64 KiB window was judged: then passed on, unchanged
    assert window(b"x" * 100000) == [b"x" * 100000]  # past the window: not inspected, passed as it comes
    streamed.request.content = None
    settle(gate.inspector.request(streamed))  # judged already: nothing more at the end
    (*_, finding) = gate.findings()
    assert finding["evidence"]["kind"] == "ecb" and "streamed" not in finding["evidence"] and finding["action"] == "reported"
    assert len(gate.findings()) == 2


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

    monkeypatch.setattr("tlsgate.addons.payload.scan_steps", broken)
    flow = gate.run(https("other.test", body=b'{"a": 1}'))
    assert flow.response is not None and flow.response.status_code == 403
    assert gate.findings()[0]["evidence"]["kind"] == "check_failed"
