"""The MASTG/MASVS table (tlsgate/tls/mastg.py) held to the code, and what findings, reports and gates do with it."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from tests.report_consumers import validate_sarif
from tests.unit.test_report import finding, run, write
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.lifetime import Lifetime
from tlsgate.addons.verdicts import record
from tlsgate.checks.client_bounds import HELLO_KINDS
from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.policy import load_texts
from tlsgate.report.cli import summarise
from tlsgate.sinks.findings import Finding, FindingsLog
from tlsgate.sinks.metrics import APP_KINDS, PAYLOAD_KINDS
from tlsgate.tls import mastg
from tlsgate.tls.plaintext import PROTOCOLS
from tlsgate.tls.probes import PROBE_KINDS

PACKAGE = Path(__file__).resolve().parents[2] / "tlsgate"

# -- what the code can emit ------------------------------------------------------------------------


def _strings(node: ast.AST | None) -> set[str]:
    """The string constants an expression can be: a constant, either arm of `a if c else b`, a dict's values."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    return set()


def _assigned(function: ast.AST) -> dict[str, set[str]]:
    """In one function, every string constant assigned to each local name (also by tuple unpacking)."""
    names: dict[str, set[str]] = {}
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                names.setdefault(target.id, set()).update(_strings(node.value))
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for name, value in zip(target.elts, node.value.elts, strict=False):
                    if isinstance(name, ast.Name):
                        names.setdefault(name.id, set()).update(_strings(value))
    return names


def literal_kinds() -> dict[str, set[str]]:
    """(check -> kinds) from every `Issue(Check.X, kind, ...)` in tlsgate whose kind is a string, or a local name
    assigned strings in the same function. Kinds built at run time are added by `emitted` from their tables."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            local = _assigned(function)
            for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
                if not (isinstance(call.func, ast.Name) and call.func.id == "Issue" and len(call.args) >= 2):
                    continue
                check, kind = call.args[0], call.args[1]
                if not (isinstance(check, ast.Attribute) and isinstance(check.value, ast.Name) and check.value.id == "Check"):
                    check_name = "*"  # Issue(judge.check, "check_failed", ...): any check
                else:
                    check_name = Check[check.attr].value
                kinds = _strings(kind) or (local.get(kind.id, set()) if isinstance(kind, ast.Name) else set())
                found.setdefault(check_name, set()).update(kinds)
    return found


def emitted() -> dict[str, set[str]]:
    kinds = literal_kinds()
    kinds.setdefault("client_probe", set()).update(PROBE_KINDS)
    kinds.setdefault("client_hello", set()).update(HELLO_KINDS.values())
    for check, names in APP_KINDS.items():
        kinds.setdefault(check, set()).update(names)
    kinds.setdefault("payload", set()).update(PAYLOAD_KINDS)
    kinds.setdefault("cleartext", set()).update({f"plain_{p}" for p in (*PROTOCOLS, "ws")})
    return kinds


def test_the_scan_finds_what_it_must() -> None:
    """The scan itself: the kinds of the checks the table maps one by one are all found."""
    kinds = emitted()
    assert {"broken_suites_offered", "only_weak_suites", "weak_suites_offered"} <= kinds["client_ciphers"]
    assert kinds["client_protocol"] == {"version_too_low"}
    assert {"not_pinned", "pinned", "ca_not_installed", "undetermined"} == kinds["pinning"]
    assert "check_failed" in kinds["*"] and "check_failed" in kinds["request"]


def test_every_kind_the_code_emits_has_a_row_or_a_reason() -> None:
    """A new kind (a new probe, a new conformance verdict) fails here until the table says what it evidences."""
    missing = [
        f"{check}/{kind}"
        for check, kinds in emitted().items()
        if check != "*"
        for kind in sorted(kinds)
        if mastg.row_for(check, kind) is None
    ]
    assert not missing, f"(check, kind) without a row in tlsgate/tls/mastg.py ROWS: {missing}"
    for check in Check:
        assert mastg.row_for(check.value, "check_failed") is not None, check


def test_no_row_is_stale() -> None:
    """Every row names a check that exists and a kind something emits; a wildcard only for a check with no other rows."""
    kinds = emitted()
    checks = {check.value for check in Check}
    for row in mastg.ROWS:
        assert row.check == "*" or row.check in checks, row
        if row.kind != "*":
            assert row.kind in kinds.get(row.check, set()) | (kinds["*"] if row.check == "*" else set()), row
        else:
            assert not [r for r in mastg.ROWS if r.check == row.check and r.kind != "*"], row
    keys = [(row.check, row.kind) for row in mastg.ROWS]
    assert len(keys) == len(set(keys)), "one row per (check, kind)"


def test_every_row_evidences_tests_or_says_why_not() -> None:
    for row in mastg.ROWS:
        assert row.tests or row.reason, row
        assert all(test in mastg.TESTS for test in row.tests), row
        assert set(row.controls) <= set(mastg.CONTROLS), row
        assert row.outcome in ("fail", "pass"), row
    used = {test for row in mastg.ROWS for test in row.tests}
    assert used == set(mastg.TESTS), f"tests no row uses: {set(mastg.TESTS) - used}"


def test_the_tests_are_owasps_ids_titles_and_pages() -> None:
    for test_id, test in mastg.TESTS.items():
        assert test.id == test_id and mastg.TEST_ID.fullmatch(test_id)
        assert test.title and test.title == test.title.strip()
        assert test.platform in ("android", "ios", "network") and test.folder in ("android", "ios")
        assert test.masvs in mastg.CONTROLS
        assert test.url == f"https://mas.owasp.org/MASTG/tests/{test.folder}/MASVS-NETWORK/{test_id}/"
        assert test.wire in ("", "passive", "active") and (not test.wire or test.needs)
    # The ones the issue names, as OWASP titles them at the source commit.
    assert mastg.TESTS["MASTG-TEST-0218"].title == "Insecure TLS Protocols in Network Traffic"
    assert mastg.TESTS["MASTG-TEST-0244"].masvs == "MASVS-NETWORK-2"
    assert mastg.TESTS["MASTG-TEST-0396"].title == "References to URLSessionDelegate Bypassing Certificate Validation"
    assert len(mastg.SOURCE["commit"]) == 40 and mastg.SOURCE["retrieved"]


@pytest.mark.parametrize(
    ("check", "kind", "evidence", "action", "tests", "result"),
    [
        ("client_probe", "wrong_host", {}, "blocked", ("MASTG-TEST-0234", "MASTG-TEST-0283"), "fail"),
        ("client_probe", "self_signed", {}, "passed", ("MASTG-TEST-0282",), "pass"),
        ("pinning", "pinned", {}, "passed", ("MASTG-TEST-0244",), "pass"),
        ("pinning", "not_pinned", {}, "reported", ("MASTG-TEST-0244",), "fail"),
        ("cleartext", "plain_mqtt", {}, "blocked", ("MASTG-TEST-0236",), "fail"),
        ("conformance", "below_declared_min_version", {"side": "client"}, "reported", ("MASTG-TEST-0218",), "fail"),
    ],
)
def test_refs(check: str, kind: str, evidence: dict[str, Any], action: str, tests: tuple[str, ...], result: str) -> None:
    got = mastg.refs(check, kind, evidence, action)
    assert set(tests) <= set(got.tests) and got.result == result


def test_what_evidences_no_test() -> None:
    assert not mastg.refs("conformance", "below_declared_min_version", {"side": "server"}, "blocked")
    assert not mastg.refs("pin", "pin_mismatch", {}, "blocked")  # tlsgate's own pins on the server
    assert mastg.refs("client_ciphers", "weak_suites_offered").masvs == ("MASVS-NETWORK-1",)
    assert not mastg.refs("client_ciphers", "weak_suites_offered").tests


# -- the recording path stamps it --------------------------------------------------------------------

POLICY = load_texts([("p.yaml", "version: 1\ndefaults:\n  mode: enforce\n")])


def test_a_recorded_finding_carries_its_mastg_ids_and_an_unmapped_one_no_field(tmp_path: Path) -> None:
    log = FindingsLog(tmp_path / "f.jsonl")
    sink = FindingsSink(log)
    probe = Issue(Check.CLIENT_PROBE, "wrong_host", Effect.ALWAYS, Severity.CRITICAL, "accepted a probe")
    fault = Issue(Check.FAULT, "timeout", Effect.FAULT, Severity.LOW, "timed out")
    accepted = record(sink, None, None, probe, POLICY.match("api.test"), 443)
    record(sink, None, None, fault, POLICY.match("api.test"), 443)
    log.close()
    assert accepted.mastg is not None and "MASTG-TEST-0283" in accepted.mastg["tests"]
    first, second = (json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines())
    assert first["mastg"] == {
        "tests": ["MASTG-TEST-0234", "MASTG-TEST-0283", "MASTG-TEST-0396", "MASTG-TEST-0397"],
        "masvs": ["MASVS-NETWORK-1"],
        "result": "fail",
    }
    assert "mastg" not in second  # a fault evidences nothing: older readers see the line they always saw


# -- the report ---------------------------------------------------------------------------------------

ACCEPTED = finding(check="client_probe", action="blocked", severity="critical", host="api.test", evidence={"kind": "wrong_host"})
REFUSED = finding(check="client_probe", action="passed", severity="info", host="cdn.test", evidence={"kind": "self_signed"})


def view(tmp_path: Path, items: list[dict[str, Any] | str]) -> dict[str, dict[str, Any]]:
    summary = summarise([str(write(tmp_path / "f.jsonl", items))], 3, warn=lambda _: None)
    (rows,) = summary.masvs_view().values()
    return {row.test.id: row.as_dict() for row in rows}


def test_the_masvs_view_says_failed_passed_no_failure_seen_and_not_exercised(tmp_path: Path) -> None:
    rows = view(tmp_path, [ACCEPTED, REFUSED])  # older lines, without a `mastg` field: the table applies
    assert rows["MASTG-TEST-0283"]["status"] == "failed" and rows["MASTG-TEST-0283"]["examples"] == [
        "client_probe/wrong_host on api.test"
    ]
    assert rows["MASTG-TEST-0282"]["status"] == "passed"
    assert rows["MASTG-TEST-0396"]["status"] == "failed"  # accepted one probe, refused another: failed
    assert rows["MASTG-TEST-0236"]["status"] == "no failure seen"
    assert rows["MASTG-TEST-0244"]["status"] == "not exercised" and "must_pin" in rows["MASTG-TEST-0244"]["why"]


def test_a_file_cannot_relabel_a_finding_or_invent_a_test(tmp_path: Path) -> None:
    hostile = [
        # A known kind: the table wins, the line cannot turn an accepted probe into a pinning pass.
        {**ACCEPTED, "mastg": {"tests": ["MASTG-TEST-0244"], "masvs": ["MASVS-NETWORK-2"], "result": "pass"}},
        finding(
            check="future_check",
            evidence={"kind": "new"},
            mastg={"tests": ["MASTG-TEST-9999", "javascript:alert(1)", "MASTG-TEST-0244", 7], "masvs": "x", "result": "fail"},
        ),
        finding(check="future_check", host="b.test", evidence={"kind": "new2"}, mastg=["not", "an", "object"]),
        finding(check="future_check", host="c.test", evidence={"kind": "new3"}, mastg={"tests": ["MASTG-TEST-0244"] * 10_000}),
    ]
    warnings: list[str] = []
    summary = summarise([str(write(tmp_path / "f.jsonl", hostile))], 3, warn=warnings.append)
    (rows,) = summary.masvs_view().values()
    status = {row.test.id: row for row in rows}
    assert status["MASTG-TEST-0283"].status == "failed"
    assert status["MASTG-TEST-0244"].status == "failed" and status["MASTG-TEST-0244"].failed == 2  # known ids only, once
    assert any("does not know" in w for w in warnings) and any("'mastg' is not an object" in w for w in warnings)
    text = json.dumps(summary.as_dict())
    assert "9999" not in text and "javascript" not in text


def test_sarif_rules_carry_mastg_ids_tags_and_links_and_stay_valid(tmp_path: Path) -> None:
    out = tmp_path / "r.sarif"
    assert (
        run("report", str(write(tmp_path / "f.jsonl", [ACCEPTED, REFUSED, finding()])), "--format", "sarif", "--out", str(out))
        == 0
    )
    document = json.loads(out.read_text())
    validate_sarif(document)
    rules = {rule["id"]: rule for rule in document["runs"][0]["tool"]["driver"]["rules"]}
    probe = rules["client_probe/wrong_host"]
    assert probe["helpUri"] == "https://mas.owasp.org/MASTG/tests/android/MASVS-NETWORK/MASTG-TEST-0234/"
    assert {"MASVS-NETWORK-1", "MASTG-TEST-0283"} <= set(probe["properties"]["tags"])
    assert "MASTG-TEST-0236" in rules["cleartext/plain_http"]["properties"]["mastg"]
    assert document["runs"][0]["properties"]["masvsNetwork"]["pixel-7"][0]["id"]


def junit_masvs(path: Path) -> dict[str, dict[str, Any]]:
    """The MASVS-NETWORK suites of a JUnit file, parsed as XML by the standard library: suite name -> its element and
    test id -> (status, message, text)."""
    from xml.etree import ElementTree

    root = ElementTree.parse(path).getroot()
    suites: dict[str, dict[str, Any]] = {}
    for suite in root.iter("testsuite"):
        name = suite.get("name") or ""
        if not name.startswith("MASVS-NETWORK: "):
            continue
        cases = {}
        for case in suite.iter("testcase"):
            result = next(iter(case), None)
            tag = result.tag if result is not None and result.tag in ("failure", "skipped") else "passed"
            message = result.get("message", "") if result is not None else ""
            text = (result.text if tag != "passed" else case.findtext("system-out")) or ""
            cases[(case.get("name") or "").split(" ", 1)[0]] = (tag, message, text, case.get("classname"))
        suites[name] = {"element": suite, "cases": cases}
    return suites


def test_junit_has_a_masvs_network_suite_per_device_with_a_case_per_mastg_test(tmp_path: Path) -> None:
    out = tmp_path / "r.xml"
    items = [ACCEPTED, REFUSED, finding(device="tablet")]
    assert run("report", str(write(tmp_path / "f.jsonl", items)), "--format", "junit", "--out", str(out)) == 0
    suites = junit_masvs(out)
    assert set(suites) == {"MASVS-NETWORK: pixel-7", "MASVS-NETWORK: tablet"}
    phone = suites["MASVS-NETWORK: pixel-7"]
    rows = view(tmp_path, [ACCEPTED, REFUSED])  # the same view the other formats show
    assert set(phone["cases"]) == set(rows)  # one case per wire-testable MASTG test
    tag, message, text, classname = phone["cases"]["MASTG-TEST-0283"]
    assert tag == "failure" and "MASTG-TEST-0283 failed on pixel-7" in message and classname == "masvs.MASVS-NETWORK-1"
    assert "client_probe/wrong_host on api.test" in text and rows["MASTG-TEST-0283"]["url"] in text
    tag, message, text, _ = phone["cases"]["MASTG-TEST-0244"]
    assert tag == "skipped" and "not exercised" in message and "must_pin" in message  # with why
    assert phone["cases"]["MASTG-TEST-0282"][0] == "passed" and "passed: 1 finding(s)" in phone["cases"]["MASTG-TEST-0282"][2]
    assert phone["cases"]["MASTG-TEST-0236"][0] == "passed" and "no failure seen" in phone["cases"]["MASTG-TEST-0236"][2]
    statuses = [row["status"] for row in rows.values()]
    element = phone["element"]
    assert int(element.get("tests")) == len(rows)
    assert int(element.get("failures")) == statuses.count("failed")
    assert int(element.get("skipped")) == statuses.count("not exercised")
    # The tablet sent cleartext only: its cleartext test fails, the probe tests were never exercised.
    tablet = suites["MASVS-NETWORK: tablet"]["cases"]
    assert tablet["MASTG-TEST-0236"][0] == "failure" and tablet["MASTG-TEST-0283"][0] == "skipped"


def test_junit_masvs_view_stays_valid_xml_for_a_hostile_findings_file(tmp_path: Path) -> None:
    """Device names and hosts are whatever the file says: controls, XML syntax, bidi overrides, lone surrogates,
    100,000-character names. The JUnit stays well-formed XML 1.0 that both JUnit readers parse, names are bounded."""
    import xunitparser
    from junitparser import JUnitXml

    hostile_names = [
        "dev\x00ice\x1b[31m\x07",
        "]]></testsuite><testsuite name='forged'>&amp;<!--",
        "\u202egnp.exe\ufffe\ud800",
        "x" * 100_000,
    ]
    items: list[dict[str, Any] | str] = []
    for index, name in enumerate(hostile_names):
        items.append({**ACCEPTED, "device": name, "host": f"h{index}\x00<&>.test", "detail": "\x01" * 5000})
        items.append({**REFUSED, "device": name})
    out = tmp_path / "r.xml"
    run("report", str(write(tmp_path / "f.jsonl", items)), "--format", "junit", "--out", str(out))
    raw = out.read_bytes()
    assert raw.decode("utf-8")  # valid UTF-8: a lone surrogate did not get through
    for control in range(32):
        if chr(control) not in "\t\n\r":
            assert bytes([control]) not in raw, f"control {control:#x} is not allowed in XML 1.0"
    suites = junit_masvs(out)  # the standard library's parser
    assert len(suites) == len(hostile_names) and "forged" not in {s.split(": ", 1)[1] for s in suites}
    assert all(len(name) < 1000 for name in suites), "a device name is capped, not copied whole"
    for suite in suites.values():
        assert suite["cases"]["MASTG-TEST-0283"][0] == "failure"
    xml = JUnitXml.fromfile(str(out))  # and both JUnit readers
    assert sum(1 for suite in xml if suite.name.startswith("MASVS-NETWORK: ")) == len(hostile_names)
    with out.open() as handle:
        xunitparser.parse(handle)
    assert len(raw) < 2_000_000, "output bounded by the caps, not by the input's 100 KB names times every case"


@pytest.mark.parametrize(
    ("gate", "items", "code"),
    [
        ("MASVS-NETWORK-1", [ACCEPTED], 1),
        ("MASVS-NETWORK-2", [ACCEPTED], 0),  # blocked, critical, but not a pinning failure
        ("MASTG-TEST-0283", [ACCEPTED], 1),
        ("MASTG-TEST-0282", [ACCEPTED, REFUSED], 0),  # the app passed it: a pass never fails
        ("mastg-test-0236", [finding()], 1),  # cleartext; ids are read in any case
        ("critical,MASVS-NETWORK-2", [finding(action="reported")], 0),
        ("medium,MASVS-NETWORK-2", [finding(action="reported")], 1),
    ],
)
def test_report_fail_on_names_a_control_or_a_test(tmp_path: Path, gate: str, items: list[dict[str, Any]], code: int) -> None:
    assert run("report", str(write(tmp_path / "f.jsonl", items)), "--fail-on", gate, "--out", str(tmp_path / "r.md")) == code


@pytest.mark.parametrize("gate", ["MASVS-NETWORK-9", "MASTG-TEST-0001", "info", "", "high,,"])
def test_an_unknown_gate_is_a_usage_error(tmp_path: Path, gate: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        run("report", str(write(tmp_path / "f.jsonl", [finding()])), "--fail-on", gate)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "MASVS-NETWORK-1" in err and "Traceback" not in err


def test_the_gate_is_one_rule_for_report_and_run() -> None:
    gate = mastg.parse_gate("MASVS-NETWORK-2")
    as_written = Finding("pinning", "reported", "high", "api.test", 443, None, "p.yaml:1", "x", evidence={"kind": "not_pinned"})
    evidenced = mastg.refs(as_written.check, "not_pinned", as_written.evidence, as_written.action)
    assert gate.fails(as_written.action, as_written.severity, evidenced)
    assert not gate.fails("passed", "high", evidenced)
    assert mastg.parse_gate("high").describe() == "blocked or >= high"


def test_run_fail_on_a_control_counts_this_runs_findings_by_the_same_rule() -> None:
    addon = Lifetime()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="MASVS-NETWORK-1"):
            tctx.configure(addon, tlsgate_fail_on="MASVS-NETWORK-7")
        tctx.configure(addon, tlsgate_fail_on="MASVS-NETWORK-2")
        probe = {"kind": "wrong_host"}
        addon.on_finding(Finding("client_probe", "blocked", "critical", "api.test", 443, None, "p.yaml:1", "x", evidence=probe))
        assert (addon.findings, addon.failing, addon.exit_code) == (1, 0, 0)  # critical, but not a pinning failure
        pinned = {"kind": "pinned"}
        addon.on_finding(Finding("pinning", "passed", "info", "api.test", 443, None, "p.yaml:1", "x", evidence=pinned))
        assert addon.exit_code == 0
        not_pinned = {"kind": "not_pinned"}
        addon.on_finding(Finding("pinning", "reported", "high", "api.test", 443, None, "p.yaml:1", "x", evidence=not_pinned))
        assert addon.exit_code == 1 and "(MASVS-NETWORK-2 failed)" in addon.verdict()
