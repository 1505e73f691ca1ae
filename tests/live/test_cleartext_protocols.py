"""Non-HTTP cleartext end to end: real tlsgate, real sockets through CONNECT and SOCKS5, recording fake servers.

The servers count every byte they receive, so "blocked" here means the
upstream got nothing from the client (or, for SMTP, exactly the EHLO that
STARTTLS needs, and not the AUTH), and the client saw the connection close
within its bounded wait instead of hanging.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys

import pytest

from tests.certgen import make_leaf, write_server_files
from tests.harness import REPO, eventually
from tests.plainpeers import RecordingServer, mqtt_connect, raw_exchange, smtp_auth

MQTT_ALLOWED = """\
version: 1
defaults:
  mode: enforce
  cleartext: {default: block, mqtt: allow}
"""

LAN_SERVERS = """\
version: 1
rules:
  - hosts: [{gw}]
    local_destinations: allow
"""

REPORTING = """\
version: 1
defaults:
  mode: enforce
  cleartext: block
rules:
  - name: mail audit
    hosts: mail.test
    mode: report
"""


def test_mqtt_with_credentials_through_connect_is_blocked_before_one_byte(tlsgate) -> None:
    with RecordingServer("mqtt") as broker:
        gate = tlsgate(resolve={"broker.test": broker.port})
        seen = mqtt_connect(f"broker.test:{broker.port}", "device-7", "hunter2", connect_proxy=f"127.0.0.1:{gate.port}")
        assert seen.closed and not seen.timeout, seen.as_dict()
        assert seen.extra["connack_code"] == 5  # tlsgate's CONNACK "not authorized", then the close
        (finding,) = gate.wait_findings(1)
        assert broker.bytes_received == 0, "the broker must not receive a single byte of the CONNECT"
    assert finding["check"] == "cleartext" and finding["action"] == "blocked"
    assert finding["host"] == "broker.test" and finding["port"] == broker.port
    evidence = finding["evidence"]
    assert evidence["kind"] == "plain_mqtt" and evidence["protocol"] == "mqtt"
    assert evidence["credentials"] == ["password", "username"]
    assert evidence["credential_lengths"] == {"client_id": len("plainpeers"), "username": 8, "password": 7}
    assert finding["rule"].endswith("policies/default.yaml:5")
    assert "8883" in finding["remedy"] and "mqtt: allow" in finding["remedy"]
    text = json.dumps(finding)
    assert "hunter2" not in text and "device-7" not in text


def test_mqtt_allowed_by_protocol_passes_with_no_finding_and_other_cleartext_still_blocks(tlsgate) -> None:
    with RecordingServer("mqtt") as broker, RecordingServer("raw") as other:
        gate = tlsgate(MQTT_ALLOWED, resolve={"broker.test": broker.port, "other.test": other.port})
        seen = mqtt_connect(f"broker.test:{broker.port}", "u", "p", connect_proxy=f"127.0.0.1:{gate.port}")
        assert seen.extra["connack"] is True, seen.as_dict()
        assert seen.sent > 0 and eventually(lambda: broker.bytes_received == seen.sent)  # CONNECT and DISCONNECT
        # bytes that match no protocol: `default: block` covers unknown
        junk = raw_exchange(f"other.test:{other.port}", b"\x00\x01binary-ish\xff", connect_proxy=f"127.0.0.1:{gate.port}")
        assert junk.closed and not junk.timeout, junk.as_dict()
        (finding,) = gate.wait_findings(1)
        assert other.bytes_received == 0
    assert finding["evidence"]["protocol"] == "unknown" and finding["action"] == "blocked"
    assert finding["rule"] == "policy.yaml:2"


def test_unknown_cleartext_over_socks5_is_blocked_by_default(tlsgate) -> None:
    with RecordingServer("raw") as server:
        gate = tlsgate(resolve={"raw.test": server.port}, args=("--mode", "socks5"))
        seen = raw_exchange(f"raw.test:{server.port}", b"\x02hello binary\x00", socks5=f"127.0.0.1:{gate.port}")
        assert seen.closed and not seen.timeout, seen.as_dict()
        (finding,) = gate.wait_findings(1)
        assert server.bytes_received == 0
    assert finding["action"] == "blocked" and finding["evidence"]["protocol"] == "unknown"
    assert finding["host"] == "raw.test"


def test_inline_redis_auth_that_looks_like_http_is_judged_as_redis(tlsgate) -> None:
    """`AUTH secret` has a verb and a space: mitmproxy would parse it as HTTP and answer 400; tlsgate names it."""
    with RecordingServer("raw") as server:
        gate = tlsgate(resolve={"cache.test": server.port})
        seen = raw_exchange(f"cache.test:{server.port}", b"AUTH hunter2\r\n", connect_proxy=f"127.0.0.1:{gate.port}")
        assert seen.closed and not seen.timeout, seen.as_dict()
        assert seen.received.startswith(b"-ERR tlsgate blocked cleartext redis"), seen.as_dict()
        (finding,) = gate.wait_findings(1)
        assert server.bytes_received == 0
    assert finding["evidence"]["protocol"] == "redis" and finding["evidence"]["credentials"] == ["password"]
    assert finding["evidence"]["credential_lengths"] == {"password": 7} and "hunter2" not in json.dumps(finding)


def test_mqtt_over_socks5_is_blocked(tlsgate) -> None:
    with RecordingServer("mqtt") as broker:
        gate = tlsgate(resolve={"broker.test": broker.port}, args=("--mode", "socks5"))
        seen = mqtt_connect(f"broker.test:{broker.port}", "u", "p", socks5=f"127.0.0.1:{gate.port}")
        assert seen.closed and not seen.timeout and seen.extra["connack"] is False, seen.as_dict()
        (finding,) = gate.wait_findings(1)
        assert broker.bytes_received == 0
    assert finding["evidence"]["credentials"] == ["password", "username"]


@pytest.mark.parametrize("via", ["connect", "socks5"])
def test_smtp_auth_in_clear_is_blocked_after_ehlo(tlsgate, via: str) -> None:
    """Server speaks first: the banner and the EHLO exchange pass (STARTTLS needs them); AUTH never leaves."""
    with RecordingServer("smtp") as server:
        args = ("--mode", "socks5") if via == "socks5" else ()
        gate = tlsgate(resolve={"smtp.test": server.port}, args=args)
        proxy = {"socks5" if via == "socks5" else "connect_proxy": f"127.0.0.1:{gate.port}"}
        seen = smtp_auth(f"smtp.test:{server.port}", "alice", "s3cret", **proxy)
        assert seen.extra["banner"] and seen.extra["starttls_offered"], seen.as_dict()
        assert seen.closed and not seen.timeout and seen.extra.get("authenticated") is not True, seen.as_dict()
        assert "421 4.7.0 tlsgate blocked cleartext smtp (rule policies/default.yaml:5)" in seen.as_dict()["received_head"]
        (finding,) = gate.wait_findings(1)
        assert bytes(server.received) == b"EHLO client.test\r\n"
    evidence = finding["evidence"]
    assert finding["action"] == "blocked" and evidence["protocol"] == "smtp"
    assert evidence["credentials"] == ["password", "username"]
    assert evidence["starttls_offered_unused"] is True
    assert "STARTTLS" in finding["remedy"]


def test_smtp_in_report_mode_is_forwarded_and_recorded_once(tlsgate) -> None:
    with RecordingServer("smtp") as server:
        gate = tlsgate(REPORTING, resolve={"mail.test": server.port})
        seen = smtp_auth(f"mail.test:{server.port}", "alice", "s3cret", connect_proxy=f"127.0.0.1:{gate.port}")
        assert seen.extra.get("authenticated") is True, seen.as_dict()
        assert b"AUTH PLAIN" in bytes(server.received)
        (finding,) = gate.wait_findings(1)
        assert eventually(lambda: b"QUIT" in bytes(server.received))
    assert finding["action"] == "reported" and finding["rule"] == "policy.yaml:6"
    evidence = finding["evidence"]
    assert evidence["protocol"] == "smtp" and evidence["starttls_offered_unused"] is True
    assert evidence["credentials"] == ["password", "username"]
    assert evidence["credential_lengths"] == {"username": 5, "password": 6}
    assert len(gate.findings()) == 1
    metrics = gate.scrape()
    assert 'tlsgate_cleartext_total{action="reported",protocol="smtp"} 1.0' in metrics


# -- transparent mode, in a network namespace this test creates ---------------------------------------


@pytest.fixture
def lan(tmp_path):  # type: ignore[no-untyped-def]
    """A device in its own network namespace whose TCP is redirected to a local port, as on a gateway."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
        pytest.skip("needs root, ip and iptables to build a namespace")
    tag = f"{os.getpid() % 100000}"
    ns, host_if, dev_if = f"ctT{tag}", f"ctT{tag}a", f"ctT{tag}b"
    net = 200 + os.getpid() % 50
    gw, dev = f"10.{net}.77.1", f"10.{net}.77.2"
    rules: list[list[str]] = []

    def sh(*cmd: str) -> None:
        subprocess.run(list(cmd), check=True, capture_output=True, timeout=20)

    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", dev_if)
        sh("ip", "link", "set", dev_if, "netns", ns)
        sh("ip", "addr", "add", f"{gw}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{dev}/24", "dev", dev_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", dev_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

        def redirect(port: int) -> None:
            rule = ["PREROUTING", "-i", host_if, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(port)]
            sh("iptables", "-t", "nat", "-A", *rule)
            rules.append(rule)

        def device(*args: str) -> dict:
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.plainpeers", *args, "--timeout", "10"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=40, cwd=REPO)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout.strip().splitlines()[-1])

        yield gw, redirect, device
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-t", "nat", "-D", *rule], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_transparent_mode_blocks_mqtt_and_smtp_auth_from_a_device(tlsgate, lan, pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw, redirect, device = lan
    chain = pki[0]
    cert_file, key_file = write_server_files(tmp_path, make_leaf(chain.intermediate, ("mail.test",), ()), chain.intermediate)
    upgrading = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upgrading.load_cert_chain(cert_file, key_file)
    with (
        RecordingServer("mqtt", host=gw) as broker,
        RecordingServer("smtp", host=gw) as mail,
        RecordingServer("smtp", host=gw, tls=upgrading) as secure,
    ):
        # the servers sit on the gateway, that is on the proxy host: only a rule lets connections reach it
        gate = tlsgate(LAN_SERVERS.format(gw=gw), args=("--mode", "transparent", "--listen-host", gw))
        redirect(gate.port)
        seen = device("mqtt-connect", f"{gw}:{broker.port}", "--username", "u", "--password", "p")
        assert seen["closed"] and not seen["timeout"] and not seen["connack"], seen
        seen = device("smtp-auth", f"{gw}:{mail.port}", "--username", "alice", "--password", "s3cret")
        assert seen["banner"] and seen["starttls_offered"] and seen["closed"] and not seen["timeout"], seen
        found = gate.wait_findings(2)
        assert broker.bytes_received == 0 and bytes(mail.received) == b"EHLO client.test\r\n"
        # STARTTLS from the device: intercepted (its handshake trusts only tlsgate's CA), AUTH reaches the server over TLS
        ca = str(gate.ca_cert)
        seen = device("smtp-starttls", f"{gw}:{secure.port}", "--ca", ca, "--server-name", "mail.test")
        assert seen["tls"] and seen["authenticated"] and seen["peer_issuer"] == "tlsgate", seen
        assert eventually(lambda: b"AUTH PLAIN" in bytes(secure.received_tls))
        assert bytes(secure.received) == b"EHLO client.test\r\nSTARTTLS\r\n"
        assert len(gate.findings()) == 2  # no cleartext finding for the upgraded stream
    assert [(f["evidence"]["protocol"], f["action"], f["host"]) for f in found] == [
        ("mqtt", "blocked", gw),
        ("smtp", "blocked", gw),
    ]
    assert found[0]["evidence"]["credentials"] == ["password", "username"]
