"""The answer a client gets when tlsgate blocks it.

A tester looking at a failed request in an app's logs or a browser must see,
without opening tlsgate's console, which check fired, for which host, which
policy line decided and what to change. Apps that log response bodies as JSON
get the same facts as JSON.
"""

from __future__ import annotations

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
