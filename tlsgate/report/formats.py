"""JUnit XML, SARIF 2.1.0, Markdown and JSON renderings of a Summary.

JUnit is written with junitparser (the library CI result publishers read it
with) rather than string templates, so escaping and the element order the
consumers expect are not ours to get wrong. SARIF is plain JSON shaped by the
OASIS 2.1.0 schema; the tests validate it against the official schema file.
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from importlib import metadata
from typing import Any
from urllib.parse import quote

from junitparser import Failure, JUnitXml, Skipped, TestCase, TestSuite

from tlsgate.report.model import EMBEDDED_PREFIX, RANK, SEVERITIES, Record
from tlsgate.report.summary import Group, Summary
from tlsgate.sinks.findings import printable
from tlsgate.tls import mastg

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SARIF_LEVELS = {"info": "note", "low": "note", "medium": "warning", "high": "error", "critical": "error"}
# GitHub code scanning and others sort by this 0.0-10.0 score when it is present.
SECURITY_SEVERITY = {"info": "0.0", "low": "3.0", "medium": "5.5", "high": "8.0", "critical": "9.5"}
ICONS = {"critical": "🟥", "high": "🟧", "medium": "🟨", "low": "🟦", "info": "⬜"}


def tool_version() -> str:
    try:
        return metadata.version("tlsgate")
    except metadata.PackageNotFoundError:
        return "0"


def _finding_line(record: Record) -> str:
    where = f"{record.host}:{record.port}" if record.port else record.host
    line = (
        f"[{record.severity}] {record.action} {record.rule_id} {where} from {record.who} at {record.time or '?'}: {record.detail}"
    )
    return line + (f"\n    remedy: {record.remedy}" if record.remedy else "")


# -- JUnit ---------------------------------------------------------------------------------------


def junit(summary: Summary) -> str:
    """One suite per device (or app fingerprint, or address), one case per (check, host); failures by the gate's rule.
    Then one `MASVS-NETWORK: device` suite per device with a MASVS-NETWORK view (see _junit_masvs)."""
    by_suite: dict[str, dict[tuple[str, str], list[Group]]] = defaultdict(lambda: defaultdict(list))
    for group in summary.sorted_groups():
        by_suite[group.who][(group.check, group.host)].append(group)
    xml = JUnitXml("tlsgate")
    for who in sorted(by_suite):
        suite = TestSuite(who)
        for (check, host), groups in sorted(by_suite[who].items()):
            case = TestCase(f"{check} {host}", classname=f"tlsgate.{check}", time=0.0)
            records = [r for g in groups for r in g.examples]
            count = sum(g.count for g in groups)
            failing = sum(g.failing for g in groups)
            worst = max((g.worst for g in groups if g.worst), key=lambda r: r.rank)
            shown = "\n".join(_finding_line(r) for r in records)
            left_out = count - len(records)
            if left_out:
                shown += f"\n... and {left_out} more finding(s) like these"
            if failing:
                failure = Failure(f"{failing} of {count} finding(s) fail the gate: {worst.detail}", f"{worst.severity}")
                failure.text = shown
                case.result = [failure]
            else:
                case.system_out = shown
            suite.append(case)  # add_testcase recounts the whole suite each time: quadratic on big runs
        suite.update_statistics()
        xml.add_testsuite(suite)
    for suite in _junit_masvs(summary):
        xml.add_testsuite(suite)
    if not by_suite:
        # An empty report is still a report: one passing case says the run was checked and found clean.
        suite = TestSuite("tlsgate")
        case = TestCase("no findings", classname="tlsgate", time=0.0)
        case.system_out = f"{summary.total} finding(s) in {', '.join(summary.sources) or 'the input'}"
        suite.append(case)
        suite.update_statistics()
        xml.add_testsuite(suite)
    # Run-wide facts go on the first suite only, each name once: some readers (xunitparser) merge all
    # suites' properties into one map and refuse repeated names.
    first = next(iter(xml))
    first.add_property("tlsgate.fail_on", summary.gate.describe())
    first.add_property("tlsgate.sources", ", ".join(summary.sources))
    if summary.notes():
        first.add_property("tlsgate.notes", "; ".join(summary.notes()))
    xml.update_statistics()
    buffer = io.BytesIO()
    xml.write(buffer, pretty=True)
    return buffer.getvalue().decode("utf-8")


MASVS_SUITE = "MASVS-NETWORK"


def _junit_masvs(summary: Summary) -> list[TestSuite]:
    """The MASVS-NETWORK view per device: one case per wire-testable MASTG test, a failure for failed, skipped (with
    why) for not exercised, passed for passed and for a passive test no finding failed (its output says which). CI
    result pages then show the MASTG status a security team reports against, beside the per-finding suites.

    Every string here is the reader's (escaped and capped once, `printable`) or tlsgate's own table; junitparser
    escapes XML. The suite is named for the view first, so a device name cannot pass for another suite's name."""
    suites = []
    for who, rows in summary.masvs_view().items():
        suite = TestSuite(f"{MASVS_SUITE}: {who}")
        for row in rows:
            test = row.test
            case = TestCase(f"{test.id} {test.title}", classname=f"masvs.{test.masvs}", time=0.0)
            said = "\n".join([f"{row.status}: {row.why}", *row.examples, test.url])
            if row.status == "failed":
                failure = Failure(f"{test.id} failed on {who}: {row.why}", test.masvs)
                failure.text = said
                case.result = [failure]
            elif row.status == "not exercised":
                skipped = Skipped(f"not exercised: {row.why}")
                skipped.text = said
                case.result = [skipped]
            else:
                case.system_out = said
            suite.append(case)
        suite.update_statistics()
        suites.append(suite)
    return suites


# -- SARIF ---------------------------------------------------------------------------------------


def sarif(summary: Summary) -> dict[str, Any]:
    """One result per distinct problem (identity), so a million repeats stay one result with a count."""
    groups = summary.sorted_groups()
    rules: dict[str, dict[str, Any]] = {}
    for group in groups:
        worst = group.worst
        rule = rules.get(group.rule_id)
        if rule is None:
            rules[group.rule_id] = rule = {
                "id": group.rule_id,
                "name": group.rule_id.replace("/", "_"),
                "shortDescription": {"text": f"tlsgate {group.check} check" + (f": {group.kind}" if group.kind else "")},
                "fullDescription": {"text": worst.detail if worst and worst.detail else group.rule_id},
                "help": {"text": worst.remedy if worst and worst.remedy else "see the finding's detail"},
                "defaultConfiguration": {"level": SARIF_LEVELS[group.severity]},
                "properties": {
                    "tags": list(dict.fromkeys(["security", "tls", group.check])),
                    "security-severity": SECURITY_SEVERITY[group.severity],
                },
            }
            _sarif_mastg(rule, worst.evidenced if worst else mastg.NONE)
        elif RANK[group.severity] > SEVERITIES.index(_level_severity(rule)):
            rule["defaultConfiguration"]["level"] = SARIF_LEVELS[group.severity]
            rule["properties"]["security-severity"] = SECURITY_SEVERITY[group.severity]
    index = {rule_id: position for position, rule_id in enumerate(rules)}
    results = [_sarif_result(group, index[group.rule_id]) for group in groups]
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "tlsgate",
                "version": tool_version(),
                "informationUri": "https://github.com/tlsgate/tlsgate",
                "rules": list(rules.values()),
            }
        },
        "results": results,
        "columnKind": "unicodeCodePoints",
        "properties": {
            "verdict": "pass" if summary.passed else "fail",
            "failOn": summary.fail_on,
            "total": summary.total,
            "failing": summary.failing,
            "notes": summary.notes(),
            "masvsNetwork": {who: [s.as_dict() for s in rows] for who, rows in summary.masvs_view().items()},
            "mastgMapping": mastg.SOURCE,
        },
    }
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def _sarif_mastg(rule: dict[str, Any], evidenced: mastg.Refs) -> None:
    """The MASTG tests and MASVS controls the rule's findings evidence: as tags (what code-scanning views
    filter by), as properties, and as the rule's help link (the first test's page on mas.owasp.org). Only
    ids from tlsgate's own table reach here, so no findings file can put a link of its choosing in a rule."""
    if not evidenced:
        return
    properties = rule["properties"]
    properties["tags"] = list(dict.fromkeys([*properties["tags"], *evidenced.masvs, *evidenced.tests]))
    properties["mastg"] = list(evidenced.tests)
    properties["masvs"] = list(evidenced.masvs)
    tests = [mastg.TESTS[test] for test in evidenced.tests]
    if tests:
        rule["helpUri"] = tests[0].url
        links = "; ".join(f"{test.id} {test.title} ({test.url})" for test in tests)
        rule["help"]["text"] += f". OWASP MASTG: {links}"


def _level_severity(rule: dict[str, Any]) -> str:
    score = rule["properties"]["security-severity"]
    return next(name for name, value in SECURITY_SEVERITY.items() if value == score)


def artifact_uri(path: str) -> str:
    """The policy file as a relative URI reference: percent-encoded, so no rule text can become a
    `javascript:` (or any other scheme's) link in a code-scanning view; the packaged default policy is
    the checkout's `policies/default.yaml`, whatever older findings called it."""
    return quote(path.removeprefix(EMBEDDED_PREFIX), safe="/._-~") or "policy"


def sarif_text(text: str) -> str:
    """A SARIF message's plain text: `[text](target)` there is an embedded link (SARIF 3.11.6), so brackets,
    and the backslash that would escape them, are escaped."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _sarif_result(group: Group, rule_index: int) -> dict[str, Any]:
    worst = group.worst
    path, line = worst.rule_location if worst else (group.rule, None)
    physical: dict[str, Any] = {"artifactLocation": {"uri": artifact_uri(path)}}
    if line:
        physical["region"] = {"startLine": line}
    message = f"{worst.detail if worst else group.rule_id} (host {group.host}, device {group.who}"
    message += f", {group.count} time(s))" if group.count > 1 else ")"
    return {
        "ruleId": group.rule_id,
        "ruleIndex": rule_index,
        "level": SARIF_LEVELS[group.severity],
        "message": {"text": sarif_text(message)},
        "locations": [{"physicalLocation": physical}],
        # v2: the rule counts by file name and line (`rule_key`), so a laptop's and CI's runs are one alert.
        "partialFingerprints": {"tlsgateIdentity/v2": "|".join((group.check, group.kind, group.host, group.rule_key, group.who))},
        "occurrenceCount": group.count,
        "properties": {
            "severity": group.severity,
            "host": group.host,
            "device": group.who,
            "actions": dict(group.by_action),
            "failing": group.failing,
            "remedy": worst.remedy if worst else "",
            "firstSeen": group.first_time,
            "lastSeen": group.last_time,
        },
    }


# -- Markdown ------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Table-safe text: findings carry client-controlled strings, which must not break out of a cell or add markup."""
    text = printable(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    for char in "`*_[]&@#:":
        text = text.replace(char, "\\" + char)
    return text


def _code(text: str) -> str:
    """`text` as a code span, the only Markdown in which nothing is a link, a mention, an autolink
    (`www.x.test`), HTML or emphasis: fenced by more backticks than it holds in a row, pipes escaped
    for the table (GitHub's table parser takes `\\|` as a pipe even inside code)."""
    text = printable(text).replace("|", "\\|")
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown(summary: Summary, limit: int = 15) -> str:
    """A short summary for a pull-request comment or a CI step summary: verdict, counts, the worst problems."""
    verdict = "✅ **PASS**" if summary.passed else "❌ **FAIL**"
    lines = [
        f"### tlsgate: {verdict} (fail on {summary.gate_words})",
        "",
        f"{summary.total} finding(s), {summary.failing} failing, on {len(summary.hosts)} host(s) "
        f"from {len(summary.by_who)} device(s).",
        "",
        "| " + " | ".join(f"{ICONS[name]} {name}" for name in reversed(SEVERITIES)) + " |",
        "|" + "---:|" * len(SEVERITIES),
        "| " + " | ".join(str(summary.by_severity[name]) for name in reversed(SEVERITIES)) + " |",
    ]
    groups = summary.sorted_groups()
    if groups:
        lines += ["", "| severity | problem | host | device | count | action | rule |", "|---|---|---|---|---:|---|---|"]
        for group in groups[:limit]:
            action = ", ".join(f"{name} {n}" for name, n in group.by_action.most_common())
            lines.append(
                f"| {ICONS[group.severity]} {group.severity} | {_code(group.rule_id)} | {_code(group.host)} | {_code(group.who)} "
                f"| {group.count} | {action} | {_code(group.rule)} |"
            )
        if len(groups) > limit:
            lines.append(f"\n…and {len(groups) - limit} more problem(s); see the HTML or SARIF report.")
    lines += _markdown_masvs(summary)
    lines += _markdown_campaigns(summary)
    for note in summary.notes():
        lines.append(f"\n> {_cell(note)}")
    return "\n".join(lines) + "\n"


MARKDOWN_DEVICES = 5  # devices whose MASVS-NETWORK view a comment shows; the HTML and JSON show all


def _markdown_masvs(summary: Summary) -> list[str]:
    """Per device, each wire-testable MASTG test and what this run showed of it."""
    view = summary.masvs_view()
    lines: list[str] = []
    for who, rows in list(view.items())[:MARKDOWN_DEVICES]:
        lines += [
            "",
            f"#### MASVS-NETWORK: {_code(who)}",
            "",
            "| MASTG test | title | MASVS | status | why |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            status = f"{MASVS_ICONS[row.status]} {row.status}"
            lines.append(
                f"| {_code(row.test.id)} | {_cell(row.test.title)} | {_cell(row.test.masvs)} | {status} | {_cell(row.why)} |"
            )
    if len(view) > MARKDOWN_DEVICES:
        lines.append(f"\n…and {len(view) - MARKDOWN_DEVICES} more device(s); see the HTML or JSON report.")
    return lines


CAMPAIGN_ICONS = {"accepted": "❌", "refused": "✅", "inconclusive": "❔", "not_run": "⚪"}


def _markdown_campaigns(summary: Summary) -> list[str]:
    """Per device, every probe the policy asked for: what the app did with it, or why it never ran."""
    lines: list[str] = []
    devices = list(summary.campaigns.items())
    for who, rows in devices[:MARKDOWN_DEVICES]:
        lines += [
            "",
            f"#### Probe campaign: {_code(who)}",
            "",
            "| probe | result | offered | why / hosts |",
            "|---|---|---:|---|",
        ]
        for row in rows:
            said = row["why"] or ", ".join(row["hosts"])
            lines.append(
                f"| {_code(row['kind'])} | {CAMPAIGN_ICONS[row['result']]} {row['result']} | {row['offered']} | {_cell(said)} |"
            )
    if len(devices) > MARKDOWN_DEVICES:
        lines.append(f"\n…and {len(devices) - MARKDOWN_DEVICES} more device(s)' probe campaigns; see the HTML or JSON report.")
    return lines


MASVS_ICONS = {"failed": "❌", "passed": "✅", "no failure seen": "➖", "not exercised": "⚪"}


def as_json(summary: Summary) -> str:
    return json.dumps(summary.as_dict(), indent=2, ensure_ascii=False) + "\n"
