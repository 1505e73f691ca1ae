"""Probes on a fraction of connections, and each device's campaign summary at stop, with a real tlsgate and real curl.

Two devices on two loopback addresses: one curl that verifies (`--cacert`), one that does not (`-k`). Under
`probe_fraction: 0.5` every second connection a device could be probed on gets the next untried kind and the
others are served normally in between; once tlsgate stops, each device has one `campaign_summary` finding that
says what ran, what the app did, and why the other listed kinds never ran.
"""

from __future__ import annotations

from tests.harness import Upstream, curl, eventually

POLICY = """\
version: 1
devices:
  127.0.0.1: verifier
  127.0.0.2: careless
rules:
  - hosts: api.test
    mode: report
    client:
      probes: [self_signed, expired, ip_name_only]
      probe_fraction: 0.5
  - hosts: other.test
    client:
      probes: [wrong_host]
"""


def test_half_the_connections_are_probed_and_each_device_gets_its_summary_at_stop(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(POLICY, resolve={"api.test": https_upstream.port})
    url = f"https://api.test:{https_upstream.port}/"
    verifying = ("--interface", "127.0.0.1", "--cacert", str(gate.ca_cert))
    careless = ("--interface", "127.0.0.2", "-k")
    verifier = [curl(gate.proxy_url, url, *verifying).status for _ in range(6)]
    accepted = [curl(gate.proxy_url, url, *careless).status for _ in range(6)]
    # 0.5: the 2nd and 4th probe-eligible connections get self_signed, then expired; normal service in between,
    # and once both kinds are used up every connection is served (ip_name_only applies to IP literals only).
    assert verifier == [200, 0, 200, 0, 200, 200]
    assert accepted == [200, 403, 200, 403, 200, 200]
    assert len(https_upstream.requests) == 8, "a probed connection never reaches the upstream; the others all do"

    expected = [
        'tlsgate_probe_results_total{device="verifier",kind="self_signed",result="refused"} 1.0',
        'tlsgate_probe_results_total{device="verifier",kind="expired",result="refused"} 1.0',
        'tlsgate_probe_results_total{device="careless",kind="self_signed",result="accepted"} 1.0',
        'tlsgate_probe_results_total{device="careless",kind="expired",result="accepted"} 1.0',
    ]
    assert eventually(lambda: all(line in gate.scrape() for line in expected)), gate.scrape()

    gate.stop()  # the summaries are written as tlsgate stops
    summaries = {f["device"]: f for f in gate.findings() if f["evidence"].get("kind") == "campaign_summary"}
    assert set(summaries) == {"verifier", "careless"}

    passed = summaries["verifier"]
    assert (passed["check"], passed["action"], passed["severity"]) == ("client_probe", "passed", "info")
    rows = {row["kind"]: row for row in passed["evidence"]["probes"]}
    assert {kind: row["result"] for kind, row in rows.items()} == {
        "self_signed": "refused",
        "expired": "refused",
        "ip_name_only": "not_run",
        "wrong_host": "not_run",
    }
    assert rows["ip_name_only"]["reason"] == "not_applicable"
    assert rows["wrong_host"]["reason"] == "no_connection"  # other.test's rule: never reached
    assert rows["self_signed"]["hosts"] == ["api.test"]

    blocked = summaries["careless"]
    assert (blocked["action"], blocked["severity"]) == ("blocked", "critical")
    assert blocked["evidence"]["counts"] == {"accepted": 2, "refused": 0, "inconclusive": 0, "not_run": 2}
    assert "the app accepted self_signed, expired" in blocked["detail"]
