"""The parts of a `multipart/form-data` body (RFC 7578 over RFC 2046), as byte offsets: a wire fact two layers read.

Payload inspection judges each part's content under its field name, and the
cleartext check names credential fields of a plain-HTTP upload; both used to
find the name with a pattern (`name="..."`) that also matched inside
`filename="token"` and so reported a field `token` the body never had.
Here the `Content-Disposition` parameters are parsed as the standard library's
mail parser parses MIME parameters: quoted strings with backslash escapes,
`;` inside quotes, parameter names in any case and order, RFC 2231
`name*=UTF-8''...` values. mitmproxy's own decoder
(`mitmproxy.net.http.multipart.decode_multipart`) reads this one case right but
looks for the name on the part's first header line only, drops the line breaks
inside values and splits the whole body at once; and nothing below the add-ons
may import mitmproxy.

Bounded: at most `max_parts` parts, a part's header block is read only within
`MAX_HEAD` bytes, and every search is a C-speed `find`; offsets, not copies,
are handed back, so a part of 16 MiB costs nothing until its reader slices it.
"""

from __future__ import annotations

import email.message
import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_HEAD = 8192  # a part's header block; a longer one is not parsed (its bytes are still the part's content)
MAX_BOUNDARY = 200  # RFC 2046 allows 70; leniency has a limit
_FOLD = re.compile(r"\r?\n[ \t]+")


@dataclass(frozen=True)
class Part:
    """One body part: its field name (None when it has none or its header block could not be read), and where
    its content lies in the body (`start` to `end`, without the line break before the next delimiter)."""

    name: str | None
    filename: str | None
    start: int
    end: int
    head_read: bool = True


def header_param(value: str, param: str, header: str = "content-disposition") -> str | None:
    """One parameter of a MIME header value (`form-data; name="a\\"b"` -> `a"b`), or None."""
    message = email.message.Message()
    try:
        message[header] = value
        found = message.get_param(param, header=header)
    except (ValueError, TypeError, IndexError, LookupError):
        return None
    if found is None or isinstance(found, str):
        return found
    try:
        return email.utils.collapse_rfc2231_value(found)  # name*=charset'lang'percent-encoded
    except (LookupError, ValueError, TypeError):
        return None


def boundary(content_type: str) -> bytes | None:
    """The boundary a `multipart/...` Content-Type declares, as bytes."""
    found = header_param(content_type[:1024], "boundary", "content-type")
    if not found or len(found) > MAX_BOUNDARY:
        return None
    return found.encode("utf-8", "replace")


def disposition(head: bytes) -> tuple[str | None, str | None]:
    """(name, filename) from a part's header block, whichever line and order they come in."""
    text = _FOLD.sub(" ", head.decode("utf-8", "replace"))  # RFC 7578: names may be UTF-8 as they are
    for line in text.splitlines():
        field, sep, value = line.partition(":")
        if sep and field.strip().lower() == "content-disposition":
            value = value.strip()
            return header_param(value, "name"), header_param(value, "filename")
    return None, None


def parts(content_type: str, body: bytes | bytearray, max_parts: int) -> Iterator[Part]:
    """The body's parts in order, at most `max_parts`; a body cut short ends with its last part cut short."""
    mark = boundary(content_type)
    if mark is None:
        return
    delimiter = b"--" + mark
    size = len(body)
    at = body.find(delimiter)
    count = 0
    while at >= 0 and count < max_parts:
        after = at + len(delimiter)
        if body[after : after + 2] == b"--":
            return  # the close delimiter
        eol = body.find(b"\n", after, after + 1024)  # transport padding, then the line break
        if eol < 0:
            return
        following = body.find(b"\n" + delimiter, eol)
        end = size if following < 0 else following
        if end > eol and body[end - 1 : end] == b"\r":
            end -= 1
        limit = min(end, eol + 1 + MAX_HEAD)
        blank = body.find(b"\r\n\r\n", eol - 1, limit + 4) if body[eol - 1 : eol] == b"\r" else -1
        if blank >= 0:
            head, start = body[eol + 1 : blank], blank + 4
        else:
            blank = body.find(b"\n\n", eol, limit + 2)
            head, start = (body[eol + 1 : blank], blank + 2) if blank >= 0 else (b"", -1)
        if start < 0:
            yield Part(None, None, eol + 1, end, head_read=False)
        else:
            name, filename = disposition(bytes(head))
            yield Part(name, filename, min(start, end), end)
        count += 1
        at = -1 if following < 0 else following + 1


def names(content_type: str, body: bytes, max_parts: int = 512) -> list[str]:
    """The field names of a multipart body, in order (parts without one are left out)."""
    return [part.name for part in parts(content_type, body, max_parts) if part.name is not None]
