"""Requests whose head two HTTP parsers would read differently: refused, never forwarded.

A bare CR or a NUL inside a header value passes mitmproxy's parser unchanged;
a server that splits lines on a bare CR then sees a header the proxy never
judged (request smuggling, header injection). The request is refused in every
mode: forwarding it would let the app's traffic say one thing to tlsgate and
another to the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.policy.model import Match

TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
BAD_VALUE_BYTES = {0x00: "NUL", 0x0D: "bare CR", 0x0A: "bare LF"}


def judge_header_fields(fields: Iterable[tuple[bytes, bytes]], match: Match) -> Issue | None:
    """The first header whose name is not a token, or whose value carries CR, LF or NUL; names only, never values."""
    for name, value in fields:
        problem = None
        if not TOKEN.fullmatch(name):
            problem = "a header name that is not an HTTP token"
        else:
            found = sorted({label for byte, label in BAD_VALUE_BYTES.items() if byte in value})
            if found:
                problem = f"{' and '.join(found)} inside the value of {name.decode('ascii')[:64]!r}"
        if problem is not None:
            return Issue(
                Check.REQUEST,
                "ambiguous_header",
                Effect.ALWAYS,
                Severity.HIGH,
                f"request to {match.host} refused: {problem} (a server could read different headers than tlsgate did)",
                {"header": name.decode("ascii", "backslashreplace")[:64], "value_length": len(value)},
                "send each header on its own CRLF-terminated line, with no control characters in names or values",
            )
    return None
