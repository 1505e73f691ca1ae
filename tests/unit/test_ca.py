"""Unit tests for tlsgate.tls.ca, cross-checked against the openssl CLI and mitmproxy."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tlsgate.tls.ca import (
    CA_BASENAME,
    CAError,
    CAInfo,
    ca_paths,
    describe,
    ensure_ca,
    export_ca,
    load_ca,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not found")


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    return tmp_path / "certs"


@pytest.fixture
def created(confdir: Path) -> CAInfo:
    info, was_created = ensure_ca(confdir)
    assert was_created
    return info


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _openssl(*args: str) -> str:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], check=True, capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------
# Creation and file layout
# --------------------------------------------------------------------------


def test_creation_writes_mitmproxy_layout(confdir: Path, created: CAInfo) -> None:
    names = sorted(p.name for p in confdir.iterdir())
    assert names == sorted(
        f"{CA_BASENAME}-{suffix}"
        for suffix in (
            "ca.pem",
            "ca.p12",
            "ca-cert.pem",
            "ca-cert.cer",
            "ca-cert.p12",
            "dhparam.pem",
        )
    )
    assert created.paths == ca_paths(confdir)


def test_creation_modes(confdir: Path, created: CAInfo) -> None:
    assert _mode(confdir) == 0o700
    assert _mode(created.paths.key_pem) == 0o600
    assert _mode(created.paths.key_p12) == 0o600


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_key_files_private_even_with_umask_zero(confdir: Path, permissive_umask: None) -> None:
    info, _ = ensure_ca(confdir)
    assert _mode(confdir) == 0o700
    assert _mode(info.paths.key_pem) == 0o600
    assert _mode(info.paths.key_p12) == 0o600
    assert _mode(info.paths.cert_pem) == 0o644


def test_existing_confdir_mode_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ensure_ca(tmp_path)
    assert _mode(tmp_path) == 0o755


def test_nested_confdir_is_created(tmp_path: Path) -> None:
    info, created = ensure_ca(tmp_path / "a" / "b")
    assert created and info.paths.key_pem.exists()


def test_key_pem_format_matches_mitmproxy(created: CAInfo) -> None:
    raw = created.paths.key_pem.read_bytes()
    # TraditionalOpenSSL ("RSA PRIVATE KEY") followed by the certificate.
    assert raw.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    certs = x509.load_pem_x509_certificates(raw)
    assert certs == [created.cert]


def test_public_files_contain_the_certificate(created: CAInfo) -> None:
    pem = created.cert.public_bytes(serialization.Encoding.PEM)
    assert created.paths.cert_pem.read_bytes() == pem
    assert created.paths.cert_cer.read_bytes() == pem
    p12 = pkcs12.load_pkcs12(created.paths.cert_p12.read_bytes(), None)
    # Without a key, PKCS#12 carries the cert as an "additional" cert (as mitmproxy's).
    assert p12.key is None
    assert [c.certificate for c in p12.additional_certs] == [created.cert]


def test_key_p12_holds_matching_key(created: CAInfo) -> None:
    p12 = pkcs12.load_pkcs12(created.paths.key_p12.read_bytes(), None)
    assert p12.cert is not None and p12.cert.certificate == created.cert
    assert p12.key is not None
    assert p12.key.public_key() == created.cert.public_key()


def test_dhparam_is_mitmproxys_default(created: CAInfo) -> None:
    from mitmproxy.certs import DEFAULT_DHPARAM

    assert created.paths.dhparam.read_bytes() == DEFAULT_DHPARAM


def test_certificate_contents(created: CAInfo) -> None:
    cert = created.cert
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert re.fullmatch(r"tlsgate CA [0-9a-f]{8}", str(cn))
    assert org == "tlsgate"
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert cert.public_key().key_size == 2048
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)

    now = datetime.datetime.now(datetime.UTC)
    backdate = now - cert.not_valid_before_utc
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=2) <= backdate < datetime.timedelta(days=2, hours=1)
    assert lifetime == datetime.timedelta(days=3652)
    assert created.not_after == cert.not_valid_after_utc
    assert created.not_after.tzinfo is not None


def test_each_install_gets_a_distinct_cn(tmp_path: Path) -> None:
    a, _ = ensure_ca(tmp_path / "a")
    b, _ = ensure_ca(tmp_path / "b")
    assert a.subject != b.subject


def test_extensions_mirror_mitmproxy_create_ca(created: CAInfo) -> None:
    from mitmproxy.certs import create_ca

    _, theirs = create_ca(organization="o", cn="c", key_size=2048)

    def shape(cert: x509.Certificate) -> dict[str, tuple[bool, object]]:
        out: dict[str, tuple[bool, object]] = {}
        for ext in cert.extensions:
            # SKI differs per key by design; compare presence only.
            value = None if isinstance(ext.value, x509.SubjectKeyIdentifier) else ext.value
            out[ext.oid.dotted_string] = (ext.critical, value)
        return out

    assert shape(created.cert) == shape(theirs)
    ski = created.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(created.cert.public_key())


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def test_second_ensure_loads_existing(confdir: Path, created: CAInfo) -> None:
    again, was_created = ensure_ca(confdir)
    assert not was_created
    assert again.sha256_fingerprint == created.sha256_fingerprint
    assert again.cert == created.cert
    assert load_ca(confdir).cert == created.cert


def test_load_ca_missing_says_how_to_create(confdir: Path) -> None:
    with pytest.raises(CAError, match="tlsgate ca create"):
        load_ca(confdir)
    assert not confdir.exists()  # loading never creates anything


def test_ensure_restores_missing_derived_files(confdir: Path, created: CAInfo) -> None:
    for path in (created.paths.cert_pem, created.paths.key_p12, created.paths.dhparam):
        path.unlink()
    again, was_created = ensure_ca(confdir)
    assert not was_created and again.cert == created.cert
    assert created.paths.cert_pem.read_bytes() == created.paths.cert_cer.read_bytes()
    assert _mode(created.paths.key_p12) == 0o600
    p12 = pkcs12.load_pkcs12(created.paths.key_p12.read_bytes(), None)
    assert p12.cert is not None and p12.cert.certificate == created.cert


def test_creation_replaces_stale_leftovers(confdir: Path, created: CAInfo) -> None:
    # An interrupted or half-deleted install: derived files without the key PEM.
    old_fingerprint = created.sha256_fingerprint
    created.paths.key_pem.unlink()
    new, was_created = ensure_ca(confdir)
    assert was_created and new.sha256_fingerprint != old_fingerprint
    for path in (created.paths.cert_pem, created.paths.cert_cer):
        assert x509.load_pem_x509_certificate(path.read_bytes()) == new.cert
    p12 = pkcs12.load_pkcs12(created.paths.key_p12.read_bytes(), None)
    assert p12.cert is not None and p12.cert.certificate == new.cert
    assert not [p for p in confdir.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_creation_yields_one_ca(confdir: Path) -> None:
    barrier = threading.Barrier(4)
    results: list[tuple[CAInfo, bool]] = []

    def worker() -> None:
        barrier.wait()
        results.append(ensure_ca(confdir))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert len({info.sha256_fingerprint for info, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert load_ca(confdir).cert == results[0][0].cert


@pytest.mark.parametrize("which", ["key_pem", "key_p12"])
def test_loose_key_mode_fails_closed(confdir: Path, created: CAInfo, which: str) -> None:
    path: Path = getattr(created.paths, which)
    path.chmod(0o644)
    with pytest.raises(CAError, match=rf"chmod 600 {re.escape(str(path))}"):
        ensure_ca(confdir)
    with pytest.raises(CAError, match="chmod 600"):
        load_ca(confdir)
    assert _mode(path) == 0o644  # not silently "fixed"


def test_stricter_key_mode_is_accepted(confdir: Path, created: CAInfo) -> None:
    created.paths.key_pem.chmod(0o400)
    assert load_ca(confdir).cert == created.cert


def _replace_key_pem(info: CAInfo, content: bytes) -> None:
    info.paths.key_pem.unlink()
    fd = os.open(info.paths.key_pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"not a pem file\n", id="garbage"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: raw.split(b"-----BEGIN CERTIFICATE")[0], id="no-cert"),
        pytest.param(lambda raw: raw[raw.index(b"-----BEGIN CERTIFICATE") :], id="no-key"),
    ],
)
def test_corrupt_ca_file_raises(confdir: Path, created: CAInfo, mangle) -> None:  # type: ignore[no-untyped-def]
    _replace_key_pem(created, mangle(created.paths.key_pem.read_bytes()))
    with pytest.raises(CAError, match=re.escape(str(created.paths.key_pem))):
        ensure_ca(confdir)
    with pytest.raises(CAError):
        load_ca(confdir)


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .serial_number(1)
        .public_key(key.public_key())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256())


def _key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_mismatched_key_raises(confdir: Path, created: CAInfo) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = created.cert.public_bytes(serialization.Encoding.PEM)
    _replace_key_pem(created, _key_pem(other) + pem)
    with pytest.raises(CAError, match="does not belong"):
        load_ca(confdir)


def test_non_ca_certificate_raises(confdir: Path, created: CAInfo) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, ca=False)
    _replace_key_pem(created, _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CAError, match="not a CA"):
        load_ca(confdir)


def test_user_supplied_ec_ca_is_accepted(confdir: Path, created: CAInfo) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, ca=True)
    _replace_key_pem(created, _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
    assert load_ca(confdir).cert == cert


def test_encrypted_key_raises(confdir: Path, created: CAInfo) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    _replace_key_pem(created, encrypted + created.cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CAError, match="passphrase"):
        load_ca(confdir)


def test_unreadable_ca_file_raises(confdir: Path, created: CAInfo) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read mode 000 files")
    created.paths.key_pem.chmod(0o000)
    with pytest.raises(CAError, match="Cannot read"):
        load_ca(confdir)


def test_ca_path_is_a_directory(confdir: Path) -> None:
    # Unreadable in a way that also holds when the tests run as root.
    ca_paths(confdir).key_pem.mkdir(parents=True)
    with pytest.raises(CAError, match="Cannot read"):
        ensure_ca(confdir)


def test_dangling_symlink_is_not_written_through(confdir: Path, tmp_path: Path) -> None:
    confdir.mkdir()
    target = tmp_path / "elsewhere.pem"
    ca_paths(confdir).key_pem.symlink_to(target)
    with pytest.raises(CAError, match="Cannot read"):
        ensure_ca(confdir)
    assert not target.exists()


def test_confdir_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "certs"
    path.write_text("")
    with pytest.raises(CAError, match="not a directory"):
        ensure_ca(path)


# --------------------------------------------------------------------------
# Cross-checks with the openssl CLI
# --------------------------------------------------------------------------


@needs_openssl
def test_fingerprint_matches_openssl(created: CAInfo) -> None:
    out = _openssl("x509", "-in", str(created.paths.cert_pem), "-noout", "-fingerprint", "-sha256")
    assert out.split("=", 1)[1] == created.sha256_fingerprint
    out = _openssl("x509", "-in", str(created.paths.key_pem), "-noout", "-fingerprint", "-sha256")
    assert out.split("=", 1)[1] == created.sha256_fingerprint


@needs_openssl
def test_subject_hash_old_matches_openssl(created: CAInfo) -> None:
    out = _openssl("x509", "-in", str(created.paths.cert_pem), "-noout", "-subject_hash_old")
    assert re.fullmatch(r"[0-9a-f]{8}", created.subject_hash_old)
    assert created.subject_hash_old == out
    assert created.android_filename == f"{out}.0"


@needs_openssl
def test_subject_hash_old_for_foreign_encodings(tmp_path: Path) -> None:
    """Hash the subject as encoded, like openssl, also for non-UTF8String names."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE", _type=x509.name._ASN1Type.PrintableString),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ünïcode Org"),
            x509.NameAttribute(NameOID.COMMON_NAME, "plain", _type=x509.name._ASN1Type.PrintableString),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .serial_number(2**150)  # long serial: exercises multi-byte DER lengths
        .public_key(key.public_key())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "foreign.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    info = CAInfo(cert=cert, paths=ca_paths(tmp_path))
    assert info.subject_hash_old == _openssl("x509", "-in", str(path), "-noout", "-subject_hash_old")


@needs_openssl
def test_openssl_accepts_ca_and_key(created: CAInfo) -> None:
    # openssl confirms the key PEM's key matches and the cert is a self-signed CA.
    _openssl("verify", "-CAfile", str(created.paths.cert_pem), str(created.paths.cert_pem))
    mod_key = _openssl("rsa", "-in", str(created.paths.key_pem), "-noout", "-modulus")
    mod_cert = _openssl("x509", "-in", str(created.paths.key_pem), "-noout", "-modulus")
    assert mod_key == mod_cert


# --------------------------------------------------------------------------
# Export and display
# --------------------------------------------------------------------------


def test_export_pem(created: CAInfo) -> None:
    name, data = export_ca(created, "pem")
    assert name == "tlsgate-ca.pem"
    assert x509.load_pem_x509_certificate(data) == created.cert
    assert data == created.paths.cert_pem.read_bytes()


def test_export_der(created: CAInfo) -> None:
    name, data = export_ca(created, "der")
    assert name == "tlsgate-ca.der"
    assert x509.load_der_x509_certificate(data) == created.cert
    assert x509.load_der_x509_certificate(data) == x509.load_pem_x509_certificate(created.paths.cert_pem.read_bytes())


@needs_openssl
def test_export_android(created: CAInfo, tmp_path: Path) -> None:
    name, data = export_ca(created, "android")
    expected = _openssl("x509", "-in", str(created.paths.cert_pem), "-noout", "-subject_hash_old")
    assert name == f"{expected}.0"
    assert x509.load_pem_x509_certificate(data) == created.cert


@pytest.mark.parametrize("fmt", ["pem", "der", "android"])
def test_export_never_contains_key(created: CAInfo, fmt: str) -> None:
    _, data = export_ca(created, fmt)
    assert b"PRIVATE KEY" not in data
    key_der = pkcs12.load_pkcs12(created.paths.key_p12.read_bytes(), None).key
    assert key_der is not None
    private_der = key_der.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert private_der not in data


def test_export_unknown_format_lists_formats(created: CAInfo) -> None:
    with pytest.raises(ValueError, match="pem, der, android"):
        export_ca(created, "p12")


def test_describe(created: CAInfo) -> None:
    now = created.not_after - datetime.timedelta(days=100, hours=1)
    rows = describe(created, now=now)
    assert [label for label, _ in rows] == [
        "Subject",
        "SHA-256 fingerprint",
        "Not before",
        "Expires",
        "Android system-store name",
        "Certificate",
    ]
    values = dict(rows)
    assert values["Subject"] == created.subject
    # RFC 4514 lists RDNs last-to-first, hence O before CN.
    assert re.fullmatch(r"O=tlsgate,CN=tlsgate CA [0-9a-f]{8}", values["Subject"])
    assert values["SHA-256 fingerprint"] == created.sha256_fingerprint
    assert values["Not before"] == created.cert.not_valid_before_utc.date().isoformat()
    assert values["Expires"] == f"{created.not_after.date().isoformat()} (in 100 days)"
    assert values["Android system-store name"] == created.android_filename
    assert values["Certificate"] == str(created.paths.cert_pem)


def test_describe_expired(created: CAInfo) -> None:
    now = created.not_after + datetime.timedelta(days=3, hours=1)
    assert dict(describe(created, now=now))["Expires"].endswith("(expired 3 days ago)")


# --------------------------------------------------------------------------
# mitmproxy interoperability
# --------------------------------------------------------------------------


def test_mitmproxy_certstore_uses_our_ca(confdir: Path, created: CAInfo) -> None:
    from mitmproxy.certs import CertStore

    before = {p.name: p.read_bytes() for p in confdir.iterdir()}
    store = CertStore.from_store(confdir, "mitmproxy", 2048)
    assert store.default_ca._cert == created.cert
    # mitmproxy must not have created or rewritten anything.
    assert {p.name: p.read_bytes() for p in confdir.iterdir()} == before

    entry = store.get_cert("example.test", [x509.DNSName("example.test")])
    leaf = entry.cert._cert
    assert leaf.issuer == created.cert.subject
    leaf.verify_directly_issued_by(created.cert)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["example.test"]


@needs_openssl
def test_openssl_verifies_mitmproxy_leaf(confdir: Path, created: CAInfo, tmp_path: Path) -> None:
    from mitmproxy.certs import CertStore

    store = CertStore.from_store(confdir, "mitmproxy", 2048)
    entry = store.get_cert("example.test", [x509.DNSName("example.test")])
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(entry.cert._cert.public_bytes(serialization.Encoding.PEM))
    out = _openssl(
        "verify",
        "-CAfile",
        str(created.paths.cert_pem),
        "-verify_hostname",
        "example.test",
        "-purpose",
        "sslserver",
        str(leaf_path),
    )
    assert out.endswith(": OK")
