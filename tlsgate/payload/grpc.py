"""gRPC and gRPC-Web request bodies as the values they carry, read without the app's .proto files.

An app's gRPC call is a series of length-prefixed messages (one flag byte,
bit 0 set when the message is compressed with the call's `grpc-encoding`;
then a 4-byte big-endian length) whose bytes are protobuf. Without the
schema, a protobuf message is still a list of (field number, wire type,
value): varints, fixed 32- and 64-bit numbers and length-delimited values,
the last being a string, bytes or a nested message, which the wire does not
say. A length-delimited value is read as text when it is UTF-8 without control
characters (a nested message almost always begins with one: fields 1 to 3 have
tag bytes below 0x20); else as a nested message when every one of its bytes
parses as one, without groups and with field numbers below 2^20; else as text
when it is printable UTF-8 with line breaks; else as bytes. Random bytes parse
as protobuf now and then (about 0.1% of 48-byte values), so a nested value
that looks like ciphertext, with no text field and none spanning half of it,
is judged as bytes as well (`_maybe_random`). So ciphertext in a
`bytes` field reaches the ECB detector as bytes, a base64 token in a `string`
field reaches it as text, and a nested message's fields have paths of their
own (`grpc[0].3.1`: message 0, field 3, its field 1; a repeated field's values
share their path).

Everything here is bounded by what it is given: at most `MAX_MESSAGES`
messages framed, `MAX_PARSED` protobuf fields parsed and `MAX_DEPTH` levels
of nesting per body, a compressed message inflated to at most the caller's
byte limit (a bomb stops there), varints of at most 10 bytes, and lengths
that run past the data are a failed parse, never an allocation. A body that
is not gRPC framing after all is reported as such (`frames` returns None)
and the caller judges it as the bytes it is.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from tlsgate.payload.ecb import cipher_shaped

MAX_MESSAGES = 1024  # messages framed per body; the rest is searched as bytes
MAX_PARSED = 4096  # protobuf fields parsed per body, across messages and nesting levels
MAX_DEPTH = 16  # nesting levels walked (Firestore's Write > Document > map > Value > ... is about 10)
MAX_FIELD_NUMBER = 1 << 20  # a nested message with a larger field number is taken for bytes (real schemas stay far below)


@dataclass
class Frames:
    """What a body's framing yielded: each message's bytes (inflated when it was compressed), and what was left."""

    messages: list[tuple[bytes, bool]] = field(default_factory=list)  # (bytes, cut: not the whole message)
    rest: bytes = b""  # bytes past MAX_MESSAGES, searched as bytes by the caller
    capped: set[str] = field(default_factory=set)
    compressed: int = 0  # messages that were compressed


_B64_PIECE = re.compile(rb"[A-Za-z0-9+/]+={0,2}")


def web_text(body: bytes) -> bytes | None:
    """A grpc-web-text body's bytes: base64, where each flushed piece carries its own padding."""
    out = bytearray()
    compact = bytes(body).translate(None, b" \t\r\n")
    pos = 0
    for piece in _B64_PIECE.finditer(compact):
        if piece.start() != pos:
            return None
        pos = piece.end()
        chunk = piece.group(0)
        usable = len(chunk) - len(chunk) % 4 if not chunk.endswith(b"=") else len(chunk)
        try:
            out += base64.b64decode(chunk[:usable], validate=True)
        except (binascii.Error, ValueError):
            return None
        if usable < len(chunk):
            break  # a body cut at the limit ends inside a group
    return bytes(out) if pos >= len(compact) - 3 else None


def frames(body: bytes, encoding: str, limit: int, complete: bool) -> Frames | None:
    """The length-prefixed messages of a request body, or None when its bytes are not gRPC framing.

    `limit` bounds the bytes all messages inflate to together. A trailers frame (gRPC-Web's flag 0x80) is
    taken as one more message: a request has none, so whatever it holds is searched like the rest (nothing
    hides in or behind one). A message the body
    ends inside is returned as far as it goes, `cut`, when the body was cut at the limit (`complete` False);
    in a whole body it means the bytes are not gRPC framing.
    """
    out = Frames()
    pos, size, inflated = 0, len(body), 0
    encoding = encoding.strip().lower()
    while pos < size:
        if len(out.messages) >= MAX_MESSAGES:
            out.capped.add("grpc_messages")
            out.rest = body[pos:]
            break
        if size - pos < 5:
            if complete:
                return None
            break
        flag = body[pos]
        length = int.from_bytes(body[pos + 1 : pos + 5], "big")
        if flag & 0x7E:
            return None
        start, end = pos + 5, pos + 5 + length
        cut = end > size
        if cut and complete:
            return None
        data = body[start:end]
        if flag & 1:
            out.compressed += 1
            room = max(0, limit - inflated)
            result = inflate(data, encoding, room)
            if result is None:  # not what grpc-encoding says: judged as the bytes it is
                out.messages.append((data, cut))
            else:
                plain, whole = result
                inflated += len(plain)
                if not whole:
                    out.capped.add("grpc_inflated")
                out.messages.append((plain, cut or not whole))
        else:
            out.messages.append((data, cut))
        pos = end
    return out


def inflate(data: bytes, encoding: str, limit: int) -> tuple[bytes, bool] | None:
    """At most `limit` bytes of a compressed message (gzip or zlib "deflate", raw deflate tolerated), and whether
    that is all of it; None for an encoding tlsgate cannot undo or bytes that are not what it says."""
    if encoding not in ("gzip", "deflate", "x-gzip"):
        return None
    for wbits in (47, -15):  # gzip or zlib by the header; then raw deflate, as some clients send it
        inflater = zlib.decompressobj(wbits=wbits)
        try:
            plain = inflater.decompress(data, limit) if limit > 0 else b""
        except zlib.error:
            continue
        return plain, inflater.eof and not inflater.unconsumed_tail
    return None


# -- protobuf wire format ------------------------------------------------------------------------------

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


class Counter:
    """Fields parsed so far for one body: every parse, successful or not, spends from it."""

    def __init__(self, limit: int = MAX_PARSED) -> None:
        self.left = limit
        self.capped = False  # MAX_PARSED reached
        self.deep = False  # MAX_DEPTH reached


def _varint(data: memoryview, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    for index in range(pos, min(pos + 10, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value, index + 1) if value < 1 << 64 else None
        shift += 7
    return None  # ran past the data, or longer than 10 bytes


Entry = tuple[int, int, int | memoryview]  # (field number, wire type, value: a view into the message, not a copy)


def parse(message: bytes | memoryview, counter: Counter, strict: bool) -> tuple[list[Entry], int] | None:
    """One level of a protobuf message: its entries, and how many bytes they took (all of them, or up to the
    first byte that did not parse).

    Strict (a value tried as a nested message): None unless all bytes parse into at least one entry with
    plausible field numbers. Lenient (a gRPC message, which is protobuf by contract): the entries up to the
    first byte that does not parse, None only when not even one does. Groups (deprecated, wire types 3 and
    4) are refused: no current encoder writes them, and random bytes would otherwise nest as deep as they like.
    """
    data = memoryview(message)  # values are views: nesting costs no copies, whatever the depth
    entries: list[Entry] = []
    pos, size = 0, len(data)
    while pos < size:
        if counter.left <= 0:
            counter.capped = True
            return None if strict else ((entries, pos) if entries else None)
        counter.left -= 1
        tag = _varint(data, pos)
        if tag is None:
            break
        key, after = tag
        number, wire = key >> 3, key & 7
        if number == 0 or number >= 1 << 29 or (strict and number > MAX_FIELD_NUMBER):
            break
        value: int | memoryview
        if wire == VARINT:
            read = _varint(data, after)
            if read is None:
                break
            value, after = read
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if after + width > size:
                break
            value, after = int.from_bytes(data[after : after + width], "little"), after + width
        elif wire == LENGTH:
            read = _varint(data, after)
            if read is None or read[0] > size - read[1]:
                break
            length, start = read
            value, after = data[start : start + length], start + length
        else:  # groups and the undefined wire types 6, 7
            break
        entries.append((number, wire, value))
        pos = after
    if strict:
        return (entries, pos) if pos >= size and entries else None
    return (entries, pos) if entries else None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text_of(value: bytes | memoryview) -> str | None:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class Leaf:
    """One value of a walked message: `text` for numbers and strings, `raw` for bytes."""

    path: tuple[str, ...]
    text: str = ""
    raw: bytes | None = None
    cut: bool = False


def _maybe_random(value: memoryview, entries: list[Entry]) -> bool:
    """Whether a value that parsed as a nested message may be ciphertext after all: it looks random, and none of
    its fields is a word of text or most of the value. Real nested messages carry names, keys or paths (a map
    entry's key, a document's name), or wrap one large value (a ciphertext beside its timestamp: the ciphertext
    is judged on its own); random bytes that happen to parse carry no 4-character text field but by 2% chance,
    and seldom one field that spans half of them."""
    for _, wire, child in entries:
        if wire == LENGTH and not isinstance(child, int) and len(child) >= 4:
            if 2 * len(child) >= len(value):
                return False
            text = text_of(child)
            if text is not None and _CONTROL.search(text) is None:
                return False
    return cipher_shaped(bytes(value))  # last: the costliest test


def walk(message: bytes, path: tuple[str, ...], counter: Counter, cut: bool = False) -> Iterator[Leaf] | None:
    """The leaves of one gRPC message in wire order, or None when its bytes are not protobuf (then the caller
    judges them as bytes). `cut`: the message was cut at the limit, so its last leaf may be a piece only."""
    top = parse(message, counter, strict=False)  # a view of `message`: the leaves copy only what they hand on
    if top is None:
        return None
    entries, consumed = top
    if consumed < len(message) and not cut and not counter.capped:
        return None  # a whole message that does not parse whole is not protobuf (text, JSON, another codec)
    return _leaves(entries, consumed, message, path, counter, cut)


def _leaves(
    entries: list[Entry], consumed: int, message: bytes, path: tuple[str, ...], counter: Counter, cut: bool
) -> Iterator[Leaf]:
    """Depth first, with an explicit stack: a nesting bomb costs one list entry per level, not a frame."""
    stack: list[tuple[list[Entry], int, tuple[str, ...], int]] = [(entries, 0, path, 0)]
    while stack:
        items, index, where, depth = stack.pop()
        if index >= len(items):
            continue
        stack.append((items, index + 1, where, depth))
        number, wire, value = items[index]
        here = (*where, str(number))
        if isinstance(value, int):
            yield Leaf(here, str(value))
            continue
        if not value:
            continue
        text = text_of(value)
        if text is not None and _CONTROL.search(text) is None:  # a string: nested messages start with a control byte
            yield Leaf(here, text)
            continue
        if depth + 1 >= MAX_DEPTH:
            counter.deep = True
            nested = None
        else:
            nested = parse(value, counter, strict=True)
        if nested is not None:
            if _maybe_random(value, nested[0]):  # random bytes parse as protobuf now and then: as bytes too
                yield Leaf(here, raw=bytes(value))
            stack.append((nested[0], 0, here, depth + 1))
        elif text is not None and text.replace("\r", "").replace("\n", "").replace("\t", "").isprintable():
            yield Leaf(here, text)
        else:
            yield Leaf(here, raw=bytes(value))
    if consumed < len(message):  # the bytes after the last field that parsed: a message cut at the limit
        rest = bytes(message[consumed:])
        text = text_of(rest)
        if text is not None and text.replace("\r", "").replace("\n", "").replace("\t", "").isprintable():
            yield Leaf((*path, "rest"), text, cut=cut)
        else:
            yield Leaf((*path, "rest"), raw=rest, cut=cut)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(fields: list[tuple[int, int | bytes | str]]) -> bytes:
    """A protobuf message from (field number, value): ints as varints, str and bytes length-delimited. For tests,
    the corpus and benchmarks, which build real wire bytes without generated code."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _encode_varint(number << 3 | VARINT) + _encode_varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _encode_varint(number << 3 | LENGTH) + _encode_varint(len(data)) + data
    return bytes(out)


def frame(message: bytes, compressed: bool = False, trailers: bool = False) -> bytes:
    """One length-prefixed message (gRPC and gRPC-Web framing)."""
    flag = (0x80 if trailers else 0) | (1 if compressed else 0)
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


# -- a call's messages as they arrive --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """What `Splitter` hands on, in wire order: `wire` is forwarded as it is once `message` (if any) is judged.

    `message` is None for bytes that pass unjudged: the tail of a message longer than the limit, whose first
    `limit` bytes were judged (`cut`). `framed` is False for bytes read after the framing broke (a flag byte
    gRPC does not define), or a body that ended inside a message header: judged as the bytes they are.
    """

    wire: bytes
    message: bytes | None = None
    index: int = -1
    compressed: bool = False
    cut: bool = False
    framed: bool = True
    length: int = 0  # the message's length as its header says (the whole message, even when `cut`)


class Splitter:
    """A call's length-prefixed messages cut out of its body as chunks arrive, whatever the chunking.

    Memory: what is held between chunks is one incomplete message (its header and at most `limit` bytes of
    it); a longer message is handed on as soon as its first `limit` bytes are in (`cut`), and the rest of it
    passes as it comes. Work per chunk is linear in the chunk (no re-scanning of held bytes).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = bytearray()
        self.index = 0  # the next message's index in the call
        self.skip = 0  # bytes of an over-long message still to pass unjudged
        self.broken = False  # the framing broke: what follows is judged as bytes, `limit` at a time

    def feed(self, chunk: bytes) -> list[Piece]:
        held = self.held
        held += chunk
        out: list[Piece] = []
        pos, size = 0, len(held)
        while pos < size:
            if self.skip:
                take = min(self.skip, size - pos)
                out.append(Piece(bytes(held[pos : pos + take]), length=take))
                self.skip -= take
                pos += take
                continue
            if self.broken:  # judged as it comes, never held for more: the app may be waiting for an answer
                take = min(self.limit, size - pos)
                data = bytes(held[pos : pos + take])
                out.append(Piece(data, data, self.index, framed=False, length=take))
                self.index += 1
                pos += take
                continue
            if size - pos < 5:
                break
            flag = held[pos]
            length = int.from_bytes(held[pos + 1 : pos + 5], "big")
            if flag & 0x7E:
                self.broken = True
                continue
            whole = length <= self.limit
            need = 5 + (length if whole else self.limit)
            if size - pos < need:
                break
            wire = bytes(held[pos : pos + need])
            out.append(Piece(wire, wire[5:], self.index, bool(flag & 1), cut=not whole, length=length))
            self.index += 1
            self.skip = 0 if whole else length - self.limit
            pos += need
        del held[:pos]
        return out

    def end(self) -> list[Piece]:
        """The body ended: whatever is held (a message it ended inside) is handed on, `cut`, to be judged."""
        out = self.feed(b"")
        held, self.held = bytes(self.held), bytearray()
        if not held:
            return out
        if self.broken or len(held) < 5:
            out.append(Piece(held, held, self.index, cut=True, framed=False, length=len(held)))
        else:
            length = int.from_bytes(held[1:5], "big")
            out.append(Piece(held, held[5:], self.index, bool(held[0] & 1), cut=True, length=length))
        self.index += 1
        return out

    @property
    def held_bytes(self) -> int:
        return len(self.held)


class Boundaries:
    """Where the messages of a stream end, without holding any of it: whether what has passed so far ends
    between two messages (where a gRPC status may follow) or inside one. Constant memory, work per message."""

    def __init__(self) -> None:
        self.header = bytearray()  # an incomplete 5-byte message header
        self.left = 0  # bytes of the current message still to come

    def feed(self, chunk: bytes) -> None:
        pos, size = 0, len(chunk)
        while pos < size:
            if self.left:
                take = min(self.left, size - pos)
                self.left -= take
                pos += take
                continue
            take = min(5 - len(self.header), size - pos)
            self.header += chunk[pos : pos + take]
            pos += take
            if len(self.header) == 5:
                self.left = int.from_bytes(self.header[1:5], "big")
                self.header.clear()

    @property
    def between(self) -> bool:
        return not self.left and not self.header
