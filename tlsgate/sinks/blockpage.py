"""The answer a client gets when tlsgate blocks it.

A tester looking at a failed request in an app's logs or a browser must see,
without opening tlsgate's console, which check fired, for which host, which
policy line decided and what to change. Apps that log response bodies as JSON
get the same facts as JSON. A gRPC client never reads an HTTP error body: it
reads a status, so a gRPC or gRPC-Web call gets `PERMISSION_DENIED` with the
same facts in `grpc-message` (`grpc_answer`).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Block:
    check: str
    host: str
    rule: str  # file:line
    reason: str
    remedy: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        """Machine-readable verdict headers, so scripts need not parse the body."""
        return {"X-Tlsgate-Check": self.check, "X-Tlsgate-Rule": self.rule, "Cache-Control": "no-store"}


def wants_json(accept: str) -> bool:
    accept = accept.lower()
    return "application/json" in accept or "+json" in accept


def render(block: Block, accept: str = "") -> tuple[bytes, str]:
    """Body and content type for the client's Accept header."""
    if wants_json(accept):
        body = {
            ("failed_upstream" if block.check == "fault" else "blocked_by"): "tlsgate",
            "check": block.check,
            "host": block.host,
            "rule": block.rule,
            "reason": block.reason,
            "remedy": block.remedy,
            "evidence": block.evidence,
        }
        return json.dumps(body, indent=2, default=str).encode() + b"\n", "application/json"
    esc = html.escape
    rows = "".join(
        f"<tr><th>{esc(label)}</th><td>{esc(str(value))}</td></tr>"
        for label, value in (("check", block.check), ("host", block.host), ("policy rule", block.rule), *block.evidence.items())
    )
    fault = block.check == "fault"
    title = "Upstream failed (tlsgate)" if fault else "Blocked by tlsgate"
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head><body>"
        f"<h1>{title}: {esc(str(block.evidence.get('kind', block.check)) if fault else esc(block.check))}</h1>"
        f"<p>{esc(block.reason)}</p><table>{rows}</table>"
        f"<h2>{'What to check' if fault else 'How to allow it'}</h2><p>{esc(block.remedy)}</p></body></html>\n"
    )
    # Request text (path, Host, User-Agent) keeps non-UTF-8 bytes as surrogates: show them escaped, never fail.
    return page.encode("utf-8", "backslashreplace"), "text/html; charset=utf-8"


# gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html) for tlsgate's answers.
PERMISSION_DENIED = 7
UNAVAILABLE = 14
DEADLINE_EXCEEDED = 4
GRPC_MESSAGE_LIMIT = 1024  # characters of grpc-message before encoding: a header, within every client's limit


@dataclass(frozen=True)
class GrpcAnswer:
    """An HTTP 200 whose status is in gRPC's own fields: trailers-only headers for gRPC (and gRPC-Web clients
    that read headers), plus a trailers frame in the body for gRPC-Web."""

    headers: dict[str, str]
    body: bytes


def grpc_message(block: Block) -> str:
    """What the client library shows as the error's details: check, host, rule, why and what to change."""
    fault = block.check == "fault"
    lead = "tlsgate: upstream failed" if fault else f"blocked by tlsgate: {block.check}"
    text = f"{lead} for {block.host} (rule {block.rule}): {block.reason}. To allow it: {block.remedy}"
    return text[:GRPC_MESSAGE_LIMIT]


def percent_encode(text: str) -> str:
    """grpc-message encoding (gRPC over HTTP/2 spec): UTF-8, every byte outside 0x20-0x7E and `%` as %XX."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode("utf-8", "replace"))


def grpc_answer(block: Block, call: str, status: int) -> GrpcAnswer:
    """The answer for a gRPC call of kind `call` (`tlsgate.tls.grpc_calls.grpc_call`) with gRPC status `status`."""
    message = percent_encode(grpc_message(block))
    fields = {"grpc-status": str(status), "grpc-message": message}
    if call == "grpc":
        return GrpcAnswer({"content-type": "application/grpc", **fields}, b"")
    trailers = "".join(f"{name}:{value}\r\n" for name, value in fields.items()).encode("ascii")
    frame = b"\x80" + len(trailers).to_bytes(4, "big") + trailers
    if call == "grpc-web-text":
        return GrpcAnswer({"content-type": "application/grpc-web-text+proto", **fields}, base64.b64encode(frame))
    return GrpcAnswer({"content-type": "application/grpc-web+proto", **fields}, frame)
