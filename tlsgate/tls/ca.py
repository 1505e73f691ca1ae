"""tlsgate's interception CA: creation, loading, inspection and export.

The files are written in exactly the layout mitmproxy's ``CertStore.from_store``
reads, so mitmproxy can be pointed at the same confdir and uses our CA
unchanged instead of silently minting its own. This module deliberately does
not import mitmproxy: it must stay usable (``tlsgate ca ...`` commands, tests)
without pulling in the proxy runtime.

``mitmproxy-ca.pem`` (key + certificate) is the single source of truth; every
other file is derived from it and can be recreated from it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tlsgate.tls.privdir import PrivateDirError, ensure_private_dir, secure_dir
from tlsgate.tls.x509build import self_signed_ca

__all__ = [
    "CA_BASENAME",
    "EXPORT_FORMATS",
    "CAError",
    "CAInfo",
    "CAPaths",
    "ca_paths",
    "describe",
    "ensure_ca",
    "export_ca",
    "load_ca",
]

# mitmproxy derives every file name from this basename; changing it would make
# mitmproxy ignore our CA and generate its own.
CA_BASENAME = "mitmproxy"

# RSA 2048 like mitmproxy: some older Android/IoT TLS stacks choke on larger CA keys.
KEY_SIZE = 2048
# Backdated so that devices with a slightly wrong clock still accept the CA.
VALIDITY_BACKDATE = datetime.timedelta(days=2)
# Long-lived on purpose: re-installing a CA on test devices is painful, and the
# 398/825-day limits of iOS/Chrome apply to leaf certificates, not to roots.
VALIDITY = datetime.timedelta(days=3650)

ORGANIZATION = "tlsgate"

# Key types mitmproxy can sign leaf certificates and its CRL with (SHA-256).
CAKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_KEY_MODE = 0o600
_PUBLIC_MODE = 0o644

# Copied verbatim from mitmproxy.certs.DEFAULT_DHPARAM (mitmproxy 12.2.3, unchanged in 12.3.1) so that
# the store is complete without importing mitmproxy; mitmproxy would otherwise
# write this file itself on first start.
DEFAULT_DHPARAM = b"""
-----BEGIN DH PARAMETERS-----
MIICCAKCAgEAyT6LzpwVFS3gryIo29J5icvgxCnCebcdSe/NHMkD8dKJf8suFCg3
O2+dguLakSVif/t6dhImxInJk230HmfC8q93hdcg/j8rLGJYDKu3ik6H//BAHKIv
j5O9yjU3rXCfmVJQic2Nne39sg3CreAepEts2TvYHhVv3TEAzEqCtOuTjgDv0ntJ
Gwpj+BJBRQGG9NvprX1YGJ7WOFBP/hWU7d6tgvE6Xa7T/u9QIKpYHMIkcN/l3ZFB
chZEqVlyrcngtSXCROTPcDOQ6Q8QzhaBJS+Z6rcsd7X+haiQqvoFcmaJ08Ks6LQC
ZIL2EtYJw8V8z7C0igVEBIADZBI6OTbuuhDwRw//zU1uq52Oc48CIZlGxTYG/Evq
o9EWAXUYVzWkDSTeBH1r4z/qLPE2cnhtMxbFxuvK53jGB0emy2y1Ei6IhKshJ5qX
IB/aE7SSHyQ3MDHHkCmQJCsOd4Mo26YX61NZ+n501XjqpCBQ2+DfZCBh8Va2wDyv
A2Ryg9SUz8j0AXViRNMJgJrr446yro/FuJZwnQcO3WQnXeqSBnURqKjmqkeFP+d8
6mk2tqJaY507lRNqtGlLnj7f5RNoBFJDCLBNurVgfvq9TCVWKDIFD4vZRjCrnl6I
rD693XKIHUCWOjMh1if6omGXKHH40QuME2gNa50+YPn1iYDl88uDbbMCAQI=
-----END DH PARAMETERS-----
"""


class CAError(Exception):
    """A CA problem the user has to resolve; the message says how."""


@dataclass(frozen=True)
class CAPaths:
    """Where each CA file lives, so callers never rebuild mitmproxy's names."""

    key_pem: Path
    cert_pem: Path
    cert_cer: Path
    cert_p12: Path
    key_p12: Path
    dhparam: Path

    @property
    def secret_files(self) -> tuple[Path, ...]:
        """Files holding the private key; these must never be group/world readable."""
        return (self.key_pem, self.key_p12)


def ca_paths(confdir: Path) -> CAPaths:
    """Map a confdir to the file names mitmproxy's CertStore uses."""
    base = Path(confdir) / CA_BASENAME
    return CAPaths(
        key_pem=Path(f"{base}-ca.pem"),
        cert_pem=Path(f"{base}-ca-cert.pem"),
        cert_cer=Path(f"{base}-ca-cert.cer"),
        cert_p12=Path(f"{base}-ca-cert.p12"),
        key_p12=Path(f"{base}-ca.p12"),
        dhparam=Path(f"{base}-dhparam.pem"),
    )


@dataclass(frozen=True)
class CAInfo:
    """The public half of the CA; the private key is intentionally not carried."""

    cert: x509.Certificate
    paths: CAPaths
    # Warnings to show: the CA directory was writable by others (see tlsgate/tls/privdir.py).
    notes: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def sha256_fingerprint(self) -> str:
        """Formatted like ``openssl x509 -fingerprint -sha256`` so users can compare
        it with what a device's certificate details screen shows."""
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()

    @property
    def not_before(self) -> datetime.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc

    @property
    def subject_hash_old(self) -> str:
        """OpenSSL's pre-1.0 subject hash, which Android still uses to name
        system-store certificate files."""
        digest = hashlib.md5(_subject_der(self.cert), usedforsecurity=False).digest()
        return f"{int.from_bytes(digest[:4], 'little'):08x}"

    @property
    def android_filename(self) -> str:
        # ".0" is the collision counter; a second CA with the same hash would be ".1".
        return f"{self.subject_hash_old}.0"


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def ensure_ca(confdir: Path) -> tuple[CAInfo, bool]:
    """Load the CA, creating it on first use; the bool tells whether it was created.

    An existing store wins over creating a new one, also when another process
    creates it concurrently: replacing a CA would silently invalidate every
    device that already trusts the old one.
    """
    paths = ca_paths(confdir)
    notes = _ensure_confdir(Path(confdir))
    if not _exists(paths.key_pem):
        new_key, new_cert = _generate_ca()
        if _publish_key_pem(paths.key_pem, new_key, new_cert):
            _write_derived_files(paths, new_key, new_cert, only_missing=False)
            return CAInfo(cert=new_cert, paths=paths, notes=notes), True
    key, cert = _load_key_and_cert(paths)
    # Restores files lost to an interrupted creation or a user tidying up.
    _write_derived_files(paths, key, cert, only_missing=True)
    return CAInfo(cert=cert, paths=paths, notes=notes), False


def load_ca(confdir: Path) -> CAInfo:
    """Load an existing CA without ever writing to disk (for read-only commands)."""
    paths = ca_paths(confdir)
    if not _exists(paths.key_pem):
        raise CAError(f"No tlsgate CA found in {Path(confdir)} (expected {paths.key_pem}); run `tlsgate ca create` first.")
    _key, cert = _load_key_and_cert(paths)
    note = secure_dir(Path(confdir))
    return CAInfo(cert=cert, paths=paths, notes=(note,) if note else ())


EXPORT_FORMATS: tuple[str, ...] = ("pem", "der", "android")


def export_ca(info: CAInfo, fmt: str) -> tuple[str, bytes]:
    """Return ``(suggested filename, content)`` of the CA certificate for a device.

    Only the certificate is ever exported; the key never leaves the confdir.

    - ``pem``: ``tlsgate-ca.pem``, for desktop trust stores, curl, Python, Firefox.
    - ``der``: ``tlsgate-ca.der``, the binary form Windows/macOS/iOS/Android
      user-store installers also accept as ``.crt``/``.cer``.
    - ``android``: ``<subject_hash_old>.0``, to push into the Android system store
      (``/system/etc/security/cacerts`` or, from Android 14,
      ``/apex/com.android.conscrypt/cacerts``). The content is the PEM
      certificate. AOSP's own files there append the ``openssl x509 -text
      -fingerprint`` dump after the PEM block, but that text is purely
      informational: Android parses only the first certificate, and a plain PEM
      file under the hash name is what mitmproxy's and other tools'
      instructions produce.
    """
    pem = info.cert.public_bytes(serialization.Encoding.PEM)
    if fmt == "pem":
        return "tlsgate-ca.pem", pem
    if fmt == "der":
        return "tlsgate-ca.der", info.cert.public_bytes(serialization.Encoding.DER)
    if fmt == "android":
        return info.android_filename, pem
    raise ValueError(f"Unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")


def describe(info: CAInfo, now: datetime.datetime | None = None) -> list[tuple[str, str]]:
    """Label/value pairs for display, ordered by what a user checks first.

    ``now`` exists so the "in N days" text is deterministic in tests.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    return [
        ("Subject", info.subject),
        ("SHA-256 fingerprint", info.sha256_fingerprint),
        ("Not before", info.not_before.date().isoformat()),
        ("Expires", _expiry_text(info.not_after, now)),
        ("Android system-store name", info.android_filename),
        ("Certificate", str(info.paths.cert_pem)),
    ]


# --------------------------------------------------------------------------
# Creation
# --------------------------------------------------------------------------


def _generate_ca() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Mirror mitmproxy's ``create_ca`` extensions so clients treat both alike."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    # A per-install suffix lets testers with several installs tell the CAs apart
    # in a device's trust store, where usually only the CN is shown.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"tlsgate CA {secrets.token_hex(4)}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    return key, self_signed_ca(key, name, now - VALIDITY_BACKDATE, now + VALIDITY, server_auth=True)


def _ensure_confdir(confdir: Path) -> tuple[str, ...]:
    """Create the confdir, and every missing parent, 0700 whatever the umask; an existing one keeps its mode
    unless others could write to it (then the notes say so)."""
    try:
        return tuple(ensure_private_dir(confdir))
    except PrivateDirError as e:
        raise CAError(f"CA directory: {e}") from e


def _key_pem_bytes(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    # TraditionalOpenSSL + cert, byte-for-byte the format mitmproxy writes.
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)


def _publish_key_pem(path: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bool:
    """Atomically create the key file unless it already exists; False if it did.

    Written to a temp file then hard-linked into place so nobody ever sees a
    half-written key, and a concurrent creator's CA is never overwritten.
    """
    tmp = _write_temp(path, _key_pem_bytes(key, cert), _KEY_MODE)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:
        # Filesystems without hard links: O_EXCL still guarantees no overwrite.
        return _write_exclusive(path, _key_pem_bytes(key, cert), _KEY_MODE)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _derived_contents(key: CAKey, cert: x509.Certificate) -> list[tuple[str, bytes, int]]:
    """(CAPaths field, content, mode) of every file derived from the key PEM."""
    pem = cert.public_bytes(serialization.Encoding.PEM)
    friendly = _common_name(cert).encode()
    no_pw = serialization.NoEncryption()
    key_p12 = pkcs12.serialize_key_and_certificates(name=friendly, key=key, cert=cert, cas=None, encryption_algorithm=no_pw)
    cert_p12 = pkcs12.serialize_key_and_certificates(name=friendly, key=None, cert=cert, cas=None, encryption_algorithm=no_pw)
    return [
        ("key_p12", key_p12, _KEY_MODE),
        ("cert_pem", pem, _PUBLIC_MODE),
        # Same PEM bytes: Android's installer picks files by the .cer extension.
        ("cert_cer", pem, _PUBLIC_MODE),
        ("cert_p12", cert_p12, _PUBLIC_MODE),
        ("dhparam", DEFAULT_DHPARAM, _PUBLIC_MODE),
    ]


def _write_derived_files(paths: CAPaths, key: CAKey, cert: x509.Certificate, only_missing: bool) -> None:
    """Write the derived files; on creation this also replaces leftovers of an
    older, interrupted install that would not match the new key."""
    for field, content, mode in _derived_contents(key, cert):
        target: Path = getattr(paths, field)
        if only_missing and _exists(target):
            continue
        try:
            tmp = _write_temp(target, content, mode)
            os.replace(tmp, target)
        except OSError as e:
            raise CAError(f"Cannot write CA file {target}: {e.strerror}") from e


def _write_temp(target: Path, content: bytes, mode: int) -> Path:
    """Write content to a fresh temp file next to target, created with its final
    mode so a key is never readable by others, not even for an instant."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    if not _write_exclusive(tmp, content, mode):
        raise CAError(f"Temporary file {tmp} unexpectedly exists.")
    return tmp


def _write_exclusive(path: Path, content: bytes, mode: int) -> bool:
    """Create path with its final mode from the start (umask can only narrow it);
    False if it already exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        return False
    except OSError as e:
        raise CAError(f"Cannot write CA file {path}: {e.strerror}") from e
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    return True


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _load_key_and_cert(paths: CAPaths) -> tuple[CAKey, x509.Certificate]:
    """Read and validate the key PEM exactly as mitmproxy will, but with errors
    a user can act on instead of a traceback at proxy start."""
    for secret in paths.secret_files:
        _check_private_mode(secret)
    raw = _read(paths.key_pem)
    key = _parse_key(paths.key_pem, raw)
    cert = _parse_first_cert(paths.key_pem, raw)
    if key.public_key() != cert.public_key():
        raise CAError(
            f"{paths.key_pem}: the private key does not belong to the certificate; "
            "restore the file from a backup or remove it to create a new CA."
        )
    if not _is_ca(cert):
        raise CAError(
            f"{paths.key_pem}: the certificate is not a CA (BasicConstraints CA "
            "is not set), so it cannot sign interception certificates."
        )
    return key, cert


def _check_private_mode(path: Path) -> None:
    """Fail closed on a key readable by others: whether it leaked is the user's
    call, so we neither silently use nor silently fix it."""
    if os.name != "posix":
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise CAError(f"Cannot access CA file {path}: {e.strerror}") from e
    # Non-files fail later with a clearer "cannot read" than a chmod hint.
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        raise CAError(
            f"CA private key {path} is accessible by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}). Check whether it was exposed; "
            f"if not, run `chmod 600 {path}`, otherwise delete the CA files and "
            "create a new CA."
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CAError(f"Cannot read CA file {path}: {e.strerror}") from e


def _parse_key(path: Path, raw: bytes) -> CAKey:
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError as e:
        raise CAError(
            f"{path}: the CA private key is passphrase-protected, which tlsgate does "
            "not support; store it unencrypted (mode 0600)."
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CAError(f"{path}: no valid private key found ({e}). {_CORRUPT_HINT}") from e
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CAError(f"{path}: unsupported CA key type {type(key).__name__}; mitmproxy needs an RSA or EC key.")
    return key


def _parse_first_cert(path: Path, raw: bytes) -> x509.Certificate:
    # mitmproxy treats the first certificate as the CA and any further ones as chain.
    try:
        return x509.load_pem_x509_certificates(raw)[0]
    except ValueError as e:
        raise CAError(f"{path}: no valid certificate found ({e}). {_CORRUPT_HINT}") from e


_CORRUPT_HINT = (
    "Restore it from a backup, or remove the CA files and run `tlsgate ca create` (devices will then need the new CA installed)."
)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _exists(path: Path) -> bool:
    # A dangling symlink counts as existing: creating through it would write
    # the key to wherever it points.
    return path.exists() or path.is_symlink()


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else CA_BASENAME


def _expiry_text(not_after: datetime.datetime, now: datetime.datetime) -> str:
    # timedelta.days floors, so take whole days of the positive distance.
    when = f"in {(not_after - now).days} days" if not_after >= now else f"expired {(now - not_after).days} days ago"
    return f"{not_after.date().isoformat()} ({when})"


def _subject_der(cert: x509.Certificate) -> bytes:
    """The subject Name exactly as encoded in the certificate.

    OpenSSL hashes the original bytes; re-encoding via ``Name.public_bytes``
    could differ for certificates from other tools (string types, SET order).
    """
    tbs = cert.tbs_certificate_bytes
    pos, _ = _der_header(tbs, 0)  # enter the TBSCertificate SEQUENCE
    if tbs[pos] == 0xA0:  # optional [0] EXPLICIT version
        pos = _der_skip(tbs, pos)
    for _field in ("serialNumber", "signature", "issuer", "validity"):
        pos = _der_skip(tbs, pos)
    content_start, length = _der_header(tbs, pos)
    return tbs[pos : content_start + length]


def _der_header(data: bytes, pos: int) -> tuple[int, int]:
    """Return (content offset, content length) of the DER element at pos."""
    first = data[pos + 1]
    if first < 0x80:
        return pos + 2, first
    n = first & 0x7F
    return pos + 2 + n, int.from_bytes(data[pos + 2 : pos + 2 + n], "big")


def _der_skip(data: bytes, pos: int) -> int:
    content_start, length = _der_header(data, pos)
    return content_start + length
