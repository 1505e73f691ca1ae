"""The ECB rule against its seeded corpus: the figures README.md publishes ("Payload inspection") are these."""

from __future__ import annotations

import random

from tests.payload_corpus import Figures, measure, negatives
from tlsgate.payload.decode import decode
from tlsgate.payload.ecb import blocks_of


def test_published_false_positive_and_detection_figures() -> None:
    figures = measure()
    assert figures == Figures(
        negatives={
            "random bytes": (0, 2000),
            "AES-CBC, random IV": (0, 1000),
            "AES-CTR, random nonce": (0, 1000),
            "AES-GCM, random nonce": (0, 1000),
            "compressed (zlib, gzip, bz2, xz)": (0, 600),
            "images (PNG, BMP, raw RGBA)": (0, 800),
            "JWTs (HS256) and their segments": (0, 1000),
            "UUIDs (text, hex, base64)": (0, 1500),
            "hashes (MD5, SHA-1, SHA-256, SHA-512; hex, base64)": (0, 1000),
            "plaintext in base64 and zero-padded records": (0, 600),
        },
        single=(133, 2000),
        large_single=(439, 500),
    )


def test_the_corpus_holds_repeated_blocks_only_the_randomness_test_rejects() -> None:
    """Without `random_looking`, "a block repeats" alone would flag these negatives: the corpus can catch that."""

    def naive(value: str | bytes) -> bool:
        data = value if isinstance(value, bytes) else (decode(value) or ("", b""))[1]
        blocks = blocks_of(data)
        return blocks is not None and len(set(blocks)) < len(blocks)

    corpus = negatives(random.Random(14))
    repeats = {family: sum(naive(v) for v in values) for family, values in corpus.items()}
    assert repeats["plaintext in base64 and zero-padded records"] == 57
    assert repeats["images (PNG, BMP, raw RGBA)"] == 201
    assert sum(repeats.values()) == 259  # README: "259 repeat a 16-byte block and are rejected by the randomness test"
