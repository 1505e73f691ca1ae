"""Plain http:// and ws:// requests: blocked or reported by the host's `cleartext` section.

The add-on hands over what it saw, already redacted: the credentials are named
(kind and name), never valued, so nothing here can leak one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.checks.model import Check, Effect, Issue, Severity, remedy_for
from proxy.policy.model import Match
from proxy.policy.sections.cleartext import Cleartext


@dataclass(frozen=True)
class CleartextRequest:
    method: str
    websocket: bool
    redacted_url: str
    credentials: list[dict[str, str]] = field(default_factory=list)  # {"kind", "name"} each
    user_agent: str = ""


def judge_cleartext(request: CleartextRequest, match: Match) -> Issue | None:
    if match.settings.get("cleartext") is Cleartext.ALLOW:
        return None
    scheme = "ws" if request.websocket else "http"
    detail = f"plain {scheme}:// request to {match.host} ({request.method})"
    if request.credentials:
        detail += f" carrying credentials in cleartext: {', '.join(sorted({c['kind'] for c in request.credentials}))}"
    evidence: dict[str, Any] = {
        "method": request.method,
        "url": request.redacted_url,
        "protocol": scheme,
        "credentials": request.credentials,
        "user_agent": request.user_agent[:200],
    }
    return Issue(
        Check.CLEARTEXT,
        f"plain_{scheme}",
        Effect.ENFORCED,
        Severity.HIGH if request.credentials else Severity.MEDIUM,
        detail,
        evidence,
        f"use {scheme}s:// in the app; or, to let this host through, {remedy_for(match, 'cleartext: allow')}",
    )
