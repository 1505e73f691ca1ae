"""QUIC: the `quic:` section, its checks, and the add-ons' QUIC hooks inside mitmproxy's test harness.

The add-on tests call the hooks mitmproxy's QUIC layer calls (tls_clienthello,
quic_start_client, quic_start_server, tls_established_server, tls_failed_*),
with QUIC connections as mitmproxy makes them (transport "udp"), and the
upstream close is checked on a real aioquic connection.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicErrorCode
from aioquic.quic.events import ConnectionTerminated
from mitmproxy import certs, connection, tls
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.quic import QuicTlsData, QuicTlsSettings, ServerQuicLayer
from mitmproxy.test import tflow

from tests.certgen import make_chain
from tests.unit import test_addons
from tests.unit.test_addons import POLICY, Gate, by_type
from tests.unit.test_clienthello import alpn_ext, extension, hello_body, sni_ext, u16_list, vec8
from tlsgate.addons.mitm_internals import REFUSED_ALPN, refuse_handshake
from tlsgate.addons.quic import QuicGuard
from tlsgate.checks.model import Action, Check, decide
from tlsgate.checks.probes import client_rejection
from tlsgate.checks.quic import quic_client_error, quic_facts, quic_failure_text, quic_refused, refuses, suite_name
from tlsgate.checks.upstream import judge_failure, judge_handshake
from tlsgate.policy import PolicyError, load_texts
from tlsgate.policy.sections.quic import Quic
from tlsgate.tls.clienthello import parse_client_hello
from tlsgate.tls.pins import spki_pin
from tlsgate.tls.probes import ProbeMint
from tlsgate.tls.transport import transport_of


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """test_addons' `gate`: every add-on of make_addons() in mitmproxy's test context, policy and findings on disk."""
    yield from test_addons.gate.__wrapped__(tmp_path)  # type: ignore[attr-defined]


def errors_of(text: str, name: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_texts([(name, text)])
    return [str(m) for m in caught.value.messages]


# -- the section ----------------------------------------------------------------------------------------------


def test_quic_defaults_to_refuse_and_is_settable_in_defaults_and_rules() -> None:
    policy = load_texts([("p.yaml", "version: 1\nrules:\n  - hosts: a.test\n    mode: report\n")])
    assert policy.match("a.test").settings.get("quic") is Quic.REFUSE
    text = "version: 1\ndefaults:\n  quic: inspect\nrules:\n  - hosts: a.test\n    quic: refuse\n"
    policy = load_texts([("p.yaml", text)])
    assert policy.match("other.test").settings.get("quic") is Quic.INSPECT
    assert policy.match("a.test").settings.get("quic") is Quic.REFUSE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defaults:\n  quic: allow\n", "p.yaml:2:9: defaults.quic must be one of refuse, inspect, not 'allow'"),
        ("rules:\n  - hosts: a.test\n    quic: true\n", "p.yaml:3:11: rule.quic must be one of refuse, inspect, not True"),
        ("rules:\n  - hosts: a.test\n    quic: [inspect]\n", "p.yaml:3:11: rule.quic must be one of refuse, inspect, not a list"),
    ],
)
def test_an_invalid_quic_value_is_located(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_the_embedded_default_policy_refuses_quic() -> None:
    from tlsgate.policy import load_policy
    from tlsgate.policy.loader import embedded_policy

    policy = load_policy([embedded_policy()])
    assert policy.match("anything.test").settings.get("quic") is Quic.REFUSE


# -- checks ---------------------------------------------------------------------------------------------------


def policy_match(quic: str, mode: str = "enforce", extra: str = ""):
    text = f"version: 1\nrules:\n  - hosts: a.test\n    mode: {mode}\n    quic: {quic}\n{extra}"
    return load_texts([("p.yaml", text)]).match("a.test")


@pytest.mark.parametrize(
    ("quic", "mode", "refused", "action"),
    [
        ("refuse", "enforce", True, Action.BLOCKED),
        ("refuse", "report", False, Action.REPORTED),
        ("inspect", "enforce", False, None),
    ],
)
def test_only_an_enforced_refuse_refuses(quic: str, mode: str, refused: bool, action: Action | None) -> None:
    match = policy_match(quic, mode)
    assert refuses(match) is refused
    issue = quic_refused(match, ["h3"])
    assert issue.check is Check.QUIC and issue.kind == "quic_refused" and issue.evidence["transport"] == "quic"
    assert "set 'quic: inspect' in the rule at p.yaml:3" in issue.remedy
    if action is not None:
        assert decide(issue, match.settings.mode) is action


def test_a_quic_handshake_is_judged_as_tls_1_3_with_iana_suite_names() -> None:
    chain = make_chain(dns=("a.test",))
    facts = quic_facts("AES_128_GCM_SHA256", chain.certs)
    assert (facts.protocol, facts.cipher, facts.chain) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256", chain.certs)
    assert suite_name("TLS_CHACHA20_POLY1305_SHA256") == "TLS_CHACHA20_POLY1305_SHA256" and suite_name(None) is None
    match = policy_match("inspect", extra="    tls:\n      min_version: '1.3'\n")
    assert judge_handshake(facts, match, dt.datetime.now(dt.UTC)) == []


def test_quic_pins_are_judged_like_tcp() -> None:
    chain = make_chain(dns=("a.test",))
    other = make_chain(dns=("a.test",))
    pins = f"    pins: ['{spki_pin(other.leaf.cert)}', '{spki_pin(other.root.cert)}']\n"
    issues = judge_handshake(
        quic_facts("AES_256_GCM_SHA384", chain.certs), policy_match("inspect", extra=pins), dt.datetime.now(dt.UTC)
    )
    assert [(i.check, i.kind) for i in issues] == [(Check.PIN, "pin_mismatch")]


def test_aioquic_certificate_failures_are_classified_as_validation_failures() -> None:
    text = quic_failure_text("unable to get local issuer certificate")
    assert text == "certificate verify failed: unable to get local issuer certificate"
    rules = policy_match("inspect").settings.get("tls")
    issue = judge_failure(text, None, [], rules)
    assert (issue.check, issue.kind) == (Check.CERTIFICATE, "unknown_issuer")
    assert quic_failure_text("No common ALPN protocols") == "No common ALPN protocols"
    assert quic_failure_text(None) == "QUIC handshake failed"


@pytest.mark.parametrize(
    ("error", "rejection"),
    [
        ("self-signed certificate", "bad certificate"),  # aioquic's words for its own refusal
        ("unknown error (0x130)", "unknown ca"),  # CRYPTO_ERROR + alert 48 without a reason phrase
        ("unknown error (0x12a)", "bad certificate"),
        ("unknown error (0x128)", None),  # handshake_failure says nothing about trust
        ("No common ALPN protocols", None),
        ("certificate unknown", "certificate unknown"),
    ],
)
def test_a_quic_clients_refusal_reads_as_the_tcp_alert(error: str, rejection: str | None) -> None:
    assert client_rejection(quic_client_error(error)) == rejection


def test_ja4_says_q_for_quic() -> None:
    hello = parse_client_hello(quic_hello_body())
    assert hello.ja4("q").startswith("q13d") and hello.ja4().startswith("t13d")
    assert hello.fingerprint(quic=True)["ja4"][1:] == hello.fingerprint()["ja4"][1:]


# -- add-ons --------------------------------------------------------------------------------------------------


def quic_hello_body(sni: str = "api.test", alpn: tuple[bytes, ...] = (b"h3",)) -> bytes:
    extensions = [sni_ext(sni), extension(43, vec8(u16_list([0x0304])))]
    if alpn:
        extensions.append(alpn_ext(*alpn))
    return hello_body(0x0303, [0x1301, 0x1302, 0x1303], extensions)


def quic_client() -> connection.Client:
    client = tflow.tclient_conn()
    client.transport_protocol = "udp"
    client.tls = True
    return client


def quic_hello(
    gate: Gate, client: connection.Client, sni: str = "api.test", alpn: tuple[bytes, ...] = (b"h3",)
) -> tls.ClientHelloData:
    context = Context(client, gate.tctx.options)
    context.server = tflow.tserver_conn()
    context.server.transport_protocol = "udp"
    data = tls.ClientHelloData(context, tls.ClientHello(quic_hello_body(sni, alpn)))
    data.establish_server_tls_first = True  # as mitmproxy's tlsconfig sets it under connection_strategy=eager
    for addon in (quic_guard(gate), gate.audit):
        addon.tls_clienthello(data)
    return data


def quic_guard(gate: Gate) -> QuicGuard:
    return by_type(list(gate.tctx.master.addons.chain), QuicGuard)


def start_client(gate: Gate, client: connection.Client, alpn: tuple[bytes, ...] = (b"h3",)) -> QuicTlsData:
    client.alpn_offers = list(alpn)
    data = QuicTlsData(client, Context(client, gate.tctx.options), settings=QuicTlsSettings(alpn_protocols=["h3"]))
    quic_guard(gate).quic_start_client(data)
    gate.audit.quic_start_client(data)
    return data


def set_policy(gate: Gate, rule: str) -> None:
    gate.policy_path.write_text(POLICY + rule)
    gate.tctx.configure(gate.store, tlsgate_policy=[str(gate.policy_path)])


def test_default_policy_refuses_quic_before_the_server_is_involved_and_says_so_once(gate: Gate) -> None:
    first, retry = quic_client(), quic_client()
    for client in (first, retry):
        data = quic_hello(gate, client)
        assert data.establish_server_tls_first is False  # no Initial packet to the server
        settings = start_client(gate, client).settings
        assert settings is not None and settings.alpn_protocols == [REFUSED_ALPN]
        assert gate.connections.peek(client).audit is None  # never probed nor shown a certificate
    (finding,) = gate.findings()  # once per client address and host, not per retry
    assert (finding["check"], finding["action"], finding["host"]) == ("quic", "blocked", "api.test")
    assert finding["rule"] == gate.rule("api.test") and finding["evidence"]["transport"] == "quic"
    assert "quic: inspect" in finding["remedy"]
    assert gate.sample("tlsgate_quic_connections_total", decision="refused") == 2
    assert gate.sample("tlsgate_findings_total", severity="low", check="quic", action="blocked", device="pixel-7") == 1


def test_a_refused_client_without_alpn_gets_no_quic_context() -> None:
    client = quic_client()
    data = QuicTlsData(client, Context(client, None), settings=QuicTlsSettings(alpn_protocols=[]))  # type: ignore[arg-type]
    refuse_handshake(data)
    assert data.settings is None  # mitmproxy then drops the connection rather than completing a handshake


def test_tcp_connections_are_not_the_quic_guards_business(gate: Gate) -> None:
    client = tflow.tclient_conn()
    data = tls.ClientHelloData(Context(client, gate.tctx.options), tls.ClientHello(quic_hello_body()))
    data.establish_server_tls_first = True
    quic_guard(gate).tls_clienthello(data)
    assert data.establish_server_tls_first is True and gate.findings() == []


def test_report_mode_inspects_and_records_what_would_be_refused(gate: Gate) -> None:
    client = quic_client()
    data = quic_hello(gate, client, sni="report.test")
    assert data.establish_server_tls_first is True
    settings = start_client(gate, client).settings
    assert settings is not None and settings.alpn_protocols == ["h3"]
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"]) == ("quic", "reported")
    assert gate.sample("tlsgate_quic_connections_total", decision="reported") == 1


def test_inspect_is_silent_and_audits_the_hello_with_a_q_fingerprint(gate: Gate) -> None:
    set_policy(gate, "  - hosts: [quic.test]\n    quic: inspect\n")
    client = quic_client()
    data = quic_hello(gate, client, sni="quic.test")
    assert data.establish_server_tls_first is True and gate.findings() == []
    audit = gate.connections.peek(client).audit
    assert audit.quic and audit.evidence()["ja4"].startswith("q13d") and audit.evidence()["transport"] == "quic"
    assert gate.sample("tlsgate_quic_connections_total", decision="inspected") == 1


def test_a_probe_is_served_over_quic_and_a_refusal_is_read_from_aioquics_words(gate: Gate) -> None:
    set_policy(gate, "  - hosts: [quic.test]\n    quic: inspect\n    client:\n      probes: [self_signed]\n")
    # This harness builds no mitmproxy CA store: the probes are minted by a generated CA instead.
    root = make_chain(dns=("quic.test",)).root
    gate.audit._mint, gate.audit._mint_source = ProbeMint(root.key, root.cert), None
    client = quic_client()
    data = quic_hello(gate, client, sni="quic.test")
    assert data.establish_server_tls_first is False  # a probe never involves the server
    audit = gate.connections.peek(client).audit
    assert audit.run is not None and audit.run.kind == "self_signed" and audit.probe is not None
    settings = start_client(gate, client).settings
    assert settings is not None and settings.certificate is audit.probe.cert
    assert settings.certificate_private_key is audit.probe.key and settings.alpn_protocols == ["h3"]
    assert settings.certificate.issuer == settings.certificate.subject  # the self-signed probe, not tlsgate's CA
    client.error = "self-signed certificate"  # aioquic's reason phrase when it refuses the certificate
    gate.audit.tls_failed_client(QuicTlsData(client, Context(client, gate.tctx.options)))
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["rejection"]) == (
        "client_probe",
        "passed",
        "bad certificate",
    )
    assert finding["evidence"]["transport"] == "quic" and finding["evidence"]["ja4"].startswith("q")


def real_quic_server_layer(gate: Gate, client: connection.Client, server: connection.Server) -> tuple[Context, QuicConnection]:
    """mitmproxy's server-side QUIC layer holding a real aioquic connection mid-handshake."""
    context = Context(client, gate.tctx.options)
    context.server = server
    layer = ServerQuicLayer(context, server, time=lambda: 0.0)
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE))
    quic.connect(("127.0.0.1", 443), now=0.0)
    quic.datagrams_to_send(now=0.0)
    layer.quic = quic
    return context, quic


@pytest.mark.parametrize(("mode", "blocked"), [("enforce", True), ("report", False)])
def test_a_quic_pin_mismatch_closes_the_upstream_before_any_stream_and_blocks_requests(
    gate: Gate, mode: str, blocked: bool
) -> None:
    other = make_chain(dns=("quic.test",))
    pins = f"['{spki_pin(other.leaf.cert)}', '{spki_pin(other.root.cert)}']"
    set_policy(gate, f"  - hosts: [quic.test]\n    mode: {mode}\n    quic: inspect\n    pins: {pins}\n")
    chain = make_chain(dns=("quic.test",))
    client, server = quic_client(), tflow.tserver_conn()
    server.transport_protocol, server.sni = "udp", "quic.test"
    quic_hello(gate, client, sni="quic.test")
    context, quic = real_quic_server_layer(gate, client, server)
    gate.upstream.quic_start_server(QuicTlsData(server, context))
    server.certificate_list = [certs.Cert(c) for c in (chain.leaf.cert, chain.intermediate.cert)]
    server.cipher, server.tls_version = "AES_128_GCM_SHA256", "QUICv1"
    gate.upstream.tls_established_server(QuicTlsData(server, context))

    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["host"]) == ("pin", "blocked" if blocked else "reported", "quic.test")
    evidence = finding["evidence"]
    assert (evidence["transport"], evidence["negotiated_version"], evidence["negotiated_suite"]) == (
        "quic",
        "TLSv1.3",
        "TLS_AES_128_GCM_SHA256",
    )
    assert gate.sample("tlsgate_upstream_connections_total", decision=finding["action"], check="pin", transport="quic") == 1
    quic.handle_timer(now=1000.0)
    event = quic.next_event()
    while event is not None and not isinstance(event, ConnectionTerminated):
        event = quic.next_event()
    assert isinstance(event, ConnectionTerminated)
    if blocked:  # closed by tlsgate: aioquic only ever sends CONNECTION_CLOSE from here on
        assert event.error_code == QuicErrorCode.CONNECTION_REFUSED and "tlsgate refused" in event.reason_phrase
        flow = tflow.tflow()
        flow.client_conn, flow.server_conn = client, server
        gate.upstream.request(flow)
        assert flow.response is not None and flow.response.status_code == 403
    else:
        assert event.error_code != QuicErrorCode.CONNECTION_REFUSED


def test_a_failed_quic_upstream_handshake_is_named_and_counted_as_quic(gate: Gate) -> None:
    set_policy(gate, "  - hosts: [quic.test]\n    quic: inspect\n")
    client, server = quic_client(), tflow.tserver_conn()
    server.transport_protocol, server.sni = "udp", "quic.test"
    quic_hello(gate, client, sni="quic.test")
    context = Context(client, gate.tctx.options)
    gate.upstream.quic_start_server(QuicTlsData(server, context))
    server.error = "unable to get local issuer certificate"
    gate.upstream.tls_failed_server(QuicTlsData(server, context))
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("certificate", "blocked", "unknown_issuer")
    assert finding["evidence"]["transport"] == "quic"


def test_a_quic_upstream_whose_start_hook_was_missed_is_still_judged(gate: Gate) -> None:
    other = make_chain(dns=("quic.test",))
    set_policy(
        gate,
        f"  - hosts: [quic.test]\n    quic: inspect\n    pins: ['{spki_pin(other.leaf.cert)}', '{spki_pin(other.root.cert)}']\n",
    )
    client, server = quic_client(), tflow.tserver_conn()
    server.transport_protocol, server.sni = "udp", "quic.test"
    quic_hello(gate, client, sni="quic.test")
    context, _ = real_quic_server_layer(gate, client, server)
    server.certificate_list = [certs.Cert(make_chain(dns=("quic.test",)).leaf.cert)]
    server.cipher = "AES_128_GCM_SHA256"
    gate.upstream.tls_established_server(QuicTlsData(server, context))  # no quic_start_server before it
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"]) == ("pin", "blocked")


def test_a_quic_client_the_audit_refuses_gets_the_same_fast_refusal(gate: Gate) -> None:
    set_policy(gate, "  - hosts: [quic.test]\n    quic: inspect\n")
    client = quic_client()
    quic_hello(gate, client, sni="quic.test")
    audit = gate.connections.peek(client).audit
    audit.refuse = True  # what an enforced hello finding decides (QUIC hellos rarely give one: TLS 1.3, AEAD only)
    settings = start_client(gate, client).settings
    assert settings is not None and settings.alpn_protocols == [REFUSED_ALPN]


def test_findings_and_metrics_name_a_connections_transport_from_one_rule() -> None:
    """mitmproxy's UDP-with-TLS is QUIC on either side; anything else it carries is TCP."""
    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    assert (transport_of(client), transport_of(server)) == ("tcp", "tcp")
    client.transport_protocol = server.transport_protocol = "udp"
    assert (transport_of(client), transport_of(server)) == ("quic", "quic")
