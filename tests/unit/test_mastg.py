"""The MASTG/MASVS table (tlsgate/tls/mastg.py) held to the code, and what findings, reports and gates do with it."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.verdicts import record
from tlsgate.checks.client_bounds import HELLO_KINDS
from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.policy import load_texts
from tlsgate.sinks.findings import FindingsLog
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
