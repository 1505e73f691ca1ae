"""STARTTLS end to end: after the upgrade the stream is judged as direct TLS, never relayed blind.

A real SMTP server that really upgrades (Python ssl on the accepted socket,
certificates from tests/certgen.py) records what it received before TLS and,
apart, the plaintext it received over TLS. A real client does EHLO, STARTTLS,
a TLS handshake trusting only tlsgate's CA, EHLO, AUTH PLAIN. So "intercepted"
means the client's handshake succeeded against tlsgate's CA alone, and
"blocked" means the server completed no handshake and received not one byte
over TLS.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certgen import Chain, make_chain, make_leaf, write_server_files
from tests.harness import eventually
from tests.plainpeers import RecordingServer, smtp_auth, smtp_starttls
from tlsgate.tls.pins import spki_pin

PINNED = """\
version: 1
defaults:
  mode: enforce
rules:
  - name: mail pinned
    hosts: mail.test
    pins: [{pin}]
"""

REPORTED = """\
version: 1
defaults:
  mode: report
rules:
  - name: mail pinned
    hosts: mail.test
    pins: [{pin}]
"""


@pytest.fixture
def mail_tls(pki: tuple[Chain, Path, Path, Path], tmp_path: Path) -> ssl.SSLContext:
    """The SMTP server's TLS: a leaf for mail.test under the test PKI tlsgate trusts upstream."""
    chain, _, _, _ = pki
    leaf = make_leaf(chain.intermediate, ("mail.test",), ("127.0.0.1",))
    cert_file, key_file = write_server_files(tmp_path, leaf, chain.intermediate, name="mail")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def mail(mail_tls: ssl.SSLContext) -> Iterator[RecordingServer]:
    with RecordingServer("smtp", tls=mail_tls) as server:
        yield server


def wrong_pin() -> str:
    return spki_pin(make_chain(dns=("other.test",)).leaf.cert)


def test_upgraded_smtp_is_intercepted_and_auth_reaches_the_server_over_tls(tlsgate, mail: RecordingServer) -> None:
    gate = tlsgate(resolve={"mail.test": mail.port})
    seen = smtp_starttls(
        f"mail.test:{mail.port}", gate.ca_cert, "mail.test", "alice", "s3cret", connect_proxy=f"127.0.0.1:{gate.port}"
    )
    assert seen.extra["starttls_accepted"] and seen.extra["tls"], seen.as_dict()
    assert seen.extra["authenticated"] is True and seen.extra["peer_issuer"] == "tlsgate", seen.as_dict()
    assert eventually(lambda: b"QUIT" in bytes(mail.received_tls))
    assert bytes(mail.received) == b"EHLO client.test\r\nSTARTTLS\r\n"  # nothing but negotiation in the clear
    assert bytes(mail.received_tls).startswith(b"EHLO client.test\r\nAUTH PLAIN ")
    assert mail.tls_attempts == mail.tls_established == 1
    assert not [f for f in gate.findings() if f["check"] == "cleartext"], gate.findings()
    metrics = gate.scrape()
    assert 'tlsgate_upstream_connections_total{check="none",decision="allowed",transport="tcp"} 1.0' in metrics, metrics


def test_upstream_pin_mismatch_after_starttls_is_blocked_before_one_byte_over_tls(tlsgate, mail: RecordingServer) -> None:
    gate = tlsgate(PINNED.format(pin=wrong_pin()), resolve={"mail.test": mail.port})
    seen = smtp_starttls(
        f"mail.test:{mail.port}", gate.ca_cert, "mail.test", "alice", "s3cret", connect_proxy=f"127.0.0.1:{gate.port}"
    )
    assert seen.extra["starttls_accepted"], seen.as_dict()
    assert seen.closed and not seen.timeout and seen.extra.get("authenticated") is not True, seen.as_dict()
    findings = gate.wait_findings(1)
    assert mail.tls_attempts == 1 and mail.tls_established == 0  # tlsgate aborted the handshake at the pin check
    assert bytes(mail.received_tls) == b""  # not the EHLO, not the AUTH: nothing after the handshake attempt
    assert bytes(mail.received) == b"EHLO client.test\r\nSTARTTLS\r\n"
    (finding,) = findings
    assert finding["check"] == "pin" and finding["action"] == "blocked", finding
    assert finding["host"] == "mail.test" and finding["port"] == mail.port
    assert finding["rule"] == "policy.yaml:5" and finding["evidence"]["kind"] == "pin_mismatch"
    assert finding["remedy"]
    # the client is told why, in SMTP, over the TLS it set up with tlsgate
    assert seen.extra["tls"] and seen.extra["after_tls"].startswith(
        "421 4.7.0 tlsgate refused the server after STARTTLS: pin (rule policy.yaml:5)"
    )
    assert "s3cret" not in json.dumps(findings)


def test_report_mode_forwards_a_pin_mismatch_after_starttls_and_records_it(tlsgate, mail: RecordingServer) -> None:
    gate = tlsgate(REPORTED.format(pin=wrong_pin()), resolve={"mail.test": mail.port})
    seen = smtp_starttls(f"mail.test:{mail.port}", gate.ca_cert, "mail.test", connect_proxy=f"127.0.0.1:{gate.port}")
    assert seen.extra["authenticated"] is True, seen.as_dict()
    (finding,) = gate.wait_findings(1)
    assert finding["check"] == "pin" and finding["action"] == "reported" and finding["host"] == "mail.test"
    assert eventually(lambda: b"AUTH PLAIN" in bytes(mail.received_tls))


@pytest.mark.parametrize("via", ["connect", "socks5"])
def test_client_that_never_upgrades_is_still_blocked_at_auth(tlsgate, mail: RecordingServer, via: str) -> None:
    args = ("--mode", "socks5") if via == "socks5" else ()
    gate = tlsgate(resolve={"mail.test": mail.port}, args=args)
    proxy = {"socks5" if via == "socks5" else "connect_proxy": f"127.0.0.1:{gate.port}"}
    seen = smtp_auth(f"mail.test:{mail.port}", "alice", "s3cret", **proxy)
    assert seen.extra["starttls_offered"] and seen.closed and seen.extra.get("authenticated") is not True, seen.as_dict()
    (finding,) = gate.wait_findings(1)
    assert bytes(mail.received) == b"EHLO client.test\r\n" and mail.tls_attempts == 0
    assert finding["check"] == "cleartext" and finding["action"] == "blocked"
    assert finding["evidence"]["starttls_offered_unused"] is True


def test_upgrade_over_socks5_is_intercepted(tlsgate, mail: RecordingServer) -> None:
    gate = tlsgate(resolve={"mail.test": mail.port}, args=("--mode", "socks5"))
    seen = smtp_starttls(f"mail.test:{mail.port}", gate.ca_cert, "mail.test", socks5=f"127.0.0.1:{gate.port}")
    assert seen.extra["tls"] and seen.extra["authenticated"] is True, seen.as_dict()
    assert eventually(lambda: b"AUTH PLAIN" in bytes(mail.received_tls))
    assert not [f for f in gate.findings() if f["check"] == "cleartext"]


PROBED = """\
version: 1
rules:
  - name: mail probed
    hosts: mail.test
    client:
      probes: [self_signed]
"""


def test_client_audit_probes_the_upgraded_connection_and_catches_an_app_that_verifies_nothing(
    tlsgate, mail: RecordingServer
) -> None:
    gate = tlsgate(PROBED, resolve={"mail.test": mail.port})
    seen = smtp_starttls(f"mail.test:{mail.port}", None, "mail.test", "alice", "s3cret", connect_proxy=f"127.0.0.1:{gate.port}")
    assert seen.extra["tls"] and seen.closed and seen.extra.get("authenticated") is not True, seen.as_dict()
    (finding,) = gate.wait_findings(1)
    assert finding["check"] == "client_probe" and finding["action"] == "blocked" and finding["severity"] == "critical"
    assert finding["host"] == "mail.test" and finding["rule"] == "policy.yaml:3"
    assert bytes(mail.received_tls) == b"" and mail.tls_established == 0  # a probe never involves the server
    assert "s3cret" not in json.dumps(finding)


def test_client_audit_records_a_probe_the_upgrading_app_refused(tlsgate, mail: RecordingServer) -> None:
    gate = tlsgate(PROBED, resolve={"mail.test": mail.port})
    seen = smtp_starttls(f"mail.test:{mail.port}", gate.ca_cert, "mail.test", connect_proxy=f"127.0.0.1:{gate.port}")
    assert not seen.extra["tls"] and "CERTIFICATE_VERIFY_FAILED" in (seen.extra["tls_error"] or ""), seen.as_dict()
    (finding,) = gate.wait_findings(1)
    assert finding["check"] == "client_probe" and finding["action"] == "passed" and finding["host"] == "mail.test"
    assert bytes(mail.received_tls) == b""
