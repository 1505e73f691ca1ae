"""The benchmark harness runs: a smoke run, no timing assertions (speed is measured, not asserted)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.policygen import big_policy, sample_hosts
from tests.harness import REPO
from tlsgate.policy import load_texts


def test_generated_policy_is_valid_and_mixes_rule_kinds() -> None:
    policy = load_texts([("big.yaml", big_policy(1000))])
    assert policy.rule_count == 1000
    kinds = {key for rule in policy.rules for key in rule.overrides}
    assert {"cleartext", "pins", "tls", "mode", "certificates"} <= kinds
    assert any(p.wildcard for rule in policy.rules for p in rule.hosts)
    hits = [policy.match(h).rule is not None for h in sample_hosts(1000)]
    assert any(hits) and not all(hits)


def test_quick_benchmark_run_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    for section in ("## keep-alive", "## new connection per request", "## Policy matching and loading", "## Memory"):
        assert section in text
    configs = ("mitmdump", "tlsgate-default", "tlsgate-10k", "tlsgate-all-sections", "tlsgate-noisy", "tlsgate-2-workers")
    for config in configs:
        assert re.search(rf"^\| {config} \| [\d,]+ \|", text, re.M), config
    assert "| mitmdump |" in text and "1.00×" in text
    for section in ("## Issue 16 targets", "## Cost of findings", "## Workers"):
        assert section in text, section
    assert re.search(r"^## Memory with [\d,]+ new connections$", text, re.M)
    # The noisy policy recorded a finding for every connection hey opened, or the cost of findings measures nothing.
    assert re.search(r"Findings file check: [\d,]+ `pin_mismatch` findings .*as expected", text), text
    # The all-sections policy ran every check without refusing the load client (every request got 200, else run.py
    # fails), and its catalogue probed the load client during the run, which refused every probe.
    assert "client_probe/self_signed (passed)" in text
    probes = text.split("## Probes", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^\| tlsgate-all-sections \| [\d,]+ of [\d,]+ .*\| [1-9][\d,]* of [\d,]+ ", probes, re.M), probes
    assert re.search(r"^\| mitmdump \| 0 of [\d,]+ \(0\.0%\) \| 0 of [\d,]+ \(0\.0%\) \|$", probes, re.M), probes
    assert "they agree" in probes and "Accepted probes (a wrong finding for this client): none." in probes


def test_the_load_client_refuses_every_probe_and_still_gets_every_answer(tmp_path: Path) -> None:
    """hey skips verification and Python's default context accepts `cn_only` (its CN fallback): either would take
    probes, get tlsgate's 403s and measure those. The benchmark's client refuses the whole catalogue, retries on a
    new connection, and every request gets its 200."""
    from benchmarks.run import bench_upstream, findings_by_kind, load, tlsgate_proxy, validated
    from tlsgate.tls.probes import PROBE_KINDS

    work, _, root, upstream, port = bench_upstream("tlsgate-loadclient-")
    policy = validated(
        work / "p.yaml",
        f"version: 1\ndefaults:\n  mode: report\nrules:\n  - hosts: [localhost]\n    client:\n"
        f"      probes: [{', '.join(PROBE_KINDS)}]\n",
    )
    proxy = tlsgate_proxy(work, "tg", root, [f"localhost:{port}:127.0.0.1"], "--policy", str(policy))
    try:
        proxy.start(work)
        ca = work / "ca" / "mitmproxy-ca-cert.pem"
        result = load(proxy.port, f"https://localhost:{port}/", ca, 30, 2, False, "127.0.0.1")  # raises unless 30x 200
        proxy.stop()  # the findings file is complete once tlsgate has stopped
        findings = findings_by_kind(work / "tg.jsonl")
    finally:
        proxy.stop()
        upstream.terminate()
        upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    refused = {key: n for key, n in findings.items() if key.startswith("client_probe/") and key.endswith("(passed)")}
    refused.pop("client_probe/campaign_summary (passed)")  # the device's roll-up at stop: it accepted nothing
    accepted = [key for key in findings if key.startswith("client_probe/") and not key.endswith("(passed)")]
    assert accepted == [] and "client_probe/cn_only (passed)" in refused and "client_probe/anon_cipher (passed)" in refused
    assert result["probes"] == sum(refused.values()) >= len(PROBE_KINDS) - 2  # ip_name_only, wildcard_wrong_label: n/a


def test_quick_soak_samples_both_proxies_and_survives_kill_9(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Reports\n\nwritten by report_scale.py\n")
    samples = tmp_path / "samples.jsonl"
    done = subprocess.run(
        [sys.executable, "benchmarks/soak.py", "--quick", "--out", str(out), "--samples", str(samples)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "## Reports\n\nwritten by report_scale.py" in text  # another script's section is kept
    soak = text.split("## Soak", 1)[1]
    # Every interval both proxies were sampled from /proc: RSS and open descriptors, also as JSON lines.
    rows = re.findall(
        r"^\| \d+ \| ([\d.]+) \| (\d+) \| \d+% \| \d+ \| \d+ \| ([\d.]+) \| (\d+) \| \d+% \| \d+ \| \d+ \| [\d.]+ \|$", soak, re.M
    )
    assert len(rows) >= 3, soak
    assert all(float(a) > 0 and int(b) > 0 and float(c) > 0 and int(d) > 0 for a, b, c, d in rows)
    recorded = [json.loads(line) for line in samples.read_text().splitlines()]
    assert {r["proxy"] for r in recorded} == {"mitmdump", "tlsgate"} and len(recorded) == 2 * len(rows)
    # Every share got its expected answer through both proxies (for tlsgate: its 403 on cleartext and pin).
    for share in ("keepalive", "newconn", "cleartext", "pin", "slow"):
        answers = re.search(rf"^\| {share} \(\d+ clients\) \| ([\d,]+)/[\d,]+ ok.* \| ([\d,]+)/[\d,]+ ok", soak, re.M)
        assert answers and all(int(n.replace(",", "")) > 0 for n in answers.groups()), share
    assert re.search(r"^\| \*\*error rate\*\* .* \| \*\*[\d.]+%\*\* \| \*\*[\d.]+%\*\* \|$", soak, re.M)
    assert re.search(r"holds [\d,]+ lines, 0 torn", soak) and "each with its finding line" in soak
    assert "CA certificate byte-identical" in soak and "got 200 from the upstream" in soak
    assert "Kill -9 check: PASS." in soak


def test_soak_checks_can_fail(tmp_path: Path) -> None:
    """The soak's verdicts on its own evidence: a torn findings line, a wrong answer, a missing share."""
    from benchmarks.soak import replace_section, torn_lines
    from benchmarks.soakload import Response, classify, split_clients

    findings = tmp_path / "findings.jsonl"
    findings.write_bytes(b'{"check":"pin"}\n{"check":"cleartext"}\n{"check":"pi')
    whole, torn, checks = torn_lines(findings)
    assert (whole, len(torn), checks["pin"]) == (2, 1, 1) and "no newline" in torn[0]
    findings.write_bytes(b'{"check":"pin"}\nnot json\n')
    assert len(torn_lines(findings)[1]) == 1

    verdict = Response(403, {"x-tlsgate-check": "pin"}, closed=False)
    fault = Response(502, {"x-tlsgate-check": "fault"}, closed=False)
    assert classify("pin", verdict, tlsgate=True) == "ok"
    assert classify("pin", verdict, tlsgate=False) == "verdict:pin"  # mitmdump must forward it
    assert classify("keepalive", verdict, tlsgate=True) == "verdict:pin"  # a block of the good host is no success
    assert classify("cleartext", Response(200, {}, closed=False), tlsgate=True) == "status:200"  # cleartext got through
    assert classify("newconn", fault, tlsgate=True) == classify("newconn", Response(502, {}, closed=True), tlsgate=False) == "5xx"

    counts = split_clients(150)
    assert sum(counts.values()) == 150 and min(counts.values()) > 0 and counts["keepalive"] > counts["slow"]
    assert sum(split_clients(7).values()) == 7 and min(split_clients(7).values()) > 0

    out = tmp_path / "B.md"
    out.write_text("# Benchmarks\n\nintro\n\n## keep-alive\n\nold numbers\n\n## Soak\n\nstale\n\n## Reports\n\nkept\n")
    replace_section(out, "Soak", ["## Soak", "", "fresh"])
    text = out.read_text()
    assert "stale" not in text and "fresh" in text and "intro" in text and "old numbers" in text and "kept" in text
    assert text.index("fresh") < text.index("## Reports")  # in place, not moved to the end
