"""Protocol probes: every offer served by this machine's OpenSSL, only on its own connection, and read as verdicts.

The handshakes are real OpenSSL ones over memory BIOs: tlsgate's client-side
connection built by mitmproxy's tlsconfig and by `mitm_internals.client_connection`
(tlsgate's CA, tlsconfig's certificate for the host), and pyOpenSSL clients set
up the way the real clients of `tests/live/test_protocol_probes.py` are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import ctx, tls
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons, tflow
from OpenSSL import SSL

from tests.certgen import make_chain
from tests.unit.test_addons import Gate, client_hello
from tests.unit.test_quic import gate, quic_client, quic_hello, set_policy  # noqa: F401 - `gate` is a fixture
from tests.unit.test_staple_capture import handshake
from tlsgate.addons import mitm_internals
from tlsgate.checks.model import Effect, Severity
from tlsgate.checks.probes import CLOSED_AFTER_HANDSHAKE, CLOSED_SILENTLY, PROBE_REMEDIES, PROBE_WORDS
from tlsgate.checks.protocol_probes import ProtocolProbeRun, protocol_rejection, protocol_run
from tlsgate.policy import load_texts
from tlsgate.policy.sections.client import CLIENT
from tlsgate.tls.probes import PROBE_KINDS, ProbeMint
from tlsgate.tls.protocol_probes import OFFERS, PROTOCOL_PROBE_KINDS, SECLEVEL_0

# -- served by this OpenSSL, on the probe's connection only ------------------------------------------------------------

TLS_VERSIONS = {"1.0": SSL.TLS1_VERSION, "1.1": SSL.TLS1_1_VERSION, "1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
WORDS = {"TLSv1": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}


@pytest.fixture
def tlsconfig(tmp_path: Path) -> Iterator[TlsConfig]:
    """mitmproxy's tlsconfig with its own CA store, as `tlsgate run` has it."""
    addon = TlsConfig()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, confdir=str(tmp_path / "certs"))
        yield addon


def started(tlsconfig: TlsConfig) -> tls.TlsData:
    """A client connection to api.test with the TLS connection tlsconfig built for it (tlsgate's hooks run after)."""
    client = tflow.tclient_conn()
    client.sni = "api.test"
    data = tls.TlsData(client, Context(client, ctx.options))
    tlsconfig.tls_start_client(data)
    assert data.ssl_conn is not None
    return data


def probe_connection(tlsconfig: TlsConfig, kind: str) -> SSL.Connection:
    """What ClientAudit.tls_start_client makes of a connection under a protocol probe."""
    offer = OFFERS[kind]
    return mitm_internals.client_connection(
        started(tlsconfig), offer.min_version, ceiling=offer.max_version, ciphers=offer.ciphers
    )


def client(ciphers: str, low: str = "1.0", high: str = "1.3") -> SSL.Connection:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_cipher_list(ciphers.encode())
    context.set_min_proto_version(TLS_VERSIONS[low])
    context.set_max_proto_version(TLS_VERSIONS[high])
    conn = SSL.Connection(context)
    conn.set_tlsext_host_name(b"api.test")
    return conn


ANYTHING = "ALL:@SECLEVEL=0"  # what a client that lowered every bar offers (aNULL included: ALL is all but eNULL)


@pytest.mark.parametrize("kind", PROTOCOL_PROBE_KINDS)
def test_each_offer_is_served_by_this_openssl_and_negotiates_nothing_else(tlsconfig: TlsConfig, kind: str) -> None:
    offer = OFFERS[kind]
    server, app = probe_connection(tlsconfig, kind), client(ANYTHING)
    handshake(app, server)
    version, suite = WORDS[app.get_protocol_version_name()], app.get_cipher_name()
    assert version in offer.summary()["versions"], version
    peer = app.get_peer_certificate()
    if offer.certificate:
        assert suite in offer.summary()["suites"], suite
        assert peer is not None and "api.test" in str(peer.to_cryptography().subject)  # tlsgate's own, for the host
    else:
        assert suite.startswith(("ADH-", "AECDH-")), suite
        assert peer is None, "an anonymous suite sends no certificate"


@pytest.mark.parametrize("kind", PROTOCOL_PROBE_KINDS)
def test_a_client_that_keeps_the_defaults_of_a_modern_stack_is_refused_by_each_offer(tlsconfig: TlsConfig, kind: str) -> None:
    with pytest.raises(SSL.Error):
        handshake(client("ECDHE+AESGCM:ECDHE+CHACHA20", low="1.2"), probe_connection(tlsconfig, kind))


def test_a_probes_security_level_and_versions_never_reach_a_normal_connection(tlsconfig: TlsConfig) -> None:
    before = started(tlsconfig).ssl_conn
    assert before is not None
    probes = {kind: probe_connection(tlsconfig, kind) for kind in PROTOCOL_PROBE_KINDS}
    after = started(tlsconfig).ssl_conn
    assert after is not None
    assert after.get_context() is before.get_context(), "mitmproxy's cached context for normal connections is reused"
    assert all(p.get_context() is not before.get_context() for p in probes.values())

    handshake(client(ANYTHING, high="1.0"), probe_connection(tlsconfig, "tls_downgrade"))  # served on the probe
    with pytest.raises(SSL.Error):  # and refused on a normal connection made after it
        handshake(client(ANYTHING, high="1.0"), after)
    with pytest.raises(SSL.Error):
        handshake(client("aNULL:@SECLEVEL=0", low="1.2", high="1.2"), started(tlsconfig).ssl_conn)  # type: ignore[arg-type]


@pytest.mark.parametrize("suite", ["RC4-SHA", "RC4-MD5", "DES-CBC-SHA", "EXP-RC4-MD5", "EXP-DES-CBC-SHA", "DES-CBC3-SHA"])
def test_what_the_readme_says_cannot_be_served_cannot_be_configured_even_at_level_0(suite: str) -> None:
    with pytest.raises(SSL.Error, match="no cipher match"):
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(f"{SECLEVEL_0}:{suite}".encode())


def test_ssl3_cannot_be_configured_either() -> None:
    with pytest.raises(SSL.Error):
        SSL.Context(SSL.TLS_SERVER_METHOD).set_min_proto_version(SSL.SSL3_VERSION)


# -- reading the client's answer ----------------------------------------------------------------------------------------

# mitmproxy's words, as its ClientTLSLayer rewords OpenSSL's errors before tlsgate's hook reads them.
NOT_TRUSTED = "The client may not trust the proxy's certificate for api.test ({})"
VERSION_ALERT = NOT_TRUSTED.format(
    "The remote server and mitmproxy cannot agree on a TLS version to use. "
    "You may need to adjust mitmproxy's tls_version_server_min option."
)
NO_COMMON_VERSION = (
    "Client and mitmproxy cannot agree on a TLS version to use. You may need to adjust mitmproxy's tls_version_client_min option."
)


@pytest.mark.parametrize(
    ("error", "rejection"),
    [
        (VERSION_ALERT, "protocol version"),
        (NO_COMMON_VERSION, "offered none of the probe's versions"),
        (NOT_TRUSTED.format("OpenSSL Error([('SSL routines', '', 'no shared cipher')])"), "offered none of the probe's suites"),
        (NOT_TRUSTED.format("OpenSSL Error([('SSL routines', '', 'sslv3 alert handshake failure')])"), "handshake failure"),
        (
            NOT_TRUSTED.format("OpenSSL Error([('SSL routines', '', 'tlsv1 alert insufficient security')])"),
            "insufficient security",
        ),
        (NOT_TRUSTED.format("OpenSSL Error([('SSL routines', '', 'tlsv1 alert internal error')])"), "internal error"),
        ("The client disconnected during the handshake. If this happens consistently for api.test, ...", CLOSED_SILENTLY),
        # tlsgate's own certificate refused: any connection of this client would be, so the probe proved nothing
        ("The client does not trust the proxy's certificate for api.test (tlsv1 alert unknown ca)", None),
        (NOT_TRUSTED.format("OpenSSL Error([('SSL routines', '', 'ssl/tls alert certificate unknown')])"), None),
        ("connection closed early", None),
        (None, None),
    ],
)
def test_a_refusal_is_read_from_mitmproxys_words(error: str | None, rejection: str | None) -> None:
    assert protocol_rejection(error) == rejection


def test_an_accepted_probe_names_what_was_negotiated_and_the_client_setting_to_change() -> None:
    cases = (
        ("tls_downgrade", "TLSv1.1", "ECDHE-RSA-AES128-SHA", Severity.HIGH),
        ("weak_cipher", "TLSv1.2", "AES128-SHA", Severity.MEDIUM),
        ("anon_cipher", "TLSv1.2", "ADH-AES256-GCM-SHA384", Severity.CRITICAL),
    )
    for kind, version, suite, severity in cases:
        run = protocol_run(kind, "api.test")
        run.established(version, suite)
        sent = {"protocol": "http", "method": "POST", "url": "https://api.test/login"}
        issue = run.sent(sent)
        assert run.sent({"protocol": "tcp", "bytes": 3}) is issue, "said once, whatever the client sends next"
        assert (issue.kind, issue.effect, issue.severity) == (kind, Effect.ALWAYS, severity)
        assert issue.detail.startswith(f"the client accepted {PROBE_WORDS[kind]} for api.test, negotiated TLS 1.")
        assert f"with {suite}, and sent POST https://api.test/login over it" in issue.detail
        assert issue.detail.endswith("tlsgate answered itself and forwarded nothing")
        assert issue.remedy == PROBE_REMEDIES[kind]
        assert issue.evidence["offer"] == OFFERS[kind].summary() and issue.evidence["sent"] == sent
        assert issue.evidence["negotiated"] == {"version": version.removeprefix("TLSv"), "suite": suite}
    assert "minimum to TLS 1.2" in PROBE_REMEDIES["tls_downgrade"] and "@SECLEVEL=0" in PROBE_REMEDIES["tls_downgrade"]
    assert "no certificate" in PROBE_REMEDIES["anon_cipher"] or "sends no certificate" in PROBE_REMEDIES["anon_cipher"]


@pytest.mark.parametrize(
    ("kind", "version", "suite"),
    [
        ("tls_downgrade", "TLSv1.2", "ECDHE-RSA-AES128-SHA"),  # the version it refuses
        ("weak_cipher", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"),  # a suite it does not offer
        ("anon_cipher", "TLSv1.2", "AES128-SHA"),  # a suite with a certificate
        ("weak_cipher", None, None),  # nothing known of the handshake
    ],
)
def test_a_probe_that_negotiated_outside_its_offer_accuses_nobody_and_still_forwards_nothing(
    kind: str, version: str | None, suite: str | None
) -> None:
    run = protocol_run(kind, "api.test")
    run.established(version, suite)
    issue = run.sent({"protocol": "http", "method": "GET", "url": "https://api.test/"})
    assert (issue.effect, issue.severity, issue.remedy) == (Effect.ALWAYS, Severity.LOW, "")
    assert issue.detail.startswith(f"tlsgate's {kind} probe for api.test negotiated ") and "tlsgate bug" in issue.detail
    assert "the client accepted" not in issue.detail


def test_a_refused_probe_passes_once_and_a_handshake_followed_by_silence_passes_too() -> None:
    run = protocol_run("weak_cipher", "api.test")
    passed = run.handshake_failed(NOT_TRUSTED.format("OpenSSL Error([('SSL routines', '', 'no shared cipher')])"))
    assert passed is not None and (passed.effect, passed.severity) == (Effect.PASSED, Severity.INFO)
    assert passed.evidence["rejection"] == "offered none of the probe's suites" and passed.evidence["negotiated"] is None
    assert protocol_run("weak_cipher", "api.test").handshake_failed("tlsv1 alert unknown ca") is None

    quiet = protocol_run("tls_downgrade", "api.test")
    quiet.established("TLSv1", "ECDHE-RSA-AES128-SHA")
    closed = quiet.closed()
    assert closed is not None and closed.evidence["rejection"] == CLOSED_AFTER_HANDSHAKE
    assert closed.evidence["negotiated"] == {"version": "1.0", "suite": "ECDHE-RSA-AES128-SHA"}
    assert "TLS 1.0 and 1.1" in closed.detail


def test_offers_say_what_the_client_is_shown() -> None:
    assert OFFERS["tls_downgrade"].summary()["versions"] == ["1.0", "1.1"]
    assert OFFERS["weak_cipher"].summary() == {
        "kind": "weak_cipher",
        "versions": ["1.2"],
        "suites": ["AES128-SHA", "AES256-SHA"],
        "certificate": "tlsgate's own, valid for the host",
    }
    assert OFFERS["anon_cipher"].summary()["certificate"].startswith("none")


# -- the policy and the schedule ---------------------------------------------------------------------------------------


def test_protocol_kinds_are_probe_kinds_of_their_own_and_never_minted() -> None:
    assert set(PROTOCOL_PROBE_KINDS) <= set(PROBE_KINDS) and set(OFFERS) == set(PROTOCOL_PROBE_KINDS)
    assert set(PROTOCOL_PROBE_KINDS) <= set(PROBE_WORDS) and set(PROTOCOL_PROBE_KINDS) <= set(PROBE_REMEDIES)
    root = make_chain(dns=("api.test",)).root
    with pytest.raises(ValueError, match="unknown probe kind"):
        ProbeMint(root.key, root.cert).certificate("api.test", "tls_downgrade")


def test_the_policy_turns_protocol_probes_on_per_rule_and_the_default_probes_nothing() -> None:
    text = "version: 1\nrules:\n  - hosts: api.test\n    client:\n      probes: [tls_downgrade, weak_cipher, anon_cipher]\n"
    policy = load_texts([("p.yaml", text)])
    assert CLIENT.of(policy.match("api.test").settings).probes == ("tls_downgrade", "weak_cipher", "anon_cipher")
    assert CLIENT.of(policy.match("other.test").settings).probes == ()


def test_a_tcp_connection_gets_the_protocol_probe_with_tlsgates_own_certificate(gate: Gate) -> None:  # noqa: F811
    set_policy(gate, "  - hosts: [quic.test]\n    client:\n      probes: [tls_downgrade]\n")
    client = tflow.tclient_conn()
    data = tls.ClientHelloData(Context(client, gate.tctx.options), tls.ClientHello(client_hello(sni="quic.test")))
    data.establish_server_tls_first = True
    gate.audit.tls_clienthello(data)
    audit = gate.connections.peek(client).audit
    assert isinstance(audit.run, ProtocolProbeRun) and audit.run.kind == "tls_downgrade"
    assert audit.probe is None, "no probe certificate: the probe changes what is negotiated, not what is shown"
    assert data.establish_server_tls_first is False, "a probe never involves the server"


def test_quic_never_gets_a_protocol_probe_and_leaves_it_for_a_tcp_connection(gate: Gate) -> None:  # noqa: F811
    set_policy(gate, "  - hosts: [quic.test]\n    quic: inspect\n    client:\n      probes: [tls_downgrade, self_signed]\n")
    root = make_chain(dns=("quic.test",)).root
    gate.audit._mint, gate.audit._mint_source = ProbeMint(root.key, root.cert), None
    client = quic_client()
    quic_hello(gate, client, sni="quic.test")
    audit = gate.connections.peek(client).audit
    assert audit.run is not None and audit.run.kind == "self_signed"
    assert gate.audit.schedule.tried("127.0.0.1", "quic.test") == ("self_signed",)  # tls_downgrade still to come
