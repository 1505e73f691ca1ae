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
    """At most `limit` bytes of the body as the app wrote it (gzip, deflate, br and zstd decoded, stacked ones in
    turn, never past `limit`), and whether that is all of it."""
    return drain(inflate_steps(raw, encoding, limit))


def inflate_steps(raw: bytes | bytearray, encoding: str, limit: int) -> Steps[tuple[bytes | bytearray, bool]]:
    """`bounded_body`, decoding at most `SEGMENT` bytes per step."""
    decoder = Decoder(encoding)
    if not decoder.stages:
        return (raw if len(raw) <= limit else raw[:limit]), len(raw) <= limit
    decoder.push(bytes(raw))
    out = bytearray()
    try:
        while len(out) < limit:
            chunk = decoder.pull(min(SEGMENT, limit - len(out)))
            out += chunk
            if decoder.done or not chunk:
                break
            yield None
    except DecodeError:
        return (raw if len(raw) <= limit else raw[:limit]), len(raw) <= limit  # not what it says: judged as the bytes
    complete = decoder.done and decoder.drained() and len(out) <= limit
    del out[limit:]
    return out, complete


# -- Content-Encoding, decoded incrementally with bounded output ------------------------------------------

ZSTD_SLICE = 16  # compressed bytes fed to zstd at once: one zstd block (128 KiB out) needs 4 bytes in, so one
# feed makes at most 4 blocks (512 KiB) however well the input compresses; zstandard has no output limit


class DecodeError(ValueError):
    """The body is not what its Content-Encoding says."""


class _Stage:
    """One Content-Encoding undone: `push` compressed bytes, `pull` at most about `size` decoded bytes."""

    done = False

    def push(self, data: bytes) -> None:
        raise NotImplementedError

    def pull(self, size: int) -> bytes:
        raise NotImplementedError

    def drained(self) -> bool:
        """Nothing pushed is still waiting to be pulled."""
        raise NotImplementedError


class _Zlib(_Stage):
    def __init__(self) -> None:
        self.inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
        self.pending = b""

    def push(self, data: bytes) -> None:
        self.pending += data

    def pull(self, size: int) -> bytes:
        if self.done or not self.pending:
            return b""
        try:
            out = self.inflater.decompress(self.pending, size)
        except zlib.error as exc:
            raise DecodeError(str(exc)) from None
        self.pending = self.inflater.unconsumed_tail
        self.done = self.inflater.eof
        return out

    def drained(self) -> bool:
        return not self.pending


class _Brotli(_Stage):
    def __init__(self) -> None:
        import brotli  # type: ignore[import-untyped]  # mitmproxy's own dependency

        self.error = brotli.error
        self.decompressor = brotli.Decompressor()
        self.pending = b""

    def push(self, data: bytes) -> None:
        self.pending += data

    def pull(self, size: int) -> bytes:
        if self.done:
            return b""
        try:
            if self.decompressor.can_accept_more_data():
                if not self.pending:
                    return b""
                data, self.pending = self.pending, b""
                out = self.decompressor.process(data, output_buffer_limit=size)
            else:  # output held back by the last limit: drained with empty input first, as brotli requires
                out = self.decompressor.process(b"", output_buffer_limit=size)
        except self.error as exc:
            raise DecodeError(str(exc)) from None
        self.done = self.decompressor.is_finished()
        return out

    def drained(self) -> bool:
        return not self.pending and self.decompressor.can_accept_more_data()


class _Zstd(_Stage):
    def __init__(self) -> None:
        import zstandard  # mitmproxy's own dependency

        self.error = zstandard.ZstdError
        self.decompressor = zstandard.ZstdDecompressor().decompressobj()
        self.pending = b""

    def push(self, data: bytes) -> None:
        self.pending += data

    def pull(self, size: int) -> bytes:
        out = bytearray()
        pending = self.pending
        at = 0
        try:
            while len(out) < size and at < len(pending) and not self.done:
                out += self.decompressor.decompress(pending[at : at + ZSTD_SLICE])
                at += ZSTD_SLICE
                self.done = self.decompressor.eof
        except self.error as exc:
            raise DecodeError(str(exc)) from None
        self.pending = pending[at:]
        return bytes(out)

    def drained(self) -> bool:
        return not self.pending


_STAGES: dict[str, type[_Stage]] = {"gzip": _Zlib, "x-gzip": _Zlib, "deflate": _Zlib, "br": _Brotli, "zstd": _Zstd}


class Decoder:
    """A body's Content-Encoding (`gzip, br` too: undone last-applied first) decoded as bytes arrive, each stage
    producing only what is pulled, so a decompression bomb costs what the limit allows, never what it expands to.

    An encoding it does not know (`identity`, `compress`, a typo) leaves `stages` empty: the body is judged as
    the bytes it is. Memory: the compressed bytes pushed and not yet consumed, plus one pull's output per stage
    (zstd: up to `ZSTD_SLICE` input's worth, at most 512 KiB, beyond the pull).
    """

    def __init__(self, encoding: str) -> None:
        names = [name.strip().lower() for name in encoding.split(",") if name.strip()]
        names = [name for name in names if name != "identity"]
        known = bool(names) and all(name in _STAGES for name in names) and len(names) <= 4
        self.stages = [_STAGES[name]() for name in reversed(names)] if known else []

    def push(self, data: bytes) -> None:
        if self.stages:
            self.stages[0].push(data)

    def pull(self, size: int) -> bytes:
        """At most about `size` decoded bytes from what was pushed so far; raises DecodeError."""
        return self._pull(len(self.stages) - 1, size)

    def _pull(self, index: int, size: int) -> bytes:
        stage = self.stages[index]
        out = stage.pull(size)
        while index > 0 and len(out) < size and not stage.done and stage.drained():
            more = self._pull(index - 1, SEGMENT)
            if not more:
                break
            stage.push(more)
            out += stage.pull(size - len(out))
        return out

    @property
    def done(self) -> bool:
        """The outermost stage ended (the body held no more than what was decoded)."""
        return bool(self.stages) and self.stages[-1].done

    def drained(self) -> bool:
        return all(stage.drained() for stage in self.stages)
