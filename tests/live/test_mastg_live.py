"""The MASVS-NETWORK view and `--fail-on CONTROL|TEST` over the findings of a real run: a Python client that checks
certificates but not host names, probed by a real tlsgate; the README's commands run as a user types them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.docs import section as docs_section
from tests.harness import Upstream
from tests.live.test_client_audit import of_check, probe_policy, python_context, python_get
from tests.live.test_report_live import tlsgate_cli, wait_exit
from tests.report_consumers import validate_sarif

pytestmark = pytest.mark.live


def readme_commands() -> list[list[str]]:
    """The `tlsgate report` commands the README's MASVS-NETWORK section shows, as argument lists."""
    section = docs_section("MASVS-NETWORK: OWASP MASTG tests per device")
    (block,) = re.findall(r"```console\n(.*?)```", section, re.S)
    return [shlex.split(line.removeprefix("$ "))[1:] for line in block.splitlines() if line.startswith("$ tlsgate report")]


def test_a_real_run_shows_hostname_verification_failed_and_trust_evaluation_passed(
    tlsgate, https_upstream: Upstream, tmp_path: Path
) -> None:
    gate = tlsgate(
        probe_policy(probes="[self_signed, wrong_host]"),
        resolve={"api.test": https_upstream.port},
        args=("--until-idle", "3s", "--fail-on", "MASVS-NETWORK-1"),
    )
    context = python_context(gate.ca_cert, check_hostname=False)  # verifies the chain, not the name
    outcomes = [python_get(gate, "api.test", https_upstream.port, context) for _ in range(2)]
    assert str(outcomes[0]).startswith("refused") and outcomes[1] == 403, outcomes  # self_signed refused, wrong_host taken
    assert https_upstream.requests == []
    probes = of_check(gate, "client_probe", 2)
    assert [f["mastg"]["result"] for f in probes] == ["pass", "fail"]
    assert wait_exit(gate, 30) == 1, gate.output  # run --fail-on MASVS-NETWORK-1: the accepted probe fails it
    assert "MASVS-NETWORK-1 failed" in gate.output

    findings = tmp_path / "findings.jsonl"
    findings.write_text(gate.findings_path.read_text())
    commands = readme_commands()
    assert len(commands) == 3
    results = [tlsgate_cli(*command, cwd=tmp_path) for command in commands]
    markdown, sarif, as_json = results
    assert markdown.returncode == 0, markdown.stderr
    assert re.search(
        r"MASTG-TEST-0283`? \| Incorrect Implementation of Server Hostname Verification \| MASVS-NETWORK-1 \| ❌ failed",
        markdown.stdout,
    )
    assert re.search(r"MASTG-TEST-0282`? \| Unsafe Custom Trust Evaluation \| MASVS-NETWORK-1 \| ✅ passed", markdown.stdout)
    assert "⚪ not exercised" in markdown.stdout  # pinning: no must_pin in this policy
    assert sarif.returncode == 1, sarif.stderr  # --fail-on MASVS-NETWORK-1
    document = json.loads((tmp_path / "tlsgate.sarif").read_text())
    validate_sarif(document)
    rule = next(r for r in document["runs"][0]["tool"]["driver"]["rules"] if r["id"] == "client_probe/wrong_host")
    assert rule["helpUri"].startswith("https://mas.owasp.org/MASTG/tests/") and "MASTG-TEST-0283" in rule["properties"]["tags"]
    assert as_json.returncode == 1, as_json.stderr  # high,MASTG-TEST-0244: the accepted probe is critical
    report = json.loads((tmp_path / "report.json").read_text())
    (rows,) = report["masvs_network"]["devices"].values()
    assert {row["id"]: row["status"] for row in rows}["MASTG-TEST-0244"] == "not exercised"
    assert tlsgate_cli("report", str(findings), "--fail-on", "MASVS-NETWORK-2").returncode == 0
