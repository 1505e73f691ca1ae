"""Fallback and stripping end to end: real clients through a real tlsgate, against real local servers.

Insecure fallback: curl (which verifies) refuses a probe certificate for
api.test, then the same device sends the request over plain http:// — the
finding links the two; an app that uses http:// for another host, or only ever
http://, gets no such finding.

STARTTLS stripping: Python's smtplib, imaplib and poplib and curl's smtp://
talk to recording servers that offer STARTTLS; tlsgate removes the offer. A
client that then logs in in the clear is caught and the server never receives
one byte of the login line; a client that insists on TLS passes.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import poplib
import re
import smtplib
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.docs import docs_text
from tests.harness import Tlsgate, Upstream, curl, eventually
from tests.plainpeers import RecordingServer, ThreadedServer, open_stream

DEVICE = "version: 1\ndevices:\n  127.0.0.1: test-phone\n"


def of(gate: Tlsgate, check: str, count: int = 1) -> list[dict]:
    assert eventually(lambda: len([f for f in gate.findings() if f["check"] == check]) >= count), gate.findings()
    return [f for f in gate.findings() if f["check"] == check]


# -- insecure fallback -------------------------------------------------------------------------------

PROBED = DEVICE + "rules:\n  - hosts: api.test\n    client:\n      probes: [self_signed]\n"


def test_a_plain_retry_after_a_refused_probe_is_linked_to_it(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(PROBED, resolve={"api.test": https_upstream.port, "cdn.test": https_upstream.port})
    port = https_upstream.port
    refused = curl(gate.proxy_url, f"https://api.test:{port}/v1/login?nonce=1")
    assert refused.returncode != 0 and refused.status == 0, refused  # curl verifies: the probe is refused
    (probe,) = of(gate, "client_probe")
    assert probe["action"] == "passed"

    other = curl(gate.proxy_url, f"http://cdn.test:{port}/logo.png")  # another host in the clear: not a fallback
    retry = curl(gate.proxy_url, f"http://api.test:{port}/v1/login?nonce=2", "-X", "POST", "-d", "user=alice")
    assert other.status == retry.status == 403 and retry.headers["x-tlsgate-check"] == "cleartext"
    (fallback,) = of(gate, "fallback")
    assert fallback["evidence"]["kind"] == "insecure_fallback" and fallback["action"] == "blocked"
    assert fallback["host"] == "api.test" and fallback["device"] == "test-phone"
    assert fallback["evidence"]["after"]["check"] == "client_probe"
    assert fallback["evidence"]["after"]["kind"] == "self_signed"
    assert fallback["evidence"]["after"]["time"] == probe["time"]
    assert fallback["evidence"]["after"]["connection"] == probe["client"]
    assert "alice" not in str(fallback)
    assert https_upstream.requests == []  # blocked as cleartext is today: nothing reached the server

    again = curl(gate.proxy_url, f"http://api.test:{port}/v1/items")  # the event is used up: ordinary cleartext
    assert again.status == 403
    assert eventually(lambda: len([f for f in gate.findings() if f["check"] == "cleartext"]) == 3)
    assert len(of(gate, "fallback")) == 1
    assert 'tlsgate_findings_total{action="blocked",check="fallback",device="test-phone",severity="high"} 1.0' in gate.scrape()


def test_after_an_accepted_probe_only_the_same_request_in_the_clear_is_the_retry(tlsgate, https_upstream: Upstream) -> None:
    """curl -k accepts the probe and POSTs /v1/login (403, nothing forwarded); a plain GET of another path is
    ordinary cleartext, the plain POST of /v1/login (new nonce) is the fallback, linked to that request."""
    gate = tlsgate(PROBED, resolve={"api.test": https_upstream.port})
    port = https_upstream.port
    accepted = curl(gate.proxy_url, f"https://api.test:{port}/v1/login?nonce=1", "-k", "-X", "POST", "-d", "pw=s3cret")
    assert accepted.status == 403 and accepted.headers["x-tlsgate-check"] == "client_probe"
    assert curl(gate.proxy_url, f"http://api.test:{port}/static/app.js").status == 403
    assert curl(gate.proxy_url, f"http://api.test:{port}/v1/login?nonce=2", "-X", "POST", "-d", "pw=s3cret").status == 403
    (fallback,) = of(gate, "fallback")
    after = fallback["evidence"]["after"]
    assert (after["check"], after["action"], after["method"], after["path"]) == ("client_probe", "blocked", "POST", "/v1/login")
    assert fallback["evidence"]["method"] == "POST" and "s3cret" not in str(fallback)
    assert https_upstream.requests == []


def test_an_app_that_only_ever_used_http_is_not_a_fallback(tlsgate, http_upstream: Upstream) -> None:
    """Report mode forwards, so the app keeps working over http://; a failed TLS to another host changes nothing."""
    gate = tlsgate(DEVICE + "defaults:\n  mode: report\n", resolve={"legacy.test": http_upstream.port})
    for path in ("/feed", "/track", "/feed"):
        assert curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}{path}").status == 200
    refused = curl(gate.proxy_url, f"https://legacy.test:{http_upstream.port}/feed")  # not TLS upstream: a fault
    assert refused.status != 200
    assert curl(gate.proxy_url, f"http://legacy.test:{http_upstream.port}/feed").status == 200
    assert eventually(lambda: len([f for f in gate.findings() if f["check"] == "cleartext"]) == 4), gate.findings()
    assert not [f for f in gate.findings() if f["check"] == "fallback"], gate.findings()


# -- STARTTLS stripping ------------------------------------------------------------------------------


def readme_policy() -> str:
    """The README's strip_starttls example, with the test's device address and host names."""
    text = docs_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "strip_starttls: true" in b]
    for example, test in (("192.168.50.21: pixel-7", "127.0.0.1: test-phone"), (".example.com", ".test")):
        assert example in block
        block = block.replace(example, test)
    return block


STRIP = readme_policy()
assert "hosts: [mail.test, imap.test, pop.test]" in STRIP


@pytest.fixture
def mail() -> Iterator[RecordingServer]:
    with RecordingServer("smtp") as server:
        yield server


class ProxiedSMTP(smtplib.SMTP):
    """smtplib's own client, its socket opened through tlsgate's CONNECT."""

    def __init__(self, proxy: str, host: str, port: int) -> None:
        self.proxy = proxy
        super().__init__(host, port, local_hostname="client.test", timeout=10)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return open_stream(f"{host}:{port}", connect_proxy=self.proxy, timeout=timeout)


def proxy_of(gate: Tlsgate) -> str:
    return f"127.0.0.1:{gate.port}"


def test_smtplib_logging_in_after_stripping_is_caught_and_the_server_gets_no_login_byte(tlsgate, mail) -> None:
    gate = tlsgate(STRIP, resolve={"mail.test": mail.port})
    client = ProxiedSMTP(proxy_of(gate), "mail.test", mail.port)
    client.ehlo()
    assert not client.has_extn("starttls") and client.has_extn("auth")  # the offer is gone, the rest is there
    with pytest.raises((smtplib.SMTPException, OSError)):
        client.login("alice", "s3cret-pw")
    client.close()
    (found,) = of(gate, "fallback")
    assert found["evidence"]["kind"] == "starttls_strip_accepted" and found["action"] == "blocked"
    assert found["evidence"]["protocol"] == "smtp" and found["evidence"]["command"] == "AUTH"
    assert found["severity"] == "critical" and found["evidence"]["credentials"] == ["password", "username"]
    secret = base64.b64encode(b"\0alice\0s3cret-pw").decode()
    assert "s3cret" not in str(found) and secret not in str(found)
    assert eventually(lambda: mail.connections == 1)
    assert bytes(mail.received) == b"ehlo client.test\r\n"  # not one byte of the AUTH line
    assert not [f for f in gate.findings() if f["check"] == "cleartext"]  # the strip finding says it all


def test_the_login_never_reaches_the_server_even_where_cleartext_is_allowed_and_reported(tlsgate, mail) -> None:
    """Report mode and `default: allow` forward cleartext mail; a login tlsgate provoked by stripping is still held."""
    policy = STRIP.replace("default: block", "default: allow") + "    mode: report\n"
    gate = tlsgate(policy, resolve={"mail.test": mail.port})
    client = ProxiedSMTP(proxy_of(gate), "mail.test", mail.port)
    client.ehlo()
    with pytest.raises((smtplib.SMTPException, OSError)):
        client.login("alice", "s3cret-pw")
    client.close()
    (found,) = of(gate, "fallback")
    assert found["evidence"]["kind"] == "starttls_strip_accepted" and found["action"] == "blocked"
    assert eventually(lambda: mail.connections == 1)
    assert b"AUTH" not in bytes(mail.received) and bytes(mail.received).startswith(b"ehlo")


def test_smtplib_that_requires_starttls_passes_and_the_next_connection_is_not_stripped(tlsgate, mail) -> None:
    gate = tlsgate(STRIP, resolve={"mail.test": mail.port})
    client = ProxiedSMTP(proxy_of(gate), "mail.test", mail.port)
    client.ehlo()
    with pytest.raises(smtplib.SMTPNotSupportedError):
        client.starttls()  # smtplib refuses: the server "does not offer" it
    client.quit()
    (passed,) = of(gate, "fallback")
    assert passed["evidence"]["kind"] == "starttls_strip_refused" and passed["action"] == "passed"
    later = ProxiedSMTP(proxy_of(gate), "mail.test", mail.port)  # once per device, host and port: service again
    later.ehlo()
    assert later.has_extn("starttls")
    later.quit()
    assert b"AUTH" not in bytes(mail.received)


def test_without_strip_starttls_the_offer_reaches_the_client(tlsgate, mail) -> None:
    """The default policy is unchanged: the server's STARTTLS is shown, and AUTH in the clear is blocked as cleartext."""
    gate = tlsgate(DEVICE, resolve={"mail.test": mail.port})
    client = ProxiedSMTP(proxy_of(gate), "mail.test", mail.port)
    client.ehlo()
    assert client.has_extn("starttls")
    client.close()


def curl_smtp(gate: Tlsgate, mail: RecordingServer, tls: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    message = tmp_path / "mail.txt"
    message.write_text("Subject: hi\r\n\r\nhello\r\n")
    cmd = [
        "curl", "-sS", "--noproxy", "", "-x", f"http://{proxy_of(gate)}", "--proxytunnel", "--max-time", "15",
        f"smtp://mail.test:{mail.port}", tls, "--user", "alice:s3cret-pw", "--login-options", "AUTH=PLAIN",
        "--mail-from", "a@client.test", "--mail-rcpt", "b@mail.test", "-T", str(message),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_curl_ssl_falls_back_and_is_caught_curl_ssl_reqd_refuses(tlsgate, mail, tmp_path: Path) -> None:
    gate = tlsgate(STRIP, resolve={"mail.test": mail.port})
    tried = curl_smtp(gate, mail, "--ssl", tmp_path)  # "try TLS": goes on in the clear when it is not offered
    assert tried.returncode != 0, tried
    (caught,) = of(gate, "fallback")
    assert caught["evidence"]["kind"] == "starttls_strip_accepted" and caught["evidence"]["command"] == "AUTH"
    assert b"AUTH" not in bytes(mail.received) and b"s3cret" not in bytes(mail.received)

    gate2 = tlsgate(STRIP, resolve={"mail.test": mail.port})  # a fresh schedule: this connection is stripped too
    required = curl_smtp(gate2, mail, "--ssl-reqd", tmp_path)
    assert required.returncode != 0 and "STARTTLS" in required.stderr, required
    caught_then_passed = of(gate2, "fallback", 2)  # the two gates share the test's findings file
    assert [f["evidence"]["kind"] for f in caught_then_passed] == ["starttls_strip_accepted", "starttls_strip_refused"]
    assert b"AUTH" not in bytes(mail.received) and b"MAIL" not in bytes(mail.received)


# IMAP and POP3: small recording servers, line by line, offering STARTTLS / STLS.


class LineServer(ThreadedServer):
    """A line-based server: a greeting, then `answer(line)` for each client line; records every byte."""

    def __init__(self, greeting: bytes, answer: Callable[[bytes], bytes]) -> None:
        self.greeting, self.answer = greeting, answer
        self.received = bytearray()
        super().__init__()
        self.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(15)
        buffer = b""
        with conn:
            try:
                conn.sendall(self.greeting)
                while data := conn.recv(65536):
                    self.received += data
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        conn.sendall(self.answer(line.rstrip(b"\r")))
            except OSError:
                return


def imap_answer(line: bytes) -> bytes:
    tag, _, rest = line.partition(b" ")
    command = rest.split(b" ", 1)[0].upper()
    if command == b"CAPABILITY":
        return b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n" + tag + b" OK done\r\n"
    if command == b"LOGOUT":
        return b"* BYE\r\n" + tag + b" OK bye\r\n"
    return tag + b" OK done\r\n"


def pop3_answer(line: bytes) -> bytes:
    if line.upper() == b"CAPA":
        return b"+OK caps\r\nUSER\r\nSTLS\r\nTOP\r\n.\r\n"
    return b"+OK\r\n"


@pytest.fixture
def imap_server() -> Iterator[LineServer]:
    server = LineServer(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n", imap_answer)
    yield server
    server.close()


@pytest.fixture
def pop3_server() -> Iterator[LineServer]:
    server = LineServer(b"+OK POP3 ready\r\n", pop3_answer)
    yield server
    server.close()


def test_imaplib_login_after_stripping_is_caught_before_the_server_sees_it(tlsgate, imap_server: LineServer) -> None:
    gate = tlsgate(STRIP, resolve={"imap.test": imap_server.port})
    proxy = proxy_of(gate)

    class ProxiedIMAP(imaplib.IMAP4):
        def _create_socket(self, timeout: float | None) -> socket.socket:
            return open_stream(f"imap.test:{imap_server.port}", connect_proxy=proxy, timeout=timeout or 10)

    client = ProxiedIMAP("imap.test", imap_server.port, timeout=10)
    assert "STARTTLS" not in client.capabilities and "LOGINDISABLED" not in client.capabilities
    with pytest.raises((imaplib.IMAP4.error, OSError)):
        client.login("alice", "s3cret-pw")
    (found,) = of(gate, "fallback")
    assert found["evidence"]["kind"] == "starttls_strip_accepted" and found["evidence"]["command"] == "LOGIN"
    assert found["evidence"]["protocol"] == "imap" and "s3cret" not in str(found)
    assert b"LOGIN" not in bytes(imap_server.received) and b"s3cret" not in bytes(imap_server.received)


def test_poplib_that_requires_stls_passes(tlsgate, pop3_server: LineServer) -> None:
    gate = tlsgate(STRIP, resolve={"pop.test": pop3_server.port})
    proxy = proxy_of(gate)

    class ProxiedPOP3(poplib.POP3):
        def _create_socket(self, timeout: float) -> socket.socket:
            return open_stream(f"pop.test:{pop3_server.port}", connect_proxy=proxy, timeout=timeout)

    client = ProxiedPOP3("pop.test", pop3_server.port, timeout=10)
    assert "STLS" not in client.capa()
    with pytest.raises(poplib.error_proto):
        client.stls()  # poplib checks CAPA first: "STLS not supported by server"
    client.quit()
    (passed,) = of(gate, "fallback")
    assert passed["evidence"]["kind"] == "starttls_strip_refused" and passed["evidence"]["protocol"] == "pop3"
    assert b"USER" not in bytes(pop3_server.received) and b"PASS" not in bytes(pop3_server.received)


# XMPP: the client speaks first; the server's stream features arrive after the client's stream header.

XMPP_FEATURES = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"from='chat.test' id='s1' version='1.0'><stream:features>"
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"
    b"</stream:features>"
)


def test_an_xmpp_client_that_authenticates_without_starttls_is_caught(tlsgate) -> None:
    """A client that reads the stream features and logs in with SASL PLAIN when <starttls> is missing; the
    server sends its features in two writes, so the element to cut may arrive split."""
    received = bytearray()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            try:
                while data := conn.recv(65536):
                    received.extend(data)
                    if b"<stream:stream" in data:
                        half = len(XMPP_FEATURES) // 2
                        conn.sendall(XMPP_FEATURES[:half])
                        conn.sendall(XMPP_FEATURES[half:])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    try:
        client_logs_in_after_features(tlsgate, port, received)
    finally:
        listener.close()


def client_logs_in_after_features(tlsgate, port: int, received: bytearray) -> None:
    """The client side (hand-written: no XMPP library is installed here): stream header, features, SASL PLAIN."""
    gate = tlsgate(STRIP.replace("pop.test]", "pop.test, chat.test]"), resolve={"chat.test": port})
    with open_stream(f"chat.test:{port}", connect_proxy=proxy_of(gate)) as sock:
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream to='chat.test' xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
        shown = b""
        while b"</stream:features>" not in shown:
            chunk = sock.recv(65536)
            assert chunk, shown
            shown += chunk
        assert b"<starttls" not in shown and b"<mechanism>PLAIN</mechanism>" in shown
        secret = base64.b64encode(b"\0alice\0s3cret-pw")
        sock.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + secret + b"</auth>")
        with contextlib.suppress(OSError):
            while sock.recv(65536):  # tlsgate closes the stream
                pass
    (found,) = of(gate, "fallback")
    assert found["evidence"]["kind"] == "starttls_strip_accepted" and found["evidence"]["protocol"] == "xmpp"
    assert found["evidence"]["command"] == "auth" and secret.decode() not in str(found)
    assert b"<auth" not in bytes(received) and secret not in bytes(received)
