"""Token and key formats that are secrets wherever they appear, by their providers' published shapes.

A hand-written table rather than a library: the candidate, Yelp's
detect-secrets, has had no release since 1.5.0 (May 2024), reads files line by
line under process-global settings, pulls `requests` into the proxy, and its
provider plugins are the same published prefixes as below. Each format here
names where its shape is published, and only secret (not publishable) kinds
are listed. Every pattern starts at a fixed prefix and every repeat has an
upper bound, so a hostile 64 KiB value costs each pattern at most (value
length x bound) steps.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass


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

_PREFILTER = re.compile(r"AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|glpat-|xox|hooks\.slack|_live_|_test_|SG\.|SK[0-9a-f]|"
                        r"sk-|npm_|pypi-|shp|AIza|PRIVATE KEY")


@dataclass(frozen=True)
class KeyHit:
    format: KeyFormat
    length: int


def provider_keys(text: str) -> list[KeyHit]:
    """Published key formats in `text`; one cheap scan first, since nearly every value has none."""
    if not _PREFILTER.search(text):
        return []
    return [KeyHit(fmt, len(found.group(0))) for fmt in KEY_FORMATS for found in fmt.pattern.finditer(text)]


JWT_SHAPE = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


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
    out: list[str] = []
    if "eyJ" not in text:
        return out
    for match in JWT_SHAPE.finditer(text):
        claims = match.group(0).split(".")[1]
        try:
            out.append(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)).decode("utf-8"))
        except (binascii.Error, ValueError):
            continue
        if len(out) >= 16:
            break
    return out


def jwts(text: str) -> list[JwtFacts]:
    """Every JWS compact token in `text` whose header decodes; `alg` is cut to a short printable word."""
    found: list[JwtFacts] = []
    if "eyJ" not in text:
        return found
    for match in JWT_SHAPE.finditer(text):
        token = match.group(0)
        header_b64, _, rest = token.partition(".")
        signature = rest.partition(".")[2]
        try:
            header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
        except (binascii.Error, ValueError, RecursionError):
            continue
        if not isinstance(header, dict):
            continue
        alg = header.get("alg")
        alg_text = alg if isinstance(alg, str) and re.fullmatch(r"[A-Za-z0-9+_-]{1,16}", alg) else "missing"
        found.append(JwtFacts(alg_text, len(signature), len(token)))
        if len(found) >= 16:
            break
    return found
