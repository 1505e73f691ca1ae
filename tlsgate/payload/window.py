"""The first bytes of a streamed request body, held back from the server until they are judged.

A body mitmproxy streams (a Content-Length past its 1 MiB threshold, a chunked
or HTTP/2 body that outgrows it) passes chunk by chunk. Its first `limit`
bytes, as the app wrote them (Content-Encoding undone by `bounds.Decoder`), are
the inspection window: the raw chunks that carry them are held, not forwarded,
until the window is judged; then they go upstream at once (passed) or never
(blocked). Bytes past the window are not inspected and pass as they come.

Memory per request: the held raw bytes (at most `limit`, plus the one chunk
that crossed it) and the decoded window (at most `limit`, plus one decoder
pull: see `bounds.Decoder`).

A client that sends faster than its window is judged (more than `OVERHOLD`
windows held) has its reading paused (`pause`) and the scan goes on a `SLICE`
per later turn of the event loop (`wake`, then `resume` inside the stream's
own event), so every other device is served meanwhile; what still arrives
after the pause (what mitmproxy had read: at most `PAUSED_SLACK`) is held
with the rest. A client whose reading cannot pause (HTTP/3, WireGuard:
UDP-borne), or more than that arriving regardless, has the rest of the scan
run at once, as before.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

from tlsgate.payload.bounds import SEGMENT, DecodeError, Decoder, Steps

SLICE = 0.005  # seconds of scanning per chunk before the chunk's event is handed back
OVERHOLD = 2  # while a window's scan runs, the chunks behind it are held up to this many windows, then reading pauses
PAUSED_SLACK = 1 << 20  # raw bytes held past OVERHOLD windows while reading is paused, past which the scan finishes at once


class HeldWindow:
    """Raw chunks in, held until `ready`; `data` is what the detectors see."""

    def __init__(self, limit: int, encoding: str = "") -> None:
        self.limit = limit
        self.decoder = Decoder(encoding)
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.total = 0  # raw bytes of the body seen so far
        self.data = bytearray()  # the decoded window, at most `limit`
        self.ended = False  # the body ended while held
        self.undecodable = False  # not what its Content-Encoding says: judged as the bytes it is

    def add(self, chunk: bytes) -> None:
        """Hold one chunk of the body (b"" for its end)."""
        if not chunk:
            self.ended = True
        else:
            self.held.append(chunk)
            self.held_bytes += len(chunk)
            self.total += len(chunk)
        if len(self.data) >= self.limit:
            return  # past a full window nothing more is decoded (or kept for decoding)
        if self.decoder.stages and not self.undecodable:
            self.decoder.push(chunk)
            try:
                while len(self.data) < self.limit:
                    out = self.decoder.pull(min(SEGMENT, self.limit - len(self.data)))
                    if not out:
                        break
                    self.data += out
            except DecodeError:
                self.undecodable = True
                self.data = bytearray(b"".join(self.held)[: self.limit])  # the bytes as they are, from the first
        elif chunk:
            self.data += chunk[: self.limit - len(self.data)]
        del self.data[self.limit :]

    @property
    def ready(self) -> bool:
        """Enough is held to judge: the window is full, the body ended, or `limit` raw bytes are held."""
        return self.ended or len(self.data) >= self.limit or self.held_bytes >= self.limit

    @property
    def complete(self) -> bool:
        """The window is the whole body."""
        if not self.ended:
            return False
        if self.decoder.stages and not self.undecodable:
            return self.decoder.done and self.decoder.drained() and len(self.data) < self.limit
        return self.total <= self.limit

    def release(self) -> list[bytes]:
        """The held chunks, in order, handed over (to be forwarded); nothing is held after."""
        held, self.held, self.held_bytes = self.held, [], 0
        return held

    def drop(self) -> None:
        """Forget everything held (a blocked window: none of it goes anywhere)."""
        self.held, self.held_bytes, self.data = [], 0, bytearray()


Judge = Callable[[HeldWindow, list[str]], Steps[bool]]


class WindowGate:
    """A streamed body's callable (mitmproxy's `request.stream` shape: chunk in, chunks to forward out; b"" at the
    end) that holds the body's first bytes in a `HeldWindow` until `judge` has judged them.

    Passed: the held chunks go on at once, the rest as it comes. Refused (or the
    judge raised: `fail` is told, and it counts as refused): nothing more is
    forwarded. The judge runs a `SLICE` per chunk while the chunks behind the
    window are held, to at most `OVERHOLD` windows; then `pause(True)` stops
    reading from the client (False: it cannot be paused) and the scan runs a
    `SLICE` per turn of the event loop (`wake()` asks for a later `resume()` in
    the stream's own event; False: the stream is gone) until judged, when
    `pause(False)` reads on; a client that cannot be paused has it run to its
    end at once (as at the body's end). So one upload never holds the event
    loop for long, and what is held stays bounded. `reserve(n)` grants the bytes it may hold (the
    raw chunks and the decoded window: half each), `release(granted)` gives them
    back once judged, or when the gate is dropped.
    """

    def __init__(
        self,
        wanted: int,
        encoding: str,
        judge: Judge,
        reserve: Callable[[int], int],
        release: Callable[[int], None],
        fail: Callable[[Exception], None],
        pause: Callable[[bool], bool] | None = None,
        wake: Callable[[], bool] | None = None,
    ) -> None:
        self.wanted = wanted  # what the policy asked for
        self.encoding = encoding
        self.judge = judge
        self.reserve = reserve
        self.release = release
        self.fail = fail
        self.window: HeldWindow | None = None  # made at the first chunk: a body never streamed costs nothing
        self.scan: Steps[bool] | None = None
        self.passed = False
        self.blocked = False
        self.out: list[bytes] = []  # passed chunks not yet handed on
        self.held_peak = 0  # most raw bytes held at once (benchmarks, tests)
        self.pause = pause
        self.wake = wake
        self.paused = False  # reading from the client is paused while the scan goes on in later turns
        self.deferred = 0  # turns of the event loop the scan went on in with the client paused (tests, benchmarks)
        self.at_once = 0  # times the rest of the scan ran at once, the client not paused (tests, benchmarks)
        self._released: weakref.finalize[Any, Any] | None = None

    @property
    def used(self) -> bool:
        """The body went through this gate (else it was never streamed)."""
        return self.window is not None

    def _open(self) -> HeldWindow:
        granted = self.reserve(2 * self.wanted)
        self._released = weakref.finalize(self, self.release, granted)  # however the flow ends
        self.window = HeldWindow(max(1, granted // 2), self.encoding)
        return self.window

    def __call__(self, chunk: bytes) -> list[bytes] | bytes:
        if self.blocked:
            return []
        if self.passed:
            out, self.out = self.out, []
            return [*out, chunk] if chunk else out
        if not chunk:
            return []  # the end, not judged yet: judged by `ending` (the add-on's request hook), then flushed
        window = self.window or self._open()
        window.add(chunk)
        self.held_peak = max(self.held_peak, window.held_bytes)
        if window.ready:
            overheld = window.held_bytes > OVERHOLD * window.limit
            if self.paused and window.held_bytes <= OVERHOLD * window.limit + PAUSED_SLACK:
                return []  # read before the pause took: held with the rest, judged in the coming turns
            if overheld and not self.paused and self._defer():
                return []
            if overheld:
                self.at_once += 1
            self._advance(window, None if overheld else SLICE)
        if self.passed:
            out, self.out = self.out, []
            return out
        return []  # never b"": mitmproxy would send it as an empty (for HTTP/1 chunked: a last) chunk

    def _defer(self) -> bool:
        """Overheld: pause the client and go on with the scan in later turns. False when it cannot be paused."""
        if self.pause is None or self.wake is None:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (unit tests): judged at once
            return False
        if not self.pause(True):
            return False  # UDP-borne (HTTP/3, WireGuard), or its connection is closing
        self.paused = True
        loop.call_soon(self._wake)
        return True

    def _wake(self) -> None:
        if not self.paused or self.passed or self.blocked:
            return
        assert self.wake is not None
        if not self.wake():  # the stream is gone: nothing waits for what is held any more
            self.blocked = True
            if self.window is not None:
                self.window.drop()
            self.scan = None
            self._unpause()
            if self._released is not None:
                self._released()

    def resume(self) -> list[bytes]:
        """Inside the stream's event (`mitm_internals.resume_held_body`): the next slice of the paused scan; the
        held chunks once it passed (then reading goes on), else nothing (refused: the stream's refusal is set)."""
        window = self.window
        if not self.paused or self.passed or self.blocked or window is None:
            return []
        if window.ended:
            return []  # the body's end judges the rest (`ending`), and reads on
        self._advance(window, SLICE)
        self.deferred += 1
        if self.passed:
            out, self.out = self.out, []
            return out
        if not self.blocked:
            asyncio.get_running_loop().call_soon(self._wake)
        return []

    def _unpause(self) -> None:
        if self.paused:
            self.paused = False
            if self.pause is not None:
                self.pause(False)

    def finish(self) -> None:
        """The body ended: judged now, whatever is held, if `ending` did not judge it yet."""
        for _ in self.ending():
            pass

    def ending(self) -> Steps[None]:
        """The body ended: judge what is held, one bounded step at a time (the caller may hand the event loop
        back between steps, while the body's end waits); then `flush` has the held chunks if it passed."""
        if self.passed or self.blocked:
            return
        window = self.window or self._open()
        if not window.ended:
            window.add(b"")
        while not (self.passed or self.blocked):
            self._advance(window, 0.0)
            yield None

    def flush(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def _advance(self, window: HeldWindow, budget: float | None) -> None:
        """Run the window's scan for `budget` seconds (None: to its end); decide when it ends."""
        try:
            if self.scan is None:
                capped = ["held_bytes"] if window.limit < self.wanted and not window.complete else []
                self.scan = self.judge(window, capped)
            deadline = time.perf_counter() + budget if budget is not None else None
            while True:
                next(self.scan)
                if deadline is not None and time.perf_counter() >= deadline:
                    return
        except StopIteration as done:
            refused = bool(done.value)
        except Exception as exc:  # noqa: BLE001 - fail closed: a window that could not be judged does not pass
            self.fail(exc)
            refused = True
        self.scan = None
        if refused:
            self.blocked = True
            window.drop()
        else:
            self.passed = True
            self.out = window.release()
        window.data = bytearray()
        self._unpause()
        if self._released is not None:
            self._released()
