"""The benchmark harness runs: a smoke run, no timing assertions (speed is measured, not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from benchmarks.policygen import big_policy, sample_hosts
from proxy.policy import load_texts
from tests.harness import REPO


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
    for config in ("mitmdump", "tlsgate-default", "tlsgate-10k", "tlsgate-2-workers"):
        assert re.search(rf"^\| {config} \| [\d,]+ \|", text, re.M), config
    assert "| mitmdump |" in text and "1.00×" in text
