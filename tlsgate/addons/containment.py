"""Failures inside mitmproxy and asyncio become one short, rate-limited line and a metric, not a traceback flood.

- mitmproxy logs "mitmproxy has crashed!" (or "connection handler has
  crashed") with a full traceback when one connection's layers raise; random
  bytes from a client were enough to print them. The line becomes one escaped
  sentence naming the exception type and the client, at most one per
  `EVERY` seconds with a count of the ones folded into it; the traceback is
  logged at debug level only (`--set termlog_verbosity=debug`).
- Out of file descriptors, asyncio's accept loop logs a traceback per failed
  accept ("socket.accept() out of system resource"): 19 MB in seconds. The
  loop's exception handler folds those (and any other unhandled asyncio error)
  the same way.
- mitmproxy quotes what a client sent in two lines: a request head cut short
  (up to `tlsgate_max_request_head` bytes of it, credentials included) and a
  ClientHello it could not parse (in hex, up to 128 KiB of text). Both are
  shortened to their length.
- A connection whose close was requested while it waited for mitmproxy's
  event lock was never closed: its socket stayed open and its descriptor
  held for the life of the process. Every connection mitmproxy stops reading
  is now closed, and its layers told, however its task ends
  (`mitm_internals.close_connections_however_they_end`).

Counted in `tlsgate_internal_errors_total{where}`: connection, accept, asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from tlsgate.addons import mitm_internals
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.verdicts import error_contained
from tlsgate.sinks.findings import printable

logger = logging.getLogger("tlsgate.containment")
EVERY = 10.0  # seconds between two lines about the same kind of failure
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
CRASHES = ("mitmproxy has crashed!", "connection handler has crashed")
PARTIAL_HEAD = re.compile(r"^(Client closed connection before completing request headers): (b['\"].*)$", re.DOTALL)
HELLO_HEX = re.compile(r"(Cannot parse ClientHello: )([0-9a-f]{64})([0-9a-f]+)")


class Folder:
    """One line per `every` seconds per kind; the rest counted into the next line."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.last: dict[str, float] = {}
        self.folded: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """None: fold this one; else how many were folded since the last line (0 for the first)."""
        now = self.clock()
        if now - self.last.get(kind, -self.every) < self.every:
            self.folded[kind] = self.folded.get(kind, 0) + 1
            return None
        self.last[kind] = now
        return self.folded.pop(kind, 0)


def folded_note(folded: int) -> str:
    return f" ({folded} more like it since the last line, not shown)" if folded else ""


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no exception"
    text = printable(str(exc))
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class ServerLogFilter(logging.Filter):
    """On mitmproxy's proxy-server logger: crash tracebacks folded, client bytes in two lines shortened."""

    def __init__(self, folder: Folder, count: Callable[[str], None]) -> None:
        super().__init__()
        self.folder = folder
        self.count = count

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - the handler filter escapes it
            return True
        if message.startswith(CRASHES):
            return self._crash(record, message)
        if match := PARTIAL_HEAD.match(message):
            record.msg, record.args = f"{match.group(1)} ({len(match.group(2))} characters, not shown)", ()
        elif "Cannot parse ClientHello: " in message:
            record.msg = HELLO_HEX.sub(lambda m: f"{m.group(1)}{m.group(2)}… ({(64 + len(m.group(3))) // 2} bytes)", message)
            record.args = ()
        return True

    def _crash(self, record: logging.LogRecord, message: str) -> bool:
        self.count("connection")
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            logger.debug("tlsgate: the contained mitmproxy error's traceback", exc_info=record.exc_info)
        folded = self.folder.admit("connection")
        if folded is None:
            return False
        client = getattr(record, "client", None)
        who = f" (client {client[0]}:{client[1]})" if isinstance(client, tuple) and len(client) >= 2 else ""
        record.msg = (
            f"tlsgate: contained an error inside mitmproxy's connection handling{who}: {describe(exc)}; the connection "
            f"was closed or left to its timeout, the proxy carries on{folded_note(folded)}"
        )
        record.args, record.exc_info, record.exc_text, record.stack_info = (), None, None, None
        return True


class ContainFailures:
    def __init__(self, sink: FindingsSink | None = None) -> None:
        self.sink = sink
        self.folder = Folder()
        self.filter = ServerLogFilter(self.folder, self.count)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def count(self, where: str) -> None:
        if self.sink is not None:
            error_contained(self.sink, where)

    def load(self, loader: object) -> None:
        mitm_internals.close_connections_however_they_end()
        server_logger = logging.getLogger("mitmproxy.proxy.server")
        if not any(isinstance(f, ServerLogFilter) for f in server_logger.filters):
            server_logger.addFilter(self.filter)

    def running(self) -> None:
        """After mitmproxy's master has put its handler on the loop: this one folds in front of it."""
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() == self.handle:
            return
        self._loop, self._previous = loop, loop.get_exception_handler()
        loop.set_exception_handler(self.handle)

    def done(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() == self.handle:
            self._loop.set_exception_handler(self._previous)
        self._loop = None

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        out_of_resources = isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES
        where = "accept" if out_of_resources or "out of system resource" in message else "asyncio"
        self.count(where)
        if isinstance(exc, BaseException):
            logger.debug("tlsgate: the contained asyncio error's traceback", exc_info=(type(exc), exc, exc.__traceback__))
        folded = self.folder.admit(where)
        if folded is None:
            return
        if where == "accept":
            advice = "raise the open-files limit (ulimit -n) or lower tlsgate_max_client_connections; accepting again in 1 s"
            logger.error(f"tlsgate: {printable(message)} ({describe(exc)}): {advice}{folded_note(folded)}")
        else:
            logger.error(f"tlsgate: unhandled asyncio error: {printable(message)[:200]} ({describe(exc)}){folded_note(folded)}")
