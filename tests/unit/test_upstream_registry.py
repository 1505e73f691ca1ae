"""An upstream check added the registry's way: one section, one judge, no add-on code.

A toy section and toy judges are registered the way a new check would be
(`tlsgate.checks.registry`), and `UpstreamTls` is driven as mitmproxy drives it:
the verify callback with a real chain, and, for the stapled phase, a real
OpenSSL handshake in memory against a server that staples what the test says.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from mitmproxy import connection, tls
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons, tflow
from OpenSSL import SSL, crypto

from tests.certgen import make_chain, write_pem, write_server_files
from tlsgate.addons import make_addons
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.policy import PolicyStore
from tlsgate.addons.state import Connections, ServerSide
from tlsgate.addons.upstream_tls import UpstreamTls
from tlsgate.checks import registry
from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.checks.registry import HandshakeFacts, Phase, upstream_judge
from tlsgate.policy import Match
from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.sections.base import Section, register, unregister
from tlsgate.tls.clienthello import parse_client_hello

EXT_STATUS_REQUEST = 5


@dataclass
class Seen:
    """What the toy judges were shown."""

    chains: list[int] = field(default_factory=list)
    staples: list[bytes | None] = field(default_factory=list)


@pytest.fixture
def toy() -> Iterator[Seen]:
    """`toy: N` (a section), a chain judge that wants at most N certificates, a stapled judge that wants a staple."""

    def parse(node: yaml.Node, reader: yn.Reader, context: object) -> int | None:
        value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if type(value) is not int:
            reader.error(node, "toy must be a whole number")
            return None
        return value

    section: Section[int] = register(Section(name="toy", parse=parse, schema={"type": "integer"}))
    seen = Seen()

    @upstream_judge(Phase.CHAIN, section, name="toy_chain")
    def chain_judge(facts: HandshakeFacts, most: int, match: Match, now: dt.datetime) -> list[Issue]:
        seen.chains.append(len(facts.chain))
        if len(facts.chain) <= most:
            return []
        detail = f"{len(facts.chain)} certificates for {match.host}, more than {most}"
        return [Issue(Check.CERTIFICATE, "toy_long_chain", Effect.ENFORCED, Severity.LOW, detail, {"most": most})]

    @upstream_judge(Phase.STAPLED, section, name="toy_staple")
    def staple_judge(facts: HandshakeFacts, most: int, match: Match, now: dt.datetime) -> list[Issue]:
        seen.staples.append(facts.stapled_ocsp)
        if facts.stapled_ocsp:
            return []
        return [Issue(Check.TLS, "toy_no_staple", Effect.ENFORCED, Severity.MEDIUM, "the server stapled nothing")]

    try:
        yield seen
    finally:
        registry.unregister("toy_chain")
        registry.unregister("toy_staple")
        unregister("toy")


POLICY = """\
version: 1
defaults:
  mode: enforce
rules:
  - hosts: [toy.test]
    toy: 2
  - hosts: [report.test]
    mode: report
    toy: 3
"""


@dataclass
class Rig:
    tctx: taddons.context
    upstream: UpstreamTls
    connections: Connections
    findings_path: Path

    def findings(self) -> list[dict[str, Any]]:
        if not self.findings_path.exists():
            return []
        return [json.loads(line) for line in self.findings_path.read_text().splitlines()]

    def data(self, client: connection.Client, server: connection.Server, ssl_conn: SSL.Connection | None = None) -> tls.TlsData:
        return tls.TlsData(server, Context(client, self.tctx.options), ssl_conn)


@pytest.fixture
def rig(toy: Seen, tmp_path: Path) -> Iterator[Rig]:
    addons = make_addons()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    findings = tmp_path / "findings.jsonl"
    with taddons.context(TlsConfig(), *addons) as tctx:
        sink = next(a for a in addons if isinstance(a, FindingsSink))
        tctx.configure(next(a for a in addons if isinstance(a, PolicyStore)), tlsgate_policy=[str(policy)])
        tctx.configure(sink, tlsgate_findings=str(findings))
        try:
            upstream = next(a for a in addons if isinstance(a, UpstreamTls))
            yield Rig(tctx, upstream, next(a for a in addons if isinstance(a, Connections)), findings)
        finally:
            sink.done()


class FakeSsl:
    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_128_GCM_SHA256"


def test_a_chain_judge_runs_in_the_verify_callback_and_its_block_refuses_the_handshake(rig: Rig, toy: Seen) -> None:
    chain = make_chain(dns=("toy.test",))
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    state = rig.connections.of(client)
    side = ServerSide(state.settle("toy.test"), HandshakeFacts())
    state.servers[server.id] = side
    callback = rig.upstream._verify_callback(side)
    for depth, cert in ((2, chain.root.cert), (1, chain.intermediate.cert)):
        assert callback(FakeSsl(), crypto.X509.from_cryptography(cert), 0, depth, 1) is True
    assert callback(FakeSsl(), crypto.X509.from_cryptography(chain.leaf.cert), 0, 0, 1) is False  # 3 > 2: refused
    assert toy.chains == [3]
    rig.upstream.tls_failed_server(rig.data(client, server))
    (finding,) = rig.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("certificate", "blocked", "toy_long_chain")
    assert finding["evidence"]["most"] == 2 and len(finding["evidence"]["chain"]) == 3  # the connection's evidence too
    assert "set 'mode: report' in the rule at" in finding["remedy"]
    assert side.blocked is not None and side.blocked_in is Phase.CHAIN


def test_a_judge_runs_only_where_its_section_is_set(rig: Rig, toy: Seen) -> None:
    chain = make_chain(dns=("other.test",))
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    state = rig.connections.of(client)
    side = ServerSide(state.settle("other.test"), HandshakeFacts())
    state.servers[server.id] = side
    callback = rig.upstream._verify_callback(side)
    for depth, cert in ((2, chain.root.cert), (1, chain.intermediate.cert), (0, chain.leaf.cert)):
        assert callback(FakeSsl(), crypto.X509.from_cryptography(cert), 0, depth, 1) is True
    assert toy.chains == [] and side.issues == []


def test_a_judge_that_raises_is_a_blocking_check_failed(rig: Rig, toy: Seen) -> None:
    def broken(*_args: object) -> list[Issue]:
        raise ValueError("broken")

    toy_chain = next(judge for judge in registry.JUDGES if judge.name == "toy_chain")
    match = rig.connections.of(tflow.tclient_conn()).settle("report.test")
    judged = registry.run_judges([replace(toy_chain, judge=broken)], HandshakeFacts(), match, dt.datetime.now(dt.UTC))
    assert [(f.issue.check, f.issue.kind, f.issue.effect) for f in judged.found] == [("tls", "check_failed", Effect.ALWAYS)]


# -- the stapled phase, over a real handshake ---------------------------------------------------------


@dataclass
class Upstream:
    """`openssl s_server`, stapling a good OCSP response for its leaf (from a file), or nothing."""

    port: int
    process: subprocess.Popen[bytes]
    root: Path  # its chain's root, for a client that validates


@pytest.fixture
def stapling(tmp_path: Path) -> Iterator[Callable[[bool], Upstream]]:
    started: list[Upstream] = []
    chain = make_chain(dns=("toy.test", "report.test"))

    def start(staple: bool) -> Upstream:
        cert, key = write_server_files(tmp_path, chain.leaf)
        intermediate = write_pem(tmp_path / "intermediate.pem", chain.intermediate)
        args = ["openssl", "s_server", "-quiet", "-cert", str(cert), "-key", str(key), "-cert_chain", str(intermediate)]
        if staple:
            response = ocsp_response(chain.leaf.cert, chain.intermediate.cert, chain.intermediate.key)
            (tmp_path / "ocsp.der").write_bytes(response)
            args += ["-status_file", str(tmp_path / "ocsp.der")]
        with socket.socket() as probe:  # a free port; s_server cannot say which one it took
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen([*args, "-accept", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        upstream = Upstream(port, process, write_pem(tmp_path / "root.pem", chain.root))
        started.append(upstream)
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        return upstream

    yield start
    for upstream in started:
        upstream.process.kill()
        upstream.process.wait()


def ocsp_response(leaf: Any, issuer: Any, issuer_key: Any) -> bytes:
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf,
        issuer=issuer,
        algorithm=hashes.SHA256(),
        cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=dt.datetime.now(dt.UTC),
        next_update=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
        revocation_time=None,
        revocation_reason=None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def connect(rig: Rig, host: str, port: int) -> tuple[connection.Client, connection.Server, SSL.Connection, ServerSide, bool]:
    """An upstream connection as mitmproxy starts one (tls_start_server, which may replace the connection), then its
    handshake with the server at `port`, OpenSSL's records carried over a socket."""
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    server.sni = host
    data = rig.data(client, server, SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None))
    data.ssl_conn.set_connect_state()
    rig.upstream.tls_start_server(data)
    ssl_conn = data.ssl_conn
    side = rig.connections.peek(client).servers[server.id]
    completed = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(50):
            try:
                ssl_conn.do_handshake()
                completed = True
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                server.error = str(exc)
                break
            with contextlib.suppress(SSL.WantReadError):
                sock.sendall(ssl_conn.bio_read(65536))
            if completed:
                break
            received = sock.recv(65536)
            if not received:
                break
            ssl_conn.bio_write(received)
    return client, server, ssl_conn, side, completed


def test_a_stapled_judge_sees_the_staple_inside_the_handshake(rig: Rig, toy: Seen, stapling) -> None:
    client, server, ssl_conn, side, completed = connect(rig, "toy.test", stapling(True).port)
    assert completed and len(toy.staples) == 1 and ocsp.load_der_ocsp_response(toy.staples[0]).certificate_status.name == "GOOD"
    rig.upstream.tls_established_server(rig.data(client, server, ssl_conn))
    assert side.blocked is None and rig.findings() == [] and side.phases == set(Phase)


def test_no_staple_blocks_inside_the_handshake_in_enforce_mode(rig: Rig, toy: Seen, stapling) -> None:
    client, server, ssl_conn, side, completed = connect(rig, "toy.test", stapling(False).port)
    assert not completed and toy.staples == [b""]  # asked, nothing stapled: refused before the handshake ended
    rig.upstream.tls_failed_server(rig.data(client, server, ssl_conn))
    (finding,) = rig.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("tls", "blocked", "toy_no_staple")
    assert side.blocked is not None and side.blocked_in is Phase.CHAIN


def test_no_staple_is_reported_and_the_handshake_completes_in_report_mode(rig: Rig, toy: Seen, stapling) -> None:
    upstream = stapling(False)
    rig.tctx.options.ssl_verify_upstream_trusted_ca = str(upstream.root)  # validated for real: the chain phase runs
    client, server, ssl_conn, side, completed = connect(rig, "report.test", upstream.port)
    assert completed, server.error
    assert toy.chains == [3] and toy.staples == [b""]  # in OpenSSL's order: chain, then staple
    rig.upstream.tls_established_server(rig.data(client, server, ssl_conn))
    assert [(f["evidence"]["kind"], f["action"]) for f in rig.findings()] == [("toy_no_staple", "reported")]
    assert side.blocked is None


# -- whether tlsgate asks for a staple at all (in memory: only the hello matters) ----------------------------


def first_hello(rig: Rig, host: str) -> tuple[Any, ServerSide]:
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    server.sni = host
    ssl_conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    ssl_conn.set_connect_state()
    rig.upstream.tls_start_server(rig.data(client, server, ssl_conn))
    with pytest.raises(SSL.WantReadError):
        ssl_conn.do_handshake()
    record = ssl_conn.bio_read(65536)
    return parse_client_hello(record[9:]), rig.connections.peek(client).servers[server.id]  # past record and handshake headers


def test_only_hosts_a_stapled_judge_applies_to_are_asked_for_a_staple(rig: Rig, toy: Seen) -> None:
    asked, _ = first_hello(rig, "toy.test")
    assert asked.extension(EXT_STATUS_REQUEST) is not None
    unasked, side = first_hello(rig, "other.test")  # no `toy:` here: the hello every upstream sees is unchanged
    assert unasked.extension(EXT_STATUS_REQUEST) is None and side.facts.stapled_ocsp is None
