"""mitmdump's per-flow console lines, redacted: what a mitmproxy user expects, without the secrets."""

from __future__ import annotations

import io

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from tlsgate.addons.console import ConsoleFlows, RedactingStream, redact_line

SECRET = "s3cretTokenValue4242xyz"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (f"    Authorization: Bearer {SECRET}", "    Authorization: [REDACTED] (Bearer, 30 chars)"),
        (f"    authorization: {SECRET}", "    authorization: [REDACTED] (no scheme, 23 chars)"),
        (f"    Cookie: sid={SECRET}", "    Cookie: [REDACTED] (27 chars)"),
        (f"    Set-Cookie: sid={SECRET}; HttpOnly", "    Set-Cookie: [REDACTED] (37 chars)"),
        (f"    X-Api-Key: {SECRET}", "    X-Api-Key: [REDACTED] (23 chars)"),
        (f"    X-Client-Secret: {SECRET}", "    X-Client-Secret: [REDACTED] (23 chars)"),
        ("    Accept: */*", "    Accept: */*"),
        (f"1.2.3.4:5: GET https://api.test/a?token={SECRET}&page=2", "1.2.3.4:5: GET https://api.test/a?token=[REDACTED]&page=2"),
        ("evil\rline\x1b[31m", "evil\\x0dline\\x1b[31m"),
    ],
)
def test_each_line_is_redacted_and_one_line(line: str, shown: str) -> None:
    assert redact_line(line) == shown


def test_the_stream_redacts_whole_lines_written_in_pieces() -> None:
    out = io.StringIO()
    stream = RedactingStream(out)
    stream.write(f"    Authorization: Bearer {SECRET[:5]}")
    assert out.getvalue() == ""  # nothing before the line is complete
    stream.write(f"{SECRET[5:]}\n<< 200 OK\n")
    assert SECRET not in out.getvalue() and out.getvalue().endswith("<< 200 OK\n")
    assert not stream.isatty()  # no colour codes to split tokens


def test_flow_lines_at_detail_2_hold_no_secret_and_bodies_are_refused() -> None:
    out = io.StringIO()
    console = ConsoleFlows(out)
    with taddons.context(console) as tctx:
        tctx.configure(console, flow_detail=2)
        flow = tflow.tflow(
            req=tutils.treq(
                host="api.test", port=443, path=f"/v1?api_key={SECRET}".encode(),
                headers=http.Headers([(b"host", b"api.test"), (b"authorization", f"Bearer {SECRET}".encode())]),
            ),
            resp=True,
        )  # fmt: skip
        console.response(flow)
        text = out.getvalue()
        assert "GET" in text and "api_key=[REDACTED]" in text and "authorization: [REDACTED] (Bearer" in text
        assert SECRET not in text
        with pytest.raises(exceptions.OptionsError, match="bodies"):
            tctx.configure(console, flow_detail=3)


@pytest.mark.parametrize(("code", "shown"), [(1000, "closed by client: 1000"), (4001, "WebSocket Error: UNKNOWN_ERROR=4001")])
def test_websocket_close_lines_give_the_reasons_length_not_its_text(code: int, shown: str) -> None:
    out = io.StringIO()
    console = ConsoleFlows(out)
    with taddons.context(console) as tctx:
        tctx.configure(console, flow_detail=1)
        flow = tflow.twebsocketflow()
        assert flow.websocket is not None
        flow.websocket.close_code, flow.websocket.close_reason, flow.websocket.closed_by_client = code, f"bye {SECRET}", True
        console.websocket_end(flow)
    assert shown in out.getvalue() and f"(reason: {len(SECRET) + 4} chars, not shown)" in out.getvalue()
    assert SECRET not in out.getvalue()
