"""A client cannot write a line of its own into tlsgate's console log."""

from __future__ import annotations

import re
import socket

from tests.harness import Upstream, eventually, read_until_closed
from tests.unit.test_clienthello import as_record, extension, hello_body, vec16

FORGED = "[23:59:59.999] [CRITICAL] forged by the client"


def evil_sni_hello(name: bytes) -> bytes:
    sni = extension(0x0000, vec16(b"\x00" + vec16(name)))
    return as_record(hello_body(0x0303, [0x009C, 0x002F], [sni]))


def test_an_sni_with_a_newline_stays_on_one_console_line(tlsgate, https_upstream: Upstream) -> None:
    gate = tlsgate(resolve={"api.test": https_upstream.port})
    name = f"api.test\n{FORGED}\r\x1b[2J".encode()
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        target = f"api.test:{https_upstream.port}".encode()
        sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(evil_sni_hello(name))
        read_until_closed(sock)
    # The finding names the host up to the first character no host name has; the rest is counted, not shown.
    assert eventually(lambda: "client_ciphers api.test[REDACTED] (" in gate.output, timeout=10), gate.output[-3000:]
    lines = gate.output.splitlines()
    assert not [line for line in lines if line.lstrip().startswith(FORGED[:14])], "a client-made line reached the console"
    assert "forged by the client" not in gate.output and "forged by the client" not in gate.findings_path.read_text()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", gate.output), "a raw control character reached the console"


SECRET = "Zq8sP1antedVa1ue"


def test_a_malformed_request_line_reaches_the_console_without_its_secrets(tlsgate) -> None:
    """mitmproxy quotes the whole bad request line in its log; the query values must not survive."""
    gate = tlsgate()
    for line in (
        f"GET http://api.test/login?password={SECRET} HTTP/1.1 junk",
        f"GET http://user:{SECRET}@api.test/x?code={SECRET} HTTP/1.1",
        f"GET /cb?ref={SECRET}\x1b[2J HTTP/1.1",
    ):
        with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
            sock.sendall(line.encode() + b"\r\nHost: api.test\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(4096)[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 403")  # refused either way
    assert eventually(lambda: gate.output.count("Bad HTTP request line") >= 2, timeout=10), gate.output[-3000:]
    assert SECRET not in gate.output
    assert "password=[REDACTED]" in gate.output and "code=[REDACTED]" in gate.output
