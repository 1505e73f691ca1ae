"""One fixed scenario through a real tlsgate, with its findings and metrics written out normalised, so two
versions of tlsgate can be compared on what they decide and count, not on when or on which port.

    .venv/bin/python -m tests.scenario --out DIR                      # this checkout
    .venv/bin/python -m tests.scenario --checkout OTHER --out DIR     # another checkout, run with OTHER/.venv
    diff -ru tests/data/scenario DIR                                  # against the recorded pre-i22 output

A refactor that changes nothing a user sees leaves the three files identical: `findings.jsonl` (every finding,
normalised and sorted), `metrics.txt` (the counters of /metrics after the run) and `clients.txt` (what each
client got: status, tlsgate's headers, what reached the upstream). tests/live/test_scenario.py holds this
checkout to the files recorded in tests/data/scenario/ from the tag `pre-i22` (main before the package was
renamed from `proxy` to `tlsgate`); `--record` writes them.

Regular mode on loopback, local upstreams with certificates made here, real clients (curl, openssl s_client,
httpx, raw sockets); then HTTP/3 (aioquic) through a second tlsgate in reverse:http3 mode, whose counters are the
lines of `metrics.txt` that start with `quic gate:`. Each part of the scenario has a host of its own (`pinned.test`, `tls10.test`, ...), so a
finding says which part it came from without relying on when it was written. What varies from run to run is
replaced, not dropped: times by `<time>`, upstream and proxy ports by their server's name, client ports by
`<port>`, certificates made for this run (pins, fingerprints, serials) by the certificate's role, the run's
directory by `<work>`. Metrics keep counters (and a histogram's count), not timings, sizes or process figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests import quicpeers
from tests.certgen import Chain, make_chain, make_leaf, utcnow, write_pem, write_server_files
from tests.harness import REPO, CurlResult, Tlsgate, Upstream, curl, free_port, read_head, read_until_closed
from tests.plainpeers import RecordingServer, mqtt_connect, smtp_auth
from tests.tlsservers import tls_upstream

GOLDEN = REPO / "tests" / "data" / "scenario"
FILES = ("findings.jsonl", "metrics.txt", "clients.txt")

# Every host of the scenario: one per part, all on the one test leaf (the weak upstreams serve their own).
HOSTS = (
    "allowed.test", "plain.test", "plain-report.test", "pinned.test", "pinned-report.test", "pinned-ok.test",
    "tls10.test", "tls10-report.test", "weak-suite.test", "weak-key.test", "expiring.test", "probe-lax.test",
    "probe-strict.test", "untrusted.test", "client-old.test", "client-weak.test", "no-sni.test", "payload.test",
    "payload-report.test", "tracker.test", "broker.test", "broker-ok.test", "mail.test", "app.test", "hygiene.test",
    "hello.test", "refused.test",
)  # fmt: skip
# The QUIC part runs through a second tlsgate, in reverse:http3 mode towards one HTTP/3 server: the host is the
# name the client asks for (SNI), so each of these again names its part.
QUIC_HOSTS = ("quic-refused.test", "quic-ok.test", "quic-pinned.test", "quic-report.test", "quic-probe.test")
QUIC_UPSTREAM = "quic-upstream.test"
PROBES = "[self_signed, wrong_host, expired, untrusted_ca]"
AES_KEY = b"mysecretkey12345"  # typed into the app's source
EMAIL = "jane.scenario@example.org"
ACCESS_TOKEN = "at-5c3e1f0a9b8d7c6e5f4a3b2c1d0e9f8a"
STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak


def fake_pin(seed: str) -> str:
    return "sha256/" + base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def spki_pin(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def policy_text(chain: Chain) -> str:
    """One policy for every part. Line numbers are part of the findings (`rule: policy.yaml:N`): append, never insert."""
    return f"""version: 1
devices:
  127.0.0.1: scenario-phone
identifiers:
  scenario-phone:
    email: {EMAIL}
pin_sets:
  nobody:
    pins: [{fake_pin("scenario-a")}, {fake_pin("scenario-b")}]
  ours:
    pins: [{fake_pin("scenario-c")}, {spki_pin(chain.intermediate.cert)}]
defaults:
  mode: enforce
  cleartext: block
rules:
  - name: plain-report
    hosts: plain-report.test
    mode: report
  - name: pinned
    hosts: pinned.test
    pins: nobody
  - name: pinned-report
    hosts: pinned-report.test
    mode: report
    pins: nobody
  - name: pinned-ok
    hosts: pinned-ok.test
    pins: ours
  - name: tls10-report
    hosts: tls10-report.test
    mode: report
  - name: weak-suite
    hosts: weak-suite.test
    tls:
      ciphers: ats
  - name: probe-lax
    hosts: probe-lax.test
    mode: report
    client:
      probes: {PROBES}
  - name: probe-strict
    hosts: probe-strict.test
    client:
      probes: {PROBES}
  - name: client-weak
    hosts: client-weak.test
    client:
      weak_suites: strict
  - name: no-sni
    hosts: no-sni.test
    client:
      require_sni: true
  - name: payload
    hosts: payload.test
    payload: {{ecb: block, secrets: block, identifiers: block}}
  - name: payload-report
    hosts: payload-report.test
    mode: report
    payload: block
  - name: broker-ok
    hosts: broker-ok.test
    cleartext: {{default: block, mqtt: allow}}
  - name: app
    hosts: app.test
    app:
      source: "res/xml/network_security_config.xml:3 <domain-config>"
      platform: android
      build: release
      cleartext: forbid
      user_cas: untrusted
      pins: nobody
      must_pin: true
      min_version: "1.2"
      forward_secrecy: true
  - name: hygiene
    hosts: hygiene.test
    cleartext: allow
"""


def quic_policy_text(chain: Chain) -> str:
    """The QUIC gate's policy: refuse by default, inspect, report, probe. In reverse mode the upstream's certificate
    is judged under the reverse target's name (quic-upstream.test), the QUIC decision and probes under the name the
    client asked for: pins of a quic-*.test rule are not applied (the scenario records that as it is), the
    quic-upstream.test rule's are, on every inspected connection."""
    return f"""version: 1
devices:
  127.0.0.1: scenario-phone
pin_sets:
  nobody:
    pins: [{fake_pin("scenario-a")}, {fake_pin("scenario-b")}]
  ours:
    pins: [{fake_pin("scenario-c")}, {spki_pin(chain.intermediate.cert)}]
rules:
  - name: quic-ok
    hosts: quic-ok.test
    quic: inspect
    pins: ours
  - name: quic-pinned
    hosts: quic-pinned.test
    quic: inspect
    pins: nobody
  - name: quic-report
    hosts: quic-report.test
    mode: report
    quic: refuse
    pins: nobody
  - name: quic-probe
    hosts: quic-probe.test
    quic: inspect
    client:
      probes: [self_signed]
  - name: quic-upstream
    hosts: quic-upstream.test
    mode: report
    pins: nobody
"""


# -- the scenario's servers and clients -------------------------------------------------------------------


@dataclass
class Lab:
    """The upstreams, the PKI, and the names their run-specific values get in the output."""

    work: Path
    chain: Chain
    root_file: Path
    servers: dict[str, Any] = field(default_factory=dict)  # name -> Upstream or RecordingServer
    certs: dict[str, x509.Certificate] = field(default_factory=dict)  # role -> certificate made for this run
    client_lines: list[str] = field(default_factory=list)
    closed_port: int = 0  # nothing listens there: the upstream that refuses

    def port(self, name: str) -> int:
        return int(self.servers[name].port)

    def note(self, step: str, **facts: object) -> None:
        self.client_lines.append(f"{step}: " + json.dumps(facts, sort_keys=True))


def start_servers(work: Path) -> Lab:
    chain = make_chain(dns=(*HOSTS, *QUIC_HOSTS, QUIC_UPSTREAM), ips=())
    root_file = write_pem(work / "root.pem", chain.root)
    lab = Lab(work, chain, root_file)
    lab.certs |= {"root": chain.root.cert, "intermediate": chain.intermediate.cert, "leaf": chain.leaf.cert}
    cert_file, key_file = write_server_files(work, chain.leaf, chain.intermediate, name="main")
    lab.servers["https"] = Upstream("https-upstream", cert_file, key_file).start()
    lab.servers["http"] = Upstream("http-upstream").start()
    lab.servers["tls10"] = tls_upstream(work, chain.leaf, chain.intermediate, version="1.0", name="tls10")
    rsa = make_leaf(chain.intermediate, ("weak-suite.test",), (), key="rsa:2048")
    lab.certs["weak-suite leaf"] = rsa.cert
    lab.servers["weak-suite"] = tls_upstream(work, rsa, chain.intermediate, version="1.2", ciphers="AES128-GCM-SHA256", name="ws")
    weak = make_leaf(chain.intermediate, ("weak-key.test",), (), key="rsa:1024")
    lab.certs["weak-key leaf"] = weak.cert
    lab.servers["weak-key"] = tls_upstream(work, weak, chain.intermediate, name="wk")
    # 5 days and 12 hours: the finding says "5 days" however long the scenario takes.
    expiring = make_leaf(chain.intermediate, ("expiring.test",), (), not_after=utcnow() + dt.timedelta(days=5, hours=12))
    lab.certs["expiring leaf"] = expiring.cert
    lab.servers["expiring"] = tls_upstream(work, expiring, chain.intermediate, name="exp")
    lab.servers["mqtt"] = RecordingServer("mqtt").__enter__()
    lab.servers["mqtt-ok"] = RecordingServer("mqtt").__enter__()
    lab.servers["smtp"] = RecordingServer("smtp").__enter__()
    lab.servers["service"] = RecordingServer("raw").__enter__()  # a service on the proxy host's loopback
    lab.servers["quic"] = quicpeers.RecordingServer(cert_file, key_file).start()
    lab.closed_port = free_port()
    return lab


def stop_servers(lab: Lab) -> None:
    for server in lab.servers.values():
        with contextlib.suppress(Exception):
            if isinstance(server, RecordingServer):
                server.__exit__(None, None, None)
            else:
                server.stop()


def received(server: Any) -> int:
    """Requests an HTTP or HTTP/3 upstream saw, or bytes a stream server got."""
    return len(server.requests) if isinstance(server, Upstream | quicpeers.RecordingServer) else len(server.received)


def tlsgate_headers(result: CurlResult) -> dict[str, str]:
    return {k: v for k, v in sorted(result.headers.items()) if k.startswith("x-tlsgate-")}


def curl_step(lab: Lab, gate: Tlsgate, step: str, url: str, server: str, *extra: str) -> CurlResult:
    before = received(lab.servers[server])
    result = curl(gate.proxy_url, url, *extra)
    lab.note(step, status=result.status, curl_exit=result.returncode, headers=tlsgate_headers(result),
             upstream_saw=received(lab.servers[server]) - before)  # fmt: skip
    return result


def s_client(gate: Tlsgate, host: str, port: int, *args: str) -> tuple[int | None, int]:
    """`openssl s_client` through the proxy (it speaks CONNECT itself), sending one GET: (HTTP status, exit code)."""
    cmd = ["openssl", "s_client", "-proxy", f"127.0.0.1:{gate.port}", "-connect", f"{host}:{port}", "-ign_eof", *args]
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scenario-s_client\r\nConnection: close\r\n\r\n"
    done = subprocess.run(cmd, input=request, capture_output=True, text=True, timeout=30)
    found = re.search(r"^HTTP/1\.1 (\d{3})", done.stdout, re.M)
    return (int(found.group(1)) if found else None), done.returncode


def connect_raw(gate: Tlsgate, target: str) -> str:
    """CONNECT `target` and return the proxy's status line."""
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def aes_ecb(plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(AES_KEY), modes.ECB()).encryptor()
    return encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()


def event_batch(user: str) -> bytes:
    """What analytics SDKs post: a batch of same-shaped records (its ECB repeats blocks)."""
    events = [{"event": "screen_view", "screen": "home", "user": user, "seq": i, "props": {"theme": "dark"}} for i in range(12)]
    return json.dumps({"events": events}).encode()


def drive(lab: Lab, gate: Tlsgate) -> None:
    """The scenario itself: every part in a fixed order, each on its own host."""
    https, http = lab.port("https"), lab.port("http")
    ca = ("--cacert", str(gate.ca_cert))

    curl_step(lab, gate, "https allowed", f"https://allowed.test:{https}/", "https", *ca)
    curl_step(lab, gate, "plain http with a password", f"http://plain.test:{http}/login?password=hunter2", "http")
    curl_step(lab, gate, "plain http, report mode", f"http://plain-report.test:{http}/feed", "http")
    curl_step(lab, gate, "pin mismatch", f"https://pinned.test:{https}/secret", "https", *ca)
    curl_step(lab, gate, "pin mismatch, report mode", f"https://pinned-report.test:{https}/", "https", *ca)
    curl_step(lab, gate, "pin on the intermediate", f"https://pinned-ok.test:{https}/", "https", *ca)
    curl_step(lab, gate, "TLS 1.0 upstream", f"https://tls10.test:{lab.port('tls10')}/", "tls10", *ca)
    curl_step(lab, gate, "TLS 1.0 upstream, report mode", f"https://tls10-report.test:{lab.port('tls10')}/", "tls10", *ca)
    curl_step(lab, gate, "suite without forward secrecy", f"https://weak-suite.test:{lab.port('weak-suite')}/", "weak-suite", *ca)
    curl_step(lab, gate, "1024-bit RSA upstream key", f"https://weak-key.test:{lab.port('weak-key')}/", "weak-key", *ca)
    curl_step(lab, gate, "upstream expiring in 5 days", f"https://expiring.test:{lab.port('expiring')}/", "expiring", *ca)

    # Client audits: a client that accepts anything meets every probe, then gets through; one that verifies
    # refuses every probe, then gets through.
    lax = ("-k", "-A", "Dart/3.4 (dart:io)", "-H", "Authorization: Bearer s3cr3t-bearer")
    for index in range(5):
        curl_step(
            lab,
            gate,
            f"probe {index + 1}, client accepts anything",
            f"https://probe-lax.test:{https}/login?token=t0k3n",
            "https",
            *lax,
        )
    for index in range(5):
        curl_step(lab, gate, f"probe {index + 1}, client verifies", f"https://probe-strict.test:{https}/", "https", *ca)
    curl_step(lab, gate, "client without tlsgate's CA", f"https://untrusted.test:{https}/", "https")
    old = ("-cipher", "DEFAULT:@SECLEVEL=0")
    status, code = s_client(gate, "client-old.test", https, "-tls1", *old, "-servername", "client-old.test")
    lab.note("client offers TLS 1.0 only", status=status, exit=code)
    status, code = s_client(
        gate, "client-weak.test", https, "-tls1_2", "-cipher", "AES128-SHA", "-servername", "client-weak.test"
    )
    lab.note("client offers only weak suites", status=status, exit=code)
    status, code = s_client(gate, "no-sni.test", https, "-noservername")
    lab.note("client sends no SNI", status=status, exit=code)

    # Payload inspection, by a Python app.
    ecb = base64.b64encode(aes_ecb(event_batch("u-1001"))).decode()
    with httpx.Client(proxy=gate.proxy_url, verify=ssl.create_default_context(cafile=gate.ca_cert), timeout=20) as client:
        for step, send in (
            ("payload: AES-ECB", lambda: client.post(f"https://payload.test:{https}/v1/sync", json={"encryptedData": ecb})),
            ("payload: token in the URL", lambda: client.get(f"https://payload.test:{https}/v1/me?access_token={ACCESS_TOKEN}")),
            (
                "payload: provider key in a body",
                lambda: client.post(f"https://payload.test:{https}/v1/cfg", data={"key": STRIPE}),
            ),
            ("payload: seeded e-mail", lambda: client.post(f"https://payload.test:{https}/v1/p", json={"contact": EMAIL})),
            (
                "payload: AES-ECB, report mode",
                lambda: client.post(f"https://payload-report.test:{https}/v1/sync", data={"d": ecb}),
            ),
            ("payload: e-mail to a host no rule names", lambda: client.get(f"https://tracker.test:{https}/t?u={EMAIL}")),
        ):
            before = received(lab.servers["https"])
            answer = send()
            lab.note(step, status=answer.status_code, upstream_saw=received(lab.servers["https"]) - before,
                     headers={k: v for k, v in sorted(answer.headers.items()) if k.startswith("x-tlsgate-")})  # fmt: skip

    # Cleartext beyond HTTP, through CONNECT.
    proxy = {"connect_proxy": f"127.0.0.1:{gate.port}"}
    seen = mqtt_connect(f"broker.test:{lab.port('mqtt')}", "device-7", "hunter2", **proxy)
    lab.note("MQTT with credentials", closed=seen.closed, connack=seen.extra.get("connack_code"),
             upstream_saw=received(lab.servers["mqtt"]))  # fmt: skip
    seen = mqtt_connect(f"broker-ok.test:{lab.port('mqtt-ok')}", "device-7", "hunter2", **proxy)
    lab.note(
        "MQTT allowed by protocol",
        connack=seen.extra.get("connack_code"),
        upstream_got_bytes=received(lab.servers["mqtt-ok"]) > 0,
    )
    seen = smtp_auth(f"mail.test:{lab.port('smtp')}", "user", "secret", **proxy)
    lab.note("SMTP AUTH in the clear", closed=seen.closed, upstream_saw_auth=b"AUTH" in bytes(lab.servers["smtp"].received))

    # Destinations: the proxy host's own services and the cloud metadata address.
    service = lab.port("service")
    lab.note("CONNECT to the proxy host's loopback", answer=connect_raw(gate, f"127.0.0.1:{service}"),
             upstream_connections=lab.servers["service"].connections)  # fmt: skip
    curl_step(lab, gate, "plain http to localhost", f"http://localhost:{http}/admin", "http")
    curl_step(lab, gate, "cloud metadata address", "http://169.254.169.254/latest/meta-data/", "http")

    # An app held to its own network security config.
    curl_step(lab, gate, "app: HTTPS to a host it pins", f"https://app.test:{https}/", "https", *ca)
    curl_step(lab, gate, "app: plain HTTP it forbids", f"http://app.test:{http}/", "http")

    # Hostile or broken peers: a header two parsers would read differently, bytes that are no ClientHello, and
    # an upstream that refuses the connection (a fault, not a verdict).
    before = received(lab.servers["http"])
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        target = f"http://hygiene.test:{http}/x".encode()
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: hygiene.test\r\nX-Note: a\rX-Injected: evil\r\n\r\n")
        head = read_head(sock)
    lab.note(
        "header with a bare CR", answer=head.split(b"\r\n", 1)[0].decode(), upstream_saw=received(lab.servers["http"]) - before
    )
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(f"CONNECT hello.test:{https} HTTP/1.1\r\nHost: hello.test:{https}\r\n\r\n".encode())
        established = read_head(sock).split(b"\r\n", 1)[0].decode()
        sock.sendall(b"\x16\x03\x01\x00\x08not a hello at all")
        read_until_closed(sock)
    lab.note("bytes that are no ClientHello", connect=established)
    curl_step(lab, gate, "upstream refuses the connection", f"https://refused.test:{lab.closed_port}/", "https", *ca)


def drive_quic(lab: Lab, gate: Tlsgate) -> None:
    """HTTP/3 through the QUIC gate: refused by default, inspected, refused in report mode, and a probe that catches
    a client accepting any certificate (which then gets through)."""
    server = lab.servers["quic"]
    ca = lab.work / "certs" / "mitmproxy-ca-cert.pem"  # the CA directory both gates share (start_gate)
    for step, host, verify in (
        ("QUIC refused by default", "quic-refused.test", True),
        ("QUIC inspected, a rule with pins the chain has", "quic-ok.test", True),
        ("QUIC inspected, a rule with pins no certificate has", "quic-pinned.test", True),
        ("QUIC refused, report mode", "quic-report.test", True),
        ("QUIC probe, client accepts anything", "quic-probe.test", False),
        ("QUIC after the probe, client accepts anything", "quic-probe.test", False),
    ):
        before = received(server)
        answer = quicpeers.get(f"https://{host}/q", server_name=host, port=gate.port, ca_file=ca, verify=verify, timeout=15)
        headers = {k: v for k, v in sorted(answer.headers.items()) if k.startswith("x-tlsgate-")}
        lab.note(step, status=answer.status, close_code=answer.close_code, headers=headers,
                 upstream_saw=received(server) - before)  # fmt: skip


# -- normalising --------------------------------------------------------------------------------------------


def replacements(lab: Lab, confdir: Path) -> list[tuple[str, str]]:
    """Values of this run and the names they get: certificate pins, fingerprints and serials by role (tlsgate's CA
    too, and its name, which ends in a random tag), the run's directory."""
    out: list[tuple[str, str]] = []
    ca = x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    lab.certs["tlsgate CA"] = ca
    for attribute in ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        out.append((str(attribute.value), "<tlsgate CA name>"))
    for role, cert in lab.certs.items():
        der = cert.public_bytes(serialization.Encoding.DER)
        spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for name, digest in (("cert", der), ("spki", spki)):
            for algorithm in (hashes.SHA256(), hashes.SHA1()):
                hasher = hashes.Hash(algorithm)
                hasher.update(digest)
                raw = hasher.finalize()
                label = f"<{role} {name} {algorithm.name}>"
                out += [(base64.b64encode(raw).decode(), label), (raw.hex(), label), (raw.hex().upper(), label)]
                out += [(raw.hex(":"), label), (raw.hex(":").upper(), label)]
        serial = cert.serial_number
        out += [(f"{serial:x}", f"<{role} serial>"), (f"{serial:X}", f"<{role} serial>"), (str(serial), f"<{role} serial>")]
    out.append((str(lab.work), "<work>"))
    return sorted(out, key=lambda pair: -len(pair[0]))


# Digests of certificates tlsgate makes itself (client probes): new in every run, so named, not compared.
MADE_BY_TLSGATE = ("sha256", "sha1", "fingerprint", "serial")
HEX = re.compile(r"[0-9a-fA-F:]{16,}")
TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def normalise_text(text: str, pairs: list[tuple[str, str]]) -> str:
    for value, label in pairs:
        text = text.replace(value, label)
    return DATE.sub("<date>", TIME.sub("<time>", text))


def normalise_value(value: Any, pairs: list[tuple[str, str]], ports: dict[int, str], key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: normalise_value(v, pairs, ports, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_value(v, pairs, ports, key) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return ports.get(value, value) if "port" in key else value
    text = normalise_text(str(value), pairs)
    if key in MADE_BY_TLSGATE and HEX.fullmatch(text):
        return f"<{key} of a certificate tlsgate made>"  # a probe certificate, new in every run
    # A known server's port by its name wherever it stands alone (not inside a JA3 string's "49162-49172,..."),
    # and any other after a colon (host:PORT) is a client's.
    text = re.sub(r"(?<![\w.,:-])(\d{4,5})(?![\w,-])", lambda m: ports.get(int(m.group(1)), m.group(1)), text)
    text = re.sub(r"(?<=:)(\d{4,5})\b", lambda m: ports.get(int(m.group(1)), "<port>"), text)
    return text


def normalise_findings(path: Path, pairs: list[tuple[str, str]], ports: dict[int, str]) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines() if path.exists() else []:
        if raw.strip():
            finding = normalise_value(json.loads(raw), pairs, ports)
            lines.append(json.dumps(finding, sort_keys=True))
    return sorted(lines)


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
KEPT_GAUGES = ("tlsgate_build_info", "tlsgate_policy_rules")


def normalise_metrics(text: str, pairs: list[tuple[str, str]], ports: dict[int, str]) -> list[str]:
    """Counter samples (and a histogram's `_count`), not timings, sizes, timestamps or process figures."""
    out = []
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if not found or line.startswith("#"):
            continue
        name, labels, value = found.group(1), found.group(2) or "", found.group(3)
        if name.startswith(("process_", "python_")) or name.endswith("_created"):
            continue
        if not (name.endswith(("_total", "_count")) or name in KEPT_GAUGES):
            continue
        if name == "tlsgate_build_info":  # the versions are the environment's, not the behaviour under comparison
            labels = re.sub(r'(mitmproxy_version|version)="[^"]*"', r'\1="<version>"', labels)
        out.append(f"{name}{normalise_value(labels, pairs, ports)} {value}")
    return sorted(out)


# -- running it -----------------------------------------------------------------------------------------------


def tlsgate_command(checkout: Path, python: Path) -> list[str]:
    """`python -m tlsgate` in a checkout of today, `python -m proxy` in one from before the rename (pre-i22)."""
    package = "tlsgate" if (checkout / "tlsgate" / "__main__.py").is_file() else "proxy"
    if not (checkout / package / "__main__.py").is_file():
        raise SystemExit(f"{checkout} holds neither tlsgate/ nor proxy/")
    return [str(python), "-m", package, "run"]


def quiet_file(path: Path, still: float = 2.0, limit: float = 60) -> None:
    """Until `path` has not changed for `still` seconds: tlsgate has written what the last client caused."""
    deadline = time.monotonic() + limit
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= still:
            return
        time.sleep(0.1)


def start_gate(command: list[str], work: Path, lab: Lab, policy: str, *extra: str) -> Tlsgate:
    """A tlsgate in `work` (its findings file and policy there), with the scenario's CA directory and upstream root."""
    work.mkdir(exist_ok=True)
    (work / "policy.yaml").write_text(policy)
    args = ["--listen-port", "0", "--metrics-port", "0", "--confdir", str(lab.work / "certs"), "--findings", "findings.jsonl"]
    args += ["--policy", "policy.yaml", "--upstream-ca", str(lab.root_file), *extra]
    return Tlsgate(work, command=[*command, *args]).start(timeout=60)


def finish(gate: Tlsgate, findings: list[Path], scrapes: list[str], ports: dict[int, str], name: str) -> None:
    """Wait until `gate` has written what its last client caused, then keep its findings, counters and ports."""
    quiet_file(gate.findings_path)
    findings.append(gate.findings_path)
    scrapes.append(gate.scrape())
    ports[gate.port] = f"<{name} port>"
    ports[int(gate.metrics_url.rsplit(":", 1)[1])] = f"<{name} metrics port>"


def run(checkout: Path, out: Path, python: Path | None = None) -> dict[str, list[str]]:
    """Run the scenario against `checkout`'s tlsgate; write and return the three normalised files."""
    python = python or (Path(sys.executable) if checkout.resolve() == REPO else checkout / ".venv" / "bin" / "python")
    command = tlsgate_command(checkout, python)
    with tempfile.TemporaryDirectory(prefix="tlsgate-scenario-") as tmp:
        work = Path(tmp)
        lab = start_servers(work)
        gates: list[Tlsgate] = []
        findings: list[Path] = []
        scrapes: list[str] = []
        ports: dict[int, str] = {}
        codes: list[str] = []
        try:
            # The main gate: regular mode, every TCP part.
            resolve = [arg for host in HOSTS for arg in ("--resolve", f"{host}:*:127.0.0.1")]
            gates.append(start_gate(command, work, lab, policy_text(lab.chain), *resolve))
            drive(lab, gates[0])
            finish(gates[0], findings, scrapes, ports, "proxy")
            codes.append(f"tlsgate exit: {gates[0].stop()}")
            # The QUIC gate: reverse:http3 towards the HTTP/3 server (the UDP mode that needs no namespace).
            quic = lab.port("quic")
            mode = ["--mode", f"reverse:http3://{QUIC_UPSTREAM}:{quic}", "--resolve", f"{QUIC_UPSTREAM}:{quic}:127.0.0.1"]
            gates.append(start_gate(command, work / "quic", lab, quic_policy_text(lab.chain), *mode))
            drive_quic(lab, gates[1])
            finish(gates[1], findings, scrapes, ports, "quic proxy")
            codes.append(f"quic tlsgate exit: {gates[1].stop()}")
        finally:
            for gate in gates:
                gate.stop()
            stop_servers(lab)
        ports |= {lab.port(name): f"<{name} port>" for name in lab.servers} | {lab.closed_port: "<closed port>"}
        pairs = replacements(lab, work / "certs")
        metrics = normalise_metrics(scrapes[0], pairs, ports)
        metrics += [f"quic gate: {line}" for line in normalise_metrics(scrapes[1], pairs, ports)]
        result = {
            "findings.jsonl": sorted(line for path in findings for line in normalise_findings(path, pairs, ports)),
            "metrics.txt": metrics,
            "clients.txt": [normalise_value(line, pairs, ports) for line in lab.client_lines] + codes,
        }
        out.mkdir(parents=True, exist_ok=True)
        for name, lines in result.items():
            (out / name).write_text("".join(f"{line}\n" for line in lines))
        # For a person reading a difference; not compared.
        (out / "console.log").write_text("\n\n".join(gate.output for gate in gates) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=REPO, help="the tlsgate checkout to run (default: this one)")
    parser.add_argument(
        "--python", type=Path, help="its Python (default: CHECKOUT/.venv/bin/python, or this one for this checkout)"
    )
    parser.add_argument("--out", type=Path, help="where to write the three files (default: a temporary directory)")
    parser.add_argument("--record", action="store_true", help=f"write them to {GOLDEN.relative_to(REPO)} (the reference)")
    args = parser.parse_args(argv)
    out = GOLDEN if args.record else args.out or Path(tempfile.mkdtemp(prefix="scenario-out-"))
    run(args.checkout.resolve(), out, args.python.absolute() if args.python else None)  # tlsgate runs in a temporary cwd
    if args.record:
        (out / "console.log").unlink()
    print(out)
    if not args.record and GOLDEN.is_dir():
        done = subprocess.run(["diff", "-u", "-r", "-x", "console.log", "-x", "README.md", str(GOLDEN), str(out)])
        return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
