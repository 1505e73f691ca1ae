"""The cipher catalogue against the names real TLS stacks use, and the presets against their sources.

The catalogue is hand-assembled data, so these tests compare it with independent witnesses:
the `openssl` binary, Python's `ssl` module (the OpenSSL libtlsgate actually links) and
tlslite-ng, which still speaks the 3DES/RC4/NULL suites modern OpenSSL dropped.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass

import pytest
import tlslite.constants
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.tls.ciphers import (
    BROKEN_WEAKNESSES,
    GREASE_VALUES,
    WEAKNESS_REASONS,
    Suite,
    all_suites,
    by_iana_code,
    describe,
    is_grease,
    is_signalling,
    lookup,
    signalling_name,
    weakness_reasons,
)
from tlsgate.tls.presets import PRESETS, CipherPolicy, parse_cipher_names, preset

TLS13_SUITES = ":".join(
    (
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    )
)

# --- how OpenSSL's `-V` description columns map onto catalogue vocabulary -------------------

OPENSSL_KX = {
    "RSA": "RSA",
    "DH": "DHE",
    "ECDH": "ECDHE",
    "PSK": "PSK",
    "DHEPSK": "DHE_PSK",
    "ECDHEPSK": "ECDHE_PSK",
    "RSAPSK": "RSA_PSK",
    "SRP": "SRP",
    "any": "ANY",
}
OPENSSL_AU = {"RSA": "RSA", "DSS": "DSS", "ECDSA": "ECDSA", "None": "anon", "PSK": "PSK", "SRP": "SRP", "any": "ANY"}
OPENSSL_ENC_FAMILY = {
    "AES": ("AES", "CBC"),
    "AESGCM": ("AES", "GCM"),
    "AESCCM": ("AES", "CCM"),
    "AESCCM8": ("AES", "CCM_8"),
    "Camellia": ("CAMELLIA", "CBC"),
    "ARIAGCM": ("ARIA", "GCM"),
    "SEED": ("SEED", "CBC"),
    "IDEA": ("IDEA", "CBC"),
    "3DES": ("3DES_EDE", "CBC"),
    "DES": ("DES", "CBC"),
    "RC4": ("RC4", "STREAM"),
}
OPENSSL_VERSION = {"SSLv3": "ssl3", "TLSv1": "1.0", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}


@dataclass(frozen=True)
class OpensslRow:
    code: int
    stdname: str
    name: str
    version: str
    kx: str
    au: str
    enc: str
    mac: str


def _openssl_enc(enc: str) -> tuple[str, str]:
    """`AESGCM(128)` -> (`AES_128`, `GCM`), in catalogue terms."""
    if enc == "None":
        return "NULL", "NONE"
    if enc.startswith("CHACHA20/POLY1305"):
        return "CHACHA20", "POLY1305"
    family, bits = re.fullmatch(r"(\w+)\((\d+)\)", enc).groups()
    cipher, mode = OPENSSL_ENC_FAMILY[family]
    if cipher in ("AES", "CAMELLIA", "ARIA", "RC4"):
        cipher = f"{cipher}_{bits}"
    return cipher, mode


def _parse_openssl_listing(text: str) -> list[OpensslRow]:
    pattern = re.compile(
        r"^\s*0x(..),0x(..) - (\S+)\s+- (\S+)\s+(\S+)\s+Kx=(\S+)\s+Au=(\S+)\s+Enc=(\S+)\s+Mac=(\S+)", re.MULTILINE
    )
    return [
        OpensslRow(int(hi + lo, 16), std, name, ver, kx, au, enc, mac)
        for hi, lo, std, name, ver, kx, au, enc, mac in pattern.findall(text)
    ]


@pytest.fixture(scope="module")
def openssl_rows() -> list[OpensslRow]:
    """Everything this OpenSSL can name, TLS 1.3 included (`-ciphersuites` adds the CCM ones it hides by default)."""
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("no openssl binary on PATH")
    cmd = [binary, "ciphers", "-V", "-stdname", "-ciphersuites", TLS13_SUITES, "ALL:COMPLEMENTOFALL:@SECLEVEL=0"]
    rows = _parse_openssl_listing(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    assert len(rows) > 100, "parsing `openssl ciphers -V` output failed; the comparison below would be vacuous"
    return rows


def test_every_suite_openssl_lists_is_catalogued_with_the_same_names(openssl_rows: list[OpensslRow]) -> None:
    for row in openssl_rows:
        suite = by_iana_code(row.code)
        assert suite is not None, f"OpenSSL lists {row.name} (0x{row.code:04X}) but the catalogue does not"
        assert row.name in suite.openssl_names, (row.name, suite)
        assert row.stdname == suite.iana_name, (row.stdname, suite)
        assert lookup(row.name) is suite and lookup(row.stdname) is suite


def test_catalogued_properties_agree_with_openssl_description(openssl_rows: list[OpensslRow]) -> None:
    for row in openssl_rows:
        suite = by_iana_code(row.code)
        assert suite is not None
        assert OPENSSL_KX[row.kx] == suite.kx, (row, suite)
        assert OPENSSL_AU[row.au] == suite.auth, (row, suite)
        assert _openssl_enc(row.enc) == (suite.cipher, suite.mode), (row, suite)
        assert row.mac == suite.mac, (row, suite)
        assert OPENSSL_VERSION[row.version] == suite.min_version, (row, suite)


def test_openssl_tls13_listing_uses_iana_names() -> None:
    """OpenSSL names TLS 1.3 suites by their IANA names; the catalogue must not invent others."""
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("no openssl binary on PATH")
    out = subprocess.run(
        [binary, "ciphers", "-V", "-s", "-tls1_3", "-ciphersuites", TLS13_SUITES], check=True, capture_output=True, text=True
    ).stdout
    listed = re.findall(r"0x(13),0x(..) - (\S+)", out)
    assert len(listed) == 5
    for hi, lo, name in listed:
        suite = by_iana_code(int(hi + lo, 16))
        assert suite is not None and suite.is_tls13
        assert suite.openssl_name == suite.iana_name == name


# --- Python's ssl module: the OpenSSL the proxy really links ---------------------------------

PY_KEA = {
    "kx-rsa": "RSA",
    "kx-dhe": "DHE",
    "kx-ecdhe": "ECDHE",
    "kx-psk": "PSK",
    "kx-dhe-psk": "DHE_PSK",
    "kx-ecdhe-psk": "ECDHE_PSK",
    "kx-rsa-psk": "RSA_PSK",
    "kx-srp": "SRP",
    "kx-any": "ANY",
}
PY_AUTH = {
    "auth-rsa": "RSA",
    "auth-dss": "DSS",
    "auth-ecdsa": "ECDSA",
    "auth-null": "anon",
    "auth-psk": "PSK",
    "auth-srp": "SRP",
    "auth-any": "ANY",
}
PY_PROTOCOL = {"SSLv3": "ssl3", "TLSv1.0": "1.0", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}


def _python_symmetric(suite: Suite) -> str | None:
    if suite.cipher == "NULL":
        return None
    if suite.cipher == "CHACHA20":
        return "chacha20-poly1305"
    mode = {"CCM_8": "ccm"}.get(suite.mode, suite.mode.lower())
    return f"{suite.cipher.lower().replace('_', '-')}-{mode}"


def _python_ciphers() -> list[dict]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    ciphers = ctx.get_ciphers()
    assert len(ciphers) > 100
    return ciphers


def test_python_ssl_names_and_ids_match_catalogue() -> None:
    for cipher in _python_ciphers():
        suite = by_iana_code(cipher["id"] & 0xFFFF)
        assert suite is not None, cipher["name"]
        assert cipher["name"] in suite.openssl_names, (cipher["name"], suite)
        assert cipher["aead"] == suite.aead, suite


def test_python_ssl_properties_match_catalogue() -> None:
    for cipher in _python_ciphers():
        suite = by_iana_code(cipher["id"] & 0xFFFF)
        assert suite is not None
        assert PY_KEA[cipher["kea"]] == suite.kx, (cipher, suite)
        assert PY_AUTH[cipher["auth"]] == suite.auth, (cipher, suite)
        assert cipher["symmetric"] == _python_symmetric(suite), (cipher, suite)
        expected_digest = None if suite.aead else suite.mac.lower()
        assert cipher["digest"] == expected_digest, (cipher, suite)
        assert PY_PROTOCOL[cipher["protocol"]] == suite.min_version, (cipher, suite)


# --- tlslite-ng: the suites modern OpenSSL no longer speaks ----------------------------------

TLSLITE = tlslite.constants.CipherSuite
TLSLITE_DRAFT_CHACHA = {0xCCA1, 0xCCA2, 0xCCA3}  # pre-RFC 7905 code points, never assigned by IANA


def _tlslite_suite_ids() -> list[int]:
    """tlslite's TLS suites, minus SSLv2 kinds (3-byte), drafts and the signalling values."""
    return [c for c in TLSLITE.ietfNames if c <= 0xFFFF and c not in TLSLITE_DRAFT_CHACHA and not is_signalling(c)]


def test_every_tlslite_suite_is_catalogued_under_its_iana_name() -> None:
    ids = _tlslite_suite_ids()
    assert len(ids) > 100
    for code in ids:
        suite = by_iana_code(code)
        assert suite is not None, TLSLITE.ietfNames[code]
        # tlslite spells DH_anon as DH_ANON; IANA names are case-insensitive in practice.
        assert suite.iana_name.casefold() == TLSLITE.ietfNames[code].casefold()


def test_tlslite_signalling_values_are_not_suites() -> None:
    for code in (TLSLITE.TLS_EMPTY_RENEGOTIATION_INFO_SCSV, TLSLITE.TLS_FALLBACK_SCSV):
        assert is_signalling(code)
        assert by_iana_code(code) is None


@pytest.mark.parametrize(
    ("tlslite_set", "weakness"),
    [
        ("tripleDESSuites", "des"),
        ("rc4Suites", "rc4"),
        ("nullSuites", "null"),
        ("md5Suites", "md5_mac"),
        ("anonSuites", "anonymous"),
        ("ecdhAnonSuites", "anonymous"),
    ],
)
def test_tlslite_weak_suite_families_carry_the_weakness(tlslite_set: str, weakness: str) -> None:
    codes = getattr(TLSLITE, tlslite_set)
    assert codes
    for code in codes:
        suite = by_iana_code(code)
        assert suite is not None, TLSLITE.ietfNames.get(code, hex(code))
        assert weakness in suite.weaknesses, suite
        assert suite.broken or weakness == "md5_mac"


def test_tlslite_3des_rc4_null_ids_map_to_the_openssl_rows() -> None:
    """Later tests serve these through tlslite and expect the catalogue's OpenSSL names in reports."""
    expected = {
        TLSLITE.TLS_RSA_WITH_3DES_EDE_CBC_SHA: "DES-CBC3-SHA",
        TLSLITE.TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA: "DHE-RSA-DES-CBC3-SHA",
        TLSLITE.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA: "ECDHE-RSA-DES-CBC3-SHA",
        TLSLITE.TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA: "ECDHE-ECDSA-DES-CBC3-SHA",
        TLSLITE.TLS_RSA_WITH_RC4_128_MD5: "RC4-MD5",
        TLSLITE.TLS_RSA_WITH_RC4_128_SHA: "RC4-SHA",
        TLSLITE.TLS_ECDHE_RSA_WITH_RC4_128_SHA: "ECDHE-RSA-RC4-SHA",
        TLSLITE.TLS_DH_ANON_WITH_RC4_128_MD5: "ADH-RC4-MD5",
        TLSLITE.TLS_RSA_WITH_NULL_MD5: "NULL-MD5",
        TLSLITE.TLS_RSA_WITH_NULL_SHA: "NULL-SHA",
        TLSLITE.TLS_RSA_WITH_NULL_SHA256: "NULL-SHA256",
        TLSLITE.TLS_ECDHE_RSA_WITH_NULL_SHA: "ECDHE-RSA-NULL-SHA",
    }
    for code, openssl_name in expected.items():
        assert lookup(openssl_name) is by_iana_code(code) is not None, openssl_name


@pytest.mark.parametrize(("tlslite_set", "mac"), [("shaSuites", "SHA1"), ("sha256Suites", "SHA256"), ("sha384Suites", "SHA384")])
def test_tlslite_mac_families_agree(tlslite_set: str, mac: str) -> None:
    """tlslite groups by hash; for AEAD suites that hash is only the PRF, so the MAC is AEAD."""
    for code in getattr(TLSLITE, tlslite_set):
        suite = by_iana_code(code)
        assert suite is not None, hex(code)
        assert suite.mac == mac or (suite.aead and suite.iana_name.endswith(mac)), suite


def test_tlslite_aead_and_tls13_families_agree() -> None:
    for code in TLSLITE.aeadSuites:
        if code in TLSLITE_DRAFT_CHACHA:
            continue
        suite = by_iana_code(code)
        assert suite is not None and suite.aead, hex(code)
    for code in TLSLITE.tls13Suites:
        suite = by_iana_code(code)
        assert suite is not None and suite.is_tls13 and suite.weaknesses == (), hex(code)


# --- catalogue invariants --------------------------------------------------------------------

VOCAB = {
    "kx": {"RSA", "DH", "DHE", "ECDH", "ECDHE", "PSK", "DHE_PSK", "ECDHE_PSK", "RSA_PSK", "SRP", "KRB5", "ANY"},
    "auth": {"RSA", "DSS", "ECDSA", "anon", "PSK", "SRP", "KRB5", "ANY"},
    "mode": {"NONE", "STREAM", "CBC", "GCM", "CCM", "CCM_8", "POLY1305", "MGM"},
    "mac": {"AEAD", "SHA1", "SHA256", "SHA384", "MD5"},
    "min_version": {"ssl3", "1.0", "1.2", "1.3"},
}


def test_catalogue_size_and_uniqueness() -> None:
    suites = all_suites()
    assert len(suites) >= 250
    assert len({s.code for s in suites}) == len(suites)
    assert list(suites) == sorted(suites, key=lambda s: s.code)
    assert all(0 <= s.code <= 0xFFFF and not is_signalling(s.code) for s in suites)


@pytest.mark.parametrize("column", sorted(VOCAB))
def test_catalogue_uses_fixed_vocabulary(column: str) -> None:
    for suite in all_suites():
        assert getattr(suite, column) in VOCAB[column], suite


INTEGRITY_ONLY = {"TLS_SHA256_SHA256", "TLS_SHA384_SHA384"}  # RFC 9150: TLS 1.3 with no encryption


def test_names_are_consistent_with_stated_properties() -> None:
    """Catches a mistyped cell: the IANA name encodes most properties, so they must agree with it."""
    for s in all_suites():
        name = s.iana_name
        assert ("CBC" in name) == (s.mode == "CBC"), s
        assert ("GCM" in name) == (s.mode == "GCM"), s
        assert ("CCM_8" in name) == (s.mode == "CCM_8"), s
        assert ("RC4" in name) == s.cipher.startswith("RC4"), s
        assert ("NULL" in name or name in INTEGRITY_ONLY) == (s.cipher == "NULL"), s
        assert ("_anon_" in name) == (s.auth == "anon"), s
        assert ("3DES" in name) == (s.cipher == "3DES_EDE"), s
        assert ("PSK" in name) == ("PSK" in s.kx), s
        assert name.startswith("TLS_")
        if s.is_tls13:
            assert s.openssl_name == name and s.kx == s.auth == "ANY" and "_WITH_" not in name.replace("GOSTR341112_256_WITH", "")
        else:
            assert "_WITH_" in name and s.openssl_name != name


def test_weaknesses_use_exactly_the_vocabulary_and_have_reasons() -> None:
    assert set(WEAKNESS_REASONS) == {
        "null",
        "export",
        "anonymous",
        "rc4",
        "des",
        "no_forward_secrecy",
        "cbc",
        "md5_mac",
        "sha1_mac",
    }
    assert all(reason.endswith(".") and len(reason) > 40 for reason in WEAKNESS_REASONS.values())
    for suite in all_suites():
        assert set(suite.weaknesses) <= set(WEAKNESS_REASONS)
        assert weakness_reasons(suite) == [WEAKNESS_REASONS[w] for w in suite.weaknesses]


@pytest.mark.parametrize(
    ("name", "weaknesses"),
    [
        ("ECDHE-RSA-AES128-GCM-SHA256", ()),
        ("TLS_CHACHA20_POLY1305_SHA256", ()),
        ("AES128-GCM-SHA256", ("no_forward_secrecy",)),
        ("ECDHE-RSA-AES128-SHA", ("cbc", "sha1_mac")),
        ("DES-CBC3-SHA", ("des", "no_forward_secrecy", "cbc", "sha1_mac")),
        ("RC4-MD5", ("rc4", "no_forward_secrecy", "md5_mac")),
        ("EXP-RC4-MD5", ("export", "rc4", "no_forward_secrecy", "md5_mac")),
        ("ADH-AES128-GCM-SHA256", ("anonymous",)),
        ("AECDH-NULL-SHA", ("null", "anonymous", "sha1_mac")),
        ("NULL-SHA256", ("null", "no_forward_secrecy")),
        ("TLS_SHA256_SHA256", ("null",)),
        ("EXP-EDH-RSA-DES-CBC-SHA", ("export", "des", "cbc", "sha1_mac")),
        ("PSK-AES128-GCM-SHA256", ("no_forward_secrecy",)),
        ("ECDHE-PSK-CHACHA20-POLY1305", ()),
        ("ECDH-RSA-AES128-GCM-SHA256", ("no_forward_secrecy",)),
    ],
)
def test_known_suites_have_expected_weaknesses(name: str, weaknesses: tuple[str, ...]) -> None:
    suite = lookup(name)
    assert suite is not None
    assert suite.weaknesses == weaknesses
    assert suite.broken == bool(set(weaknesses) & BROKEN_WEAKNESSES)


def test_forward_secrecy_follows_key_exchange() -> None:
    assert lookup("ECDHE-ECDSA-AES256-GCM-SHA384").forward_secrecy
    assert lookup("DHE-RSA-AES256-SHA").forward_secrecy
    assert lookup("TLS_AES_256_GCM_SHA384").forward_secrecy
    assert not lookup("AES256-SHA").forward_secrecy
    assert not lookup("DH-RSA-AES256-SHA").forward_secrecy
    assert not lookup("RSA-PSK-AES256-GCM-SHA384").forward_secrecy


def test_lookup_accepts_iana_openssl_alias_and_any_case() -> None:
    suite = by_iana_code(0xC02F)
    assert suite is not None and suite.code_hex == "0xC0,0x2F"
    assert lookup("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256") is suite
    assert lookup("ecdhe-rsa-aes128-gcm-sha256") is suite
    assert lookup("  Tls_Ecdhe_Rsa_With_Aes_128_Gcm_Sha256 ") is suite
    # OpenSSL 1.0.2 spelled ephemeral DH "EDH"; 1.1.0 renamed the suites but accepts both.
    assert lookup("EDH-RSA-DES-CBC3-SHA") is lookup("DHE-RSA-DES-CBC3-SHA") is by_iana_code(0x0016)
    assert lookup("SSL_RSA_WITH_3DES_EDE_CBC_SHA") is lookup("DES-CBC3-SHA")
    assert lookup("NO-SUCH-CIPHER") is None
    assert lookup("") is None


def test_unknown_codes_are_none() -> None:
    assert by_iana_code(0x1234) is None
    assert by_iana_code(0xFFFF) is None
    assert describe(0x1234) == "unknown cipher suite 0x1234"
    assert describe(0x1301) == "TLS_AES_128_GCM_SHA256 (0x13,0x01)"


def test_signalling_values() -> None:
    assert len(GREASE_VALUES) == 16
    assert {0x0A0A, 0x1A1A, 0x7A7A, 0xFAFA} <= GREASE_VALUES
    assert all(is_grease(v) and is_signalling(v) and by_iana_code(v) is None for v in GREASE_VALUES)
    assert is_signalling(0x00FF) and signalling_name(0x00FF) == "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
    assert is_signalling(0x5600) and signalling_name(0x5600) == "TLS_FALLBACK_SCSV"
    assert not is_signalling(0xC02F) and signalling_name(0xC02F) is None
    assert not is_grease(0x0A0B) and not is_grease(0x0B0B)
    assert describe(0x2A2A) == "GREASE (0x2A2A)"


@given(st.integers(min_value=0, max_value=0xFFFF))
def test_every_code_is_exactly_one_of_suite_signalling_or_unknown(code: int) -> None:
    suite = by_iana_code(code)
    assert not (suite is not None and is_signalling(code))
    assert describe(code)
    allowed, reasons = CipherPolicy().check(code)
    if is_signalling(code):
        assert not allowed and reasons
    if suite is not None and not suite.weaknesses:
        assert allowed and reasons == []


def test_pure_modules_do_not_import_mitmproxy() -> None:
    code = (
        "import sys, tlsgate.tls.ciphers, tlsgate.tls.presets;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mitmproxy', 'OpenSSL', 'ssl')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- presets ---------------------------------------------------------------------------------


def test_every_preset_suite_is_in_the_catalogue() -> None:
    for p in PRESETS.values():
        assert p.suites, p.name
        for code in p.suites:
            assert by_iana_code(code) is not None, (p.name, hex(code))
        assert {lookup(n).code for n in p.ciphers + p.ciphersuites} == p.suites
        assert len(p.ciphers) + len(p.ciphersuites) == len(p.suites), "duplicates in a preset list"
        assert p.source.startswith("https://")


def test_every_preset_allows_the_tls13_suites() -> None:
    tls13 = {lookup(n).code for n in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")}
    for p in PRESETS.values():
        assert tls13 <= p.suites, p.name
        assert p.versions[-1] == "1.3"


def test_modern_is_tls13_only() -> None:
    modern = preset("modern")
    assert modern.min_version == "1.3" and modern.versions == ("1.3",)
    assert all(by_iana_code(c).is_tls13 for c in modern.suites)
    assert modern.openssl_cipher_string == ""
    assert modern.openssl_ciphersuites_string == "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def test_intermediate_is_aead_and_forward_secret_only() -> None:
    intermediate = preset("intermediate")
    assert intermediate.min_version == "1.2"
    assert len(intermediate.ciphers) == 9  # 5.7 appended DHE-RSA-CHACHA20-POLY1305 to 5.6's eight
    assert intermediate.ciphers[-1] == "DHE-RSA-CHACHA20-POLY1305"
    for code in intermediate.suites:
        suite = by_iana_code(code)
        assert suite.mode != "CBC" and suite.forward_secrecy and suite.weaknesses == (), suite


def test_old_keeps_cbc_static_rsa_and_3des() -> None:
    old = preset("old")
    assert old.min_version == "1.0" and old.versions == ("1.0", "1.1", "1.2", "1.3")
    suites = [by_iana_code(c) for c in old.suites]
    assert any(s.mode == "CBC" for s in suites)
    assert any(not s.forward_secrecy for s in suites)
    assert lookup("DES-CBC3-SHA").code in old.suites
    assert old.ciphers[0] == "ECDHE-ECDSA-AES128-GCM-SHA256" and old.ciphers[-1] == "DES-CBC3-SHA"
    assert len(old.ciphers) == 26


def test_ats_is_tls12_and_forward_secret() -> None:
    ats = preset("ats")
    assert ats.min_version == "1.2"
    assert len(ats.ciphers) == 11
    for code in ats.suites:
        suite = by_iana_code(code)
        assert suite.forward_secrecy and not suite.broken, suite
        assert suite.is_tls13 or (suite.kx == "ECDHE" and suite.cipher in ("AES_128", "AES_256")), suite
    # Apple's list famously lacks ECDHE-RSA-AES256-SHA while keeping its ECDSA twin.
    assert lookup("ECDHE-ECDSA-AES256-SHA").code in ats.suites
    assert lookup("ECDHE-RSA-AES256-SHA").code not in ats.suites


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="ats, intermediate, modern, old"):
        preset("moden")
    with pytest.raises(KeyError, match="valid presets"):
        CipherPolicy(preset="strict")


# --- cipher policy ---------------------------------------------------------------------------

CBC_ECDHE = 0xC013  # ECDHE-RSA-AES128-SHA
GCM_ECDHE = 0xC02F  # ECDHE-RSA-AES128-GCM-SHA256
TRIPLE_DES = 0x000A  # DES-CBC3-SHA
RC4_SHA = 0x0005


def test_check_names_preset_and_weakness_reasons() -> None:
    allowed, reasons = CipherPolicy(preset="intermediate").check(CBC_ECDHE)
    assert not allowed
    assert reasons == ["not in preset 'intermediate'", WEAKNESS_REASONS["cbc"], WEAKNESS_REASONS["sha1_mac"]]
    assert CipherPolicy(preset="intermediate").check(GCM_ECDHE) == (True, [])


def test_allow_list_extends_the_preset() -> None:
    policy = CipherPolicy(preset="intermediate", allow=frozenset({CBC_ECDHE}))
    allowed, reasons = policy.check(CBC_ECDHE)
    assert allowed and reasons == weakness_reasons(by_iana_code(CBC_ECDHE))
    assert policy.check(TRIPLE_DES)[1][0] == "not in preset 'intermediate' or the allow list"


def test_allow_list_alone_restricts() -> None:
    policy = CipherPolicy(allow=frozenset({GCM_ECDHE}))
    assert policy.check(GCM_ECDHE) == (True, [])
    allowed, reasons = policy.check(0xC030)
    assert not allowed and reasons == ["not in the allow list"]


def test_deny_wins_over_preset_and_allow() -> None:
    policy = CipherPolicy(preset="intermediate", allow=frozenset({GCM_ECDHE}), deny=frozenset({GCM_ECDHE}))
    assert policy.check(GCM_ECDHE) == (False, ["denied by policy"])
    assert GCM_ECDHE not in policy.permitted()
    assert CipherPolicy(deny=frozenset({GCM_ECDHE})).check(GCM_ECDHE) == (False, ["denied by policy"])


def test_old_preset_accepts_3des_but_still_reports_it_weak() -> None:
    allowed, reasons = CipherPolicy(preset="old").check(TRIPLE_DES)
    assert allowed
    assert WEAKNESS_REASONS["des"] in reasons and WEAKNESS_REASONS["no_forward_secrecy"] in reasons


def test_unrestricted_policy_refuses_broken_and_reports_merely_weak() -> None:
    policy = CipherPolicy()
    allowed, reasons = policy.check(RC4_SHA)
    assert not allowed
    assert reasons[0] == "refused by default: broken suite (rc4)"
    assert WEAKNESS_REASONS["rc4"] in reasons
    allowed, reasons = policy.check(CBC_ECDHE)
    assert allowed and reasons == [WEAKNESS_REASONS["cbc"], WEAKNESS_REASONS["sha1_mac"]]
    assert policy.check(0x1301) == (True, [])


def test_explicitly_allowed_broken_suite_is_accepted_but_reported() -> None:
    allowed, reasons = CipherPolicy(allow=frozenset({RC4_SHA})).check(RC4_SHA)
    assert allowed and WEAKNESS_REASONS["rc4"] in reasons


def test_signalling_and_unknown_codes() -> None:
    assert CipherPolicy().check(0x5600) == (False, ["TLS_FALLBACK_SCSV is a signalling value, not a cipher suite"])
    allowed, reasons = CipherPolicy().check(0x1234)
    assert allowed and "not in the catalogue" in reasons[0]
    assert CipherPolicy(preset="modern").check(0x1234)[0] is False


def test_parse_cipher_names_reports_unknown_in_order() -> None:
    codes, unknown = parse_cipher_names(
        [
            "ECDHE-RSA-AES128-GCM-SHA256",
            "tls_ecdhe_rsa_with_aes_128_gcm_sha256",
            "bogus-one",
            "DES-CBC3-SHA",
            "0x1301",
            "0xZZZZ",
            "TLS_AES_999",
        ]
    )
    assert codes == frozenset({GCM_ECDHE, TRIPLE_DES, 0x1301})
    assert unknown == ["bogus-one", "0xZZZZ", "TLS_AES_999"]
    assert parse_cipher_names([]) == (frozenset(), [])
