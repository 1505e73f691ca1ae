"""The fixed bounds on what scanning one message may cost, whatever `payload.max_bytes` lets in.

A policy may ask for 16 MiB of every body to be inspected. Scanning that much
is linear C-speed work (decoding, regular-expression and substring searches),
never a Python loop per token, field or match: every such loop stops at a fixed
count here, and what was left out is said (`Budget.capped`), never silently
dropped. The work is also cut into steps: scanners are generators that yield
`None` after each bounded piece (one window of text, one field), so the add-on
can hand the event loop back to other devices between steps.

* `SEGMENT`: a body or a field value longer than this is inspected as
  consecutive pieces of at most this many bytes (cut at a separator where one
  is near), so no step decodes or searches more than this at once.
* `WINDOW`: searches over a text advance this many characters per step.
* `MAX_CANDIDATES`: key- and JWT-shaped places examined one by one per message.
* `MAX_ITEMS`: items kept per evidence list (keys, tokens, fields, identifiers).
* `MAX_ANALYSED`: bytes of one decoded value whose cipher blocks are compared.
* `MAX_DECODED`: decoded bytes analysed per message, across all its values.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

SEGMENT = 1 << 20  # also mitmproxy's stream threshold under tlsgate: a buffered body is always one segment
WINDOW = 1 << 16
OVERLAP = 64  # a literal trigger that starts before a window's end is still seen whole
MAX_CANDIDATES = 4096
MAX_ITEMS = 32
MAX_ANALYSED = 1 << 18
MAX_DECODED = 4 << 20

T = TypeVar("T")
Steps = Generator[None, None, T]


@dataclass
class Budget:
    """What one message's scan may still spend; each limit reached is named in `capped`."""

    candidates: int = MAX_CANDIDATES
    decoded: int = MAX_DECODED
    capped: set[str] = field(default_factory=set)

    def candidate(self) -> bool:
        """Take one candidate; False (and `capped`) once there are none left."""
        if self.candidates <= 0:
            self.capped.add("candidates")
            return False
        self.candidates -= 1
        return True

    def decode(self, size: int) -> bool:
        if size > self.decoded:
            self.capped.add("decoded_bytes")
            return False
        self.decoded -= size
        return True

    def keep(self, items: list[T], item: T, what: str) -> None:
        """Append `item` unless `items` holds MAX_ITEMS already (then `capped` names the list)."""
        if len(items) < MAX_ITEMS:
            items.append(item)
        else:
            self.capped.add(what)


def windowed(pattern: re.Pattern[str], text: str, window: int = WINDOW) -> Iterator[re.Match[str] | None]:
    """`pattern.finditer(text)`, one window of text at a time, with `None` between windows.

    For patterns whose matches are runs or literals (every scanner here): a
    match that reaches the end of its window is matched again from its start
    over the whole text, so it comes out whole, once. Lookbehinds see the text
    before a window (`pos` is not slicing).
    """
    pos, size = 0, len(text)
    while pos < size:
        end = min(size, pos + window)
        stop = min(size, end + OVERLAP)
        last = pos
        for found in pattern.finditer(text, pos, stop):
            if found.start() >= end:
                break
            if found.end() >= stop and stop < size:
                again = pattern.match(text, found.start())
                found = again if again is not None else found
            last = found.end()
            yield found
        yield None
        pos = max(end, last)


def drain[T](steps: Steps[T]) -> T:
    """Run a stepped scan to its end at once (tests, benchmarks, and callers with nothing else to serve)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def bounded_body(raw: bytes, encoding: str, limit: int) -> tuple[bytes | bytearray, bool]:
    """At most `limit` bytes of the body as the app wrote it (gzip/deflate inflated, never past `limit`), and
    whether that is all of it."""
    return drain(inflate_steps(raw, encoding, limit))


def inflate_steps(raw: bytes | bytearray, encoding: str, limit: int) -> Steps[tuple[bytes | bytearray, bool]]:
    """`bounded_body`, inflating at most `SEGMENT` bytes per step."""
    if encoding.strip().lower() in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
        out = bytearray()
        pending = raw
        try:
            while len(out) < limit:
                chunk = inflater.decompress(pending, min(SEGMENT, limit - len(out)))
                out += chunk
                pending = inflater.unconsumed_tail
                if inflater.eof or not (pending or chunk):
                    break
                yield None
            return out, inflater.eof and not inflater.unconsumed_tail
        except zlib.error:
            pass  # not what it says it is: judged as the bytes it is
    return (raw if len(raw) <= limit else raw[:limit]), len(raw) <= limit
