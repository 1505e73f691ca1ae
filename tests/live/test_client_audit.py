"""Client audits end to end: real clients that verify certificates and real ones that do not.

Every case drives a real tlsgate with curl, Python's ssl module or `openssl s_client` through
CONNECT, against local upstreams that record what reached them. A probe a client accepts must
be caught and nothing it sends may reach the upstream; a client that verifies must pass every
probe and then get through, one failed connection per probe kind later.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import Tlsgate, Upstream, curl, eventually
from tests.tlsservers import RawTlsServer
from tlsgate.tls.probes import PROBE_KINDS as ALL_KINDS

# The original four, whose findings these tests read closely; every kind meets real clients in test_probe_matrix.py.
PROBE_KINDS = ALL_KINDS[:4]
ALL_PROBES = "[" + ", ".join(PROBE_KINDS) + "]"
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL's flag; Python has no name for it


def probe_policy(host: str = "api.test", mode: str = "enforce", probes: str = ALL_PROBES) -> str:
    return (
        "version: 1\ndevices:\n  127.0.0.1: test-phone\nrules:\n"
        f"  - hosts: {host}\n    mode: {mode}\n    client:\n      probes: {probes}\n"
    )


def of_check(gate: Tlsgate, check: str, count: int) -> list[dict]:
    """Wait until `count` findings of `check` are recorded, then return them in order."""
    assert eventually(lambda: len([f for f in gate.findings() if f["check"] == check]) >= count), gate.findings()
    return [f for f in gate.findings() if f["check"] == check]


# -- clients ------------------------------------------------------------------------------------------


def python_get(gate: Tlsgate, host: str, port: int, context: ssl.SSLContext, path: str = "/") -> int | str:
    """GET through the proxy with Python's ssl module: the HTTP status, or why the client refused the TLS."""
    with socket.create_connection(("127.0.0.1", gate.port), timeout=15) as raw:
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = raw.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {exc}"
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: python-ssl-test\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        data = b""
        with tls:
            while chunk := tls.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1])


def python_context(ca: Path | None, *, check_hostname: bool = True, check_time: bool = True) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context.load_verify_locations(ca)
    context.check_hostname = check_hostname
    if not check_time:
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    return context


@dataclass
class SClient:
    returncode: int
    stdout: str
    stderr: str

    @property
    def status(self) -> int | None:
        found = re.search(r"^HTTP/1\.1 (\d{3})", self.stdout, re.M)
        return int(found.group(1)) if found else None


def s_client(gate: Tlsgate, host: str, port: int, *args: str) -> SClient:
    """`openssl s_client` through the proxy (it speaks CONNECT itself), sending one GET."""
    cmd = ["openssl", "s_client", "-proxy", f"127.0.0.1:{gate.port}", "-connect", f"{host}:{port}", "-ign_eof", *args]
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: s_client-test\r\nConnection: close\r\n\r\n"
    done = subprocess.run(cmd, input=request, capture_output=True, text=True, timeout=30)
    return SClient(done.returncode, done.stdout, done.stderr)


# -- invalid-certificate probes -----------------------------------------------------------------------


def test_curl_k_is_caught_by_every_probe_and_nothing_reaches_the_upstream(tlsgate, https_upstream: Upstream) -> None:
    # Report mode on purpose: it never forwards what an app sent to an impostor.
    gate = tlsgate(probe_policy(mode="report"), resolve={"api.test": https_upstream.port})
    url = f"https://api.test:{https_upstream.port}/login?token=s3cr3t-token&page=2"
    extra = ("-k", "-A", "Dart/3.4 (dart:io)", "-H", "Authorization: Bearer s3cr3t-bearer")
    for kind in PROBE_KINDS:
        blocked = curl(gate.proxy_url, url, *extra)
        assert blocked.status == 403, (kind, blocked)
        assert blocked.headers["x-tlsgate-check"] == "client_probe"
    assert https_upstream.requests == [], "a request sent over an accepted probe reached the server"

    ok = curl(gate.proxy_url, url, *extra)  # every kind tried once: now intercepted normally
    assert ok.status == 200 and ok.body == "hello from https-upstream\n"
    assert len(https_upstream.requests) == 1

    caught = of_check(gate, "client_probe", 4)
    assert [f["evidence"]["kind"] for f in caught] == list(PROBE_KINDS)
    for finding in caught:
        assert (finding["action"], finding["severity"]) == ("blocked", "critical")
        assert finding["device"] == "test-phone" and finding["host"] == "api.test"
        assert finding["detail"].startswith("the client accepted ") and "for api.test and sent GET" in finding["detail"]
        evidence = finding["evidence"]
        assert evidence["user_agent"] == "Dart/3.4 (dart:io)"
        assert re.fullmatch(r"[0-9a-f]{32}", evidence["ja3"]) and evidence["ja4"].startswith("t13d")
        assert evidence["ja3"] == caught[0]["evidence"]["ja3"], "one client, one fingerprint"
        assert "token=[REDACTED]" in evidence["sent"]["url"]
        assert {c["kind"] for c in evidence["sent"]["credentials"]} >= {"authorization", "query"}
    assert "self-signed certificate" in caught[0]["detail"] and "TrustManager" in caught[0]["remedy"]
    assert "wrong-host.tlsgate.invalid" in caught[1]["detail"] and "HostnameVerifier" in caught[1]["remedy"]
    text = gate.findings_path.read_text()
    assert "s3cr3t" not in text, "findings keep redacted evidence only"


def test_curl_that_verifies_passes_every_probe_and_then_gets_through(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(probe_policy(), resolve={"api.test": https_upstream.port})
    url = f"https://api.test:{https_upstream.port}/"
    for kind in PROBE_KINDS:
        refused = curl(gate.proxy_url, url, "--cacert", str(gate.ca_cert))
        assert refused.status == 0 and refused.returncode != 0, (kind, refused)
    assert https_upstream.requests == []
    assert curl(gate.proxy_url, url, "--cacert", str(gate.ca_cert)).status == 200

    passed = of_check(gate, "client_probe", 4)
    assert [f["evidence"]["kind"] for f in passed] == list(PROBE_KINDS)
    assert {(f["action"], f["severity"]) for f in passed} == {("passed", "info")}
    assert all(f["evidence"]["rejection"] for f in passed)
    assert not [f for f in gate.findings() if f["check"] == "client_trust"], "a refused probe is a pass, not a CA problem"
    assert not [f for f in gate.findings() if f["check"] != "client_probe"], "curl's hello is fine by default"


@pytest.mark.parametrize(
    ("make_context", "accepts"),
    [
        pytest.param(lambda ca: python_context(None), set(PROBE_KINDS), id="no verification (CERT_NONE)"),
        pytest.param(lambda ca: python_context(ca, check_hostname=False), {"wrong_host"}, id="no host name check"),
        pytest.param(lambda ca: python_context(ca, check_time=False), {"expired"}, id="no expiry check"),
        pytest.param(lambda ca: python_context(ca), set(), id="full verification"),
    ],
)
def test_each_probe_catches_exactly_the_check_a_python_client_skips(
    tlsgate, https_upstream: Upstream, make_context: Callable[[Path], ssl.SSLContext], accepts: set[str]
) -> None:
    gate = tlsgate(probe_policy(), resolve={"api.test": https_upstream.port})
    context = make_context(gate.ca_cert)
    outcomes = [python_get(gate, "api.test", https_upstream.port, context) for _ in PROBE_KINDS]
    for kind, outcome in zip(PROBE_KINDS, outcomes, strict=True):
        assert outcome == 403 if kind in accepts else str(outcome).startswith("refused"), (kind, outcome)
    assert https_upstream.requests == []
    assert python_get(gate, "api.test", https_upstream.port, context) == 200
    verdicts = {f["evidence"]["kind"]: f["action"] for f in of_check(gate, "client_probe", 4)}
    assert verdicts == {kind: "blocked" if kind in accepts else "passed" for kind in PROBE_KINDS}


def test_raw_tcp_over_an_accepted_probe_is_cut_off_before_the_server(tlsgate, pki) -> None:
    _, _, cert_file, key_file = pki
    server = RawTlsServer(cert_file, key_file).start()
    try:
        gate = tlsgate(
            probe_policy(probes="[self_signed]"), resolve={"api.test": server.port}, args=("--set", "tcp_hosts=api.test")
        )

        def send(payload: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", gate.port), timeout=15) as raw:
                raw.sendall(f"CONNECT api.test:{server.port} HTTP/1.1\r\n\r\n".encode())
                assert raw.recv(4096).startswith(b"HTTP/1.1 200")
                with python_context(None).wrap_socket(raw, server_hostname="api.test") as tls:
                    tls.sendall(payload)
                    try:
                        return tls.recv(4096)
                    except (ssl.SSLError, OSError):
                        return b""

        assert send(b"secret over a probe\n") == b""
        (finding,) = of_check(gate, "client_probe", 1)
        assert finding["action"] == "blocked" and finding["evidence"]["sent"]["protocol"] == "tcp"
        assert "raw TCP data" in finding["detail"]
        assert server.received == [], "raw bytes sent over an accepted probe reached the server"
        assert send(b"after the probe\n") == b"echo:after the probe\n"
    finally:
        server.stop()


# -- what the ClientHello offers -----------------------------------------------------------------------


def test_old_versions_are_refused_in_enforce_and_watched_in_report_mode(tlsgate, https_upstream: Upstream) -> None:
    policy = "version: 1\nrules:\n  - hosts: legacy.test\n    mode: report\n"
    gate = tlsgate(policy, resolve={"api.test": https_upstream.port, "legacy.test": https_upstream.port})
    old = ("-cipher", "DEFAULT:@SECLEVEL=0")

    refused = s_client(gate, "api.test", https_upstream.port, "-tls1", *old, "-servername", "api.test")
    assert refused.status is None and refused.returncode != 0
    assert https_upstream.requests == []
    (blocked,) = of_check(gate, "client_protocol", 1)
    assert blocked["action"] == "blocked" and blocked["host"] == "api.test"
    assert "at best TLS 1.0, below the policy minimum TLS 1.2" in blocked["detail"]
    assert blocked["evidence"]["best_offered_version"] == "1.0"

    watched = s_client(gate, "legacy.test", https_upstream.port, "-tls1_1", *old, "-servername", "legacy.test")
    assert watched.status == 200, watched.stderr
    assert "Protocol  : TLSv1.1" in watched.stdout
    assert len(https_upstream.requests) == 1
    reported = of_check(gate, "client_protocol", 2)[1]
    assert reported["action"] == "reported" and reported["host"] == "legacy.test"
    assert reported["evidence"]["best_offered_version"] == "1.1" and reported["evidence"]["user_agent"] == "s_client-test"


def test_min_version_13_refuses_a_tls12_client_handshake(tlsgate, https_upstream: Upstream) -> None:
    policy = "version: 1\nrules:\n  - hosts: api.test\n    client:\n      min_version: '1.3'\n"
    gate = tlsgate(policy, resolve={"api.test": https_upstream.port})
    refused = s_client(gate, "api.test", https_upstream.port, "-tls1_2", "-servername", "api.test")
    assert refused.status is None and "Cipher is (NONE)" in refused.stdout, "no session may be negotiated"
    assert https_upstream.requests == []
    (finding,) = of_check(gate, "client_protocol", 1)
    assert finding["action"] == "blocked" and "at best TLS 1.2, below the policy minimum TLS 1.3" in finding["detail"]

    ok = curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--tlsv1.3", "--cacert", str(gate.ca_cert))
    assert ok.status == 200


def test_weak_suites_and_missing_sni_are_named(tlsgate, https_upstream: Upstream) -> None:
    policy = "version: 1\nrules:\n  - hosts: www.test\n    client:\n      weak_suites: strict\n"
    gate = tlsgate(policy, resolve={"api.test": https_upstream.port, "www.test": https_upstream.port})
    port = https_upstream.port

    weak = s_client(gate, "api.test", port, "-tls1_2", "-cipher", "AES128-SHA", "-servername", "api.test")
    assert weak.status == 200, "offering weak suites is recorded, not refused"
    (finding,) = of_check(gate, "client_ciphers", 1)
    assert (finding["action"], finding["severity"], finding["evidence"]["kind"]) == ("reported", "medium", "only_weak_suites")
    assert "TLS_RSA_WITH_AES_128_CBC_SHA" in finding["detail"]
    for reason in ("no forward secrecy", "CBC mode", "SHA-1 MAC"):
        assert reason in finding["detail"]
    assert finding["evidence"]["user_agent"] == "s_client-test" and finding["evidence"]["ja3"]
    again = s_client(gate, "api.test", port, "-tls1_2", "-cipher", "AES128-SHA", "-servername", "api.test")
    assert again.status == 200
    assert len(of_check(gate, "client_ciphers", 1)) == 1, "the same app stack is reported once per host, not per connection"

    # curl offers CBC suites next to strong ones: worth a note only where the rule is strict.
    assert curl(gate.proxy_url, f"https://api.test:{port}/", "--cacert", str(gate.ca_cert)).status == 200
    assert curl(gate.proxy_url, f"https://www.test:{port}/", "--cacert", str(gate.ca_cert)).status == 200
    strict = of_check(gate, "client_ciphers", 2)[1]
    assert (strict["host"], strict["severity"], strict["evidence"]["kind"]) == ("www.test", "low", "weak_suites_offered")

    bare = s_client(gate, "api.test", port, "-noservername")
    assert bare.status == 200
    (no_sni,) = of_check(gate, "client_sni", 1)
    assert no_sni["host"] == "api.test" and "without sending SNI" in no_sni["detail"]
    assert no_sni["evidence"]["sni"] is None


# -- why a client gave up ------------------------------------------------------------------------------


def test_a_client_without_the_tlsgate_ca_gets_an_explanation(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(resolve={"api.test": https_upstream.port})
    url = f"https://api.test:{https_upstream.port}/"
    assert curl(gate.proxy_url, url).returncode == 60  # the system store does not know tlsgate's CA
    (finding,) = of_check(gate, "client_trust", 1)
    assert (finding["action"], finding["severity"]) == ("reported", "info")
    assert finding["evidence"]["rejection"] == "unknown ca"
    assert "not installed" in finding["detail"] and "pins" in finding["detail"]
    assert "tlsgate ca export" in finding["remedy"] and "http://mitm.it" in finding["remedy"]

    refused = python_get(gate, "api.test", https_upstream.port, ssl.create_default_context())
    assert str(refused).startswith("refused")
    assert len(of_check(gate, "client_trust", 2)) == 2
    assert https_upstream.requests == []

    # Probing is opt-in: without client.probes even curl -k is simply intercepted.
    assert curl(gate.proxy_url, url, "-k").status == 200
    assert not [f for f in gate.findings() if f["check"] == "client_probe"]


def test_sni_with_a_port_is_matched_on_its_host() -> None:
    """hey (Go) sends `localhost:PORT` as SNI; rules must still match `localhost`."""
    from tlsgate.policy.hosts import split_host_port

    assert split_host_port("localhost:8443")[0] == "localhost"
    assert split_host_port("api.test")[0] == "api.test"
    assert split_host_port("::1")[0] == "::1" and split_host_port("a:b")[0] == "a:b"
