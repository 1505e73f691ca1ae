"""The client audit feeds each device's probe campaign from mitmproxy's hooks: the reasons a kind never ran that
the live test cannot provoke with curl (QUIC only, a probe OpenSSL would not serve), and the summary at stop."""

from __future__ import annotations

from mitmproxy import tls
from mitmproxy.proxy.context import Context

from tests.certgen import make_chain
from tests.unit.test_addons import Gate, client_hello
from tests.unit.test_quic import gate, quic_client, quic_hello, set_policy  # noqa: F401 - `gate` is a fixture
from tlsgate.tls.probes import ProbeMint

RULE = "  - hosts: [quic.test]\n    quic: inspect\n    client:\n      probes: [tls_downgrade, self_signed]\n"


def rows(gate: Gate) -> dict[str, dict[str, object]]:  # noqa: F811
    (summary,) = gate.audit.campaigns()
    return {row["kind"]: row for row in summary.evidence["probes"]}


def test_a_protocol_probe_only_quic_could_have_had_is_not_run_because_quic_only(gate: Gate) -> None:  # noqa: F811
    set_policy(gate, RULE)
    root = make_chain(dns=("quic.test",)).root
    gate.audit._mint, gate.audit._mint_source = ProbeMint(root.key, root.cert), None
    quic_hello(gate, quic_client(), sni="quic.test")
    got = rows(gate)
    assert got["tls_downgrade"]["result"] == "not_run" and got["tls_downgrade"]["reason"] == "quic_only"
    assert got["self_signed"]["result"] == "inconclusive"  # offered; no answer yet


def test_a_probe_that_could_not_be_served_is_not_run_because_unservable_and_the_summary_is_written_at_stop(
    gate: Gate,  # noqa: F811
) -> None:
    set_policy(gate, RULE)
    root = make_chain(dns=("quic.test",)).root
    gate.audit._mint, gate.audit._mint_source = ProbeMint(root.key, root.cert), None
    client = quic_client()
    client.transport_protocol = "tcp"
    data = tls.ClientHelloData(Context(client, gate.tctx.options), tls.ClientHello(client_hello(sni="quic.test")))
    gate.audit.tls_clienthello(data)
    state = gate.connections.peek(client)
    assert state is not None and state.audit is not None and state.audit.run is not None
    assert state.audit.run.kind == "tls_downgrade"
    gate.audit._drop_probe(state, state.audit, ValueError("no shared cipher"))  # what tls_start_client does on failure
    assert rows(gate)["tls_downgrade"] == {"kind": "tls_downgrade", "result": "not_run", "offered": 0, "reason": "unservable"}
    assert rows(gate)["self_signed"]["reason"] == "not_its_turn", "queued behind tls_downgrade on a host the app reached"

    gate.sink.done()  # tlsgate stops: the sink runs the summaries before it closes the file
    (summary,) = [f for f in gate.findings() if f["evidence"].get("kind") == "campaign_summary"]
    assert (summary["check"], summary["action"], summary["device"]) == ("client_probe", "passed", "pixel-7")
    assert summary["evidence"]["counts"] == {"accepted": 0, "refused": 0, "inconclusive": 0, "not_run": 2}
    assert summary["client"] is None, "a named device's summary is the device's, not a connection's"


def test_an_unnamed_devices_summary_names_its_address_so_reports_can_tell_devices_apart(gate: Gate) -> None:  # noqa: F811
    gate.policy_path.write_text("version: 1\nrules:\n  - hosts: [api.test]\n    client:\n      probes: [self_signed]\n")
    gate.tctx.configure(gate.store, tlsgate_policy=[str(gate.policy_path)])
    client = quic_client()
    client.transport_protocol = "tcp"
    root = make_chain().root
    gate.audit._mint, gate.audit._mint_source = ProbeMint(root.key, root.cert), None
    gate.audit.tls_clienthello(tls.ClientHelloData(Context(client, gate.tctx.options), tls.ClientHello(client_hello())))
    gate.sink.done()
    (summary,) = [f for f in gate.findings() if f["evidence"].get("kind") == "campaign_summary"]
    assert (summary["device"], summary["client"], summary["evidence"]["device"]) == (None, "127.0.0.1", "127.0.0.1")
    assert summary["action"] == "passed" and summary["evidence"]["probes"][0]["result"] == "inconclusive"
