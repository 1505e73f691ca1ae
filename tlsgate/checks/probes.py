"""Invalid-certificate probes as verdicts: which connection gets one, and what the client's answer means.

A probe connection moves through: offered (tlsgate presented the bad certificate)
-> the handshake failed with a certificate alert (passed: the client verifies)
or for another reason (proved nothing: the kind is tried again)
-> the handshake completed, then either the client sent data (accepted: it would
talk to any impostor; nothing is forwarded, ever) or it hung up without a byte
(passed: host name checks and pinning often run after the handshake).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import floor
from typing import Any, ClassVar, Final

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.tls import versions
from tlsgate.tls.probes import WRONG_HOST
from tlsgate.tls.protocol_probes import ProtocolOffer

CLOSED_AFTER_HANDSHAKE: Final = "closed after the handshake without sending a request"
TRUST_REMEDY: Final = (
    "if the CA is missing: install it on the device (open http://mitm.it through the proxy, or `tlsgate ca export`; "
    "for apps that ignore user CAs on Android 7+, `tlsgate ca export --format android` into the system store of a test "
    "device). If the CA is installed and other apps work through tlsgate, the app pins its certificates: good for the "
    "app; to inspect it anyway, test a debug build whose network security config trusts the tlsgate CA"
)

# What the client was shown, as a finding's sentence says it.
PROBE_WORDS: Final = {
    "self_signed": "a self-signed certificate",
    "wrong_host": f"a certificate for another host ({WRONG_HOST})",
    "expired": "an expired certificate",
    "untrusted_ca": "a certificate from an untrusted CA",
    # certificate and chain probes (issue 23), one line per kind
    "not_yet_valid": "a certificate that is not valid yet (it begins tomorrow)",
    "non_ca_issuer": "a certificate issued by another server's certificate, which is no CA (basicConstraints CA:FALSE)",
    "path_len_exceeded": "a certificate from an intermediate CA its parent forbids (pathLenConstraint 0 exceeded)",
    "outside_name_constraints": "a certificate from an intermediate CA whose name constraints exclude the host",
    "client_auth_only": "a certificate for client authentication only (extended key usage clientAuth, no serverAuth)",
    "cn_only": "a certificate with the host name in the subject CN only, no subjectAltName",
    "wildcard_too_broad": "a certificate for a wildcard over a whole top-level domain (*.tld)",
    "wildcard_wrong_label": "a certificate whose wildcard is not in the leftmost label (api.*.example)",
    "sha1_signature": "a certificate signed with SHA-1",
    "rsa_1024": "a certificate with a 1024-bit RSA key",
    "ip_name_only": "a certificate naming the IP address as a DNS name only (no iPAddress entry)",
    # protocol probes (tlsgate.checks.protocol_probes)
    "tls_downgrade": "a server that speaks only TLS 1.0 and 1.1",
    "weak_cipher": "a server that offers only RSA key exchange with CBC and SHA-1",
    "anon_cipher": "a server that offers only anonymous cipher suites (no certificate at all)",
}

# What accepting each kind lets an attacker do; the four original kinds: anyone at all.
PROBE_RISKS: Final = {
    "not_yet_valid": "it ignores validity dates, so a stolen key's expired certificate works for ever",
    "non_ca_issuer": "anyone holding any certificate from a trusted CA can sign one for any host",
    "path_len_exceeded": "a CA that may issue only server certificates could mint CAs that impersonate anyone",
    "outside_name_constraints": "a CA restricted to other names could impersonate this host",
    "client_auth_only": "a client certificate from any trusted CA can impersonate the server",
    "cn_only": "it matches host names against the subject CN, which CAs no longer vet and name constraints do not cover",
    "wildcard_too_broad": "one certificate for a whole top-level domain would impersonate every host under it",
    "wildcard_wrong_label": "its wildcard matching accepts patterns no CA may issue",
    "sha1_signature": "SHA-1 signatures can be forged with chosen-prefix collisions",
    "rsa_1024": "a 1024-bit RSA key can be factored by a well-funded attacker",
    "ip_name_only": "it matches IP addresses against DNS names as text",
}
_ANY_IMPOSTOR: Final = "it would talk to any impostor on the network"

# How bad accepting a kind is; the four original kinds, and any kind not listed, are critical.
PROBE_SEVERITY: Final = {
    "path_len_exceeded": Severity.HIGH,
    "outside_name_constraints": Severity.HIGH,
    "client_auth_only": Severity.HIGH,
    "cn_only": Severity.MEDIUM,
    "wildcard_too_broad": Severity.HIGH,
    "wildcard_wrong_label": Severity.HIGH,
    "sha1_signature": Severity.HIGH,
    "rsa_1024": Severity.MEDIUM,
    "ip_name_only": Severity.MEDIUM,
}

# What accepting each one says about the app, and where such bugs usually live.
PROBE_REMEDIES: Final = {
    "self_signed": "the app accepts any certificate: remove the trust-all TrustManager / badCertificateCallback / "
    "verify=False / curl -k; verification must stay on in every build that leaves the developer's desk",
    "untrusted_ca": "the app accepts certificates from any issuer: remove the trust-all TrustManager / "
    "badCertificateCallback / verify=False, and trust only the platform store (or your pinned keys)",
    "wrong_host": "the app does not check the host name: remove the accept-all HostnameVerifier "
    "(ALLOW_ALL_HOSTNAME_VERIFIER, check_hostname=False, CURLOPT_SSL_VERIFYHOST=0)",
    "expired": "the app ignores certificate expiry: remove the custom trust check that skips the validity "
    "dates (or the disabled time check)",
    # certificate and chain probes (issue 23), one line per kind
    "not_yet_valid": "the app ignores the validity dates: remove the custom trust check that skips them (a swallowed "
    "CertificateNotYetValidException / CertificateExpiredException, X509_V_FLAG_NO_CHECK_TIME)",
    "non_ca_issuer": "the app's chain check does not require issuers to be CAs (the classic hand-written verifier that checks "
    "signatures only): use the platform verifier (the default TrustManager, SecTrustEvaluateWithError, OpenSSL's verify)",
    "path_len_exceeded": "the app's chain check ignores basicConstraints' pathLenConstraint (a hand-written chain walk): use "
    "the platform verifier",
    "outside_name_constraints": "the app's chain check ignores name constraints (a hand-written chain walk, or a TLS library "
    "too old to know them): use the platform verifier, or update the library",
    "client_auth_only": "the app's chain check ignores extended key usage (a hand-written verifier, or a custom TrustManager "
    "that does not check serverAuth): use the platform verifier",
    "cn_only": "the app falls back to the subject CN for the host name when there is no subjectAltName (OpenSSL's "
    "X509_check_host, curl and Python's ssl do by default; browsers, Go and Android do not): match subjectAltName only "
    "(X509_CHECK_FLAG_NEVER_CHECK_SUBJECT; Python: hostname_checks_common_name = False)",
    "wildcard_too_broad": "the app's host name matcher accepts wildcards over a top-level domain (a hand-written fnmatch / "
    "regex / endswith): use the platform's matcher (OkHostnameVerifier, X509_check_host)",
    "wildcard_wrong_label": "the app's host name matcher accepts a wildcard outside the leftmost label (a hand-written fnmatch "
    "/ regex): use the platform's matcher (OkHostnameVerifier, X509_check_host)",
    "sha1_signature": "the app accepts SHA-1 certificate signatures (an old TLS stack, OpenSSL at @SECLEVEL=0, or a custom "
    "verifier that accepts any algorithm): update the TLS library and keep its security level at 1 or more",
    "rsa_1024": "the app accepts 1024-bit RSA keys (OpenSSL's upstream default security level 1 does): raise the security "
    "level to 2 (@SECLEVEL=2 in the cipher string, as Python's ssl and Debian's OpenSSL do by default)",
    "ip_name_only": "the app matches an IP address against DNS names: match IP literals against iPAddress entries only (RFC "
    "6125), as X509_check_ip does",
    # protocol probes (tlsgate.checks.protocol_probes)
    "tls_downgrade": "the app still allows TLS 1.0/1.1: raise its minimum to TLS 1.2 (OkHttp ConnectionSpec.MODERN_TLS, "
    "SSLSocket.setEnabledProtocols without TLSv1/TLSv1.1, ATS NSExceptionMinimumTLSVersion back to TLSv1.2, Python "
    "ssl minimum_version = TLSVersion.TLSv1_2, curl --tlsv1.2 / CURLOPT_SSLVERSION, OpenSSL "
    "SSL_CTX_set_min_proto_version) and drop any @SECLEVEL=0 from its cipher string",
    "weak_cipher": "the app negotiates RSA key exchange with CBC-SHA1 (no forward secrecy): restrict its cipher list to "
    "ECDHE with AES-GCM or ChaCha20 (OkHttp ConnectionSpec.MODERN_TLS / RESTRICTED_TLS, SSLParameters.setCipherSuites, "
    "Python ssl set_ciphers, curl --ciphers / CURLOPT_SSL_CIPHER_LIST, OpenSSL SSL_CTX_set_cipher_list)",
    "anon_cipher": "the app accepts a server that sends no certificate: remove the anonymous suites from its cipher "
    "list (a cipher string such as ALL or aNULL, or @SECLEVEL=0, lets ADH/AECDH in; OpenSSL's DEFAULT and the "
    "platform defaults exclude them); certificate checks cannot help when there is no certificate",
}


class ProbeSchedule:
    """Which probe the next connection from a client to a host gets: each kind once, then none.

    Keyed by (client address, host), not by connection: the point is that a
    well-behaved app keeps working after one failed connection per kind. A kind
    is used up when a connection starts with it, so parallel connections get
    different kinds. The table is bounded; when full, the pair probed least
    recently is forgotten, and that pair starts over with the first kind if it
    comes back.

    With a `fraction` below 1 (nogotofail's attack probability, made
    deterministic) only some of a client's connections that could be probed
    are: a counter per client address and rule, not per host, so the probes
    spread over every host of the rule and normal connections run in between,
    and two rules with different fractions each get theirs. The n-th such
    connection is probed when floor(n * fraction) steps up: 0.25 probes the
    4th, 8th, 12th ... and 1 probes every one, as before fractions existed.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._tried: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
        # (client address, rule) -> that client's connections under that rule that could have been probed
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def next_kind(self, client: str, host: str, kinds: Sequence[str], fraction: float = 1.0, rule: str = "") -> str | None:
        key = (client, host)
        tried = self._tried.get(key, [])
        kind = next((k for k in kinds if k not in tried), None)
        if kind is None or not self._turn((client, rule), fraction):
            return None
        self._tried[key] = [*tried, kind]
        self._tried.move_to_end(key)
        while len(self._tried) > self.capacity:
            self._tried.popitem(last=False)
        return kind

    def _turn(self, counter: tuple[str, str], fraction: float) -> bool:
        """Whether this client's next probe-eligible connection under this rule is one of the probed fraction
        (counted either way)."""
        share = Fraction(fraction).limit_denominator(1000)  # 0.1 is 1/10 exactly, not 0.1000000000000000055
        n = self._seen.get(counter, 0) + 1
        self._seen[counter] = n
        self._seen.move_to_end(counter)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return floor(n * share) > floor((n - 1) * share)

    def untried(self, client: str, host: str, kinds: Sequence[str]) -> tuple[str, ...]:
        """The kinds still waiting for a connection from this client to this host."""
        tried = self._tried.get((client, host), ())
        return tuple(k for k in kinds if k not in tried)

    def retry(self, client: str, host: str, kind: str) -> None:
        """Give a kind back: the connection failed for a reason that says nothing about the certificate."""
        tried = self._tried.get((client, host))
        if tried and kind in tried:
            tried.remove(kind)

    def tried(self, client: str, host: str) -> tuple[str, ...]:
        return tuple(self._tried.get((client, host), ()))

    def __len__(self) -> int:
        return len(self._tried)


# -- reading a client's refusal ---------------------------------------------------------------------

# TLS alerts a client sends when it will not accept the certificate it was shown (RFC 8446 6.2).
CERTIFICATE_ALERTS: Final = (
    "unknown ca",
    "bad certificate",
    "certificate unknown",
    "certificate expired",
    "certificate revoked",
    "unsupported certificate",
)
CLOSED_SILENTLY: Final = "closed without an alert"

# mitmproxy's words for a client that hung up mid-handshake, after it was sent the certificate.
_SILENT_CLOSE: Final = "disconnected during the handshake"


def client_rejection(error: str | None) -> str | None:
    """The alert (or silent close) with which a client refused tlsgate's certificate; None for other failures.

    A version or cipher mismatch, an unparseable hello or a client that left
    before the handshake began say nothing about trust, so they are not read
    as a refusal (and a probe that ends that way is tried again).
    """
    if not error:
        return None
    text = error.lower()
    for alert in CERTIFICATE_ALERTS:
        if alert in text:
            return alert
    return CLOSED_SILENTLY if silent_close(text) else None


def silent_close(text: str) -> bool:
    """Whether mitmproxy's words (lower case) say the client hung up mid-handshake without an alert."""
    return text.strip() == "connection closed" or _SILENT_CLOSE in text


def likely_cause(rejection: str) -> str:
    """Why a client most likely refused tlsgate's normal certificate, in a tester's words."""
    if rejection == "unknown ca":
        return (
            "most likely tlsgate's CA is not installed, or not trusted by this app, on the device; "
            "an app that pins its certificates can answer the same way"
        )
    if rejection == CLOSED_SILENTLY:
        return (
            "the app hung up as soon as it saw the certificate, without saying why: typical of certificate "
            "pinning, or of a CA the app does not trust"
        )
    return "either tlsgate's CA is not trusted by this app on the device, or the app pins its certificates"


@dataclass
class ProbeRun:
    """One probe on one client connection, from offer to outcome; each outcome is said once.

    The lifecycle (offered -> refused, proved nothing, or completed -> used or
    hung up) is every kind family's; what a family reads in a failed handshake
    and says in its findings are the hooks below. This class is the certificate
    and chain probes' family; `tlsgate.checks.protocol_probes.ProtocolProbeRun`
    is the protocol probes'.
    """

    kind: str
    host: str
    certificate: dict[str, Any]  # what the client was shown (ProbeCertificate.summary(), or a protocol offer's)
    handshake_done: bool = False
    accepted: Issue | None = None
    passed: Issue | None = None
    negotiated: dict[str, str | None] | None = None  # version and suite, once the handshake completed
    served: bool = True  # False once the handshake went beyond what the probe offers: it tested nothing

    # What a refusal proves, as the passed finding says it.
    REFUSAL_MEANS: ClassVar[str] = "it verifies this part of the certificate"

    def rejection(self, error: str | None) -> str | None:
        """How the client refused this probe; None when the failure proved nothing (the kind is tried again)."""
        return client_rejection(error)

    def offer(self) -> ProtocolOffer | None:
        """The versions and suites the probe connection offers instead of tlsgate's usual ones (None: the usual)."""
        return None

    def established(self, tls_version: str | None, cipher: str | None) -> None:
        self.handshake_done = True
        self.negotiated = {"version": versions.from_openssl(tls_version), "suite": cipher}

    def handshake_failed(self, error: str | None) -> Issue | None:
        """The passed issue when the client refused the probe; None when the failure proved nothing."""
        rejection = self.rejection(error)
        return self._pass(rejection) if rejection is not None else None

    def sent(self, what: dict[str, Any]) -> Issue:
        """The client used the probed connection: the accepted issue (the same one for every later send)."""
        if self.accepted is None:
            shown = f"{what['method']} {what['url']}" if what.get("protocol") == "http" else "raw TCP data"
            self.accepted = self._unserved(what, shown) or Issue(
                Check.CLIENT_PROBE,
                self.kind,
                Effect.ALWAYS,
                self._severity(),
                f"the client accepted {PROBE_WORDS[self.kind]} for {self.host}{self._negotiated_clause()} and sent "
                f"{shown} over it: {self._consequence()}; tlsgate answered itself and forwarded nothing",
                {"kind": self.kind, **self._shown(), "sent": what},
                PROBE_REMEDIES[self.kind],
            )
        return self.accepted

    def closed(self) -> Issue | None:
        """The connection ended: a completed handshake followed by silence is a refusal too."""
        if self.handshake_done and self.accepted is None and self.passed is None:
            return self._pass(CLOSED_AFTER_HANDSHAKE)
        return None

    def _pass(self, rejection: str) -> Issue:
        self.passed = Issue(
            Check.CLIENT_PROBE,
            self.kind,
            Effect.PASSED,
            Severity.INFO,
            f"the client refused {PROBE_WORDS[self.kind]} for {self.host} ({rejection}): {self.REFUSAL_MEANS}",
            {"kind": self.kind, "rejection": rejection, **self._shown()},
        )
        return self.passed

    # -- the family's words ------------------------------------------------------------------------

    def _severity(self) -> Severity:
        return PROBE_SEVERITY.get(self.kind, Severity.CRITICAL)

    def _consequence(self) -> str:
        return PROBE_RISKS.get(self.kind, _ANY_IMPOSTOR)

    def _shown(self) -> dict[str, Any]:
        """What the findings' evidence says the client was shown."""
        return {"certificate": self.certificate}

    def _negotiated_clause(self) -> str:
        return ""

    def _unserved(self, what: dict[str, Any], shown: str) -> Issue | None:
        """The issue for a connection that never tested what the probe offers; None when it did."""
        return None


def trust_refused(host: str, error: str | None) -> Issue | None:
    """A normal (unprobed) connection whose client refused tlsgate's certificate, explained; None for other failures."""
    rejection = client_rejection(error)
    if rejection is None:
        return None
    return Issue(
        Check.CLIENT_TRUST,
        "certificate_refused",
        Effect.RECORD,
        Severity.INFO,
        f"the client refused tlsgate's certificate for {host} ({rejection}): {likely_cause(rejection)}",
        {"kind": "certificate_refused", "rejection": rejection, "error": (error or "")[:300]},
        TRUST_REMEDY,
    )
