"""A probe catalogue turned on per device, with a real tlsgate and real curl on three loopback addresses.

Every client here is a `curl -k`, which accepts any certificate: a probed connection shows as tlsgate's 403 and
never reaches the upstream, so a device that is never probed is one whose every request reaches it. The device
under test (`devices:` entry with its own `probes`) is probed on a host no rule names, and on a host whose rule
lists other kinds; a device with only a name gets the rules' lists, as before; the control device (`probes: []`)
is never probed, even where a rule lists probes; a rule's own `probes: []` keeps its host unprobed for every
device, and a host tlsgate passes through untouched (`ignore_hosts`) is never even seen.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness import Upstream, curl, eventually

POLICY = """\
version: 1
devices:
  127.0.0.2: {name: under-test, probes: [self_signed, expired]}
  127.0.0.3: name-only
  127.0.0.4: {name: control, probes: []}
rules:
  - hosts: api.test
    client:
      probes: [wrong_host]
  - hosts: legacy.test
    client:
      probes: []
"""
DEVICE_ENTRY_LINE = 3


def statuses(gate, address: str, host: str, port: int, times: int, *extra: str) -> list[int]:  # noqa: ANN001
    """`curl -k` from `address`, `times` times; `extra` replaces `-k`."""
    url = f"https://{host}:{port}/"
    return [curl(gate.proxy_url, url, "--interface", address, *(extra or ("-k",))).status for _ in range(times)]


def test_the_device_under_test_is_probed_everywhere_its_app_goes_and_the_others_as_their_entries_say(
    tlsgate, https_upstream: Upstream, pki
) -> None:
    _, root_file, _, _ = pki
    port = https_upstream.port
    hosts = ("api.test", "www.test", "legacy.test", "cdn.test")
    gate = tlsgate(POLICY, resolve=dict.fromkeys(hosts, port), args=("--set", "ignore_hosts=^cdn\\.test"))

    # the device under test: its own list on a host no rule names, and in place of api.test's wrong_host
    assert statuses(gate, "127.0.0.2", "www.test", port, 3) == [403, 403, 200]
    assert statuses(gate, "127.0.0.2", "api.test", port, 3) == [403, 403, 200]
    assert statuses(gate, "127.0.0.2", "legacy.test", port, 2) == [200, 200], "the rule's probes: [] wins"
    # passed through untouched: the upstream's own certificate, verified against its own CA (not -k), no probe
    assert statuses(gate, "127.0.0.2", "cdn.test", port, 2, "--cacert", str(root_file)) == [200, 200]
    # a device with only a name: the rules' lists, as before (api.test's wrong_host; nothing on www.test)
    assert statuses(gate, "127.0.0.3", "www.test", port, 3) == [200, 200, 200]
    assert statuses(gate, "127.0.0.3", "api.test", port, 2) == [403, 200]
    # the control device: never probed, even where the rule lists probes
    assert statuses(gate, "127.0.0.4", "api.test", port, 2) == [200, 200]
    assert statuses(gate, "127.0.0.4", "www.test", port, 1) == [200]
    assert len(https_upstream.requests) == 18 - 5, "each of the 5 probed connections was answered by tlsgate"

    expected = [
        'tlsgate_probe_results_total{device="under-test",kind="self_signed",result="accepted"} 2.0',
        'tlsgate_probe_results_total{device="under-test",kind="expired",result="accepted"} 2.0',
        'tlsgate_probe_results_total{device="name-only",kind="wrong_host",result="accepted"} 1.0',
    ]
    assert eventually(lambda: all(line in gate.scrape() for line in expected)), gate.scrape()
    assert 'device="control"' not in "\n".join(line for line in gate.scrape().splitlines() if "probe_results" in line)

    gate.stop()
    findings = gate.findings()
    probes = [f for f in findings if f["check"] == "client_probe" and f["evidence"].get("kind") != "campaign_summary"]
    assert sorted((f["device"], f["host"], f["evidence"]["kind"]) for f in probes) == [
        ("name-only", "api.test", "wrong_host"),
        ("under-test", "api.test", "expired"),
        ("under-test", "api.test", "self_signed"),
        ("under-test", "www.test", "expired"),
        ("under-test", "www.test", "self_signed"),
    ]
    policy = Path(gate.workdir / "policy.yaml").name
    for finding in probes:  # each names what to change: the device entry that asked, or the host's rule
        line = DEVICE_ENTRY_LINE if finding["device"] == "under-test" else 7
        assert finding["rule"].endswith(f"{policy}:{line}"), finding["rule"]

    summaries = {f["device"]: f for f in findings if f["evidence"].get("kind") == "campaign_summary"}
    assert set(summaries) == {"under-test", "name-only"}, "the control device was never probed: no campaign"
    rows = {row["kind"]: row for row in summaries["under-test"]["evidence"]["probes"]}
    assert {kind: (row["result"], row["accepted"]) for kind, row in rows.items()} == {
        "self_signed": ("accepted", 2),
        "expired": ("accepted", 2),
    }, "judged against the device's own list, not the rules' wrong_host"
    assert sorted(rows["self_signed"]["hosts"]) == ["api.test", "www.test"]
    assert [row["kind"] for row in summaries["name-only"]["evidence"]["probes"]] == ["wrong_host"]
