"""What one value's bytes say on their own: could they be ciphertext, and do they repeat a cipher block (AES-ECB).

ECB encrypts equal 16-byte plaintext blocks to equal ciphertext blocks. Good
modes (CBC, CTR, GCM with a fresh IV) never repeat a block: among n random
blocks the chance of any repeat is about n^2 / 2^129.

The rule within one value (the README has the measured figures): the whole
value is a whole number of blocks, at least two; it is `cipher_shaped`; at
least 90% of its blocks look random (`random_looking`; in a long value, of 64
blocks spread over it), and at least one random-looking block occurs twice.
Zero padding, pixel runs and other structured data repeat blocks too, but
those blocks fail `random_looking`; real files, which repeat random-looking
material of their own (a ZIP with two equal entries), are known by their magic
numbers (`tlsgate.payload.formats`) and never judged. What earlier values of the
same field add is `tlsgate.payload.recall`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from tlsgate.payload.formats import file_format

BLOCK = 16
MIN_BLOCKS = 2
SAMPLE = 64  # blocks the randomness test looks at in a long value
SHAPE_SAMPLE = 4096  # bytes `cipher_shaped` looks at
_PRINTABLE = bytes(range(0x20, 0x7F))
_HIGH = bytes(range(0x80, 0x100))


def random_looking(block: bytes) -> bool:
    """A block that could be AES output: varied bytes spread over the whole range, not a run or a ramp.

    A uniformly random block fails this with probability about 3e-4 (mostly
    the range test), which is why the rule asks 90% of blocks to pass, not all.
    """
    if len(set(block)) < 10 or max(block) - min(block) < 128:
        return False
    steps = {(block[i + 1] - block[i]) & 0xFF for i in range(len(block) - 1)}
    return len(steps) > 2


def cipher_shaped(data: bytes) -> bool:
    """Bytes that could have come out of a cipher: at least one block, no file magic, not UTF-8 text, and the
    byte statistics of uniform random data: zero bytes, printable bytes and top bits each within their binomial
    10^-6 tails, some nibble above 9 (BCD digits have none), nibble counts within a chi-square of 80 (15 degrees
    of freedom).

    Text, BCD digits, packed small integers and structured binary fail; uniformly random values fail with
    probability about 10^-4, mostly by starting with a file's magic number (a unit test measures it).
    """
    if len(data) < BLOCK:  # less than a block is never one (gRPC's 8-byte span IDs, short bytes fields): no look
        return False
    if file_format(data) is not None or _utf8_text(data[:SHAPE_SAMPLE], cut=len(data) > SHAPE_SAMPLE):
        return False
    sample = distinct_blocks(data[zero_iv(data) :])  # an all-zero IV or nonce sent in front is not what is judged
    if len(sample) < BLOCK:
        return False
    n = len(sample)
    rounded = n if n <= 128 else -(-n // 64) * 64  # thresholds for at most 128 + 62 sizes (a slightly looser tail)
    if sample.count(0) >= _tail(rounded, 1 / 256):
        return False
    if n - len(sample.translate(None, _PRINTABLE)) >= _tail(rounded, 95 / 256):
        return False
    high = n - len(sample.translate(None, _HIGH))
    if high >= _tail(rounded, 0.5) or n - high >= _tail(rounded, 0.5):
        return False
    counts = Counter(sample)
    nibbles = [0] * 16
    for byte, count in counts.items():
        nibbles[byte >> 4] += count
        nibbles[byte & 0x0F] += count
    if sum(nibbles[10:]) == 0:  # decimal digits packed as hex (BCD): 2n nibbles, none of them a-f
        return False
    expected = 2 * n / 16
    chi2 = sum((count - expected) ** 2 for count in nibbles) / expected
    return n < 32 or chi2 < 80  # P(chi2 with 15 degrees of freedom > 80) < 10^-9


SHAPE_SCAN = 16 * SHAPE_SAMPLE  # bytes `distinct_blocks` walks to fill its sample


def distinct_blocks(data: bytes) -> bytes:
    """The value's 16-byte blocks, each once, up to SHAPE_SAMPLE bytes (a tail shorter than a block kept as is).

    The byte statistics are those of one draw per distinct block: ECB repeats a
    cipher block wherever the plaintext repeats one (zero padding, a pixel
    run, a record sent many times), and counting each repeat again would make
    the most blatant ECB fail the randomness test (the "ECB penguin" missed).
    """
    if len(data) <= BLOCK:
        return data
    seen: set[bytes] = set()
    parts: list[bytes] = []
    size = 0
    for start in range(0, min(len(data), SHAPE_SCAN), BLOCK):
        block = data[start : start + BLOCK]
        if block not in seen:
            seen.add(block)
            parts.append(block)
            size += len(block)
            if size >= SHAPE_SAMPLE:
                break
    return b"".join(parts)


def _utf8_text(data: bytes, cut: bool) -> bool:
    """UTF-8 with at least one character beyond ASCII (a multi-byte character cut at the end of a `cut` sample
    allowed): text in a non-Latin script, whose bytes are mostly above 0x7F and whose XOR with another such text
    is small, exactly like two plaintexts under one keystream. Random bytes are valid UTF-8 with probability
    5 x 10^-5 at 16 bytes and far less beyond."""
    if data.isascii():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return cut and error.start >= len(data) - 3 and _utf8_text(data[: error.start], cut=False)
    return True


@lru_cache(maxsize=1024)
def _tail(n: int, p: float, alpha: float = 1e-6) -> int:
    """The smallest k with P(Binomial(n, p) >= k) <= alpha."""
    log_p, log_q = math.log(p), math.log1p(-p)
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
        if 1 - cdf <= alpha:
            return k + 1
    return n + 1


ZERO_IV = 12  # a GCM nonce is 12 bytes, a CBC or CTR IV 16


def zero_iv(data: bytes) -> int:
    """The length of an all-zero IV or nonce a value starts with (`IV.fromLength(16)`, or a zero GCM nonce, sent
    in front of the ciphertext): 16 for 16 or more zero bytes, 12 for 12 or 13 (a 12-byte nonce, then cipher
    output that starts with a zero byte one time in 256); else 0. Fourteen or fifteen zeros then a small number
    are a counter IV (unique per message, which is right), not a fixed one."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    if zeros >= BLOCK:
        return BLOCK
    return ZERO_IV if zeros in (ZERO_IV, ZERO_IV + 1) else 0


def blocks_of(data: bytes) -> list[bytes] | None:
    if len(data) < BLOCK * MIN_BLOCKS or len(data) % BLOCK:
        return None
    return [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]


@dataclass(frozen=True)
class BlockReport:
    """What the block structure of one decoded value shows; no bytes of it."""

    length: int
    blocks: int
    repeated: int  # random-looking blocks equal to an earlier block of the same value

    @property
    def ecb(self) -> bool:
        return self.repeated > 0


def analyse(data: bytes) -> BlockReport | None:
    """None when the bytes cannot be block-cipher output judged by this rule (length, a file, not random-looking).

    The caller decides whether the value's whole length is a whole number of
    blocks: a body cut at the inspection limit is passed only when the whole
    body's length is.
    """
    blocks = blocks_of(data)
    if blocks is None or not cipher_shaped(data):
        return None
    step = max(1, len(blocks) // SAMPLE)  # the 90% test on at most SAMPLE blocks spread over the value
    sample = blocks[::step][:SAMPLE]
    if sum(random_looking(b) for b in sample) * 10 < len(sample) * 9:
        return None
    counts: dict[bytes, int] = {}
    for block in blocks:
        counts[block] = counts.get(block, 0) + 1
    repeated = sum(n - 1 for block, n in counts.items() if n > 1 and random_looking(block))
    return BlockReport(len(data), len(blocks), repeated)
