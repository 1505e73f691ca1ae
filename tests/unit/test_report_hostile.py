"""`tlsgate report` and `tlsgate diff` on findings files that hold whatever an app, a client or an attacker put there.

Every format is read back by a real consumer (expat and two JUnit readers, the
OASIS SARIF schema, a strict JSON reader, html.parser, GitHub's cmark-gfm) and
checked for three things: it is valid, it is inert (no raw control character,
no live script, handler or link, no split table row), and a bad line costs a
warning naming FILE:LINE and why, never the report.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.report_consumers import REPO, github_markdown, parse_html, read_junit, strict_json, validate_sarif
from tests.unit.test_report import finding
from tlsgate.policy.loader import display_path, embedded_policy
from tlsgate.report import cli, formats
from tlsgate.report.model import MAX_LINE_BYTES, Reader, rule_key
from tlsgate.sinks.findings import Finding, FindingsLog, json_safe, printable
from tlsgate.sinks.redact import redact_host

C0 = "".join(map(chr, range(0x20))) + "\x7f"
C1 = "".join(map(chr, range(0x80, 0xA0)))
HOSTILE = {
    "surrogate": "okhttp/4.12\udcff (lone surrogate: an 0xff byte of a User-Agent)",
    "c0": f"c0[{C0}]",
    "c1": f"c1[{C1}]",
    "ansi": "\x1b[2J\x1b[31mRED\x1b[0m\x1b]0;owned\x07",
    "osc8-link": "\x1b]8;;https://evil.test/\x1b\\click me\x1b]8;;\x1b\\",
    "bel-cr-lf": "row\x07one\rrow two\nrow three\r\n",
    "bidi": "invoice\u202egpj.exe \u2066x\u2069 \u200e\u200f\u061c",
    "zero-width": "ad\u200bmin\u200c\u200d\ufeff\u2060",
    "nul": "nul\x00byte",
    "xml-invalid": "\ufffe\uffff\ud800\U000e0001\u2028\u2029",
    "markdown-link": "[click](javascript:alert(1)) ![x](https://evil.test/p.png)",
    "markdown-meta": "a|b|c `code` ``x`` **bold** _it_ \\| \\ --> ]]> <![CDATA[x]]>",
    "autolink": "www.evil.test https://evil.test/x mailto:a@evil.test @everyone #1",
    "html": '<script>alert(1)</script><img src=x onerror=alert(2)>"><svg onload=alert(3)>',
    "entities": "&lt;script&gt; &#106;avascript:alert(1) &amp;",
    "template": "{{ 7*7 }} {% raw %} ${7*7}",
}


def hostile_findings() -> list[dict[str, Any]]:
    """Every field of a finding, evidence keys and values included, holding each hostile string."""
    items = []
    for index, (name, text) in enumerate(HOSTILE.items()):
        evidence = {
            text: text,
            "url": f"http://{text}/path?{text}",
            "user_agent": text,
            "kind": f"k{text}",
            "sni": text,
            "ja4": f"t13{text}" if index % 2 else None,
            "nested": {text: [text, {text: text}]},
        }
        items.append(
            finding(
                check=f"check{text}",
                action=("blocked", "reported", "passed", "failed")[index % 4],
                severity=("info", "low", "medium", "high", "critical")[index % 5],
                host=f"h{index}.{text}.test",
                client=f"{text}:{40000 + index}",
                rule=f"{text}/policy.yaml:{index + 1}",
                detail=f"{name}: {text}",
                remedy=text,
                device=None if index % 2 else f"dev{text}",
                time=f"2026-11-23T10:00:{index:02d}.000+00:00" if index % 3 else text,
                evidence=evidence,
            )
        )
    return items


def write_lines(path: Path, items: list[dict[str, Any] | bytes], ending: bytes = b"\n") -> Path:
    """Findings as tlsgate (ensure_ascii) or as a careless writer (raw UTF-8, lone surrogates as CESU bytes) would."""
    out = bytearray()
    for index, item in enumerate(items):
        if isinstance(item, bytes):
            out += item + ending
        elif index % 2:
            out += json.dumps(item).encode() + ending
        else:
            out += json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass") + ending
    path.write_bytes(bytes(out))
    return path


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def assert_inert(text: str, what: str, layout: str = "\n") -> None:
    """No character a terminal, an XML or JSON reader or a human eye would take for something else: every
    character printable, besides the newlines (never a CR) and indentation of the format itself."""
    bad = sorted({f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in text if not (c.isprintable() or c in layout)})
    assert not bad, f"{what} holds raw {bad}"


def run_report(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert_inert(err, "stderr")
    assert "Traceback" not in err
    return code, err


# -- every format over the hostile corpus ----------------------------------------------------------------

HTML_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "div", "h1", "p", "main", "section", "h2", "small",
    "svg", "text", "rect", "line", "table", "thead", "tbody", "tr", "th", "td", "code", "span", "input", "button",
    "details", "summary", "dl", "dt", "dd", "pre", "ul", "li", "footer", "script", "b",
}  # fmt: skip


def check_html(text: str, clean_script: str) -> None:
    markup = parse_html(text)
    assert {tag for tag, _ in markup.tags} <= HTML_TAGS
    assert markup.scripts == [clean_script], "the report's own script only, unchanged"
    for tag, attrs in markup.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, value)
            assert name not in ("href", "src", "action", "formaction", "xlink:href"), (tag, name, value)
            if name == "style":
                assert value.startswith("--c:#") and ";" not in value[:-1], value
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown, as text


def check_markdown(text: str, rows: int, columns: int) -> None:
    markup = github_markdown(text)
    tags = {tag for tag, _ in markup.tags}
    assert tags <= {"h3", "h4", "p", "strong", "table", "thead", "tbody", "tr", "th", "td", "code", "blockquote"}, tags
    outside = "".join(markup.text_outside_code)
    for marker in ("@", "#", "www.", "://", "javascript", "<", "\\"):
        assert marker not in outside, f"{marker!r} outside a code span: {outside!r}"
    problem_rows = [cells for cells in markup.rows if cells == columns]
    assert len(problem_rows) == rows, markup.rows  # headers, then one row per problem, none split
    assert all(cells in (columns, 5) for cells in markup.rows), markup.rows  # 5: the severity counts


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "hostile.jsonl", hostile_findings())


@pytest.fixture
def clean_script(tmp_path: Path, capsys) -> str:
    clean = write_lines(tmp_path / "clean.jsonl", [finding()])
    assert cli.main(["report", str(clean), "--format", "html", "--out", str(tmp_path / "clean.html")]) == 0
    capsys.readouterr()
    (script,) = parse_html((tmp_path / "clean.html").read_text()).scripts
    return script


@pytest.mark.parametrize("fmt", ["html", "junit", "sarif", "markdown", "json"])
def test_every_format_stays_valid_and_inert_whatever_a_finding_holds(
    tmp_path: Path, corpus: Path, clean_script: str, capsys, fmt: str
) -> None:
    out = tmp_path / f"r.{fmt}"
    code, err = run_report(capsys, "report", str(corpus), "--format", fmt, "--out", str(out), "--fail-on", "high")
    assert code == 1, err  # the verdict: blocked findings fail the gate; never a crash
    raw = out.read_bytes()
    text = raw.decode("utf-8")  # strict: valid UTF-8, no surrogates
    assert_inert(text, fmt, "\n\t" if fmt == "junit" else "\n")
    problems = len(HOSTILE)
    if fmt == "html":
        check_html(text, clean_script)
    elif fmt == "junit":
        tests, failures = read_junit(out)
        # A case per problem, then each device's MASVS-NETWORK suite: a case per wire-testable MASTG test.
        from junitparser import JUnitXml

        from tlsgate.report.summary import VIEW_TESTS

        masvs = [suite.tests for suite in JUnitXml.fromfile(str(out)) if suite.name.startswith("MASVS-NETWORK: ")]
        assert masvs and set(masvs) == {len(VIEW_TESTS)}
        assert tests == problems + sum(masvs) and failures >= 1
    elif fmt == "sarif":
        document = strict_json(text)
        validate_sarif(document)
        results = document["runs"][0]["results"]
        assert len(results) == problems
        for result in results:
            uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            assert urlsplit(uri).scheme == "" and uri.isascii(), uri
            message = result["message"]["text"]
            assert "](" not in message.replace("\\]", ""), message  # no embedded link (SARIF 3.11.6)
    elif fmt == "markdown":
        check_markdown(text, 1 + min(problems, 15), 7)  # the header and the 15 worst
    else:
        data = strict_json(text)
        assert data["total"] == problems and len(data["problems"]) == problems
        assert json.loads(json.dumps(data)) == data
        assert all(s.isprintable() for s in strings_in(data))


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_diff_escapes_what_it_prints(tmp_path: Path, corpus: Path, capsys, fmt: str) -> None:
    clean = write_lines(tmp_path / "clean.jsonl", [finding()])
    out = tmp_path / f"d.{fmt}"
    code, err = run_report(capsys, "diff", str(clean), str(corpus), "--format", fmt, "--out", str(out), "--fail-on", "new:high")
    assert code == 1, err
    text = out.read_text()
    assert_inert(text, f"diff {fmt}")
    if fmt == "json":
        data = strict_json(text)
        assert len(data["added"]) == len(HOSTILE) and len(data["fixed"]) == 1
    elif fmt == "markdown":
        check_markdown(text, 1 + len(HOSTILE) + 1 + 1, 6)  # new: header and 16; fixed: header and 1
    else:
        assert f"NEW ({len(HOSTILE)})" in text and "\\x1b[2J" in text  # escaped, so shown, not obeyed


def test_the_issues_user_agent_byte_and_ansi_sni_no_longer_crash_report_or_diff(tmp_path: Path, capsys) -> None:
    """The issue's two lines as tlsgate wrote them: a 0xff byte in a User-Agent (JSON "\\udcff") made every
    format and diff exit 1 with UnicodeEncodeError; an SNI with ANSI escapes made JUnit invalid XML."""
    ua = finding(evidence={"user_agent": "app/1.0 \udcff", "protocol": "http"})
    sni = finding(check="client_hello", host="\x1b[31mapi.test\x07", action="reported", evidence={"sni": "\x1b[31m\x07"})
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(ua) + "\n" + json.dumps(sni) + "\n")
    for fmt in ("html", "junit", "sarif", "markdown", "json"):
        code, _ = run_report(capsys, "report", str(path), "--format", fmt, "--out", str(tmp_path / f"r.{fmt}"))
        assert code == 0, fmt
    read_junit(tmp_path / "r.junit")
    code, _ = run_report(capsys, "diff", str(path), str(path))
    assert code == 0
    code, _ = run_report(capsys, "report", str(path), "--format", "json")  # to stdout
    assert code == 0


# -- bad lines: skipped with FILE:LINE and why; the rest still reported ------------------------------

GOOD = json.dumps(finding()).encode()
BAD_LINES = {
    "deep-array": (b'{"check":"x","host":"h","evidence":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "deep-object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    "huge": (b'{"check":"x","host":"' + b"a" * (MAX_LINE_BYTES + 10) + b'"}', "longer than 1 MiB"),
    "array": (b'[{"check":"x","host":"h"}]', "not a JSON object"),
    "number": (b"42", "not a JSON object"),
    "string": (b'"check"', "not a JSON object"),
    "null": (b"null", "not a JSON object"),
    "text": (b"GET / HTTP/1.1", "not JSON (Expecting value at column 1)"),
    "torn": (b'{"check":"cleartext","ho', "a line is cut short"),
    "raw-control": (b'{"check":"x","host":"a\x1b[2Jb"}', "not JSON (Invalid control character at column 23)"),
    "raw-nul": (b'{"check":"x","host":"a\x00"}', "not JSON (Invalid control character"),
    "extra-data": (b'{"check":"x","host":"h"}}', "not JSON (Extra data at column 25)"),
    "long-number": (b'{"check":"x","host":"h","port":' + b"9" * 5000 + b"}", "not JSON (Exceeds the limit"),
    "no-check": (b'{"host":"h"}', "without the 'check' and 'host'"),
    "check-number": (b'{"check":1,"host":"h"}', "without the 'check' and 'host'"),
    "host-list": (b'{"check":"x","host":["h"]}', "without the 'check' and 'host'"),
    "empty-check": (b'{"check":"","host":"h"}', "without the 'check' and 'host'"),
}


@pytest.mark.parametrize("bad", list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_a_bad_line_is_skipped_with_a_located_warning_and_the_rest_is_reported(tmp_path: Path, capsys, bad) -> None:
    line, why = bad
    path = write_lines(tmp_path / "f.jsonl", [GOOD, line, GOOD, GOOD])
    out = tmp_path / "r.json"
    code, err = run_report(capsys, "report", str(path), "--format", "json", "--out", str(out))
    assert code == 0, err
    assert strict_json(out.read_text())["total"] == 3
    warning = next(line for line in err.splitlines() if f"{path}:2: warning:" in line)
    assert why in warning and warning.endswith("; skipped"), warning
    assert "1 of 4 line(s) skipped" in err
    assert len(err) < 2000, "the warning quotes no line"


def test_wrong_types_in_every_field_are_read_as_data_and_named(tmp_path: Path, capsys) -> None:
    odd = {
        "check": "cleartext", "host": "h.test", "action": ["blocked"], "severity": {"high": 1}, "port": "443",
        "client": 5, "rule": {"file": "x"}, "detail": ["d"], "remedy": 7, "device": {"n": 1}, "evidence": "x" * 100,
        "time": 1_700_000_000, "occurrences": "3", "future": {"field": [1]},
    }  # fmt: skip
    ports = [finding(port=p) for p in (-1, 70_000, True, 1.5)]
    nan = b'{"check":"x","host":"nan.test","evidence":{"v":NaN,"w":-Infinity,"n":1e999}}'
    path = write_lines(tmp_path / "f.jsonl", [odd, *ports, nan])
    code, err = run_report(capsys, "report", str(path), "--format", "json", "--out", str(tmp_path / "r.json"))
    assert code == 0, err
    data = strict_json((tmp_path / "r.json").read_text())
    assert data["total"] == 6 and data["by_severity"]["info"] == 2  # the odd line and the NaN line
    first = next(line for line in err.splitlines() if ":1: warning:" in line)
    for name in ("severity", "action", "port", "'client' is a number", "'rule' is an object", "'detail' is a list"):
        assert name in first, (name, first)
    assert {p["host"] for p in data["problems"]} == {"h.test", "www.test", "nan.test"}
    assert "skipped" not in err


def test_file_level_damage_bom_crlf_invalid_utf8_blank_lines_and_a_torn_tail(tmp_path: Path, capsys) -> None:
    lines = [GOOD, b"", b'{"check":"x","host":"bad\xff\xfeutf8.test"}', b"   ", GOOD]
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n" + b'{"check":"cleartext","act')
    out = tmp_path / "r.json"
    code, err = run_report(capsys, "report", str(path), "--format", "json", "--out", str(out))
    assert code == 0, err
    data = strict_json(out.read_text())
    assert data["total"] == 3, err  # the BOM did not cost the first line; CRLF is a line end
    assert {h["host"] for h in data["hosts"]} == {"www.test", "bad\ufffd\ufffdutf8.test"}
    assert f"{path}:3: warning: bytes that are not UTF-8 replaced by U+FFFD" in err
    assert f"{path}:6: warning: the last line is cut short" in err


def test_a_hostile_file_name_and_title_are_escaped_too(tmp_path: Path, capsys) -> None:
    path = write_lines(tmp_path / "a\x1b[31m\u202eb.jsonl", [GOOD])
    code, err = run_report(capsys, "report", str(path), "--format", "junit", "--out", str(tmp_path / "j.xml"))
    assert code == 0 and "a\\x1b[31m\\u202eb.jsonl" in (tmp_path / "j.xml").read_text()  # tlsgate.sources
    read_junit(tmp_path / "j.xml")
    code, _ = run_report(
        capsys, "report", str(path), "--format", "html", "--title", "t\x07\udcff", "--out", str(tmp_path / "r.html")
    )
    assert code == 0 and "t\\x07\\udcff" in (tmp_path / "r.html").read_text()


# -- fuzz: any finding dict ----------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(st.characters(codec=None), max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
any_text = st.text(st.characters(codec=None), max_size=60)
finding_dicts = st.fixed_dictionaries(
    {"check": st.one_of(any_text, json_values), "host": st.one_of(any_text, json_values)},
    optional={
        name: st.one_of(any_text, json_values, st.sampled_from(choices))
        for name, choices in {
            "action": ["blocked", "reported", "passed", "failed"],
            "severity": ["info", "low", "medium", "high", "critical"],
            "port": [443, 80, 0, 65535],
            "client": ["10.0.0.2:1234", "[::1]:1", "x"],
            "rule": ["policies/app.yaml:12", "embedded:policies/default.yaml:5", ":"],
            "detail": ["d"], "remedy": ["r"], "device": ["pixel-7"],
            "evidence": [{"kind": "pin_mismatch", "ja4": "t13"}, {"host_pattern": "*.test"}],
            "time": ["2026-11-23T10:00:00.000+00:00", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59-14:00"],
            "occurrences": [1, 2, -1, 10**20],
        }.items()
    },
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=st.lists(finding_dicts, min_size=1, max_size=6))
def test_fuzz_every_format_and_diff_stay_valid_for_any_finding_dicts(tmp_path_factory, items: list[dict[str, Any]]) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    path = write_lines(tmp / "f.jsonl", [*items, finding()])  # one good line, so the file is findings
    warnings: list[str] = []
    for fmt in ("html", "junit", "sarif", "markdown", "json"):
        summary = cli.summarise([str(path)], 3, warnings.append)
        text = cli.render(summary, fmt)
        text.encode("utf-8")
        assert_inert(text, fmt, "\n\t" if fmt == "junit" else "\n")
        if fmt == "junit":
            (tmp / "j.xml").write_text(text)
            read_junit(tmp / "j.xml")
        elif fmt == "sarif":
            validate_sarif(strict_json(text))
        elif fmt == "json":
            strict_json(text)
        elif fmt == "html":
            markup = parse_html(text)
            assert len(markup.scripts) == 1 and not any(n.startswith("on") for _, a in markup.tags for n in a)
        else:
            markup = github_markdown(text)
            assert not {"a", "img", "script"} & {tag for tag, _ in markup.tags}
    for warning in warnings:
        assert_inert(warning, "warning")
    from tlsgate.report import diff as diffing

    base = cli.summarise([str(path)], 3, warnings.append)
    other = cli.summarise([str(path)], 3, warnings.append)
    result = diffing.compare(base, other)
    assert not result.added and not result.fixed  # a file diffed against itself: nothing new, nothing fixed
    for text in (diffing.as_text(result), diffing.as_markdown(result), diffing.as_json(result)):
        assert_inert(text, "diff")


# -- the writer: new findings never hold what the readers must survive --------------------------------


def hostile_finding(text: str, evidence: Any = None) -> Finding:
    return Finding(
        f"check{text}", "blocked", "high", f"h.{text}.test", 80, f"{text}:1", f"{text}.yaml:3", text, text, f"d{text}",
        evidence if evidence is not None else {text: text, "nested": [{text: text}]},
    )  # fmt: skip


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_the_sink_writes_findings_without_raw_controls_or_lone_surrogates(tmp_path: Path, text: str) -> None:
    log = FindingsLog(tmp_path / "f.jsonl")
    log.record(hostile_finding(text))
    log.close()
    raw = (tmp_path / "f.jsonl").read_bytes()
    assert raw.isascii() and raw.endswith(b"\n") and raw.count(b"\n") == 1
    data = strict_json(raw.decode())
    assert all(s.isprintable() for s in strings_in(data))
    warnings: list[str] = []
    (record,) = Reader(warnings.append).read(tmp_path / "f.jsonl")
    assert warnings == [], "what the writer writes, the reader reads without a complaint"
    # a host is also cut at its first character no host name has (redact_host), before it is escaped
    assert record.detail == printable(text) and record.host == printable(redact_host(f"h.{text}.test"))


def test_the_sink_bounds_deep_cyclic_and_odd_evidence() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):
        node["x"] = {}
        node = node["x"]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    evidence = {"deep": deep, "cycle": cyclic, "nan": float("nan"), "inf": float("-inf"), 7: b"\xff", ("t",): {1, 2}}
    line = hostile_finding("x", evidence).as_json()
    data = strict_json(line)
    assert data["evidence"]["nan"] == "nan" and data["evidence"]["inf"] == "-inf" and data["evidence"]["7"] == "b'\\xff'"
    depth, node = 0, data["evidence"]["deep"]
    while isinstance(node, dict):
        depth, node = depth + 1, node["x"]
    assert depth < 20 and node == "[nested deeper than 16 levels]"
    assert json_safe("\u202e") == "\\u202e" and json_safe("\udcff") == "\\udcff" and json_safe("\x85") == "\\x85"


def test_the_console_line_escapes_bidi_and_c1_too() -> None:
    line = hostile_finding("\u202e\x85\x1b").console_line()
    assert line.isprintable() and "\\u202e\\x85\\x1b" in line


# -- exit codes -------------------------------------------------------------------------------------


def test_an_internal_error_is_exit_3_in_one_line_never_the_verdicts_1(tmp_path: Path, capsys, monkeypatch) -> None:
    path = write_lines(tmp_path / "f.jsonl", [GOOD])

    def broken(summary: Any) -> str:
        raise RuntimeError("boom \x1b[2J")

    monkeypatch.setattr(formats, "junit", broken)  # a bug in a renderer, as the UnicodeEncodeError was
    code, err = run_report(capsys, "report", str(path), "--format", "junit", "--fail-on", "high")
    assert code == 3
    # Located at the innermost frame of tlsgate's own code: where the report called the broken renderer.
    assert "internal error while making the report: RuntimeError: boom \\x1b[2J at tlsgate/report/cli.py:" in err
    assert "exit 3 (not a verdict)" in err and len(err.splitlines()) == 1


def test_tlsgate_main_catches_what_a_command_lets_escape(capsys, monkeypatch) -> None:
    from tlsgate.app import cli as app_cli

    def broken(args: Any) -> int:
        raise KeyError("x")

    monkeypatch.setattr(app_cli, "cmd_validate", broken)
    monkeypatch.setattr(sys, "argv", ["tlsgate"])
    assert app_cli.main(["validate", "policies/"]) == 3
    err = capsys.readouterr().err
    assert "internal error while running `tlsgate validate`: KeyError" in err and "Traceback" not in err


def test_help_documents_the_exit_codes(capsys) -> None:
    from tlsgate.app import cli as app_cli

    for argv in (["--help"], ["report", "--help"], ["diff", "--help"], ["run", "--help"]):
        with pytest.raises(SystemExit):
            app_cli.main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "2: " in text or "2 usage" in text, argv
        assert "3: internal error" in text or "3 internal error" in text, argv


# -- one problem, one name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("policies/default.yaml:5", "embedded:policies/default.yaml:5"),  # checkout vs an older installed tlsgate
        ("policies/app.yaml:12", "src/app/policies/app.yaml:12"),  # run from the checkout vs from its parent
        ("policies/app.yaml:12", "/builds/ci/app/policies/app.yaml:12"),
        ("tlsgate/policy.yaml:3", "policy.yaml:3"),  # outside the working directory vs inside it
        ("policies\\app.yaml:12", "policies/app.yaml:12"),
    ],
)
def test_the_same_rule_under_two_paths_is_one_problem(tmp_path: Path, capsys, one: str, other: str) -> None:
    assert rule_key(one) == rule_key(other)
    base = write_lines(tmp_path / "laptop.jsonl", [finding(rule=one)])
    new = write_lines(tmp_path / "ci.jsonl", [finding(rule=other, time="2026-11-24T09:00:00.000+00:00", port=9999)])
    code, _ = run_report(capsys, "diff", str(base), str(new), "--format", "json", "--out", str(tmp_path / "d.json"))
    data = strict_json((tmp_path / "d.json").read_text())
    assert code == 0 and (len(data["added"]), len(data["fixed"]), len(data["unchanged"])) == (0, 0, 1)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("policies/app.yaml:12", "policies/app.yaml:13"),  # another line
        ("policies/app.yaml:12", "policies/lab.yaml:12"),  # another file
        ("policies/app.yaml:12", "policies/app.yml:12"),
        ("policies/default.yaml:5", "policies/default.yaml"),
    ],
)
def test_different_rules_stay_different_problems(tmp_path: Path, capsys, one: str, other: str) -> None:
    assert rule_key(one) != rule_key(other)
    base = write_lines(tmp_path / "a.jsonl", [finding(rule=one)])
    new = write_lines(tmp_path / "b.jsonl", [finding(rule=other)])
    code, _ = run_report(capsys, "diff", str(base), str(new), "--format", "json", "--out", str(tmp_path / "d.json"))
    data = strict_json((tmp_path / "d.json").read_text())
    assert code == 0 and (len(data["added"]), len(data["fixed"])) == (1, 1)


def test_sarif_names_the_packaged_policy_as_the_checkouts_file_and_fingerprints_by_rule_key(tmp_path: Path, capsys) -> None:
    path = write_lines(tmp_path / "f.jsonl", [finding(rule="embedded:policies/default.yaml:5")])
    code, _ = run_report(capsys, "report", str(path), "--format", "sarif", "--out", str(tmp_path / "r.sarif"))
    (result,) = strict_json((tmp_path / "r.sarif").read_text())["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "policies/default.yaml"
    assert result["partialFingerprints"] == {"tlsgateIdentity/v2": "cleartext|plain_http|www.test|default.yaml:5|pixel-7"}


def test_the_checkouts_link_to_the_default_policy_has_the_packaged_policys_name_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` loads policies/ of the checkout, whose default.yaml links to the packaged copy that an
    installed tlsgate loads: one file, so one name, whatever the working directory."""
    link = REPO / "policies" / "default.yaml"
    assert link.is_symlink() and link.resolve() == embedded_policy().resolve()
    for cwd in (REPO, REPO / "policies", tmp_path):
        monkeypatch.chdir(cwd)
        assert display_path(link) == display_path(embedded_policy()) == "policies/default.yaml", cwd
    copy = tmp_path / "mine" / "default.yaml"  # a copy is the user's own file, named as any other
    copy.parent.mkdir()
    copy.write_text(link.read_text())
    assert display_path(copy) == "mine/default.yaml"
