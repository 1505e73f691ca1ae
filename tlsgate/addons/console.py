"""mitmdump's per-flow console lines in `tlsgate run`, without the secrets in them.

Users come from mitmdump and expect its `<< 403` lines and `--set flow_detail=2`.
mitmproxy's Dumper prints URLs (query strings and all) and, from detail 2, every
header value; tlsgate's console must not hold credentials. The Dumper writes to
a stream that redacts each line the way findings are redacted; detail 3 and 4
(bodies) are refused, because a body is exactly where apps put passwords.
"""

from __future__ import annotations

import io
import re
from typing import IO, cast

from mitmproxy import ctx, exceptions, http
from mitmproxy.addons.dumper import Dumper
from mitmproxy.utils import human
from wsproto.frame_protocol import CloseReason

from tlsgate.sinks.findings import printable
from tlsgate.sinks.redact import (
    CREDENTIAL_HEADERS,
    REDACTED,
    auth_scheme,
    is_secret_name,
    redact_text,
    redact_token_words,
    redact_user_agent,
)

MAX_DETAIL = 2
# "    authorization: Bearer abc": the Dumper indents header lines by four spaces.
HEADER_LINE = re.compile(r"^(?P<indent>\s{4})(?P<name>[!#$%&'*+.^_`|~0-9A-Za-z-]+): (?P<value>.*)$")
SECRET_HEADERS = frozenset((*CREDENTIAL_HEADERS, "set-cookie"))


def redact_line(line: str) -> str:
    """One console line with header values, URLs and paths redacted and control characters escaped."""
    found = HEADER_LINE.match(line)
    if found:
        name, value = found["name"], found["value"]
        lowered = name.lower()
        if lowered in SECRET_HEADERS or is_secret_name(name):
            scheme = auth_scheme(value) if lowered in ("authorization", "proxy-authorization") else ""
            shown = f"{REDACTED} ({f'{scheme}, ' if scheme else ''}{len(value)} chars)"
            return printable(f"{found['indent']}{name}: {shown}")
        if lowered == "user-agent":
            return printable(f"{found['indent']}{name}: {redact_user_agent(value)}")
        return printable(redact_text(f"{found['indent']}{name}: {redact_token_words(value)}"))
    return printable(redact_text(line))


class RedactingStream(io.TextIOBase):
    """A text stream that passes whole lines, redacted, to `target` (the Dumper prints line by line)."""

    def __init__(self, target: IO[str]) -> None:
        self.target = target
        self.pending = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # no colour codes: they would split the tokens redaction looks for

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            try:
                shown = redact_line(line)
            except Exception as exc:  # noqa: BLE001 - never print a line unredacted, never fail the flow over it
                shown = f"(a line tlsgate could not redact is not shown: {type(exc).__name__})"
            self.target.write(shown + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


class ConsoleFlows(Dumper):
    """mitmproxy's Dumper (options `flow_detail`, `dumper_filter`, ...) behind the redacting stream."""

    def __init__(self, outfile: IO[str] | None = None) -> None:
        import sys

        # A TextIOBase, not a typing.IO: it has the write, flush and isatty that Dumper uses.
        super().__init__(cast(IO[str], RedactingStream(outfile or sys.stdout)))

    def websocket_end(self, f: http.HTTPFlow) -> None:
        """mitmdump's close line, with the close reason's length instead of its text: the app or the server
        chose it, and a session id or token fits in its 123 bytes."""
        ws = f.websocket
        if ws is None or not self.match(f):
            return
        reason = f" (reason: {len(ws.close_reason)} chars, not shown)" if ws.close_reason else ""
        if ws.close_code in {1000, 1001, 1005}:
            side = "client" if ws.closed_by_client else "server"
            self.echo(f"WebSocket connection closed by {side}: {ws.close_code}{reason}")
            return
        try:
            name = CloseReason(ws.close_code or 0).name
        except ValueError:
            name = f"UNKNOWN_ERROR={ws.close_code}"
        where = human.format_address(f.server_conn.address)
        self.echo(f"Error in WebSocket connection to {where}: WebSocket Error: {name}{reason}", fg="red")

    def configure(self, updated: set[str]) -> None:
        super().configure(updated)
        if "flow_detail" in updated and ctx.options.flow_detail > MAX_DETAIL:
            raise exceptions.OptionsError(
                f"flow_detail {ctx.options.flow_detail} prints request and response bodies, which carry the secrets "
                f"tlsgate keeps out of its console; use flow_detail {MAX_DETAIL} (headers, redacted), or capture flows "
                "to a file only you can read (--set save_stream_file=FILE, mode 0600) and open it in mitmweb"
            )
