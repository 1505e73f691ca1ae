"""The cleartext classifier: what first bytes say, which credential kinds they carry, and that no input makes it raise."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.plainpeers import SMTP_BANNER, SMTP_EHLO_REPLY, mqtt_connect_packet
from tlsgate.tls.plaintext import INSPECT_LIMIT, PROTOCOLS, Sighting, classify

SECRET_USER, SECRET_PASS = "u-SECRETUSER", "p-SECRETPASS"
PLAIN = base64.b64encode(f"\0{SECRET_USER}\0{SECRET_PASS}".encode())


def string(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def mqtt5_connect(props: bytes, flags: int = 0x02) -> bytes:
    body = string(b"MQTT") + bytes([5, flags]) + b"\x00\x3c" + bytes([len(props)]) + props + string(b"cid")
    return b"\x10" + bytes([len(body)]) + body


def assert_no_values(sighting: Sighting) -> None:
    text = json.dumps(sighting.evidence())
    assert "SECRET" not in text


# -- MQTT -------------------------------------------------------------------------------------------


def test_mqtt_connect_with_username_and_password() -> None:
    sighting = classify(mqtt_connect_packet("dev-1", SECRET_USER, SECRET_PASS))
    assert sighting.protocol == "mqtt" and sighting.complete and sighting.settled
    assert sighting.credentials == ("password", "username")
    assert sighting.lengths == {"client_id": 5, "username": len(SECRET_USER), "password": len(SECRET_PASS)}
    assert sighting.details["mqtt_protocol_level"] == 4
    assert_no_values(sighting)


def test_mqtt_connect_without_credentials_and_3_1_name() -> None:
    assert classify(mqtt_connect_packet("dev-1")).credentials == ()
    body = string(b"MQIsdp") + bytes([3, 0x80]) + b"\x00\x3c" + string(b"c") + string(b"user")
    sighting = classify(b"\x10" + bytes([len(body)]) + body)
    assert sighting.protocol == "mqtt" and sighting.credentials == ("username",)
    assert sighting.details["mqtt_protocol_level"] == 3


def test_mqtt_flags_byte_is_enough_and_a_shorter_prefix_waits() -> None:
    packet = mqtt_connect_packet("dev-1", SECRET_USER, SECRET_PASS)
    assert classify(packet[:3]) == Sighting("mqtt", complete=False)
    head = classify(packet[:12])  # up to the flags and keep-alive: kinds known, lengths not yet
    assert head.complete and head.credentials == ("password", "username") and head.lengths == {}


def test_mqtt5_enhanced_authentication_and_user_properties() -> None:
    props = b"\x11\x00\x00\x00\x10" + b"\x26" + string(b"k") + string(b"v") + b"\x15" + string(b"SCRAM-SHA-1")
    sighting = classify(mqtt5_connect(props))
    assert sighting.protocol == "mqtt" and "auth_data" in sighting.credentials
    assert classify(mqtt5_connect(b"\x21\x00\x0a")).credentials == ()


def test_a_connect_byte_with_another_protocol_name_is_unknown() -> None:
    assert classify(b"\x10\x0c\x00\x04HTTP\x04\x02\x00\x3c\x00\x00").protocol == "unknown"


# -- server-first protocols ---------------------------------------------------------------------


def test_smtp_ehlo_is_negotiation_and_auth_plain_names_kinds_and_lengths() -> None:
    greeting = classify(b"EHLO me\r\n", SMTP_BANNER)
    assert greeting.protocol == "smtp" and greeting.negotiation_only and not greeting.credentials
    sighting = classify(b"EHLO me\r\nAUTH PLAIN " + PLAIN + b"\r\n", SMTP_BANNER + SMTP_EHLO_REPLY)
    assert sighting.credentials == ("password", "username") and not sighting.negotiation_only
    assert sighting.lengths == {"username": len(SECRET_USER), "password": len(SECRET_PASS)}
    assert sighting.starttls_offered and sighting.starttls_offered_unused
    assert sighting.details["sasl_mechanism"] == "PLAIN"
    assert_no_values(sighting)


def test_smtp_auth_login_over_continuation_lines() -> None:
    user, password = base64.b64encode(SECRET_USER.encode()), base64.b64encode(SECRET_PASS.encode())
    sighting = classify(b"EHLO me\r\nAUTH LOGIN\r\n" + user + b"\r\n" + password + b"\r\n", SMTP_BANNER)
    assert sighting.credentials == ("password", "username") and sighting.settled
    assert sighting.lengths == {"username": len(SECRET_USER), "password": len(SECRET_PASS)}


def test_smtp_starttls_used_is_an_upgrade_and_not_cleartext() -> None:
    sighting = classify(b"EHLO me\r\nSTARTTLS\r\n\x16\x03\x01\x02\x00\x01", SMTP_BANNER + SMTP_EHLO_REPLY + b"220 go\r\n")
    assert sighting.upgraded and sighting.starttls_requested and not sighting.starttls_offered_unused
    waiting = classify(b"EHLO me\r\nSTARTTLS\r\n", SMTP_BANNER + SMTP_EHLO_REPLY)
    assert waiting.negotiation_only and not waiting.upgraded


def test_smtp_mail_without_auth_settles() -> None:
    sighting = classify(b"HELO me\r\nMAIL FROM:<a@b>\r\n", SMTP_BANNER)
    assert sighting.protocol == "smtp" and sighting.settled and not sighting.credentials


def test_banner_before_the_client_speaks_waits() -> None:
    assert classify(b"", SMTP_BANNER) == Sighting("smtp", complete=False, negotiation_only=True)
    assert not classify(b"EHL", SMTP_BANNER).complete


@pytest.mark.parametrize(
    ("server", "client", "protocol", "kinds", "offered"),
    [
        (
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
            b"a1 LOGIN bob " + SECRET_PASS.encode() + b"\r\n",
            "imap",
            ("password", "username"),
            True,
        ),
        (b"* OK ready\r\n", b"a1 AUTHENTICATE PLAIN " + PLAIN + b"\r\n", "imap", ("password", "username"), False),
        (b"* OK ready\r\n", b"a1 CAPABILITY\r\n", "imap", (), False),
        (
            b"+OK pop3\r\n+OK\r\nSTLS\r\n.\r\n",
            b"CAPA\r\nUSER bob\r\nPASS " + SECRET_PASS.encode() + b"\r\n",
            "pop3",
            ("password", "username"),
            True,
        ),
        (b"+OK pop3 <1.2@x>\r\n", b"APOP bob 0123456789abcdef\r\n", "pop3", ("password_digest", "username"), False),
        (
            b"220 ftp.test FTP ready\r\n211-Features:\r\n AUTH TLS\r\n211 End\r\n",
            b"FEAT\r\nUSER bob\r\nPASS x\r\n",
            "ftp",
            ("password", "username"),
            True,
        ),
        (b"220 (vsFTPd 3.0)\r\n", b"USER anonymous\r\n", "ftp", ("username",), False),
    ],
)
def test_server_first_protocols(server: bytes, client: bytes, protocol: str, kinds: tuple[str, ...], offered: bool) -> None:
    sighting = classify(client, server)
    assert (sighting.protocol, sighting.credentials, sighting.starttls_offered) == (protocol, kinds, offered)
    assert_no_values(sighting)


def test_ftp_auth_tls_upgrade_and_pop3_stls() -> None:
    assert classify(b"AUTH TLS\r\n\x16\x03\x01\x00\x10", b"220 FTP ready\r\n234 go\r\n").upgraded
    assert classify(b"STLS\r\n\x16\x03\x03\x00\x10", b"+OK ready\r\n+OK begin\r\n").upgraded


# -- client-first protocols -----------------------------------------------------------------------


def test_xmpp_sasl_plain_and_starttls() -> None:
    header = (
        b"<?xml version='1.0'?><stream:stream to='x.test' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    assert classify(header).negotiation_only
    auth = header + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + PLAIN + b"</auth>"
    sighting = classify(auth, b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
    assert sighting.protocol == "xmpp" and sighting.credentials == ("password", "username")
    assert sighting.starttls_offered_unused and sighting.lengths["password"] == len(SECRET_PASS)
    upgraded = header + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01\x00\x05"
    assert classify(upgraded).upgraded
    assert classify(header + b"<auth mechanism='SCRAM-SHA-1'>abc</auth>").credentials == ("sasl",)


def test_redis_auth_forms() -> None:
    resp = b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$" + str(len(SECRET_PASS)).encode() + b"\r\n" + SECRET_PASS.encode() + b"\r\n"
    assert classify(resp).credentials == ("password", "username")
    one = classify(b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n")
    assert one.credentials == ("password",) and one.lengths == {"password": 6}
    hello = classify(b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$2\r\npw\r\n")
    assert hello.credentials == ("password", "username")
    assert classify(b"*1\r\n$4\r\nPING\r\n") == Sighting("redis", complete=True, settled=True)
    assert classify(b"AUTH " + SECRET_PASS.encode() + b"\r\n").credentials == ("password",)
    assert not classify(b"*2\r\n").complete


def test_unknown_tls_and_http() -> None:
    assert classify(b"\x00\x01\x02 binary") == Sighting("unknown", settled=True)
    assert classify(b"SSH-2.0-OpenSSH_9.6\r\n").protocol == "unknown"
    assert classify(b"\x16\x03\x01\x02\x00").protocol == "tls"
    assert classify(b"GET / HTTP/1.1\r\n").protocol == "http"
    assert not classify(b"<?xm").complete  # could still become an XMPP header
    assert classify(b"").complete is False


# -- robustness -----------------------------------------------------------------------------------

SAMPLES = [
    (mqtt_connect_packet("dev", SECRET_USER, SECRET_PASS), b""),
    (mqtt5_connect(b"\x26" + string(b"k") + string(b"v")), b""),
    (b"EHLO me\r\nAUTH PLAIN " + PLAIN + b"\r\n", SMTP_BANNER + SMTP_EHLO_REPLY),
    (b"a1 LOGIN bob pw\r\n", b"* OK [CAPABILITY STARTTLS]\r\n"),
    (b"USER bob\r\nPASS pw\r\n", b"+OK\r\n"),
    (b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$2\r\npw\r\n", b""),
    (b"<stream:stream><auth mechanism='PLAIN'>" + PLAIN + b"</auth>", b""),
]


def _check(client: bytes, server: bytes) -> None:
    sighting = classify(client, server)
    assert sighting.protocol in (*PROTOCOLS, "tls")
    assert set(sighting.credentials) <= {"username", "password", "sasl", "password_digest", "auth_data", "account"}
    assert all(isinstance(v, int) and v >= 0 for v in sighting.lengths.values())
    json.dumps(sighting.evidence())  # always serialisable into a finding


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.binary(max_size=512))
def test_fuzz_random_bytes_never_raise(client: bytes, server: bytes) -> None:
    _check(client, server)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(SAMPLES),
    st.integers(min_value=0, max_value=400),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
)
def test_fuzz_truncated_and_mutated_samples_never_raise(
    sample: tuple[bytes, bytes], cut: int, flips: list[tuple[int, int]]
) -> None:
    client, server = sample
    mutated = bytearray(client[:cut])
    for index, value in flips:
        if mutated:
            mutated[index % len(mutated)] = value
    _check(bytes(mutated), server)
    _check(bytes(mutated), server[: cut // 2])


def test_huge_inputs_are_bounded_and_declared_lengths_beyond_the_data_do_not_raise() -> None:
    _check(b"\x10\xff\xff\xff\x7f" + b"\x00" * (INSPECT_LIMIT * 4), b"")
    _check(b"*1024\r\n" + b"$999999999\r\n" * 5000, b"")
    _check(b"EHLO x\r\n" * 100_000, SMTP_BANNER * 10_000)
    _check(b"<stream:stream>" + b"<auth mechanism='PLAIN'>" * 10_000, b"")
