"""Planted secrets in every place an app puts them: the value never survives redaction, its name does."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tlsgate.sinks import redact
from tlsgate.sinks.redact import REDACTED

SECRET = "Zq8sP1anted5ecretVa1ue"  # mixed letters and digits, like real tokens
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlc2lnbmF0dXJl"

URLS = {
    "userinfo": f"http://user:{SECRET}@api.test/",
    "secret-named query": f"http://api.test/login?password={SECRET}",
    "OAuth code": f"http://api.test/cb?code={SECRET}&state=xyz",
    "innocent name": f"http://api.test/x?ref={SECRET}",
    "innocent name, short value": "http://api.test/x?v=Ab3dE9",
    "JWT under an innocent name": f"http://api.test/x?next={JWT}",
    "JWT as parameter name": f"http://api.test/x?{JWT}",
    "JWT in the path": f"http://api.test/reset/{JWT}/confirm",
    "token segment": f"http://api.test/verify/{SECRET}",
    "UUID segment": "http://api.test/invite/5f2b9c1e-8a7d-4e3b-9c1a-2b3c4d5e6f70",
    "jsessionid": f"http://api.test/cart;jsessionid={SECRET}?page=2",
    "percent-encoded": f"http://api.test/x?data={quote(SECRET + '&x=1')}",
}
PLANTED = {"innocent name, short value": "Ab3dE9", "UUID segment": "5f2b9c1e-8a7d-4e3b-9c1a-2b3c4d5e6f70"}


@pytest.mark.parametrize("name", URLS)
def test_no_planted_value_survives_redact_url(name: str) -> None:
    shown = redact.redact_url(URLS[name])
    for value in (PLANTED.get(name, SECRET), JWT, quote(SECRET)):
        assert value not in shown, shown
    assert shown.startswith("http://") and "api.test" in shown


def test_readable_parts_stay_readable() -> None:
    shown = redact.redact_url("http://api.test/v1/users/42/orders?page=2&sort=desc&lang=en&flag=true")
    assert shown == "http://api.test/v1/users/42/orders?page=2&sort=desc&lang=en&flag=true"
    assert (
        redact.redact_url(f"http://api.test/cart;jsessionid={SECRET}?page=2")
        == f"http://api.test/cart;jsessionid={REDACTED}?page=2"
    )


def test_credentials_are_named_not_valued() -> None:
    found = {str(c) for c in redact.url_credentials(f"http://u:p@api.test/r/{JWT};jsessionid=1?code=1&{JWT}")}
    assert found == {
        "userinfo user:password in URL",
        "path token in path",
        "path jsessionid",
        "query code",
        "query token as parameter name",
    }
    assert not any(SECRET in str(c) or JWT in str(c) for c in redact.url_credentials(f"http://api.test/x?password={SECRET}"))


def test_user_agent_keeps_products_and_drops_pasted_tokens() -> None:
    ua = f"MyApp/1.2 (Android 14; Pixel 7) okhttp/4.12.0 key={SECRET} {JWT}"
    shown = redact.redact_user_agent(ua)
    assert shown.startswith("MyApp/1.2 (Android 14; Pixel 7) okhttp/4.12.0 ")
    assert SECRET not in shown and JWT not in shown
    assert len(redact.redact_user_agent("A" * 1000)) <= 200


@pytest.mark.parametrize("value", ["", "Bearer", SECRET, f"Bearer {SECRET}", f"{SECRET} {SECRET}", "Basic\t" + SECRET])
def test_authorization_values_never_appear(value: str) -> None:
    (cred,) = redact.header_credentials([("Authorization", value)])
    assert SECRET not in str(cred)


# mitmproxy's own lines that quote client bytes (mitmproxy 12.2: http1 read, _http1/_http2 layers, websocket
# layer, SOCKS5 mode, Dumper), each with the secret planted where a client or server puts it.
MITMPROXY_LINES = {
    "invalid header line": f"127.0.0.1:5: Invalid header line: b'Authorization Bearer {SECRET}'",
    "bad request line": f"Bad HTTP request line: b'GET http://u:{SECRET}@api.test/x?code={SECRET} HTTP/1.1 junk'",
    "cut-short head": f"Client closed connection before completing request headers: b'GET /a HTTP/1.1\\r\\nCookie: s={SECRET}\\r\\n'",
    "invalid content-length": f" << Received invalid content-length header: b'{SECRET}' from client",
    "websocket ping": f"Received WebSocket ping from client (payload: b'{SECRET}')",
    "websocket message line": f"127.0.0.1:5 -> WebSocket text message -> 127.0.0.1:8000/chat?token={SECRET}",
    "websocket message line, IPv6": f"[::1]:5 <- WebSocket binary message <- [::1]:8000/ws;jsessionid={SECRET}",
    "h2 header value": f"127.0.0.1:5: HTTP/2 protocol error: Received header value surrounded by whitespace b' {SECRET}'",
    "h2 pseudo header": f"Invalid HTTP/2 request headers: Duplicate HTTP/2 pseudo header: (b':path', b'/r/{SECRET}')",
    "socks5 buffer": f"Client closed connection before completing SOCKS5 handshake: bytearray(b'\\x05\\x01\\x02{SECRET}')",
    "sni": f"Client TLS handshake failed. The client does not trust the proxy's certificate for api.test?t={SECRET} (x)",
    "unexpected server data": f"Unexpected data from server: b'HTTP/1.1 200 OK\\r\\nSet-Cookie: sid={SECRET}\\r\\n'",
    "userinfo with a bracket": f"Bad HTTP request line: b'GET http://[{SECRET}]@api.test/ HTTP/1.1'",
}


@pytest.mark.parametrize("name", MITMPROXY_LINES)
def test_mitmproxy_lines_quoting_client_bytes_keep_no_secret(name: str) -> None:
    shown = redact.redact_text(MITMPROXY_LINES[name])
    assert SECRET not in shown and REDACTED in shown, shown
    assert SECRET not in redact.redact_text(shown)  # a line redacted twice (a finding's text logged again) never raises


def test_what_is_no_secret_stays_readable_in_quoted_bytes() -> None:
    head = "b'GET /v1/items?page=2 HTTP/1.1\\r\\nHost: api.test\\r\\nContent-Length: 12\\r\\nAuthorization: Bearer x'"
    assert redact.redact_text(head) == (
        "b'GET /v1/items?page=2 HTTP/1.1\\r\\nHost: api.test\\r\\nContent-Length: 12\\r\\n"
        f"Authorization: {REDACTED} (Bearer, 8 chars)'"
    )
    assert redact.redact_text("unknown transfer-encoding header: b'br'") == "unknown transfer-encoding header: b'br'"
    assert redact.redact_text("Invalid header line: b'X-Weird value'") == f"Invalid header line: b'X-Weird {REDACTED} (5 chars)'"


@pytest.mark.parametrize(
    ("host", "shown"),
    [("api.test", "api.test"), ("bücher.de", "bücher.de"), ("[fd00::1]:443", "[fd00::1]:443"),
     (f"api.test?token={SECRET}", f"api.test{REDACTED} (29 chars)"), ("a.test\n[CRITICAL] x", f"a.test{REDACTED} (13 chars)")],
)  # fmt: skip
def test_a_host_is_cut_at_the_first_character_no_host_name_has(host: str, shown: str) -> None:
    assert redact.redact_host(host) == shown


def test_redact_url_never_raises_on_what_urlsplit_rejects() -> None:
    assert redact.redact_url(f"http://[{SECRET}]@api.test/a?b=1") == f"http://{REDACTED}@api.test/a?b=1"
    assert redact.redact_url(f"http://[{SECRET}]/") == f"http://{REDACTED} (25 chars)"
