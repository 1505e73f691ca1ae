"""Upstream faults in words: a server that stalls, cannot be reached, or answers something that is not HTTP.

None of these is a policy verdict: nothing was judged and nothing can be
forwarded, so every issue here is `Check.FAULT` / `Effect.FAULT` (answered
502, or 504 when the server ran out of time). The add-on
(`tlsgate.addons.upstream_timeouts`) gathers the facts: which phase timed out,
or the error text mitmproxy's HTTP layer produced; this module names them.

Evidence keeps kinds, phases and lengths only: mitmproxy's error texts quote
the bytes a broken server sent (`Bad HTTP response line: b'...'`), and those
bytes may be anything, so they are cut off before they reach a finding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.policy.sections.timeouts import TimeoutRules


@dataclass(frozen=True)
class Phase:
    """One stage of talking to an upstream, with the option that bounds it, its default, and its policy key."""

    name: str
    option: str
    default: float
    waiting_for: str  # "no <waiting_for> within N s"
    key: str  # the key in a policy's `timeouts:` section


CONNECT = Phase("connect", "tlsgate_connect_timeout", 10.0, "TCP connection (SYN answered)", "connect")
TLS_HANDSHAKE = Phase("tls_handshake", "tlsgate_tls_handshake_timeout", 15.0, "completed TLS handshake", "handshake")
RESPONSE_HEAD = Phase("response_head", "tlsgate_response_head_timeout", 120.0, "complete response head", "response_head")
RESPONSE_BODY = Phase("response_body", "tlsgate_response_idle_timeout", 60.0, "progress on the response body", "response_idle")
PHASES = (CONNECT, TLS_HANDSHAKE, RESPONSE_HEAD, RESPONSE_BODY)

# A held body (not streamed: the client sees nothing until it is complete) must bring at least this much in
# every idle window; one byte a second keeps a connection "active" forever and the app waiting with it.
HELD_BODY_PROGRESS = 1024

_FAULT_REMEDY = "a network fault, not a policy verdict: check that the server is up and reachable from tlsgate"
# What apps wait by default (README "Limits and timeouts" cites each): most give up before tlsgate does.
APP_DEFAULTS = (
    "apps often give up sooner on their own: OkHttp (most Android apps) after 10 s without a byte, "
    "iOS URLSession after 60 s, while Dart's HttpClient and Java's HttpURLConnection wait with no limit"
)


@dataclass(frozen=True)
class Limit:
    """How long one phase may take for one host, and who said so: the option, or a policy's `timeouts:` line."""

    phase: Phase
    seconds: float
    set_at: str | None = None  # "policies/app.yaml:12" when a policy set it

    @property
    def source(self) -> str:
        """Where to change it, as a finding says it: `timeouts.response_head at policies/app.yaml:12` or the option."""
        return f"timeouts.{self.phase.key} at {self.set_at}" if self.set_at else self.phase.option

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase.name, "timeout_s": self.seconds, "option": self.phase.option}
        if self.set_at:
            out.update({"policy_key": f"timeouts.{self.phase.key}", "set_at": self.set_at})
        return out


def limit_for(phase: Phase, rules: TimeoutRules | None, option_seconds: float) -> Limit:
    """The host's own limit where a `timeouts:` block that applies sets one, else the option's."""
    own = rules.get(phase.key) if isinstance(rules, TimeoutRules) else None
    return Limit(phase, own.seconds, own.location.rule_ref) if own is not None else Limit(phase, option_seconds)


def _raise_it(limit: Limit) -> str:
    if limit.set_at:
        return f"raise timeouts.{limit.phase.key} at {limit.set_at}"
    return (
        f"raise timeouts.{limit.phase.key} in a policy rule for this host, or {limit.phase.option} for every host "
        f"(--set {limit.phase.option}=SECONDS)"
    )


def timeout_issue(limit: Limit, received: int | None = None) -> Issue:
    """The server did not get through `limit.phase` within `limit.seconds`."""
    evidence = limit.evidence()
    if received is not None:
        evidence["received_bytes"] = received
    return Issue(
        Check.FAULT,
        "timeout",
        Effect.FAULT,
        Severity.LOW,
        f"the server took too long: no {limit.phase.waiting_for} within {limit.seconds:g} s ({limit.source})",
        evidence,
        f"{_FAULT_REMEDY}; if this server is slow by design (long polling), {_raise_it(limit)}. "
        f"Note that {APP_DEFAULTS}: a limit above the app's own only makes it wait for an answer it no longer reads "
        "(that shows as a `client_gave_up` finding)",
    )


def timeout_text(limit: Limit) -> str:
    """The error text a timed-out connection carries inside mitmproxy (logs, `conn.error`): says "timed out"."""
    return f"timed out: no {limit.phase.waiting_for} within {limit.seconds:g} s ({limit.source})"


# An app that hangs up sooner than this (or half the limit, if that is less) after tlsgate started waiting has
# cancelled (a screen closed, a search retyped: HTTP/2 apps reset streams all the time); later it is its own
# timeout. Well under OkHttp's 10 s, which starts before tlsgate's wait does (the request still travels).
GAVE_UP_AFTER = 5.0


def app_gave_up(waited: float, limit: Limit) -> bool:
    """Whether an app's hang-up after `waited` seconds of waiting on the upstream reads as its timeout, not a cancel."""
    return waited >= min(GAVE_UP_AFTER, limit.seconds / 2)


def gave_up_issue(limit: Limit, waited: float) -> Issue:
    """The app hung up while tlsgate was still waiting for the upstream within `limit`: its own timeout came first."""
    return Issue(
        Check.FAULT,
        "client_gave_up",
        Effect.FAULT,
        Severity.LOW,
        f"the app gave up after {waited:.1f} s waiting for the server's {limit.phase.waiting_for}; tlsgate would "
        f"have waited {limit.seconds:g} s ({limit.source}), so the app's own timeout is shorter and the server slow",
        {**limit.evidence(), "waited_s": round(waited, 1)},
        f"the server is slow, not blocked: check it. {APP_DEFAULTS}; to have tlsgate answer first (a 504 naming "
        f"the host, which the app can show), set timeouts.{limit.phase.key} for this host below the app's timeout",
    )


# mitmproxy's HTTP/1 client error texts (proxy/layers/http/_http1.py) and h11's, most specific first.
_RESPONSE_FAULTS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("timeout", re.compile(r"timed? ?out", re.I), "it stopped answering"),
    ("not_http", re.compile(r"^Cannot parse HTTP response|^unexpected server response", re.I), "it did not answer in HTTP"),
    ("truncated", re.compile(r"without sending complete message body|incomplete", re.I), "the response body ended early"),
    ("malformed_body", re.compile(r"^HTTP/1 protocol error", re.I), "the response body was malformed"),
    (
        "protocol_error",
        re.compile(r"^HTTP/2 protocol error|^Received HTTP/2|stream reset|^HTTP/3", re.I),
        "it broke the HTTP/2 protocol",
    ),
    (
        "closed",
        re.compile(r"^server closed connection|^peer closed connection|closed by peer|connection closed", re.I),
        "it closed the connection without answering",
    ),
    ("reset", re.compile(r"reset|broken pipe", re.I), "it reset the connection"),
)
_CONNECT_FAULTS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("timeout", re.compile(r"timed? ?out", re.I), "it did not answer the connection"),
    ("refused", re.compile(r"refused|Connect call failed", re.I), "it refused the connection"),
    ("unreachable", re.compile(r"unreachable|no route", re.I), "it could not be reached"),
    (
        "dns",
        re.compile(r"Name or service not known|nodename nor servname|getaddrinfo|Temporary failure in name", re.I),
        "its name did not resolve",
    ),
    ("reset", re.compile(r"reset", re.I), "it reset the connection"),
)
_QUOTED = re.compile(r":?\s*b(['\"]).*$", re.S)  # a repr of the bytes the server sent, to the end of the text


def _classify(table: tuple[tuple[str, re.Pattern[str], str], ...], error: str, default: tuple[str, str]) -> tuple[str, str]:
    """(kind, words) of the first entry whose pattern finds `error`; tables are ordered most specific first."""
    return next(((kind, words) for kind, pattern, words in table if pattern.search(error)), default)


def safe_error(text: str) -> str:
    """`text` without the server's bytes mitmproxy quotes in it (they may be anything, secrets included)."""
    return _QUOTED.sub("", text).strip()[:200]


def response_fault(error: str, phase: str) -> Issue:
    """The server broke the HTTP exchange (`error` is mitmproxy's text for the client's ResponseProtocolError)."""
    kind, words = _classify(_RESPONSE_FAULTS, error, ("bad_response", "its answer was not usable"))
    return Issue(
        Check.FAULT,
        kind,
        Effect.FAULT,
        Severity.LOW,
        f"the server's answer could not be passed on ({words}): {safe_error(error)}",
        {"phase": phase, "error": safe_error(error), "error_chars": len(error)},
        "a network or server fault, not a policy verdict: the server must answer with an HTTP status line and "
        "headers; check what listens on this port (tlsgate never passes a broken answer on)",
    )


def connect_fault(error: str) -> Issue:
    """The TCP connection to the server could not be made."""
    kind, words = _classify(_CONNECT_FAULTS, error, ("connect_failed", "it could not be reached"))
    return Issue(
        Check.FAULT,
        kind,
        Effect.FAULT,
        Severity.LOW,
        f"the connection to the server failed ({words}): {safe_error(error)}",
        {"phase": CONNECT.name, "error": safe_error(error)},
        _FAULT_REMEDY,
    )


def held_body_stalled(received_in_window: int, streamed: bool) -> bool:
    """Whether one idle window's worth of body bytes is too little: none for a streamed body (the app sees each
    byte and judges for itself), under HELD_BODY_PROGRESS for a held one (the app sees nothing until the end)."""
    return received_in_window == 0 if streamed else received_in_window < HELD_BODY_PROGRESS


def parse_timeout(option: str, value: object) -> float:
    """A timeout option's value in seconds; ValueError says why it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{option} must be a number of seconds")
    seconds = float(value)
    if not 0 < seconds <= 86400:
        raise ValueError(f"{option} must be 1 to 86400 seconds, not {value}")
    return seconds


# An app hanging up mid-handshake this long after its hello was kept waiting for the upstream, not refusing
# tlsgate's certificate: most HTTP stacks give a handshake 10 s or more (OkHttp's connect timeout is 10 s).
UPSTREAM_WAIT_EXCUSES = 10.0


def silent_close_excused(upstream_failed: bool, waited: float | None) -> bool:
    """Whether an app closing silently mid-handshake says nothing about trust: tlsgate made it wait for an upstream
    that failed, or for `UPSTREAM_WAIT_EXCUSES` seconds or more, so the app's own timeout may have ended it just as
    the certificate arrived. An explicit alert (unknown ca, bad certificate) is never excused."""
    return upstream_failed or (waited is not None and waited >= UPSTREAM_WAIT_EXCUSES)


_TIMEOUT_TEXT = re.compile(r"timed out: no .* within (\d+(?:\.\d+)?) s \((?:(tlsgate_\w+)|timeouts\.(\w+) at (.+))\)$", re.S)


def timeout_from_text(error: str) -> Issue | None:
    """The timeout issue behind an error text made by `timeout_text` (a handshake this add-on's clock ended
    reaches UpstreamTls as mitmproxy's `conn.error`); None for any other text."""
    found = _TIMEOUT_TEXT.search(error or "")
    if found is None:
        return None
    option, key, set_at = found.group(2), found.group(3), found.group(4)
    phase = next((p for p in PHASES if p.option == option or (key is not None and p.key == key)), None)
    return timeout_issue(Limit(phase, float(found.group(1)), set_at)) if phase is not None else None


LIVE_STREAM_TYPES = ("text/event-stream", "application/grpc", "application/x-ndjson")


def is_live_stream(content_type: str) -> bool:
    """A response whose body is a stream of messages the app reads as they arrive, never one answer to hold whole."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(LIVE_STREAM_TYPES)
