"""Reports from real tlsgate runs, read by real consumers; `run --until-idle/--duration --fail-on`; the README's CI job.

Every report here is made by the `tlsgate` command line from findings a real
proxy wrote while real curl requests went through it, and then read by what
reads it in the wild: Chromium, the OASIS SARIF schema, two JUnit parsers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xunitparser
from junitparser import JUnitXml

from tests.certgen import make_chain
from tests.docs import section as docs_section
from tests.harness import REPO, Tlsgate, Upstream, curl, read_until_closed
from tests.live.test_log_injection import evil_sni_hello
from tests.report_consumers import (
    chromium_available,
    github_markdown,
    parse_html,
    read_junit,
    render_in_chromium,
    strict_json,
    validate_sarif,
)
from tests.unit.test_report_hostile import assert_inert, strings_in
from tlsgate.tls.pins import spki_pin

pytestmark = pytest.mark.live


def policy(pins: list[str] | None = None, extra_rules: str = "") -> str:
    """The app's policy: plain HTTP blocked, one CDN only watched, and api.test pinned when pins are given."""
    text = "version: 1\ndefaults:\n  mode: enforce\n  cleartext: block\ndevices:\n  127.0.0.1: pixel-lab\n"
    if pins:
        text += "pin_sets:\n  backend:\n    pins:\n" + "".join(f"      - {p}\n" for p in pins)
    text += 'rules:\n  - name: watched\n    hosts: "*.cdn.test"\n    mode: report\n'
    if pins:
        text += "  - hosts: api.test\n    pins: backend\n"
    return text + extra_rules


def tlsgate_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsgate", *args], capture_output=True, text=True, timeout=120, cwd=cwd or REPO)


def https(gate: Tlsgate, port: int, host: str = "api.test", path: str = "/") -> None:
    curl(gate.proxy_url, f"https://{host}:{port}{path}", "--cacert", str(gate.ca_cert))


def http(gate: Tlsgate, port: int, host: str, path: str = "/", *extra: str) -> int:
    return curl(gate.proxy_url, f"http://{host}:{port}{path}", *extra).status


def wait_exit(gate: Tlsgate, timeout: float) -> int:
    assert gate.proc is not None
    try:
        return gate.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"tlsgate did not stop by itself within {timeout}s:\n{gate.output}") from None


# -- every format from one real run --------------------------------------------------------------


def test_every_format_from_a_real_run_is_read_by_a_real_consumer(
    tlsgate, https_upstream: Upstream, http_upstream: Upstream, tmp_path: Path
) -> None:
    wrong_pins = [spki_pin(make_chain().leaf.cert), spki_pin(make_chain().leaf.cert)]
    gate = tlsgate(
        policy(wrong_pins),
        resolve={"api.test": https_upstream.port, "www.test": http_upstream.port, "img.cdn.test": http_upstream.port},
    )
    https(gate, https_upstream.port)  # pinned out: blocked, critical
    assert http(gate, http_upstream.port, "www.test", "/login", "-H", "Authorization: Bearer s3cr3t-t0ken") == 403
    assert http(gate, http_upstream.port, "img.cdn.test", "/a.png") == 200  # report mode
    findings = gate.wait_findings(3)
    gate.stop()
    assert {f["check"] for f in findings} >= {"pin", "cleartext"}
    source = str(gate.findings_path)
    out = tmp_path / "reports"

    done = tlsgate_cli("report", source, "--format", "sarif", "--out", str(out / "r.sarif"))
    assert done.returncode == 0, done.stderr
    sarif = json.loads((out / "r.sarif").read_text())
    validate_sarif(sarif)
    results = {(r["ruleId"], r["properties"]["host"]): r for r in sarif["runs"][0]["results"]}
    pin = results[("pin/pin_mismatch", "api.test")]
    assert pin["level"] == "error"
    assert pin["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("policy.yaml")
    assert pin["locations"][0]["physicalLocation"]["region"]["startLine"] == 16  # `- hosts: api.test`
    assert results[("cleartext/plain_http", "www.test")]["level"] == "error"  # credentials in cleartext: high
    assert "s3cr3t-t0ken" not in (out / "r.sarif").read_text()

    done = tlsgate_cli("report", source, "--format", "junit", "--out", str(out / "junit.xml"))
    assert done.returncode == 0, done.stderr
    xml = JUnitXml.fromfile(str(out / "junit.xml"))
    suite, masvs = list(xml)  # the device's findings, then its MASVS-NETWORK view
    assert suite.name == "pixel-lab" and masvs.name == "MASVS-NETWORK: pixel-lab"
    cases = {case.name: case for case in suite}
    assert not cases["pin api.test"].is_passed and not cases["cleartext www.test"].is_passed
    assert cases["cleartext img.cdn.test"].is_passed  # reported medium: not a failure at the default gate
    mastg_cases = {case.name.split(" ", 1)[0]: case for case in masvs}
    assert not mastg_cases["MASTG-TEST-0236"].is_passed  # cleartext observed: the view's own failure
    with (out / "junit.xml").open() as handle:
        _, result = xunitparser.parse(handle)
    assert result.testsRun == len(cases) + len(mastg_cases) and len(result.failures) == 2 + masvs.failures

    done = tlsgate_cli("report", source, "--format", "markdown", "--out", str(out / "summary.md"))
    summary = (out / "summary.md").read_text()
    assert (
        summary.startswith("### tlsgate: ❌ **FAIL**") and "pin/pin\\_mismatch" not in summary and "pin/pin_mismatch" in summary
    )

    assert tlsgate_cli("report", source, "--fail-on", "high", "--out", str(out / "x.md")).returncode == 1
    assert tlsgate_cli("report", source, "--format", "json", "--out", str(out / "r.json")).returncode == 0
    assert tlsgate_cli("report", str(REPO / "policies" / "default.yaml"), "--fail-on", "high").returncode == 2
    assert tlsgate_cli("report", "--format", "pdf", source).returncode == 2

    done = tlsgate_cli(
        "report", source, "--format", "html", "--out", str(out / "report.html"), "--title", "app 1.4.2 on pixel-lab"
    )
    assert done.returncode == 0, done.stderr
    if not chromium_available():
        pytest.skip("needs the Debian chromium package (/usr/bin/chromium) for the browser half")
    rendered = render_in_chromium(out / "report.html", tmp_path, "report-live.png")
    assert rendered.console == []
    assert rendered.dom.count("<svg") >= 4 and 'id="host-table"' in rendered.dom
    table = rendered.dom[rendered.dom.index('id="host-table"') :]
    for host in ("api.test", "www.test", "img.cdn.test"):
        assert f"<code>{host}</code>" in table
    assert "MISMATCH" in table and "cleartext http" in table


# -- what a hostile client sends reaches every format escaped ------------------------------------


def test_a_hostile_sni_and_user_agent_go_through_the_real_sink_and_every_format_stays_valid_and_inert(
    tlsgate, https_upstream: Upstream, http_upstream: Upstream, tmp_path: Path
) -> None:
    """The issue's two clients, for real: a ClientHello whose SNI carries ANSI escapes, BEL, CR/LF, a
    Markdown link and a bidi override, and a plain-HTTP request whose User-Agent has bytes 0xff 0xfe."""
    gate = tlsgate(resolve={"api.test": https_upstream.port, "www.test": http_upstream.port})
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        target = f"api.test:{https_upstream.port}".encode()
        sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(evil_sni_hello("api.test\x1b[31m\x07\r\n[x](javascript:alert(1))\u202e<marquee>".encode()))
        read_until_closed(sock)
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        target = f"www.test:{http_upstream.port}".encode()
        sock.sendall(
            b"GET http://" + target + b"/login HTTP/1.1\r\nHost: " + target + b"\r\nUser-Agent: app/1.0 \xff\xfe\x1b[2J\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")
    findings = gate.wait_findings(2)
    gate.stop()
    assert {f["check"] for f in findings} >= {"cleartext", "client_ciphers"}
    raw = gate.findings_path.read_bytes()
    assert raw.isascii(), "the sink writes escapes, not raw bytes"
    assert all(s.isprintable() for line in raw.decode().splitlines() for s in strings_in(json.loads(line)))
    # The User-Agent's bytes, escaped visibly (then JSON-escaped: one backslash is two), not as \udcff escapes.
    assert b'"user_agent":"app/1.0 \\\\udcff\\\\udcfe\\\\x1b[2J"' in raw

    source, out = str(gate.findings_path), tmp_path / "out"
    out.mkdir()
    for fmt in ("html", "junit", "sarif", "markdown", "json"):
        done = tlsgate_cli("report", source, "--format", fmt, "--out", str(out / f"r.{fmt}"))
        assert done.returncode == 0, done.stderr  # was 1 (UnicodeEncodeError), the gate's code
        assert_inert(done.stderr, "stderr")
        text = (out / f"r.{fmt}").read_bytes().decode("utf-8")
        assert_inert(text, fmt, "\n\t" if fmt == "junit" else "\n")
    read_junit(out / "r.junit")
    validate_sarif(strict_json((out / "r.sarif").read_text()))
    strict_json((out / "r.json").read_text())
    assert not {"a", "img", "marquee"} & {tag for tag, _ in github_markdown((out / "r.markdown").read_text()).tags}
    markup = parse_html((out / "r.html").read_text())
    assert len(markup.scripts) == 1 and "marquee" not in {tag for tag, _ in markup.tags}
    clean = tmp_path / "clean.jsonl"
    clean.write_text("")
    for fmt in ("text", "markdown", "json"):
        done = tlsgate_cli("diff", str(clean), source, "--format", fmt)
        assert done.returncode == 0, done.stderr
        assert_inert(done.stdout, f"diff {fmt}")
    # the SNI's host name is kept up to its first character no host name has; the rest is withheld, never echoed
    shown = tlsgate_cli("diff", str(clean), source).stdout
    assert "api.test[REDACTED]" in shown and "\x1b" not in shown and "javascript:" not in shown


# -- diff across two builds ----------------------------------------------------------------------


def test_diff_between_two_app_builds_shows_the_new_token_over_http_and_what_was_fixed(
    tlsgate, https_upstream: Upstream, http_upstream: Upstream, tmp_path: Path
) -> None:
    resolve = {"api.test": https_upstream.port, "www.test": http_upstream.port, "img.cdn.test": http_upstream.port}
    base, new = tmp_path / "build-1.4.1.jsonl", tmp_path / "build-1.4.2.jsonl"

    gate = tlsgate(policy(), resolve=resolve, args=("--findings", str(base)))  # build 1.4.1
    https(gate, https_upstream.port)
    assert http(gate, http_upstream.port, "img.cdn.test", "/old-banner.png") == 200  # reported; 1.4.2 moves it to https
    gate.wait_findings(0)
    assert len(base.read_text().splitlines()) == 1
    gate.stop()

    gate = tlsgate(policy(), resolve=resolve, args=("--findings", str(new)))  # build 1.4.2
    https(gate, https_upstream.port)
    assert http(gate, http_upstream.port, "www.test", "/v2/sync?access_token=abc123") == 403
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not new.read_text().strip():
        time.sleep(0.05)
    gate.stop()

    done = tlsgate_cli("diff", str(base), str(new), "--format", "json", "--out", str(tmp_path / "d.json"))
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "d.json").read_text())
    assert [(g["rule_id"], g["host"], g["severity"]) for g in data["added"]] == [("cleartext/plain_http", "www.test", "high")]
    assert [(g["rule_id"], g["host"]) for g in data["fixed"]] == [("cleartext/plain_http", "img.cdn.test")]
    assert "abc123" not in (tmp_path / "d.json").read_text()
    gated = tlsgate_cli("diff", str(base), str(new), "--fail-on", "new:high")
    assert gated.returncode == 1 and "NEW (1)" in gated.stdout and "FIXED (1)" in gated.stdout
    assert tlsgate_cli("diff", str(new), str(new), "--fail-on", "new:low").returncode == 0


# -- run --until-idle / --duration ---------------------------------------------------------------


def test_run_until_idle_stops_by_itself_and_exits_1_on_a_blocked_request(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(policy(), resolve={"www.test": http_upstream.port}, args=("--until-idle", "2s", "--fail-on", "high"))
    assert http(gate, http_upstream.port, "www.test", "/plain") == 403
    assert wait_exit(gate, 30) == 1
    assert "FAIL: 1 finding(s) this run, 1 fail the gate" in gate.output


def test_run_until_idle_with_clean_traffic_exits_0_and_ignores_older_runs_in_the_file(
    tlsgate, https_upstream: Upstream, http_upstream: Upstream, tmp_path: Path
) -> None:
    findings = tmp_path / "shared.jsonl"
    findings.write_text(json.dumps({"check": "cleartext", "action": "blocked", "severity": "high", "host": "old.test"}) + "\n")
    gate = tlsgate(
        policy(),
        resolve={"api.test": https_upstream.port},
        args=("--findings", str(findings), "--until-idle", "2s", "--fail-on", "medium"),
    )
    https(gate, https_upstream.port)
    started = time.monotonic()
    assert wait_exit(gate, 30) == 0
    assert time.monotonic() - started < 25
    assert "PASS: 0 finding(s) this run" in gate.output


def test_run_duration_stops_after_the_time_even_with_traffic(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(policy(), resolve={"img.cdn.test": http_upstream.port}, args=("--duration", "4s", "--fail-on", "high"))
    started = time.monotonic()
    while gate.proc and gate.proc.poll() is None and time.monotonic() - started < 20:
        http(gate, http_upstream.port, "img.cdn.test", "/poll")  # reported medium: below the gate
        time.sleep(0.3)
    assert wait_exit(gate, 30) == 0
    assert "stopping: ran for 4s" in gate.output


def test_run_rejects_bad_durations_and_duration_with_workers(tmp_path: Path) -> None:
    bad = tlsgate_cli("run", "--until-idle", "soon", "--confdir", str(tmp_path / "certs"), "--findings", "", cwd=tmp_path)
    assert bad.returncode != 0 and "not a duration" in bad.stdout + bad.stderr
    workers = tlsgate_cli("run", "--duration", "5s", "--workers", "2", "--confdir", str(tmp_path / "certs"), cwd=tmp_path)
    assert workers.returncode == 2 and "--workers" in workers.stderr


# -- the README's CI job -------------------------------------------------------------------------


def _job_env(tmp_path: Path, pki, app_tests: str, port: int, resolve: dict[str, int]) -> dict[str, str]:
    _, root_file, _, _ = pki
    shim = tmp_path / "bin" / "tlsgate"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m tlsgate "$@"\n')  # `tlsgate` as installed, from this checkout
    shim.chmod(0o755)
    (tmp_path / "policy.yaml").write_text(policy())
    args = f"--confdir {tmp_path / 'certs'} --upstream-ca {root_file} --policy {tmp_path / 'policy.yaml'}"
    args += "".join(f" --resolve {host}:{p}:127.0.0.1" for host, p in resolve.items())
    return {
        **os.environ,
        "PATH": f"{shim.parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "APP_TESTS": app_tests,
        "PROXY_PORT": str(port),
        "IDLE": "2s",
        "OUT": str(tmp_path / "out"),
        "TLSGATE_ARGS": args,
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("leaks_token", [False, True], ids=["clean-build", "token-over-http"])
def test_the_readme_ci_job_runs_reports_and_gates(
    tmp_path: Path, pki, https_upstream: Upstream, http_upstream: Upstream, leaks_token: bool
) -> None:
    script = (REPO / "examples" / "ci-job.sh").read_text()
    assert script.strip() in docs_section("In CI"), "the docs (In CI) must show examples/ci-job.sh verbatim"
    port = _free_port()
    ca = tmp_path / "certs" / "mitmproxy-ca-cert.pem"
    app_tests = f"curl -sS -o /dev/null --cacert {ca} https://api.test:{https_upstream.port}/feed"
    if leaks_token:
        app_tests += f" && curl -sS -o /dev/null http://www.test:{http_upstream.port}/sync?token=abc"
    env = _job_env(tmp_path, pki, app_tests, port, {"api.test": https_upstream.port, "www.test": http_upstream.port})
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "ci-job.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    out = tmp_path / "out"
    log = (out / "tlsgate.log").read_text() if (out / "tlsgate.log").exists() else ""
    assert done.returncode == (1 if leaks_token else 0), done.stdout + done.stderr + log
    assert https_upstream.requests, "the app's tests went through the proxy"
    for name in ("tlsgate-junit.xml", "tlsgate.sarif", "tlsgate-report.html", "tlsgate.json"):
        assert (out / name).stat().st_size > 0, name
    validate_sarif(json.loads((out / "tlsgate.sarif").read_text()))
    JUnitXml.fromfile(str(out / "tlsgate-junit.xml"))
    step = (tmp_path / "step-summary.md").read_text()
    assert ("❌ **FAIL**" in step) is leaks_token and ("✅ **PASS**" in step) is not leaks_token
    assert ("FAIL: 1 finding(s) this run" in log) is leaks_token


def test_the_readme_ci_job_tells_a_run_that_never_started_from_a_verdict(tmp_path: Path, pki) -> None:
    """A policy with an error: `tlsgate run` exits 2 (it was 1, "the gate failed"), and the job stops there
    with that code and says why, instead of writing PASS reports from an empty findings file."""
    env = _job_env(tmp_path, pki, "true", _free_port(), {})
    (tmp_path / "policy.yaml").write_text("version: 1\nrules:\n  - hosts: api.test\n    cleartext: nope\n")
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "ci-job.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "policy.yaml:4:16: rule.cleartext must be one of block, allow" in done.stdout
    assert "tlsgate run never ran properly (exit 2): no verdict" in done.stderr
    assert not (tmp_path / "out" / "tlsgate-junit.xml").exists() and not (tmp_path / "step-summary.md").exists()
