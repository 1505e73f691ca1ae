"""Tests for tlsgate.tls.pins and tlsgate.tls.certcheck with generated certificates.

Cross-checks use the real tools rather than restating our own logic: pins are
compared with the openssl CLI pipeline, verify error texts with the libcrypto
Python's ssl module is linked against, and every classification of a real
failure comes from an actual handshake with a local ssl server.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import given
from hypothesis import strategies as st

from tests.certgen import (
    Chain,
    Issued,
    make_chain,
    make_intermediate,
    make_key,
    make_leaf,
    make_root,
    utcnow,
    write_pem,
    write_server_files,
)
from tlsgate.checks.certificates import check_chain
from tlsgate.policy.sections.certificates import CertRules
from tlsgate.tls.certcheck import (
    FAILURE_NAMES,
    SENTENCES,
    VERIFY_ERRORS,
    CertFailure,
    ca_issuers_urls,
    chain_summary,
    classify_verify_error,
    key_description,
    refine_with_chain,
    signature_hash_name,
)
from tlsgate.tls.pins import (
    ChainPin,
    PinError,
    PinSet,
    cert_role,
    format_pin,
    is_self_signed,
    issued_by,
    lint_pin_set,
    parse_pin,
    spki_pin,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not found")
NOW = utcnow()
AIA_URL = "http://ca.example.test/intermediate.crt"


@pytest.fixture(scope="module")
def ca_chain() -> Chain:
    """One ordinary root -> intermediate -> leaf shared by tests that only read it (conftest's ``pki`` is a tuple)."""
    return make_chain(dns=("localhost", "api.example.test"), ips=("127.0.0.1",))


def test_modules_stay_free_of_mitmproxy() -> None:
    """A fresh interpreter, because this test session has long imported everything else."""
    code = "import sys, tlsgate.tls.pins, tlsgate.tls.certcheck; print(sorted(m for m in sys.modules if 'mitmproxy' in m))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- certgen


@needs_openssl
def test_certgen_chain_verifies_with_openssl(ca_chain: Chain, tmp_path: Path) -> None:
    root = write_pem(tmp_path / "root.pem", ca_chain.root)
    inter = write_pem(tmp_path / "inter.pem", ca_chain.intermediate)
    leaf = write_pem(tmp_path / "leaf.pem", ca_chain.leaf)
    result = subprocess.run(
        [OPENSSL, "verify", "-x509_strict", "-CAfile", root, "-untrusted", inter, leaf],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_certgen_names_and_legacy_digest(tmp_path: Path) -> None:
    root = make_root(key="rsa:2048", digest="sha1")
    leaf = make_leaf(root, dns=("a.example",), ips=("10.0.0.1",), ca_issuers_url=AIA_URL)
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    assert isinstance(root.cert.signature_hash_algorithm, hashes.SHA1)
    assert ca_issuers_urls(leaf.cert) == [AIA_URL]
    cert_file, key_file = write_server_files(tmp_path, leaf, root)
    assert cert_file.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    assert b"PRIVATE KEY" in key_file.read_bytes()


def test_self_signed_detection_includes_sha1_roots(ca_chain: Chain) -> None:
    sha1_root = make_root(key="rsa:2048", digest="sha1")
    assert is_self_signed(sha1_root.cert)
    assert is_self_signed(ca_chain.root.cert)
    assert not is_self_signed(ca_chain.intermediate.cert)
    assert issued_by(ca_chain.leaf.cert, ca_chain.intermediate.cert)
    assert not issued_by(ca_chain.leaf.cert, ca_chain.root.cert)
    impostor = make_root(cn="tlsgate test intermediate")  # same name as the intermediate, other key
    assert not issued_by(ca_chain.leaf.cert, impostor.cert)


# --------------------------------------------------------------------------- pins


def _openssl_pin(cert: x509.Certificate, tmp_path: Path) -> str:
    pem = write_pem(tmp_path / "pin.pem", cert)
    pipeline = (
        f"{OPENSSL} x509 -in {shlex.quote(str(pem))} -pubkey -noout | {OPENSSL} pkey -pubin -outform der"
        f" | {OPENSSL} dgst -sha256 -binary | base64"
    )
    result = subprocess.run(["sh", "-c", pipeline], capture_output=True, text=True, check=True)
    return "sha256/" + result.stdout.strip()


@needs_openssl
@pytest.mark.parametrize("key", ["rsa:2048", "ec:P-256", "ec:P-384", "ed25519"])
def test_spki_pin_matches_openssl_pipeline(key: str, tmp_path: Path) -> None:
    leaf = make_leaf(None, key=key)
    assert spki_pin(leaf.cert) == _openssl_pin(leaf.cert, tmp_path)


def test_pin_survives_renewal_with_same_key(ca_chain: Chain) -> None:
    renewed = make_leaf(ca_chain.intermediate, key=ca_chain.leaf.key, not_after=NOW + dt.timedelta(days=400))
    assert spki_pin(renewed.cert) == spki_pin(ca_chain.leaf.cert)
    assert renewed.cert.serial_number != ca_chain.leaf.cert.serial_number


def test_parse_pin_round_trip(ca_chain: Chain) -> None:
    pin = spki_pin(ca_chain.leaf.cert)
    assert parse_pin(f"  {pin}\n") == base64.b64decode(pin.removeprefix("sha256/"))


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", ["does not start with 'sha256/'", "sha1/ pins are not accepted"]),
        ("sha1/" + base64.b64encode(bytes(20)).decode(), ["is a sha1/ pin", "SHA-1 pins are not accepted"]),
        ("SHA256/" + base64.b64encode(bytes(32)).decode(), ["lowercase 'sha256/'"]),
        ("sha256/not*base64!", ["not valid base64"]),
        ("sha256/" + base64.b64encode(bytes(32)).decode().rstrip("="), ["not valid base64"]),
        ("sha256/" + base64.urlsafe_b64encode(b"\xff" * 32).decode(), ["not valid base64"]),
        ("sha256/" + base64.b64encode(bytes(20)).decode(), ["decodes to 20 bytes", "32 bytes"]),
        ("sha256/", ["decodes to 0 bytes"]),
    ],
)
def test_parse_pin_errors_are_precise(text: str, fragments: list[str]) -> None:
    with pytest.raises(PinError) as caught:
        parse_pin(text)
    for fragment in fragments:
        assert fragment in str(caught.value)


@given(st.binary(min_size=32, max_size=32))
def test_format_then_parse_is_identity(digest: bytes) -> None:
    assert parse_pin(format_pin(digest)) == digest


@given(st.text(max_size=80))
def test_parse_pin_only_ever_raises_pin_error(text: str) -> None:
    with contextlib.suppress(PinError):
        assert len(parse_pin(text)) == 32


def test_pin_set_match_on_leaf(ca_chain: Chain) -> None:
    result = PinSet.from_strings("api", [spki_pin(ca_chain.leaf.cert)]).match(ca_chain.certs)
    assert (result.matched, result.index, result.role) == (True, 0, "leaf")
    assert result.subject == "CN=localhost,O=tlsgate tests"
    assert "leaf certificate CN=localhost" in result.message()


def test_pin_set_backup_pin_on_intermediate_matches(ca_chain: Chain) -> None:
    spare = make_leaf(None)  # a pinned spare key the server does not use yet
    pins = PinSet.from_strings("api", [spki_pin(spare.cert), spki_pin(ca_chain.intermediate.cert)])
    result = pins.match(ca_chain.certs)
    assert (result.matched, result.index, result.role) == (True, 1, "intermediate")
    assert result.pin == spki_pin(ca_chain.intermediate.cert)


def test_pin_set_spare_key_matches_after_rotation(ca_chain: Chain) -> None:
    spare_key = make_key()
    pins = PinSet.from_strings("api", [spki_pin(ca_chain.leaf.cert), spki_pin(make_leaf(None, key=spare_key).cert)])
    rotated = make_leaf(ca_chain.intermediate, key=spare_key)
    result = pins.match([rotated.cert, ca_chain.intermediate.cert])
    assert result.matched and result.index == 0


def test_pin_set_match_on_root_needs_validated_chain(ca_chain: Chain) -> None:
    pins = PinSet.from_strings("root-only", [spki_pin(ca_chain.root.cert)])
    result = pins.match(ca_chain.certs)
    assert (result.matched, result.index, result.role) == (True, 2, "root")
    assert not pins.match(ca_chain.served).matched  # servers do not send the root


def test_pin_set_mismatch_lists_expected_and_found(ca_chain: Chain) -> None:
    other = make_chain()
    expected = [spki_pin(c) for c in other.certs[:2]]
    result = PinSet.from_strings("api", expected).match(ca_chain.certs)
    assert not result.matched and result.index is None
    assert result.expected == tuple(expected)
    assert result.chain_pins == (
        ChainPin("leaf", "CN=localhost,O=tlsgate tests", spki_pin(ca_chain.leaf.cert)),
        ChainPin("intermediate", "CN=tlsgate test intermediate,O=tlsgate tests", spki_pin(ca_chain.intermediate.cert)),
        ChainPin("root", "CN=tlsgate test root,O=tlsgate tests", spki_pin(ca_chain.root.cert)),
    )
    message = result.message()
    assert message.startswith(f"pin set 'api': pins expected {expected[0]}, {expected[1]}; server's chain has leaf ")
    for cert in ca_chain.certs:
        assert spki_pin(cert) in message


def test_pin_set_keeps_original_text_and_rejects_bad_input(ca_chain: Chain) -> None:
    pin = spki_pin(ca_chain.leaf.cert)
    assert PinSet.from_strings("a", [f" {pin} "]).pin_texts == (pin,)
    assert PinSet("b", (parse_pin(pin),)).pin_texts == (pin,)
    with pytest.raises(PinError, match="has no pins"):
        PinSet.from_strings("empty", [])
    with pytest.raises(PinError, match="not 32"):
        PinSet("short", (b"x" * 20,))
    with pytest.raises(PinError, match="sha1/"):
        PinSet.from_strings("legacy", ["sha1/" + base64.b64encode(bytes(20)).decode()])


def test_pin_set_expiry_follows_android() -> None:
    pins = PinSet("api", (bytes(32),), expires=dt.date(2030, 6, 1))
    assert not pins.expired(dt.date(2030, 5, 31))
    assert pins.expired(dt.date(2030, 6, 1))  # Android stops enforcing at the start of that day
    assert pins.expired(dt.date(2031, 1, 1))
    assert not PinSet("forever", (bytes(32),)).expired(dt.date(2999, 1, 1))


def test_lint_pin_set() -> None:
    one, two = format_pin(bytes(32)), format_pin(b"\x01" * 32)
    assert lint_pin_set(PinSet.from_strings("ok", [one, two])) == []
    assert lint_pin_set([one, two]) == []
    (single,) = lint_pin_set([one])
    assert "no backup pin" in single
    warnings = lint_pin_set(PinSet.from_strings("dup", [one, one]))
    assert any("more than once" in w for w in warnings)
    assert any("no backup pin (1 distinct pin)" in w for w in warnings)


# --------------------------------------------------------------------------- verify error classification


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (10, "expired"),
        (9, "not_yet_valid"),
        (62, "hostname_mismatch"),
        (64, "hostname_mismatch"),
        (18, "self_signed"),
        (19, "unknown_issuer"),
        (20, "unknown_issuer"),
        (21, "unknown_issuer"),
        (2, "unknown_issuer"),
        (27, "unknown_issuer"),
        (23, "revoked"),
        (7, "invalid"),
        (66, "invalid"),
        (68, "invalid"),
        (79, "invalid"),
        (9999, "invalid"),
    ],
)
def test_classify_by_code(code: int, name: str) -> None:
    failure = classify_verify_error(code, "")
    assert failure.name == name
    assert failure.sentence == SENTENCES[name]
    assert failure.code == code


def test_vocabulary_and_sentences() -> None:
    assert set(VERIFY_ERRORS.values()) <= set(FAILURE_NAMES)
    assert set(SENTENCES) == set(FAILURE_NAMES)
    assert "--upstream-ca" in SENTENCES["unknown_issuer"]
    assert "staging CA" in SENTENCES["unknown_issuer"]


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1000)", "self_signed"),
        ("certificate verify failed: self signed certificate", "self_signed"),  # OpenSSL 1.1 wording
        ("certificate verify failed: self-signed certificate in certificate chain", "unknown_issuer"),
        ("Certificate verify failed: unable to get local issuer certificate", "unknown_issuer"),  # mitmproxy's wording
        ("Certificate verify failed: hostname mismatch", "hostname_mismatch"),
        ("Hostname mismatch, certificate is not valid for 'x.example'.", "hostname_mismatch"),
        ("hostname 'a.example' doesn't match 'b.example'", "hostname_mismatch"),
        ("Certificate verify failed: certificate has expired", "expired"),
        ("Certificate verify failed: CRL has expired", "invalid"),
        ("certificate verify failed: certificate is not yet valid", "not_yet_valid"),
        ("certificate verify failed: certificate revoked", "revoked"),
        ("something else entirely", "invalid"),
        ("", "invalid"),
    ],
)
def test_classify_by_message(message: str, name: str) -> None:
    failure = classify_verify_error(None, message)
    assert failure.name == name
    assert failure.message == message and failure.code is None


def test_code_beats_message_and_evidence_is_kept() -> None:
    failure = classify_verify_error(10, "certificate verify failed: hostname mismatch")
    assert (failure.name, failure.openssl_name) == ("expired", "X509_V_ERR_CERT_HAS_EXPIRED")
    assert failure.message == "certificate verify failed: hostname mismatch"
    assert "(OpenSSL: certificate verify failed: hostname mismatch)" in failure.describe()
    unknown = classify_verify_error(9999, "certificate verify failed: certificate revoked")
    assert (unknown.name, unknown.code) == ("revoked", 9999)


def _libcrypto() -> ctypes.CDLL:
    """The libcrypto Python's ssl module uses, so the texts are the ones we will really see."""
    name = ctypes.util.find_library("crypto")
    if name is None:
        pytest.skip("libcrypto not found")
    lib = ctypes.CDLL(name)
    lib.OpenSSL_version.restype = ctypes.c_char_p
    lib.OpenSSL_version.argtypes = [ctypes.c_int]
    if lib.OpenSSL_version(0).decode() != ssl.OPENSSL_VERSION:
        pytest.skip(f"{name} is not the library the ssl module uses ({ssl.OPENSSL_VERSION})")
    lib.X509_verify_cert_error_string.restype = ctypes.c_char_p
    lib.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
    return lib


def test_every_known_code_is_recognised_from_libcrypto_text() -> None:
    lib = _libcrypto()
    for code, name in VERIFY_ERRORS.items():
        text = lib.X509_verify_cert_error_string(code).decode()
        by_text = classify_verify_error(None, f"certificate verify failed: {text}")
        assert (by_text.name, by_text.openssl_name) == (name, classify_verify_error(code, "").openssl_name), text


def test_code_numbers_match_openssl_header() -> None:
    header = Path("/usr/include/openssl/x509_vfy.h")
    if not header.exists():
        pytest.skip("OpenSSL headers not installed")
    defined = {int(n): c for c, n in re.findall(r"#\s*define\s+(X509_V_ERR_\w+)\s+(\d+)", header.read_text())}
    for code in VERIFY_ERRORS:
        assert classify_verify_error(code, "").openssl_name == defined[code]


# --------------------------------------------------------------------------- real handshakes


@dataclass
class Scenario:
    """What the local server serves and what the verifying client trusts."""

    served: list[Issued | x509.Certificate]
    trusted: list[Issued | x509.Certificate]
    host: str = "localhost"
    revoked_by: Issued | None = None  # CA that publishes a CRL revoking the leaf
    legacy_server: bool = False  # server must be allowed to load SHA-1 / 1024-bit material

    @property
    def served_certs(self) -> list[x509.Certificate]:
        return [i.cert if isinstance(i, Issued) else i for i in self.served]


def _serve_once(cert_file: Path, key_file: Path, legacy: bool) -> tuple[int, threading.Thread]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if legacy:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def handshake() -> None:
        with listener:
            conn, _ = listener.accept()
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()  # the client rejected us: that is the point of the test

    thread = threading.Thread(target=handshake, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def _crl_file(tmp_path: Path, ca: Issued, leaf: x509.Certificate) -> Path:
    revoked = (
        x509.RevokedCertificateBuilder().serial_number(leaf.serial_number).revocation_date(NOW - dt.timedelta(hours=1)).build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
        .add_revoked_certificate(revoked)
        .sign(ca.key, hashes.SHA256())
    )
    path = tmp_path / "crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def _client_context(tmp_path: Path, scenario: Scenario) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=write_pem(tmp_path / "trusted.pem", *scenario.trusted))
    if scenario.revoked_by:
        context.load_verify_locations(_crl_file(tmp_path, scenario.revoked_by, scenario.served_certs[0]))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def _handshake_error(tmp_path: Path, scenario: Scenario) -> ssl.SSLCertVerificationError:
    leaf = scenario.served[0]
    assert isinstance(leaf, Issued)
    cert_file, key_file = write_server_files(tmp_path, leaf, *scenario.served[1:])
    port, thread = _serve_once(cert_file, key_file, scenario.legacy_server)
    context = _client_context(tmp_path, scenario)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError) as caught,
        ):
            context.wrap_socket(raw, server_hostname=scenario.host)
    finally:
        thread.join(timeout=10)
    return caught.value


def _expired(p: Chain) -> Scenario:
    leaf = make_leaf(p.intermediate, not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    return Scenario([leaf, p.intermediate], [p.root])


def _not_yet_valid(p: Chain) -> Scenario:
    return Scenario([make_leaf(p.intermediate, not_before=NOW + dt.timedelta(days=2)), p.intermediate], [p.root])


def _wrong_host(p: Chain) -> Scenario:
    return Scenario([p.leaf, p.intermediate], [p.root], host="other.example.test")


def _wrong_ip(p: Chain) -> Scenario:
    return Scenario([p.leaf, p.intermediate], [p.root], host="127.0.0.2")


def _self_signed(p: Chain) -> Scenario:
    return Scenario([make_leaf(None)], [p.root])


def _unknown_ca(p: Chain) -> Scenario:
    return Scenario([p.leaf, p.intermediate], [make_root(cn="some other root")])


def _untrusted_root_sent(p: Chain) -> Scenario:
    return Scenario([p.leaf, p.intermediate, p.root], [make_root(cn="some other root")])


def _missing_intermediate(p: Chain) -> Scenario:
    return Scenario([make_leaf(p.intermediate, ca_issuers_url=AIA_URL)], [p.root])


def _private_root_leaf(p: Chain) -> Scenario:
    private = make_root(cn="mkcert-style private root")
    return Scenario([make_leaf(private)], [p.root])


def _revoked(p: Chain) -> Scenario:
    return Scenario([make_leaf(p.intermediate), p.intermediate], [p.root], revoked_by=p.intermediate)


def _sha1_intermediate(p: Chain) -> Scenario:
    weak = make_intermediate(p.root, cn="sha1 intermediate", digest="sha1")
    return Scenario([make_leaf(weak), weak], [p.root], legacy_server=True)


def _rsa1024_leaf(p: Chain) -> Scenario:
    return Scenario([make_leaf(p.intermediate, key="rsa:1024"), p.intermediate], [p.root], legacy_server=True)


@pytest.mark.parametrize(
    ("build", "code", "name", "refined"),
    [
        (_expired, 10, "expired", "expired"),
        (_not_yet_valid, 9, "not_yet_valid", "not_yet_valid"),
        (_wrong_host, 62, "hostname_mismatch", "hostname_mismatch"),
        (_wrong_ip, 64, "hostname_mismatch", "hostname_mismatch"),
        (_self_signed, 18, "self_signed", "self_signed"),
        (_unknown_ca, 20, "unknown_issuer", "unknown_issuer"),
        (_untrusted_root_sent, 19, "unknown_issuer", "unknown_issuer"),
        (_missing_intermediate, 20, "unknown_issuer", "incomplete_chain"),
        (_private_root_leaf, 20, "unknown_issuer", "unknown_issuer"),
        (_revoked, 23, "revoked", "revoked"),
        (_sha1_intermediate, 68, "invalid", "invalid"),
        (_rsa1024_leaf, 66, "invalid", "invalid"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_real_handshake_failures_are_classified(
    build: Callable[[Chain], Scenario], code: int, name: str, refined: str, ca_chain: Chain, tmp_path: Path
) -> None:
    scenario = build(ca_chain)
    error = _handshake_error(tmp_path, scenario)
    assert error.verify_code == code, error.verify_message
    failure = classify_verify_error(error.verify_code, error.verify_message)
    assert failure.name == name
    assert classify_verify_error(None, str(error)).name == name  # text only, as OpenSSL 3 often reports it
    assert refine_with_chain(failure, scenario.served_certs).name == refined


# --------------------------------------------------------------------------- refine_with_chain


def _issuer_failure() -> CertFailure:
    return classify_verify_error(20, "unable to get local issuer certificate")


def test_refine_missing_intermediate_note_names_issuer_and_url(ca_chain: Chain) -> None:
    leaf = make_leaf(ca_chain.intermediate, ca_issuers_url=AIA_URL)
    refined = refine_with_chain(_issuer_failure(), [leaf.cert])
    assert refined.name == "incomplete_chain"
    assert refined.sentence == SENTENCES["incomplete_chain"]
    assert refined.note is not None
    assert "CN=tlsgate test intermediate" in refined.note and AIA_URL in refined.note
    assert (refined.code, refined.message) == (20, "unable to get local issuer certificate")


def test_refine_without_aia_stays_unknown_issuer_but_says_why(ca_chain: Chain) -> None:
    refined = refine_with_chain(_issuer_failure(), [ca_chain.leaf.cert])
    assert refined.name == "unknown_issuer"
    assert refined.note is not None and "private CA" in refined.note


def test_refine_full_chain_points_at_untrusted_top(ca_chain: Chain) -> None:
    reordered = [ca_chain.leaf.cert, make_leaf(None).cert, ca_chain.intermediate.cert]  # junk and odd order tolerated
    refined = refine_with_chain(_issuer_failure(), reordered)
    assert refined.name == "unknown_issuer"
    assert refined.note is not None
    assert "up to CN=tlsgate test intermediate" in refined.note and "CN=tlsgate test root" in refined.note


def test_refine_leaves_other_failures_alone(ca_chain: Chain) -> None:
    leaf_only = [make_leaf(ca_chain.intermediate, ca_issuers_url=AIA_URL).cert]
    for failure in (classify_verify_error(10, ""), classify_verify_error(19, ""), classify_verify_error(None, "boom")):
        assert refine_with_chain(failure, leaf_only) == failure
    assert refine_with_chain(_issuer_failure(), []) == _issuer_failure()
    assert refine_with_chain(_issuer_failure(), [make_leaf(None).cert]) == _issuer_failure()


# --------------------------------------------------------------------------- check_chain


def _kinds(chain: Sequence[x509.Certificate], rules: CertRules | None = None) -> list[tuple[str, int, bool]]:
    return [(i.kind, i.cert_index, i.blocking) for i in check_chain(chain, rules or CertRules(), NOW)]


def test_clean_chain_has_no_issues(ca_chain: Chain) -> None:
    assert check_chain(ca_chain.certs, CertRules(), NOW) == []


def test_weak_rsa_key_is_blocking(ca_chain: Chain) -> None:
    leaf = make_leaf(ca_chain.intermediate, key="rsa:1024")
    (issue,) = check_chain([leaf.cert, ca_chain.intermediate.cert], CertRules(), NOW)
    assert (issue.kind, issue.cert_index, issue.blocking) == ("weak_rsa_key", 0, True)
    assert issue.subject == "CN=localhost,O=tlsgate tests"
    assert "CN=localhost,O=tlsgate tests has a 1024-bit RSA key" in issue.detail and "2048" in issue.detail
    assert _kinds([make_leaf(None, key="rsa:2048").cert], CertRules(min_rsa_bits=4096)) == [("weak_rsa_key", 0, True)]


@pytest.mark.parametrize("curve", ["P-192", "P-224"])
def test_weak_ec_key_is_blocking(curve: str, ca_chain: Chain) -> None:
    try:
        leaf = make_leaf(ca_chain.intermediate, key=f"ec:{curve}")
    except (UnsupportedAlgorithm, ValueError) as exc:  # some OpenSSL builds drop small curves entirely
        pytest.skip(f"cryptography cannot generate {curve} here: {exc}")
    (issue,) = check_chain([leaf.cert], CertRules(), NOW)
    assert (issue.kind, issue.blocking) == ("weak_ec_key", True)
    assert f"EC {curve} key" in issue.detail


def test_strong_keys_pass(ca_chain: Chain) -> None:
    for key in ("ec:P-384", "ed25519", "rsa:3072"):
        assert _kinds([make_leaf(ca_chain.intermediate, key=key).cert]) == []


def test_dsa_and_non_signing_keys_are_weak() -> None:
    dsa_leaf = make_leaf(None, key="dsa:2048")
    (issue,) = check_chain([dsa_leaf.cert], CertRules(), NOW)
    assert (issue.kind, issue.blocking) == ("weak_key", True) and "DSA 2048" in issue.detail
    from cryptography.hazmat.primitives.asymmetric import x25519

    signer = make_root()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=x25519.example"))
        .issuer_name(signer.cert.subject)
        .public_key(x25519.X25519PrivateKey.generate().public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=90))
    )
    x_leaf = builder.sign(signer.key, hashes.SHA256())  # type: ignore[arg-type]
    (issue,) = check_chain([x_leaf], CertRules(), NOW)
    assert issue.kind == "weak_key" and "CN=x25519.example" in issue.detail


def _unknown_key_cert() -> x509.Certificate:
    """An EC certificate whose key algorithm OID is rewritten to one nobody knows."""
    der = make_leaf(None, key="ec:P-256").cert.public_bytes(serialization.Encoding.DER)
    id_ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # 1.2.840.10045.2.1
    assert der.count(id_ec_public_key) == 1
    return x509.load_der_x509_certificate(der.replace(id_ec_public_key, bytes.fromhex("06072a8648ce3d0209")))


def test_unknown_key_type_is_weak_and_summarised() -> None:
    cert = _unknown_key_cert()
    (issue,) = check_chain([cert], CertRules(), NOW)
    assert (issue.kind, issue.blocking) == ("weak_key", True)
    assert "unknown (1.2.840.10045.2.9)" in issue.detail
    (summary,) = chain_summary([cert])
    assert summary["pin"] == "unavailable (unsupported key type)"
    result = PinSet("p", (bytes(32),)).match([cert])
    assert not result.matched and result.chain_pins[0].pin.startswith("unavailable")


def test_sha1_intermediate_flagged_but_sha1_root_is_not() -> None:
    root = make_root(key="rsa:2048", digest="sha1")
    inter = make_intermediate(root, digest="sha1")
    leaf = make_leaf(inter)
    chain = [leaf.cert, inter.cert, root.cert]
    assert signature_hash_name(root.cert) == "sha1" and is_self_signed(root.cert)
    (issue,) = check_chain(chain, CertRules(), NOW)
    assert (issue.kind, issue.cert_index, issue.blocking) == ("sha1_signature", 1, True)
    assert "intermediate certificate CN=tlsgate test intermediate,O=tlsgate tests is signed with SHA-1" in issue.detail
    (allowed,) = check_chain(chain, CertRules(allow_sha1=True), NOW)
    assert (allowed.kind, allowed.blocking) == ("sha1_signature", False)


def test_sha1_leaf_and_md5_are_flagged(ca_chain: Chain) -> None:
    assert _kinds([make_leaf(ca_chain.intermediate, digest="sha1").cert]) == [("sha1_signature", 0, True)]
    rsa_ca = make_root(key="rsa:2048")
    md5_inter = make_intermediate(rsa_ca, digest="md5")
    assert signature_hash_name(md5_inter.cert) == "md5"
    assert _kinds([md5_inter.cert], CertRules(allow_sha1=True)) == [("sha1_signature", 0, True)]


def test_self_signed_sha1_leaf_is_not_flagged() -> None:
    """Nothing rests on a self-signature: a self-signed leaf is trusted (pinned) as a whole."""
    assert _kinds([make_leaf(None, key="rsa:2048", digest="sha1").cert]) == []


@pytest.mark.parametrize(("days", "flagged"), [(0.5, True), (1, True), (10, True), (14, True), (15, False)])
def test_expiring_soon_counts_days(days: float, flagged: bool, ca_chain: Chain) -> None:
    leaf = make_leaf(ca_chain.intermediate, not_after=NOW + dt.timedelta(days=days))
    issues = check_chain([leaf.cert, ca_chain.intermediate.cert], CertRules(), NOW)
    if not flagged:
        assert issues == []
        return
    (issue,) = issues
    assert (issue.kind, issue.blocking, issue.cert_index) == ("expiring_soon", False, 0)
    expected = "less than a day" if days < 1 else ("1 day" if days == 1 else f"{int(days)} days")
    assert f"(in {expected})" in issue.detail
    assert (NOW + dt.timedelta(days=days)).date().isoformat() in issue.detail


def test_expiring_intermediate_and_custom_window() -> None:
    root = make_root()
    inter = make_intermediate(root, not_after=NOW + dt.timedelta(days=20))
    chain = [make_leaf(inter).cert, inter.cert, root.cert]
    assert _kinds(chain) == []
    (issue,) = check_chain(chain, CertRules(expiry_warning_days=30), NOW)
    assert (issue.kind, issue.cert_index) == ("expiring_soon", 1)
    assert "intermediate certificate CN=tlsgate test intermediate" in issue.detail and "in 20 days" in issue.detail


def test_bad_dates_are_reported_but_not_blocking(ca_chain: Chain) -> None:
    expired = make_leaf(ca_chain.intermediate, not_before=NOW - dt.timedelta(days=60), not_after=NOW - dt.timedelta(days=3))
    future = make_leaf(ca_chain.intermediate, not_before=NOW + dt.timedelta(days=3))
    (old,) = check_chain([expired.cert], CertRules(), NOW)
    assert (old.kind, old.blocking) == ("expired", False) and "(3 days ago)" in old.detail
    (new,) = check_chain([future.cert], CertRules(), NOW)
    assert (new.kind, new.blocking) == ("not_yet_valid", False)


def test_naive_now_is_taken_as_utc(ca_chain: Chain) -> None:
    leaf = make_leaf(ca_chain.intermediate, not_after=NOW + dt.timedelta(days=5))
    naive = NOW.replace(tzinfo=None)
    assert check_chain([leaf.cert], CertRules(), naive) == check_chain([leaf.cert], CertRules(), NOW)


# --------------------------------------------------------------------------- chain_summary


def test_chain_summary(ca_chain: Chain) -> None:
    rsa_root = make_root(key="rsa:2048", digest="sha1")
    inter = make_intermediate(rsa_root, key="ec:P-384")
    leaf = make_leaf(inter, key="rsa:2048")
    summary = chain_summary([leaf.cert, inter.cert, rsa_root.cert])
    assert [s["role"] for s in summary] == ["leaf", "intermediate", "root"]
    assert [s["key"] for s in summary] == ["RSA 2048", "EC P-384", "RSA 2048"]
    assert [s["signature_hash"] for s in summary] == ["sha256", "sha256", "sha1"]
    assert [s["self_signed"] for s in summary] == [False, False, True]
    assert summary[0]["pin"] == spki_pin(leaf.cert)
    assert summary[0]["subject"] == "CN=localhost,O=tlsgate tests"
    assert summary[0]["issuer"] == "CN=tlsgate test intermediate,O=tlsgate tests"
    assert dt.datetime.fromisoformat(str(summary[0]["not_after"])) == leaf.cert.not_valid_after_utc
    assert key_description(make_leaf(None, key="ed25519").cert) == "Ed25519"
    assert key_description(ca_chain.leaf.cert) == "EC P-256"
    assert signature_hash_name(make_leaf(None, key="ed25519").cert) == "none"
    assert [cert_role(ca_chain.certs, i) for i in range(3)] == ["leaf", "intermediate", "root"]
