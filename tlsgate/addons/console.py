"""mitmdump's per-flow console lines in `tlsgate run`, without the secrets in them.

Users come from mitmdump and expect its `<< 403` lines and `--set flow_detail=2`.
mitmproxy's Dumper prints URLs (query strings and all) and, from detail 2, every
header value; tlsgate's console must not hold credentials. The Dumper writes to
a stream that redacts each line the way findings are redacted; detail 3 and 4
(bodies) are refused, because a body is exactly where apps put passwords.
"""

from __future__ import annotations

import io
import logging
import re
from collections import OrderedDict
from typing import IO, cast

from mitmproxy import connection, ctx, exceptions, http
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


# -- mitmproxy's handshake-failure lines, with tlsgate's reason ------------------------------------------

# What mitmproxy's TLS and QUIC layers log (through its proxy server's logger, with the client's address attached)
# when a handshake fails: "Server TLS handshake failed. Certificate verify failed: ...", "Client QUIC handshake
# failed. ...", and then, on the client's side, "Unable to establish TLS connection with server (<the same>). ...".
HANDSHAKE_FAILED = re.compile(r"^(?P<side>Server|Client) (?:TLS|QUIC) handshake failed\b.*", re.S)
SERVER_UNREACHED = re.compile(r"^(?P<head>Unable to establish (?:TLS|QUIC) connection with server )\((?P<error>.*?)\)\. ", re.S)
# mitmproxy, when the quic_start_client hook left no settings (a refused client that offered no ALPN at all).
NO_QUIC_CONTEXT = re.compile(r"^No QUIC context was provided, failing connection\.")
# aioquic's own warning for the same handshake ("[<original destination CID>] Error: 296, reason: No common ALPN
# protocols, frame_type: 6"), on its "quic" logger, which knows the connection by that ID only.
AIOQUIC_ERROR = re.compile(r"^\[(?P<id>[0-9a-f]+)\] Error: ")


class RefusalReasons(logging.Filter):
    """Rewrites mitmproxy's lines for a handshake tlsgate made fail, so the console names tlsgate's check and rule.

    tlsgate refuses a pinned server by failing OpenSSL's verify callback, and a
    QUIC connection by offering an ALPN no client asks for; mitmproxy then logs
    "unspecified certificate verification error" or aioquic's "No common ALPN
    protocols", which send the operator after the wrong problem. The add-on
    that refuses notes the reason here, keyed by the client's address and the
    side; mitmproxy's failure lines for that key carry it instead. A reason is
    dropped once the client's side has logged it, when the client disconnects
    (`forget`), or after `capacity` newer ones: bounded, and never applied to a
    later connection.
    """

    def __init__(self, capacity: int = 1024) -> None:
        super().__init__()
        self.capacity = capacity
        self._pending: OrderedDict[tuple[str, int, str], str] = OrderedDict()
        self._quic_ids: OrderedDict[str, str] = OrderedDict()

    def note(self, client: connection.Client, side: str, host: str, check: str, rule: str, detail: str) -> None:
        """`side` is "Server" (the upstream handshake) or "Client" (the device's)."""
        if not client.peername:
            return
        key = (str(client.peername[0]), int(client.peername[1]), side)
        self._pending[key] = f"tlsgate refused {host}: {check} (rule {rule}): {detail}"
        self._pending.move_to_end(key)
        while len(self._pending) > self.capacity:
            self._pending.popitem(last=False)

    def reason(self, client: connection.Client, side: str) -> str | None:
        return self._pending.get((str(client.peername[0]), int(client.peername[1]), side)) if client.peername else None

    def note_quic_id(self, connection_id: str, reason: str) -> None:
        """aioquic's lines name a connection by its original destination connection ID (hex), not by client."""
        self._quic_ids[connection_id] = reason
        while len(self._quic_ids) > self.capacity:
            self._quic_ids.popitem(last=False)

    def forget(self, client: connection.Client) -> None:
        if self._pending and client.peername:
            for side in ("Server", "Client"):
                self._pending.pop((str(client.peername[0]), int(client.peername[1]), side), None)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "quic":
            return self._filter_aioquic(record)
        peer = getattr(record, "client", None)
        if not self._pending or not peer or not isinstance(record.msg, str):
            return True
        address = (str(peer[0]), int(peer[1]))
        failed = HANDSHAKE_FAILED.match(record.msg)
        if failed is not None:
            side = failed["side"]
            # The server's reason is kept for the client side's "Unable to establish ... with server" line.
            reason = self._pending.get((*address, side)) if side == "Server" else self._pending.pop((*address, side), None)
            if reason is not None:
                record.msg, record.args = f"{side} {record.msg.split(' ', 2)[1]} handshake failed: {reason}", ()
            return True
        unreached = SERVER_UNREACHED.match(record.msg)
        if unreached is not None:
            reason = self._pending.pop((*address, "Server"), None)
            if reason is not None:
                rest = record.msg[unreached.end() :]
                record.msg, record.args = f"{unreached['head']}({reason}). {rest}", ()
            return True
        if NO_QUIC_CONTEXT.match(record.msg):
            reason = self._pending.pop((*address, "Client"), None)
            if reason is not None:
                record.msg, record.args = f"Client QUIC handshake failed: {reason}", ()
        return True

    def _filter_aioquic(self, record: logging.LogRecord) -> bool:
        """aioquic's warning for a handshake tlsgate failed on purpose: said again, with the reason, at debug level
        (mitmproxy's "Client QUIC handshake failed" line that follows carries the reason at warning level)."""
        if not self._quic_ids or not isinstance(record.msg, str):
            return True
        found = AIOQUIC_ERROR.match(record.msg)
        reason = self._quic_ids.pop(found["id"], None) if found else None
        if found is not None and reason is not None:
            record.msg, record.args = f"[{found['id']}] QUIC handshake closed on purpose: {reason}", ()
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


REFUSALS = RefusalReasons()


def explain_refusals() -> RefusalReasons:
    """Install the filter on the loggers of mitmproxy's proxy server (layer messages) and of aioquic (once)."""
    for name in ("mitmproxy.proxy.server", "quic"):
        found = logging.getLogger(name)
        if REFUSALS not in found.filters:
            found.addFilter(REFUSALS)
    return REFUSALS
