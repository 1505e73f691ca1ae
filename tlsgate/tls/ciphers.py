"""The TLS cipher suite catalogue: what every suite code and name means, and why a suite is weak.

The data lives in `cipher_catalogue.csv` next to this module (one suite per row) so that
reviewing or extending it is a data change, not a code change. This module only loads it,
derives forward secrecy and weaknesses from the stated properties, and answers look-ups.

Pure Python on purpose: the policy loader, the ClientHello parser and the reports all need
the same answers, and none of them should have to import mitmproxy or OpenSSL to get them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Final

CATALOGUE_FILE: Final = "cipher_catalogue.csv"

# Order matters: reasons are reported in this order, worst first.
WEAKNESS_REASONS: Final[dict[str, str]] = {
    "null": "No encryption at all: the records are only integrity-protected and anyone on the path can read them.",
    "export": "Export-grade suites deliberately use 40/56-bit keys or a 512-bit key exchange, breakable in hours "
    "(FREAK, Logjam).",
    "anonymous": "The server is not authenticated, so any active man-in-the-middle can impersonate it.",
    "rc4": "RC4 has exploitable keystream biases that leak plaintext (RFC 7465 forbids it).",
    "des": "DES keys are brute-forceable and 3DES's 64-bit block allows Sweet32 birthday attacks on long connections.",
    "no_forward_secrecy": "The key exchange is not ephemeral (static RSA, static (EC)DH, Kerberos or plain PSK), "
    "so a later leak of the long-term key decrypts every recorded session.",
    "cbc": "CBC with MAC-then-encrypt has a long record of padding-oracle and timing attacks (POODLE, Lucky13).",
    "md5_mac": "The record MAC is HMAC-MD5, built on a broken hash that every current TLS guideline excludes.",
    "sha1_mac": "The record MAC is HMAC-SHA1, a legacy construction on a deprecated hash that TLS 1.3 dropped.",
}

# Weaknesses that make a suite unacceptable whatever else the policy says: they give the
# traffic away outright instead of merely lowering the margin.
BROKEN_WEAKNESSES: Final = frozenset({"null", "export", "anonymous", "rc4", "des"})

# Key exchanges whose session key does not survive the connection. TLS 1.3 ("ANY") always
# runs (EC)DHE except for psk_ke-only resumption, which is a session property, not a suite one.
# SRP derives the key from per-connection secrets, so a later verifier leak does not expose it.
FORWARD_SECRET_KX: Final = frozenset({"DHE", "ECDHE", "DHE_PSK", "ECDHE_PSK", "SRP", "ANY"})

_DES_CIPHERS: Final = frozenset({"DES", "DES40", "3DES_EDE"})

EMPTY_RENEGOTIATION_INFO_SCSV: Final = 0x00FF
FALLBACK_SCSV: Final = 0x5600
# RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA. Clients sprinkle these in to keep servers tolerant.
GREASE_VALUES: Final = frozenset((nibble << 12) | 0x0A00 | (nibble << 4) | 0x0A for nibble in range(16))


@dataclass(frozen=True, slots=True)
class Suite:
    """One cipher suite as the catalogue states it, plus what follows from that.

    `forward_secrecy` and `weaknesses` are derived here rather than written in the data so
    that the rules for them live in one reviewable place instead of in 275 hand-typed cells.
    """

    code: int
    iana_name: str
    openssl_name: str
    kx: str
    auth: str
    cipher: str
    mode: str
    mac: str
    min_version: str
    openssl_aliases: tuple[str, ...] = ()
    note: str = ""
    forward_secrecy: bool = field(init=False)
    weaknesses: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "forward_secrecy", self.kx in FORWARD_SECRET_KX)
        object.__setattr__(self, "weaknesses", _derive_weaknesses(self))

    @property
    def export(self) -> bool:
        """Export suites are named as such by IANA, and nothing else marks them reliably."""
        return "EXPORT" in self.iana_name

    @property
    def aead(self) -> bool:
        return self.mac == "AEAD"

    @property
    def is_tls13(self) -> bool:
        """TLS 1.3 suites name only the AEAD and hash, and cannot be used with any older version."""
        return self.min_version == "1.3"

    @property
    def broken(self) -> bool:
        return any(w in BROKEN_WEAKNESSES for w in self.weaknesses)

    @property
    def openssl_names(self) -> tuple[str, ...]:
        return (self.openssl_name, *self.openssl_aliases)

    @property
    def code_hex(self) -> str:
        """`0xC0,0x2F`: the two-byte form the RFCs and `openssl ciphers -V` print."""
        return f"0x{self.code >> 8:02X},0x{self.code & 0xFF:02X}"


def _derive_weaknesses(suite: Suite) -> tuple[str, ...]:
    found = {
        "null": suite.cipher == "NULL",
        "export": suite.export,
        "anonymous": suite.auth == "anon",
        "rc4": suite.cipher.startswith("RC4"),
        "des": suite.cipher in _DES_CIPHERS,
        "no_forward_secrecy": not suite.forward_secrecy,
        "cbc": suite.mode == "CBC",
        "md5_mac": suite.mac == "MD5",
        "sha1_mac": suite.mac == "SHA1",
    }
    return tuple(name for name in WEAKNESS_REASONS if found[name])


def _catalogue_rows() -> Iterator[dict[str, str]]:
    text = resources.files(__package__).joinpath(CATALOGUE_FILE).read_text(encoding="utf-8")
    data_lines = (line for line in text.splitlines() if line and not line.startswith("#"))
    yield from csv.DictReader(data_lines)


def _suite_from_row(row: dict[str, str]) -> Suite:
    aliases = tuple(a for a in row["openssl_aliases"].split("|") if a)
    return Suite(
        code=int(row["code"], 16),
        iana_name=row["iana_name"],
        openssl_name=row["openssl_name"],
        kx=row["kx"],
        auth=row["auth"],
        cipher=row["cipher"],
        mode=row["mode"],
        mac=row["mac"],
        min_version=row["min_version"],
        openssl_aliases=aliases,
        note=row["note"],
    )


@cache
def all_suites() -> tuple[Suite, ...]:
    """Every catalogued suite, in code order. Loaded once: the catalogue is read-only data."""
    return tuple(sorted((_suite_from_row(row) for row in _catalogue_rows()), key=lambda s: s.code))


@cache
def _by_code() -> dict[int, Suite]:
    return {suite.code: suite for suite in all_suites()}


@cache
def _by_name() -> dict[str, Suite]:
    """IANA, OpenSSL and alias names folded to one case-insensitive index.

    A name that meant two different suites would make a policy ambiguous, so that is a
    catalogue error and refuses to load rather than silently picking one.
    """
    index: dict[str, Suite] = {}
    for suite in all_suites():
        for name in {suite.iana_name, *suite.openssl_names}:
            key = name.casefold()
            if index.get(key, suite) is not suite:
                raise ValueError(f"cipher name {name!r} is used by {index[key].code_hex} and {suite.code_hex}")
            index[key] = suite
    return index


def by_iana_code(code: int) -> Suite | None:
    """The suite for a two-byte code, or None for unknown codes and signalling values."""
    return _by_code().get(code)


def lookup(name: str) -> Suite | None:
    """Find a suite by IANA or OpenSSL name, any case.

    Java and old documentation spell the SSLv3-era suites `SSL_RSA_WITH_...`; those are the
    same code points as IANA's `TLS_RSA_WITH_...`, so they are accepted too.
    """
    key = name.strip().casefold()
    suite = _by_name().get(key)
    if suite is None and key.startswith("ssl_"):
        suite = _by_name().get("tls_" + key[4:])
    return suite


def weakness_reasons(suite: Suite) -> list[str]:
    """Human sentences saying why the suite is weak, worst first; empty for a sound suite."""
    return [WEAKNESS_REASONS[w] for w in suite.weaknesses]


def is_grease(code: int) -> bool:
    return code in GREASE_VALUES


def is_signalling(code: int) -> bool:
    """True for values that sit in the cipher suite list but are not suites.

    A ClientHello parser meets these all the time (GREASE in every Chrome hello, the SCSVs in
    most others) and must neither report them as unknown suites nor try to negotiate them.
    """
    return code in (EMPTY_RENEGOTIATION_INFO_SCSV, FALLBACK_SCSV) or is_grease(code)


def signalling_name(code: int) -> str | None:
    """A display name for a signalling value, None if the code is not one."""
    if code == EMPTY_RENEGOTIATION_INFO_SCSV:
        return "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
    if code == FALLBACK_SCSV:
        return "TLS_FALLBACK_SCSV"
    if is_grease(code):
        return f"GREASE (0x{code:04X})"
    return None


def describe(code: int) -> str:
    """A one-line label for logs and findings that works for any code, known or not."""
    suite = by_iana_code(code)
    if suite is not None:
        return f"{suite.iana_name} ({suite.code_hex})"
    return signalling_name(code) or f"unknown cipher suite 0x{code:04X}"


# Short names for the catalogue's weakness words, as a tester would say them.
WEAKNESS_LABELS = {
    "null": "NULL cipher (no encryption)",
    "export": "EXPORT-grade key",
    "anonymous": "anonymous (no server authentication)",
    "rc4": "RC4",
    "des": "DES/3DES",
    "no_forward_secrecy": "no forward secrecy (static key exchange)",
    "cbc": "CBC mode",
    "md5_mac": "MD5 MAC",
    "sha1_mac": "SHA-1 MAC",
}
