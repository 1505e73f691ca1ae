"""The CLI as users run it: `tlsgate validate`, `tlsgate ca`, start-up failures."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from tests.harness import REPO


def tlsgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsgate", *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=60)


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout.strip()


def test_validate_accepts_shipped_policies() -> None:
    examples = sorted(str(p.relative_to(REPO)) for p in (REPO / "policies" / "examples").glob("*.yaml"))
    done = tlsgate("validate", "policies/", *examples)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "policies/: ok" in done.stderr


def test_validate_prints_file_line_column_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  mode: audit\nrules:\n  - hosts: ['ok.test', 'bad host']\n")
    good = tmp_path / "good.yaml"
    good.write_text("rules:\n  - hosts: ok.test\n    cleartext: allow\n")
    done = tlsgate("validate", str(good), str(bad), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "bad.yaml:2:9: defaults.mode must be one of enforce, report, not 'audit'",
        "bad.yaml:4:24: host pattern 'bad host' contains white space",
        "bad.yaml:4:5: warning: this rule sets nothing; its hosts get the defaults anyway",
    ]
    merged = tlsgate("validate", "--merge", str(good), str(bad), cwd=tmp_path)
    assert merged.returncode == 1
    assert "bad.yaml:4:13: host pattern 'ok.test' is already listed at good.yaml:2:12" in merged.stdout


def test_run_refuses_a_broken_policy_with_its_location(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - hosts: a.test\n    cleartext: nope\n")
    done = tlsgate("run", "--policy", str(bad), "--listen-port", "0", "--confdir", str(tmp_path / "certs"), cwd=tmp_path)
    assert done.returncode == 2, "bad input, not a verdict: a CI job must not read it as 'the gate failed'"
    assert "bad.yaml:3:16: rule.cleartext must be one of block, allow" in done.stderr
    assert not (tmp_path / "certs").exists(), "nothing is created for a run that cannot start"


def test_ca_create_show_export_agree_with_openssl(tmp_path: Path) -> None:
    confdir = tmp_path / "ca"
    created = tlsgate("ca", "create", "--confdir", str(confdir))
    assert created.returncode == 0 and "created a new CA" in created.stdout
    key = confdir / "mitmproxy-ca.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in created.stdout + created.stderr

    again = tlsgate("ca", "create", "--confdir", str(confdir))
    assert "already exists" in again.stdout

    shown = tlsgate("ca", "show", "--confdir", str(confdir))
    assert shown.returncode == 0
    cert_pem = confdir / "mitmproxy-ca-cert.pem"
    fingerprint = openssl("x509", "-in", str(cert_pem), "-noout", "-fingerprint", "-sha256").split("=", 1)[1]
    assert fingerprint in shown.stdout
    assert re.search(r"tlsgate CA [0-9a-f]{8}", shown.stdout)
    subject_hash = openssl("x509", "-in", str(cert_pem), "-noout", "-subject_hash_old")
    assert f"{subject_hash}.0" in shown.stdout

    out = tmp_path / "export"
    for fmt, name in (("pem", "tlsgate-ca.pem"), ("der", "tlsgate-ca.der"), ("android", f"{subject_hash}.0")):
        done = tlsgate("ca", "export", "--confdir", str(confdir), "--format", fmt, "--out", str(out))
        assert done.returncode == 0, done.stderr
        data = (out / name).read_bytes()
        cert = x509.load_der_x509_certificate(data) if fmt == "der" else x509.load_pem_x509_certificate(data)
        assert cert == x509.load_pem_x509_certificate(cert_pem.read_bytes())
        assert b"PRIVATE" not in data
    beside = tlsgate("ca", "export", "--confdir", str(confdir), cwd=tmp_path)  # no --out: next to the CA, not in the cwd
    assert beside.returncode == 0 and (confdir / "tlsgate-ca.pem").is_file() and not (tmp_path / "tlsgate-ca.pem").exists()


def test_ca_show_without_a_ca_says_how_to_create_one(tmp_path: Path) -> None:
    done = tlsgate("ca", "show", "--confdir", str(tmp_path / "none"))
    assert done.returncode == 1 and "tlsgate ca create" in done.stderr
