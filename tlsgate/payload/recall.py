"""What earlier values of the same field reveal: ciphertext made with a fixed IV or nonce, or with ECB.

A good cipher mode makes every message look new, even for the same plaintext.
Apps that fix the IV or nonce (a zero IV, `IV.fromLength(16)`, a constant
nonce) or use ECB leave relations between their messages that fresh
ciphertext never has, and that ordinary traffic does not have either:

* `keystream_reuse` (CTR, GCM, any stream mode with a fixed nonce): the same
  keystream XORed with two plaintexts, so the two ciphertexts XOR to the two
  plaintexts' XOR. Beyond their common prefix (a fixed nonce sent along
  belongs to it), the XOR of two different values is scored byte by byte as
  the log-likelihood ratio (`LLR`) of "two app plaintexts" (JSON, form values,
  text: small XORs, top bit clear) against "independent random bytes"
  (uniform); equal bytes score 0, so equal content at equal offsets (a
  constant inside a structure) proves nothing. A new value's scores against
  each of the field's last `PER_KEY` values are added up, over the overlap
  with and without its last 16 bytes (a GCM tag), and the better of the two
  sums must reach `BITS` + 1. Under fresh ciphertext (independent uniform
  values, so the XORs with the remembered values are independent uniform
  bytes) 2^sum has expectation 1 for each window, so by Markov's inequality a
  value is flagged with probability at most 2 x 2^-41 = 2^-40. Any length
  works; nothing needs whole blocks. Ordinary traffic's structured values
  (hashes, tokens, IDs, compressed data, fresh-nonce ciphertext with key IDs
  and counters) score at most a few bits in the session corpus.
* `moved_block` (ECB): a random-looking block of this value appears at another
  block position of an earlier value.
* `same_position` (ECB, or a fixed-nonce stream on block-aligned text): the
  same random-looking block at the same position as in an earlier value, after
  a block that differs.
* `zero_iv`: two different values start with the same all-zero IV or nonce
  (`IV.fromLength(16)` or a zero GCM nonce sent in front): a fixed IV is the
  same IV twice, and an all-zero one is recognisably an IV. A counter IV sent
  in front (unique per message, which is right) never repeats.
* `same_prefix` (CBC with a fixed IV, or ECB): two values share their first k
  blocks and differ from the first byte of block k+1, and the field's values
  have shared two different numbers of leading blocks. A constant binary
  prefix (a key ID, a device UUID) before fresh ciphertext shares one number
  of blocks with every value and is not reported; nor is a header that ends
  inside a block.

Not evidence on its own: the same whole value again. A content hash, an
ETag, a token, an idempotency key or a session ID repeats byte for byte by
design, and a deterministic ciphertext of one plaintext is the same bytes.

Only values that are `cipher_shaped` are compared, and block rules only where
the whole value's length is a whole number of blocks (a body cut at the
inspection limit is a whole number of blocks by accident of the limit: it is
judged by the whole body's length when known, else by the keystream rule
alone). Memory is per (client, host, field) with array indices folded (the
items of `json.records[]` are one field), holding the first `HEAD` bytes of
the field's last `PER_KEY` values, in process memory only (never written
anywhere), bounded in keys and bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from tlsgate.payload.ecb import BLOCK, random_looking, zero_iv

HEAD = 512  # bytes of each value kept and compared
PER_KEY = 4  # values kept per field
BITS = 40  # evidence needed beyond the multiple-comparison allowance
THRESHOLD = BITS + 1  # the better of two windows
TAG = 16  # an AEAD tag at the end of a value is noise to the keystream rule


def _text_model() -> list[float]:
    """P(x) for x = a ^ b, a != b, two bytes at one offset of two app plaintexts; index 0 unused.

    Characters follow a rough JSON/form/text mix; half the pairs are drawn within one class (a digit against a
    digit where a timestamp differs, a letter against a letter in a name), half independently. 5% of the mass
    is spread uniformly so that no XOR value is impossible under the model.
    """
    classes: list[tuple[float, bytes]] = [
        (0.40, bytes(range(0x61, 0x7B))),  # a-z
        (0.22, b"0123456789"),
        (0.08, bytes(range(0x41, 0x5B))),  # A-Z
        (0.24, b'"":,{}[]._- @/=&+%'),
        (0.04, bytes(range(0x80, 0x100))),  # UTF-8 sequences
        (0.02, b"\n\t!#$'()*;<>?\\^`|~"),
    ]
    single = [0.0] * 256
    for weight, members in classes:
        for byte in members:
            single[byte] += weight / len(members)
    pairs = [0.0] * 256
    for a in range(256):
        for b in range(256):
            if a != b and single[a] and single[b]:
                pairs[a ^ b] += 0.5 * single[a] * single[b]
    for weight, members in classes:
        distinct = set(members)
        for a in distinct:
            for b in distinct:
                if a != b:
                    pairs[a ^ b] += 0.5 * weight / (len(distinct) * (len(distinct) - 1))
    total = sum(pairs[1:])
    return [0.0] + [0.95 * p / total + 0.05 / 255 for p in pairs[1:]]


# log2 of P(x | two plaintexts) / P(x | independent random bytes, a != b), the latter 1/255 for every x; equal
# bytes (x = 0) are left out, so they score 0
LLR = [0.0] + [math.log2(p * 255) for p in _text_model()[1:]]


def keystream_bits(a: bytes, b: bytes) -> tuple[float, float]:
    """Evidence (bits) that `a` and `b` are one keystream over two plaintexts, beyond their common prefix: over
    their overlap, and over the overlap less its last TAG bytes (where a GCM tag would be noise)."""
    size = min(len(a), len(b))
    start = _common_prefix(a, b, size)
    if start >= size:
        return 0.0, 0.0
    xor = (int.from_bytes(a[start:size]) ^ int.from_bytes(b[start:size])).to_bytes(size - start)
    whole = _score(xor)
    if len(xor) <= TAG:
        return whole, whole
    return whole, whole - _score(xor[-TAG:])


def _score(xor: bytes) -> float:
    return sum(LLR[value] * count for value, count in Counter(xor).items())


def _common_prefix(a: bytes, b: bytes, size: int) -> int:
    if a[:size] == b[:size]:
        return size
    low, high = 0, size  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class Recall:
    """What earlier values of the same field say about this one."""

    kind: str  # "moved_block" (ECB) | "keystream_reuse" | "zero_iv" | "same_position" | "same_prefix"
    blocks: int = 0  # how many blocks matched (block rules); the zero IV's length (zero_iv)
    bits: int = 0  # evidence in bits (keystream rule)
    prefixes: tuple[int, ...] = ()  # the numbers of leading blocks values shared (same_prefix)


RANK = {"moved_block": 5, "keystream_reuse": 4, "zero_iv": 3, "same_position": 2, "same_prefix": 1}

_SALT = os.urandom(16)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16, key=_SALT).digest()


@dataclass(frozen=True, slots=True)
class _Seen:
    digest: bytes  # of the whole value as known: equal digests are the same value again
    head: bytes  # the first HEAD bytes
    aligned: bool  # the whole value is a whole number of blocks (unknown counts as not)


@dataclass(slots=True)
class _Field:
    values: list[_Seen] = field(default_factory=list)
    prefixes: tuple[int, ...] = ()  # the numbers of leading blocks two values shared, at most 8


_INDEX = re.compile(r"\[\d+\]")


def field_key(path: str) -> str:
    """Array items are one field (`json.records.[3].data` -> `json.records.[].data`), and a body's bytes are the
    body however it was parsed (`body.bytes`, which a body that passes for text also gets, -> `body`)."""
    return "body" if path == "body.bytes" else _INDEX.sub("[]", path)


class BlockMemory:
    """Recent cipher-shaped values per (client, host, field); bounded in keys and values per key.

    At most `keys` fields x `per_key` values x (HEAD + about 200) bytes: with
    the defaults 4096 x 4 x ~710 bytes, about 12 MiB in the worst case (a unit
    test measures it).
    """

    def __init__(self, keys: int = 4096, per_key: int = PER_KEY) -> None:
        self.keys = keys
        self.per_key = per_key
        self._seen: OrderedDict[tuple[str, str, str], _Field] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, client: str, host: str, path: str, data: bytes, aligned: bool) -> Recall | None:
        """Compare `data` (one decoded, cipher-shaped value) with earlier values of the field, then remember it.

        `aligned`: the whole value (not just the bytes given, if it was cut) is a whole number of blocks.
        """
        key = (client, host, field_key(path))
        state = self._seen.get(key)
        if state is None:
            state = self._seen[key] = _Field()
        self._seen.move_to_end(key)
        while len(self._seen) > self.keys:
            self._seen.popitem(last=False)
        entry = _Seen(_digest(data), data[:HEAD], aligned and len(data) % BLOCK == 0)
        if any(old.digest == entry.digest for old in state.values):
            return None  # the same value again: no evidence, nothing new to keep
        found = _compare(entry, state)
        state.values = [*state.values, entry][-self.per_key :]
        return found


def _compare(new: _Seen, state: _Field) -> Recall | None:
    best: Recall | None = None
    shared: set[int] = set()
    whole = cut = 0.0
    for old in state.values:
        with_tag, without_tag = keystream_bits(new.head, old.head)
        whole, cut = whole + with_tag, cut + without_tag
        found, prefix = _blocks(new, old)
        iv = zero_iv(new.head)
        if iv and zero_iv(old.head) == iv and (found is None or RANK[found.kind] < RANK["zero_iv"]):
            found = Recall("zero_iv", iv)
        if prefix:
            shared.add(prefix)
        if found is not None and (best is None or RANK[found.kind] > RANK[best.kind]):
            best = found
    bits = max(whole, cut)
    if bits >= THRESHOLD and (best is None or RANK[best.kind] < RANK["keystream_reuse"]):
        best = Recall("keystream_reuse", bits=int(bits))
    if shared and len(state.prefixes) < 8:
        state.prefixes = tuple(sorted(set(state.prefixes) | shared))
    if best is None and shared and len(state.prefixes) > 1:
        best = Recall("same_prefix", max(shared), prefixes=state.prefixes)
    return best


def _blocks(new: _Seen, old: _Seen) -> tuple[Recall | None, int]:
    """What the cipher blocks of two different values show, and the number of leading blocks they share (0 if
    none, or if they part inside a block rather than at a block boundary)."""
    if not (new.aligned and old.aligned):
        return None, 0
    size = min(len(new.head), len(old.head))
    new_blocks = [new.head[i : i + BLOCK] for i in range(0, len(new.head) - BLOCK + 1, BLOCK)]
    old_blocks = [old.head[i : i + BLOCK] for i in range(0, len(old.head) - BLOCK + 1, BLOCK)]
    where: dict[bytes, list[int]] = {}
    for index, block in enumerate(old_blocks):
        where.setdefault(block, []).append(index)
    moved = same = 0
    differed = False
    for index, block in enumerate(new_blocks):
        at = where.get(block)
        here = index < len(old_blocks) and old_blocks[index] == block
        if at and random_looking(block):
            if here:
                same += differed
            elif any(i != index for i in at):
                moved += 1
        differed = differed or not here
    start = _common_prefix(new.head, old.head, size)
    prefix = start // BLOCK if start % BLOCK == 0 and start < size else 0
    if prefix and not all(random_looking(b) for b in new_blocks[:prefix]):
        prefix = 0
    if moved:
        return Recall("moved_block", moved), prefix
    return (Recall("same_position", same) if same else None), prefix
