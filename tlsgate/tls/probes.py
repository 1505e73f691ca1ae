"""Invalid-certificate probes: the certificates, which one a connection gets, and how a client refused it.

An app that switched certificate verification off (a trust-all TrustManager,
Dart's `badCertificateCallback => true`, `curl -k`) talks to anyone. The only
way to see that from the outside is to present a certificate the app must
refuse and watch whether it does, as nogotofail did. Each probe certificate is
wrong in exactly one way, so a client that accepts it names its own bug:

- `self_signed`: signed by its own key, for the right host;
- `wrong_host`: signed by tlsgate's CA (which the device trusts) but for another name;
- `expired`: signed by tlsgate's CA for the right host, but no longer valid;
- `untrusted_ca`: for the right host, from a throwaway CA nobody trusts.

Facts only (the certificates); which connection gets which probe, and what a
client's answer means, are verdicts in `tlsgate.checks.probes`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate.tls.protocol_probes import PROTOCOL_PROBE_KINDS
from tlsgate.tls.x509build import key_usage, self_signed_ca

PROBE_KINDS: Final = (
    "self_signed",
    "wrong_host",
    "expired",
    "untrusted_ca",
    # protocol probes (tlsgate.tls.protocol_probes): tlsgate's own certificate, old versions or weak suites
    "tls_downgrade",
    "weak_cipher",
    "anon_cipher",
)
WRONG_HOST: Final = "wrong-host.tlsgate.invalid"

KeyType = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Probe leaves use RSA 2048 like mitmproxy's own, so every client that can talk to tlsgate can also
# reach the point of judging the probe (an EC leaf would fail old RSA-only clients for the wrong reason).
_PROBE_KEY_BITS = 2048
_LIFETIME = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(days=2)
_EXPIRED_AGO = dt.timedelta(days=1)


@dataclass(frozen=True)
class ProbeCertificate:
    """One probe: what tlsgate presents instead of its normal certificate for `host`."""

    kind: str
    host: str
    cert: x509.Certificate
    key: KeyType
    chain: tuple[x509.Certificate, ...] = ()  # sent after the leaf (the throwaway CA, for untrusted_ca)

    def summary(self) -> dict[str, Any]:
        """What a finding shows of the certificate: enough to recognise it, nothing secret."""
        try:
            names = [str(n.value) for n in self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
        except x509.ExtensionNotFound:
            names = []
        return {
            "kind": self.kind,
            "subject": self.cert.subject.rfc4514_string(),
            "issuer": self.cert.issuer.rfc4514_string(),
            "names": names,
            "not_before": self.cert.not_valid_before_utc.isoformat(),
            "not_after": self.cert.not_valid_after_utc.isoformat(),
            "sha256": self.cert.fingerprint(hashes.SHA256()).hex(),
        }


class ProbeMint:
    """Makes probe certificates, signing `wrong_host` and `expired` with tlsgate's CA.

    Certificates are cached per (host, kind) in a bounded LRU, so an app that
    retries does not cost a signature per connection and a scan over many hosts
    cannot grow memory without bound. The throwaway keys are made once per mint,
    on first use: RSA key generation is the slow part.
    """

    def __init__(self, ca_key: KeyType, ca_cert: x509.Certificate, capacity: int = 256) -> None:
        self.ca_key = ca_key
        self.ca_cert = ca_cert
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, str], ProbeCertificate] = OrderedDict()
        self._leaf_key: rsa.RSAPrivateKey | None = None
        self._stranger: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None

    def certificate(self, host: str, kind: str, now: dt.datetime | None = None) -> ProbeCertificate:
        if kind not in PROBE_KINDS or kind in PROTOCOL_PROBE_KINDS:  # a protocol probe has no probe certificate
            raise ValueError(f"unknown probe kind {kind!r}; expected one of {', '.join(PROBE_KINDS)}")
        key = (host, kind)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        probe = self._make(host, kind, now or dt.datetime.now(dt.UTC))
        self._cache[key] = probe
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return probe

    def __len__(self) -> int:
        return len(self._cache)

    def _make(self, host: str, kind: str, now: dt.datetime) -> ProbeCertificate:
        leaf_key = self._probe_key()
        valid = (now - _BACKDATE, now + _LIFETIME)
        if kind == "self_signed":
            cert = _leaf(host, leaf_key, None, leaf_key, valid)
            return ProbeCertificate(kind, host, cert, leaf_key)
        if kind == "wrong_host":
            cert = _leaf(WRONG_HOST, leaf_key, self.ca_cert, self.ca_key, valid)
            return ProbeCertificate(kind, host, cert, leaf_key)
        if kind == "expired":
            cert = _leaf(host, leaf_key, self.ca_cert, self.ca_key, self._expired_window(now))
            return ProbeCertificate(kind, host, cert, leaf_key)
        stranger_key, stranger_cert = self._stranger_ca(now)
        cert = _leaf(host, leaf_key, stranger_cert, stranger_key, valid)
        return ProbeCertificate(kind, host, cert, leaf_key, (stranger_cert,))

    def _expired_window(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """Ended a day ago (past any sane clock skew), and begun no earlier than the CA itself.

        A leaf valid before its issuer would be a second defect; a strict client
        could refuse it for that and pass a probe it should have failed.
        """
        not_after = now - _EXPIRED_AGO
        not_before = max(self.ca_cert.not_valid_before_utc, not_after - _LIFETIME)
        if not_before >= not_after:  # a CA younger than a day: a short window before it began is the lesser evil
            not_before = not_after - dt.timedelta(hours=1)
        return not_before, not_after

    def _probe_key(self) -> rsa.RSAPrivateKey:
        if self._leaf_key is None:
            self._leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=_PROBE_KEY_BITS)
        return self._leaf_key

    def _stranger_ca(self, now: dt.datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        """A complete, well-formed CA that simply is not in any trust store: only trust is wrong."""
        if self._stranger is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=_PROBE_KEY_BITS)
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "tlsgate untrusted probe CA"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgate probes"),
                ]
            )
            cert = self_signed_ca(key, name, now - _BACKDATE, now + dt.timedelta(days=3650))
            self._stranger = (key, cert)
        return self._stranger


def _leaf(
    host: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    signer: KeyType,
    valid: tuple[dt.datetime, dt.datetime],
) -> x509.Certificate:
    """A server certificate that is correct in every respect but the one the probe is about.

    Anything else wrong (a missing key identifier, no EKU) would let a strict
    client refuse it for an unrelated reason and pass a probe it might fail.
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .public_key(key.public_key())
        .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_authority_key_id(issuer), critical=False)
    else:  # self-signed: strict verifiers want the AKI even then, pointing at its own key
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """Copy the issuer's own SKI: strict verifiers reject a recomputed one that differs."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
