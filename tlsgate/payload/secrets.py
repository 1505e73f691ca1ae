"""Token and key formats that are secrets wherever they appear, by their providers' published shapes.

A hand-written table rather than a library: the candidate, Yelp's
detect-secrets, has had no release since 1.5.0 (May 2024), reads files line by
line under process-global settings, pulls `requests` into the proxy, and its
provider plugins are the same published prefixes as below. Each format here
names where its shape is published, and only secret (not publishable) kinds
are listed. Every pattern starts at a fixed prefix and every repeat has an
upper bound; a pattern is only tried where one scan over the text found its
prefix, at most `bounds.MAX_CANDIDATES` places per message, so a body made
of key-shaped tokens costs a fixed amount beyond that one scan.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from dataclasses import dataclass

from tlsgate.payload.bounds import Budget, Steps, drain, windowed


@dataclass(frozen=True)
class KeyFormat:
    name: str
    pattern: re.Pattern[str]
    source: str
    severity: str = "high"


KEY_FORMATS: tuple[KeyFormat, ...] = (
    KeyFormat(
        "aws_access_key_id",
        re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"),
        "AWS IAM User Guide, 'Unique identifier prefixes' (AKIA: access key, ASIA: temporary key)",
    ),
    KeyFormat(
        "github_token",
        re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})"),
        "GitHub blog 2021-04-05, 'Behind GitHub's new authentication token formats'",
    ),
    KeyFormat(
        "gitlab_token",
        re.compile(r"(?<![A-Za-z0-9_])glpat-[A-Za-z0-9_-]{20,100}"),
        "GitLab docs, 'Token prefixes' (personal access token glpat-)",
    ),
    KeyFormat(
        "slack_token",
        re.compile(r"(?<![A-Za-z0-9])xox[abeoprs]-[A-Za-z0-9-]{10,250}"),
        "Slack API docs, 'Token types' (xoxb- bot, xoxp- user, xoxa-/xoxr- rotated, xoxe- refresh)",
    ),
    KeyFormat(
        "slack_webhook",
        re.compile(r"hooks\.slack\.com/services/T[A-Z0-9]{6,16}/B[A-Z0-9]{6,16}/[A-Za-z0-9]{20,40}"),
        "Slack API docs, 'Sending messages using incoming webhooks'",
    ),
    KeyFormat(
        "stripe_secret_key",
        re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}"),
        "Stripe docs, 'API keys' (sk_ secret, rk_ restricted; pk_ publishable keys are not secrets)",
    ),
    KeyFormat(
        "sendgrid_api_key",
        re.compile(r"(?<![A-Za-z0-9])SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
        "Twilio SendGrid docs, 'API keys' (SG.<id>.<secret>)",
    ),
    KeyFormat(
        "twilio_api_key",
        re.compile(r"(?<![A-Za-z0-9])SK[0-9a-f]{32}(?![0-9a-f])"),
        "Twilio docs, 'API keys' (API key SID SK + 32 hex)",
        "medium",
    ),
    KeyFormat(
        "openai_api_key",
        re.compile(r"(?<![A-Za-z0-9])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}T3BlbkFJ[A-Za-z0-9_-]{20,200}"),
        "OpenAI keys carry the marker T3BlbkFJ (base64 of 'openai'), as GitHub secret scanning matches them",
    ),
    KeyFormat(
        "npm_token",
        re.compile(r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
        "GitHub blog 2021-09-23, 'npm access tokens in the new format' (npm_ + 36)",
    ),
    KeyFormat(
        "pypi_token",
        re.compile(r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,1000}"),
        "PyPI help, 'API tokens' (pypi- macaroon for pypi.org)",
    ),
    KeyFormat(
        "shopify_token",
        re.compile(r"(?<![A-Za-z0-9])shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
        "Shopify engineering blog, 'Shopify access token prefixes'",
    ),
    KeyFormat(
        "google_api_key",
        re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
        "Google Cloud docs, 'Manage API keys' (AIza + 35); apps ship these by design: check it is restricted",
        "low",
    ),
    KeyFormat(
        "private_key",
        re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
        "RFC 7468 (PEM labels for private keys)",
        "critical",
    ),
)

# One cheap scan finds where a key could start (a plain alternation of literals: named groups would make it a
# hundred times slower); only the formats that start that way are tried there, this many characters before it.
_PREFILTER = re.compile(
    r"AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|glpat-|xox|hooks\.slack|_live_|_test_|SG\.|SK[0-9a-f]|"
    r"sk-|npm_|pypi-|shp|AIza|-----BEGIN "
)
_TRIGGERS: dict[str, tuple[str, int]] = {
    "AKIA": ("aws_access_key_id", 0), "ASIA": ("aws_access_key_id", 0), "ABIA": ("aws_access_key_id", 0),
    "ACCA": ("aws_access_key_id", 0), "github_pat_": ("github_token", 0), "glpat-": ("gitlab_token", 0),
    "xox": ("slack_token", 0), "hooks.slack": ("slack_webhook", 0), "_live_": ("stripe_secret_key", 2),
    "_test_": ("stripe_secret_key", 2), "SG.": ("sendgrid_api_key", 0), "sk-": ("openai_api_key", 0),
    "npm_": ("npm_token", 0), "pypi-": ("pypi_token", 0), "shp": ("shopify_token", 0), "AIza": ("google_api_key", 0),
    "-----BEGIN ": ("private_key", 0),
}  # fmt: skip


def _trigger(text: str) -> tuple[str, int]:
    found = _TRIGGERS.get(text)
    if found is not None:
        return found
    return ("github_token", 0) if text.startswith("gh") else ("twilio_api_key", 0)  # gh?_ and SK + hex digit


_BY_NAME = {fmt.name: fmt for fmt in KEY_FORMATS}


@dataclass(frozen=True)
class KeyHit:
    format: KeyFormat
    length: int


def provider_keys(text: str, budget: Budget | None = None) -> list[KeyHit]:
    """Published key formats in `text`; one cheap scan first, since nearly every value has none."""
    if not _PREFILTER.search(text):
        return []
    return drain(provider_key_steps(text, budget or Budget()))


def provider_key_steps(text: str, budget: Budget) -> Steps[list[KeyHit]]:
    """Published key formats in `text`, one window at a time: a scan for the places a key could start, then the
    formats that start that way tried at each such place, at most `budget.candidates` places per message."""
    found: list[KeyHit] = []
    ends: dict[str, int] = {}  # per format, where its last key ended: a key is counted once
    for trigger in windowed(_PREFILTER, text):
        if trigger is None:
            yield None
            continue
        if not budget.candidate():
            return found
        name, back = _trigger(trigger.group(0))
        start = trigger.start() - back
        if start < ends.get(name, 0) or start < 0:
            continue
        key = _BY_NAME[name].pattern.match(text, start)
        if key is not None:
            ends[name] = key.end()
            budget.keep(found, KeyHit(_BY_NAME[name], len(key.group(0))), "keys")
    return found


# Bounded parts (a JOSE header is short; a token is a header line): a hostile run costs each match a fixed amount.
# The literal comes first (then "not inside a longer run"), so the regex engine skips to each "eyJ" at C speed.
JWT_SHAPE = re.compile(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{4,8192}\.[A-Za-z0-9_-]{0,65536}\.[A-Za-z0-9_-]{0,8192}")


@dataclass(frozen=True)
class JwtFacts:
    """The header of a JWT, which says how (whether) it is signed; the claims are never read."""

    alg: str
    signature_length: int
    length: int

    @property
    def unsigned(self) -> bool:
        return self.alg.lower() == "none" or self.signature_length == 0


def jwt_claims(text: str) -> list[str]:
    """The decoded claims of each JWT in `text`, for the identifier search only (never shown)."""
    return drain(jwt_steps(text, Budget(), facts=False, claims=True))[1]


def jwts(text: str) -> list[JwtFacts]:
    """Every JWS compact token in `text` whose header decodes; `alg` is cut to a short printable word."""
    return drain(jwt_steps(text, Budget(), facts=True, claims=False))[0]


MAX_TOKENS = 16  # per text: tokens judged, and claims handed to the identifier search


def jwt_steps(text: str, budget: Budget, facts: bool = True, claims: bool = False) -> Steps[tuple[list[JwtFacts], list[str]]]:
    """One pass over `text` for both uses of its JWTs, a window at a time; each JWT-shaped match is a candidate."""
    found: list[JwtFacts] = []
    out: list[str] = []
    if "eyJ" not in text:
        return found, out
    for match in windowed(JWT_SHAPE, text):
        if match is None:
            yield None
            continue
        if not budget.candidate():
            break
        header_b64, payload_b64, signature = match.group(0).split(".")
        if facts and len(found) < MAX_TOKENS:
            try:
                header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
            except (binascii.Error, ValueError, RecursionError):
                header = None
            if isinstance(header, dict):
                alg = header.get("alg")
                alg_text = alg if isinstance(alg, str) and re.fullmatch(r"[A-Za-z0-9+_-]{1,16}", alg) else "missing"
                found.append(JwtFacts(alg_text, len(signature), len(match.group(0))))
        if claims and len(out) < MAX_TOKENS:
            with contextlib.suppress(binascii.Error, ValueError):
                out.append(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)).decode("utf-8"))
        if (not facts or len(found) >= MAX_TOKENS) and (not claims or len(out) >= MAX_TOKENS):
            break
    return found, out
