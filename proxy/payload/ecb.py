"""Block structure of ciphertext: what AES in ECB mode, or with a fixed IV or nonce, leaves in the bytes.

ECB encrypts equal 16-byte plaintext blocks to equal ciphertext blocks, and
the same block to the same bytes in every message under one key. Good modes
(CBC, CTR, GCM with a fresh IV) never repeat a block: among n random blocks
the chance of any repeat is about n^2 / 2^129.

The rule (the README has the measured figures):

* within one value: the decoded bytes are a whole number of blocks, at least
  two; at least 90% of the blocks look random (`random_looking`; in a long
  value, of 64 blocks spread over it), and at least one random-looking block
  occurs twice. Zero padding, pixel runs and other
  structured data repeat blocks too, but those blocks fail `random_looking`.
* across values of one field on one host (`BlockMemory`): a random-looking
  block of this value appears at another position of an earlier, different
  value: only ECB moves blocks between positions.
* deterministic (lower severity): the same random-looking block at the same
  position as in an earlier different value, after a block that differs (CTR or
  GCM with a fixed nonce, or ECB), or the same leading blocks (CBC with a fixed
  IV, or ECB); or the whole ciphertext repeated while the request's other
  fields differ.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass

BLOCK = 16
MIN_BLOCKS = 2
SAMPLE = 64  # blocks the randomness test looks at in a long value


def random_looking(block: bytes) -> bool:
    """A block that could be AES output: varied bytes spread over the whole range, not a run or a ramp.

    A uniformly random block fails this with probability about 3e-4 (mostly
    the range test), which is why the rule asks 90% of blocks to pass, not all.
    """
    if len(set(block)) < 10 or max(block) - min(block) < 128:
        return False
    steps = {(block[i + 1] - block[i]) & 0xFF for i in range(len(block) - 1)}
    return len(steps) > 2


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
    """None when the bytes cannot be block-cipher output judged by this rule (length, or not random-looking)."""
    blocks = blocks_of(data)
    if blocks is None:
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


@dataclass(frozen=True)
class Recall:
    """What an earlier value of the same field says about this one."""

    kind: str  # "moved_block" (ECB) | "same_position" | "same_prefix" | "same_value"
    blocks: int = 0  # how many blocks matched


_SALT = os.urandom(16)


def _digest(data: bytes) -> bytes:
    """Blocks are kept as keyed 8-byte digests: enough to compare, nothing to decrypt or replay."""
    return hashlib.blake2b(data, digest_size=8, key=_SALT).digest()


@dataclass(frozen=True)
class _Seen:
    """One remembered value: its digest, its request's context digest, and per block an 8-byte digest and
    whether the block looked random, packed into two bytes objects (about 600 bytes for 64 blocks)."""

    value: bytes
    context: bytes
    packed: bytes  # 8 bytes per block
    random_mask: bytes  # 1 byte per block: 1 if it looked random

    @property
    def blocks(self) -> list[bytes]:
        return [self.packed[i : i + 8] for i in range(0, len(self.packed), 8)]

    @property
    def random(self) -> list[bool]:
        return [b == 1 for b in self.random_mask]


class BlockMemory:
    """Recent ciphertext values per (host, field path), as digests; bounded in keys and values per key.

    At most `keys` fields x `per_key` values x `MAX_BLOCKS` digests of 8 bytes, packed:
    with the defaults 4096 x 4 x (64 x 9 + ~200) bytes, about 14 MiB in the worst case (a unit test measures it).
    """

    MAX_BLOCKS = 64

    def __init__(self, keys: int = 4096, per_key: int = 4) -> None:
        self.keys = keys
        self.per_key = per_key
        self._seen: OrderedDict[tuple[str, str], list[_Seen]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, host: str, path: str, data: bytes, context: bytes) -> Recall | None:
        """Compare `data` (one decoded value, whole blocks) with earlier values of the field, then remember it.

        `context` is a digest of the request's other fields: the same
        ciphertext under a different context is the deterministic case.
        """
        blocks = blocks_of(data) if len(data) % BLOCK == 0 and len(data) >= BLOCK else None
        if blocks is None:
            return None
        blocks = blocks[: self.MAX_BLOCKS]
        entry = _Seen(
            _digest(data), _digest(context), b"".join(_digest(b) for b in blocks), bytes(random_looking(b) for b in blocks)
        )
        key = (host, path)
        earlier = self._seen.get(key, [])
        found = _compare(entry, earlier)
        if not any(e.value == entry.value and e.context == entry.context for e in earlier):
            earlier = [*earlier, entry][-self.per_key :]
        self._seen[key] = earlier
        self._seen.move_to_end(key)
        while len(self._seen) > self.keys:
            self._seen.popitem(last=False)
        return found


def _compare(entry: _Seen, earlier: list[_Seen]) -> Recall | None:
    best: Recall | None = None
    rank = {"moved_block": 3, "same_position": 2, "same_prefix": 1, "same_value": 0}
    for old in earlier:
        found = _compare_one(entry, old)
        if found is not None and (best is None or rank[found.kind] > rank[best.kind]):
            best = found
    return best


def _compare_one(new: _Seen, old: _Seen) -> Recall | None:
    new_blocks, old_blocks = new.blocks, old.blocks
    if new.value == old.value:
        return Recall("same_value", len(new_blocks)) if new.context != old.context else None
    positions: dict[bytes, list[int]] = {}
    for index, (digest, ok) in enumerate(zip(old_blocks, old.random, strict=True)):
        if ok:
            positions.setdefault(digest, []).append(index)
    moved = same = 0
    differed = False
    same_after_difference = 0
    for index, (digest, ok) in enumerate(zip(new_blocks, new.random, strict=True)):
        at = positions.get(digest, []) if ok else []
        if index < len(old_blocks) and old_blocks[index] == digest and ok:
            same += 1
            if differed:
                same_after_difference += 1
        elif at:
            moved += 1
        if index >= len(old_blocks) or old_blocks[index] != digest:
            differed = True
    if moved:
        return Recall("moved_block", moved)
    if same_after_difference:
        return Recall("same_position", same)
    if same:
        return Recall("same_prefix", same)
    return None
