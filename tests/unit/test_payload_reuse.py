"""ECB, fixed IVs and fixed nonces across the values of one field (`tlsgate.payload.recall`), what a value must look
like to be judged at all (`cipher_shaped`, `random_text`, file formats), and what ordinary repeats must not
trigger: real AES from `cryptography`, values the way apps build them."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.payload_corpus import ecb
from tests.payload_sessions import _cbc, _gcm, _gcm_nonce_sent, _sic, _sic_padded
from tests.seeded import urandom
from tlsgate.payload.decode import decode, random_text
from tlsgate.payload.ecb import analyse, cipher_shaped, zero_iv
from tlsgate.payload.fields import Field, body_fields
from tlsgate.payload.formats import CHANCE, MAGIC, file_format
from tlsgate.payload.recall import LLR, THRESHOLD, BlockMemory, field_key, keystream_bits
from tlsgate.payload.scan import scan

KEY = bytes(range(16))
ZERO = bytes(16)


def login(rng: random.Random) -> bytes:
    return json.dumps(
        {
            "username": f"user{rng.randrange(10**4)}",
            "password": rng.randbytes(5).hex(),
            "device": rng.choice(("android", "ios")),
            "ts": 1732000000 + rng.randrange(10**6),
        }
    ).encode()


def profile(rng: random.Random) -> bytes:
    return json.dumps(
        {
            "name": f"User {rng.randrange(10**4)}",
            "email": f"u{rng.randrange(10**6)}@example.com",
            "city": rng.choice(("Berlin", "Lagos", "Lima")),
            "bio": " ".join(rng.choice(("hi", "photos", "cats", "maps")) for _ in range(rng.randrange(2, 9))),
        }
    ).encode()


def observe_all(values: list[bytes], aligned: bool = True) -> list[str | None]:
    memory = BlockMemory()
    found = [memory.observe("phone", "api.test", "json.data", value, aligned) for value in values]
    return [None if f is None else f.kind for f in found]


# -- keystream reuse: CTR and GCM with a fixed nonce, at any length ------------------------------------


@pytest.mark.parametrize("encrypt", [_gcm, _gcm_nonce_sent, _sic, _sic_padded], ids=["gcm", "nonce+gcm", "ctr", "ctr+pkcs7"])
def test_a_fixed_nonce_is_caught_by_the_second_value_whatever_the_length(encrypt: object) -> None:
    rng = random.Random(1)
    nonce = rng.randbytes(16)  # a constant in the app, not zeros: the zero case has its own rule
    values = [encrypt(KEY, nonce, profile(rng)) for _ in range(2)]  # type: ignore[operator]
    assert any(len(v) % 16 for v in values) or encrypt is _sic_padded  # not whole blocks: GCM output is ct || tag
    assert observe_all(values) == [None, "keystream_reuse"]


def test_ordinary_gcm_output_was_missed_unless_it_happened_to_be_whole_blocks() -> None:
    """The tester's finding: ct || tag with a fixed nonce, caught in 1 of 10 sessions; now by the third login."""
    rng = random.Random(2)
    caught = 0
    for _ in range(10):
        nonce = rng.randbytes(12)
        caught += "keystream_reuse" in observe_all([_gcm(KEY, nonce, login(rng)) for _ in range(3)])
    assert caught == 10


def test_short_values_add_up_their_evidence_over_the_remembered_values() -> None:
    """Two phone numbers XOR to about 24 bits, not enough alone; the third or fourth number reaches the threshold."""
    rng = random.Random(3)
    nonce = rng.randbytes(16)
    phones = [f"+1{rng.randrange(200, 999)}{rng.randrange(10**7):07d}".encode() for _ in range(6)]
    found = observe_all([_sic_padded(KEY, nonce, p) for p in phones])
    assert found[:2] == [None, None] and "keystream_reuse" in found[2:4]
    a, b = (_sic_padded(KEY, nonce, p) for p in phones[:2])
    assert 10 < max(keystream_bits(a, b)) < THRESHOLD


def test_fresh_nonces_and_random_values_never_add_up() -> None:
    rng = random.Random(4)
    memory = BlockMemory()
    for _ in range(300):
        nonce = rng.randbytes(12)
        value = nonce + AESGCM(KEY).encrypt(nonce, login(rng), None)
        assert memory.observe("phone", "api.test", "json.data", value, False) is None
        assert memory.observe("phone", "api.test", "json.token", rng.randbytes(rng.randrange(16, 80)), False) is None


def test_the_score_is_a_likelihood_ratio_so_random_pairs_reach_b_bits_with_probability_2_to_the_minus_b() -> None:
    expectation = sum(2 ** LLR[x] for x in range(1, 256)) / 255  # E[2^LLR] over uniform non-zero XORs
    assert math.isclose(expectation, 1.0, rel_tol=1e-9)
    rng = random.Random(5)
    scores = [max(keystream_bits(rng.randbytes(n), rng.randbytes(n))) for n in (16, 64, 512) for _ in range(3000)]
    assert sum(s >= 10 for s in scores) <= 9000 * 2**-10 * 3  # Markov: P(score >= 10) <= 2^-10 (x2 windows)
    assert max(scores) < THRESHOLD


def test_equal_content_at_equal_offsets_is_no_evidence() -> None:
    """A random nonce, then the same 200 bytes (a constant public key, unchanged pages): XOR 0 scores nothing."""
    rng = random.Random(6)
    constant = rng.randbytes(200)
    values = [rng.randbytes(16) + constant + rng.randbytes(64) for _ in range(5)]
    assert observe_all(values, aligned=False) == [None] * 5


# -- block rules: ECB and CBC with a fixed IV ---------------------------------------------------------


def test_cbc_with_a_fixed_iv_is_caught_when_values_share_different_numbers_of_leading_blocks() -> None:
    iv = urandom(16)
    values = [
        _cbc(KEY, iv, b"A" * 16 + b"first value....." + b"x" * 20),
        _cbc(KEY, iv, b"A" * 16 + b"other value....." + b"y" * 20),  # shares 1 block with the first
        _cbc(KEY, iv, b"A" * 16 + b"other value....." + b"z" * 20),
    ]  # shares 2 with the second
    assert observe_all(values) == [None, None, "same_prefix"]


def test_a_constant_binary_prefix_before_fresh_ciphertext_is_not_a_fixed_iv() -> None:
    """A key ID or device UUID (one or two blocks) before a fresh nonce: every value shares the same blocks."""
    rng = random.Random(7)
    for prefix in (rng.randbytes(16), rng.randbytes(32), rng.randbytes(20)):
        values = []
        for _ in range(8):
            nonce = rng.randbytes(12)
            values.append(prefix + nonce + AESGCM(KEY).encrypt(nonce, login(rng)[: 44 + rng.randrange(3) * 16 - 12], None))
        assert observe_all(values) == [None] * 8


def test_the_pkcs7_block_of_whole_block_plaintexts_gives_ecb_away() -> None:
    """Two different 16-byte values (a card number, a username) share nothing but their padding block."""
    first, second = ecb(KEY, b"4111111111111111"), ecb(KEY, b"5500005555555559")
    assert observe_all([first, second]) == [None, "same_position"]
    assert observe_all([first, ecb(KEY, b"5500005555555559" * 2)]) == [None, "moved_block"]


def test_one_block_values_and_whole_value_repeats_are_never_reported() -> None:
    rng = random.Random(8)
    phones = [ecb(KEY, f"+1555{rng.randrange(10**7):07d}".encode()) for _ in range(6)]
    assert observe_all(phones + phones) == [None] * 12


def test_a_file_hash_in_check_and_commit_and_other_repeats_are_not_findings() -> None:
    """The tester's second finding: the same SHA-256 in a check and a commit request was `deterministic` low."""
    digest = hashlib.sha256(b"photo bytes").digest()
    memory = BlockMemory()
    for _ in range(3):
        for path in ("json.sha256", "json.files.[0].sha256", "header.if-none-match"):
            assert memory.observe("phone", "sync.test", path, digest, True) is None


# -- what is judged at all ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted({name for name, _, _ in MAGIC}))
def test_values_that_start_like_a_file_are_not_ciphertext(name: str) -> None:
    offset, prefix = next((o, p) for n, o, p in MAGIC if n == name)
    value = urandom(offset) + prefix
    value += urandom(16 - len(value) % 16) + urandom(32) * 2  # a repeated random-looking block
    assert file_format(value) == name and not cipher_shaped(value) and analyse(value) is None


def test_magic_numbers_cost_a_negligible_share_of_ciphertext() -> None:
    assert CHANCE < 1e-4
    rng = random.Random(9)
    assert sum(not cipher_shaped(rng.randbytes(rng.randrange(16, 600))) for _ in range(50000)) <= 10  # ~1e-4


@pytest.mark.parametrize(
    "value",
    [
        b"a plain sentence that is long enough",
        bytes(64),
        b"\x01\x00\x02\x00" * 16,
        bytes.fromhex("1234567890" * 8),
        b"\x0a\x10" + b"abcdefghijklmnop" * 4,
        "привет как дела".encode(),
        "明日会いましょう".encode(),
    ],
    ids=["text", "zeros", "small integers", "BCD digits", "protobuf text", "Cyrillic", "Japanese"],
)
def test_structured_bytes_are_not_cipher_shaped(value: bytes) -> None:
    assert not cipher_shaped(value)


@pytest.mark.parametrize(
    "text",
    [
        "3f2c8a1e-5b7d-4c9e-8f0a-1b2c3d4e5f60",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "notification_permission_granted",
        "1234567890123456789012",
        "abcdefabcdefabcdefabcdefabcdef",
    ],
    ids=["uuid", "traceparent", "snake_case", "digits", "hex letters only"],
)
def test_ids_and_words_that_fit_an_alphabet_are_not_random_text(text: str) -> None:
    decoded = decode(text)
    assert decoded is not None and not random_text(text, decoded[0])


def test_base64_of_text_in_any_script_is_not_ciphertext() -> None:
    """Two short UTF-8 texts in one script XOR to small values, as two plaintexts under one keystream do: an app
    that base64-encodes what users type in Russian or Japanese was blocked as `keystream_reuse`."""
    rng = random.Random(13)
    for words in ("привет как дела сегодня хорошо спасибо увидимся завтра", "こんにちは 元気 ですか 今日 天気 明日 会いましょう"):
        memory = BlockMemory()
        for _ in range(100):
            text = " ".join(rng.choice(words.split()) for _ in range(rng.randrange(2, 6))).encode()
            fields = [Field(("json", "text_b64"), base64.b64encode(text).decode())]
            found = scan(fields, host="h", namer=".".join, memory=memory)
            assert (found.ecb, found.deterministic) == ([], [])


def test_identifiers_that_decode_as_base64_never_add_up_to_evidence() -> None:
    """`didReceiveRemoteNotification` is valid base64 of random-looking bytes; such words in one field stay far
    below the threshold (the session corpus has more of them)."""
    words = [
        "get",
        "set",
        "user",
        "profile",
        "settings",
        "query",
        "notification",
        "remote",
        "receive",
        "did",
        "view",
        "screen",
        "open",
        "update",
        "account",
    ]
    rng = random.Random(12)
    memory = BlockMemory()
    for _ in range(500):
        parts = [rng.choice(words) for _ in range(rng.randrange(3, 7))]
        name = parts[0] + "".join(part.title() for part in parts[1:])
        decoded = decode(name)
        if decoded and random_text(name, decoded[0]) and cipher_shaped(decoded[1]):
            assert memory.observe("phone", "h", "json.operation", decoded[1], False) is None


def test_the_same_all_zero_iv_or_nonce_sent_in_front_of_two_values_is_a_fixed_iv() -> None:
    """Dart `IV.fromLength(16)` written in front of the ciphertext, or a zero GCM nonce: an all-zero IV is
    recognisably an IV, and the same one twice is a fixed one."""
    for make in (lambda pin: ZERO + _cbc(KEY, ZERO, pin), lambda pin: ZERO[:12] + _gcm(KEY, ZERO, pin)):
        first, second = make(b'{"pin":"1234"}'), make(b'{"pin":"9876"}')
        assert cipher_shaped(first) and zero_iv(first) in (12, 16)
        memory = BlockMemory()
        fields = [[Field(("json", "data"), value.hex())] for value in (first, second)]
        assert scan(fields[0], host="h", namer=".".join, memory=memory).deterministic == []  # one value: could be a counter's 0
        found = scan(fields[1], host="h", namer=".".join, memory=memory)
        assert [(d["field"], d["basis"], d["zero_bytes"]) for d in found.deterministic] == [
            ("json.data", "zero_iv", zero_iv(first))
        ]


def test_a_counter_iv_sent_in_front_is_unique_per_message_and_fine() -> None:
    """GCM with the message number as its 12-byte nonce, CTR with it as the nonce half of the IV (the block
    counter in the other half): unique per message, right, and never flagged, though the first one is zeros."""
    rng = random.Random(14)
    for ctr in (False, True):
        memory = BlockMemory()
        for counter in range(40):
            if ctr:
                iv = counter.to_bytes(8, "big") + bytes(8)
                value = iv + _sic(KEY, iv, profile(rng))
            else:
                iv = counter.to_bytes(12, "big")
                value = iv + _gcm(KEY, iv, profile(rng))
            found = scan([Field(("json", "sealed"), base64.b64encode(value).decode())], host="h", namer=".".join, memory=memory)
            assert (found.ecb, found.deterministic) == ([], [])


# -- where values come from -----------------------------------------------------------------------------


def test_array_items_are_one_field_and_a_body_is_its_bytes() -> None:
    assert field_key("json.records.[3].data") == field_key("json.records.[0].data") == "json.records.[].data"
    assert field_key("body.bytes") == "body"
    rng = random.Random(10)
    nonce = rng.randbytes(12)
    items = [_gcm(KEY, nonce, login(rng)).hex() for _ in range(2)]
    fields = body_fields("application/json", json.dumps({"records": items}).encode())
    found = scan(fields, host="h", namer=".".join, memory=BlockMemory())
    assert [d["basis"] for d in found.deterministic] == ["keystream_reuse"]  # two items of one request


def test_one_device_is_not_compared_with_another() -> None:
    rng = random.Random(11)
    memory = BlockMemory()
    nonce = rng.randbytes(12)
    first, second = (_gcm(KEY, nonce, profile(rng)) for _ in range(2))
    assert memory.observe("phone-a", "h", "f", first, False) is None
    assert memory.observe("phone-b", "h", "f", second, False) is None
    found = memory.observe("phone-a", "h", "f", second, False)
    assert found is not None and found.kind == "keystream_reuse"


def test_a_body_cut_at_the_limit_is_whole_blocks_only_if_the_whole_body_is() -> None:
    """65,536 bytes are 4,096 blocks by accident of the limit: a 70,001-byte body is not block-cipher output."""
    block = urandom(16)
    head = (urandom(16 * 100) + block) * 40  # random-looking, with a block that repeats
    fields = body_fields("application/octet-stream", head[:65536], complete=False)
    assert fields[0].cut
    assert scan(fields, host="h", namer=".".join, body_bytes=70_001).ecb == []
    assert scan(fields, host="h", namer=".".join, body_bytes=70_000).ecb != []  # whole blocks: judged
    assert scan(fields, host="h", namer=".".join, body_bytes=None).ecb == []  # content-encoded: unknown


@pytest.mark.parametrize(
    "plaintext",
    [
        pytest.param(b"\0" * 4096, id="zero-filled buffer"),
        pytest.param(b"".join(bytes([i]) * 16 for i in range(10)) * 40, id="ten pixel runs, tiled"),
        pytest.param(json.dumps({"type": "heartbeat", "status": "ok!!"}).encode().ljust(48) * 60, id="one record 60 times"),
        pytest.param(b"A" * 1024 + b"hello world, this is text " * 40, id="padding then text"),
    ],
)
def test_the_most_repetitive_ecb_is_cipher_shaped_and_caught(plaintext: bytes) -> None:
    """The ECB penguin: where the plaintext repeats blocks, ECB output repeats them too. Byte statistics counted
    over every block saw a few distinct blocks many times and called it "not random": the blatant case was missed."""
    ciphertext = ecb(urandom(16), plaintext)
    assert cipher_shaped(ciphertext)
    body = json.dumps({"data": base64.b64encode(ciphertext).decode()}).encode()
    (found,) = scan(body_fields("application/json", body), host="h", namer=".".join).ecb
    assert found["basis"] == "repeated_block" and found["repeated_blocks"] >= len(ciphertext) // 16 // 2
