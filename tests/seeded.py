"""Random bytes that are the same on every run of a test: `urandom` is reseeded from the test's id before each test.

The payload detectors judge random-looking bytes against thresholds that
uniformly random data misses about once in 10^4 (a file's magic number, a
binomial tail): with `os.urandom` a test of them fails now and then for no
reason. Seeded by the test's own id, a value that passes passes every time,
whatever runs before it or on which xdist worker.
"""

from __future__ import annotations

import random

_RNG = random.Random(0)


def reseed(test_id: str) -> None:
    _RNG.seed(test_id)


def urandom(size: int) -> bytes:
    return _RNG.randbytes(size)
