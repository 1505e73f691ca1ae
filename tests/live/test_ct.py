"""Certificate Transparency end to end: real TLS servers whose leaves embed 0, 1 or 2 SCTs, forged or from logs
tlsgate does not know, behind a real tlsgate with a log list of test logs, asked through by a real curl.

One tlsgate per mode judges every case, each case its own host (and server), so the verdicts are side by
side; a blocked host's server must never see the request.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certgen import Chain, Issued, make_leaf, utcnow
from tests.ctgen import TestLog, leaf_with_scts, log_list_json, octet_string
from tests.harness import Tlsgate, Upstream, curl
from tests.tlsservers import tls_upstream

ARGON = TestLog("Argon", "Google")
NIMBUS = TestLog("Nimbus", "Cloudflare")
STRANGER = TestLog("Stranger", "Nobody")  # never in the log list


def leaves(intermediate: Issued) -> dict[str, Issued]:
    """One leaf per case, named by its host."""
    forged = (NIMBUS, {"signed_timestamp": utcnow() - dt.timedelta(days=3)})
    cases: dict[str, Issued] = {
        "zero.test": make_leaf(intermediate, ("zero.test",)),
        "one.test": leaf_with_scts(intermediate, ("one.test",), [ARGON]),
        "two.test": leaf_with_scts(intermediate, ("two.test",), [ARGON, NIMBUS]),
        "forged.test": leaf_with_scts(intermediate, ("forged.test",), [ARGON, forged]),
        "stranger.test": leaf_with_scts(intermediate, ("stranger.test",), [ARGON, STRANGER]),
        "garbage.test": leaf_with_scts(intermediate, ("garbage.test",), [], raw_extension=octet_string(b"\x01\x00junk")),
        "tls12.test": leaf_with_scts(intermediate, ("tls12.test",), [ARGON]),  # served at TLS 1.2 only
    }
    return cases


@dataclass
class Lab:
    chain: Chain
    servers: dict[str, Upstream]
    log_list: Path
    workdir: Path

    def gate(self, mode: str, *, with_list: bool = True) -> Tlsgate:
        policy = self.workdir / f"policy-{mode}.yaml"
        text = f"version: 1\ndefaults:\n  mode: {mode}\n  ct:\n    min_scts: 2\n    distinct_operators: true\n"
        policy.write_text(text + (f"ct_log_list: {self.log_list}\n" if with_list else ""))
        args = ["--upstream-ca", str(self.root_file), "--policy", str(policy)]
        for host, server in self.servers.items():
            args += ["--resolve", f"{host}:{server.port}:127.0.0.1"]
        workdir = self.workdir / f"gate-{mode}-{with_list}"
        workdir.mkdir()
        return Tlsgate(workdir, args).start()

    @property
    def root_file(self) -> Path:
        path = self.workdir / "root.pem"
        path.write_bytes(self.chain.root.cert_pem)
        return path


@pytest.fixture(scope="module")
def lab(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    chain: Chain = pki[0]
    workdir = tmp_path_factory.mktemp("ct")
    servers = {
        host: tls_upstream(workdir, leaf, chain.intermediate, name=host, version="1.2" if host == "tls12.test" else None)
        for host, leaf in leaves(chain.intermediate).items()
    }
    log_list = workdir / "logs.json"
    log_list.write_bytes(log_list_json([ARGON, NIMBUS]))
    yield Lab(chain, servers, log_list, workdir)
    for server in servers.values():
        server.stop()


def ask(gate: Tlsgate, host: str, port: int):
    return curl(gate.proxy_url, f"https://{host}:{port}/orders", "--cacert", str(gate.ca_cert), "-H", "Accept: application/json")


def ct_findings(gate: Tlsgate, host: str) -> list[dict]:
    return [f for f in gate.findings() if f["check"] == "ct" and f["host"] == host]


def test_enforce_blocks_every_leaf_short_of_two_verified_scts_before_a_byte_reaches_it(lab: Lab) -> None:
    gate = lab.gate("enforce")
    try:
        answers = {host: ask(gate, host, server.port) for host, server in lab.servers.items()}
        assert answers["two.test"].status == 200 and len(lab.servers["two.test"].requests) == 1
        blocked = {"zero.test": "no_scts", "one.test": "too_few_scts", "forged.test": "too_few_scts"}
        blocked |= {"stranger.test": "too_few_scts", "garbage.test": "too_few_scts", "tls12.test": "too_few_scts"}
        for host, kind in blocked.items():
            assert answers[host].status == 403, (host, answers[host])
            assert lab.servers[host].requests == [], f"{host}: a blocked server must not receive the request"
            body = json.loads(answers[host].body)
            assert body["check"] == "ct" and body["host"] == host and body["rule"].endswith("policy-enforce.yaml:2")
            gate.wait_findings(1)
            finding = next(f for f in ct_findings(gate, host) if f["evidence"]["kind"] == kind)
            assert finding["action"] == "blocked" and finding["severity"] == "high" and finding["rule"] == body["rule"]
            assert "'ct: off'" in finding["remedy"] and "mode: report" in finding["remedy"]
        assert ct_findings(gate, "two.test") == []
        forged = {f["evidence"]["kind"]: f for f in ct_findings(gate, "forged.test")}
        assert forged["invalid_sct"]["action"] == "reported" and "SCT 2 (Test 'Nimbus' log)" in forged["invalid_sct"]["detail"]
        assert [s["status"] for s in forged["too_few_scts"]["evidence"]["scts"]] == ["valid", "bad_signature"]
        stranger = next(f for f in ct_findings(gate, "stranger.test"))
        assert "ct_log_list: FILE" in stranger["remedy"]
        assert [s["status"] for s in stranger["evidence"]["scts"]] == ["valid", "unknown_log"]
        (tls12,) = ct_findings(gate, "tls12.test")  # judged in the chain phase at TLS 1.2 too, before the suite is known
        assert "TLSv1.2" in json.dumps(tls12["evidence"])
        garbage = next(f for f in ct_findings(gate, "garbage.test"))
        assert "declares 256 bytes but 4 follow" in garbage["evidence"]["sct_list_error"]
        assert "Traceback" not in gate.output
        # The one recording path counts what it wrote: six blocked hosts (the forged SCT's own finding is medium).
        scraped = gate.scrape()
        assert 'tlsgate_findings_total{action="blocked",check="ct",device="unnamed",severity="high"} 6.0' in scraped
    finally:
        gate.stop()


def test_report_mode_forwards_every_leaf_and_records_what_enforce_would_block(lab: Lab) -> None:
    gate = lab.gate("report")
    try:
        # garbage.test is left out: its SCT list is one cryptography cannot parse, so mitmproxy itself cannot read the
        # upstream certificate's names to make the app's certificate (tlsconfig.get_cert), whatever tlsgate decides.
        for host, server in lab.servers.items():
            if host != "garbage.test":
                assert ask(gate, host, server.port).status == 200, host
                assert len(server.requests) >= 1
        gate.wait_findings(6)
        for host in ("zero.test", "one.test", "forged.test", "stranger.test", "tls12.test"):
            kinds = {f["evidence"]["kind"]: f for f in ct_findings(gate, host)}
            finding = kinds["no_scts" if host == "zero.test" else "too_few_scts"]
            assert finding["action"] == "reported" and finding["rule"].endswith("policy-report.yaml:2"), (host, finding)
            assert "'ct: off'" in finding["remedy"]
        assert ct_findings(gate, "two.test") == []
    finally:
        gate.stop()


def test_with_the_shipped_list_months_old_nothing_is_blocked_and_findings_say_why(lab: Lab) -> None:
    gate = lab.gate("enforce", with_list=False)
    try:
        server = lab.servers["two.test"]  # test logs are unknown to Google's list: as good as no SCTs
        answer = ask(gate, "two.test", server.port)
        assert answer.status == 200
        (finding,) = gate.wait_findings(1)
        assert finding["check"] == "ct" and finding["action"] == "reported" and finding["severity"] == "medium"
        assert "Not enforced: the CT log list (tlsgate's copy of Google's log list, published 2026-01-11)" in finding["detail"]
        assert finding["evidence"]["log_list"]["version"] == "81.5"
    finally:
        gate.stop()


def test_an_unusable_log_list_stops_tlsgate_at_start_saying_where(lab: Lab) -> None:
    broken = lab.workdir / "broken.json"
    broken.write_text('{"operators": 5}')
    workdir = lab.workdir / "gate-broken"
    workdir.mkdir()
    policy = workdir / "policy.yaml"
    policy.write_text(f"version: 1\ndefaults:\n  ct: {{min_scts: 2}}\nct_log_list: {broken}\n")
    gate = Tlsgate(workdir, ["--policy", str(policy)])
    with pytest.raises(AssertionError, match=r"policy.yaml:4:14: CT log list broken.json: the log list has no 'operators'"):
        gate.start(timeout=30)
    gate.stop()
    assert gate.proc is not None and gate.proc.returncode == 2


def test_a_reload_puts_a_new_log_list_in_force_and_a_broken_one_keeps_the_last_good(lab: Lab) -> None:
    """The README's update steps: replace the list, touch the policy that names it."""
    listed = lab.workdir / "reload-logs.json"
    listed.write_bytes(log_list_json([ARGON]))  # Nimbus unknown: two.test has one SCT the list trusts
    workdir = lab.workdir / "gate-reload"
    workdir.mkdir()
    policy = workdir / "policy.yaml"
    policy.write_text(f"version: 1\ndefaults:\n  ct: {{min_scts: 2}}\nct_log_list: {listed}\n")
    server = lab.servers["two.test"]
    args = ["--upstream-ca", str(lab.root_file), "--policy", str(policy), "--resolve", f"two.test:{server.port}:127.0.0.1"]
    gate = Tlsgate(workdir, args).start()
    try:
        assert ask(gate, "two.test", server.port).status == 403
        listed.write_bytes(log_list_json([ARGON, NIMBUS]))
        mark = len(gate.lines)
        touch(policy)
        gate.wait_for("policy reloaded", start=mark)
        assert ask(gate, "two.test", server.port).status == 200
        listed.write_text('{"operators": 5}')
        mark = len(gate.lines)
        touch(policy)
        failure = gate.wait_for(
            r"policy reload failed: (policy\.yaml:4:14): CT log list reload-logs\.json: .*'operators'", start=mark
        )
        assert failure.group(1) == "policy.yaml:4:14"
        assert ask(gate, "two.test", server.port).status == 200, "the last good policy, and its list, stay in force"
    finally:
        gate.stop()


def touch(path: Path) -> None:
    stamp = time.time() + 1  # visible even on coarse-mtime filesystems
    os.utime(path, (stamp, stamp))
