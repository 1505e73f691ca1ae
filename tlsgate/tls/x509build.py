"""The one X.509 builder tlsgate signs with: its interception CA, and the probe CA and leaves.

Probes must be wrong in exactly one way, and the CA must look like mitmproxy's
own; both follow from building every certificate from the same, complete set of
extensions here rather than from two hand-kept copies.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def key_usage(ca: bool) -> x509.KeyUsage:
    """Certificate signing for a CA; signatures and key encipherment (RSA key exchange) for a server."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def self_signed_ca(
    key: SigningKey, name: x509.Name, not_before: dt.datetime, not_after: dt.datetime, server_auth: bool = False
) -> x509.Certificate:
    """A root CA; `server_auth` adds the serverAuth EKU mitmproxy's own CA carries."""
    builder = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if server_auth:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    builder = builder.add_extension(key_usage(ca=True), critical=True).add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    return builder.sign(private_key=key, algorithm=hashes.SHA256())
