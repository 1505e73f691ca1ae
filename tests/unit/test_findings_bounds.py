"""The findings file stays bounded for runs that last days: lines are capped, the file rotates, nothing tears."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from tlsgate.addons.findings import FindingsSink
from tlsgate.sinks.findings import FIELD_CHARS, MAX_LINE, Finding, FindingsLog


def finding(n: int, evidence_size: int = 10) -> Finding:
    return Finding(
        "cleartext",
        "blocked",
        "high",
        "api.test",
        80,
        "10.0.0.2:1",
        "p.yaml:3",
        f"request {n}",
        evidence={"blob": "x" * evidence_size},
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_huge_finding_is_summarised_and_says_so(tmp_path: Path) -> None:
    log = FindingsLog(tmp_path / "f.jsonl")
    log.record(finding(1, evidence_size=250_000))
    log.record(Finding("x", "blocked", "low", "h" * 100_000, None, None, "r", "d" * 100_000, evidence={"k": 1}))
    log.close()
    first, second = lines(tmp_path / "f.jsonl")
    assert first["evidence"] == {"truncated": True, "evidence_chars": 250_012, "keys": ["blob"]}
    assert first["detail"] == "request 1" and first["rule"] == "p.yaml:3"
    # Fields are cut to what `tlsgate report` keeps (FIELD_CHARS), marked with "…"; then the line fits whole.
    assert len(second["host"]) == FIELD_CHARS["host"] and second["host"].endswith("…")
    assert len(second["detail"]) == FIELD_CHARS["detail"] and second["evidence"] == {"k": 1}
    assert all(len(line) <= MAX_LINE for line in (tmp_path / "f.jsonl").read_text().splitlines())
    assert log.truncated == 2


def test_the_file_rotates_by_size_and_keeps_n(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    log = FindingsLog(path, max_bytes=2000, keep=2)
    for n in range(100):
        log.record(finding(n))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["f.jsonl", "f.jsonl.1", "f.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in tmp_path.iterdir())
    kept = [f["detail"] for name in ("f.jsonl.2", "f.jsonl.1", "f.jsonl") for f in lines(tmp_path / name)]
    assert kept == [f"request {n}" for n in range(100 - len(kept), 100)]  # newest kept, in order, none torn
    assert log.rotations >= 5


def test_no_rotation_when_turned_off(tmp_path: Path) -> None:
    log = FindingsLog(tmp_path / "f.jsonl", max_bytes=0)
    for n in range(50):
        log.record(finding(n))
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["f.jsonl"] and len(lines(tmp_path / "f.jsonl")) == 50


def test_a_reopened_file_continues_its_size(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text("x" * 1900 + "\n")
    os.chmod(path, 0o600)
    log = FindingsLog(path, max_bytes=2000, keep=1)
    log.record(finding(1))
    log.close()
    assert (tmp_path / "f.jsonl.1").read_text().startswith("x") and lines(path)[0]["detail"] == "request 1"


def test_sink_options(tmp_path: Path) -> None:
    sink = FindingsSink()
    with taddons.context(sink) as tctx:
        tctx.configure(sink, tlsgate_findings=str(tmp_path / "f.jsonl"), tlsgate_findings_max_bytes=1000, tlsgate_findings_keep=3)
        assert (sink.log.max_bytes, sink.log.keep) == (1000, 3)
        with pytest.raises(exceptions.OptionsError, match="0 or more"):
            tctx.configure(sink, tlsgate_findings_keep=-1)
    sink.done()
