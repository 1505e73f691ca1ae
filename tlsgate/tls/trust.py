"""The trust store for upstream servers: the usual public roots plus the user's extra ones.

mitmproxy's `ssl_verify_upstream_trusted_ca` *replaces* its roots; users who add
a staging CA still expect public sites to verify, so tlsgate writes one bundle
holding both instead of narrowing trust by surprise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


class TrustError(ValueError):
    pass


def read_roots(path: Path) -> list[x509.Certificate]:
    """PEM or DER certificates from one file, or a TrustError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read upstream CA file {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise TrustError(f"{path} holds no PEM or DER certificate") from None


def build_bundle(extra: Sequence[Path], target: Path) -> Path:
    """Write public roots + extra roots to `target`; returns it."""
    pem = Path(certifi.where()).read_bytes()
    for path in extra:
        for cert in read_roots(path):
            pem += b"\n" + cert.public_bytes(Encoding.PEM)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(pem)
    os.replace(tmp, target)
    return target
