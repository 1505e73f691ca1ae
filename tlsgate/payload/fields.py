"""A request (or response) as the named values it carries: query and form fields, JSON leaves, headers, cookies, body.

Paths are tuples of names as the message spells them (`("json", "user",
"email")`); callers must sanitise the names before showing one, since a JSON
key can itself be a secret or a seeded identifier. Bounded: at most
`MAX_FIELDS` fields and `MAX_DEPTH` levels of JSON, no JSON parse of more
than `bounds.SEGMENT` bytes, and no value handed on in pieces larger than
that, so a hostile body costs a fixed amount of Python work per field and
linear C-speed work per byte.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

from tlsgate.payload import grpc
from tlsgate.payload.bounds import SEGMENT, Budget, windowed
from tlsgate.payload.decode import TOKEN
from tlsgate.tls import multipart
from tlsgate.tls.grpc_calls import grpc_call

MAX_FIELDS = 512
MAX_DEPTH = 8
# Headers that are protocol plumbing; everything else (custom X- headers, Authorization, Cookie) is a field.
PLUMBING = frozenset(
    (
        "host",
        "content-length",
        "content-type",
        "accept",
        "accept-encoding",
        "accept-language",
        "connection",
        "user-agent",
        "te",
        "transfer-encoding",
        "cache-control",
        "pragma",
        "origin",
        "referer",
        "upgrade",
        "sec-websocket-version",
        "expect",
    )
)


_TEXT_BYTES = bytes(range(32, 127)) + b"\r\n\t" + bytes(range(128, 256))  # UTF-8 sequences count as text
_JSONISH = re.compile(rb"\s*[\[{]")


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]
    text: str
    raw: bytes | None = None  # a binary body, judged as bytes rather than as an encoding
    segment: int = 0  # which piece of a value too large to judge at once (0: the first, or the whole value)
    cut: bool = False  # not the whole value: a piece of a larger one, or a value that ran past the inspection limit


def url_fields(url: str) -> list[Field]:
    parts = urlsplit(url)
    out = [Field(("path", str(i)), unquote(seg)) for i, seg in enumerate(parts.path.split("/")) if seg]
    out += [Field(("query", key), value) for key, value in parse_qsl(parts.query, keep_blank_values=True)]
    return out[:MAX_FIELDS]


def header_fields(headers: Iterable[tuple[str, str]]) -> list[Field]:
    out: list[Field] = []
    for name, value in headers:
        lower = name.lower()
        if lower in PLUMBING:
            continue
        if lower == "cookie":
            for part in value.split(";"):
                key, _, cookie = part.strip().partition("=")
                out.append(Field(("cookie", key), cookie))
        elif lower in ("authorization", "proxy-authorization"):
            scheme, _, credentials = value.strip().partition(" ")
            out.append(Field(("header", lower), credentials if credentials else scheme))
        else:
            out.append(Field(("header", lower), value))
    return out[:MAX_FIELDS]


def body_fields(
    content_type: str,
    body: bytes | bytearray,
    complete: bool = True,
    budget: Budget | None = None,
    message_encoding: str = "",
    limit: int = SEGMENT,
) -> list[Field]:
    """Structured bodies by their fields; anything else as one `body` field plus the blob-shaped runs in it."""
    steps = body_field_steps(content_type, body, complete, budget or Budget(), message_encoding, limit)
    return [f for f in steps if f is not None]


def body_field_steps(
    content_type: str,
    body: bytes | bytearray,
    complete: bool,
    budget: Budget,
    message_encoding: str = "",
    limit: int = SEGMENT,
) -> Iterator[Field | None]:
    """The fields of a body, one at a time, with `None` after each bounded piece of work.

    A body of up to `SEGMENT` bytes (every body mitmproxy buffers) is read by
    its type: form fields, JSON leaves, multipart parts, or text. A larger one
    (a tapped stream, an inflated upload) is never parsed as JSON; its form
    fields or multipart parts are read up to `MAX_FIELDS`, and the rest, like
    any other large body, is searched as text in segments of at most
    `SEGMENT` bytes (`Field.segment` counts them). A body cut at the byte
    limit (`complete=False`) is not parsed as JSON (it would not parse); its
    text is searched and its blob-shaped runs decoded.

    A gRPC or gRPC-Web body is read message by message (`tlsgate.payload.grpc`;
    `message_encoding` is the call's `grpc-encoding`, compressed messages
    inflate to at most `limit` bytes together); a body whose framing does not
    hold is judged as the bytes it is.
    """
    if not body:
        return
    ctype = content_type.split(";", 1)[0].strip().lower()
    if (kind := grpc_call(ctype)) is not None:
        framed = yield from _grpc(kind, body, complete, budget, message_encoding, limit)
        if framed:
            return
    if ctype == "application/x-www-form-urlencoded":
        yield from _form(body, budget, complete)
        return
    if complete and len(body) <= SEGMENT and (ctype == "application/json" or ctype.endswith("+json") or _JSONISH.match(body)):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if data is not None:
            yield from _json_leaves(data, ("json",), 0, [0], budget)
            return
    if ctype == "multipart/form-data" and multipart.boundary(content_type) is not None:
        yield from _multipart(content_type, body, budget, complete)
        return
    yield from _text(body, budget, complete)


def grpc_message_steps(
    wire: bytes, index: int, complete: bool, framed: bool, budget: Budget, encoding: str, limit: int
) -> Iterator[Field | None]:
    """One message of a call read as it arrived (`tlsgate.payload.grpc.Splitter`): its frame `wire` (header and
    message, or the first `limit` bytes of a longer one: `complete` False), its fields under `grpc[index]`, as
    in a whole body. Bytes that are not gRPC framing (`framed` False) are judged as the bytes they are."""
    if framed:
        done = yield from _grpc("grpc", wire, complete, budget, encoding, limit, first=index)
        if done:
            return
    yield from _text(wire, budget, complete)


def _grpc(
    kind: str, body: bytes | bytearray, complete: bool, budget: Budget, encoding: str, limit: int, first: int = 0
) -> Generator[Field | None, None, bool]:
    """Each message's protobuf leaves under `grpc[i]` and its field numbers; a message that is not protobuf (a
    JSON codec, a custom one) is searched as its text or bytes. False, having yielded nothing, when the body
    is not gRPC framing."""
    data = bytes(body)
    if kind == "grpc-web-text":
        decoded = grpc.web_text(data)
        if decoded is None:
            return False
        data = decoded
    framed = grpc.frames(data, encoding, limit, complete)
    if framed is None:
        return False
    yield None
    budget.capped |= framed.capped
    counter = grpc.Counter()
    count = [0]
    runs = [0]
    for index, (message, cut) in enumerate(framed.messages):
        if count[0] >= MAX_FIELDS:
            budget.capped.add("fields")
            break
        name = f"grpc[{first + index}]"
        leaves = grpc.walk(message, (name,), counter, cut)
        if leaves is None:  # not protobuf: its text or bytes, as any other body
            for item in _segments((name,), message, 0, len(message), cut_end=cut):
                yield item
                if item is not None and item.raw is None:
                    for run in _runs(item, runs, budget):  # named after their message, not `body`
                        yield run if run is None else dataclasses.replace(run, path=(name, run.path[-1]))
            continue
        for leaf in leaves:
            if count[0] >= MAX_FIELDS:
                budget.capped.add("fields")
                break
            count[0] += 1
            if leaf.raw is not None and len(leaf.raw) > SEGMENT:
                yield from _segments(leaf.path, leaf.raw, 0, len(leaf.raw), strip=False, cut_end=leaf.cut)
            else:
                yield Field(leaf.path, leaf.text, raw=leaf.raw, cut=leaf.cut)
        yield None
    if counter.capped:
        budget.capped.add("grpc_fields")
    if counter.deep:
        budget.capped.add("grpc_depth")
    if framed.rest:
        yield from _segments(("grpc", "rest"), framed.rest, 0, len(framed.rest), cut_end=not complete)
    return True


def _json_leaves(
    data: object, path: tuple[str, ...], depth: int, count: list[int], budget: Budget | None = None
) -> Iterator[Field]:
    """Leaves in document order, walked with an explicit stack (no generator chain per level)."""
    stack: list[tuple[object, tuple[str, ...], int]] = [(data, path, depth)]
    while stack and count[0] < MAX_FIELDS:
        node, where, level = stack.pop()
        if level > MAX_DEPTH:
            if budget is not None and isinstance(node, dict | list) and node:
                budget.capped.add("json_depth")
            continue
        if isinstance(node, dict):
            items = list(itertools.islice(node.items(), MAX_FIELDS))
            stack.extend((value, (*where, str(key)), level + 1) for key, value in reversed(items))
        elif isinstance(node, list):
            items = list(enumerate(node[:MAX_FIELDS]))
            stack.extend((item, (*where, f"[{index}]"), level + 1) for index, item in reversed(items))
        elif node is not None and not isinstance(node, bool):
            count[0] += 1
            yield Field(where, str(node))
    if stack and budget is not None:
        budget.capped.add("fields")


def _form(body: bytes | bytearray, budget: Budget, complete: bool) -> Iterator[Field | None]:
    """`parse_qsl` one field at a time: the first MAX_FIELDS fields by name, the rest of the body as text.

    In a body cut at the limit, the last field is only the beginning of its value (`cut`)."""
    pos, size, fields, pieces = 0, len(body), 0, 0
    while pos < size:
        if fields >= MAX_FIELDS or pieces >= 4 * MAX_FIELDS:  # empty pieces (&&&&) are counted too
            budget.capped.add("fields")
            yield from _segments(("body",), body, pos, size, cut_end=not complete)
            return
        amp = body.find(b"&", pos)
        end = size if amp < 0 else amp
        pieces += 1
        if end > pos:
            fields += 1
            equals = body.find(b"=", pos, min(end, pos + SEGMENT))
            if end - pos <= SEGMENT:
                name, _, value = bytes(body[pos:end]).decode("utf-8", "replace").partition("=")
                yield Field(("form", unquote_plus(name)), unquote_plus(value), cut=not complete and end == size)
            else:  # one huge value: its name, and the value in segments
                name_end = equals if equals >= 0 else pos
                name = unquote_plus(bytes(body[pos:name_end]).decode("utf-8", "replace"))
                start = name_end + 1 if equals >= 0 else pos
                last = not complete and end == size
                yield from _segments(("form", name), body, start, end, unquote=True, strip=False, cut_end=last)
        pos = end + 1


def _multipart(content_type: str, body: bytes | bytearray, budget: Budget, complete: bool) -> Iterator[Field | None]:
    """Each part's content under its field name (`tlsgate.tls.multipart` reads the names); parts without a name,
    parts whose header block could not be read and whatever follows the last part read are searched as text."""
    last = count = 0
    for part in multipart.parts(content_type, body, MAX_FIELDS):
        if part.start > last + 256:  # a preamble, or the header block of a part that could not be read
            yield from _segments(("body",), body, last, part.start)
        path = ("form", part.name) if part.name is not None else ("body",)
        yield from _segments(path, body, part.start, part.end, strip=False, cut_end=not complete and part.end == len(body))
        last, count = part.end, count + 1
    if len(body) - last > 256:  # parts past MAX_FIELDS, or an epilogue: searched as text
        if count >= MAX_FIELDS:
            budget.capped.add("fields")
        yield from _segments(("body",), body, last, len(body), cut_end=not complete)


def _text(body: bytes | bytearray, budget: Budget, complete: bool) -> Iterator[Field | None]:
    """The whole body as `body` (in segments when it is large), its bytes as well when it could be ciphertext,
    and its blob-shaped runs (`body.runN`), at most MAX_FIELDS - 1 of them."""
    runs = [0]
    whole = len(body) <= SEGMENT
    for item in _segments(("body",), body, 0, len(body), cut_end=not complete):
        yield item
        if item is None or item.raw is not None:
            continue
        aligned = len(body) % 16 == 0 and len(body) >= 32
        if whole and (aligned or not _utf8(bytes(body[:4096]))):  # binary can pass for text: judge its bytes as well
            yield Field(("body", "bytes"), "", raw=bytes(body), cut=not complete)
        yield from _runs(item, runs, budget)


def _utf8(sample: bytes) -> bool:
    """Valid UTF-8, but for a sequence the sample cut short at its end."""
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(sample) - 3
    return True


def _runs(item: Field, count: list[int], budget: Budget) -> Iterator[Field | None]:
    """A run reaching the end of a cut value is only the beginning of the run (`cut`)."""
    text = item.text
    for found in windowed(TOKEN, text):
        if found is None:
            yield None
            continue
        if count[0] >= MAX_FIELDS - 1:
            budget.capped.add("runs")
            return
        token = found.group(0)
        if token != text:
            yield Field(("body", f"run{count[0]}"), token, cut=item.cut and found.end() >= len(text.rstrip()))
            count[0] += 1


def _segments(
    path: tuple[str, ...],
    body: bytes | bytearray,
    start: int,
    end: int,
    unquote: bool = False,
    strip: bool = True,
    cut_end: bool = False,
) -> Iterator[Field | None]:
    """`body[start:end]` as fields of at most SEGMENT bytes, cut after a separator near each limit where there
    is one (so a key, a token or an identifier is rarely split): text, or bytes when it is binary.

    Every piece but the last of a value split here is `cut`; so is the last when the value ran past the
    inspection limit (`cut_end`)."""
    index = 0
    while start < end:
        cut = end if end - start <= SEGMENT else _cut(body, start, start + SEGMENT)
        chunk = bytes(body[start:cut])
        sample = chunk[:4096]
        partial = cut < end or cut_end
        if len(sample.translate(None, _TEXT_BYTES)) > 0.05 * len(sample):  # more than 5% control bytes: binary
            yield Field(path, "", raw=chunk, segment=index, cut=partial)
        else:
            text = chunk.decode("utf-8", "replace")
            text = unquote_plus(text) if unquote else text
            yield Field(path, text.strip() if strip else text, segment=index, cut=partial)
        index += 1
        start = cut
        yield None


_SEPARATORS = (b"\n", b"&", b",", b'"', b";", b"\0", b">")


def _cut(body: bytes | bytearray, start: int, limit: int) -> int:
    """Where a segment ending near `limit` should end: after the last separator in its last 8 KiB (a space if
    nothing else), else at `limit`."""
    low = max(start + 1, limit - 8192)
    best = max(body.rfind(sep, low, limit) for sep in _SEPARATORS)
    if best < 0:
        best = body.rfind(b" ", low, limit)
    return best + 1 if best >= 0 else limit
