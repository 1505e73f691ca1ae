"""Payload inspection end to end: real Python and Node clients post AES-ECB and AES-GCM payloads, tokens in URLs and
hashed identifiers through a real tlsgate over HTTPS to a local upstream; findings name fields, never values."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.harness import REPO, Tlsgate, Upstream, curl, eventually

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
    phone: "+1 555 0100 777"
    advertising_id: 38400000-8cf0-11bd-b23e-10b96e40000d
    username: jane_tester_77
rules:
  - name: app-api
    hosts: api.test
    payload: {ecb: block, secrets: block}
  - name: app-web
    hosts: www.test
    mode: report      # block under report mode: forwarded and recorded
    payload: block
"""
EMAIL = "Jane.Tester@example.org"
PHONE_DIGITS = "15550100777"
ADID = "38400000-8cf0-11bd-b23e-10b96e40000d"
USERNAME = "jane_tester_77"
KEY = b"mysecretkey12345"  # typed into the app's source, as the seed posts do
ACCESS_TOKEN = "at-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
API_KEY = "ak-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak
BASIC_PASSWORD = "hunter2-correct-horse"


def aes_ecb(plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    return encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()


def aes_gcm(plaintext: bytes, nonce: bytes) -> bytes:
    return nonce + AESGCM(KEY).encrypt(nonce, plaintext, None)


def event_batch(user: str) -> bytes:
    """What analytics SDKs post: a batch of same-shaped records (its ECB repeats blocks)."""
    events = [{"event": "screen_view", "screen": "home", "user": user, "seq": i, "props": {"theme": "dark"}} for i in range(12)]
    return json.dumps({"events": events}).encode()


def planted_forms() -> list[str]:
    """Every planted value in the forms a leak could take: plain, lower-case, URL-encoded, base64 and hashes."""
    out = [
        ACCESS_TOKEN,
        API_KEY,
        STRIPE,
        BASIC_PASSWORD,
        KEY.decode(),
        base64.b64encode(f"svc:{BASIC_PASSWORD}".encode()).decode(),
    ]
    for value in (EMAIL, EMAIL.lower(), PHONE_DIGITS, "+1 555 0100 777", ADID, USERNAME):
        raw = value.encode()
        out += [value, urllib.parse.quote(value, safe=""), base64.b64encode(raw).decode().rstrip("=")]
        out += [hashlib.new(name, raw).hexdigest() for name in ("md5", "sha1", "sha256")]
    return out


def assert_nothing_planted_leaks(gate: Tlsgate, extra: list[str]) -> None:
    everything = "\n".join([gate.findings_path.read_text(), gate.output, gate.scrape()]).lower()
    leaked = [value for value in planted_forms() + extra if value.lower() in everything]
    assert leaked == [], f"planted values in findings, console or /metrics: {leaked}"


@pytest.fixture
def gate(tlsgate, https_upstream: Upstream) -> Tlsgate:
    hosts = ("api.test", "www.test", "cdn.test")  # cdn.test: a tracker no rule names
    return tlsgate(POLICY, resolve={host: https_upstream.port for host in hosts})


def paths(upstream: Upstream) -> list[str]:
    return [seen.path for seen in upstream.requests]


def test_python_client_ecb_is_blocked_before_upstream_and_gcm_passes(gate: Tlsgate, https_upstream: Upstream) -> None:
    port = https_upstream.port
    ecb_value = base64.b64encode(aes_ecb(event_batch("u-1001"))).decode()
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), timeout=20) as client:
        blocked = client.post(
            f"https://api.test:{port}/v1/sync", json={"encryptedData": ecb_value}, headers={"Accept": "application/json"}
        )
        gcm_values = [base64.b64encode(aes_gcm(event_batch("u-1001"), bytes([n]) * 12)).decode() for n in (1, 2)]
        passed = [client.post(f"https://api.test:{port}/v1/sync-gcm", json={"encryptedData": v}) for v in gcm_values]
        reported = client.post(f"https://www.test:{port}/v1/sync-web", data={"encryptedData": ecb_value})
        # two short logins: no block repeats inside either, and the two share their first two blocks only, as
        # a key ID before fresh ciphertext would: not evidence on its own (README: the minimums)
        logins = [
            client.post(
                f"https://www.test:{port}/v1/login",
                data={
                    "payload": base64.b64encode(
                        aes_ecb(json.dumps({"username": "user-4242", "password": pw, "device": "android"}).encode())
                    ).decode()
                },
            )
            for pw in ("first-password", "second-pass")
        ]
    assert blocked.status_code == 403, blocked.text
    body = blocked.json()
    assert body["check"] == "payload" and body["host"] == "api.test" and body["rule"].endswith("policy.yaml:14")
    assert "ecb: ignore" in body["remedy"]
    assert "/v1/sync" not in paths(https_upstream), "a blocked request must not reach the upstream"
    assert [r.status_code for r in passed] == [200, 200] and paths(https_upstream).count("/v1/sync-gcm") == 2
    assert reported.status_code == 200 and all(r.status_code == 200 for r in logins)
    assert eventually(lambda: len(gate.findings()) >= 2)
    found = [(f["host"], f["action"], f["evidence"]["kind"], f["severity"]) for f in gate.findings()]
    assert found == [
        ("api.test", "blocked", "ecb", "high"),
        ("www.test", "reported", "ecb", "high"),
    ], found
    first = gate.findings()[0]["evidence"]
    assert first["fields"][0]["field"] == "json.encryptedData" and first["fields"][0]["repeated_blocks"] >= 1
    assert_nothing_planted_leaks(gate, [ecb_value, *gcm_values])
    metrics = gate.scrape()
    assert 'tlsgate_payload_findings_total{action="blocked",kind="ecb",third_party="false"} 1.0' in metrics


def test_uploads_past_the_limit_hashes_and_oauth_callbacks_pass_and_a_fixed_gcm_nonce_is_blocked(
    gate: Tlsgate, https_upstream: Upstream
) -> None:
    """The tester's findings, with a real client: same-size files past 64 KiB to one host, a file's SHA-256 in a
    check and a commit request and Google's `authuser` pass untouched; AES-GCM with a fixed nonce (ciphertext ||
    tag, no whole number of blocks) is refused before the upstream sees the request that gives it away."""
    import random

    from tests.payload_files import CAMERAS, jpeg, screenshot_png

    port = https_upstream.port
    rng = random.Random(21)
    uploads = [jpeg(rng, 180_000, CAMERAS[1]) for _ in range(3)] + [
        screenshot_png(rng, 393, 852, photo_rows=200) for _ in range(2)
    ]
    digest = hashlib.sha256(uploads[0]).hexdigest()
    nonce = b"0123456789ab"  # a constant in the app's source
    profiles = [
        json.dumps({"name": name, "email": f"{name}@example.org", "city": city, "bio": "loves maps and cats"}).encode()
        for name, city in (("jane", "Berlin"), ("omar", "Lagos"), ("li", "Lima"), ("ana", "Porto"))
    ]
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), timeout=30) as client:
        checked = client.post(f"https://api.test:{port}/v1/sync/check", json={"path": "/DCIM/IMG_1.JPG", "sha256": digest})
        put = [
            client.put(
                f"https://api.test:{port}/photos/{i}.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={'ab' * 32}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            for i, data in enumerate(uploads)
        ]
        committed = client.post(
            f"https://api.test:{port}/v1/sync/commit", json={"path": "/DCIM/IMG_1.JPG", "sha256": digest, "rev": 2}
        )
        callback = client.get(
            f"https://api.test:{port}/auth/google/callback",
            params={
                "state": "St4te",
                "code": "4/0AeanS0b",
                "scope": "email profile openid",
                "authuser": "0",
                "hd": "example.org",
                "prompt": "consent",
            },
        )
        sealed = [
            client.post(
                f"https://api.test:{port}/v1/profile",
                json={"data": base64.b64encode(AESGCM(KEY).encrypt(nonce, profile, None)).decode()},
            )
            for profile in profiles
        ]
    assert all(len(data) > 65536 for data in uploads)
    assert [r.status_code for r in (checked, *put, committed, callback)] == [200] * 8
    assert sum(p.startswith("/photos/") for p in paths(https_upstream)) == 5
    statuses = [r.status_code for r in sealed]
    assert statuses[0] == 200 and 403 in statuses, statuses
    assert paths(https_upstream).count("/v1/profile") == statuses.count(200)  # not one byte of a refused request
    assert eventually(lambda: len(gate.findings()) >= 1)
    (finding,) = [f for f in gate.findings() if f["action"] == "blocked"][:1]
    assert all(f["evidence"]["kind"] == "deterministic_encryption" for f in gate.findings()), gate.findings()
    assert finding["severity"] == "high" and finding["evidence"]["fields"][0]["basis"] == "keystream_reuse"
    assert finding["evidence"]["fields"][0]["length"] % 16 != 0


NODE_CLIENT = r"""
// An app's network code in Node: AES-128-ECB and AES-256-GCM from node:crypto, posted over HTTPS through the proxy.
const net = require('node:net'), tls = require('node:tls'), crypto = require('node:crypto'), fs = require('node:fs');
const [proxyPort, port, caFile] = process.argv.slice(2);
const key = Buffer.from('mysecretkey12345');
function ecb(text) { const c = crypto.createCipheriv('aes-128-ecb', key, null); return Buffer.concat([c.update(text), c.final()]); }
function gcm(text) {
  const k = crypto.createHash('sha256').update(key).digest(), iv = crypto.randomBytes(12);
  const c = crypto.createCipheriv('aes-256-gcm', k, iv);
  return Buffer.concat([iv, c.update(text), c.final(), c.getAuthTag()]);
}
function post(host, path, body) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(proxyPort), '127.0.0.1', () => sock.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`));
    sock.setTimeout(15000, () => reject(new Error('timeout')));
    sock.once('data', (head) => {
      if (!/^HTTP\/1\.[01] 200/.test(head.toString())) return reject(new Error('CONNECT refused'));
      const t = tls.connect({ socket: sock, servername: host, ca: fs.readFileSync(caFile) }, () => {
        t.write(`POST ${path} HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      });
      let data = '';
      t.on('data', (d) => { data += d; });
      t.on('end', () => resolve(Number(data.split(' ')[1])));
      t.on('error', reject);
    });
    sock.on('error', reject);
  });
}
(async () => {
  const events = JSON.stringify({ events: Array.from({ length: 12 }, (_, i) => ({ event: 'screen_view', screen: 'home', user: 'node-7', seq: i, props: { theme: 'dark' } })) });
  const out = {
    ecb: await post('api.test', '/v1/node-ecb', JSON.stringify({ data: ecb(events).toString('hex') })),
    gcm: await post('api.test', '/v1/node-gcm', JSON.stringify({ data: gcm(events).toString('base64') })),
    reported: await post('www.test', '/v1/node-ecb', JSON.stringify({ data: ecb(events).toString('base64') })),
  };
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (apt-get install nodejs)")
def test_node_client_ecb_hex_and_gcm(gate: Tlsgate, https_upstream: Upstream, tmp_path: Path) -> None:
    script = tmp_path / "client.js"
    script.write_text(NODE_CLIENT)
    done = subprocess.run(
        ["node", str(script), str(gate.port), str(https_upstream.port), str(gate.ca_cert)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ecb": 403, "gcm": 200, "reported": 200}
    assert paths(https_upstream) == ["/v1/node-gcm", "/v1/node-ecb"]  # the blocked post never arrived
    assert eventually(lambda: len(gate.findings()) >= 2)
    blocked, reported = gate.findings()
    assert (blocked["action"], blocked["evidence"]["fields"][0]["encoding"]) == ("blocked", "hex")
    assert (reported["action"], reported["evidence"]["fields"][0]["encoding"]) == ("reported", "base64")
    assert_nothing_planted_leaks(gate, [])


def test_tokens_in_urls_keys_basic_auth_and_hashed_identifiers_to_a_tracker(gate: Tlsgate, https_upstream: Upstream) -> None:
    port = https_upstream.port
    ca = ("--cacert", str(gate.ca_cert))
    blocked = curl(gate.proxy_url, f"https://api.test:{port}/v1/profile?access_token={ACCESS_TOKEN}&page=2", *ca)
    reported = curl(gate.proxy_url, f"https://www.test:{port}/v1/config?api_key={API_KEY}&lang=en", *ca)
    unsigned = (
        ".".join(
            base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
            for part in ({"alg": "none", "typ": "JWT"}, {"sub": USERNAME, "role": "admin"})
        )
        + "."
    )
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), timeout=20) as client:
        tracker = client.post(
            f"https://cdn.test:{port}/collect",
            json={
                "ud": {
                    "em": hashlib.sha256(EMAIL.lower().encode()).hexdigest(),
                    "ph": hashlib.sha256(PHONE_DIGITS.encode()).hexdigest(),
                },
                "advertiser_id": ADID.upper(),
                "uname_b64": base64.b64encode(USERNAME.encode()).decode(),
            },
            auth=("svc", BASIC_PASSWORD),
        )
        in_url = client.get(f"https://cdn.test:{port}/u/{USERNAME}/pixel", params={"e": EMAIL, "adid": ADID})
        keyed = client.post(
            f"https://www.test:{port}/v1/pay",
            json={"stripe": STRIPE, "amount": 100},
            headers={"Authorization": f"Bearer {unsigned}"},
        )
    assert blocked.status == 403 and blocked.headers["x-tlsgate-check"] == "payload"
    assert "/v1/profile" not in " ".join(paths(https_upstream))
    assert reported.status == 200 and tracker.status_code == 200 and keyed.status_code == 200 and in_url.status_code == 200
    assert eventually(lambda: len(gate.findings()) >= 8)
    by_kind: dict[tuple[str, str], dict] = {}
    for finding in gate.findings():
        by_kind.setdefault((finding["host"], finding["evidence"]["kind"]), finding)
    assert set(by_kind) == {
        ("api.test", "secret_in_url"),
        ("www.test", "secret_in_url"),
        ("cdn.test", "basic_auth_third_party"),
        ("cdn.test", "identifier"),
        ("www.test", "identifier"),  # the JWT's claims name the user
        ("www.test", "unsigned_jwt"),
        ("www.test", "provider_key"),
    }, sorted(by_kind)
    assert by_kind[("api.test", "secret_in_url")]["action"] == "blocked"
    assert {f["action"] for f in gate.findings() if f["host"] == "www.test"} == {"reported"}  # payload: block, mode: report
    assert by_kind[("www.test", "secret_in_url")]["evidence"]["credentials"] == [{"kind": "query", "name": "api_key"}]
    assert by_kind[("www.test", "secret_in_url")]["evidence"]["url"].endswith("/v1/config?api_key=[REDACTED]&lang=en")
    ident = by_kind[("cdn.test", "identifier")]
    assert ident["evidence"]["third_party"] is True and ident["severity"] == "medium"
    assert ident["evidence"]["identifier_kinds"] == ["advertising_id", "email", "phone", "username"]
    assert {(i["field"], i["encoding"]) for i in ident["evidence"]["identifiers"]} >= {
        ("json.ud.em", "sha256-hex"),
        ("json.ud.ph", "sha256-hex"),
        ("json.advertiser_id", "plain"),
        ("json.uname_b64", "base64"),
    }
    pixel = [f for f in gate.findings() if f["host"] == "cdn.test" and f["evidence"]["kind"] == "identifier"][1]
    assert {(i["field"], i["encoding"]) for i in pixel["evidence"]["identifiers"]} == {
        ("path.2", "plain"),
        ("query.e", "plain"),
        ("query.adid", "plain"),
    }
    assert pixel["evidence"]["url"].endswith("/u/[REDACTED]/pixel?e=[REDACTED]&adid=[REDACTED]")
    first_party = by_kind[("www.test", "identifier")]
    assert first_party["evidence"]["third_party"] is False and first_party["severity"] == "low"
    assert first_party["evidence"]["identifiers"] == [
        {"kind": "username", "encoding": "jwt+plain", "field": "header.authorization", "length": len(USERNAME)}
    ]
    assert by_kind[("www.test", "provider_key")]["evidence"]["keys"][0]["format"] == "stripe_secret_key"
    assert_nothing_planted_leaks(gate, [unsigned, unsigned.split(".")[1]])
    assert 'kind="identifier",third_party="true"' in gate.scrape()


def test_a_large_streamed_body_is_held_up_to_the_limit_and_forwarded_whole(gate: Tlsgate, https_upstream: Upstream) -> None:
    port = https_upstream.port
    head = json.dumps({"blob": base64.b64encode(aes_ecb(event_batch("u-big"))).decode()}).encode()
    body = head + b" " * (2 * 1024 * 1024 - len(head))  # above tlsgate's 1 MiB stream threshold: mitmproxy streams it
    with httpx.Client(proxy=gate.proxy_url, verify=str(gate.ca_cert), timeout=30) as client:
        streamed = client.post(f"https://www.test:{port}/v1/upload", content=body, headers={"Content-Type": "application/json"})
        refused_at_headers = None
        with contextlib.suppress(httpx.HTTPError):  # a streaming body refused at its headers is closed, not answered
            refused_at_headers = client.post(f"https://api.test:{port}/v1/upload?access_token={ACCESS_TOKEN}", content=body)
    assert streamed.status_code == 200
    (seen,) = [s for s in https_upstream.requests if s.path == "/v1/upload"]
    assert len(seen.body) == len(body)  # every byte went on: held until judged (report mode), then passed
    assert refused_at_headers is None or refused_at_headers.status_code == 403
    assert not any(s.path.startswith("/v1/upload?") for s in https_upstream.requests)
    assert eventually(lambda: len(gate.findings()) >= 2)
    ecb_finding = next(f for f in gate.findings() if f["evidence"]["kind"] == "ecb")
    assert "streamed" not in ecb_finding["evidence"] and ecb_finding["action"] == "reported"  # judged before it went
    assert ecb_finding["evidence"]["inspected_bytes"] == 65536 and ecb_finding["evidence"]["body_bytes"] == len(body)
    refusal = next(f for f in gate.findings() if f["evidence"]["kind"] == "secret_in_url")
    assert refusal["action"] == "blocked" and refusal["host"] == "api.test"


def test_the_payload_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/payload.py --quick: both proxies serve the whole body mix (speed is measured, not asserted)."""
    done = subprocess.run(
        [sys.executable, "benchmarks/payload.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^\| payload-ignore \| [\d.]+ \| 1\.00x \|", done.stdout, re.M), done.stdout
    assert re.search(r"^\| payload-report \| [\d.]+ \| [\d.]+x \|", done.stdout, re.M), done.stdout
    assert re.search(r"^\| event batch \| 7,296 \| [\d,]+ \|", done.stdout, re.M), done.stdout
