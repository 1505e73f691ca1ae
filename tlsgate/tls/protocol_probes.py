"""Protocol probes: what tlsgate's probe server offers instead of a modern handshake.

An app that lowered its TLS floor or widened its cipher list for one old
backend usually did it for every server: a network attacker who blocks the
modern handshake (or simply answers with a server that offers less) then gets
a connection the app should have refused. The certificate probes
(`tlsgate.tls.probes`) test what the app trusts; these test what it
negotiates. Each one presents tlsgate's own, valid certificate for the host (or
none at all) and changes only what the server accepts, so a client that
completes the handshake and sends data names exactly one setting:

- `tls_downgrade`: the server speaks only TLS 1.0 and 1.1;
- `weak_cipher`: TLS 1.2, but only RSA key exchange with CBC and SHA-1
  (`AES128-SHA`, `AES256-SHA`: no forward secrecy, the MAC-then-encrypt CBC
  construction of Lucky13 and its kin);
- `anon_cipher`: TLS 1.2, only anonymous suites (`ADH-*`, `AECDH-*`): no
  certificate is sent at all, so nothing authenticates the server.

What this machine's OpenSSL (the one pyOpenSSL and so mitmproxy use, from the
`cryptography` wheel) can serve, and why the rest is left out, is said in
README.md, "Is my app verifying certificates?" > "Protocol probes";
`tests/unit/test_protocol_probes.py` proves every offer here is servable.
TLS 1.0/1.1 and anonymous suites need `@SECLEVEL=0`: OpenSSL 3 and later refuse
both at security level 1 and above. The level is part of the probe's own cipher
string, so it lives in the probe's own SSL context (mitmproxy caches contexts by
their arguments, and no other connection is built with these) and never
loosens a normal connection.

Facts only: the offers. Which connection gets one, and what a client's answer
means, is decided in `tlsgate.checks.protocol_probes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from tlsgate.tls import versions

PROTOCOL_PROBE_KINDS: Final = ("tls_downgrade", "weak_cipher", "anon_cipher")

# OpenSSL's security level 0: the only one at which OpenSSL 3+ negotiates TLS 1.0/1.1 (their handshake
# signatures use SHA-1/MD5) or an unauthenticated suite. Set only on a probe's own context.
SECLEVEL_0: Final = "@SECLEVEL=0"
# OpenSSL's names of the anonymous suites `aNULL:!eNULL` selects: DH and ECDH without authentication.
ANONYMOUS_PREFIXES: Final = ("ADH-", "AECDH-")


@dataclass(frozen=True)
class ProtocolOffer:
    """What the probe server accepts: a version range, an OpenSSL cipher list, and whether it shows a certificate."""

    kind: str
    min_version: str  # a policy word, "1.0"
    max_version: str
    ciphers: tuple[str, ...]  # OpenSSL cipher-list entries, in the server's order of preference
    certificate: bool = True  # False: anonymous suites only, the client is never sent one

    def allows(self, version: str | None, suite: str | None) -> bool:
        """Whether a negotiated version (policy word) and suite (OpenSSL name) are within this offer."""
        if version is None or suite is None or version not in versions.ORDER:
            return False
        low, high = versions.ORDER.index(self.min_version), versions.ORDER.index(self.max_version)
        if not low <= versions.ORDER.index(version) <= high:
            return False
        return suite in self.summary()["suites"] if self.certificate else suite.startswith(ANONYMOUS_PREFIXES)

    def summary(self) -> dict[str, Any]:
        """What a finding shows of the offer: versions, suites (OpenSSL names), certificate."""
        return {
            "kind": self.kind,
            "versions": list(versions.ORDER[versions.ORDER.index(self.min_version) : versions.ORDER.index(self.max_version) + 1]),
            "suites": [c for c in self.ciphers if not c.startswith(("@", "!"))],
            "certificate": "tlsgate's own, valid for the host" if self.certificate else "none (anonymous suites)",
        }


# Forward-secret CBC suites first (the server's preference wins: mitmproxy sets OP_CIPHER_SERVER_PREFERENCE),
# so a client that accepts TLS 1.0 is caught for the version, not for an RSA key exchange it may also allow; the
# RSA ones last, for the oldest stacks that speak TLS 1.0 without ECDHE or DHE.
_TLS10_SUITES: Final = (
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "DHE-RSA-AES128-SHA",
    "DHE-RSA-AES256-SHA",
    "AES128-SHA",
    "AES256-SHA",
)

OFFERS: Final = {
    "tls_downgrade": ProtocolOffer("tls_downgrade", "1.0", "1.1", (SECLEVEL_0, *_TLS10_SUITES)),
    # TLS 1.2 only: TLS 1.3 has no weak or anonymous suites to offer, so a 1.3 client must come down to 1.2 and
    # then either take these suites or refuse. Security level 1 (OpenSSL's default) allows both suites.
    "weak_cipher": ProtocolOffer("weak_cipher", "1.2", "1.2", ("AES128-SHA", "AES256-SHA")),
    "anon_cipher": ProtocolOffer("anon_cipher", "1.2", "1.2", (SECLEVEL_0, "aNULL", "!eNULL"), certificate=False),
}
