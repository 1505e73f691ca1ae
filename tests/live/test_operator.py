"""What a mitmproxy user expects of `tlsgate run`, and what an operator trips over at start-up."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO, Tlsgate, Upstream, curl, free_port

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
    line = gate.wait_for(rf"127\.0\.0\.1:\d+: GET http://api\.test:{http_upstream.port}/login\?token=\[REDACTED\]&page=2").group(0)
    assert line
    assert gate.wait_for(r"^\s+Authorization: \[REDACTED\] \(Bearer, \d+ chars\)$")
    assert gate.wait_for(r"^\s+X-Tlsgate-Check: cleartext$")  # the response headers, as flow_detail=2 shows them
    assert leaked(gate.output) == [], "a planted secret reached the console"
    assert http_upstream.connections == 0


def test_quiet_drops_flow_lines_and_bodies_are_refused_before_the_banner(tlsgate, http_upstream: Upstream, tmp_path: Path) -> None:
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
        [sys.executable, "-m", "proxy", "run", "--listen-port", "0", "--metrics-port", "-1", "--findings", "",
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
                [sys.executable, "-m", "proxy", "run", *flags, "--findings", "", "--confdir", str(tmp_path / "certs")],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
            )  # fmt: skip
            assert done.returncode == 2, done  # could not start: not the gate's 1
            assert f"tlsgate: cannot listen on 127.0.0.1:{port}" in done.stderr and flags[flags.index(str(port)) - 1] in done.stderr
            assert "--mode regular@" not in done.stderr + done.stdout and "proxy:" not in done.stdout
    assert not (tmp_path / "certs").exists(), "no CA is created for a run that cannot start"


def stock_command() -> list[str]:
    """The README's "With stock mitmproxy" command, exactly as written."""
    text = (REPO / "README.md").read_text()
    section = text.split("## With stock mitmproxy", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README shows the stock mitmproxy command"
    lines = [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip() and "mitmdump" in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_the_readmes_stock_mitmdump_command_uses_tlsgates_ca_and_listens_on_loopback(tmp_path: Path, http_upstream: Upstream) -> None:
    argv = stock_command()
    assert argv[0] == ".venv/bin/mitmdump", argv
    argv[0] = str(Path(sys.executable).parent / "mitmdump")
    home = tmp_path / "home"
    assert "confdir=certs" in argv and "--listen-host" in argv and argv[argv.index("--listen-host") + 1] == "127.0.0.1"
    # As written, run from the checkout (its `certs/` is the CA `make run` uses). Only what a test cannot share is
    # changed: the port (0: a free one), the CA and findings (to tmp), the metrics endpoint (a free port), names.
    moved = {"confdir": str(tmp_path / "certs"), "tlsgate_findings": str(tmp_path / "f.jsonl")}
    argv = [f"{k}={moved[k]}" if (k := item.partition("=")[0]) in moved else item for item in argv]
    overrides = ["--listen-port", "0", "--set", "tlsgate_metrics_listen=127.0.0.1:0"]
    overrides += ["--set", f"tlsgate_resolve=api.test:{http_upstream.port}:127.0.0.1"]
    gate = Tlsgate(REPO, command=[*argv, *overrides], env={"HOME": str(home)})
    gate.findings_path = tmp_path / "f.jsonl"
    gate.start()
    try:
        assert gate.wait_for(r"HTTP\(S\) proxy listening at 127\.0\.0\.1:\d+")
        blocked = curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/")
        assert blocked.status == 403 and blocked.headers["x-tlsgate-check"] == "cleartext", blocked
        assert blocked.headers["x-tlsgate-rule"] == "policies/default.yaml:5", blocked.headers  # the policies/ set, as run
        assert http_upstream.connections == 0
        assert (tmp_path / "certs" / "mitmproxy-ca-cert.pem").is_file()
        assert not (home / ".mitmproxy").exists(), "mitmdump must not make a second CA in ~/.mitmproxy"
    finally:
        gate.stop()
