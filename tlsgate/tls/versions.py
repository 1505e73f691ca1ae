"""The one vocabulary for protocol versions: the words policies, findings and metrics use, and every spelling they come in.

Policies say "1.2"; OpenSSL says "TLSv1.2"; the wire says 0x0303; mitmproxy's
options say "TLS1_2". Each table below maps one spelling to the words, so a
version is compared and shown the same way wherever it came from.
"""

from __future__ import annotations

from typing import Final

# Oldest first; "0.3" is SSL 3.0, which nothing may be configured to accept but clients still offer.
ORDER: Final = ("0.3", "1.0", "1.1", "1.2", "1.3")
# What a policy may name as a minimum.
TLS_VERSIONS: Final = ORDER[1:]
DEFAULT_MIN: Final = "1.2"

FROM_OPENSSL: Final = {"SSLv3": "0.3", "TLSv1": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}
FROM_WIRE: Final = {0x0300: "0.3", 0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}
# mitmproxy's `tls_version_*_min/max` option values (mitmproxy.net.tls.Version member names).
FROM_MITMPROXY_OPTION: Final = {"SSL3": "0.3", "TLS1": "1.0", "TLS1_1": "1.1", "TLS1_2": "1.2", "TLS1_3": "1.3"}
TO_MITMPROXY_OPTION: Final = {word: name for name, word in FROM_MITMPROXY_OPTION.items()}


def from_openssl(protocol: str | None) -> str | None:
    """ "TLSv1.2" (OpenSSL's and mitmproxy's `tls_version`) -> "1.2"; None when unknown."""
    return FROM_OPENSSL.get(protocol or "")


def from_wire(code: int) -> str | None:
    return FROM_WIRE.get(code)


def from_mitmproxy_option(name: str) -> str:
    """mitmproxy's client/server minimum option in words; "0.3" for UNBOUNDED/SSL3, which accept anything."""
    return FROM_MITMPROXY_OPTION.get(name, "0.3")


def below(version: str | None, minimum: str) -> bool:
    """True when `version` is older than `minimum`; an unknown version is never judged below."""
    if version is None or version not in ORDER:
        return False
    return ORDER.index(version) < ORDER.index(minimum)


def shown(version: str) -> str:
    """How a sentence names a version: "SSL 3.0", "TLS 1.2"."""
    return "SSL 3.0" if version == "0.3" else f"TLS {version}"
