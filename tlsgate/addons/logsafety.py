"""Every console line is one line, whatever a client sent.

mitmproxy's own log lines quote what clients control: the SNI in "Client TLS
handshake failed ... for <sni>", hosts, URLs and request lines. An SNI with a
newline in it wrote a forged `[CRITICAL]` line into the console log, and a
lone surrogate can break a log shipper's UTF-8. The filter sits on the log
handlers (not a logger), so every record reaching the console passes it, from
mitmproxy, its add-ons and tlsgate alike.
"""

from __future__ import annotations

import logging

from mitmproxy import log

from tlsgate.sinks.findings import printable
from tlsgate.sinks.redact import redact_text


class EscapeControls(logging.Filter):
    """Escapes control characters (CR, LF, NUL, ESC, ...) and undecodable text in the formatted message, and
    redacts URLs in it: mitmproxy quotes a malformed request line whole, query string and all."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not format is still logged, safely
            message = f"{record.msg!r} {record.args!r}"
        try:
            safe = printable(redact_text(message))
        except Exception as exc:  # noqa: BLE001 - a line that cannot be redacted is not shown, and the caller carries on
            safe = f"(a log line tlsgate could not redact is not shown: {type(exc).__name__})"
        if safe != message or record.args:
            record.msg, record.args = safe, ()
        return True


def protect(logger: logging.Logger | None = None) -> int:
    """Put the filter on mitmproxy's console handlers of `logger` (root by default); returns how many were added."""
    added = 0
    for handler in (logger or logging.getLogger()).handlers:
        if isinstance(handler, log.MitmLogHandler) and not any(isinstance(f, EscapeControls) for f in handler.filters):
            handler.addFilter(EscapeControls())
            added += 1
    return added


class SafeLog:
    """Installs the filter on mitmproxy's terminal log handler (created with the master, before add-ons load)."""

    def load(self, loader: object) -> None:
        protect()

    def running(self) -> None:
        protect()  # and on any handler installed since
