"""What a mitmproxy user expects of `tlsgate run`, and what an operator trips over at start-up."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs import section as docs_section
from tests.harness import REPO, Tlsgate, Upstream, curl, eventually, free_port

TOKEN = "tok3nSuperSecretValue91"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXNlY3JldA"
COOKIE = "sid=cookieSecret4711"


def leaked(text: str) -> list[str]:
    return [value for value in (TOKEN, BEARER, "cookieSecret4711") if value in text]


def planted(gate: Tlsgate, port: int) -> None:
    result = curl(
        gate.proxy_url,
        f"http://api.test:{port}/login?token={TOKEN}&page=2",
        "-H", f"Authorization: Bearer {BEARER}", "-H", f"Cookie: {COOKIE}",
    )  # fmt: skip
    assert result.status == 403, result


def test_per_flow_lines_are_mitmdumps_and_carry_no_secrets(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(resolve={"api.test": http_upstream.port}, args=("--set", "flow_detail=2"))
    planted(gate, http_upstream.port)
    gate.wait_for(r"<< 403 Forbidden")
    line = gate.wait_for(rf"127\.0\.0\.1:\d+: GET http://api\.test:{http_upstream.port}/login\?token=\[REDACTED\]&page=2").group(
        0
    )
    assert line
    assert gate.wait_for(r"^\s+Authorization: \[REDACTED\] \(Bearer, \d+ chars\)$")
    assert gate.wait_for(r"^\s+X-Tlsgate-Check: cleartext$")  # the response headers, as flow_detail=2 shows them
    assert leaked(gate.output) == [], "a planted secret reached the console"
    assert http_upstream.connections == 0


def test_quiet_drops_flow_lines_and_bodies_are_refused_before_the_banner(
    tlsgate, http_upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    quiet = Tlsgate(tmp_path, ["-q", "--listen-port", str(port), "--resolve", f"api.test:{http_upstream.port}:127.0.0.1"])
    quiet.start(port=port)  # -q silences the "listening" line the harness usually waits for
    try:
        planted(quiet, http_upstream.port)
        quiet.wait_findings(1)
        assert not re.search(r"<< 403|GET http://api\.test|listening at", quiet.output), quiet.output
    finally:
        quiet.stop()

    done = subprocess.run(
        [sys.executable, "-m", "tlsgate", "run", "--listen-port", "0", "--metrics-port", "-1", "--findings", "",
         "--confdir", str(tmp_path / "certs3"), "--set", "flow_detail=3"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "flow_detail 3 prints request and response bodies" in done.stderr
    assert "proxy:" not in done.stdout and "listening" not in done.stdout + done.stderr, "refused before the banner"


def test_a_taken_port_is_refused_in_tlsgates_words_before_anything_is_created(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags in (["--listen-port", str(port), "--metrics-port", "-1"], ["--listen-port", "0", "--metrics-port", str(port)]):
            done = subprocess.run(
                [sys.executable, "-m", "tlsgate", "run", *flags, "--findings", "", "--confdir", str(tmp_path / "certs")],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
            )  # fmt: skip
            assert done.returncode == 2, done  # could not start: not the gate's 1
            assert (
                f"tlsgate: cannot listen on 127.0.0.1:{port}" in done.stderr and flags[flags.index(str(port)) - 1] in done.stderr
            )
            assert "--mode regular@" not in done.stderr + done.stdout and "proxy:" not in done.stdout
    assert not (tmp_path / "certs").exists(), "no CA is created for a run that cannot start"


def stock_commands() -> list[str]:
    """The README's "With stock mitmproxy" commands, exactly as written: the installed one, then the checkout's."""
    section = docs_section("With stock mitmproxy")
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        found = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and "mitmdump" in line]
        assert len(found) == 1, found
        lines += found
    assert len(lines) == 2, "the README shows the stock mitmproxy command installed and from a checkout"
    return lines


def as_run_here(line: str, moved: dict[str, str], venv_bin: Path) -> list[str]:
    """`line` for bash, as written but for the settings a test cannot share (`moved`), with the checkout's
    `.venv/bin/` being the venv this test runs in; `$(...)` is left to bash, as in a user's shell."""
    words = []
    for word in shlex.split(line):
        key = word.partition("=")[0]
        if key in moved:
            word = f"{key}={moved[key]}"
        if word.startswith("$(") and word.endswith(")"):
            words.append('"' + word.replace(".venv/bin/", shlex.quote(f"{venv_bin}/")) + '"')
        else:
            words.append(shlex.quote(str(venv_bin / word.removeprefix(".venv/bin/")) if word.startswith(".venv/bin/") else word))
    return ["bash", "-c", "exec " + " ".join(words) + ' "$@"', "bash"]


def test_the_readmes_stock_mitmdump_command_uses_tlsgates_ca_and_listens_on_loopback(
    tmp_path: Path, http_upstream: Upstream
) -> None:
    """The checkout's command (tests/live/test_wheel.py runs the installed one from a wheel)."""
    line = stock_commands()[1]
    argv = shlex.split(line)
    assert argv[0] == ".venv/bin/mitmdump" and argv[1:3] == ["-s", "$(.venv/bin/tlsgate script-path)"], argv
    home = tmp_path / "home"
    assert "confdir=certs" in argv and "--listen-host" in argv and argv[argv.index("--listen-host") + 1] == "127.0.0.1"
    # As written, run from the checkout (its `certs/` is the CA `make run` uses). Only what a test cannot share is
    # changed: the port (0: a free one), the CA and findings (to tmp), the metrics endpoint (a free port), names.
    moved = {"confdir": str(tmp_path / "certs"), "tlsgate_findings": str(tmp_path / "f.jsonl")}
    overrides = ["--listen-port", "0", "--set", "tlsgate_metrics_listen=127.0.0.1:0"]
    overrides += ["--set", f"tlsgate_resolve=api.test:{http_upstream.port}:127.0.0.1"]
    command = [*as_run_here(line, moved, Path(sys.executable).parent), *overrides]
    gate = Tlsgate(REPO, command=command, env={"HOME": str(home)})
    gate.findings_path = tmp_path / "f.jsonl"
    gate.start()
    try:
        assert gate.wait_for(r"HTTP\(S\) proxy listening at 127\.0\.0\.1:\d+")
        assert gate.wait_for(r"Loading script .*/tlsgate/app/mitmproxy_script/tlsgate_addons\.py")
        blocked = curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/")
        assert blocked.status == 403 and blocked.headers["x-tlsgate-check"] == "cleartext", blocked
        assert blocked.headers["x-tlsgate-rule"] == "policies/default.yaml:5", blocked.headers  # the policies/ set, as run
        assert http_upstream.connections == 0
        assert (tmp_path / "certs" / "mitmproxy-ca-cert.pem").is_file()
        assert not (home / ".mitmproxy").exists(), "mitmdump must not make a second CA in ~/.mitmproxy"
    finally:
        gate.stop()


def test_set_confdir_as_mitmdump_users_give_it_serves_the_ca_the_banner_names(
    tmp_path: Path, https_upstream: Upstream, pki: tuple[object, Path, Path, Path]
) -> None:
    """`--set confdir=DIR` reached mitmproxy after tlsgate had loaded the default CA: mitmproxy minted and served
    a second CA in DIR while the banner named the first, and HTTPS checked against the named one failed."""
    _, root_file, _, _ = pki
    default, chosen = tmp_path / "default-ca", tmp_path / "chosen-ca"
    command = [
        sys.executable, "-m", "tlsgate", "run", "--listen-port", "0", "--metrics-port", "-1", "--findings", "",
        "--upstream-ca", str(root_file), "--resolve", f"api.test:{https_upstream.port}:127.0.0.1",
        "--set", f"confdir={chosen}",
    ]  # fmt: skip
    gate = Tlsgate(tmp_path, command=command, env={"TLSGATE_CONFDIR": str(default)}).start()
    try:
        named = Path(gate.wait_for(r"^CA cert:\s+(\S+) \(SHA-256").group(1))
        assert named == chosen / "mitmproxy-ca-cert.pem", gate.output
        ok = curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--cacert", str(named))
        assert ok.status == 200 and "https-upstream" in ok.body, (ok.stderr, gate.output)
        assert not default.exists(), "no CA is made in the default directory"
    finally:
        gate.stop()

    both = subprocess.run(
        [*command[:-2], "--confdir", str(default), "--set", f"confdir={chosen}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert both.returncode == 2 and "name two CA directories" in both.stderr, both.stderr
    assert not default.exists() and "proxy:" not in both.stdout


VERDICT_POLICY = """\
version: 1
rules:
  - hosts: report.test
    mode: report
"""
VERDICTS = {"blocked": "api.test", "reported": "report.test"}  # both cleartext: one enforced, one report-mode


@pytest.mark.parametrize("findings", ["PATH", "-", ""])
@pytest.mark.parametrize("loudness", ["", "-q", "-v"])
def test_every_verdict_is_recorded_somewhere_whatever_the_loudness(
    tmp_path: Path, http_upstream: Upstream, loudness: str, findings: str
) -> None:
    """`-q` hid tlsgate's own verdict lines too, so `-q --findings ''` left a blocked request without a trace.
    Decided: the console shows verdict lines as it shows other lines of their level, except when it is their only
    record (`--findings ''`): then they are shown whatever `-q` says."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(VERDICT_POLICY)
    port = free_port()
    args = ["--listen-port", str(port), "--policy", str(policy), "--findings", findings.replace("PATH", "f.jsonl")]
    args += [f"--resolve={host}:{http_upstream.port}:127.0.0.1" for host in VERDICTS.values()]
    gate = Tlsgate(tmp_path, [*args, *([loudness] if loudness else [])])
    gate.findings_path = tmp_path / "f.jsonl"
    gate.start(port=port)
    try:
        assert curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/").status == 403
        assert curl(gate.proxy_url, f"http://report.test:{http_upstream.port}/").status == 200
        if findings == "PATH":
            gate.wait_findings(2)
        elif findings == "-":
            assert eventually(lambda: sum(line.startswith('{"check":') for line in gate.lines) >= 2), gate.output
        else:
            for action, host in VERDICTS.items():
                gate.wait_for(rf"tlsgate: \[\w+\] {action} cleartext {host}:")
    finally:
        gate.stop()
    recorded = gate.findings() if findings == "PATH" else [json.loads(x) for x in gate.lines if x.startswith('{"check":')]
    console = [line for line in gate.lines if re.search(r"tlsgate: \[\w+\] (blocked|reported) ", line)]
    for action, host in VERDICTS.items():
        in_findings = any(f["action"] == action and f["host"] == host for f in recorded)
        on_console = any(f"] {action} cleartext {host}:" in line for line in console)
        assert in_findings or on_console, f"{action} {host}: no trace with {loudness or '(default)'} --findings {findings!r}"
        assert in_findings == (findings != ""), recorded
        assert on_console == (findings == "" or loudness != "-q"), (loudness, findings, gate.output)
    assert http_upstream.connections == 1  # the blocked request never reached it, the reported one did
