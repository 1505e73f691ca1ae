"""A problem reported again and again is written once, then counted: follow-up lines carry `occurrences`, metrics
count every occurrence, and `tlsgate report` shows how often each problem was seen (issue 21)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from tests.addonkit import wired
from tests.docs import docs_text
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.metrics import MetricsExporter
from tlsgate.addons.payload import PayloadInspector
from tlsgate.report.model import Reader
from tlsgate.report.summary import Summary
from tlsgate.sinks.findings import Finding, FindingsLog, Repeats, next_threshold
from tlsgate.sinks.metrics import Metrics

STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def finding(detail: str = "d") -> Finding:
    return Finding("payload", "reported", "high", "api.test", 443, None, "p.yaml:3", detail, evidence={"kind": "provider_key"})


def test_the_first_occurrence_is_written_at_once_and_the_rest_at_growing_thresholds_and_at_the_end(tmp_path: Path) -> None:
    log = FindingsLog(tmp_path / "f.jsonl")
    counted: list[Finding] = []
    log.subscribe_counts(counted.append)
    repeats = Repeats(log)
    for _ in range(250):
        if not repeats.again("k"):
            first = finding()
            log.record(first)
            repeats.first("k", first)
    written = lines(tmp_path / "f.jsonl")
    assert [line.get("occurrences") for line in written] == [None, 9, 90]  # at 10 and at 100 in all
    repeats.flush()
    written = lines(tmp_path / "f.jsonl")
    assert [line.get("occurrences") for line in written] == [None, 9, 90, 150]
    assert sum(line.get("occurrences", 1) for line in written) == 250 and len(counted) == 249
    assert {line["detail"] for line in written} == {"d"}  # every line names the same problem
    repeats.flush()
    assert len(lines(tmp_path / "f.jsonl")) == 4  # nothing new to say
    assert [next_threshold(n) for n in (1, 10, 999, 1_000_000, 2_500_000)] == [10, 100, 1000, 2_000_000, 3_000_000]


def test_a_problem_forgotten_to_make_room_writes_its_count_first(tmp_path: Path) -> None:
    log = FindingsLog(tmp_path / "f.jsonl")
    repeats = Repeats(log, limit=2)
    for key in ("a", "b"):
        line = finding(key)
        log.record(line)
        repeats.first(key, line)
    assert repeats.again("a") and repeats.again("a")
    line = finding("c")
    log.record(line)
    repeats.first("c", line)  # "b" is the oldest: forgotten, with nothing counted
    line = finding("d")
    log.record(line)
    repeats.first("d", line)  # "a" goes: its two repeats are written as it is forgotten
    assert [(f["detail"], f.get("occurrences")) for f in lines(tmp_path / "f.jsonl")] == [
        ("a", None), ("b", None), ("c", None), ("d", None), ("a", 2)
    ]  # fmt: skip
    assert len(repeats) == 2 and not repeats.again("a")


def test_metrics_count_each_occurrence_once_whether_written_or_counted() -> None:
    metrics = Metrics()
    log = FindingsLog()
    log.subscribe(metrics.on_finding)
    log.subscribe_counts(metrics.on_repeat)
    repeats = Repeats(log)
    for _ in range(12):
        if not repeats.again("k"):
            line = finding()
            log.record(line)
            repeats.first("k", line)
    repeats.flush()
    assert metrics.findings.labels("high", "payload", "reported", "unnamed")._value.get() == 12


POLICY = """\
version: 1
defaults:
  mode: report
  payload: block
devices:
  127.0.0.1: pixel-7
"""


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[tuple[PayloadInspector, FindingsSink, MetricsExporter, Path]]:
    with wired(POLICY, tmp_path) as kit:
        yield kit.get(PayloadInspector), kit.get(FindingsSink), kit.get(MetricsExporter), kit.findings


def post(body: bytes) -> http.HTTPFlow:
    headers = http.Headers([(b"host", b"api.test"), (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))])
    flow = tflow.tflow(req=tutils.treq(host="api.test", port=443, scheme=b"https", path=b"/v1", headers=headers, content=body))
    flow.client_conn.peername = ("127.0.0.1", 50000)
    return flow


def test_report_mode_counts_how_often_the_app_leaks_and_the_report_says_so(gate: Any) -> None:
    inspector, sink, exporter, findings = gate
    for _ in range(25):
        flow = post(f"key={STRIPE}".encode())
        pending = inspector.request(flow)
        if pending is not None:  # a scan that outlasted its slice on a busy machine
            asyncio.run(pending)
        assert flow.response is None  # forwarded: report mode
    assert [line.get("occurrences") for line in lines(findings)] == [None, 9]
    sink.done()  # tlsgate stops: what is only counted is written
    written = lines(findings)
    assert [line.get("occurrences") for line in written] == [None, 9, 15]
    assert {line["evidence"]["kind"] for line in written} == {"provider_key"} and STRIPE not in findings.read_text()
    assert exporter.metrics.payload.labels("provider_key", "reported", "true")._value.get() == 25
    summary = Summary(threshold=4).add_all(Reader(warn=lambda message: None).read(findings))
    (problem,) = summary.as_dict()["problems"]
    assert problem["count"] == 25 and summary.total == 25
    if shutil.which("jq"):  # the README's command for the same count
        readme = docs_text()
        command = readme.split("How often each payload problem was seen:\n\n```sh\n", 1)[1].split("```", 1)[0]
        done = subprocess.run(["sh", "-c", command], cwd=findings.parent, capture_output=True, text=True, check=True)
        assert done.stdout == "25\tapi.test\tprovider_key\n"
