"""Named cipher presets and the cipher policy a `tls:` section compiles to.

A policy author should be able to say "intermediate" and get exactly what Mozilla means by
it, not our paraphrase, so the suite lists below are copied verbatim (order included) from
the published sources and only translated to IANA codes through the catalogue.

A fact about cipher suites, not policy: the policy's `tls:` section names these presets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from tlsgate.tls.ciphers import (
    BROKEN_WEAKNESSES,
    Suite,
    by_iana_code,
    describe,
    is_signalling,
    lookup,
    weakness_reasons,
)
from tlsgate.tls.versions import TLS_VERSIONS

MOZILLA_GUIDELINES_URL: Final = "https://ssl-config.mozilla.org/guidelines/5.7.json"
APPLE_ATS_URL: Final = "https://developer.apple.com/documentation/security/preventing-insecure-network-connections"

# Mozilla's `ciphersuites` list, identical in all three 5.7 configurations: TLS 1.3 suites
# are all strong, so every preset allows the same ones.
MOZILLA_TLS13: Final = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")

MOZILLA_INTERMEDIATE: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
)

MOZILLA_OLD: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "DHE-RSA-AES128-SHA256",
    "DHE-RSA-AES256-SHA256",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
)

# Apple lists these by IANA name, in this order, as the only suites ATS accepts on TLS 1.2.
APPLE_ATS_TLS12: Final = (
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
)


@dataclass(frozen=True)
class Preset:
    """A named, sourced set of acceptable suites and protocol versions.

    `ciphers` (TLS 1.0-1.2, OpenSSL names) and `ciphersuites` (TLS 1.3) keep the source's
    order because OpenSSL's cipher string is a preference list; `suites` is the same set as
    IANA codes for membership tests.
    """

    name: str
    min_version: str
    suites: frozenset[int]
    description: str
    source: str
    ciphers: tuple[str, ...] = ()
    ciphersuites: tuple[str, ...] = ()

    @property
    def versions(self) -> tuple[str, ...]:
        return TLS_VERSIONS[TLS_VERSIONS.index(self.min_version) :]

    @property
    def openssl_cipher_string(self) -> str:
        """What to hand `SSL_CTX_set_cipher_list` (empty for a TLS 1.3-only preset)."""
        return ":".join(self.ciphers)

    @property
    def openssl_ciphersuites_string(self) -> str:
        """What to hand `SSL_CTX_set_ciphersuites`."""
        return ":".join(self.ciphersuites)


def _openssl_names(names: Iterable[str]) -> tuple[str, ...]:
    """Normalise a source's names to OpenSSL spelling; an unknown name is a bug in this file."""
    out = []
    for name in names:
        suite = lookup(name)
        if suite is None:
            raise ValueError(f"preset names unknown cipher suite {name!r}")
        out.append(suite.openssl_name)
    return tuple(out)


def _make_preset(name: str, min_version: str, tls12: Iterable[str], description: str, source: str) -> Preset:
    ciphers = _openssl_names(tls12)
    ciphersuites = _openssl_names(MOZILLA_TLS13)
    codes = frozenset(s.code for s in map(lookup, ciphers + ciphersuites) if s is not None)
    return Preset(name, min_version, codes, description, source, ciphers, ciphersuites)


PRESETS: Final[dict[str, Preset]] = {
    "modern": _make_preset(
        "modern",
        "1.3",
        (),
        "Mozilla Server Side TLS 5.7 'modern': TLS 1.3 only, for clients that need no backward compatibility.",
        MOZILLA_GUIDELINES_URL,
    ),
    "intermediate": _make_preset(
        "intermediate",
        "1.2",
        MOZILLA_INTERMEDIATE,
        "Mozilla Server Side TLS 5.7 'intermediate': TLS 1.2+ with forward-secret AEAD suites only; "
        "the recommended general-purpose configuration.",
        MOZILLA_GUIDELINES_URL,
    ),
    "old": _make_preset(
        "old",
        "1.0",
        MOZILLA_OLD,
        "Mozilla Server Side TLS 5.7 'old': TLS 1.0+ including CBC, static-RSA and 3DES suites, "
        "only for very old clients (IE 8 on Windows XP, Java 6).",
        MOZILLA_GUIDELINES_URL,
    ),
    "ats": _make_preset(
        "ats",
        "1.2",
        APPLE_ATS_TLS12,
        "Apple App Transport Security: TLS 1.2+ with only the ECDHE (forward-secret) AES suites Apple lists for "
        "TLS 1.2; TLS 1.3 connections use the standard AEAD suites, all forward-secret.",
        APPLE_ATS_URL,
    ),
}


def preset(name: str) -> Preset:
    """The preset called `name`; the error lists the valid names so a typo is easy to fix."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown cipher preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None


def parse_cipher_names(names: Iterable[str]) -> tuple[frozenset[int], list[str]]:
    """Resolve IANA/OpenSSL names (or `0xC02F` codes) to codes; return the unresolved names too.

    Unknown names come back in input order rather than raising, so the loader can report
    each one at its own YAML location instead of stopping at the first.
    """
    codes: set[int] = set()
    unknown: list[str] = []
    for name in names:
        suite = lookup(name) or _suite_from_hex(name)
        if suite is None:
            unknown.append(name)
        else:
            codes.add(suite.code)
    return frozenset(codes), unknown


def _suite_from_hex(text: str) -> Suite | None:
    text = text.strip()
    if len(text) != 6 or text[:2].lower() != "0x":
        return None
    try:
        return by_iana_code(int(text, 16))
    except ValueError:
        return None


@dataclass(frozen=True)
class CipherPolicy:
    """Which negotiated suites a host accepts, and why a suite is or is not acceptable.

    Semantics, in order:
    1. A suite in `deny` is refused, whatever else says.
    2. With a preset and/or an allow list, the suite must be in the preset or the allow list.
    3. With neither, any suite is accepted except broken ones (null, export, anonymous, RC4,
       DES/3DES): a policy that never mentioned ciphers must not silently accept plaintext.
    Weakness sentences are always part of the reasons, also for accepted suites, so a report
    shows that e.g. 3DES under the 'old' preset was accepted knowingly. A code missing from the
    catalogue passes an unrestricted policy (with a reason saying it could not be judged):
    OpenSSL only negotiates suites it knows, and those are all catalogued.
    """

    preset: str | None = None
    allow: frozenset[int] = field(default_factory=frozenset)
    deny: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.preset is not None:
            preset(self.preset)  # fail at load time with the list of valid names

    @property
    def restricted(self) -> bool:
        return self.preset is not None or bool(self.allow)

    def permitted(self) -> frozenset[int]:
        """The explicit allow set (preset plus allow list) minus deny; empty when unrestricted."""
        base = preset(self.preset).suites if self.preset is not None else frozenset()
        return (base | self.allow) - self.deny

    def check(self, code: int) -> tuple[bool, list[str]]:
        """Whether `code` is acceptable, with every reason that applies (policy reasons first)."""
        if is_signalling(code):
            return False, [f"{describe(code)} is a signalling value, not a cipher suite"]
        suite = by_iana_code(code)
        refusals = self._refusals(code, suite)
        return not refusals, refusals + _strength_reasons(code, suite)

    def _refusals(self, code: int, suite: Suite | None) -> list[str]:
        if code in self.deny:
            return ["denied by policy"]
        if self.restricted:
            return [] if code in self.permitted() else [self._not_listed_reason()]
        if suite is not None and suite.broken:
            broken = ", ".join(w for w in suite.weaknesses if w in BROKEN_WEAKNESSES)
            return [f"refused by default: broken suite ({broken})"]
        return []

    def _not_listed_reason(self) -> str:
        if self.preset is not None and self.allow:
            return f"not in preset '{self.preset}' or the allow list"
        if self.preset is not None:
            return f"not in preset '{self.preset}'"
        return "not in the allow list"


def _strength_reasons(code: int, suite: Suite | None) -> list[str]:
    if suite is None:
        return [f"{describe(code)} is not in the catalogue, so its strength cannot be judged"]
    return weakness_reasons(suite)
