"""The pure parts of the client audits: ClientHello parsing and fingerprints, the client verdicts,
probe certificates and their schedule, and the `client` policy section. No proxy.

The fingerprint tests rebuild, byte by byte, ClientHellos whose JA3/JA4 were published: Chrome's as
reported by browserleaks.com (JA3 text and hash, JA4), and the worked example of FoxIO's JA4
specification. GREASE values are added on purpose: both algorithms must drop them.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.certgen import make_root
from tlsgate.checks.client_hello import client_floor, judge_client_hello, judge_client_suites
from tlsgate.checks.model import Action, decide
from tlsgate.checks.probes import CLOSED_SILENTLY, ProbeSchedule, client_rejection, likely_cause
from tlsgate.policy import Mode, PolicyError, load_texts
from tlsgate.policy.sections.client import ClientRules
from tlsgate.tls.clienthello import ClientHello, parse_client_hello, parse_record
from tlsgate.tls.probes import CHAIN_PROBE_KINDS, PROBE_KINDS, WRONG_HOST, ProbeMint, applies, sign_sha1
from tlsgate.tls.protocol_probes import PROTOCOL_PROBE_KINDS

# -- building ClientHellos --------------------------------------------------------------------------


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def vec8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def vec16(data: bytes) -> bytes:
    return u16(len(data)) + data


def u16_list(values: list[int]) -> bytes:
    return b"".join(u16(v) for v in values)


def extension(ext_type: int, body: bytes) -> bytes:
    return u16(ext_type) + vec16(body)


def sni_ext(name: str) -> bytes:
    return extension(0x0000, vec16(b"\x00" + vec16(name.encode())))


def alpn_ext(*protocols: bytes) -> bytes:
    return extension(0x0010, vec16(b"".join(vec8(p) for p in protocols)))


def hello_body(version: int, ciphers: list[int], extensions: list[bytes]) -> bytes:
    """A ClientHello handshake body, from the version field on (the form mitmproxy hands addons)."""
    body = u16(version) + bytes(range(32)) + vec8(bytes(32)) + vec16(u16_list(ciphers)) + vec8(b"\x00")
    return body + vec16(b"".join(extensions)) if extensions else body


def as_record(body: bytes) -> bytes:
    """The same hello as captured on the wire: record header, handshake header, body."""
    return b"\x16\x03\x01" + u16(len(body) + 4) + b"\x01" + len(body).to_bytes(3, "big") + body


CHROME_CIPHERS = [4865, 4866, 4867, 49195, 49199, 49196, 49200, 52393, 52392, 49171, 49172, 156, 157, 47, 53]
CHROME_EXTENSION_ORDER = [45, 51, 16, 65037, 23, 17613, 0, 11, 10, 43, 65281, 35, 18, 5, 13, 27]
CHROME_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def chrome_extension(ext_type: int) -> bytes:
    bodies = {
        0: sni_ext("tls.browserleaks.com")[4:],
        16: alpn_ext(b"h2", b"http/1.1")[4:],
        10: vec16(u16_list([0x3A3A, 4588, 29, 23, 24])),  # GREASE group first, as Chrome sends it
        11: vec8(b"\x00"),
        43: vec8(u16_list([0x4A4A, 0x0304, 0x0303])),
        13: vec16(u16_list(CHROME_SIGALGS)),
        65281: b"\x00",
    }
    return extension(ext_type, bodies.get(ext_type, b""))


def chrome_hello() -> bytes:
    extensions = [extension(0x1A1A, b""), *(chrome_extension(t) for t in CHROME_EXTENSION_ORDER), extension(0x2A2A, b"\x00")]
    return hello_body(0x0303, [0x0A0A, *CHROME_CIPHERS], extensions)


# -- fingerprints ------------------------------------------------------------------------------------


def test_ja3_and_ja4_of_a_published_chrome_hello() -> None:
    hello = parse_client_hello(chrome_hello())
    # Published by browserleaks.com for this hello (ja3_text, ja3_hash, ja4).
    assert hello.ja3_string() == (
        "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
        "45-51-16-65037-23-17613-0-11-10-43-65281-35-18-5-13-27,4588-29-23-24,0"
    )
    assert hello.ja3() == "98487aa16281980e7d1120d399efb6a4"
    assert hello.ja4() == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def test_ja4_of_the_specification_example() -> None:
    # FoxIO's JA4 technical details: extensions in wire order, the cipher list, and the signature algorithms.
    order = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023, 0x0012, 0x002B]
    order += [0xFF01, 0x000B, 0x000A, 0x0015]
    ciphers = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D]
    ciphers += [0x002F, 0x0035]

    def build(sigalgs: list[int]) -> ClientHello:
        bodies = {
            0x0000: sni_ext("example.com")[4:],
            0x0010: alpn_ext(b"h2", b"http/1.1")[4:],
            0x002B: vec8(u16_list([0x0304, 0x0303])),
            0x000D: vec16(u16_list(sigalgs)),
        }
        return parse_client_hello(hello_body(0x0303, ciphers, [extension(t, bodies.get(t, b"")) for t in order]))

    assert build(CHROME_SIGALGS).ja4() == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    # "If there are no signature algorithms in the hello packet, then the string ends without an underscore".
    assert build([]).ja4() == "t13d1516h2_8daaf6152771_6d807ffa2a79"


def test_ja3_of_the_salesforce_readme_example() -> None:
    # The JA3 README's example string and its MD5, rebuilt as a TLS 1.0 hello (no supported_versions).
    ciphers = [47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4]
    extensions = [
        sni_ext("example.com"),
        extension(10, vec16(u16_list([23, 24, 25]))),
        extension(11, vec8(b"\x00")),
    ]
    hello = parse_record(as_record(hello_body(0x0301, ciphers, extensions)))
    assert hello.ja3_string() == "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0"
    assert hello.ja3() == "ada70206e40642a3e4461f35503241d5"
    # JA4 by hand: TLS 1.0, SNI, 12 ciphers, 3 extensions, no ALPN; no signature algorithms -> no underscore.
    cipher_list = "0004,0005,000a,0013,002f,0032,0035,0038,c009,c00a,c013,c014"
    expected_b = hashlib.sha256(cipher_list.encode()).hexdigest()[:12]
    expected_c = hashlib.sha256(b"000a,000b").hexdigest()[:12]
    assert hello.ja4() == f"t10d120300_{expected_b}_{expected_c}"
    assert hello.best_version_word == "1.0" and hello.sni == "example.com" and hello.alpn == ()


def test_a_hello_without_extensions_fingerprints_with_empty_fields() -> None:
    hello = parse_client_hello(hello_body(0x0302, [0x002F, 0x00FF], []))
    assert hello.ja3_string() == "770,47-255,,,"
    assert hello.ja4().startswith("t11i020000_") and hello.ja4().endswith("_000000000000")


def test_ja4_alpn_falls_back_to_hex_for_non_alphanumeric_values() -> None:
    hello = parse_client_hello(hello_body(0x0303, [0x1301], [alpn_ext(b"\xab\x01")]))
    assert hello.ja4()[8:10] == "a1"


def test_truncated_hellos_are_refused_not_misread() -> None:
    body = chrome_hello()
    for cut in (1, 20, 40, 80, len(body) - 3):
        with pytest.raises(ValueError):
            parse_client_hello(body[:cut])
    with pytest.raises(ValueError):
        parse_record(b"\x17\x03\x03\x00\x05hello")


def test_best_version_prefers_supported_versions_and_ignores_grease() -> None:
    tls13 = parse_client_hello(hello_body(0x0303, [0x1301], [extension(43, vec8(u16_list([0x7A7A, 0x0304, 0x0303])))]))
    assert tls13.best_version_word == "1.3"
    legacy = parse_client_hello(hello_body(0x0301, [0x002F], []))
    assert legacy.best_version_word == "1.0"


# -- verdicts ----------------------------------------------------------------------------------------

STRONG = 0xC02F  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
CBC = 0xC013  # TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
STATIC_RSA_CBC = 0x002F  # TLS_RSA_WITH_AES_128_CBC_SHA
RC4 = 0x0005  # TLS_RSA_WITH_RC4_128_SHA


def offer(*ciphers: int, version: int = 0x0303, sni: str | None = "api.test") -> ClientHello:
    extensions = [sni_ext(sni)] if sni else []
    return parse_client_hello(hello_body(version, [0x0A0A, *ciphers, 0x00FF], extensions))


@pytest.mark.parametrize(
    ("ciphers", "setting", "expected"),
    [
        ((STRONG, CBC, STATIC_RSA_CBC), "report", None),  # what every stack offers: not worth a finding
        ((STRONG, CBC), "strict", ("weak_suites_offered", "low")),
        ((STATIC_RSA_CBC,), "report", ("only_weak_suites", "medium")),
        ((STRONG, RC4), "report", ("broken_suites_offered", "high")),
        ((STRONG, RC4), "ignore", None),
    ],
)
def test_offered_suites_are_judged_by_setting(ciphers: tuple[int, ...], setting: str, expected) -> None:
    issues = judge_client_suites(offer(*ciphers), ClientRules(weak_suites=setting))
    if expected is None:
        assert issues == []
        return
    (issue,) = issues
    assert (issue.kind, issue.severity) == expected and issue.check == "client_ciphers" and not issue.blocking
    assert "GREASE" not in issue.detail and "SCSV" not in issue.detail


def test_weak_suites_are_named_with_why() -> None:
    (issue,) = judge_client_suites(offer(STATIC_RSA_CBC), ClientRules())
    assert "TLS_RSA_WITH_AES_128_CBC_SHA" in issue.detail
    for reason in ("no forward secrecy", "CBC mode", "SHA-1 MAC"):
        assert reason in issue.detail
    assert issue.evidence["weak_suites"] == [
        {"suite": "TLS_RSA_WITH_AES_128_CBC_SHA", "weaknesses": ["no_forward_secrecy", "cbc", "sha1_mac"]}
    ]


def test_a_long_list_of_weak_suites_is_shortened_in_the_sentence_not_in_the_evidence() -> None:
    cbc_suites = [0xC009, 0xC00A, 0xC013, 0xC014, 0x0033, 0x0039, 0x002F, 0x0035, 0x003C, 0x003D]
    (issue,) = judge_client_suites(offer(*cbc_suites, RC4), ClientRules())
    assert issue.detail.startswith("the client offers 1 broken cipher suite(s): TLS_RSA_WITH_RC4_128_SHA (RC4")
    assert issue.detail.endswith("; and 5 more (see evidence)")
    assert len(issue.evidence["weak_suites"]) == 11


def test_low_version_blocks_only_in_enforce_mode() -> None:
    old = offer(STATIC_RSA_CBC, version=0x0301)
    (enforced,) = [i for i in judge_client_hello(old, ClientRules(), True, "api.test") if i.check == "client_protocol"]
    assert decide(enforced, Mode.ENFORCE) is Action.BLOCKED
    assert "at best TLS 1.0" in enforced.detail and "refused" in enforced.detail
    (reported,) = [i for i in judge_client_hello(old, ClientRules(), False, "api.test") if i.check == "client_protocol"]
    assert decide(reported, Mode.REPORT) is Action.REPORTED and "report mode" in reported.detail
    assert [
        i for i in judge_client_hello(old, ClientRules(min_version="1.0"), True, "api.test") if i.check == "client_protocol"
    ] == []


def test_missing_sni_is_recorded_for_names_but_not_for_addresses() -> None:
    bare = offer(STRONG, sni=None)
    assert [i.kind for i in judge_client_hello(bare, ClientRules(), True, "api.test")] == ["no_sni"]
    assert judge_client_hello(bare, ClientRules(), True, "192.0.2.7") == []
    assert judge_client_hello(bare, ClientRules(require_sni=False), True, "api.test") == []


@pytest.mark.parametrize(
    ("best", "minimum", "enforce", "current", "floor"),
    [
        ("1.3", "1.2", True, "1.2", None),  # nothing to change
        ("1.0", "1.2", True, "1.2", None),  # mitmproxy already refuses it
        ("1.2", "1.3", True, "1.2", "1.3"),  # raise the floor above the client: protocol_version alert
        ("1.0", "1.0", True, "1.2", "1.0"),  # explicitly allowed old client: lower it
        ("1.0", "1.2", False, "1.2", "1.0"),  # report mode: let it in to watch it
        ("1.2", "1.3", False, "1.2", None),  # report mode, mitmproxy admits it anyway
        ("0.3", "1.2", False, "1.2", "1.0"),  # SSL 3.0 cannot be let in; TLS 1.0 is the floor
    ],
)
def test_client_floor(best: str, minimum: str, enforce: bool, current: str, floor: str | None) -> None:
    assert client_floor(best, ClientRules(min_version=minimum), enforce, current) == floor


# -- probes ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tlsgate_ca():
    return make_root("tlsgate CA for probes", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=90))


@pytest.fixture(scope="module")
def mint(tlsgate_ca) -> ProbeMint:
    return ProbeMint(tlsgate_ca.key, tlsgate_ca.cert)


def verify(leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], root: x509.Certificate, host: str, when=None) -> None:
    builder = PolicyBuilder().store(Store([root])).time(when or dt.datetime.now(dt.UTC))
    builder.build_server_verifier(x509.DNSName(host)).verify(leaf, list(chain))


def test_each_probe_is_wrong_in_exactly_one_way(mint: ProbeMint, tlsgate_ca) -> None:
    root = tlsgate_ca.cert
    self_signed = mint.certificate("api.test", "self_signed")
    verify(self_signed.cert, (), self_signed.cert, "api.test")  # valid if trusted as its own root...
    with pytest.raises(VerificationError):
        verify(self_signed.cert, (), root, "api.test")  # ...which no client does

    wrong_host = mint.certificate("api.test", "wrong_host")
    verify(wrong_host.cert, (), root, WRONG_HOST)  # a good tlsgate certificate...
    with pytest.raises(VerificationError):
        verify(wrong_host.cert, (), root, "api.test")  # ...for another name

    expired = mint.certificate("api.test", "expired")
    valid_then = expired.cert.not_valid_before_utc + (expired.cert.not_valid_after_utc - expired.cert.not_valid_before_utc) / 2
    verify(expired.cert, (), root, "api.test", when=valid_then)
    with pytest.raises(VerificationError):
        verify(expired.cert, (), root, "api.test")

    untrusted = mint.certificate("api.test", "untrusted_ca")
    (stranger,) = untrusted.chain
    verify(untrusted.cert, untrusted.chain, stranger, "api.test")
    with pytest.raises(VerificationError):
        verify(untrusted.cert, untrusted.chain, root, "api.test")


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """The signature alone, whatever its algorithm (cryptography's verifiers refuse SHA-1 and keys below 2048 bits)."""
    key = issuer.public_key()
    digest = cert.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), digest)  # type: ignore[arg-type]
        else:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(digest))  # type: ignore[arg-type, union-attr]
    except Exception:  # noqa: BLE001
        return False
    return cert.issuer == issuer.subject


def chain_host(kind: str) -> str:
    return "127.0.0.1" if kind == "ip_name_only" else "api.test"


def strict_verify(probe, root: x509.Certificate, when=None) -> None:
    """cryptography's WebPKI verifier: basicConstraints, pathLen, name constraints, EKU, SAN, algorithms, key size."""
    builder = PolicyBuilder().store(Store([root])).time(when or dt.datetime.now(dt.UTC))
    try:
        import ipaddress

        name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(probe.host))
    except ValueError:
        name = x509.DNSName(probe.host)
    builder.build_server_verifier(name).verify(probe.cert, list(probe.chain))


def extensions(cert: x509.Certificate) -> dict[str, object]:
    return {e.oid.dotted_string: e.value for e in cert.extensions if e.oid != x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER}


# cryptography's verifier matches `*.test` like any other wildcard, and takes a 1024-bit RSA key.
LENIENT_HERE = {"wildcard_too_broad", "rsa_1024"}


@pytest.mark.parametrize("kind", CHAIN_PROBE_KINDS)
def test_chain_probes_are_signed_up_to_the_tlsgate_ca_and_refused_by_a_strict_verifier(
    mint: ProbeMint, tlsgate_ca, kind: str
) -> None:
    probe = mint.certificate(chain_host(kind), kind)
    path = [probe.cert, *probe.chain]
    assert all(signed_by(cert, issuer) for cert, issuer in zip(path, [*path[1:], tlsgate_ca.cert], strict=True)), kind
    if kind in LENIENT_HERE:
        strict_verify(probe, tlsgate_ca.cert)  # the live matrix shows which real clients refuse it
    else:
        with pytest.raises(VerificationError):
            strict_verify(probe, tlsgate_ca.cert)


def test_leaf_probes_differ_from_a_good_leaf_in_their_one_defect_only(mint: ProbeMint, tlsgate_ca) -> None:
    good = mint.certificate("api.test", "wrong_host").cert  # a good tlsgate leaf but for its name
    good_ext = extensions(good)
    san_oid = x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string
    eku_oid = x509.oid.ExtensionOID.EXTENDED_KEY_USAGE.dotted_string
    ski_oid = x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string

    def differing(cert: x509.Certificate) -> set[str]:
        ext = extensions(cert)
        return {oid for oid in good_ext.keys() | ext.keys() if good_ext.get(oid) != ext.get(oid)} - {san_oid, ski_oid}

    not_yet = mint.certificate("api.test", "not_yet_valid").cert
    assert not_yet.not_valid_before_utc > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    strict_verify(
        mint.certificate("api.test", "not_yet_valid"), tlsgate_ca.cert, when=not_yet.not_valid_before_utc + dt.timedelta(hours=1)
    )
    assert differing(not_yet) == set()

    client_auth = mint.certificate("api.test", "client_auth_only").cert
    assert client_auth.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert differing(client_auth) == {eku_oid}

    cn_only = mint.certificate("api.test", "cn_only").cert
    assert san_oid not in extensions(cn_only) and cn_only.subject.rfc4514_string() == "CN=api.test"
    assert differing(cn_only) == set()

    names = {
        ("wildcard_too_broad", "api.test"): ["*.test"],
        ("wildcard_too_broad", "localhost"): ["*"],
        ("wildcard_wrong_label", "api.example.test"): ["api.*.test"],
        ("wildcard_wrong_label", "api.test"): ["api.*"],
        ("ip_name_only", "10.0.0.7"): ["10.0.0.7"],
    }
    for (kind, host), expected in names.items():
        cert = mint.certificate(host, kind).cert
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert (san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)) == (expected, []), kind
        assert differing(cert) == set(), kind

    sha1 = mint.certificate("api.test", "sha1_signature").cert
    assert isinstance(sha1.signature_hash_algorithm, hashes.SHA1) and differing(sha1) == set()
    weak = mint.certificate("api.test", "rsa_1024")
    assert weak.key.key_size == 1024 and weak.cert.public_key().key_size == 1024  # type: ignore[union-attr]
    assert weak.weak and mint.certificate("api.test", "sha1_signature").weak
    assert not any(
        mint.certificate(chain_host(k), k).weak
        for k in PROBE_KINDS
        if k not in ("sha1_signature", "rsa_1024", *PROTOCOL_PROBE_KINDS)
    )
    assert differing(weak.cert) == set()


def test_chain_probes_break_one_rule_of_an_otherwise_good_chain(mint: ProbeMint, tlsgate_ca) -> None:
    non_ca = mint.certificate("api.test", "non_ca_issuer")
    (issuer,) = non_ca.chain
    assert issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert not issuer.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign  # an ordinary server certificate
    assert issuer.issuer == tlsgate_ca.cert.subject

    deep = mint.certificate("api.test", "path_len_exceeded")
    beyond, limited = deep.chain
    assert limited.extensions.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(True, 0)
    assert beyond.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert beyond.public_key() != limited.public_key()
    below = PolicyBuilder().store(Store([beyond])).time(dt.datetime.now(dt.UTC)).build_server_verifier(x509.DNSName("api.test"))
    below.verify(deep.cert, [])  # the leaf itself is good: only the CA above its issuer is one too many

    for host in ("api.test", "192.0.2.10", "2001:db8::1"):
        constrained = mint.certificate(host, "outside_name_constraints")
        (ca,) = constrained.chain
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints)
        assert nc.critical and nc.value.excluded_subtrees is None
        permitted = nc.value.permitted_subtrees or []
        assert {type(n) for n in permitted} == {x509.DNSName, x509.IPAddress}
        if ":" in host or host[0].isdigit():
            import ipaddress

            assert not any(ipaddress.ip_address(host) in n.value for n in permitted if isinstance(n, x509.IPAddress)), host
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(True, None)


@pytest.mark.parametrize("key", ["rsa:2048", "ec:P-256"])
def test_sha1_resigning_keeps_every_field_and_swaps_only_the_algorithm(key: str) -> None:
    root = make_root(f"a {key} CA", key=key)
    good = ProbeMint(root.key, root.cert).certificate("api.test", "wrong_host").cert
    resigned = sign_sha1(good, root.key)
    assert isinstance(resigned.signature_hash_algorithm, hashes.SHA1)
    assert isinstance(good.signature_hash_algorithm, hashes.SHA256)
    assert resigned.tbs_certificate_bytes != good.tbs_certificate_bytes  # its signature field names SHA-1 too
    assert (resigned.subject, resigned.issuer, resigned.serial_number, list(resigned.extensions)) == (
        good.subject,
        good.issuer,
        good.serial_number,
        list(good.extensions),
    )
    assert signed_by(resigned, root.cert)


@pytest.mark.parametrize(
    ("kind", "host", "applies_"),
    [
        ("wildcard_too_broad", "api.test", True),
        ("wildcard_too_broad", "localhost", True),
        ("wildcard_too_broad", "10.0.0.1", False),
        ("wildcard_wrong_label", "localhost", False),
        ("wildcard_wrong_label", "::1", False),
        ("ip_name_only", "10.0.0.1", True),
        ("ip_name_only", "::1", True),
        ("ip_name_only", "api.test", False),
        ("cn_only", "10.0.0.1", True),
        ("sha1_signature", "api.test", True),
    ],
)
def test_which_kinds_apply_to_which_hosts(mint: ProbeMint, kind: str, host: str, applies_: bool) -> None:
    assert applies(kind, host) is applies_
    if not applies_:
        with pytest.raises(ValueError, match="does not apply"):
            mint.certificate(host, kind)


def test_probe_summary_names_the_certificate_without_secrets(mint: ProbeMint) -> None:
    summary = mint.certificate("api.test", "wrong_host").summary()
    assert summary["kind"] == "wrong_host" and summary["names"] == [WRONG_HOST]
    assert summary["subject"] == f"CN={WRONG_HOST}" and len(summary["sha256"]) == 64
    assert not any("key" in name for name in summary)


def test_expired_probe_begins_no_earlier_than_its_ca(tlsgate_ca) -> None:
    young = make_root("a CA made a moment ago", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    cert = ProbeMint(young.key, young.cert).certificate("api.test", "expired").cert
    assert young.cert.not_valid_before_utc <= cert.not_valid_before_utc < cert.not_valid_after_utc
    assert cert.not_valid_after_utc <= dt.datetime.now(dt.UTC) - dt.timedelta(hours=23)


def test_probe_certificates_are_cached_and_bounded(tlsgate_ca) -> None:
    mint = ProbeMint(tlsgate_ca.key, tlsgate_ca.cert, capacity=2)
    first = mint.certificate("a.test", "expired")
    assert mint.certificate("a.test", "expired") is first
    mint.certificate("b.test", "expired")
    mint.certificate("c.test", "expired")
    assert len(mint) == 2 and mint.certificate("a.test", "expired") is not first
    with pytest.raises(ValueError):
        mint.certificate("a.test", "bad_signature")


def test_ip_hosts_get_ip_address_names(mint: ProbeMint) -> None:
    cert = mint.certificate("127.0.0.1", "self_signed").cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_schedule_tries_each_kind_once_per_client_and_host() -> None:
    schedule = ProbeSchedule()
    kinds = list(PROBE_KINDS)
    assert [schedule.next_kind("10.0.0.2", "api.test", kinds) for _ in range(len(kinds) + 1)] == [*kinds, None]
    assert schedule.next_kind("10.0.0.3", "api.test", kinds) == "self_signed"  # another device
    assert schedule.next_kind("10.0.0.2", "cdn.test", kinds) == "self_signed"  # another host
    schedule.retry("10.0.0.2", "api.test", "expired")
    assert schedule.next_kind("10.0.0.2", "api.test", kinds) == "expired"
    assert schedule.next_kind("10.0.0.2", "api.test", [*kinds]) is None


def test_schedule_forgets_the_least_recently_probed_pair_when_full() -> None:
    schedule = ProbeSchedule(capacity=2)
    for host in ("a.test", "b.test", "c.test"):
        schedule.next_kind("10.0.0.2", host, ["self_signed"])
    assert len(schedule) == 2
    assert schedule.tried("10.0.0.2", "a.test") == ()  # forgotten: it would be probed again
    assert schedule.tried("10.0.0.2", "c.test") == ("self_signed",)


@pytest.mark.parametrize(
    ("error", "rejection"),
    [
        ("The client does not trust the proxy's certificate for api.test (tlsv1 alert unknown ca)", "unknown ca"),
        ("The client does not trust the proxy's certificate for api.test (ssl/tls alert bad certificate)", "bad certificate"),
        (
            "The client may not trust the proxy's certificate for api.test "
            "(OpenSSL Error([('SSL routines', '', 'tls alert certificate expired')]))",
            "certificate expired",
        ),
        (
            "The client disconnected during the handshake. If this happens consistently for api.test, "
            "this may indicate that the client does not trust the proxy's certificate.",
            CLOSED_SILENTLY,
        ),
        ("Client and mitmproxy cannot agree on a TLS version to use.", None),
        ("connection closed early", None),
        ("Cannot parse ClientHello: 16030100", None),
        (None, None),
    ],
)
def test_client_rejection_reads_mitmproxys_words(error: str | None, rejection: str | None) -> None:
    assert client_rejection(error) == rejection


def test_likely_cause_says_ca_or_pinning() -> None:
    assert "not installed" in likely_cause("unknown ca")
    assert "pinning" in likely_cause(CLOSED_SILENTLY)
    assert "pins" in likely_cause("certificate unknown")


# -- the client section -----------------------------------------------------------------------------


def client_of(text: str, host: str = "other.test") -> ClientRules:
    return load_texts([("p.yaml", text)]).match(host).settings.get("client")


def test_client_section_defaults_and_rule_replacement() -> None:
    assert client_of("version: 1\n") == ClientRules("1.2", "report", True, ())
    text = (
        "defaults:\n  client:\n    min_version: 1.3\n    probes: [expired, self_signed]\n"
        "rules:\n  - hosts: api.test\n    client:\n      weak_suites: strict\n"
    )
    assert client_of(text) == ClientRules("1.3", "report", True, ("expired", "self_signed"))
    # A rule's section replaces the defaults' whole: no probes, min_version back to 1.2.
    assert client_of(text, "api.test") == ClientRules("1.2", "strict", True, ())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "defaults:\n  client:\n    min_versoin: '1.2'\n",
            "p.yaml:3:5: unknown key 'min_versoin' in client; did you mean 'min_version'?",
        ),
        ("defaults:\n  client:\n    min_version: '1.4'\n", "p.yaml:3:18: client.min_version must be one of 1.0, 1.1, 1.2, 1.3"),
        (
            "defaults:\n  client:\n    weak_suites: block\n",
            "p.yaml:3:18: client.weak_suites must be one of report, strict, ignore",
        ),
        ("defaults:\n  client:\n    require_sni: maybe\n", "p.yaml:3:18: client.require_sni must be true or false"),
        ("defaults:\n  client:\n    probes: self_signed\n", "p.yaml:3:13: client.probes (a list of: self_signed"),
        ("defaults:\n  client:\n    probes: [expired, bad_sig]\n", "p.yaml:3:23: each entry of client.probes must be one of"),
        ("defaults:\n  client:\n    probes: [expired, expired]\n", "p.yaml:3:23: probe 'expired' is listed twice"),
        ("rules:\n  - hosts: a.test\n    client: [expired]\n", "p.yaml:3:13: client must be a mapping, not a list"),
    ],
)
def test_client_section_errors_are_located(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", text)])
    messages = [str(m) for m in caught.value.messages]
    assert any(m.startswith(expected) for m in messages), messages


def test_probe_key_is_rsa_so_rsa_only_clients_can_reach_the_certificate_check(mint: ProbeMint) -> None:
    assert isinstance(mint.certificate("api.test", "self_signed").key, rsa.RSAPrivateKey)
