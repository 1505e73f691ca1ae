"""Protocol probes against real clients: which ones complete a TLS 1.0/1.1, RSA-CBC-SHA1 or anonymous handshake.

Ground truth: each client is configured as it ships, or with the one setting
that is the known mistake (a lowered floor, `@SECLEVEL=0`, a cipher string of
`ALL` or `aNULL`), with certificate verification on throughout, so a probe the
client accepts is accepted for what it negotiated, never for the certificate.
tlsgate's verdict per probe must be what the client did on the wire (it got
tlsgate's 403, or it never completed a handshake), and what the table says the
client is documented to do. Nothing reaches the upstream, in report mode.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from tests.docs import docs_text
from tests.harness import Tlsgate, Upstream, curl, eventually
from tests.live.test_client_audit import python_get, s_client
from tests.tlsservers import RawTlsServer
from tlsgate.checks.probes import CLOSED_AFTER_HANDSHAKE
from tlsgate.tls.protocol_probes import OFFERS, PROTOCOL_PROBE_KINDS

ALL = frozenset(PROTOCOL_PROBE_KINDS)
Send = Callable[[Tlsgate, str, int], int | str | None]  # the HTTP status the client got, or why it got none


def via_curl(*args: str) -> Send:
    def send(gate: Tlsgate, host: str, port: int) -> int | str | None:
        done = curl(gate.proxy_url, f"https://{host}:{port}/", "--cacert", str(gate.ca_cert), *args)
        return done.status or f"refused: {done.stderr.strip()[-200:]}"

    return send


def via_s_client(*args: str) -> Send:
    def send(gate: Tlsgate, host: str, port: int) -> int | str | None:
        done = s_client(gate, host, port, "-CAfile", str(gate.ca_cert), "-verify_return_error", "-verify_hostname", host, *args)
        return done.status or f"refused: {done.stderr.strip()[-200:]}"

    return send


def via_python(make: Callable[[], ssl.SSLContext]) -> Send:
    def send(gate: Tlsgate, host: str, port: int) -> int | str | None:
        context = make()
        context.load_verify_locations(gate.ca_cert)
        return python_get(gate, host, port, context)

    return send


def python_default() -> ssl.SSLContext:
    return ssl.create_default_context()  # verification on, TLS 1.2+, Python's own cipher string


def python_lowered() -> ssl.SSLContext:
    """The classic "make the old server work" patch: verification still on, every bar lowered."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


@dataclass(frozen=True)
class Client:
    name: str
    host: str  # one per client: the schedule is per (client address, host)
    send: Send
    accepts: frozenset[str]  # the probes this client is documented to complete a handshake for


# What each client does, from its documentation and its library's defaults here (curl 7.88 and openssl 3.0 on
# Debian's OpenSSL 3.0 at security level 1, CPython 3.12's ssl): OpenSSL refuses TLS 1.0/1.1 and anonymous
# suites above security level 0 (3.0 still offers TLS 1.0/1.1 at level 1, then aborts with internal_error);
# its DEFAULT cipher list (curl's and s_client's) still has AES128-SHA and AES256-SHA, RSA key exchange with
# CBC-SHA1; CPython's default cipher string drops SHA-1 and RSA key exchange, and its floor is TLS 1.2.
CLIENTS = (  # the README's table, row by row (names as its first column has them)
    Client("Python `ssl.create_default_context()`", "api.test", via_python(python_default), frozenset()),
    Client("`curl` (defaults)", "c1.test", via_curl(), frozenset({"weak_cipher"})),
    Client(
        "`curl --tlsv1.0 --ciphers DEFAULT:@SECLEVEL=0`",
        "c2.test",
        via_curl("--tlsv1.0", "--ciphers", "DEFAULT:@SECLEVEL=0"),
        frozenset({"tls_downgrade", "weak_cipher"}),
    ),
    Client(
        "`curl --ciphers ALL:@SECLEVEL=0`",
        "c3.test",
        via_curl("--ciphers", "ALL:@SECLEVEL=0"),
        frozenset({"tls_downgrade", "weak_cipher"}),  # it completes the anonymous handshake, then wants a certificate
    ),
    Client("`openssl s_client -verify_return_error`", "c4.test", via_s_client(), frozenset({"weak_cipher"})),
    Client(
        "`openssl s_client -tls1 -cipher DEFAULT:@SECLEVEL=0`",
        "c5.test",
        via_s_client("-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"),
        frozenset({"tls_downgrade"}),
    ),
    Client(
        "`openssl s_client -cipher aNULL:@SECLEVEL=0`",
        "c6.test",
        via_s_client("-cipher", "aNULL:@SECLEVEL=0"),
        frozenset({"anon_cipher"}),
    ),
    Client('Python, `minimum_version = TLSv1`, `set_ciphers("ALL:@SECLEVEL=0")`', "c7.test", via_python(python_lowered), ALL),
)


def probe_findings(gate: Tlsgate) -> list[dict]:
    return [f for f in gate.findings() if f["check"] == "client_probe"]


def policy(hosts: list[str]) -> str:
    return (
        "version: 1\ndevices:\n  127.0.0.1: test-phone\nrules:\n"
        f"  - hosts: [{', '.join(hosts)}]\n    mode: report\n    client:\n"
        f"      probes: [{', '.join(PROTOCOL_PROBE_KINDS)}]\n"
    )


def test_each_client_is_caught_by_exactly_the_probes_it_completes_and_nothing_reaches_the_upstream(
    tlsgate, https_upstream: Upstream
) -> None:
    # Report mode on purpose: an accepted probe is answered by tlsgate in every mode.
    hosts = [c.host for c in CLIENTS]
    gate = tlsgate(policy(hosts), resolve={host: https_upstream.port for host in hosts})
    seen: dict[str, dict[str, int | str | None]] = {}
    for c in CLIENTS:
        seen[c.name] = {kind: c.send(gate, c.host, https_upstream.port) for kind in PROTOCOL_PROBE_KINDS}
    assert https_upstream.requests == [], "a request sent over an accepted protocol probe reached the server"

    eventually(lambda: len(probe_findings(gate)) >= len(CLIENTS) * len(PROTOCOL_PROBE_KINDS))
    findings = probe_findings(gate)
    verdicts = {c.name: {f["evidence"]["kind"]: f["action"] for f in findings if f["host"] == c.host} for c in CLIENTS}
    expected = {c.name: {k: "blocked" if k in c.accepts else "passed" for k in PROTOCOL_PROBE_KINDS} for c in CLIENTS}
    assert verdicts == expected, seen
    on_the_wire = {c.name: {k: "blocked" if outcome == 403 else "passed" for k, outcome in seen[c.name].items()} for c in CLIENTS}
    assert on_the_wire == expected, seen  # each connection got the next kind: the client saw what tlsgate recorded

    for finding in findings:
        evidence = finding["evidence"]
        offer = OFFERS[evidence["kind"]].summary()
        assert evidence["offer"] == offer and finding["device"] == "test-phone"
        if finding["action"] == "blocked":
            negotiated = evidence["negotiated"]
            assert negotiated["version"] in offer["versions"], finding
            assert finding["detail"].startswith("the client accepted ") and "negotiated TLS 1." in finding["detail"]
            assert finding["remedy"], finding
        else:
            assert finding["severity"] == "info" and evidence["rejection"], finding
    by_host = {(f["host"], f["evidence"]["kind"]): f for f in findings}
    assert by_host[("c5.test", "tls_downgrade")]["evidence"]["negotiated"]["version"] == "1.0"  # -tls1
    assert by_host[("c2.test", "tls_downgrade")]["evidence"]["negotiated"]["version"] == "1.1"  # the probe's best
    assert by_host[("c6.test", "anon_cipher")]["evidence"]["negotiated"]["suite"].startswith(("ADH-", "AECDH-"))
    assert by_host[("c6.test", "anon_cipher")]["severity"] == "critical"
    assert by_host[("c1.test", "weak_cipher")]["evidence"]["negotiated"]["suite"] in ("AES128-SHA", "AES256-SHA")
    rejections = {
        ("api.test", "tls_downgrade"): "offered none of the probe's versions",  # Python: TLS 1.2 and up only
        ("api.test", "weak_cipher"): "offered none of the probe's suites",
        ("c1.test", "tls_downgrade"): "internal error",  # OpenSSL 3.0 at level 1 offers 1.0/1.1, then cannot sign
        ("c3.test", "anon_cipher"): CLOSED_AFTER_HANDSHAKE,  # curl: no peer certificate to verify
        ("c5.test", "weak_cipher"): "offered none of the probe's versions",  # -tls1 against a TLS 1.2 offer
    }
    assert {key: by_host[key]["evidence"]["rejection"] for key in rejections} == rejections

    assert readme_example_line(gate, "c1.test", https_upstream.port) in docs_text()

    # every kind tried once: the app works again, through tlsgate, with the upstream judged as usual
    assert CLIENTS[0].send(gate, "api.test", https_upstream.port) == 200
    assert len(https_upstream.requests) == 1


def readme_matrix() -> dict[str, dict[str, str]]:
    text = docs_text()
    table = text[text.index("| client (as configured) |") :].split("\n\n", 1)[0].splitlines()
    header = [cell.strip(" `") for cell in table[0].strip("|").split("|")]
    rows = {}
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


def test_the_readme_ground_truth_table_is_the_one_this_file_runs() -> None:
    expected = {c.name: {k: "caught" if k in c.accepts else "passed" for k in PROTOCOL_PROBE_KINDS} for c in CLIENTS}
    assert readme_matrix() == expected


def readme_example_line(gate: Tlsgate, host: str, port: int) -> str:
    """The console line tlsgate printed for `host`'s weak_cipher finding, in the README's example names."""
    (line,) = [ln for ln in gate.output.splitlines() if f"client_probe {host}:{port}" in ln and "RSA key exchange" in ln]
    line = line[line.index("[MEDIUM]") :]
    line = line.replace(f"https://{host}:{port}/", "https://api.example.com/").replace(f"{host}:{port}", "api.example.com:443")
    line = re.sub(r"\(rule [^)]*:(\d+)\)", r"(rule app.yaml:\1)", line.replace(host, "api.example.com"))
    return line.replace("test-phone", "pixel-7")


def test_raw_tcp_over_an_accepted_protocol_probe_is_cut_off_before_the_server(tlsgate, pki) -> None:
    _, _, cert_file, key_file = pki
    server = RawTlsServer(cert_file, key_file).start()
    try:
        gate = tlsgate(policy(["api.test"]), resolve={"api.test": server.port}, args=("--set", "tcp_hosts=api.test"))
        with socket.create_connection(("127.0.0.1", gate.port), timeout=15) as raw:
            raw.sendall(f"CONNECT api.test:{server.port} HTTP/1.1\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            context = python_lowered()
            context.load_verify_locations(gate.ca_cert)
            with context.wrap_socket(raw, server_hostname="api.test") as tls:
                assert tls.version() == "TLSv1.1"  # the first kind listed: tls_downgrade
                tls.sendall(b"secret over a downgraded connection\n")
                try:
                    answer = tls.recv(4096)
                except (ssl.SSLError, OSError):
                    answer = b""
        assert answer == b""
        eventually(lambda: len(probe_findings(gate)) >= 1)
        (finding,) = probe_findings(gate)
        assert (finding["action"], finding["evidence"]["kind"]) == ("blocked", "tls_downgrade")
        assert finding["evidence"]["sent"]["protocol"] == "tcp" and "raw TCP data" in finding["detail"]
        assert server.received == [], "raw bytes sent over an accepted protocol probe reached the server"
    finally:
        server.stop()
