"""Ground truth for the certificate probes: what real clients do with each probe, and that tlsgate says the same.

Eight real clients, each configured correctly or with one documented mistake, meet
every probe kind through a real tlsgate (one connection per kind, each to a host
of its own, so the schedule gives exactly that kind). For each pair the test
asserts that the client did what its documentation says it does (`EXPECTED`,
with the reason beside each surprise), and that tlsgate's finding agrees: `blocked`
where the client accepted and sent its request, `passed` where it refused. The
README's matrix is rendered from `EXPECTED` and compared here, so it cannot drift.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.docs import docs_text
from tests.harness import Tlsgate, Upstream, curl, eventually
from tests.live.test_client_audit import python_context, python_get, s_client
from tlsgate.tls.probes import PROBE_KINDS as EVERY_KIND
from tlsgate.tls.probes import applies
from tlsgate.tls.protocol_probes import PROTOCOL_PROBE_KINDS

# The certificate probes; the protocol probes show tlsgate's valid certificate and meet their clients in
# tests/live/test_protocol_probes.py.
PROBE_KINDS = tuple(kind for kind in EVERY_KIND if kind not in PROTOCOL_PROBE_KINDS)

ACCEPTS, REFUSES = "accepts", "refuses"


@dataclass(frozen=True)
class Client:
    id: str
    title: str  # the README's column heading
    connect: Callable[[Tlsgate, str, int], str]  # -> ACCEPTS (it sent its request) or REFUSES


# -- the clients ---------------------------------------------------------------------------------------


def _curl(*args: str) -> Callable[[Tlsgate, str, int], str]:
    def connect(gate: Tlsgate, host: str, port: int) -> str:
        url = f"https://{host}:{port}/"
        done = curl(gate.proxy_url, url, *[str(gate.ca_cert) if a == "{ca}" else a for a in args])
        assert done.status in (0, 403), done
        if done.status == 403:
            assert done.headers["x-tlsgate-check"] == "client_probe", done
        return ACCEPTS if done.status == 403 else REFUSES

    return connect


def _s_client(verify: bool) -> Callable[[Tlsgate, str, int], str]:
    def connect(gate: Tlsgate, host: str, port: int) -> str:
        args = ["-CAfile", str(gate.ca_cert)]
        if verify:
            args += ["-verify_return_error", "-verify_ip" if _is_ip(host) else "-verify_hostname", host]
        done = s_client(gate, host, port, *args)
        assert done.status in (None, 403), done
        return ACCEPTS if done.status == 403 else REFUSES

    return connect


def _python(make: Callable[[Path], ssl.SSLContext]) -> Callable[[Tlsgate, str, int], str]:
    def connect(gate: Tlsgate, host: str, port: int) -> str:
        outcome = python_get(gate, host, port, make(gate.ca_cert))
        assert outcome == 403 or str(outcome).startswith("refused"), outcome
        return ACCEPTS if outcome == 403 else REFUSES

    return connect


def _no_hostname(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the chain is still verified (CERT_REQUIRED stays)
    return context


def _handwritten(gate: Tlsgate, host: str, port: int) -> str:
    """A verifier of the kind apps write by hand: the name in the SAN and every signature up to the trusted root,
    and nothing else (no basicConstraints, pathLen, name constraints, key usage, EKU, dates, algorithm or key size)."""
    root = x509.load_pem_x509_certificate(gate.ca_cert.read_bytes())
    with socket.create_connection(("127.0.0.1", gate.port), timeout=15) as raw:
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        with python_context(None).wrap_socket(raw, server_hostname=host) as tls:
            chain = [
                x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER)) for c in tls._sslobj.get_unverified_chain()
            ]  # type: ignore[attr-defined, union-attr]
            if not (_names_match(chain[0], host) and _signed_up_to(chain, root)):
                return REFUSES  # hangs up without a byte, as an app whose check failed
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 403"), data[:200]
    return ACCEPTS


def _names_match(leaf: x509.Certificate, host: str) -> bool:
    """RFC 6125 done right: subjectAltName only; an IP against iPAddress; a wildcard as the whole leftmost label,
    covering one label, under at least two more."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if _is_ip(host):
        return any(str(ip) == host for ip in san.get_values_for_type(x509.IPAddress))
    labels = host.lower().split(".")
    for name in san.get_values_for_type(x509.DNSName):
        pattern = name.lower().split(".")
        if pattern == labels:
            return True
        if pattern[0] == "*" and "*" not in pattern[1:] and len(pattern) >= 3 and pattern[1:] == labels[1:]:
            return True
    return False


def _signed_up_to(chain: list[x509.Certificate], root: x509.Certificate) -> bool:
    """Each certificate's signature checks out with the next one's key, the last one's with the root's."""
    for cert, issuer in zip(chain, [*chain[1:], root], strict=True):
        if cert.issuer != issuer.subject:
            return False
        key = issuer.public_key()
        digest = cert.signature_hash_algorithm
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), digest)  # type: ignore[arg-type]
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(digest))  # type: ignore[arg-type]
            else:
                return False
        except Exception:  # noqa: BLE001 - any failure is a bad signature to this verifier
            return False
    return True


def _is_ip(host: str) -> bool:
    return bool(re.fullmatch(r"[\d.]+|[\da-f:]+", host))


CLIENTS = (
    Client("curl", "curl", _curl("--cacert", "{ca}")),
    Client("curl-k", "curl `-k`", _curl("-k")),
    Client("s-client-verify", "`openssl s_client -verify_return_error -verify_hostname`", _s_client(verify=True)),
    Client("s-client", "`openssl s_client`", _s_client(verify=False)),
    Client("python", "Python `ssl` default", _python(lambda ca: ssl.create_default_context(cafile=str(ca)))),
    Client("python-no-hostname", "Python `check_hostname=False`", _python(_no_hostname)),
    Client("python-cert-none", "Python `CERT_NONE`", _python(lambda ca: python_context(None))),
    Client("python-handwritten", "Python, hand-written verifier (signatures + SAN only)", _handwritten),
)

# What each client is documented to do with each probe. A = accepts (sends its request), r = refuses.
# Columns in CLIENTS order. Notes on the cells that surprise:
# - cn_only: with no subjectAltName, curl falls back to the subject CN (lib/vtls/openssl.c, verifyhost), OpenSSL's
#   X509_check_host does unless told X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, and so does Python: its
#   SSLContext.hostname_checks_common_name defaults to True (Python docs, ssl module). Only the hand-written
#   verifier, which reads the subjectAltName alone, refuses.
# - rsa_1024: Debian builds OpenSSL with security level 2 as its default (a 1024-bit key is 80 bits, level 2 wants
#   112: "ee key too small"), and Python's default context sets level 2 itself; OpenSSL's upstream default, level 1,
#   would accept it.
# - check_hostname=False still verifies the chain, dates, EKU and key size (CERT_REQUIRED stays).
_TABLE = """
self_signed               r A r A r r A r
wrong_host                r A r A r A A r
expired                   r A r A r r A A
untrusted_ca              r A r A r r A r
not_yet_valid             r A r A r r A A
non_ca_issuer             r A r A r r A A
path_len_exceeded         r A r A r r A A
outside_name_constraints  r A r A r r A A
client_auth_only          r A r A r r A A
cn_only                   A A A A A A A r
wildcard_too_broad        r A r A r A A r
wildcard_wrong_label      r A r A r A A r
sha1_signature            r A r A r r A A
rsa_1024                  r A r A r r A A
ip_name_only              r A r A r A A r
"""
EXPECTED: dict[str, dict[str, str]] = {
    row[0]: {c.id: ACCEPTS if cell == "A" else REFUSES for c, cell in zip(CLIENTS, row[1:], strict=True)}
    for row in (line.split() for line in _TABLE.strip().splitlines())
}

MATRIX_START, MATRIX_END = "<!-- probe-matrix: generated by tests/live/test_probe_matrix.py -->", "<!-- /probe-matrix -->"


def render_matrix() -> str:
    head = "| probe | " + " | ".join(c.title for c in CLIENTS) + " |"
    rule = "| --- |" + " :-: |" * len(CLIENTS)
    rows = [
        f"| `{kind}` | " + " | ".join("**accepts**" if EXPECTED[kind][c.id] == ACCEPTS else "refuses" for c in CLIENTS) + " |"
        for kind in PROBE_KINDS
    ]
    return "\n".join([MATRIX_START, head, rule, *rows, MATRIX_END])


def readme_matrix() -> str:
    text = docs_text()
    found = re.search(re.escape(MATRIX_START) + r".*?" + re.escape(MATRIX_END), text, re.S)
    return found.group(0) if found else ""


def test_the_readme_matrix_is_the_asserted_one() -> None:
    assert set(EXPECTED) == set(PROBE_KINDS), "every probe kind has a row of ground truth"
    assert readme_matrix() == render_matrix(), "README's probe matrix differs; replace it with:\n" + render_matrix()


# -- the run -------------------------------------------------------------------------------------------


def rule(kind: str, host: str, loopback: bool) -> str:
    """One rule per host. The wildcard kinds listed first for an IP address are skipped (they apply to names only),
    so it gets ip_name_only; a loopback address is tlsgate's own host, which a rule must allow."""
    listed = "wildcard_too_broad, wildcard_wrong_label, ip_name_only" if kind == "ip_name_only" else kind
    allow = "    local_destinations: allow\n" if loopback else ""
    return f"  - hosts: '{host}'\n{allow}    client:\n      probes: [{listed}]\n"


def host_for(kind: str, client: Client, index: int) -> str:
    """One host per (kind, client), so the schedule gives that connection exactly that kind; two labels, so a
    wildcard over the top-level domain is wrong only in its breadth. IP-only kinds get a loopback address each."""
    if not applies(kind, "api.test"):
        return f"127.0.0.{index + 2}"
    return f"{client.id}-{kind.replace('_', '-')}.test"


@pytest.fixture
def ip_listeners() -> Iterator[dict[str, int]]:
    """A listening socket on 127.0.0.N per client, never accepted from: tlsgate's eager connect succeeds, and
    nothing could be served from it."""
    sockets = []
    ports = {}
    for index in range(len(CLIENTS)):
        sock = socket.create_server((f"127.0.0.{index + 2}", 0))
        sockets.append(sock)
        ports[f"127.0.0.{index + 2}"] = sock.getsockname()[1]
    yield ports
    for sock in sockets:
        sock.close()


def test_every_client_meets_every_probe_as_documented_and_tlsgate_agrees(
    tlsgate, https_upstream: Upstream, ip_listeners: dict[str, int]
) -> None:
    pairs = [(kind, client, host_for(kind, client, index)) for kind in PROBE_KINDS for index, client in enumerate(CLIENTS)]
    rules = "".join(rule(kind, host, host in ip_listeners) for kind, _, host in pairs)
    resolve = {host: https_upstream.port for _, _, host in pairs if host not in ip_listeners}
    gate = tlsgate("version: 1\nrules:\n" + rules, resolve=resolve)

    seen: dict[str, dict[str, str]] = {kind: {} for kind in PROBE_KINDS}
    for kind, client, host in pairs:
        seen[kind][client.id] = client.connect(gate, host, ip_listeners.get(host, https_upstream.port))
    assert https_upstream.requests == [], "a request sent over a probe reached the server"

    def verdicts() -> dict[str, str]:
        return {f["host"]: f["action"] for f in gate.findings() if f["check"] == "client_probe"}

    assert eventually(lambda: len(verdicts()) == len(pairs), timeout=20), (len(verdicts()), len(pairs))
    by_host = verdicts()
    said = {
        kind: {client.id: {"blocked": ACCEPTS, "passed": REFUSES}[by_host[host]] for k, client, host in pairs if k == kind}
        for kind in PROBE_KINDS
    }
    kinds_of = {f["host"]: f["evidence"]["kind"] for f in gate.findings() if f["check"] == "client_probe"}
    assert all(kinds_of[host] == kind for kind, _, host in pairs), "each connection got the kind of its host"
    assert said == seen, "tlsgate's verdict differs from what the client did"
    surprises = {
        (kind, client): seen[kind][client]
        for kind in seen
        for client in seen[kind]
        if seen[kind][client] != EXPECTED[kind][client]
    }
    assert not surprises, f"a client did not do what its documentation says: {surprises}"
