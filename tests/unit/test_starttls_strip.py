"""STARTTLS stripping as pure parts: the rewriting of the server's offer, the client's answer, the schedule.

Every rewrite is checked whole and fed one byte at a time (TCP may split a
reply anywhere), and what is not an offer of TLS comes out byte for byte.
"""

from __future__ import annotations

import random

import pytest

from tlsgate.checks.fallback import StripSchedule, judge_strip
from tlsgate.checks.model import Action, decide
from tlsgate.policy import Mode, load_texts
from tlsgate.policy.sections.cleartext import CLEARTEXT, strips_starttls
from tlsgate.tls.plaintext import classify
from tlsgate.tls.starttls import HOLD_LIMIT, Stripper, client_command, protocol_of

SMTP_IN = (
    b"220 mail.test ESMTP ready\r\n250-mail.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
)
SMTP_OUT = b"220 mail.test ESMTP ready\r\n250-mail.test\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"

CASES = {
    "smtp, STARTTLS in the middle": (SMTP_IN, SMTP_OUT),
    "smtp, STARTTLS last": (
        b"220 peer.test ESMTP\r\n250-peer.test\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n",
        b"220 peer.test ESMTP\r\n250-peer.test\r\n250 AUTH PLAIN\r\n",
    ),
    "imap, greeting code and CAPABILITY reply": (
        b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] ready\r\n"
        b"* CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED\r\na1 OK CAPABILITY completed\r\n",
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n* CAPABILITY IMAP4rev1 SASL-IR\r\na1 OK CAPABILITY completed\r\n",
    ),
    "pop3, CAPA": (
        b"+OK POP3 ready\r\n+OK Capability list follows\r\nUSER\r\nSTLS\r\nSASL PLAIN\r\n.\r\n",
        b"+OK POP3 ready\r\n+OK Capability list follows\r\nUSER\r\nSASL PLAIN\r\n.\r\n",
    ),
    "xmpp, stream features": (
        b"<?xml version='1.0'?><stream:stream from='chat.test' id='x' version='1.0'><stream:features>"
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
        b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"
        b"</stream:features>",
        b"<?xml version='1.0'?><stream:stream from='chat.test' id='x' version='1.0'><stream:features>"
        b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"
        b"</stream:features>",
    ),
}


def strip(data: bytes, size: int) -> tuple[bytes, Stripper]:
    stripper = Stripper()
    out = b"".join(stripper.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + stripper.stop(), stripper


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_the_offer_is_cut_however_the_reply_is_split(name: str, size: int) -> None:
    given, expected = CASES[name]
    out, stripper = strip(given, size)
    assert out == expected and stripper.removed


@pytest.mark.parametrize(
    "given",
    [
        b"220 ftp.test FTP ready\r\n211-Features:\r\n AUTH TLS\r\n PBSZ\r\n211 End\r\n",  # FTP: nothing to cut
        b"220 mail.test ESMTP\r\n250-mail.test\r\n250 AUTH PLAIN\r\n",  # no STARTTLS offered
        b"* OK IMAP4rev1 ready\r\n* 1 FETCH (BODY[] {9}\r\nSTARTTLS!)\r\n",  # the word, not a capability
        b"\x00\x01binary\xff\r\nSTARTTLS\r\n",  # unknown protocol
    ],
)
def test_what_is_not_an_offer_passes_byte_for_byte(given: bytes) -> None:
    for size in (1, 5, 4096):
        out, stripper = strip(given, size)
        assert out == given and not stripper.removed


def test_a_reply_past_the_hold_limit_goes_on_unchanged() -> None:
    stripper = Stripper()
    flood = b"220 mail.test\r\n250-" + b"A" * (HOLD_LIMIT + 10)
    out = stripper.feed(flood) + stripper.feed(b"\r\n250-STARTTLS\r\n250 OK\r\n")
    assert out == flood + b"\r\n250-STARTTLS\r\n250 OK\r\n"
    assert stripper.gave_up and not stripper.removed


def test_protocol_is_read_from_the_server_first_bytes() -> None:
    assert [protocol_of(b) for b in (b"* O", b"220 x", b"+OK ", b"* OK x", b"<?xml", b"\x16\x03\x01\x02")] == [
        None,
        "smtp",
        "pop3",
        "imap",
        "xmpp",
        "unknown",
    ]


@pytest.mark.parametrize(
    ("protocol", "client", "command"),
    [
        ("smtp", b"EHLO me\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n", "AUTH"),
        ("smtp", b"EHLO me\r\nMAIL FROM:<a@b>\r\n", "MAIL"),
        ("imap", b"a1 CAPABILITY\r\na2 LOGIN alice s3cret\r\n", "LOGIN"),
        ("pop3", b"CAPA\r\nUSER alice\r\n", "USER"),
        ("xmpp", b"<stream:stream><auth mechanism='PLAIN'>AGFsaWNl</auth>", "auth"),
        ("smtp", b"EHLO me\r\n", "?"),
    ],
)
def test_the_command_is_named_never_its_arguments(protocol: str, client: bytes, command: str) -> None:
    assert client_command(protocol, client) == command


SMTP_SERVER = SMTP_IN


def test_authenticating_in_the_clear_is_caught_in_every_mode_and_names_no_secret() -> None:
    client = b"EHLO me\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n"
    issue = judge_strip(classify(client, SMTP_SERVER), "AUTH", "mail.test", 25)
    assert issue is not None and issue.kind == "starttls_strip_accepted"
    assert decide(issue, Mode.REPORT) is Action.BLOCKED and decide(issue, Mode.ENFORCE) is Action.BLOCKED
    assert issue.evidence["command"] == "AUTH" and issue.evidence["credentials"] == ["password", "username"]
    assert "s3cret" not in repr(issue) and "AGFsaWNl" not in repr(issue)
    assert issue.severity == "critical"


def test_asking_for_starttls_anyway_or_leaving_passes() -> None:
    insisted = judge_strip(classify(b"EHLO me\r\nSTARTTLS\r\n", SMTP_SERVER), "?", "mail.test", 25)
    assert insisted is not None and insisted.kind == "starttls_strip_refused"
    assert decide(insisted, Mode.ENFORCE) is Action.PASSED
    assert judge_strip(classify(b"EHLO me\r\n", SMTP_SERVER), "?", "mail.test", 25) is None  # still negotiating
    left = judge_strip(classify(b"EHLO me\r\nQUIT\r\n", SMTP_SERVER), "?", "mail.test", 25, closed=True)
    assert left is not None and decide(left, Mode.ENFORCE) is Action.PASSED


def test_each_pair_is_stripped_until_its_client_answered() -> None:
    schedule = StripSchedule(limit=2)
    assert schedule.due("phone", "mail.test", 25)
    schedule.answered("phone", "mail.test", 25)
    assert not schedule.due("phone", "mail.test", 25) and schedule.due("phone", "mail.test", 587)
    schedule.answered("tablet", "mail.test", 25)
    schedule.answered("phone", "imap.test", 143)
    assert len(schedule) == 2 and schedule.due("phone", "mail.test", 25)  # the least recent pair was forgotten


def test_strip_starttls_is_off_unless_a_rule_turns_it_on() -> None:
    policy = load_texts(
        [
            (
                "p.yaml",
                "version: 1\nrules:\n  - hosts: mail.test\n    cleartext: {default: block, strip_starttls: true}\n"
                "  - hosts: other.test\n    cleartext: {smtp: allow}\n",
            )
        ]
    )
    assert strips_starttls(CLEARTEXT.get(policy.match("mail.test").settings))
    assert not strips_starttls(CLEARTEXT.get(policy.match("other.test").settings))
    assert not strips_starttls(CLEARTEXT.get(policy.match("anything.test").settings))
    with pytest.raises(Exception, match="strip_starttls must be true or false"):
        load_texts([("p.yaml", "version: 1\ndefaults:\n  cleartext: {strip_starttls: sometimes}\n")])


@pytest.mark.parametrize("banner", [b"220 x\r\n", b"* OK x\r\n", b"+OK x\r\n", b"<?xml?>", b""])
def test_hostile_server_bytes_never_raise_and_hold_at_most_the_limit(banner: bytes) -> None:
    """Random bytes after each banner, in random chunk sizes: no exception, never more held than HOLD_LIMIT, and
    nothing but offers of TLS is ever dropped (the output is the input minus what was cut)."""
    rng = random.Random(23)
    pieces = [b"250-STARTTLS\r\n", b"<starttls", b"/>", b"\r\n", b"STLS\r\n", b" STARTTLS", b"250 ", b"\n"]
    for _ in range(40):
        data = banner + b"".join(
            rng.choice(pieces) if rng.random() < 0.3 else rng.randbytes(rng.randint(1, 3000)) for _ in range(30)
        )
        stripper = Stripper()
        out = bytearray()
        pos = 0
        while pos < len(data):
            size = rng.randint(1, 5000)
            out += stripper.feed(data[pos : pos + size])
            pos += size
            held = len(stripper._held) + sum(len(line) for line in stripper._reply)
            assert held <= HOLD_LIMIT
        out += stripper.stop()
        assert len(out) <= len(data)
        if not stripper.removed:
            assert bytes(out) == data
