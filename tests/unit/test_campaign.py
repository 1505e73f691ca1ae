"""Probe scheduling by fraction and the per-device campaign summary: the pure parts (issue 23, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.report_consumers import github_markdown
from tlsgate.checks import campaign as cp
from tlsgate.checks.model import Action, Check, Severity, decide
from tlsgate.checks.probes import ProbeSchedule
from tlsgate.policy import Mode, PolicyError, load_texts
from tlsgate.policy.sections.client import CLIENT
from tlsgate.report import cli
from tlsgate.sinks.findings import Finding
from tlsgate.sinks.metrics import FINDING_METRICS, Metrics
from tlsgate.tls import mastg

KINDS = ["self_signed", "wrong_host", "expired"]


def test_fraction_one_is_the_old_schedule_every_connection_gets_the_next_kind() -> None:
    schedule = ProbeSchedule()
    got = [schedule.next_kind("10.0.0.2", "api.test", KINDS, 1.0) for _ in range(4)]
    assert got == [*KINDS, None]


def test_a_quarter_probes_every_fourth_eligible_connection_spread_over_hosts() -> None:
    schedule = ProbeSchedule()
    hosts = ["a.test", "b.test", "c.test"]
    got = [(n, host, schedule.next_kind("10.0.0.2", host, KINDS, 0.25)) for n in range(1, 25) for host in [hosts[n % 3]]]
    probed = [(n, host, kind) for n, host, kind in got if kind]
    # The 4th, 8th, ... connection of the device, whichever host it went to; normal service in between.
    assert [n for n, _, _ in probed] == [4, 8, 12, 16, 20, 24]
    assert probed[:3] == [(4, "b.test", "self_signed"), (8, "c.test", "self_signed"), (12, "a.test", "self_signed")]
    assert probed[3:] == [(16, "b.test", "wrong_host"), (20, "c.test", "wrong_host"), (24, "a.test", "wrong_host")]


def test_a_tenth_is_exactly_every_tenth_connection_not_float_drift() -> None:
    schedule = ProbeSchedule()
    kinds = [f"k{i}" for i in range(40)]
    probed = [n for n in range(1, 301) if schedule.next_kind("10.0.0.2", "api.test", kinds, 0.1)]
    assert probed == list(range(10, 301, 10))


def test_the_fraction_counts_each_device_on_its_own_and_only_connections_that_could_be_probed() -> None:
    schedule = ProbeSchedule()
    assert schedule.next_kind("10.0.0.2", "a.test", KINDS, 0.5) is None
    assert schedule.next_kind("10.0.0.3", "a.test", KINDS, 0.5) is None  # another device: its own count
    assert schedule.next_kind("10.0.0.2", "a.test", KINDS, 0.5) == "self_signed"
    for _ in range(5):  # nothing left to try for this host: not counted
        assert schedule.next_kind("10.0.0.2", "done.test", [], 0.5) is None
    assert schedule.next_kind("10.0.0.2", "a.test", KINDS, 0.5) is None
    assert schedule.next_kind("10.0.0.2", "a.test", KINDS, 0.5) == "wrong_host"
    assert schedule.untried("10.0.0.2", "a.test", KINDS) == ("expired",)


def test_each_rule_keeps_its_own_fraction_when_a_device_talks_to_hosts_of_both() -> None:
    schedule = ProbeSchedule()
    kinds = [f"k{i}" for i in range(20)]
    probed: dict[str, list[int]] = {"every.test": [], "tenth.test": []}
    for n in range(1, 21):  # interleaved: every.test under fraction 1, tenth.test under 0.1
        if schedule.next_kind("10.0.0.2", "every.test", kinds, 1.0, "p.yaml:3"):
            probed["every.test"].append(n)
        if schedule.next_kind("10.0.0.2", "tenth.test", kinds, 0.1, "p.yaml:7"):
            probed["tenth.test"].append(n)
    assert probed == {"every.test": list(range(1, 21)), "tenth.test": [10, 20]}


def test_the_per_device_counters_are_bounded_too() -> None:
    schedule = ProbeSchedule(capacity=3)
    for n in range(10):
        schedule.next_kind(f"10.0.0.{n}", "a.test", KINDS, 0.5)
    assert len(schedule._seen) == 3 and len(schedule) <= 3


def summary_of(c: cp.Campaign, device: str, kinds: list[str]) -> dict[str, dict[str, object]]:
    issue = cp.summary(device, c.tallies(device), kinds)
    return {row["kind"]: row for row in issue.evidence["probes"]}


def test_summary_says_what_ran_what_the_app_did_and_why_the_rest_did_not() -> None:
    c = cp.Campaign()
    c.offered("phone", "api.test", "self_signed")
    c.answered("phone", "api.test", "self_signed", accepted=False)
    c.offered("phone", "api.test", "expired")  # the connection ended proving nothing
    c.skipped("phone", ["wildcard_too_broad"], cp.NOT_APPLICABLE)
    c.skipped("phone", ["tls_downgrade"], cp.QUIC_ONLY)
    c.skipped("phone", ["tls_downgrade"], cp.NOT_ITS_TURN)  # a TCP connection later: its turn had not come
    c.offered("phone", "api.test", "anon_cipher")
    c.withdrawn("phone", "anon_cipher")
    kinds = ["self_signed", "expired", "wildcard_too_broad", "tls_downgrade", "anon_cipher", "wrong_host"]
    rows = summary_of(c, "phone", kinds)
    assert rows["self_signed"] == {"kind": "self_signed", "result": "refused", "offered": 1, "refused": 1, "hosts": ["api.test"]}
    assert rows["expired"]["result"] == "inconclusive"
    assert rows["wildcard_too_broad"] == {
        "kind": "wildcard_too_broad",
        "result": "not_run",
        "offered": 0,
        "reason": "not_applicable",
    }
    assert rows["tls_downgrade"]["reason"] == "not_its_turn"
    assert rows["anon_cipher"]["reason"] == "unservable"
    assert rows["wrong_host"]["reason"] == "no_connection"  # listed by a rule for hosts the phone never reached
    issue = cp.summary("phone", c.tallies("phone"), kinds)
    assert (issue.check, issue.kind, decide(issue, Mode.REPORT)) == (Check.CLIENT_PROBE, "campaign_summary", Action.PASSED)
    assert issue.evidence["counts"] == {"accepted": 0, "refused": 1, "inconclusive": 1, "not_run": 4}
    assert "still untested: wildcard_too_broad, tls_downgrade, anon_cipher, wrong_host, expired" in issue.detail


def test_one_accepted_probe_blocks_the_summary_at_the_worst_accepted_severity() -> None:
    c = cp.Campaign()
    for kind, accepted in (("rsa_1024", True), ("self_signed", False), ("cn_only", True)):
        c.offered("phone", "api.test", kind)
        c.answered("phone", "api.test", kind, accepted=accepted)
    c.answered("phone", "cdn.test", "self_signed", accepted=True)  # refused on one host, accepted on another
    issue = cp.summary("phone", c.tallies("phone"), ["self_signed", "rsa_1024", "cn_only"])
    assert decide(issue, Mode.REPORT) is Action.BLOCKED
    assert issue.severity is Severity.CRITICAL  # self_signed accepted: anyone at all
    assert "the app accepted self_signed, rsa_1024, cn_only" in issue.detail
    assert summary_of(c, "phone", [])["self_signed"]["hosts"] == ["cdn.test"]
    c2 = cp.Campaign()
    c2.answered("tv", "a.test", "rsa_1024", accepted=True)
    assert cp.summary("tv", c2.tallies("tv"), []).severity is Severity.MEDIUM


def test_the_summary_grades_accepted_protocol_probes_as_their_own_findings_do() -> None:
    """A device that accepted only weak_cipher got a critical summary (the protocol probes' severities were not
    consulted), which paged as critical where its own finding, medium, only warns."""
    from tlsgate.checks.protocol_probes import SEVERITIES

    for kind, severity in (
        ("weak_cipher", Severity.MEDIUM),
        ("tls_downgrade", Severity.HIGH),
        ("anon_cipher", Severity.CRITICAL),
    ):
        c = cp.Campaign()
        c.answered("tv", "a.test", kind, accepted=True)
        assert cp.summary("tv", c.tallies("tv"), [kind]).severity is severity is SEVERITIES[kind]


def test_campaign_memory_is_bounded_by_devices_and_hosts_kept() -> None:
    c = cp.Campaign(devices=2)
    for device in ("a", "b", "c"):
        c.offered(device, "x.test", "self_signed")
    assert c.device_names() == ("b", "c")
    for n in range(50):
        c.offered("c", f"h{n}.test", "self_signed")
    assert len(c.tallies("c")["self_signed"].hosts["offered"]) == cp.HOSTS_KEPT


def test_policy_kinds_are_the_defaults_then_every_rules_in_file_order() -> None:
    policy = load_texts(
        [
            (
                "p.yaml",
                "defaults:\n  client:\n    probes: [self_signed, expired]\n"
                "rules:\n  - hosts: a.test\n    client:\n      probes: [wrong_host, self_signed]\n      probe_fraction: 0.25\n",
            )
        ]
    )
    assert cp.policy_kinds(policy) == ("self_signed", "expired", "wrong_host")
    assert CLIENT.of(policy.defaults).probe_fraction == 1.0
    assert CLIENT.of(policy.match("a.test").settings).probe_fraction == 0.25


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "true", "quarter", ".nan", "[0.1]"])
def test_a_fraction_outside_0_to_1_is_a_located_error(value: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", f"defaults:\n  client:\n    probes: [self_signed]\n    probe_fraction: {value}\n")])
    (message,) = [str(m) for m in caught.value.messages]
    assert message.startswith("p.yaml:4:21: client.probe_fraction must be a number above 0 and at most 1")


def finding(action: str, evidence: dict[str, object], device: str | None = "phone") -> Finding:
    return Finding(
        check="client_probe", action=action, severity="info", host="api.test", port=443, client=None,
        device=device, rule="p.yaml:1", detail="", remedy="", evidence=evidence,
    )  # fmt: skip


def test_probe_results_metric_labels_are_bounded() -> None:
    labels = FINDING_METRICS["client_probe"].labels
    assert labels is not None
    assert labels(finding("passed", {"kind": "expired"})) == ("phone", "expired", "refused")
    assert labels(finding("blocked", {"kind": "tls_downgrade"}, None)) == ("unnamed", "tls_downgrade", "accepted")
    assert labels(finding("blocked", {"kind": "weak_cipher", "served": False})) == ("phone", "weak_cipher", "unservable")
    assert labels(finding("blocked", {"kind": "made_up"})) == ("phone", "other", "accepted")
    assert labels(finding("blocked", {"kind": "campaign_summary"})) is None
    metrics = Metrics("12")
    metrics.on_finding(finding("passed", {"kind": "expired"}))
    assert b'tlsgate_probe_results_total{device="phone",kind="expired",result="refused"} 1.0' in metrics.exposition()


def test_the_summary_has_a_mastg_row_that_maps_no_test_twice() -> None:
    row = mastg.row_for("client_probe", "campaign_summary")
    assert row is not None and row.tests == () and row.reason


# -- reports -------------------------------------------------------------------------------------


def campaign_line(device: str | None, probes: object, named: str = "phone") -> dict[str, object]:
    return {
        "check": "client_probe", "action": "passed", "severity": "info", "host": "*", "port": None, "client": None,
        "rule": "p.yaml:1", "detail": "probe campaign", "remedy": "", "device": device,
        "evidence": {"kind": "campaign_summary", "device": named, "probes": probes}, "time": "2026-12-06T10:00:00.000+00:00",
    }  # fmt: skip


def test_reports_show_each_devices_campaign_and_read_it_back_as_hostile_input(tmp_path: Path) -> None:
    c = cp.Campaign()
    c.offered("phone", "api.test", "self_signed")
    c.answered("phone", "api.test", "self_signed", accepted=False)
    rows = cp.summary("phone", c.tallies("phone"), ["self_signed", "wrong_host"]).evidence["probes"]
    hostile = [
        {"kind": "wrong_host", "result": "not_run", "reason": "<script>x</script>", "offered": "9", "hosts": ["a" * 999, 7]},
        {"kind": "made_up", "result": "accepted"},
        {"kind": "expired", "result": "pwned"},
        "not a row",
    ]
    lines = [campaign_line("phone", rows), campaign_line(None, hostile, named="10.0.0.9|x")]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    out = tmp_path / "r.json"
    assert cli.main(["report", str(path), "--format", "json", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    campaigns = report["probe_campaigns"]
    assert report["hosts"] == [], "a summary spans hosts: it adds no '*' host"
    assert [(r["kind"], r["result"], r["why"]) for r in campaigns["phone"]] == [
        ("self_signed", "refused", ""),
        ("wrong_host", "not_run", cp.REASONS["no_connection"]),
    ]
    assert campaigns["10.0.0.9|x"] == [
        {"kind": "wrong_host", "result": "not_run", "offered": 0, "reason": None, "why": "", "hosts": ["a" * 253]}
    ]

    md = tmp_path / "r.md"
    assert cli.main(["report", str(path), "--format", "markdown", "--out", str(md)]) == 0
    text = md.read_text()
    assert "#### Probe campaign: `phone`" in text and "| `self_signed` | ✅ refused | 1 | api.test |" in text
    assert text.count("#### Probe campaign: ") == 2
    cells = github_markdown(text).rows  # campaign tables: 4 columns (problems 7, MASVS 5)
    assert cells.count(4) == 5 and set(cells) == {4, 5, 7}, "a | in a name adds no column"

    page = tmp_path / "r.html"
    assert cli.main(["report", str(path), "--format", "html", "--out", str(page)]) == 0
    html = page.read_text()
    assert 'id="probe-campaigns"' in html and "<script>x" not in html
    assert html.count('<tr class="campaign-') == 3
