"""`tlsgate report` and `tlsgate diff` on synthetic findings files: input tolerance, formats, gates, bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import xunitparser
from junitparser import JUnitXml

from tests.report_consumers import github_markdown, validate_sarif
from tlsgate.report import cli
from tlsgate.report.model import RANK, InputError, Reader
from tlsgate.report.summary import Summary


def finding(**overrides: Any) -> dict[str, Any]:
    base = {
        "check": "cleartext",
        "action": "blocked",
        "severity": "medium",
        "host": "www.test",
        "port": 8080,
        "client": "127.0.0.1:40000",
        "rule": "policies/app.yaml:12",
        "detail": "plain http:// request to www.test (GET)",
        "remedy": "use https:// in the app",
        "device": "pixel-7",
        "evidence": {"method": "GET", "url": "http://www.test/", "protocol": "http", "credentials": [], "user_agent": "app/1.4"},
        "time": "2026-11-23T10:00:00.000+00:00",
    }
    return {**base, **overrides}


def write(path: Path, items: list[dict[str, Any] | str], torn: str | None = None) -> Path:
    lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
    path.write_text("".join(line + "\n" for line in lines) + (torn or ""))
    return path


PIN = finding(
    check="pin",
    severity="critical",
    host="api.test",
    port=443,
    rule="policies/app.yaml:30",
    device=None,
    detail="the server's chain matches no pin of set 'api'",
    evidence={
        "kind": "pin_mismatch",
        "negotiated_version": "TLSv1.3",
        "negotiated_suite": "TLS_AES_128_GCM_SHA256",
        "pin_set": "api",
        "ja4": "t13d1516h2_8daaf6152771_02713d6af862",
    },
)
PROBE_PASSED = finding(
    check="client_probe",
    action="passed",
    severity="info",
    host="cdn.test",
    rule="policies/app.yaml:40",
    evidence={"kind": "self_signed", "sni": "cdn.test"},
)
LOW_REPORTED = finding(
    check="client_hello", action="reported", severity="low", host="cdn.test", evidence={"kind": "weak_suites_offered"}
)


def run(*argv: str) -> int:
    return cli.main(list(argv))


# -- reading -------------------------------------------------------------------------------------


def test_unknown_fields_missing_optionals_older_lines_and_a_torn_tail_are_read_with_warnings(tmp_path: Path) -> None:
    old = {"check": "cleartext", "host": "old.test", "severity": "warning", "rule": "p.yaml:3", "detail": "from 0.1"}
    path = write(
        tmp_path / "f.jsonl",
        [finding(future_field={"x": 1}), {"check": "pin", "host": "bare.test"}, old, "", "not json at all"],
        torn='{"check":"cleartext","act',
    )
    warnings: list[str] = []
    reader = Reader(warnings.append)
    records = list(reader.read(path))
    assert [r.host for r in records] == ["www.test", "bare.test", "old.test"]
    bare = records[1]
    assert (bare.action, bare.severity, bare.device, bare.port, bare.evidence, bare.time) == (
        "reported",
        "info",
        None,
        None,
        {},
        None,
    )
    assert records[2].severity == "info"  # unknown severity from an older tlsgate
    text = "\n".join(warnings)
    assert "older tlsgate" in text and "cut short" in text and ":5: warning: not JSON" in text
    assert reader.skipped == 2 and reader.records == 3


@pytest.mark.parametrize(
    "content",
    [
        "hello, this is a log file\nnot findings\n",
        json.dumps([finding()]) + "\n",  # a JSON array (e.g. someone's export), not JSON lines
        "version: 1\ndefaults:\n  mode: enforce\nrules: []\n",  # a policy
        '{"metric": 1}\n{"metric": 2}\n',  # JSON lines, but not findings
    ],
    ids=["text", "json-array", "yaml-policy", "other-jsonl"],
)
def test_a_file_that_is_not_findings_is_a_clear_error_with_exit_code_2(tmp_path: Path, content: str, capsys) -> None:
    path = tmp_path / "input"
    path.write_text(content)
    with pytest.raises(InputError, match="not a tlsgate findings file"):
        list(Reader(lambda _: None).read(path))
    assert run("report", str(path), "--format", "markdown", "--out", str(tmp_path / "r.md")) == 2
    err = capsys.readouterr().err
    assert "not a tlsgate findings file" in err
    assert "warning" not in err, "one clear error, not a screen of per-line warnings"


def test_a_long_non_findings_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("x\n" * 200_000)
    reader = Reader(lambda _: None)
    with pytest.raises(InputError, match="first 50 lines"):
        list(reader.read(path))
    assert reader.lines == 50


def test_empty_file_is_a_clean_run_and_missing_or_directory_inputs_exit_2(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run("report", str(empty), "--fail-on", "low", "--out", str(tmp_path / "r.md")) == 0
    assert "PASS" in (tmp_path / "r.md").read_text()
    assert run("report", str(tmp_path / "missing.jsonl"), "--fail-on", "low") == 2
    assert run("report", str(tmp_path), "--fail-on", "low") == 2
    assert "cannot read" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path / "f.jsonl", [finding()])
    for argv in (["report", str(path), "--format", "pdf"], ["report", str(path), "--fail-on", "info"], ["report"]):
        with pytest.raises(SystemExit) as exited:
            run(*argv)
        assert exited.value.code == 2
    assert run("diff", str(path), str(path), "--fail-on", "high") == 2  # must say new:high


# -- the gate ------------------------------------------------------------------------------------


def test_fail_on_exit_codes(tmp_path: Path) -> None:
    reported_medium = write(tmp_path / "m.jsonl", [finding(action="reported", severity="medium"), PROBE_PASSED])
    blocked_low = write(tmp_path / "b.jsonl", [finding(action="blocked", severity="low")])
    critical = write(tmp_path / "c.jsonl", [PIN])
    only_passed = write(tmp_path / "p.jsonl", [PROBE_PASSED, PROBE_PASSED])
    out = str(tmp_path / "out")
    assert run("report", str(reported_medium), "--fail-on", "high", "--out", out) == 0
    assert run("report", str(reported_medium), "--fail-on", "medium", "--out", out) == 1
    assert run("report", str(blocked_low), "--fail-on", "critical", "--out", out) == 1, "a blocked request always fails"
    assert run("report", str(critical), "--fail-on", "critical", "--out", out) == 1
    assert run("report", str(only_passed), "--fail-on", "low", "--out", out) == 0, "an app that refused a probe did right"
    assert run("report", str(critical), "--out", out) == 0, "without --fail-on, report only renders"
    assert run("report", str(reported_medium), str(critical), "--fail-on", "high", "--out", out) == 1  # several files


# -- formats -------------------------------------------------------------------------------------


def sample(tmp_path: Path) -> Path:
    return write(
        tmp_path / "f.jsonl",
        [finding(), finding(port=8081, time="2026-11-23T10:00:05.000+00:00"), PIN, PROBE_PASSED, LOW_REPORTED],
    )


def test_sarif_is_valid_against_the_official_schema_and_names_rule_and_policy_line(tmp_path: Path) -> None:
    out = tmp_path / "r.sarif"
    assert run("report", str(sample(tmp_path)), "--format", "sarif", "--out", str(out)) == 0
    document = json.loads(out.read_text())
    validate_sarif(document)
    (sarif_run,) = document["runs"]
    results = {r["ruleId"]: r for r in sarif_run["results"]}
    assert set(results) == {
        "cleartext/plain_http",
        "pin/pin_mismatch",
        "client_probe/self_signed",
        "client_hello/weak_suites_offered",
    }
    pin = results["pin/pin_mismatch"]
    assert pin["level"] == "error"
    location = pin["locations"][0]["physicalLocation"]
    assert location == {"artifactLocation": {"uri": "policies/app.yaml"}, "region": {"startLine": 30}}
    assert results["cleartext/plain_http"]["occurrenceCount"] == 2 and results["cleartext/plain_http"]["level"] == "warning"
    assert results["client_probe/self_signed"]["level"] == "note"
    rules = [rule["id"] for rule in sarif_run["tool"]["driver"]["rules"]]
    assert all(rules[r["ruleIndex"]] == r["ruleId"] for r in sarif_run["results"])


def test_an_empty_run_is_valid_sarif(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    out = tmp_path / "r.sarif"
    assert run("report", str(empty), "--format", "sarif", "--out", str(out)) == 0
    validate_sarif(json.loads(out.read_text()))


def test_junit_has_a_suite_per_device_or_fingerprint_and_a_case_per_check_and_host(tmp_path: Path) -> None:
    out = tmp_path / "junit.xml"
    assert run("report", str(sample(tmp_path)), "--format", "junit", "--out", str(out)) == 0
    xml = JUnitXml.fromfile(str(out))
    every = {suite.name: suite for suite in xml}
    suites = {name: suite for name, suite in every.items() if not name.startswith("MASVS-NETWORK: ")}
    assert set(suites) == {"pixel-7", "ja4:t13d1516h2_8daaf6152771_02713d6af862"}
    cases = {case.name: case for case in suites["pixel-7"]}
    assert set(cases) == {"cleartext www.test", "client_probe cdn.test", "client_hello cdn.test"}
    assert not cases["cleartext www.test"].is_passed  # blocked -> failure
    assert "2 of 2 finding(s) fail the gate" in cases["cleartext www.test"].result[0].message
    assert cases["client_probe cdn.test"].is_passed and cases["client_hello cdn.test"].is_passed
    (pin_case,) = list(suites["ja4:t13d1516h2_8daaf6152771_02713d6af862"])
    assert pin_case.name == "pin api.test" and pin_case.result[0].type == "critical"
    # Then each device's MASVS-NETWORK view (tests/unit/test_mastg.py), counted in the totals like any suite.
    masvs = [suite for name, suite in every.items() if name not in suites]
    masvs_tests, masvs_failures = sum(s.tests for s in masvs), sum(s.failures for s in masvs)
    assert masvs and (xml.tests, xml.failures) == (4 + masvs_tests, 2 + masvs_failures)
    # A second, independent reader of the same file agrees.
    with out.open() as handle:
        suite, result = xunitparser.parse(handle)
    assert result.testsRun == 4 + masvs_tests and len(result.failures) == 2 + masvs_failures


def test_markdown_summary_is_short_and_keeps_client_strings_inert(tmp_path: Path) -> None:
    hostile = finding(host="evil|<img src=x onerror=alert(1)>`*x*`", device="dev|ice")
    path = write(tmp_path / "f.jsonl", [hostile, PIN])
    out = tmp_path / "r.md"
    assert run("report", str(path), "--format", "markdown", "--out", str(out)) == 0
    text = out.read_text()
    assert text.startswith("### tlsgate: ❌ **FAIL**")
    rendered = github_markdown(text)  # as GitHub renders a step summary or comment, raw HTML let through
    assert not {"img", "a", "em"} & {tag for tag, _ in rendered.tags}, "client strings stay text inside code spans"
    assert [cells for cells in rendered.rows if cells == 7] == [7, 7, 7], "a | in a host must not add table columns"


def test_json_report_totals(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert run("report", str(sample(tmp_path)), "--format", "json", "--out", str(out), "--fail-on", "high") == 1
    data = json.loads(out.read_text())
    assert data["verdict"] == "fail" and data["total"] == 5 and data["failing"] == 3
    assert data["by_severity"] == {"info": 1, "low": 1, "medium": 2, "high": 0, "critical": 1}
    (api,) = [h for h in data["hosts"] if h["host"] == "api.test"]
    assert api["pins"] == "MISMATCH" and api["tls_versions"] == ["TLSv1.3"] and api["worst"] == "pin/pin_mismatch"


def test_html_escapes_client_controlled_strings(tmp_path: Path) -> None:
    hostile = finding(
        host="<script>alert(1)</script>.test",
        device='"><svg onload=alert(2)>',
        evidence={"user_agent": "</pre><script>alert(3)</script>", "protocol": "http"},
    )
    out = tmp_path / "r.html"
    assert run("report", str(write(tmp_path / "f.jsonl", [hostile])), "--format", "html", "--out", str(out)) == 0
    text = out.read_text()
    assert "<script>alert" not in text and "<svg onload" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.test" in text and "&lt;/pre&gt;&lt;script&gt;alert(3)" in text
    assert text.count("<script>") == 1  # only the report's own


# -- diff ----------------------------------------------------------------------------------------


def test_a_plain_http_finding_written_without_its_kind_is_the_same_problem_as_one_with_it(tmp_path: Path) -> None:
    """Earlier tlsgate wrote plain-HTTP findings without `evidence.kind`; a baseline from then diffs clean."""
    old = write(tmp_path / "old.jsonl", [finding()])
    current = finding()
    current["evidence"] = {"kind": "plain_http", **current["evidence"]}
    new = write(tmp_path / "new.jsonl", [current])
    out = tmp_path / "diff.json"
    assert run("diff", str(old), str(new), "--format", "json", "--out", str(out)) == 0
    data = json.loads(out.read_text())
    assert (data["added"], data["fixed"]) == ([], [])
    assert [g["rule_id"] for g in data["unchanged"]] == ["cleartext/plain_http"]


def test_diff_matches_by_identity_not_time_or_port_and_gates_on_new(tmp_path: Path, capsys) -> None:
    base = write(tmp_path / "base.jsonl", [finding(action="reported"), PIN])
    token = finding(
        host="login.test",
        severity="high",
        detail="plain http:// request to login.test (POST) carrying credentials in cleartext: bearer",
        time="2026-11-24T09:00:00.000+00:00",
    )
    moved = finding(action="reported", port=9999, client="127.0.0.1:51111", time="2026-11-24T09:00:01.000+00:00")
    new = write(tmp_path / "new.jsonl", [moved, token])
    out = tmp_path / "diff.json"
    assert run("diff", str(base), str(new), "--format", "json", "--out", str(out)) == 0
    data = json.loads(out.read_text())
    assert [(g["rule_id"], g["host"]) for g in data["added"]] == [("cleartext/plain_http", "login.test")]
    assert [(g["rule_id"], g["host"]) for g in data["fixed"]] == [("pin/pin_mismatch", "api.test")]
    assert [(g["rule_id"], g["host"]) for g in data["unchanged"]] == [("cleartext/plain_http", "www.test")]
    assert run("diff", str(base), str(new), "--fail-on", "new:high", "--out", str(tmp_path / "d.txt")) == 1
    assert run("diff", str(base), str(new), "--fail-on", "new:critical", "--out", str(tmp_path / "d.txt")) == 1  # blocked
    text = (tmp_path / "d.txt").read_text()
    assert (
        "NEW (1)\n  + [high] cleartext/plain_http login.test on pixel-7" in text
        and "FIXED (1)\n  - [critical] pin/pin_mismatch" in text
    )
    assert run("diff", str(new), str(new), "--fail-on", "new:low", "--out", str(tmp_path / "same.txt")) == 0
    assert "NEW (0)" in (tmp_path / "same.txt").read_text()
    assert run("diff", str(base), str(new), "--format", "markdown", "--out", str(tmp_path / "d.md")) == 0
    assert "**1 new**, **1 fixed**, 1 unchanged" in (tmp_path / "d.md").read_text()
    assert run("diff", str(base), str(tmp_path / "nope.jsonl")) == 2


def test_without_a_device_name_the_identity_uses_the_app_fingerprint_then_the_address(tmp_path: Path) -> None:
    a = finding(device=None, client="10.0.0.5:1111", evidence={"ja3": "abc"})
    b = finding(device=None, client="10.0.0.5:2222", evidence={"ja3": "abc"})  # same app, new connection
    c = finding(device=None, client="10.0.0.6:1111", evidence={})
    d = finding(device=None, client="10.0.0.6:3333", evidence={})
    out = tmp_path / "r.json"
    assert run("report", str(write(tmp_path / "f.jsonl", [a, b, c, d])), "--format", "json", "--out", str(out)) == 0
    devices = json.loads(out.read_text())["by_device"]
    assert devices == {"ja3:abc": 2, "10.0.0.6": 2}


# -- scale ---------------------------------------------------------------------------------------


def _many(path: Path, count: int) -> Path:
    kinds = [finding(), PIN, PROBE_PASSED, LOW_REPORTED]
    with path.open("w") as handle:
        for i in range(count):
            item = dict(kinds[i % 4])
            item["host"] = f"h{i % 300}.test"
            item["time"] = f"2026-11-23T{10 + i // 36000 % 10:02d}:{i // 600 % 60:02d}:{i // 10 % 60:02d}.000+00:00"
            item["client"] = f"127.0.0.1:{1024 + i % 60000}"
            handle.write(json.dumps(item) + "\n")
    return path


@pytest.fixture(scope="module")
def read_traced(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Summary, int]]:
    """`tlsgate report` reads the file into a summary the same way for every format, then renders the summary: the
    reading of 2,000 and of 20,000 lines, traced once, with its peak (four times under tracemalloc cost ~10 s)."""
    folder = tmp_path_factory.mktemp("scale")
    read = []
    for count in (2_000, 20_000):
        path = _many(folder / f"{count}.jsonl", count)
        tracemalloc.start()
        try:
            summary = cli.summarise([str(path)], RANK[cli.DEFAULT_GATE])
            read.append((summary, tracemalloc.get_traced_memory()[1]))
        finally:
            tracemalloc.stop()
    return read


@pytest.mark.parametrize("fmt", ["html", "junit", "sarif", "json"])
def test_memory_stays_bounded_as_the_file_grows(read_traced: list[tuple[Summary, int]], fmt: str) -> None:
    peaks = []
    for summary, reading in read_traced:
        tracemalloc.start()
        try:
            cli.render(summary, fmt)
            # The summary is still held while rendering: reading's peak plus rendering's bounds the report's.
            peaks.append(reading + tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    # Ten times the lines: the same groups and hosts, so nearly the same peak (examples are capped per group).
    assert peaks[1] < peaks[0] * 2.5, peaks
    assert peaks[1] < 150 * 2**20, peaks


@pytest.mark.parametrize("check", ["tls", "security"])
def test_a_check_named_like_a_fixed_tag_still_gives_unique_sarif_tags(tmp_path: Path, check: str) -> None:
    """SARIF requires a rule's tags to be unique: a findings file may name a check `tls` or `security` (found by the
    hostile-file fuzzer), which repeated a fixed tag and made the whole document invalid."""
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(finding(check=check)) + "\n")
    out = tmp_path / "r.sarif"
    assert run("report", str(path), "--format", "sarif", "--out", str(out)) == 0
    document = json.loads(out.read_text())
    validate_sarif(document)
    (rule,) = document["runs"][0]["tool"]["driver"]["rules"]
    assert len(rule["properties"]["tags"]) == len(set(rule["properties"]["tags"]))
