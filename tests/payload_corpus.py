"""A seeded corpus for the ECB rule within one value: what must not be called ECB, and AES-ECB app payloads that
should be, each judged on its own.

Shared by the corpus test (tests/unit/test_payload_corpus.py) and the README
figures: `python -m tests.payload_corpus` prints them. Everything derives from
one `random.Random(seed)`, so the figures are exact for a given seed. What
several requests reveal together (ECB, fixed IVs and nonces across values) is
measured on whole app sessions by tests/payload_sessions.py.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import json
import lzma
import random
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tlsgate.payload.decode import decode
from tlsgate.payload.ecb import analyse

SEED = 14


def encode(rng: random.Random, data: bytes) -> str:
    how = rng.choice(("base64", "base64url", "hex", "base64-nopad"))
    if how == "base64":
        return base64.b64encode(data).decode()
    if how == "base64url":
        return base64.urlsafe_b64encode(data).decode()
    if how == "hex":
        return data.hex()
    return base64.b64encode(data).decode().rstrip("=")


def pkcs7(data: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    return padder.update(data) + padder.finalize()


def ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(pkcs7(data)) + enc.finalize()


def cbc(rng: random.Random, key: bytes, data: bytes) -> bytes:
    iv = rng.randbytes(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(pkcs7(data)) + enc.finalize()


def ctr(rng: random.Random, key: bytes, data: bytes) -> bytes:
    nonce = rng.randbytes(16)
    enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return nonce + enc.update(data) + enc.finalize()


def gcm(rng: random.Random, key: bytes, data: bytes) -> bytes:
    nonce = rng.randbytes(12)
    return nonce + AESGCM(key).encrypt(nonce, data, None)


# -- realistic app payloads ------------------------------------------------------------------------

WORDS = ("tap", "view", "scroll", "purchase", "login", "logout", "open", "close", "share", "search", "settings", "cart")
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia")


def app_json(rng: random.Random) -> bytes:
    shape = rng.randrange(5)
    if shape == 0:  # login
        doc: object = {
            "username": rng.choice(NAMES) + str(rng.randrange(1000)),
            "password": rng.randbytes(6).hex(),
            "device": "android",
            "app_version": "3.4.1",
        }
    elif shape == 1:  # one analytics event
        doc = {
            "event": rng.choice(WORDS),
            "ts": 1700000000 + rng.randrange(10**6),
            "screen": rng.choice(WORDS),
            "session": str(uuid.UUID(int=rng.getrandbits(128))),
        }
    elif shape == 2:  # a batch of events, as analytics SDKs send them
        doc = {
            "events": [
                {"event": rng.choice(WORDS), "ts": 1700000000 + rng.randrange(10**6), "props": {"screen": rng.choice(WORDS)}}
                for _ in range(rng.randrange(2, 12))
            ]
        }
    elif shape == 3:  # a location ping
        doc = {
            "lat": round(rng.uniform(-90, 90), 6),
            "lon": round(rng.uniform(-180, 180), 6),
            "accuracy": rng.randrange(5, 50),
            "battery": rng.randrange(100),
        }
    else:  # a profile update
        doc = {
            "user": {
                "name": rng.choice(NAMES).title(),
                "email": f"{rng.choice(NAMES)}@example.com",
                "phone": f"+1555{rng.randrange(10**7):07d}",
                "city": rng.choice(("Berlin", "Lagos", "Lima")),
            },
            "consent": {"ads": rng.random() < 0.5, "analytics": True},
        }
    return json.dumps(doc).encode()


def app_form(rng: random.Random) -> bytes:
    pairs = [
        ("user", rng.choice(NAMES)),
        ("pin", f"{rng.randrange(10**4):04d}"),
        ("amount", f"{rng.randrange(10**5)}"),
        ("currency", "EUR"),
        ("note", " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 6)))),
    ]
    return "&".join(f"{k}={v}" for k, v in pairs).encode()


def app_payload(rng: random.Random) -> bytes:
    return app_json(rng) if rng.random() < 0.75 else app_form(rng)


# -- what must not be called ECB -------------------------------------------------------------------


def png(rng: random.Random) -> bytes:
    """A real PNG (filtered scanlines, zlib): gradients, flat fills and stripes."""
    width, height = rng.randrange(4, 64), rng.randrange(4, 64)
    kind = rng.randrange(3)
    rows: list[bytes] = []
    for y in range(height):
        if kind == 0:
            row = bytes((x * 4 + y) & 0xFF for x in range(width * 3))
        elif kind == 1:
            row = bytes([rng.randrange(256)] * 3) * width if y == 0 else rows[-1][1:]
        else:
            row = bytes(((x // 4) % 2) * 255 for x in range(width * 3))
        rows.append(b"\x00" + row if kind != 1 or y == 0 else b"\x00" + rows[0][1:])

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


def bmp(rng: random.Random) -> bytes:
    """Uncompressed pixels: flat fills, gradients and tiles repeat 16-byte blocks without looking random."""
    width, height = rng.randrange(4, 48) * 4, rng.randrange(2, 32)
    kind = rng.randrange(4)
    if kind == 0:
        pixels = bytes(rng.randbytes(3)) * (width * height)
    elif kind == 1:
        pixels = b"".join(bytes(((x + y) * 7) & 0xFF for x in range(width * 3)) for y in range(height))
    elif kind == 2:
        tile = rng.randbytes(16)
        pixels = tile * (width * height * 3 // 16)
    else:
        pixels = bytes(x % 256 for x in range(width * height * 3))
    return b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54) + bytes(40) + pixels


def rgba(rng: random.Random) -> bytes:
    """A raw RGBA frame (camera previews, canvas dumps): rows are whole blocks, so fills and patterns repeat blocks."""
    width, height = rng.randrange(1, 16) * 4, rng.randrange(2, 24)
    kind = rng.randrange(4)
    if kind == 0:
        return bytes([rng.randrange(256), rng.randrange(256), rng.randrange(256), 255]) * (width * height)
    if kind == 1:
        return b"".join(bytes([x * 255 // width, y * 255 // height, 128, 255]) for y in range(height) for x in range(width))
    if kind == 2:
        on, off = bytes([255, 255, 255, 255]), bytes([0, 0, 0, 255])
        return b"".join((on if ((x // 4) + (y // 4)) % 2 else off) for y in range(height) for x in range(width))
    return b"".join(
        bytes([(x * 37 + y * 11) & 0xFF, (x * 5) & 0xFF, (y * 3) & 0xFF, 255]) for y in range(height) for x in range(width)
    )


def jwt(rng: random.Random) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(
        json.dumps({"sub": str(rng.randrange(10**9)), "iat": 1700000000 + rng.randrange(10**6), "scope": "read write"}).encode()
    )
    mac = hmac.HMAC(rng.randbytes(32), hashes.SHA256())
    mac.update(f"{header}.{claims}".encode())
    return f"{header}.{claims}.{b64(mac.finalize())}"


def negatives(rng: random.Random) -> dict[str, list[str | bytes]]:
    key = rng.randbytes(16)
    out: dict[str, list[str | bytes]] = {}
    out["random bytes"] = [encode(rng, rng.randbytes(rng.choice((16, 32, 48, 64, 128, 256, 1024, 4096)))) for _ in range(2000)]
    out["AES-CBC, random IV"] = [encode(rng, cbc(rng, key, app_payload(rng) * rng.choice((1, 4)))) for _ in range(1000)]
    out["AES-CTR, random nonce"] = [encode(rng, ctr(rng, key, app_payload(rng) * rng.choice((1, 4)))) for _ in range(1000)]
    out["AES-GCM, random nonce"] = [encode(rng, gcm(rng, key, app_payload(rng) * rng.choice((1, 4)))) for _ in range(1000)]
    compressors: list[Callable[[bytes], bytes]] = [zlib.compress, gzip.compress, bz2.compress, lzma.compress]
    sources: list[Callable[[], bytes]] = [
        lambda: app_payload(rng) * rng.randrange(1, 50),
        lambda: bytes(rng.randrange(64, 65536)),
        lambda: rng.randbytes(rng.randrange(1, 64)) * rng.randrange(10, 400),
    ]
    out["compressed (zlib, gzip, bz2, xz)"] = [rng.choice(compressors)(rng.choice(sources)()) for _ in range(600)]
    out["images (PNG, BMP, raw RGBA)"] = [rng.choice((png, bmp, rgba, rgba))(rng) for _ in range(800)]
    out["JWTs (HS256) and their segments"] = [s for _ in range(250) for s in (lambda t: [t, *t.split(".")])(jwt(rng))]
    out["UUIDs (text, hex, base64)"] = [
        f(uuid.UUID(int=rng.getrandbits(128)))
        for _ in range(500)
        for f in (str, lambda u: u.hex, lambda u: base64.b64encode(u.bytes).decode())
    ]
    out["hashes (MD5, SHA-1, SHA-256, SHA-512; hex, base64)"] = [
        encode(rng, hashlib.new(rng.choice(("md5", "sha1", "sha256", "sha512")), rng.randbytes(20)).digest()) for _ in range(1000)
    ]
    out["plaintext in base64 and zero-padded records"] = [
        *[encode(rng, (app_payload(rng) * rng.randrange(1, 6)).ljust(rng.randrange(64, 512), b"\0")) for _ in range(500)],
        *[encode(rng, b"A" * rng.randrange(32, 400)) for _ in range(100)],
    ]
    return out


def flagged(value: str | bytes) -> bool:
    """What the add-on would call ECB within one value (binary bodies as bytes, text values decoded)."""
    if isinstance(value, bytes):
        report = analyse(value)
        return report is not None and report.ecb
    decoded = decode(value)
    report = analyse(decoded[1]) if decoded else None
    return report is not None and report.ecb


@dataclass(frozen=True)
class Figures:
    negatives: dict[str, tuple[int, int]]  # family -> (flagged, total)
    single: tuple[int, int]  # ECB values flagged within one message
    large_single: tuple[int, int]  # ECB of event batches >= 1 KiB, flagged within one message


def measure(seed: int = SEED) -> Figures:
    rng = random.Random(seed)
    neg = {family: (sum(flagged(v) for v in values), len(values)) for family, values in negatives(rng).items()}
    key = rng.randbytes(16)
    values = [encode(rng, ecb(key, app_payload(rng))) for _ in range(2000)]
    single = (sum(flagged(v) for v in values), len(values))
    large = [
        encode(rng, ecb(key, json.dumps({"events": [json.loads(app_json(rng)) for _ in range(12)]}).encode())) for _ in range(500)
    ]
    large_single = (sum(flagged(v) for v in large), len(large))
    return Figures(neg, single, large_single)


def main() -> None:
    figures = measure()
    total = sum(n for _, n in figures.negatives.values())
    wrong = sum(f for f, _ in figures.negatives.values())
    for family, (hits, count) in figures.negatives.items():
        print(f"negative  {family}: {hits}/{count}")
    print(f"false positives: {wrong}/{total}")
    print(f"ECB single message: {figures.single[0]}/{figures.single[1]}")
    print(f"ECB event batches >= 1 KiB, single message: {figures.large_single[0]}/{figures.large_single[1]}")


if __name__ == "__main__":
    main()
