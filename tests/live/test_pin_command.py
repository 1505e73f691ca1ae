"""`tlsgate pin`: output pastes into a policy that validates and then lets the same server through."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.certgen import write_pem
from tests.harness import Upstream, curl
from tlsgate.tls.pins import spki_pin


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsgate", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def snippet_of(output: str) -> str:
    return output.split("# paste into a policy (checked by `tlsgate validate`):\n", 1)[1]


def test_pin_from_a_live_host_round_trips_through_validate_and_run(
    tlsgate, pki, https_upstream: Upstream, tmp_path: Path
) -> None:
    chain, root_file, _, _ = pki
    done = run(
        "pin",
        f"api.test:{https_upstream.port}",
        "--upstream-ca",
        str(root_file),
        "--resolve",
        f"api.test:{https_upstream.port}:127.0.0.1",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "chain verified" in done.stdout
    assert not (tmp_path / "certs").exists(), "an inspection command writes nothing"
    for cert in chain.certs:  # leaf, intermediate and the root the chain validated to
        assert spki_pin(cert) in done.stdout
    policy = tmp_path / "pinned.yaml"
    policy.write_text("version: 1\n" + snippet_of(done.stdout))
    validated = run("validate", str(policy), cwd=tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "warning" not in validated.stdout  # leaf + backup: no 'no backup pin' warning
    pins = re.findall(r"- (sha256/\S+)", snippet_of(done.stdout))
    assert pins == [spki_pin(chain.leaf.cert), spki_pin(chain.intermediate.cert)]

    gate = tlsgate(policy.read_text(), resolve={"api.test": https_upstream.port})
    ok = curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--cacert", str(gate.ca_cert))
    assert ok.status == 200 and gate.findings() == []


def test_pin_from_files(pki, tmp_path: Path) -> None:
    chain = pki[0]
    bundle = write_pem(tmp_path / "chain.pem", chain.leaf, chain.intermediate)
    done = run("pin", str(bundle), cwd=tmp_path)
    assert done.returncode == 0
    assert "[0] leaf" in done.stdout and "[1] intermediate" in done.stdout
    assert "hosts: [api.test]" in done.stdout


def test_pin_reports_an_unverified_chain(pki, https_upstream: Upstream, tmp_path: Path) -> None:
    done = run(
        "pin",
        f"api.test:{https_upstream.port}",
        "--resolve",
        f"api.test:{https_upstream.port}:127.0.0.1",
        cwd=tmp_path,
    )
    assert done.returncode == 0
    assert not (tmp_path / "certs").exists()
    assert "NOT VERIFIED" in done.stdout and "local issuer" in done.stdout


def test_pin_to_a_closed_port_fails_cleanly(tmp_path: Path) -> None:
    done = run("pin", "127.0.0.1:1", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
