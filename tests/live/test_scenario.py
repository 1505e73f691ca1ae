"""Behaviour unchanged across issue 22's restructuring: one fixed scenario (tests/scenario.py: pins, weak
upstreams, client probes and audits, payload findings, cleartext MQTT/SMTP, destination refusals, an app's own
config, report-mode variants, hostile peers, and HTTP/3 through a second tlsgate in reverse:http3 mode) through
this checkout's tlsgate gives the findings, counters and client answers recorded from the tag `pre-i22`
(tests/data/scenario/README.md says how, and when to record again).

A recorded file rather than a second checkout built at test time: CI clones without tags and must not need a
second venv; the recorded files also show in review exactly what a change of behaviour changes.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from tests import scenario
from tests.harness import REPO


def test_the_scenario_gives_what_pre_i22_gave(tmp_path: Path) -> None:
    got = scenario.run(REPO, tmp_path / "out")
    problems: list[str] = []
    for name in scenario.FILES:
        expected = (scenario.GOLDEN / name).read_text().splitlines()
        if got[name] != expected:
            problems += difflib.unified_diff(expected, got[name], f"pre-i22/{name}", f"this checkout/{name}", lineterm="")
    assert not problems, "\n".join(problems) + f"\n(console of this run: {tmp_path / 'out' / 'console.log'})"


def test_the_recording_covers_every_part_of_the_scenario() -> None:
    """The reference is not an empty or partial run: every part's host has its answer, and the checks it drives
    all left findings."""
    clients = (scenario.GOLDEN / "clients.txt").read_text().splitlines()
    assert clients[-2:] == ["tlsgate exit: 0", "quic tlsgate exit: 0"] and len(clients) == 50, clients
    findings = [json.loads(line) for line in (scenario.GOLDEN / "findings.jsonl").read_text().splitlines()]
    checks = {f["check"] for f in findings}
    assert checks >= {
        "cleartext", "pin", "protocol", "cipher", "certificate", "client_probe", "client_trust", "client_protocol",
        "client_ciphers", "client_sni", "payload", "destination", "conformance", "pinning", "request", "client_hello",
        "fault", "quic",
    }, checks  # fmt: skip
    assert {f["action"] for f in findings} == {"blocked", "reported", "passed", "failed"}
    hosts = {f["host"] for f in findings}
    assert hosts >= set(scenario.HOSTS) - {"allowed.test", "pinned-ok.test", "broker-ok.test"}, hosts
    assert hosts >= set(scenario.QUIC_HOSTS) - {"quic-ok.test", "quic-pinned.test"} | {scenario.QUIC_UPSTREAM}, hosts
    metrics = (scenario.GOLDEN / "metrics.txt").read_text()
    assert 'quic gate: tlsgate_quic_connections_total{decision="inspected"} 4.0' in metrics


def test_normalising_keeps_what_tells_runs_apart() -> None:
    """Only values of the run are replaced: a JA3 string's suite numbers, lengths and counts stay as they are."""
    ports = {49172: "<https port>", 40000: "<http port>"}
    assert scenario.normalise_value("771,49162-49172-57,0-11", [], ports) == "771,49162-49172-57,0-11"
    assert (
        scenario.normalise_value("api.test:49172 from 127.0.0.1:51234", [], ports)
        == "api.test:<https port> from 127.0.0.1:<port>"
    )
    assert scenario.normalise_value({"port": 40000, "length": 40000}, [], ports) == {"port": "<http port>", "length": 40000}
    assert scenario.normalise_value("expires on 2026-12-11 (in 5 days)", [], {}) == "expires on <date> (in 5 days)"
    assert scenario.normalise_metrics(
        'tlsgate_x_total{a="b"} 2.0\ntlsgate_x_created 1.7e9\nprocess_cpu_seconds_total 3.0\n', [], {}
    ) == ['tlsgate_x_total{a="b"} 2.0']
