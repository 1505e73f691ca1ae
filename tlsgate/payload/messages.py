"""A WebSocket message as the fields a request body would give: the same detectors, the same field paths.

Apps rarely send bare JSON over a WebSocket. The framings seen in the wild
wrap it, and each wrapper is taken off so the JSON inside is read by its
leaves (`json.[1].text`), as in a request body, instead of being searched as
one opaque text:

* Socket.IO / Engine.IO: a packet type, optional attachment count, namespace
  and ack id in front (`42["chat",{...}]`, `42/chat,17["chat",{...}]`,
  `451-["upload",{...}]`, `0{"sid":...}`);
* SignalR (JSON hub protocol): records ended by the 0x1e record separator,
  several per message;
* Phoenix channels, GraphQL over WebSocket (graphql-ws, subscriptions-transport-ws),
  Action Cable, plain JSON: JSON as it is.

Anything else, text or binary (protobuf, msgpack, CBOR, ciphertext), is
judged as a request body of that content would be (`body_field_steps`). A
binary message's printable runs (the strings a protobuf or msgpack frame
carries as they are) are searched as text as well (`body.strings`), so a
provider key or a token inside a binary frame is found like one in JSON.
Bounded as bodies are: a message is cut to `payload.max_bytes` by the caller,
at most `MAX_RECORDS` SignalR records are parsed, and each record goes
through the body bounds of `tlsgate.payload.fields`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from tlsgate.payload.bounds import SEGMENT, Budget
from tlsgate.payload.fields import Field, body_field_steps

RECORD_SEPARATOR = b"\x1e"
MAX_RECORDS = 64
_PRINTABLE = re.compile(rb"[\x20-\x7e]{8,}")  # runs a binary frame carries as text
# Engine.IO packet type, Socket.IO packet type, a binary event's attachment count ("451-"), optional
# "/namespace," and ack id, then the JSON payload
_SOCKET_IO = re.compile(rb"\d{1,2}(?:\d{1,20}-)?(?:/[\w./-]{0,100},)?\d{0,20}(?=[\[{])")


def message_field_steps(content: bytes | bytearray, text: bool, complete: bool, budget: Budget) -> Iterator[Field | None]:
    """The fields of one message (`content` already cut to the inspection limit, `complete` False when it was),
    with `None` after each bounded piece of work, as `body_field_steps` yields them."""
    if not content:
        return
    if not text:
        yield from body_field_steps("application/octet-stream", content, complete, budget)
        strings = b"\n".join(_PRINTABLE.findall(content, 0, SEGMENT))
        if strings and strings != content:
            yield Field(("body", "strings"), strings.decode("ascii"), cut=not complete)
        return
    records = [content]
    if RECORD_SEPARATOR in content[:65536] and complete:
        records = [r for r in bytes(content).split(RECORD_SEPARATOR, MAX_RECORDS) if r.strip()]
        if len(records) > MAX_RECORDS:  # the rest, unsplit, is still searched as text
            budget.capped.add("records")
    for record in records:
        framed = _SOCKET_IO.match(record)
        inner = record[framed.end() :] if framed else record
        yield from body_field_steps("", inner, complete, budget)
