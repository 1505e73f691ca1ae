"""Ground truth from Node, Java and Go: each probe kind against real clients of three more stacks, and tlsgate agrees.

The same experiment as tests/live/test_probe_matrix.py, with the programs in
tests/clients/ (built once per session): Node's `https`/`tls`, Java's
`HttpsURLConnection` and Go's `net/http`, each as shipped and with the
mistakes apps make (`rejectUnauthorized: false`, an overridden
`checkServerIdentity`; a trust-all `X509TrustManager`, an allow-all
`HostnameVerifier`, a trust manager ignoring `CertificateExpiredException`;
`InsecureSkipVerify`, a hand-written `VerifyPeerCertificate`). Every client
goes through tlsgate as an HTTP proxy (CONNECT), one connection per probe kind,
each to a host of its own, the certificate kinds and the protocol kinds alike.
For every pair: the client did what `EXPECTED` says (the README's two tables are
rendered from it and compared here), and tlsgate's finding agrees with what the
client did: `blocked` where it sent its request (and got tlsgate's 403),
`passed` where it refused. One tlsgate per family; the family's clients run in
parallel.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.clients import ACCEPTS, FAMILIES, PACKAGES, REFUSES, STACK_CLIENTS, Builds, Outcome, StackClient, run
from tests.docs import docs_text
from tests.harness import REPO, Upstream, eventually
from tests.live.test_probe_matrix import rule
from tlsgate.tls.probes import PROBE_KINDS, applies
from tlsgate.tls.protocol_probes import PROTOCOL_PROBE_KINDS

CERTIFICATE_KINDS = tuple(kind for kind in PROBE_KINDS if kind not in PROTOCOL_PROBE_KINDS)

# What each client does with each probe, as this run shows it (A accepts: sends its request; r refuses).
# Columns in STACK_CLIENTS order: Node default, rejectUnauthorized false, checkServerIdentity; Java default,
# trust-all, allow-all HostnameVerifier, swallows expired; Go default, InsecureSkipVerify, VerifyPeerCertificate.
# Node 20 (nodejs.org/NodeSource build, its own OpenSSL 3.0), OpenJDK 17, Go 1.19. The cells that surprise:
# - cn_only: Node's tls.checkServerIdentity and Java's HostnameChecker fall back to the subject CN when the
#   certificate has no DNS name; Go (since 1.15) does not.
# - wildcard_too_broad (`*.test` for `x.test`): Go has no rule against a wildcard over a top-level domain, and
#   Java's public-suffix rule skips certificates that do not chain to a JDK root (HostnameChecker.
#   hasIllegalWildcard: "skip check for non-public certificates"); Node refuses it.
# - sha1_signature: Java's jdk.certpath.disabledAlgorithms refuses SHA-1 only in chains to the JDK's own roots
#   (`SHA1 jdkCA & usage TLSServer`), not to a CA the app added; Go refuses it since 1.18.
# - rsa_1024: Node's own OpenSSL runs at security level 1 (Debian's system OpenSSL is at 2: see expected_here);
#   Java refuses RSA keys only below 1024 bits; Go 1.19 has no minimum.
# - Java trust-all refuses the host name kinds: JSSE wraps a TrustManager that is not an X509ExtendedTrustManager
#   and still checks the endpoint's identity during the handshake ("No subject alternative DNS name matching"),
#   because HttpsURLConnection asks for it while the default HostnameVerifier is in place.
# - weak_cipher: all three still enable RSA key exchange with AES-CBC-SHA1 (Node's DEFAULT_CIPHERS end in HIGH;
#   JDK 17 and Go 1.19 list TLS_RSA_WITH_AES_128_CBC_SHA among their defaults).
_TABLE = """
self_signed               r A r  r A r r  r A r
wrong_host                r A A  r r A r  r A A
expired                   r A r  r A r A  r A A
untrusted_ca              r A r  r A r r  r A r
not_yet_valid             r A r  r A r r  r A A
non_ca_issuer             r A r  r A r r  r A A
path_len_exceeded         r A r  r A r r  r A A
outside_name_constraints  r A r  r A r r  r A A
client_auth_only          r A r  r A r r  r A A
cn_only                   A A A  A A A A  r A A
wildcard_too_broad        r A A  A A A A  A A A
wildcard_wrong_label      r A A  r r A r  r A A
sha1_signature            r A r  A A A A  r A A
rsa_1024                  A A A  A A A A  A A A
ip_name_only              r A A  r r A r  r A A
tls_downgrade             r r r  r r r r  r r r
weak_cipher               A A A  A A A A  A A A
anon_cipher               r r r  r r r r  r r r
"""
EXPECTED: dict[str, dict[str, str]] = {
    row[0]: {c.id: ACCEPTS if cell == "A" else REFUSES for c, cell in zip(STACK_CLIENTS, row[1:], strict=True)}
    for row in (line.split() for line in _TABLE.strip().splitlines())
}


# How a client refused, where the README says why (the client's own words, in part).
REASONS = {
    ("wrong_host", "java-trust-all"): "SSLHandshakeException: No subject alternative DNS name matching",  # in the handshake
    ("expired", "java"): "validity check failed",  # what swallow-expired lets through ...
    ("not_yet_valid", "java-swallow-expired"): "validity check failed",  # ... and what it does not
    ("cn_only", "go"): "relies on legacy Common Name field",
    ("sha1_signature", "go"): "insecure algorithm SHA1",
    ("wildcard_too_broad", "node"): "DNS:*.test",
    ("self_signed", "go-handwritten"): "certificate 0: issuer",  # the hand-written check, not Go's own
    ("non_ca_issuer", "node"): "key usage does not include certificate signing",
    ("non_ca_issuer", "java"): "keyCertSign bit is not set",
    ("non_ca_issuer", "go"): "parent certificate cannot sign",
}


def node_shares_the_system_openssl() -> bool:
    """Debian's own `nodejs` package links the system's OpenSSL, built at security level 2 (see the README's
    first matrix), where nodejs.org's and NodeSource's builds carry their own at OpenSSL's default, level 1."""
    done = subprocess.run(
        ["node", "-p", "process.config.variables.node_shared_openssl"], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip() == "true"


def expected_here(clients: list[StackClient]) -> dict[str, dict[str, str]]:
    """EXPECTED (the README's), but for the one cell that depends on how Node was built: with the system's
    OpenSSL at level 2, a verifying Node refuses a 1024-bit key ("EE certificate key too weak"), as curl does
    (seen with Debian 12's Node 18.20.4; nothing else changes)."""
    expected = {kind: {c.id: EXPECTED[kind][c.id] for c in clients} for kind in PROBE_KINDS}
    if any(c.family == "node" for c in clients) and node_shares_the_system_openssl():
        expected["rsa_1024"].update({"node": REFUSES, "node-no-identity": REFUSES})
    return expected


def table_of(seen: dict[str, dict[str, str]], clients: list[StackClient]) -> str:
    """`seen` in _TABLE's layout (the columns of `clients`), for the failure message."""
    return "\n".join(f"{kind:<25} " + " ".join("A" if seen[kind][c.id] == ACCEPTS else "r" for c in clients) for kind in seen)


def host_for(kind: str, client: StackClient, index: int) -> str:
    """As in test_probe_matrix: one host per (kind, client), a loopback address each for the IP-only kinds."""
    if not applies(kind, "api.test"):
        return f"127.0.0.{index + 2}"
    return f"{client.id}-{kind.replace('_', '-')}.test"


# -- the README's tables -------------------------------------------------------------------------------

CERT_START = "<!-- probe-matrix-stacks: generated by tests/live/test_probe_matrix_stacks.py -->"
CERT_END = "<!-- /probe-matrix-stacks -->"
PROTOCOL_START = "<!-- protocol-matrix-stacks: generated by tests/live/test_probe_matrix_stacks.py -->"
PROTOCOL_END = "<!-- /protocol-matrix-stacks -->"


def render_certificate_matrix() -> str:
    head = "| probe | " + " | ".join(c.title for c in STACK_CLIENTS) + " |"
    rule_ = "| --- |" + " :-: |" * len(STACK_CLIENTS)
    rows = [
        f"| `{kind}` | "
        + " | ".join("**accepts**" if EXPECTED[kind][c.id] == ACCEPTS else "refuses" for c in STACK_CLIENTS)
        + " |"
        for kind in CERTIFICATE_KINDS
    ]
    return "\n".join([CERT_START, head, rule_, *rows, CERT_END])


def render_protocol_matrix() -> str:
    head = "| client (as configured) | " + " | ".join(f"`{kind}`" for kind in PROTOCOL_PROBE_KINDS) + " |"
    rule_ = "| --- |" + " --- |" * len(PROTOCOL_PROBE_KINDS)
    rows = [
        f"| {c.title} | "
        + " | ".join("caught" if EXPECTED[k][c.id] == ACCEPTS else "passed" for k in PROTOCOL_PROBE_KINDS)
        + " |"
        for c in STACK_CLIENTS
    ]
    return "\n".join([PROTOCOL_START, head, rule_, *rows, PROTOCOL_END])


def readme_block(start: str, end: str) -> str:
    found = re.search(re.escape(start) + r".*?" + re.escape(end), docs_text(), re.S)
    return found.group(0) if found else ""


def test_the_readme_matrices_are_the_asserted_ones() -> None:
    assert set(EXPECTED) == set(PROBE_KINDS), "every probe kind has a row of ground truth"
    assert readme_block(CERT_START, CERT_END) == render_certificate_matrix(), (
        "README's Node/Java/Go probe matrix differs; replace it with:\n" + render_certificate_matrix()
    )
    assert readme_block(PROTOCOL_START, PROTOCOL_END) == render_protocol_matrix(), (
        "README's Node/Java/Go protocol table differs; replace it with:\n" + render_protocol_matrix()
    )


def test_ci_installs_the_three_stacks_and_refuses_to_skip_them() -> None:
    """A test that skips for a missing tool proves nothing: .ci/run installs the packages and says so."""
    ci = (REPO / ".ci" / "run").read_text()
    assert f"--no-install-recommends {PACKAGES} " in ci and "export TLSGATE_STACK_CLIENTS=required" in ci


def test_a_missing_stack_is_skipped_here_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TLSGATE_STACK_CLIENTS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"javac not installed \(\.ci/run installs nodejs default-jdk-headless"):
        Builds(tmp_path)("java")
    monkeypatch.setenv("TLSGATE_STACK_CLIENTS", "required")
    with pytest.raises(pytest.fail.Exception, match="under CI these clients must run"):
        Builds(tmp_path)("go")
    monkeypatch.delenv("TLSGATE_STACK_CLIENTS")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI these clients must run"):
        Builds(tmp_path)("node")


# -- the run -------------------------------------------------------------------------------------------


@pytest.fixture
def ip_listeners() -> Iterator[dict[str, int]]:
    """A listening socket on 127.0.0.N per client of a family, never accepted from (as in test_probe_matrix)."""
    sockets = [socket.create_server((f"127.0.0.{index + 2}", 0)) for index in range(len(STACK_CLIENTS))]
    yield {sock.getsockname()[0]: sock.getsockname()[1] for sock in sockets}
    for sock in sockets:
        sock.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_client_of_the_stack_meets_every_probe_as_recorded_and_tlsgate_agrees(
    family: str, stack_builds: Builds, tlsgate, https_upstream: Upstream, ip_listeners: dict[str, int]
) -> None:
    argv = stack_builds(family)
    clients = [c for c in STACK_CLIENTS if c.family == family]
    pairs = [(kind, client, host_for(kind, client, index)) for kind in PROBE_KINDS for index, client in enumerate(clients)]
    rules = "".join(rule(kind, host, host in ip_listeners) for kind, _, host in pairs)
    resolve = {host: https_upstream.port for _, _, host in pairs if host not in ip_listeners}
    gate = tlsgate("version: 1\nrules:\n" + rules, resolve=resolve)

    def urls(client: StackClient) -> list[tuple[str, str]]:
        return [
            (host, f"https://{host}:{ip_listeners.get(host, https_upstream.port)}/v1/items")
            for _, c, host in pairs
            if c is client
        ]

    def drive(client: StackClient) -> dict[str, Outcome]:
        targets = urls(client)
        outcomes = run(argv, client.config, gate.proxy_url, gate.ca_cert, [url for _, url in targets])
        return {host: outcome for (host, _), outcome in zip(targets, outcomes, strict=True)}

    started = time.monotonic()
    with ThreadPoolExecutor(len(clients)) as pool:
        lines = {host: outcome for done in pool.map(drive, clients) for host, outcome in done.items()}
    by_host = {host: outcome.verdict for host, outcome in lines.items()}
    for kind, client, host in pairs:
        print(f"{kind:<25} {client.id:<22} {lines[host].line}")
    print(f"{family}: {len(clients)} clients x {len(PROBE_KINDS)} kinds in {time.monotonic() - started:.1f}s")
    assert https_upstream.requests == [], "a request sent over a probe reached the server"

    def verdicts() -> dict[str, tuple[str, str]]:
        return {f["host"]: (f["evidence"]["kind"], f["action"]) for f in gate.findings() if f["check"] == "client_probe"}

    assert eventually(lambda: len(verdicts()) == len(pairs), timeout=20), (len(verdicts()), len(pairs))
    said = verdicts()
    assert all(said[host][0] == kind for kind, _, host in pairs), "each connection got the kind of its host"
    seen = {kind: {c.id: by_host[host] for k, c, host in pairs if k == kind} for kind in PROBE_KINDS}
    recorded = {
        kind: {c.id: {"blocked": ACCEPTS, "passed": REFUSES}[said[host][1]] for k, c, host in pairs if k == kind}
        for kind in PROBE_KINDS
    }
    assert recorded == seen, "tlsgate's verdict differs from what the client did"
    assert seen == expected_here(clients), (
        f"{family} clients did not do what the matrix says; this run:\n{table_of(seen, clients)}"
    )
    hosts = {(kind, c.id): host for kind, c, host in pairs}
    said_why = {key: lines[hosts[key]].line for key in REASONS if key in hosts}
    assert all(REASONS[key] in line for key, line in said_why.items()), said_why
