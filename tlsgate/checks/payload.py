"""Verdicts on what a decrypted request carries: weak home-made crypto, secrets where they leak, seeded identifiers.

The add-on hands over facts that are already free of values (field paths,
encodings, lengths, key format names); this module decides which of them are
issues under the host's `payload:` settings and says what to change.
`block` is an enforced effect, so `mode: report` records instead of
refusing, as for every other check; a body that was already streamed upstream
can only be recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tlsgate.checks.model import Check, Effect, Issue, Severity, remedy_for
from tlsgate.policy.model import Match
from tlsgate.policy.sections.payload import PAYLOAD, PayloadAction, PayloadRules
from tlsgate.tls.severity import RANK

# Which sub-key of `payload:` governs each finding kind.
CATEGORY = {
    "ecb": "ecb",
    "deterministic_encryption": "ecb",
    "secret_in_url": "secrets",
    "unsigned_jwt": "secrets",
    "basic_auth_third_party": "secrets",
    "provider_key": "secrets",
    "identifier": "identifiers",
}


@dataclass(frozen=True)
class PayloadFacts:
    """What one request (or response) showed; every list holds value-free dicts."""

    method: str
    url: str  # redacted, seeded identifiers masked
    direction: str = "request"
    streamed: bool = False  # the body had gone upstream before it could be judged
    inspected_bytes: int = 0
    body_bytes: int | None = None  # the whole body's size when known
    ecb: list[dict[str, Any]] = field(default_factory=list)
    deterministic: list[dict[str, Any]] = field(default_factory=list)
    url_credentials: list[dict[str, Any]] = field(default_factory=list)
    unsigned_jwts: list[dict[str, Any]] = field(default_factory=list)
    basic_auth: bool = False
    keys: list[dict[str, Any]] = field(default_factory=list)
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)  # scanning limits reached: the lists may be incomplete
    message: dict[str, Any] | None = None  # a WebSocket or gRPC message: its index on the connection or call, type, size


# WebSocket message directions (`PayloadFacts.direction`); only what the app sends can be held back.
TO_SERVER = "client_to_server"
TO_APP = "server_to_client"
POLICY_VIOLATION = 1008  # RFC 6455 7.4.1: the close code for "a message that violates its policy"
CLOSE_REASON_BYTES = 123  # a close frame is a control frame (125 bytes): 2 for the code, the rest for the reason


def rules_of(match: Match) -> PayloadRules:
    return PAYLOAD.of(match.settings)


def judge_payload(facts: PayloadFacts, match: Match) -> list[Issue]:
    """One issue per finding kind present, in the order a reader would want them (weakest crypto first)."""
    rules = rules_of(match)
    third_party = match.rule is None
    common: dict[str, Any] = {
        "direction": facts.direction,
        "method": facts.method,
        "url": facts.url,
        "inspected_bytes": facts.inspected_bytes,
        "third_party": third_party,
    }
    if facts.body_bytes is not None:
        common["body_bytes"] = facts.body_bytes
    if facts.streamed:
        common["streamed"] = True
    if facts.capped:
        common["capped"] = list(facts.capped)
    if facts.message is not None:
        common["grpc" if facts.message.get("type") == "grpc" else "websocket"] = dict(facts.message)
    where = _where(facts, match.host)
    held = facts.direction in ("request", TO_SERVER) and not facts.streamed  # can still be refused
    issues: list[Issue] = []

    def add(kind: str, severity: Severity, detail: str, evidence: dict[str, Any], advice: str) -> None:
        action = rules.action(CATEGORY[kind])
        if action is PayloadAction.IGNORE:
            return
        effect = Effect.ENFORCED if action is PayloadAction.BLOCK and held else Effect.RECORD
        if facts.streamed and action is PayloadAction.BLOCK and facts.direction == "request":
            detail += " (the body had already streamed upstream: recorded, not blocked)"
        elif action is PayloadAction.BLOCK and facts.direction == TO_APP:
            detail += " (sent by the server: recorded, not blocked; holding it back from the app protects nothing)"
        setting = f"payload: {{..., {CATEGORY[kind]}: ignore}}"
        remedy = f"{advice}; or, if this is expected, {remedy_for(match, setting)}"
        issues.append(Issue(Check.PAYLOAD, kind, effect, severity, detail, {**common, **evidence}, remedy))

    if facts.ecb:
        add(
            "ecb",
            Severity.HIGH,
            f"{where} carries AES-ECB ciphertext (equal plaintext blocks give equal cipher blocks): "
            + ", ".join(sorted({str(item["field"]) for item in facts.ecb}))[:300],
            {"fields": facts.ecb},
            "encrypt with an AEAD and a fresh nonce per message (AES-GCM, ChaCha20-Poly1305) under a key that is not "
            "in the app, or rely on TLS alone",
        )
    if facts.deterministic:
        reused = any(d.get("basis") == "keystream_reuse" for d in facts.deterministic)
        add(
            "deterministic_encryption",
            Severity.HIGH if reused else Severity.MEDIUM,
            (
                f"{where} reuses a keystream (CTR or GCM with a fixed nonce: two messages XOR to their plaintexts' XOR): "
                if reused
                else f"{where} repeats ciphertext structure across requests (a fixed IV, or ECB): "
            )
            + ", ".join(sorted({str(item["field"]) for item in facts.deterministic}))[:300],
            {"fields": facts.deterministic},
            "use a fresh random IV or nonce for every message (never a constant), with an AEAD mode",
        )
    if facts.url_credentials:
        add(
            "secret_in_url",
            Severity.HIGH,
            f"{where} carries credentials in its URL (kept in server and proxy logs and history): "
            + ", ".join(sorted({f"{c['kind']} {c['name']}" for c in facts.url_credentials}))[:300],
            {"credentials": facts.url_credentials},
            "send tokens and passwords in an Authorization header or the request body, never in the URL",
        )
    if facts.unsigned_jwts:
        add(
            "unsigned_jwt",
            Severity.HIGH,
            f"{where} carries a JWT without a signature (alg none or an empty signature): anyone can forge its claims",
            {"tokens": facts.unsigned_jwts},
            "sign every token the server issues and reject alg none on the server",
        )
    if facts.basic_auth:
        add(
            "basic_auth_third_party",
            Severity.HIGH,
            f"{where} sends HTTP Basic credentials to a host no rule names",
            {"authorization": "basic"},
            f"send the app's credentials only to its own hosts; if {match.host} is one, name it in a rule",
        )
    if facts.keys:
        worst = max((k["severity"] for k in facts.keys), key=RANK.__getitem__)
        add(
            "provider_key",
            Severity(worst),
            f"{where} carries a provider secret in a published format: "
            + ", ".join(sorted({str(k["format"]) for k in facts.keys})),
            {"keys": facts.keys},
            "keep provider keys on your server (the app is public), and revoke this one",
        )
    if facts.identifiers:
        kinds = sorted({str(i["kind"]) for i in facts.identifiers})
        hashed = any(str(i["encoding"]).endswith(("-hex", "-base64")) for i in facts.identifiers)
        party = "a third party (a host no rule names)" if third_party else "a host the policy names"
        add(
            "identifier",
            Severity.MEDIUM if third_party else Severity.LOW,
            f"{where}, {party}, received the device's {', '.join(kinds)}" + (" (hashed)" if hashed else ""),
            {"identifiers": facts.identifiers, "identifier_kinds": kinds},
            f"check that {match.host} may receive {', '.join(kinds)} (a hash of an identifier is still the identifier)",
        )
    return issues


def _where(facts: PayloadFacts, host: str) -> str:
    """Where the value went, in the detail; a WebSocket message's index is in the evidence only, so the detail (and
    with it the once-per-detail recording of reported findings) is the same for every message of a habit."""
    if facts.direction == TO_SERVER:
        return f"a WebSocket message from the app to {host}"
    if facts.direction == TO_APP:
        return f"a WebSocket message from {host} to the app"
    return f"{facts.direction} to {host}" if facts.direction == "request" else f"response from {host}"


def close_reason(kind: str, rule: str) -> str:
    """The reason of the close frame that ends a WebSocket whose message was blocked: the finding kind and the
    policy rule (file:line), within the 123 bytes a close frame has room for (a long path keeps its end)."""
    head = f"tlsgate blocked ({kind}) by "
    room = CLOSE_REASON_BYTES - len(head.encode())
    tail = rule.encode("utf-8")
    if len(tail) > room:
        tail = b"..." + tail[len(tail) - room + 3 :]
    return head + tail.decode("utf-8", "ignore")
