"""A request (or response) as the named values it carries: query and form fields, JSON leaves, headers, cookies, body.

Paths are tuples of names as the message spells them (`("json", "user",
"email")`); callers must sanitise the names before showing one, since a JSON
key can itself be a secret or a seeded identifier. Bounded: at most
`MAX_FIELDS` fields and `MAX_DEPTH` levels of JSON, so a hostile body costs a
fixed amount of work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from proxy.payload.decode import TOKEN

MAX_FIELDS = 512
MAX_DEPTH = 8
# Headers that are protocol plumbing; everything else (custom X- headers, Authorization, Cookie) is a field.
PLUMBING = frozenset(
    (
        "host", "content-length", "content-type", "accept", "accept-encoding", "accept-language", "connection",
        "user-agent", "te", "transfer-encoding", "cache-control", "pragma", "origin", "referer", "upgrade",
        "sec-websocket-version", "expect",
    )
)


_TEXT_BYTES = bytes(range(32, 127)) + b"\r\n\t" + bytes(range(128, 256))  # UTF-8 sequences count as text


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]
    text: str
    raw: bytes | None = None  # a binary body, judged as bytes rather than as an encoding
    cut: bool = False  # the value ran past the inspection limit: what is here is its beginning only


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


def body_fields(content_type: str, body: bytes, complete: bool = True) -> list[Field]:
    """Structured bodies by their fields; anything else as one `body` field plus the blob-shaped runs in it.

    A body cut at the byte limit (`complete=False`) is not parsed as JSON (it
    would not parse); its text is searched and its blob-shaped runs decoded.
    """
    if not body:
        return []
    ctype = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", "replace")
    if ctype == "application/x-www-form-urlencoded":
        pairs = parse_qsl(text, keep_blank_values=True)[:MAX_FIELDS]
        return [Field(("form", k), v, cut=not complete and i == len(pairs) - 1) for i, (k, v) in enumerate(pairs)]
    if complete and (ctype == "application/json" or ctype.endswith("+json") or text.lstrip()[:1] in ("{", "[")):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if data is not None:
            return list(_json_leaves(data, ("json",), 0, [0]))
    if ctype == "multipart/form-data":
        return _multipart(content_type, text)
    sample = body[:4096]
    cut = not complete
    if len(sample.translate(None, _TEXT_BYTES)) > 0.05 * len(sample):  # more than 5% control bytes: binary
        return [Field(("body",), "", raw=body, cut=cut)]
    out = [Field(("body",), text.strip(), cut=cut)]
    if (len(body) % 16 == 0 and len(body) >= 32) or not _utf8(sample):  # binary can pass for text: judge its bytes too
        out.append(Field(("body", "bytes"), "", raw=body, cut=cut))
    stripped = text.rstrip()
    for index, found in enumerate(TOKEN.finditer(text)):
        if index >= MAX_FIELDS - 1:
            break
        if found.group(0) != text.strip():
            out.append(Field(("body", f"run{index}"), found.group(0), cut=cut and found.end() >= len(stripped)))
    return out


def _utf8(sample: bytes) -> bool:
    """Valid UTF-8, but for a sequence the sample cut short at its end."""
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(sample) - 3
    return True


def _json_leaves(data: object, path: tuple[str, ...], depth: int, count: list[int]) -> Iterator[Field]:
    """Leaves in document order, walked with an explicit stack (no generator chain per level)."""
    stack: list[tuple[object, tuple[str, ...], int]] = [(data, path, depth)]
    while stack and count[0] < MAX_FIELDS:
        node, where, level = stack.pop()
        if level > MAX_DEPTH:
            continue
        if isinstance(node, dict):
            stack.extend((value, (*where, str(key)), level + 1) for key, value in reversed(list(node.items())[:MAX_FIELDS]))
        elif isinstance(node, list):
            items = list(enumerate(node[:MAX_FIELDS]))
            stack.extend((item, (*where, f"[{index}]"), level + 1) for index, item in reversed(items))
        elif node is not None and not isinstance(node, bool):
            count[0] += 1
            yield Field(where, str(node))


_NAME = re.compile(r'name="([^"]{1,64})"')
_BOUNDARY = re.compile(r'boundary="?([^";]{1,70})"?')


def _multipart(content_type: str, text: str) -> list[Field]:
    """Parts split on the declared boundary (linear: no pattern spans parts); each part's `name` and content."""
    found = _BOUNDARY.search(content_type)
    if not found:
        return []
    out: list[Field] = []
    for part in text.split("--" + found.group(1))[1 : MAX_FIELDS + 1]:
        head, sep, content = part.partition("\r\n\r\n")
        if not sep:
            head, sep, content = part.partition("\n\n")
        name = _NAME.search(head)
        if sep and name:
            out.append(Field(("form", name.group(1)), content.removesuffix("\r\n").removesuffix("\n")))
    return out
