"""Certificate factory for tests: real keys, real signatures, no fixtures on disk.

Tests across tlsgate need chains with one property dialled wrong (an expired
leaf, a 1024-bit key, a SHA-1 intermediate, a missing SAN...).  Generating them
on the fly keeps each test self-describing and avoids checked-in certificates
that silently expire.

Typical use::

    from tests.certgen import make_chain, write_server_files

    chain = make_chain(dns=("api.example",), leaf_key="rsa:1024")
    cert_file, key_file = write_server_files(tmp_path, chain.leaf, chain.intermediate)

Key specs are short strings so a parametrised test can name them:
``"rsa:2048"``, ``"ec:P-256"`` (also ``P-192``, ``P-224``, ``P-384``, ``P-521``),
``"ed25519"``, ``"dsa:2048"``.  The default is ``ec:P-256`` because RSA key
generation is slow enough to matter in a large suite.

Digests are ``"sha256"``, ``"sha384"``, ``"sha512"``, ``"sha1"`` or ``"md5"``.
cryptography (>= 48) refuses to *sign* with SHA-1/MD5, so those certificates
are built with SHA-256 and re-signed through pyOpenSSL, which still lets
OpenSSL do it; the result is a normal certificate whose signatureAlgorithm is
sha1WithRSAEncryption / ecdsa-with-SHA1 / md5WithRSAEncryption.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | dsa.DSAPrivateKey
)

CURVES: dict[str, ec.EllipticCurve] = {
    "P-192": ec.SECP192R1(),
    "P-224": ec.SECP224R1(),
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}

# The digests x509.CertificateBuilder.sign accepts (cryptography keeps its own alias private).
SigningHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512

_DIGESTS: dict[str, SigningHash] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
_LEGACY_DIGESTS = ("sha1", "md5")  # signed via pyOpenSSL, see module docstring

DEFAULT_KEY = "ec:P-256"
DEFAULT_LEAF_DAYS = 90
DEFAULT_CA_DAYS = 3650


def utcnow() -> dt.datetime:
    """Whole seconds, because certificates store whole seconds.

    Tests that compare "days left" against a certificate's notAfter would be
    off by one if ``now`` carried microseconds the certificate cannot.
    """
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_key(spec: str | PrivateKey = DEFAULT_KEY) -> PrivateKey:
    """Turn a short spec (``rsa:2048``, ``ec:P-256``, ``ed25519``, ``dsa:2048``) into a key.

    An existing key passes through, so a test can reissue a certificate for the
    same key (a renewal keeps its pin) or prepare a spare key for a backup pin.
    """
    if not isinstance(spec, str):
        return spec
    kind, _, param = spec.lower().partition(":")
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(param or 2048))
    if kind == "ec":
        curve = CURVES.get((param or "p-256").upper())
        if curve is None:
            raise ValueError(f"unknown curve in {spec!r}; known: {', '.join(CURVES)}")
        return ec.generate_private_key(curve)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if kind == "dsa":
        return dsa.generate_private_key(key_size=int(param or 2048))
    raise ValueError(f"unknown key spec {spec!r}")


@dataclass(frozen=True)
class Issued:
    """A certificate together with its private key (needed to sign children or serve it)."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class Chain:
    """root -> intermediate -> leaf, the shape almost every public TLS server has."""

    root: Issued
    intermediate: Issued
    leaf: Issued

    @property
    def certs(self) -> list[x509.Certificate]:
        """Leaf first, as verifiers and pinning libraries see a validated chain."""
        return [self.leaf.cert, self.intermediate.cert, self.root.cert]

    @property
    def served(self) -> list[x509.Certificate]:
        """What a correctly configured server sends: everything except the root."""
        return [self.leaf.cert, self.intermediate.cert]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgate tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _window(not_before: dt.datetime | None, not_after: dt.datetime | None, days: int) -> tuple[dt.datetime, dt.datetime]:
    start = not_before or utcnow() - dt.timedelta(days=1)
    return start, not_after or utcnow() + dt.timedelta(days=days)


def _signing_hash(key: PrivateKey, digest: str) -> SigningHash | None:
    """EdDSA keys sign without a separate hash; everything else needs one."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        if digest != "sha256":
            raise ValueError(f"EdDSA signatures have no separate digest; got {digest!r}")
        return None
    if digest in _LEGACY_DIGESTS:
        return hashes.SHA256()  # placeholder, re-signed below
    try:
        return _DIGESTS[digest]
    except KeyError:
        raise ValueError(f"unknown digest {digest!r}") from None


def _resign_legacy(cert: x509.Certificate, key: PrivateKey, digest: str) -> x509.Certificate:
    """Re-sign with SHA-1/MD5 through OpenSSL, which cryptography no longer does itself."""
    from OpenSSL import crypto  # test-only dependency, imported where it is needed

    if digest == "md5" and not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("OpenSSL only signs MD5 certificates with RSA keys")
    legacy = crypto.X509.from_cryptography(cert)
    legacy.sign(crypto.PKey.from_cryptography_key(key), digest)
    return legacy.to_cryptography()


def _sign(builder: x509.CertificateBuilder, key: PrivateKey, digest: str) -> x509.Certificate:
    cert = builder.sign(key, _signing_hash(key, digest))
    if digest in _LEGACY_DIGESTS:
        return _resign_legacy(cert, key, digest)
    return cert


def _base_builder(
    subject: x509.Name,
    public_key: object,
    issuer: Issued | None,
    window: tuple[dt.datetime, dt.datetime],
) -> x509.CertificateBuilder:
    """Fields every certificate gets; SKI/AKI included so strict verifiers accept the chain."""
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)  # type: ignore[arg-type]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
        .add_extension(ski, critical=False)
    )
    authority_key = issuer.key.public_key() if issuer else public_key
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key)  # type: ignore[arg-type]
    return builder.add_extension(aki, critical=False)


def _ca_extensions(builder: x509.CertificateBuilder, path_length: int | None) -> x509.CertificateBuilder:
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True).add_extension(
        usage, critical=True
    )


def make_root(
    cn: str = "tlsgate test root",
    *,
    key: str | PrivateKey = DEFAULT_KEY,
    digest: str = "sha256",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A self-signed CA, the trust anchor a test client is told to trust (or not)."""
    private = make_key(key)
    window = _window(not_before, not_after, DEFAULT_CA_DAYS)
    builder = _ca_extensions(_base_builder(_name(cn), private.public_key(), None, window), None)
    return Issued(_sign(builder, private, digest), private)


def make_intermediate(
    issuer: Issued,
    cn: str = "tlsgate test intermediate",
    *,
    key: str | PrivateKey = DEFAULT_KEY,
    digest: str = "sha256",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A CA signed by ``issuer``; ``digest`` is the hash of *issuer's* signature on it."""
    private = make_key(key)
    window = _window(not_before, not_after, DEFAULT_CA_DAYS)
    builder = _ca_extensions(_base_builder(_name(cn), private.public_key(), issuer, window), 0)
    return Issued(_sign(builder, issuer.key, digest), private)


def _san(dns: Sequence[str], ips: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    return x509.SubjectAlternativeName(names)


def _aia(url: str) -> x509.AuthorityInformationAccess:
    location = x509.UniformResourceIdentifier(url)
    return x509.AuthorityInformationAccess([x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, location)])


def make_leaf(
    issuer: Issued | None,
    dns: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    *,
    cn: str | None = None,
    key: str | PrivateKey = DEFAULT_KEY,
    digest: str = "sha256",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ca_issuers_url: str | None = None,
    must_staple: bool = False,
) -> Issued:
    """A TLS server certificate; ``issuer=None`` makes it self-signed.

    The CN defaults to the first name, but verifiers only look at the SAN,
    so pass an empty ``dns``/``ips`` to test a name mismatch.
    ``ca_issuers_url`` adds the AIA caIssuers pointer public CAs put in every
    leaf (browsers use it to fetch a missing intermediate; nothing is fetched here).
    ``must_staple`` adds the TLS Feature extension with status_request (RFC 7633 OCSP Must-Staple).
    """
    private = make_key(key)
    subject = _name(cn or (list(dns) + list(ips) + ["tlsgate test leaf"])[0])
    window = _window(not_before, not_after, DEFAULT_LEAF_DAYS)
    builder = (
        _base_builder(subject, private.public_key(), issuer, window)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if dns or ips:
        builder = builder.add_extension(_san(dns, ips), critical=False)
    if ca_issuers_url:
        builder = builder.add_extension(_aia(ca_issuers_url), critical=False)
    if must_staple:
        builder = builder.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
    signer = issuer.key if issuer else private
    return Issued(_sign(builder, signer, digest), private)


def make_chain(
    dns: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    *,
    leaf_key: str | PrivateKey = DEFAULT_KEY,
    leaf_digest: str = "sha256",
    intermediate_key: str | PrivateKey = DEFAULT_KEY,
    intermediate_digest: str = "sha256",
    root_key: str | PrivateKey = DEFAULT_KEY,
    root_digest: str = "sha256",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Chain:
    """root -> intermediate -> leaf; validity window arguments apply to the leaf only."""
    root = make_root(key=root_key, digest=root_digest)
    intermediate = make_intermediate(root, key=intermediate_key, digest=intermediate_digest)
    leaf = make_leaf(
        intermediate,
        dns,
        ips,
        key=leaf_key,
        digest=leaf_digest,
        not_before=not_before,
        not_after=not_after,
    )
    return Chain(root, intermediate, leaf)


def _as_cert(item: Issued | x509.Certificate) -> x509.Certificate:
    return item.cert if isinstance(item, Issued) else item


def write_pem(path: Path, *items: Issued | x509.Certificate) -> Path:
    """Concatenate certificates into one PEM file (a chain file or a CA bundle)."""
    path.write_bytes(b"".join(_as_cert(i).public_bytes(serialization.Encoding.PEM) for i in items))
    return path


def write_key(path: Path, issued: Issued) -> Path:
    path.write_bytes(issued.key_pem)
    return path


def write_server_files(
    directory: Path, leaf: Issued, *chain: Issued | x509.Certificate, name: str = "server"
) -> tuple[Path, Path]:
    """Write ``<name>.pem`` (leaf followed by ``chain``) and ``<name>.key``.

    This is the pair ``ssl.SSLContext.load_cert_chain`` and most servers take;
    leaving ``chain`` empty reproduces a server that forgot its intermediate.
    """
    cert_file = write_pem(directory / f"{name}.pem", leaf, *chain)
    return cert_file, write_key(directory / f"{name}.key", leaf)
