"""Unencrypted traffic: plain http:// and ws:// requests, and TCP streams that are not TLS, judged by `cleartext`.

The add-on hands over what it saw, already redacted: the credentials are named
(kind and name, or kind and length for streams), never valued, so nothing here
can leak one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tlsgate.checks.model import Check, Effect, Issue, Severity, remedy_for
from tlsgate.policy.model import Match
from tlsgate.policy.sections.cleartext import CLEARTEXT, Cleartext, cleartext_for
from tlsgate.tls.plaintext import Sighting


@dataclass(frozen=True)
class CleartextRequest:
    method: str
    websocket: bool
    redacted_url: str
    credentials: list[dict[str, str]] = field(default_factory=list)  # {"kind", "name"} each
    user_agent: str = ""
    h2c: bool = False  # HTTP/2 by prior knowledge (the `PRI *` preface), inside a tunnel or on a port the app chose


def judge_cleartext(request: CleartextRequest, match: Match) -> Issue | None:
    if cleartext_for(CLEARTEXT.get(match.settings), "http") is Cleartext.ALLOW:
        return None
    scheme = "ws" if request.websocket else "http"
    detail = f"plain {scheme}:// request to {match.host} ({'HTTP/2 by prior knowledge, h2c' if request.h2c else request.method})"
    if request.credentials:
        detail += f" carrying credentials in cleartext: {', '.join(sorted({c['kind'] for c in request.credentials}))}"
    evidence: dict[str, Any] = {
        "method": request.method,
        "url": request.redacted_url,
        "protocol": scheme,
        "credentials": request.credentials,
        "user_agent": request.user_agent[:200],
    }
    if request.h2c:
        evidence["h2c"] = True
    return Issue(
        Check.CLEARTEXT,
        f"plain_{scheme}",
        Effect.ENFORCED,
        Severity.HIGH if request.credentials else Severity.MEDIUM,
        detail,
        evidence,
        f"use {scheme}s:// in the app; or, to let this host through, {remedy_for(match, allow_setting(match, 'http'))}",
    )


def allow_setting(match: Match, protocol: str) -> str:
    """What to write so `protocol` passes for this host, in the spelling the host's section already uses."""
    if isinstance(CLEARTEXT.get(match.settings), Cleartext):
        return "cleartext: allow" if protocol == "http" else f"cleartext: {{default: block, {protocol}: allow}}"
    return f"cleartext: {{..., {protocol}: allow}}"


_ADVICE = {
    "mqtt": "use MQTT over TLS (port 8883)",
    "smtp": "use STARTTLS or implicit TLS (port 465)",
    "imap": "use STARTTLS or IMAPS (port 993)",
    "pop3": "use STLS or POP3S (port 995)",
    "ftp": "use FTPS (AUTH TLS) or SFTP",
    "xmpp": "use XMPP STARTTLS or direct TLS",
    "redis": "use Redis with TLS (rediss://)",
    "unknown": "wrap the protocol in TLS",
}


def judge_stream(sighting: Sighting, match: Match, port: int | None) -> Issue | None:
    """A TCP stream that is not TLS: an issue unless the host's `cleartext` allows its protocol.

    Severity follows what the bytes showed: credentials in the clear (high), a
    server offering STARTTLS the client did not use (high: the fix is already
    deployed), any other cleartext (medium).
    """
    protocol = sighting.protocol
    if sighting.upgraded or cleartext_for(CLEARTEXT.get(match.settings), protocol) is Cleartext.ALLOW:
        return None
    where = f"{match.host}:{port}" if port else match.host
    detail = f"cleartext {protocol} stream to {where}"
    if sighting.credentials:
        detail += f" carrying credentials in cleartext: {', '.join(sighting.credentials)}"
    if sighting.starttls_offered_unused:
        detail += "; the server offers STARTTLS, the client did not use it"
    high = bool(sighting.credentials) or sighting.starttls_offered_unused
    advice = _ADVICE.get(protocol, "use TLS")
    if sighting.starttls_offered_unused:
        advice = "use the STARTTLS the server already offers"
    return Issue(
        Check.CLEARTEXT,
        f"plain_{protocol}",
        Effect.ENFORCED,
        Severity.HIGH if high else Severity.MEDIUM,
        detail,
        sighting.evidence(),
        f"make the app {advice}; or, to let this host through, {remedy_for(match, allow_setting(match, protocol))}",
    )


def refusal(sighting: Sighting, rule: str) -> bytes:
    """What the app is told, in its own protocol, just before a blocked stream is closed: its logs then say why.

    Only protocols with an error any client understands at this point get one; the rest are just closed.
    """
    text = "tlsgate blocked cleartext " + sighting.protocol + " (rule " + _printable(rule) + ")"
    if sighting.protocol == "mqtt":  # CONNACK refusing the CONNECT: "not authorized"
        return b"\x20\x03\x00\x87\x00" if sighting.details.get("mqtt_protocol_level") == 5 else b"\x20\x02\x00\x05"
    return _closing(sighting.protocol, text)


def upstream_refusal(protocol: str, check: str, rule: str) -> bytes:
    """What a client that upgraded with STARTTLS is told, over its TLS, when tlsgate refused (or could not reach) the server."""
    text = "tlsgate refused the server after STARTTLS: " + _printable(check)
    if rule:
        text += " (rule " + _printable(rule) + ")"
    if protocol == "xmpp":
        return b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    return _closing(protocol, text)


def _closing(protocol: str, text: str) -> bytes:
    """The protocol's "service closing" line carrying `text`; nothing for protocols without one."""
    match protocol:
        case "smtp":
            return f"421 4.7.0 {text}\r\n".encode()
        case "ftp":
            return f"421 {text}\r\n".encode()
        case "imap":
            return f"* BYE {text}\r\n".encode()
        case "pop3" | "redis":
            return f"-ERR {text}\r\n".encode()
    return b""


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
