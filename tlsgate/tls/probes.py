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

The certificate and chain probes each break one rule a hand-written verifier
(or a misconfigured library) skips; all are built on tlsgate's CA, so a client
that trusts that CA has only the one defect to refuse:

- `not_yet_valid`: valid only from tomorrow on;
- `non_ca_issuer`: issued by an ordinary server certificate (basicConstraints CA:FALSE, no keyCertSign),
  itself from tlsgate's CA: what anyone holding any valid certificate could sign;
- `path_len_exceeded`: issued by an intermediate CA whose parent says no CA may follow it (pathLen 0);
- `outside_name_constraints`: issued by an intermediate CA constrained to names the host is not among;
- `client_auth_only`: extended key usage clientAuth, not serverAuth;
- `cn_only`: the host name in the subject CN and no subjectAltName;
- `wildcard_too_broad`: `*.<top-level domain>` (`*` for a single-label host);
- `wildcard_wrong_label`: the wildcard in the second label (`api.*.test`), not the leftmost;
- `sha1_signature`: signed by tlsgate's CA with SHA-1;
- `rsa_1024`: a 1024-bit RSA key;
- `ip_name_only`: for an IP-literal host, the address as a DNS name, no iPAddress entry.

The wildcard kinds only mean something for host names, and `ip_name_only` only
for IP addresses: `applies(kind, host)` says which.

Facts only (the certificates); which connection gets which probe, and what a
client's answer means, are verdicts in `tlsgate.checks.probes`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate.tls.protocol_probes import PROTOCOL_PROBE_KINDS
from tlsgate.tls.recent import Recent
from tlsgate.tls.x509build import key_usage, self_signed_ca

# Certificate and chain probes (issue 23), one line per kind.
CHAIN_PROBE_KINDS: Final = (
    "not_yet_valid",
    "non_ca_issuer",
    "path_len_exceeded",
    "outside_name_constraints",
    "client_auth_only",
    "cn_only",
    "wildcard_too_broad",
    "wildcard_wrong_label",
    "sha1_signature",
    "rsa_1024",
    "ip_name_only",
)
# The original four first, then the chain probes, then the protocol probes (tlsgate.tls.protocol_probes: tlsgate's
# own certificate, old versions or weak suites), in the order a policy listing them all would try them.
PROBE_KINDS: Final = ("self_signed", "wrong_host", "expired", "untrusted_ca", *CHAIN_PROBE_KINDS, *PROTOCOL_PROBE_KINDS)
WRONG_HOST: Final = "wrong-host.tlsgate.invalid"
# Below OpenSSL 3's default security level (1): the connection that serves them must lower its own.
WEAK_KINDS: Final = frozenset({"sha1_signature", "rsa_1024"})
HOST_NAME_KINDS: Final = frozenset({"wildcard_too_broad", "wildcard_wrong_label"})
IP_KINDS: Final = frozenset({"ip_name_only"})
# The names the constrained intermediate permits (`outside_name_constraints`); documentation ranges, never a real host.
_PERMITTED_DNS: Final = "constrained.tlsgate.invalid"
_PERMITTED_NETS: Final = ("192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32", "3fff::/20")

KeyType = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Probe leaves use RSA 2048 like mitmproxy's own, so every client that can talk to tlsgate can also
# reach the point of judging the probe (an EC leaf would fail old RSA-only clients for the wrong reason).
_PROBE_KEY_BITS = 2048
_LIFETIME = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(days=2)
_EXPIRED_AGO = dt.timedelta(days=1)
_STARTS_IN = dt.timedelta(days=1)  # not_yet_valid: past any sane clock skew, like expired
_WEAK_KEY_BITS = 1024


def applies(kind: str, host: str) -> bool:
    """Whether `kind` can test a client connecting to `host` (wildcards need a name, ip_name_only an address)."""
    is_ip = _is_ip(host)
    if kind in HOST_NAME_KINDS:
        return not is_ip and (kind != "wildcard_wrong_label" or "." in host.strip("."))
    if kind in IP_KINDS:
        return is_ip
    return True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ProbeCertificate:
    """One probe: what tlsgate presents instead of its normal certificate for `host`."""

    kind: str
    host: str
    cert: x509.Certificate
    key: KeyType
    chain: tuple[x509.Certificate, ...] = ()  # sent after the leaf: the throwaway CA, or the probe's intermediates

    @property
    def weak(self) -> bool:
        """OpenSSL 3 refuses to serve it at its default security level (SHA-1 signature, RSA-1024 key)."""
        return self.kind in WEAK_KINDS

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
            **({"chain": [c.subject.rfc4514_string() for c in self.chain]} if self.chain else {}),
        }


class ProbeMint:
    """Makes probe certificates, signing all but `self_signed` and `untrusted_ca` with tlsgate's CA.

    Certificates are cached per (host, kind) in a bounded LRU, so an app that
    retries does not cost a signature per connection and a scan over many hosts
    cannot grow memory without bound. The throwaway keys (the leaf key, the
    untrusted CA's, two intermediate CA keys and a 1024-bit one) are made once
    per mint, each on first use: RSA key generation is the slow part.
    """

    def __init__(self, ca_key: KeyType, ca_cert: x509.Certificate, capacity: int = 256) -> None:
        self.ca_key = ca_key
        self.ca_cert = ca_cert
        self.capacity = capacity
        self._cache: Recent[tuple[str, str], ProbeCertificate] = Recent(capacity)
        self._leaf_key: rsa.RSAPrivateKey | None = None
        self._stranger: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None
        # Made on first use, like the leaf key: the intermediates' two keys (the second CA below a pathLen 0 one
        # needs a key of its own) and the 1024-bit leaf key.
        self._keys: dict[str, rsa.RSAPrivateKey] = {}

    def certificate(self, host: str, kind: str, now: dt.datetime | None = None) -> ProbeCertificate:
        if kind not in PROBE_KINDS or kind in PROTOCOL_PROBE_KINDS:  # a protocol probe has no probe certificate
            raise ValueError(f"unknown probe kind {kind!r}; expected one of {', '.join(PROBE_KINDS)}")
        if not applies(kind, host):
            raise ValueError(f"probe kind {kind!r} does not apply to {host!r}")
        key = (host, kind)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        probe = self._make(host, kind, now or dt.datetime.now(dt.UTC))
        self._cache.put(key, probe)
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
        if kind == "untrusted_ca":
            stranger_key, stranger_cert = self._stranger_ca(now)
            cert = _leaf(host, leaf_key, stranger_cert, stranger_key, valid)
            return ProbeCertificate(kind, host, cert, leaf_key, (stranger_cert,))
        return self._make_chain_probe(host, kind, now, leaf_key, valid)

    def _make_chain_probe(
        self, host: str, kind: str, now: dt.datetime, leaf_key: rsa.RSAPrivateKey, valid: tuple[dt.datetime, dt.datetime]
    ) -> ProbeCertificate:
        ca, ca_key = self.ca_cert, self.ca_key
        if kind == "not_yet_valid":
            starts = now + _STARTS_IN
            return ProbeCertificate(kind, host, _leaf(host, leaf_key, ca, ca_key, (starts, starts + _LIFETIME)), leaf_key)
        if kind == "client_auth_only":
            cert = _leaf(host, leaf_key, ca, ca_key, valid, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
            return ProbeCertificate(kind, host, cert, leaf_key)
        if kind == "cn_only":
            return ProbeCertificate(kind, host, _leaf(host, leaf_key, ca, ca_key, valid, names=()), leaf_key)
        if kind in ("wildcard_too_broad", "wildcard_wrong_label", "ip_name_only"):
            name = _probe_name(kind, host)
            cert = _leaf(host, leaf_key, ca, ca_key, valid, names=(x509.DNSName(name),), cn=name)
            return ProbeCertificate(kind, host, cert, leaf_key)
        if kind == "sha1_signature":
            return ProbeCertificate(kind, host, _leaf(host, leaf_key, ca, ca_key, valid, sha1=True), leaf_key)
        if kind == "rsa_1024":
            weak_key = self._key("rsa_1024", _WEAK_KEY_BITS)
            return ProbeCertificate(kind, host, _leaf(host, weak_key, ca, ca_key, valid), weak_key)
        first = self._key("intermediate")
        if kind == "non_ca_issuer":
            # An ordinary server certificate from tlsgate's CA, for another name: what an attacker holds.
            issuer = _leaf(WRONG_HOST, first, ca, ca_key, valid)
            return ProbeCertificate(kind, host, _leaf(host, leaf_key, issuer, first, valid), leaf_key, (issuer,))
        if kind == "path_len_exceeded":
            limited = _intermediate("tlsgate probe CA (pathLen 0)", first, ca, ca_key, valid, path_length=0)
            second = self._key("second intermediate")
            beyond = _intermediate("tlsgate probe CA beyond pathLen 0", second, limited, first, valid)
            cert = _leaf(host, leaf_key, beyond, second, valid)
            return ProbeCertificate(kind, host, cert, leaf_key, (beyond, limited))
        if kind == "outside_name_constraints":
            constraints = _constraints_excluding(host)
            issuer = _intermediate("tlsgate probe CA (name-constrained)", first, ca, ca_key, valid, constraints=constraints)
            return ProbeCertificate(kind, host, _leaf(host, leaf_key, issuer, first, valid), leaf_key, (issuer,))
        raise ValueError(f"unknown probe kind {kind!r}")

    def _key(self, role: str, bits: int = _PROBE_KEY_BITS) -> rsa.RSAPrivateKey:
        if role not in self._keys:
            self._keys[role] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return self._keys[role]

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
    *,
    names: tuple[x509.GeneralName, ...] | None = None,
    cn: str | None = None,
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
    sha1: bool = False,
) -> x509.Certificate:
    """A server certificate that is correct in every respect but the one the probe is about.

    Anything else wrong (a missing key identifier, no EKU) would let a strict
    client refuse it for an unrelated reason and pass a probe it might fail.
    `names` replaces the subjectAltName (empty: none at all), `cn` the subject's CN.
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (cn or host)[:64])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .public_key(key.public_key())
    )
    san = (_general_name(host),) if names is None else names
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_authority_key_id(issuer), critical=False)
    else:  # self-signed: strict verifiers want the AKI even then, pointing at its own key
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    return sign_sha1(cert, signer) if sha1 else cert


def _intermediate(
    common_name: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate,
    signer: KeyType,
    valid: tuple[dt.datetime, dt.datetime],
    *,
    path_length: int | None = None,
    constraints: x509.NameConstraints | None = None,
) -> x509.Certificate:
    """An intermediate CA as a public CA issues one (key identifiers, key usage), with the probe's one constraint."""
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgate probes")]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)  # RFC 5280 4.2.1.10: MUST be critical
    return builder.sign(signer, hashes.SHA256())


def _constraints_excluding(host: str) -> x509.NameConstraints:
    """Permitted subtrees for both name types (an unconstrained type would let the host through), none holding it."""
    ip = ipaddress.ip_address(host) if _is_ip(host) else None
    nets = [ipaddress.ip_network(n) for n in _PERMITTED_NETS]
    permitted: list[x509.GeneralName] = [x509.DNSName(_PERMITTED_DNS)]
    for version in (4, 6):
        net = next(n for n in nets if n.version == version and not (ip is not None and ip in n))
        permitted.append(x509.IPAddress(net))
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _probe_name(kind: str, host: str) -> str:
    """The one DNS name the wildcard and IP probes carry instead of the host's own."""
    labels = host.strip(".").split(".")
    if kind == "wildcard_too_broad":
        return "*." + labels[-1] if len(labels) > 1 else "*"
    if kind == "wildcard_wrong_label":
        return ".".join([labels[0], "*", *labels[2:]])
    return host  # ip_name_only: the address, written as a DNS name


# -- SHA-1 signatures ------------------------------------------------------------------------------

# AlgorithmIdentifier DER for each signer's SHA-256 signature and its SHA-1 counterpart (RFC 4055, RFC 5758).
_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
_RSA_SHA1 = bytes.fromhex("300d06092a864886f70d0101050500")
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ECDSA_SHA1 = bytes.fromhex("300906072a8648ce3d0401")


def sign_sha1(cert: x509.Certificate, signer: KeyType) -> x509.Certificate:
    """`cert` re-signed with SHA-1 (sha1WithRSAEncryption / ecdsa-with-SHA1).

    cryptography's builder no longer signs with SHA-1, but still signs bytes
    with it: the to-be-signed part is taken from the SHA-256 certificate, its
    signature algorithm swapped, and the certificate reassembled in DER.
    """
    ecdsa = isinstance(signer, ec.EllipticCurvePrivateKey)
    old, new = (_ECDSA_SHA256, _ECDSA_SHA1) if ecdsa else (_RSA_SHA256, _RSA_SHA1)
    tag, content = _der_read(cert.tbs_certificate_bytes)
    if content.count(old) != 1:
        raise ValueError("cannot find the SHA-256 signature algorithm in the certificate to re-sign")
    tbs = _der(tag, content.replace(old, new))
    if isinstance(signer, ec.EllipticCurvePrivateKey):
        signature = signer.sign(tbs, ec.ECDSA(hashes.SHA1()))
    else:
        signature = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    return x509.load_der_x509_certificate(_der(0x30, tbs + new + _der(0x03, b"\x00" + signature)))


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_read(data: bytes) -> tuple[int, bytes]:
    """The tag and content of one DER element that fills `data`."""
    tag, first = data[0], data[1]
    if first < 0x80:
        start, size = 2, first
    else:
        count = first & 0x7F
        start, size = 2 + count, int.from_bytes(data[2 : 2 + count], "big")
    if start + size != len(data):
        raise ValueError("not one DER element")
    return tag, data[start:]


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
